"""studies/dashboard.py: the HTML page, checked in a real headless browser.

The study is built directly with optuna (no training): completed trials of
several schemes, two of the papers' presets, three retrained trials, a trial
that repeated an earlier network (``duplicate_of``), pruned, failed and one
still-running trial. Chromium renders the page; the SVG markers plotly drew in
each plot must match the study's distinct networks, each carrying its epochs,
and colours must name scheme families without wrapping.
"""
from __future__ import annotations

import html.parser
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest

import models
import search
from models import ArchSpec, StageSpec, StepSpec
from models.spec import scheme_names
from studies import figures
from studies.objective import scheme_label

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
PROMOTED = {0: 0.725}  # trial 0 promoted to 6 epochs: the page shows its longest fidelity
TWIN = 2               # the duplicate repeats trial 2's network (retrained, on the front)
DUPLICATE = len(COMPLETE) + len(PRESETS)   # its trial number
RETRAIN_EPOCHS = 40
N_TRIALS = DUPLICATE + 1 + 4               # + 2 pruned, 1 failed, 1 running


def _attrs(spec: ArchSpec, acc: float, inference: float, **extra) -> dict:
    """A completed trial's user attrs as ``studies.objective.prepare`` and ``train`` write them (the schema in docs/design.md)."""
    return {"spec": spec.to_json(), "architecture": models.describe(spec), "scheme": scheme_label(spec),
            "params": 1_000_000 + 1000 * spec.stages[0].blocks, "macs": 150_000_000 + 10_000_000 * spec.stages[0].blocks,
            "inference_bytes_per_image": inference, "training_bytes_per_image": 5 * inference,
            "cuda_peak_bytes": None, "proxy_epochs": 2, "proxy_seconds": 12.5, "device": "cpu", "status": "ok",
            "val_accuracy@2": acc, "val_accuracy": acc, **extra}


def add_retrain(study, number: int, test_accuracy: float, weights_path: str | None = "w.pt",
                protocol: str = "fast") -> None:
    """A full-retrain result as ``studies.retrain`` stores it (study user attr ``retrain:N:LABEL``)."""
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
            study.add_trial(ct(values=[acc, mem], user_attrs=_attrs(spec, acc, mem)))
            if retrained is not None:
                add_retrain(study, study.trials[-1].number, retrained)
        for name_, acc, mem in PRESETS:
            spec = models.presets.get(name_)
            study.add_trial(ct(values=[acc, mem], user_attrs=_attrs(spec, acc, mem, preset=name_)))
        # the sampler proposed trial 2's network again: studies.objective copies its twin's attrs
        twin = study.trials[TWIN]
        study.add_trial(ct(values=twin.values, user_attrs={**twin.user_attrs, "duplicate_of": TWIN}))
        for number, acc in PROMOTED.items():  # as studies.promotion stores a promotion
            study.set_user_attr(f"fidelity:{number}:6", {"number": number, "epochs": 6, "status": "ok",
                                                         "reason": None, "val_accuracy": acc, "seconds": 30.0})
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
    """Per ``div.plotly-graph-div`` of a rendered DOM: markers (``path.point``) with their fill
    colours, the texts plotly wrote at points (``g.textpoint``), the legend's entries
    (name, symbol fill); and the rows of the trials table in document order."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str | None, set]] = []   # (tag, plot id it opens or None, classes)
        self.points: dict[str, int] = {}
        self.fills: dict[str, list[str]] = {}
        self.texts: dict[str, list[str]] = {}
        self.legend: dict[str, list[list]] = {}
        self.svg: dict[str, int] = {}
        self.rows: list[int] = []
        self.row_attrs: dict[int, dict] = {}
        self.in_table = False

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
        cur = pid or self.current()
        if cur:
            fill = re.search(r"fill: (rgb\([^)]*\))", a.get("style") or "")
            if tag == "path" and "point" in classes:
                self.points[cur] = self.points.get(cur, 0) + 1
                self.fills.setdefault(cur, []).append(fill.group(1) if fill else None)
            if tag == "text" and self.inside("textpoint"):
                self.texts.setdefault(cur, []).append(a.get("data-unformatted"))
            if tag == "g" and "traces" in classes and self.inside("legend"):
                self.legend.setdefault(cur, []).append([None, None])
            if tag == "text" and "legendtext" in classes and self.inside("traces"):
                self.legend[cur][-1][0] = a.get("data-unformatted")
            if tag == "path" and "scatterpts" in classes and self.inside("traces") and fill:
                self.legend[cur][-1][1] = fill.group(1)
            if tag == "svg":
                self.svg[cur] = self.svg.get(cur, 0) + 1
        if tag not in _VOID:
            self.stack.append((tag, pid, classes))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def render(tmp_path: Path, page: Path, fragment: str = "") -> PlotCounter:
    """The page's DOM after its scripts ran, parsed (``.dom`` holds the text)."""
    res = chromium(tmp_path, "--dump-dom", page.resolve().as_uri() + fragment)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<svg" in res.stdout, "plotly drew nothing"
    counter = PlotCounter()
    counter.feed(res.stdout)
    counter.dom = res.stdout
    return counter


def embedded_summary(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', text, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    storage = f"sqlite:///{tmp / 'demo.db'}"
    make_study(storage)
    out = tmp / "dash.html"
    assert search.main(["dashboard", "--study", "demo", "--storage", storage, "--out", str(out)]) == 0
    return tmp, out


@pytest.fixture(scope="module")
def dom(page, tmp_path_factory):
    """The page rendered once by Chromium, parsed."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    return render(tmp_path_factory.mktemp("render"), page[1])


# proxy epochs behind each network's accuracy: 2, trial 0 promoted to 6
EPOCHS = {n: 6 if n in PROMOTED else 2 for n in range(len(COMPLETE) + len(PRESETS))}
RETRAINED = [i for i, c in enumerate(COMPLETE) if c[-1] is not None]


def test_page_is_self_contained(page):
    _, out = page
    text = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing fetched: works offline
    assert len(text) > 1_000_000 and "plotly.js v" in text  # the plotly.js bundle is inlined
    s = embedded_summary(text)
    assert s["complete"] == len(COMPLETE) + len(PRESETS)   # networks: the duplicate is not a second one
    assert s["states"] == {"COMPLETE": 10, "PRUNED": 2, "FAIL": 1, "RUNNING": 1}
    assert s["duplicates"] == [DUPLICATE]
    assert s["retrained"] == 3 and s["presets"] == 2
    assert s["kendall_tau"] == pytest.approx(1.0)  # the three retrained keep their proxy order
    # hover text in the papers' naming, preset labels, a note that the study still runs
    assert "RK4 x3 / 64ch" in text and "ho-rk4-x3" in text and 'id="running"' in text
    assert ">72.50</td>" in text and ">71.20</td>" not in text  # trial 0 at its longest fidelity
    # the page says what the front compares, and that Optuna's dashboard can differ
    assert "highest proxy rung it reached" in text and "Optuna's own dashboard ranks on the first-rung" in text
    assert "budget 1M parameters ± 2%" in text


@needs_browser
def test_plots_render_in_headless_chromium(page, dom):
    _, out = page
    s = embedded_summary(out.read_text())
    n_complete, n_retrained = len(COMPLETE) + len(PRESETS), len(RETRAINED)
    expected = {   # the duplicate is drawn nowhere: one network, one point
        "pareto-plot": n_complete + n_retrained,     # proxy + presets + retrained diamonds
        "cost-plot": 2 * n_complete,                 # vs params and vs MACs
        "retrain-plot": n_retrained,
        "history-plot": n_complete,
    }
    assert s["plots"] == expected
    assert dom.points == expected, dom.points
    assert all(dom.svg.get(k, 0) >= 1 for k in expected)
    assert sorted(dom.rows) == list(range(N_TRIALS))  # every trial in the table, any state
    # plotly drew the titles: Kendall's tau of the proxy-vs-retrain plot, over distinct networks
    assert re.search(r'class="gtitle"[^>]*>[^<]*Kendall(\'|&#39;)s τ = 1\.000 \(n = 3 networks\)', dom.dom)
    # the budget ± tolerance is drawn on accuracy vs parameters; hypervolume beside the best so far
    assert 'data-unformatted="budget 1M parameters ± 2%"' in dom.dom
    assert 'data-unformatted="hypervolume of the front so far (normalised)"' in dom.dom


@needs_browser
def test_every_point_carries_its_epochs(dom):
    """The number plotly wrote in each marker is the epochs behind its accuracy: the proxy rung
    each trial reached (6 for the promoted trial 0), the retrain's epochs for a diamond."""
    proxy = sorted(EPOCHS.values())
    expected = {
        "pareto-plot": sorted(proxy + [RETRAIN_EPOCHS] * len(RETRAINED)),
        "cost-plot": sorted(proxy * 2),
        "retrain-plot": sorted(EPOCHS[n] for n in RETRAINED),
        "history-plot": proxy,
    }
    for plot, want in expected.items():
        numbers = sorted(int(t) for t in dom.texts.get(plot, []) if t and t.isdigit())
        assert numbers == want, (plot, numbers)
        assert len(numbers) == dom.points[plot]


@needs_browser
def test_duplicate_is_folded_into_its_twin(page, dom):
    _, out = page
    row = dom.row_attrs[DUPLICATE]
    assert row["data-state"] == "DUPLICATE" and row["data-duplicate-of"] == str(TWIN)
    cells = re.search(rf'<tr data-number="{DUPLICATE}"[^>]*>(.*?)</tr>', dom.dom, re.S).group(1)
    assert f"same network as trial {TWIN}" in cells
    assert "73.10" not in cells and "12.5" not in cells      # its copied accuracy and proxy seconds
    assert f"also proposed as trial {DUPLICATE}" in out.read_text()   # the twin's hover names it


@needs_browser
def test_table_sorts_in_browser(page, tmp_path):
    _, out = page
    by_acc = render(tmp_path, out, "#sort=accuracy:desc").rows
    accs = {i: a for i, (_, _, _, a, _, _) in enumerate(COMPLETE)}
    accs.update({len(COMPLETE) + i: a for i, (_, a, _) in enumerate(PRESETS)})
    accs.update(PROMOTED)
    assert by_acc[:len(accs)] == sorted(accs, key=lambda k: -accs[k])  # trials without accuracy last
    assert render(tmp_path, out, "#sort=number:desc").rows == list(range(N_TRIALS - 1, -1, -1))


@needs_browser
def test_screenshot(page, tmp_path):
    _, out = page
    png = tmp_path / "dash.png"
    res = chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,3000", "--hide-scrollbars",
                   out.resolve().as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 3000)
    assert len(data) > 100_000  # plots, not a blank page


def _rgb(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))


FAMILIES = sorted(set(map(figures.scheme_family, scheme_names())))   # from the registries, not a hand-kept list


@pytest.mark.parametrize("a, b", list(itertools.combinations(FAMILIES, 2)))
def test_scheme_families_have_their_own_colours(a, b):
    """Every family the registries make (tableaux by order, LM, RKCNN) has a colour of its own."""
    assert figures.FAMILY_COLOURS[a] != figures.FAMILY_COLOURS[b]
    assert figures.UNKNOWN not in (a, b)


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
    fills, legend = set(got.fills["pareto-plot"]), got.legend["pareto-plot"]
    named = {colour: [name for name, fill in legend if fill == colour] for colour in fills}
    assert {c: n for c, n in named.items() if len(n) != 1} == {}   # one legend entry per colour, none shared
    for colour, (name,) in named.items():
        assert name in figures.FAMILY_COLOURS and _rgb(figures.FAMILY_COLOURS[name]) == colour
    assert fills == {_rgb(figures.FAMILY_COLOURS[f]) for f in families}


def test_empty_retrain_panel_names_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'fresh.db'}"
    study = optuna.create_study(study_name="fresh", storage=storage, directions=["maximize", "minimize"])
    spec = ArchSpec(stages=(StageSpec(scheme="rk4", blocks=2, width=32),))
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1e6], user_attrs=_attrs(spec, 0.5, 1e6)))
    out = tmp_path / "fresh.html"
    assert search.main(["dashboard", "--study", "fresh", "--storage", storage, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"python search.py retrain --study fresh --storage {storage}" in text
    assert "retrain-plot" not in embedded_summary(text)["plots"]   # a note, not an empty plot


def test_no_completed_trials_says_so(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    make_study(storage, "empty", complete=False, running=False)
    out = tmp_path / "empty.html"
    assert search.main(["dashboard", "--study", "empty", "--storage", storage, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "has no completed trials" in printed
    text = out.read_text()
    assert 'id="no-trials"' in text and "has no completed trials" in text
    assert embedded_summary(text)["plots"] == {}
    assert text.count('data-number="') == 3  # the pruned and failed trials are still listed


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
