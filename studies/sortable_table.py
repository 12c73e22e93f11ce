"""The dashboard's tables: the front beside its plot, and every trial (sortable, filterable,
downloadable), with their script and style.

One row per trial, any state. A trial that repeated an earlier network (``duplicate_of``)
keeps its number and architecture; its other cells would be its twin's copied results, so
they are left empty and the note names the twin. A click on a header sorts by that column
(again: reverse), empty cells last either way. Filters (state, family, front) hide rows; the
page's state lives in the URL (``#sort=KEY:desc&state=COMPLETE&family=...&front=1&trial=N``),
so a reload (the page's auto-refresh) keeps it. The CSV link holds ``show --csv``'s table
(every column, fractions and bytes), so the download is the same file the command writes.
"""
from __future__ import annotations

import html
import math
from urllib.parse import quote

import pandas as pd

from .figures import FAMILY_COLOURS, PROXY_AXIS, TEST_AXIS, retrain_text

__all__ = ["TABLE_CSS", "TABLE_JS", "csv_link", "filters_html", "front_table_html", "table_html"]


# (key, header, frame column, format, shown in a narrow window)
_COLUMNS = [
    ("number", "#", "number", "d", True),
    ("pareto", "front", "pareto", None, True),
    ("state", "state", "state", None, True),
    ("architecture", "architecture", "architecture", None, True),
    ("preset", "preset", "preset", None, False),
    ("accuracy", PROXY_AXIS, "accuracy", ".2f", True),
    ("epochs", "epochs (highest rung)", "proxy_epochs", "g", True),
    ("retrain", TEST_AXIS, "retrain_accuracy", ".2f", True),
    ("protocol", "retrain: protocol, epochs", "retrain_label", None, True),
    ("inference", "inference MiB per image", "inference_mib", ".3f", None),   # None: shown if the objective
    ("training", "training MiB per image", "training_mib", ".3f", None),
    ("params", "params", "params", ",", True),
    ("macs", "MACs per image", "macs", "M", False),
    ("seconds", "proxy s (that rung)", "proxy_seconds", ".1f", False),
    ("weights", "weights", "has_weights", None, True),
    ("reason", "note", "fail_reason", None, True),
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


def _swatch(family) -> str:
    colour = FAMILY_COLOURS.get(family, "#bbb")
    return (f'<span class="swatch" style="background:{colour}" '
            f'title="{html.escape(str(family), quote=True)}"></span>')


def _shown(text: str) -> str:
    return html.escape(text).replace("+", "+<wbr>").replace(" | ", " |<wbr> ")


def _with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    how = frame["retrain_how"] if "retrain_how" in frame else [None] * len(frame)
    frame["retrain_label"] = [(h or retrain_text(p, e)) if pd.notna(a) else None for p, e, a, h in
                              zip(frame["retrain_protocol"], frame["retrain_epochs"], frame["retrain_accuracy"], how)]
    return frame


def table_html(frame: pd.DataFrame, objective: str = "inference") -> str:
    """The table of :func:`studies.dashboard.trials_frame` rows; ``objective`` (the study's memory
    objective) is starred in its header and kept in a narrow window. A column empty in every row
    (no preset, nothing retrained yet) is left out."""
    records = []
    for r in _with_labels(frame).sort_values("number").to_dict("records"):
        twin = None if pd.isna(r.get("duplicate_of")) else int(r["duplicate_of"])
        if twin is not None:   # its other cells would be its twin's copied results
            r = {k: (v if k in _KEEP_IN_DUPLICATE else None) for k, v in r.items()}
            r.update(state="duplicate", duplicate_of=twin,
                     fail_reason=f"same network as trial {twin}: not trained again, its results are trial {twin}'s")
        records.append((twin, {k: _cell(r.get(col), fmt) for k, _, col, fmt, _ in _COLUMNS}, r))
    shown_cols = [c for c in _COLUMNS if c[0] in ("number", "state") or any(cells[c[0]][0] for _, cells, _ in records)]
    head = "".join(
        f'<th data-key="{k}" data-type="{"num" if f else "text"}" class="k-{k}{_opt(k, narrow, objective)}" '
        f'title="click to sort">{html.escape(h)}{" *" if k == objective else ""}</th>'
        for k, h, _, f, narrow in shown_cols)
    rows = []
    for twin, cells, r in records:
        tds = []
        for k, _, _, fmt, narrow in shown_cols:
            text, key = cells[k]
            shown = _shown(text)
            if k == "architecture" and text:
                shown = _swatch(r.get("family")) + shown
            tds.append(f'<td class="k-{k}{" txt" if fmt is None else ""}{_opt(k, narrow, objective)}" '
                       f'data-v="{html.escape(key, quote=True)}">{shown}</td>')
        dup = f' data-duplicate-of="{twin}"' if twin is not None else ""
        state = "DUPLICATE" if twin is not None else r["state"]
        fam = html.escape(str(r.get("family") or ""), quote=True)
        rows.append(f'<tr data-number="{r["number"]}" data-state="{state}" data-family="{fam}" '
                    f'data-front="{1 if r.get("pareto") else 0}"{dup}>' + "".join(tds) + "</tr>")
    return (f'<table id="trials-table" class="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _opt(key: str, narrow, objective: str) -> str:
    """`` opt`` on a column a narrow window leaves out (the CSV keeps it)."""
    keep = narrow if narrow is not None else key == objective
    return "" if keep else " opt"


def filters_html(frame: pd.DataFrame) -> str:
    """State and family choices present in the table, a front-only box, and the rows shown."""
    states = sorted(set(frame["state"]) | ({"DUPLICATE"} if frame["duplicate_of"].notna().any() else set()))
    fams = [f for f in FAMILY_COLOURS if f in set(frame["family"])]
    opts = lambda vals: "".join(f'<option value="{html.escape(v, quote=True)}">{html.escape(v.lower() if v.isupper() else v)}'
                                f'</option>' for v in vals)  # noqa: E731
    return (f'<div id="filters" class="filters"><label>state <select id="filter-state"><option value="">any</option>'
            f'{opts(states)}</select></label> <label>family <select id="filter-family"><option value="">any</option>'
            f'{opts(fams)}</select></label> <label><input type="checkbox" id="filter-front"> on the front only</label>'
            f' <span id="filter-count" class="meta"></span></div>')


def csv_link(csv_text: str, filename: str) -> str:
    """A download link holding the CSV itself (a ``data:`` URL: the page stays one offline file)."""
    return (f'<a id="csv-download" class="button" download="{html.escape(filename, quote=True)}" '
            f'href="data:text/csv;charset=utf-8,{quote(csv_text, safe="")}">download the table as CSV</a>')


def front_table_html(front: pd.DataFrame) -> str:
    """The front, most accurate first: trial (the ``#N`` of the plot's labels), architecture,
    accuracy at its epochs, test accuracy with its protocol and epochs, memory, params. Hover or
    click a row to draw its network."""
    rows, tested = [], front["retrain_accuracy"].notna().any()
    for r in _with_labels(front).sort_values("accuracy", ascending=False).itertuples():
        acc = f"{r.accuracy:.2f}% <small>at {int(r.proxy_epochs)} ep</small>" if pd.notna(r.proxy_epochs) else \
            f"{r.accuracy:.2f}%"
        test = (f"{r.retrain_accuracy:.2f}% <small>{html.escape(r.retrain_label)}</small>"
                if pd.notna(r.retrain_accuracy) else "")
        params = f"{int(r.params):,}" if pd.notna(r.params) else ""
        name = _shown(r.architecture or "") + (f" <small>({html.escape(r.preset)})</small>" if r.preset else "")
        rows.append(f'<tr data-number="{r.number}"><td class="k-label">#{r.number}</td>'
                    f'<td class="txt">{_swatch(r.family)}{name}</td><td>{acc}</td>'
                    + (f'<td>{test}</td>' if tested else "") + f'<td>{r.memory_mib:.3f}</td><td>{params}</td></tr>')
    return ('<table id="front-table" class="trials front"><thead><tr><th>trial</th><th>architecture</th>'
            '<th>val. accuracy, proxy</th>' + ('<th>test accuracy, retrained</th>' if tested else "")
            + f'<th>MiB per image</th><th>params</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


TABLE_JS = r"""
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
    window.pageState.set('sort', key + ':' + (desc ? 'desc' : 'asc'));
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', function (e) {
      var key = e.currentTarget.dataset.key;
      var desc = table.dataset.sortKey === key ? table.dataset.sortDir !== 'desc'
                                               : e.currentTarget.dataset.type === 'num';
      sortBy(key, desc);
    });
  }
  var st = document.getElementById('filter-state'), fam = document.getElementById('filter-family'),
      front = document.getElementById('filter-front'), count = document.getElementById('filter-count');
  function filter() {
    var shown = 0, rows = table.tBodies[0].rows;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i], ok = (!st.value || r.dataset.state === st.value) && (!fam.value || r.dataset.family === fam.value)
                            && (!front.checked || r.dataset.front === '1');
      r.hidden = !ok; if (ok) shown++;
    }
    count.textContent = 'showing ' + shown + ' of ' + rows.length + ' trials';
    window.pageState.set('state', st.value); window.pageState.set('family', fam.value);
    window.pageState.set('front', front.checked ? '1' : '');
  }
  st.value = window.pageState.get('state') || ''; fam.value = window.pageState.get('family') || '';
  front.checked = window.pageState.get('front') === '1';
  [st, fam, front].forEach(function (el) { el.addEventListener('change', filter); });
  filter();
  var m = /^([\w-]+)(?::(asc|desc))?$/.exec(window.pageState.get('sort') || '');
  if (m) sortBy(m[1], m[2] === 'desc');
  window.sortTrialsTable = sortBy;
})();
"""

TABLE_CSS = """
.swatch { display: inline-block; width: 0.75em; height: 0.75em; margin-right: 0.35em; border-radius: 50%;
          vertical-align: baseline; border: 1px solid #0003; }
table.trials { border-collapse: collapse; font-size: 0.8em; width: 100%; }
table.trials th, table.trials td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.trials td { white-space: nowrap; }
table.trials td.txt { text-align: left; }
table.trials td.k-architecture { white-space: normal; min-width: 12em; }
table.trials td.k-reason { white-space: normal; min-width: 10em; max-width: 40em; }
table.trials td.k-pareto, table.trials td.k-weights { text-align: center; }
table.trials th { background: #f3f3f3; cursor: pointer; position: sticky; top: 0; user-select: none; }
table.trials th.asc::after { content: " ▲"; } table.trials th.desc::after { content: " ▼"; }
table.trials tr[data-state="FAIL"] td { color: #a33; } table.trials tr[data-state="PRUNED"] td { color: #888; }
table.trials tr[data-state="DUPLICATE"] td { color: #888; font-style: italic; }
table.trials tr[data-state="RUNNING"] td { font-style: italic; }
table.trials tbody tr { cursor: pointer; } table.trials tbody tr:hover td { background: #f4f6fb; }
table.trials tr.selected td { background: #e8ecf8; }
table.front td { white-space: normal; } table.front th { cursor: default; }
table.front td.k-label { font-weight: 600; }
.filters { margin: 0.4em 0; font-size: 0.9em; } .filters label { margin-right: 0.8em; white-space: nowrap; }
table.trials td.k-protocol { white-space: normal; min-width: 5em; }
@media (max-width: 1100px) {
  table.trials .opt { display: none; }
  table.trials th, table.trials td { padding: 2px 4px; }
  table.trials td.k-architecture { min-width: 8em; } table.trials td.k-reason { min-width: 6em; }
}
"""
