"""The dashboard's sortable table of every trial: its columns, cells, script and style.

One row per trial, any state. A trial that repeated an earlier network
(``duplicate_of``) keeps its number, schemes and architecture; its other cells
would be its twin's copied results, so they are left empty and the note names
the twin. A click on a header sorts by that column (again: reverse), empty
cells last either way; ``#sort=KEY[:asc|desc]`` in the URL sorts on load.
"""
from __future__ import annotations

import html
import math

import pandas as pd

from .figures import FAMILY_COLOURS, PROXY_AXIS, TEST_AXIS

__all__ = ["TABLE_CSS", "SORTER_JS", "table_html"]


# (key, header, frame column, format)
_COLUMNS = [
    ("number", "#", "number", "d"),
    ("state", "state", "state", None),
    ("scheme", "schemes", "scheme", None),
    ("architecture", "architecture", "architecture", None),
    ("preset", "preset", "preset", None),
    ("accuracy", PROXY_AXIS, "accuracy", ".2f"),
    ("epochs", "proxy epochs (highest rung)", "proxy_epochs", "g"),
    ("retrain", TEST_AXIS, "retrain_accuracy", ".2f"),
    ("inference", "inference MiB per image", "inference_mib", ".3f"),
    ("training", "training MiB per image", "training_mib", ".3f"),
    ("params", "params", "params", ","),
    ("macs", "MACs per image", "macs", "M"),
    ("seconds", "proxy s", "proxy_seconds", ".1f"),
    ("pareto", "Pareto front", "pareto", None),
    ("weights", "weights", "has_weights", None),
    ("reason", "note", "fail_reason", None),
]
_KEEP_IN_DUPLICATE = {"number", "scheme", "architecture", "family"}   # frame columns a duplicate keeps


def _cell(value, fmt) -> tuple[str, str]:
    """(display text, sort key) of one table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "", ""
    if isinstance(value, bool):
        return ("✓" if value else ""), ("1" if value else "0")
    if fmt == "M" and isinstance(value, (int, float)):      # millions: the table stays narrow
        return f"{value / 1e6:,.1f}M", repr(float(value))
    if fmt and isinstance(value, (int, float)):
        v = int(value) if fmt in ("d", ",") else value
        return format(v, fmt), repr(float(value))
    return str(value), str(value)


def table_html(frame: pd.DataFrame, objective: str = "inference") -> str:
    """The table of :func:`studies.dashboard.trials_frame` rows; ``objective`` (the study's memory
    objective) is starred in its header. A column empty in every row (no preset, nothing retrained
    yet) is left out."""
    records = []
    for r in frame.sort_values("number").to_dict("records"):
        twin = None if pd.isna(r.get("duplicate_of")) else int(r["duplicate_of"])
        if twin is not None:   # its other cells would be its twin's copied results
            r = {k: (v if k in _KEEP_IN_DUPLICATE else None) for k, v in r.items()}
            r.update(state="duplicate", duplicate_of=twin,
                     fail_reason=f"same network as trial {twin}: not trained again, its results are trial {twin}'s")
        records.append((twin, {k: _cell(r.get(col), fmt) for k, _, col, fmt in _COLUMNS}, r))
    shown_cols = [c for c in _COLUMNS if c[0] in ("number", "state") or any(cells[c[0]][0] for _, cells, _ in records)]
    head = "".join(f'<th data-key="{k}" data-type="{"num" if f else "text"}" class="k-{k}" title="click to sort">'
                   f'{html.escape(h)}{" *" if k == objective else ""}</th>' for k, h, _, f in shown_cols)
    rows = []
    for twin, cells, r in records:
        tds = []
        for k, _, _, fmt in shown_cols:
            text, key = cells[k]
            shown = html.escape(text).replace("+", "+<wbr>").replace(" | ", " |<wbr> ")
            if k == "scheme" and text:
                colour = FAMILY_COLOURS.get(r.get("family"), "#bbb")
                shown = (f'<span class="swatch" style="background:{colour}" '
                         f'title="{html.escape(str(r.get("family")), quote=True)}"></span>{shown}')
            tds.append(f'<td class="k-{k}{" txt" if fmt is None else ""}" data-v="{html.escape(key, quote=True)}">'
                       f'{shown}</td>')
        dup = f' data-duplicate-of="{twin}"' if twin is not None else ""
        state = "DUPLICATE" if twin is not None else r["state"]
        rows.append(f'<tr data-number="{r["number"]}" data-state="{state}"{dup}>' + "".join(tds) + "</tr>")
    return (f'<table id="trials-table" class="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


SORTER_JS = r"""
(function () {
  var table = document.getElementById('trials-table');
  if (!table) return;
  var heads = table.tHead.rows[0].cells;
  function sortBy(key, desc) {
    var idx = -1, num = false;
    for (var i = 0; i < heads.length; i++) {
      heads[i].classList.remove('asc', 'desc');
      if (heads[i].dataset.key === key) { idx = i; num = heads[i].dataset.type === 'num'; }
    }
    if (idx < 0) return;
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
      if (x === '' && y === '') return 0;
      if (x === '') return 1;            // empty cells last, either direction
      if (y === '') return -1;
      var c = num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return desc ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads[idx].classList.add(desc ? 'desc' : 'asc');
    table.dataset.sortKey = key; table.dataset.sortDir = desc ? 'desc' : 'asc';
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function (e) {
      var key = e.currentTarget.dataset.key;
      var desc = table.dataset.sortKey === key ? table.dataset.sortDir !== 'desc'
                                               : e.currentTarget.dataset.type === 'num';
      sortBy(key, desc);
    });
  }
  var m = /sort=([\w-]+)(?::(asc|desc))?/.exec(location.hash);
  if (m) sortBy(m[1], m[2] === 'desc');
  window.sortTrialsTable = sortBy;
})();
"""

TABLE_CSS = """
.swatch { display: inline-block; width: 0.75em; height: 0.75em; margin-right: 0.35em; border-radius: 50%;
          vertical-align: baseline; }
table.trials { border-collapse: collapse; font-size: 0.8em; width: 100%; }
table.trials th, table.trials td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.trials td { white-space: nowrap; }
table.trials td.txt { text-align: left; }
table.trials td.k-scheme { white-space: normal; min-width: 9em; }
table.trials td.k-architecture { white-space: normal; min-width: 13em; }
table.trials td.k-reason { white-space: normal; min-width: 14em; max-width: 40em; }
table.trials td.k-pareto, table.trials td.k-weights { text-align: center; }
table.trials th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; user-select: none; }
table.trials th.asc::after { content: " ▲"; } table.trials th.desc::after { content: " ▼"; }
table.trials tr[data-state="FAIL"] td { color: #a33; } table.trials tr[data-state="PRUNED"] td { color: #888; }
table.trials tr[data-state="DUPLICATE"] td { color: #888; font-style: italic; }
table.trials tr[data-state="RUNNING"] td { font-style: italic; }
"""
