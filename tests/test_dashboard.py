"""studies/dashboard.py: the HTML page, checked in a real headless browser.

The study is built directly with optuna (no training): sampled trials of several schemes
(with their parameters), two of the papers' presets, three retrained trials, a trial that
repeated an earlier network (``duplicate_of``), a promotion measured after every other
score, pruned, failed and one still-running trial. Chromium renders the page at 1400x1000
and 900x1400: the SVG markers plotly drew must match the study's distinct networks, each
carrying the epochs behind its y value; the front is labelled; no two titles overlap; the
table fits; a network is drawn and another is drawn when the URL names it.
"""
from __future__ import annotations

import html.parser
import importlib
import itertools
import json
import re
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

import models
import search
import studies
from models import ArchSpec, StageSpec, StepSpec
from models.spec import scheme_names
from studies import figures, space_plots
from studies.objective import scheme_label

dash = importlib.import_module("studies.dashboard")   # the module (studies.dashboard is also its function)
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome",
                                                            "google-chrome-stable")) if p), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium); "
                             "the dashboard is checked in a real headless browser")

# (scheme, blocks, width, proxy accuracy, inference bytes/image, retrained test accuracy or None)
COMPLETE = [
    ("euler", 14, 64, 0.712, 1.00e6, 0.921),
    ("euler", 4, 96, 0.655, 1.60e6, None),    # dominated by the first
    ("midpoint", 7, 64, 0.731, 1.10e6, 0.928),
    ("rk4", 3, 64, 0.744, 1.50e6, 0.931),
    ("rk4", 2, 80, 0.700, 2.30e6, None),      # dominated
    ("verner8", 1, 64, 0.752, 7.00e6, None),
    ("lm", 6, 72, 0.690, 0.95e6, None),
]
PRESETS = [("ho-euler-x14", 0.709, 1.02e6), ("ho-rk4-x3", 0.741, 1.52e6)]
PROMOTED = {0: 0.725}  # trial 0 promoted to 6 epochs, measured after every other score
TWIN = 2               # the duplicate repeats trial 2's network (retrained, on the front)
DUPLICATE = len(COMPLETE) + len(PRESETS)   # its trial number
RETRAIN_EPOCHS = 40
N_TRIALS = DUPLICATE + 1 + 4               # + 2 pruned, 1 failed, 1 running
SCHEMES = [*models.schemes.TABLEAUX, "lm"]
DISTRIBUTIONS = {"family": CategoricalDistribution(["resnet", "rkcnn"]), "stages": IntDistribution(1, 3),
                 "s0.scheme": CategoricalDistribution(SCHEMES), "s0.blocks": IntDistribution(1, 60)}


def _attrs(spec: ArchSpec, acc: float, inference: float, **extra) -> dict:
    """A completed trial's user attrs as ``studies.objective.prepare`` and ``train`` write them (the schema in docs/design.md)."""
    return {"spec": spec.to_json(), "architecture": models.describe(spec), "scheme": scheme_label(spec),
            "params": 1_000_000 + 1000 * spec.stages[0].blocks, "macs": 150_000_000 + 10_000_000 * spec.stages[0].blocks,
            "inference_bytes_per_image": inference, "training_bytes_per_image": 5 * inference,
            "cuda_peak_bytes": None, "proxy_epochs": 2, "proxy_seconds": 12.5, "device": "cpu", "status": "ok",
            "val_accuracy@2": acc, "val_accuracy": acc, **extra}


def add_retrain(study, number: int, test_accuracy: float, weights_path: str | None = "w.pt",
                protocol: str = "fast") -> None:
    """A retrain result as ``studies.retrain`` stores it (study user attr ``retrain:N:LABEL``)."""
    study.set_user_attr(f"retrain:{number}:{protocol}", {
        "number": number, "protocol": protocol, "label": protocol, "status": "ok", "reason": "",
        "test_accuracy": test_accuracy, "epochs": RETRAIN_EPOCHS, "weights_path": weights_path,
        "finished_at": "2026-01-01T00:00:00+00:00"})


def make_study(storage: str, name: str = "demo", *, complete: bool = True, running: bool = True):
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("budget", 1_000_000)
    study.set_user_attr("tolerance", 0.02)
    study.set_user_attr("memory", "inference")
    ct = optuna.trial.create_trial
    if complete:
        for scheme, blocks, width, acc, mem, retrained in COMPLETE:
            spec = ArchSpec(stages=(StageSpec(scheme=scheme, blocks=blocks, width=width),))
            params = {"family": "resnet", "stages": 1, "s0.scheme": scheme, "s0.blocks": blocks}
            study.add_trial(ct(values=[acc, mem], user_attrs=_attrs(spec, acc, mem), params=params,
                               distributions=DISTRIBUTIONS))
            if retrained is not None:
                add_retrain(study, study.trials[-1].number, retrained)
        for name_, acc, mem in PRESETS:     # enqueued, not sampled: no parameters
            spec = models.presets.get(name_)
            study.add_trial(ct(values=[acc, mem], user_attrs=_attrs(spec, acc, mem, preset=name_)))
        # the sampler proposed trial 2's network again: studies.objective copies its twin's attrs
        twin = study.trials[TWIN]
        study.add_trial(ct(values=twin.values, user_attrs={**twin.user_attrs, "duplicate_of": TWIN},
                           params=twin.params, distributions=twin.distributions))
        later = (datetime.now().astimezone() + timedelta(minutes=5)).isoformat(timespec="seconds")
        for number, acc in PROMOTED.items():  # as studies.promotion stores a promotion
            study.set_user_attr(f"fidelity:{number}:6", {"number": number, "epochs": 6, "status": "ok",
                                                         "reason": None, "val_accuracy": acc, "seconds": 30.0,
                                                         "finished_at": later})
    bad = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=40, width=8, step=StepSpec("learnable", 1.0)),))
    study.add_trial(ct(state=optuna.trial.TrialState.PRUNED, values=None,
                       user_attrs=dict(spec=bad.to_json(), fail_reason="cannot meet the budget within 2%")))
    study.add_trial(ct(state=optuna.trial.TrialState.PRUNED, values=None,
                       user_attrs=dict(fail_reason="dropped at rung 1")))
    study.add_trial(ct(state=optuna.trial.TrialState.FAIL, values=None,
                       user_attrs=dict(fail_reason="diverged: loss nan at epoch 1 step 3")))
    if running:
        study.ask()  # a worker is still training it
    return study


class PlotCounter(html.parser.HTMLParser):
    """Per ``div.plotly-graph-div`` of a rendered DOM: markers (``path.point``) with their fill and
    stroke colours, the texts plotly wrote at points (``g.textpoint``), its annotations; the rows
    of the trials table in document order (and which are hidden); the drawn network's stages."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str | None, set]] = []   # (tag, plot id it opens or None, classes)
        self.points: dict[str, int] = {}
        self.fills: dict[str, list[tuple]] = {}
        self.texts: dict[str, list[str]] = {}
        self.annotations: dict[str, list[str]] = {}
        self.svg: dict[str, int] = {}
        self.legends: dict[str, int] = {}
        self.rows: list[int] = []
        self.hidden: set[int] = set()
        self.row_attrs: dict[int, dict] = {}
        self.in_table = False
        self.network: dict | None = None
        self.stages: list[dict] = []

    def current(self):
        for _, pid, _ in reversed(self.stack):
            if pid:
                return pid
        return None

    def inside(self, cls: str) -> bool:
        return any(cls in c for _, _, c in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        pid = a.get("id") if tag == "div" and "plotly-graph-div" in classes else None
        if tag == "table" and a.get("id") == "trials-table":
            self.in_table = True
        if tag == "tr" and self.in_table and "data-number" in a:
            self.rows.append(int(a["data-number"]))
            self.row_attrs[int(a["data-number"])] = a
            if "hidden" in a:
                self.hidden.add(int(a["data-number"]))
        if tag == "div" and a.get("id") == "network-drawing":
            self.network = a
        if tag == "g" and a.get("data-part") == "stage" and self.network is not None and not self.stages_done:
            self.stages.append(a)
        cur = pid or self.current()
        if cur:
            style = a.get("style") or ""
            fill, stroke = re.search(r"fill: (rgb\([^)]*\))", style), re.search(r"stroke: (rgb\([^)]*\))", style)
            if tag == "path" and "point" in classes:
                self.points[cur] = self.points.get(cur, 0) + 1
                self.fills.setdefault(cur, []).append((fill.group(1) if fill else None,
                                                       stroke.group(1) if stroke else None))
            if tag == "text" and self.inside("textpoint"):
                self.texts.setdefault(cur, []).append(a.get("data-unformatted"))
            if tag == "text" and "annotation-text" in classes:
                self.annotations.setdefault(cur, []).append(a.get("data-unformatted"))
            if tag == "svg":
                self.svg[cur] = self.svg.get(cur, 0) + 1
            if tag == "g" and "legend" in classes:
                self.legends[cur] = self.legends.get(cur, 0) + 1
        if tag not in _VOID:
            self.stack.append((tag, pid, classes))

    stages_done = False

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False
        if tag == "section" and self.network is not None:
            self.stages_done = True
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium(tmp_path: Path, *args: str, size: tuple[int, int] = (1400, 1000)) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--window-size={size[0]},{size[1]}", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def render(tmp_path: Path, page: Path, fragment: str = "", size=(1400, 1000)) -> PlotCounter:
    """The page's DOM after its scripts ran, parsed (``.dom`` holds the text)."""
    res = chromium(tmp_path, "--dump-dom", page.resolve().as_uri() + fragment, size=size)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<svg" in res.stdout, "plotly drew nothing"
    counter = PlotCounter()
    counter.feed(res.stdout)
    counter.dom = res.stdout
    return counter


# Appended to a copy of the page: after plotly drew, the boxes of every title and of plotly's
# toolbars, the page's and the table's widths, written into the DOM for --dump-dom to return.
MEASURE = r"""<script>
window.addEventListener('load', function () { setTimeout(function () {
  var sel = 'h1, h2, h3, .xtitle, .ytitle, .parcoords .axis-title, .modebar, .gtitle, #legend .lg';
  var items = [];
  document.querySelectorAll(sel).forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width > 0 && r.height > 0)
      items.push({what: (e.getAttribute('class') || e.tagName), text: (e.textContent || '').slice(0, 60),
                  r: [r.left + scrollX, r.top + scrollY, r.right + scrollX, r.bottom + scrollY]});
  });
  var t = document.getElementById('trials-table'), w = t.parentElement;
  var heads = {};
  t.tHead.rows[0].querySelectorAll('th').forEach(function (h) {
    var r = h.getBoundingClientRect(); if (r.width > 0) heads[h.dataset.key] = [r.left, r.right]; });
  var out = {width: innerWidth, page: document.documentElement.scrollWidth, table: t.scrollWidth,
             wrap: w.clientWidth, heads: heads, items: items,
             drawing: (function () { var s = document.querySelector('#network-drawing svg');
                                     if (!s) return null; var r = s.getBoundingClientRect(); return [r.width, r.height]; })()};
  var pre = document.createElement('pre'); pre.id = 'layout-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 800); });
</script></body>"""


def measure(tmp_path: Path, page: Path, size) -> dict:
    probe = tmp_path / f"probe-{size[0]}.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE), encoding="utf-8")
    res = chromium(tmp_path, "--dump-dom", probe.resolve().as_uri(), size=size)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', res.stdout, re.S)
    assert m, "the measuring script did not run"
    return json.loads(html.unescape(m.group(1)))


def embedded(text: str, name: str = "dashboard-data") -> dict:
    m = re.search(rf'<script type="application/json" id="{name}">(.*?)</script>', text, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    storage = f"sqlite:///{tmp / 'demo.db'}"
    make_study(storage)
    out = tmp / "dash.html"
    assert search.main(["dashboard", "--study", "demo", "--storage", storage, "--out", str(out)]) == 0
    return tmp, out, storage


@pytest.fixture(scope="module")
def dom(page, tmp_path_factory):
    """The page rendered once by Chromium, parsed."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    return render(tmp_path_factory.mktemp("render"), page[1])


# proxy epochs behind each network's accuracy: 2, trial 0 promoted to 6
EPOCHS = {n: 6 if n in PROMOTED else 2 for n in range(len(COMPLETE) + len(PRESETS))}
RETRAINED = [i for i, c in enumerate(COMPLETE) if c[-1] is not None]
# the front of the fixture: accuracy (highest rung) vs memory, duplicates and dominated left out
FRONT = [0, 2, 3, 5, 6]


def test_page_is_self_contained(page):
    _, out, _ = page
    text = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|<img[^>]*\bsrc=\"?https?:", text)  # nothing fetched: offline
    assert len(text) > 1_000_000 and "plotly.js v" in text  # the plotly.js bundle is inlined
    s = embedded(text)
    assert s["complete"] == len(COMPLETE) + len(PRESETS)   # networks: the duplicate is not a second one
    assert s["states"] == {"COMPLETE": 10, "PRUNED": 2, "FAIL": 1, "RUNNING": 1}
    assert s["duplicates"] == [DUPLICATE]
    assert s["retrained"] == 3 and s["presets"] == 2
    assert s["kendall_tau"] == pytest.approx(1.0)  # the three retrained keep their proxy order
    assert sorted(s["pareto_trials"]) == FRONT
    assert "RK4 x3 / 64ch" in text and "ho-rk4-x3" in text and 'id="running"' in text
    assert ">72.50</td>" in text and ">71.20</td>" not in text  # trial 0 at its longest fidelity
    assert "highest proxy rung it reached" in text and "Optuna's own dashboard ranks on the first-rung" in text
    assert "budget 1M parameters ± 2%" in text
    assert "full retrain" not in text       # the page names each retrain's protocol and epochs instead


def test_front_table_names_every_front_network(page):
    _, out, _ = page
    text = out.read_text()
    table = re.search(r'<table id="front-table".*?</table>', text, re.S).group(0)
    numbers = [int(n) for n in re.findall(r'<tr data-number="(\d+)"', table)]
    accs = {n: PROMOTED.get(n) or COMPLETE[n][3] for n in FRONT}
    assert numbers == sorted(FRONT, key=lambda n: -accs[n])            # most accurate first
    assert "72.50% <small>at 6 ep</small>" in table                    # at the rung it reached
    assert "92.10% <small>fast 40ep</small>" in table  # protocol and epochs of its retrain, as show words it
    assert all(f">#{n}</td>" in table for n in FRONT)


def test_fidelity_is_never_mixed(page):
    _, out, storage = page
    text = out.read_text()
    row = re.search(r'<tr data-number="0".*?</tr>', re.search(r'<table id="trials-table".*?</table>', text, re.S)
                    .group(0), re.S).group(0)
    assert 'class="k-seconds opt" data-v="30.0"' in row and "12.5" not in row    # the 6-epoch run's seconds
    assert "fast 40ep" in row                                             # the retrain column
    # the scores in the order measured: the promotion, stored last, comes last
    study = optuna.load_study(study_name="demo", storage=storage)
    table = studies.trials_table(study)
    ev = dash.measurements(table, study.user_attrs)
    assert len(ev) == len(COMPLETE) + len(PRESETS) + len(PROMOTED)
    assert (ev["number"].iloc[-1], ev["epochs"].iloc[-1]) == (0, 6)
    assert list(ev.loc[ev["number"] == 0, "current"]) == [False, True]
    hv = [v for _, v in studies.results.hypervolume_history(table, zip(ev["number"], ev["accuracy"]))]
    s = embedded(text)
    assert hv[-1] == pytest.approx(s["hypervolume"])      # the curve ends at the header's figure
    assert hv[-1] > hv[-2]                                # the promotion raised it when it was measured
    # a replaced score leaves the front: a promotion that scores lower lowers the curve
    worse = [(n, a if (n, e) != (0, 6) else 0.30) for n, a, e in zip(ev["number"], ev["accuracy"], ev["epochs"])]
    low = [v for _, v in studies.results.hypervolume_history(table, worse)]
    assert low[-1] < low[-2]


def test_hover_prints_counts_and_epochs_in_words():
    row = pd.Series(dict(number=3, preset="", architecture="RK4 x3 / 64ch", accuracy=74.4, proxy_epochs=1.0,
                         rungs="", retrain_accuracy=float("nan"), retrain_protocol=None, retrain_epochs=None,
                         memory_mib=1.43, params=95074.0, macs=180_000_000.0, family="RK order 4: RK4, RK3/8",
                         pareto=True, duplicates=""))
    text = figures.hover(next(pd.DataFrame([row]).itertuples()))
    assert "params: 95,074 · MACs: 180,000,000" in text and "after 1 epoch<" in text and ".0" not in text


@needs_browser
def test_plots_render_in_headless_chromium(page, dom):
    _, out, _ = page
    s = embedded(out.read_text())
    n_complete, n_retrained = len(COMPLETE) + len(PRESETS), len(RETRAINED)
    expected = {   # the duplicate is drawn nowhere: one network, one point
        "pareto-plot": n_complete + n_retrained,     # proxy + presets + retrained diamonds
        "params-plot": n_complete, "macs-plot": n_complete,
        "retrain-plot": n_retrained,
        "history-plot": n_complete + len(PROMOTED),  # every score measured, the promotion too
        "hypervolume-plot": 0, "importance-plot": 0, "parallel-plot": 0,   # lines and bars
    }
    assert s["plots"] == expected
    assert {k: v for k, v in dom.points.items() if v} == {k: v for k, v in expected.items() if v}, dom.points
    assert all(dom.svg.get(k, 0) >= 1 for k in expected)
    assert sorted(dom.rows) == list(range(N_TRIALS))  # every trial in the table, any state
    assert re.search(r"<h3>Proxy vs retrained accuracy: Kendall(\'|&#39;)s τ = 1\.000 \(n = 3 networks\)</h3>", dom.dom)
    assert 'data-unformatted="budget 1M parameters ± 2%"' in dom.dom
    # the front is labelled #N in the plot, presets by name
    labels = dom.annotations["pareto-plot"]
    assert sorted(x for x in labels if x.startswith("#")) == sorted(
        f"#{n}" + (f" {PRESETS[n - len(COMPLETE)][0]}" if n >= len(COMPLETE) else "") for n in FRONT)
    assert "ho-euler-x14" in labels                                    # a preset off the front, named
    # one legend, the page's: no scatter plot repeats it (the importance bars name their two objectives)
    assert set(dom.legends) <= {"importance-plot"} and 'id="legend"' in dom.dom


@needs_browser
def test_every_point_carries_the_epochs_of_its_y(dom):
    """The number plotly wrote in each marker is the epochs behind its y value: the proxy rung
    for a proxy accuracy (6 for the promoted trial 0), the retrain's epochs for a test accuracy."""
    proxy = sorted(EPOCHS.values())
    expected = {
        "pareto-plot": sorted(proxy + [RETRAIN_EPOCHS] * len(RETRAINED)),
        "params-plot": proxy, "macs-plot": proxy,
        "retrain-plot": [RETRAIN_EPOCHS] * len(RETRAINED),
        "history-plot": sorted([2] * len(EPOCHS) + [6]),
    }
    for plot, want in expected.items():
        numbers = sorted(int(t) for t in dom.texts.get(plot, []) if t and t.isdigit())
        assert numbers == want, (plot, numbers)
        assert len(numbers) == dom.points[plot]


def _rgb(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))


@needs_browser
def test_dominated_points_are_hollow_in_their_colour(page, dom):
    """Filled in the family colour with a black ring on the front; white, ringed in the family
    colour, off it (no fading that blurs families together)."""
    _, out, _ = page
    frame = dash.trials_frame(optuna.load_study(study_name="demo", storage=page[2]))
    fills = dom.fills["params-plot"]
    white, black = _rgb("#ffffff"), _rgb("#000000")
    on = [(f, s) for f, s in fills if s == black]
    off = [(f, s) for f, s in fills if f == white]
    done = frame[frame["accuracy"].notna() & frame["duplicate_of"].isna()]
    assert len(on) == int(done["pareto"].sum()) and len(off) == int((~done["pareto"]).sum())
    colours = {_rgb(c) for c in figures.FAMILY_COLOURS.values()}
    assert {f for f, _ in on} <= colours and {s for _, s in off} <= colours
    # the hypervolume and best-so-far lines take no family's colour
    assert not any(_rgb(c) in re.search(r'id="hypervolume-plot".*?</svg>', dom.dom, re.S).group(0)
                   for c in figures.FAMILY_COLOURS.values())


def test_retrained_diamond_never_hides_its_circle(page):
    """A diamond is drawn under the circles and larger, so a network whose retrained score equals
    its proxy shows both; each proxy -> retrain link is an arrow, unlike the front's solid staircase."""
    study = optuna.load_study(study_name="demo", storage=page[2])
    frame = dash.trials_frame(study)
    done = frame[frame["number"].isin(studies.results.scored(studies.trials_table(study)).index)]
    fig = figures.pareto_figure(done, "memory")
    marked = [list(t.marker.symbol) for t in fig.data if "markers" in (t.mode or "")]
    diamonds = [i for i, sym in enumerate(marked) if set(sym) == {"diamond"}]
    others = [i for i, sym in enumerate(marked) if "diamond" not in sym]
    assert diamonds and others and max(diamonds) < min(others)
    assert figures._SIZE["diamond"] > figures._SIZE["circle"]
    assert [t.line.dash for t in fig.data if t.mode == "lines"] == [None]        # the staircase, solid
    arrows = sorted((a.x, a.ay, a.y) for a in fig.layout.annotations if a.showarrow)
    want = sorted((r.memory_mib, r.accuracy, r.retrain_accuracy) for r in done.itertuples() if r.retrain_accuracy > 0)
    assert arrows == pytest.approx(want)


@needs_browser
def test_duplicate_is_folded_into_its_twin(page, dom):
    _, out, _ = page
    row = dom.row_attrs[DUPLICATE]
    assert row["data-state"] == "DUPLICATE" and row["data-duplicate-of"] == str(TWIN)
    cells = re.search(rf'<tr data-number="{DUPLICATE}"[^>]*>(.*?)</tr>', dom.dom, re.S).group(1)
    assert f"same network as trial {TWIN}" in cells
    assert "73.10" not in cells and "12.5" not in cells      # its copied accuracy and proxy seconds
    assert f"also proposed as trial {DUPLICATE}" in out.read_text()   # the twin's hover names it


@needs_browser
def test_network_of_a_trial_is_drawn(page, dom, tmp_path):
    """On load: the front's most accurate network, every stage with its width; ``#trial=N`` (what a
    click on a marker or row sets) draws trial N's instead."""
    _, out, storage = page
    best = max(FRONT, key=lambda n: PROMOTED.get(n) or COMPLETE[n][3])
    assert dom.network["data-trial"] == str(best)
    spec = ArchSpec.from_json(optuna.load_study(study_name="demo", storage=storage).trials[best].user_attrs["spec"])
    assert [int(s["data-width"]) for s in dom.stages] == [s.width for s in spec.stages]
    other = render(tmp_path, out, "#trial=9")    # the duplicate: its twin's network, drawn from its spec
    assert other.network["data-trial"] == "9"
    assert [s["data-scheme"] for s in other.stages] == ["midpoint"]
    assert re.search(r'<h2 id="network-title">Network of trial 9</h2>', other.dom)
    assert 'class="selected"' in re.search(r'<tr data-number="9"[^>]*>', other.dom).group(0)


@needs_browser
@pytest.mark.parametrize("size", [(1400, 1000), (900, 1400)])
def test_layout_at_two_widths(page, tmp_path, size):
    """No two titles (headings, axis titles, the toolbars, the legend's entries) overlap; nothing
    runs off the page; the table fits its box with its front and note columns in sight."""
    _, out, _ = page
    m = measure(tmp_path, out, size)
    assert m["width"] == size[0]
    items = m["items"]
    assert len([i for i in items if i["what"] == "H3"]) >= 8 and any("modebar" in i["what"] for i in items)

    def overlap(a, b):
        (l1, t1, r1, b1), (l2, t2, r2, b2) = a["r"], b["r"]
        return min(r1, r2) - max(l1, l2) > 1 and min(b1, b2) - max(t1, t2) > 1
    clashes = [(a["what"], a["text"], b["what"], b["text"]) for a, b in itertools.combinations(items, 2)
               if overlap(a, b)]
    assert clashes == []
    assert m["page"] <= size[0]                      # no horizontal scrolling of the page
    assert m["table"] <= m["wrap"] + 1               # the table fits: no column scrolled out of sight
    for key in ("pareto", "reason", "weights", "protocol"):
        assert m["heads"][key][1] <= m["wrap"] + 40, key
    assert m["drawing"] and m["drawing"][0] <= size[0]


@needs_browser
def test_table_sorts_and_filters_in_browser(page, tmp_path):
    _, out, _ = page
    by_acc = render(tmp_path, out, "#sort=accuracy:desc").rows
    accs = {i: a for i, (_, _, _, a, _, _) in enumerate(COMPLETE)}
    accs.update({len(COMPLETE) + i: a for i, (_, a, _) in enumerate(PRESETS)})
    accs.update(PROMOTED)
    assert by_acc[:len(accs)] == sorted(accs, key=lambda k: -accs[k])  # trials without accuracy last
    got = render(tmp_path, out, "#sort=number:desc&state=PRUNED")
    assert got.rows == list(range(N_TRIALS - 1, -1, -1))
    assert sorted(set(got.rows) - got.hidden) == [DUPLICATE + 1, DUPLICATE + 2]
    assert "showing 2 of 14 trials" in got.dom
    front = render(tmp_path, out, "#front=1")
    assert sorted(set(front.rows) - front.hidden) == FRONT
    fam = figures.scheme_family("euler")
    only = render(tmp_path, out, "#family=" + fam.replace(" ", "%20"))
    assert sorted(set(only.rows) - only.hidden) == [0, 1, 7]     # two Euler networks and the Euler preset


def test_csv_download_is_the_show_csv(page, tmp_path):
    _, out, storage = page
    href = re.search(r'<a id="csv-download"[^>]*href="data:text/csv;charset=utf-8,([^"]*)"', out.read_text()).group(1)
    assert 'download="demo-trials.csv"' in out.read_text()
    csv = tmp_path / "show.csv"
    assert search.main(["show", "--study", "demo", "--storage", storage, "--csv", str(csv)]) == 0
    assert unquote(href) == csv.read_text()


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")   # the direct call below
def test_importance_is_optunas_over_first_rung_scores(page):
    """PED-ANOVA over the sampled trials as Optuna stores them (first rung; presets, duplicates out):
    the promoted trial enters with its first score, not its 6-epoch one."""
    _, _, storage = page
    study = optuna.load_study(study_name="demo", storage=storage)
    frame = dash.trials_frame(study)
    trials = space_plots.sampled_trials(study, frame)
    assert sorted(t.number for t in trials) == list(range(len(COMPLETE)))
    assert trials[0].values[0] == pytest.approx(COMPLETE[0][3])
    got = space_plots.importance(study, trials)
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials([t for t in study.trials if t.number < len(COMPLETE)])
    want = optuna.importance.get_param_importances(sub, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                                   target=lambda t: -t.values[0])
    assert got["accuracy"] == pytest.approx(want)
    fig = space_plots.parallel_figure(trials, frame, got)
    dims = {d.label: list(d.values) for d in fig.data[0].dimensions}
    assert dims["val. acc.<br>proxy (%)"] == pytest.approx([72.5, 65.5, 73.1, 74.4, 70.0, 75.2, 69.0])
    assert "stage 1<br>scheme" in dims and "stage 1<br>blocks" in dims
    assert "family" not in dims and "stages" not in dims        # one value in every trial: no axis


def test_refresh_while_running_and_the_time_of_the_data(tmp_path):
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    study = make_study(storage, "w")
    page, info = dash.build_dashboard(study, storage, refresh=30)
    assert info["in_progress"] and 'data-refresh="30"' in page and 'id="auto-refresh"' in page
    assert f'datetime="{info["data_at"]}"' in page and "reload every 30 s" in page
    running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    writes = []

    def finish(_seconds):          # the study ends while the dashboard waits
        for t in running:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    monkey = pytest.MonkeyPatch()
    monkey.setattr(dash.time, "sleep", finish)
    try:
        info = dash.dashboard("w", storage, tmp_path / "w.html", watch=30, say=writes.append)
    finally:
        monkey.undo()
    assert [w["in_progress"] for w in writes] == [True, False]
    assert 'data-refresh="0"' in (tmp_path / "w.html").read_text()   # the last page stops reloading


@needs_browser
def test_screenshot(page, tmp_path):
    _, out, _ = page
    png = tmp_path / "dash.png"
    res = chromium(tmp_path, f"--screenshot={png}", out.resolve().as_uri(), size=(1400, 3000))
    assert res.returncode == 0, res.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 3000)
    assert len(data) > 100_000  # plots, not a blank page


FAMILIES = sorted(set(map(figures.scheme_family, scheme_names())))   # from the registries, not a hand-kept list


@pytest.mark.parametrize("a, b", list(itertools.combinations(FAMILIES, 2)))
def test_scheme_families_have_their_own_colours(a, b):
    """Every family the registries make (tableaux by order, LM, RKCNN) has a colour of its own."""
    assert figures.FAMILY_COLOURS[a] != figures.FAMILY_COLOURS[b]
    assert figures.UNKNOWN not in (a, b)


def test_families_use_the_architectures_names():
    """The legend names schemes as the architecture string does (RK3/8), and the code's names
    (rk38) in its tooltip."""
    fam = figures.scheme_family("rk38")
    assert fam == "RK order 4: RK4, RK3/8" and "RK3/8" in models.describe(
        ArchSpec(stages=(StageSpec(scheme="rk38", blocks=1, width=8),)))
    legend = figures.legend_html({fam}, {"circle"})
    assert 'title="in spec.json and --csv: rk4, rk38"' in legend


@needs_browser
def test_twenty_schemes_do_not_wrap_colours(tmp_path):
    """20 networks of 20 distinct scheme combinations: the colour names the dominant family,
    one legend entry per colour, and no two families share one (a 15-colour palette cycled
    over 20 combinations would)."""
    storage = f"sqlite:///{tmp_path / 'many.db'}"
    study = optuna.create_study(study_name="many", storage=storage, directions=["maximize", "minimize"])
    resnet = [n for n in scheme_names() if n == "lm" or n in models.schemes.TABLEAUX]
    pairs = list(itertools.permutations(resnet, 2))[::3][:20]
    families = set()
    for i, (a, b) in enumerate(pairs):
        spec = ArchSpec(stages=(StageSpec(scheme=a, blocks=2, width=16),
                                StageSpec(scheme=b, blocks=1, width=32, downsample=True)))
        families.add(figures.dominant_family(spec))
        acc, mem = 0.5 + 0.01 * i, 1e6 * (1 + (i * 7) % 20)
        study.add_trial(optuna.trial.create_trial(values=[acc, mem], user_attrs=_attrs(spec, acc, mem)))
    assert len({"+".join(p) for p in pairs}) == 20 and len(families) >= 5
    out = tmp_path / "many.html"
    assert search.main(["dashboard", "--study", "many", "--storage", storage, "--out", str(out)]) == 0
    got = render(tmp_path, out)
    legend = dict(re.findall(r'class="lg" data-family="([^"]+)" data-colour="(#[0-9A-F]{6})"', got.dom))
    assert set(legend) == families and len(set(legend.values())) == len(legend)
    drawn = {f if f != _rgb("#ffffff") else s for f, s in got.fills["pareto-plot"]}
    assert drawn == {_rgb(c) for c in legend.values()}


def test_empty_retrain_panel_names_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'fresh.db'}"
    study = optuna.create_study(study_name="fresh", storage=storage, directions=["maximize", "minimize"])
    spec = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=2, width=32),))
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1e6], user_attrs=_attrs(spec, 0.5, 1e6)))
    out = tmp_path / "fresh.html"
    assert search.main(["dashboard", "--study", "fresh", "--storage", storage, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"python search.py retrain --study fresh --storage {storage}" in text
    assert "retrain-plot" not in embedded(text)["plots"]   # a note, not an empty plot


def test_no_completed_trials_says_so(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    make_study(storage, "empty", complete=False, running=False)
    out = tmp_path / "empty.html"
    assert search.main(["dashboard", "--study", "empty", "--storage", storage, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "has no completed trials" in printed
    text = out.read_text()
    assert 'id="no-trials"' in text and "has no completed trials" in text
    assert embedded(text)["plots"] == {}
    assert text.count('<tr data-number="') == 3  # the pruned and failed trials are still listed


def test_unknown_study_is_one_line_error(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    make_study(storage, "real", complete=False, running=False)
    assert search.main(["dashboard", "--study", "nope", "--storage", storage,
                        "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown study 'nope'") and "real" in err and "\n" not in err
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert search.main(["dashboard", "--study", "x", "--storage", missing]) == 2
    assert "no study database" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()  # reading never creates a storage
