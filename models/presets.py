"""The papers' networks as named presets (timm-style registry).

Every preset is a tiny registered function returning an :class:`ArchSpec`;
``names()`` lists the registry and ``get(name)`` fails loudly on unknown
names. Each preset records the parameter count its paper prints, so the
tests hold every preset to its row.

Every preset is a point of the search space, widths aside
(``search_space.sampling.why_not_in_space``); a preset that is not must say why
in its docstring and be listed in ``OUTSIDE_SPACE`` of ``tests/test_presets.py``.

Parameter-count conventions (checked in ``tests/test_presets.py``):

* HO-ResNet (000/001): every printed count matches the network's convolution
  and FC parameters *without* the BatchNorm affine parameters (256 per
  sub-net), e.g. Euler x14 prints 1.03M; conv+FC = 1,034,570 while the full
  network has 1,038,282 (which would print 1.04M). ``count="no-bn"``.
  Two rows of 001 are self-inconsistent with every other row: Euler x42 /
  Midpoint x21 / RK8 x3 print 3.01M (42 sub-nets: 3.10M) and RK4 x10 prints
  2.87M (40 sub-nets: 2.95M); ``consistent=False`` there.
* CIFAR ResNets / LM-ResNets (002) and RKCNN (004): the full parameter count
  matches. ``count="all"``.

At 100 classes (CIFAR-100) the head grows and so does the count: ``cifar100_params``
holds the CIFAR-100 column where a paper prints one (004 Tables 3 and 5: every RKCNN
row; 002 Table 2: ResNet-110 and LM-ResNet-110, 1.7M), and :meth:`PresetInfo.params_on`
picks the printed count for a data set (SVHN has 10 classes: 004 says its counts are
CIFAR-10's). 002 Table 2's LM-ResNet-164 (2.55M) uses bottleneck blocks, which no spec
describes, so it is not a preset.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Callable

from ._rkcnn import PAPER_PARAM_ROWS
from .spec import ArchSpec, StageSpec, StepSpec


@dataclass(frozen=True)
class PresetInfo:
    name: str
    fn: Callable[[], ArchSpec]
    paper_params: str | None     # as printed, e.g. "1.03M" / "0.977M"
    source: str                  # paper and table
    count: str = "all"           # "all" parameters, or "no-bn": conv + FC only (see module docstring)
    consistent: bool = True      # False where the paper's row contradicts its other rows
    paper_accuracy: float | None = None  # CIFAR-10 test accuracy printed in the row, percent
    cifar100_params: str | None = None   # the row's count at 100 classes, as printed (CIFAR-100 column)

    def params_on(self, dataset: str) -> str | None:
        """The printed count for ``dataset`` (``cifar10``, ``svhn``: 10 classes; ``cifar100``),
        None where the paper prints none."""
        return {"cifar10": self.paper_params, "svhn": self.paper_params,
                "cifar100": self.cifar100_params}.get(dataset)

    def accuracy_on(self, dataset: str) -> float | None:
        """The printed test accuracy for ``dataset``; only CIFAR-10's are recorded."""
        return self.paper_accuracy if dataset == "cifar10" else None


_REGISTRY: dict[str, PresetInfo] = {}


def register(name: str, paper_params: str | None, source: str, **info):
    def deco(fn: Callable[[], ArchSpec]):
        if name in _REGISTRY:
            raise ValueError(f"preset {name!r} registered twice")
        _REGISTRY[name] = PresetInfo(name, fn, paper_params, source, **info)
        return fn
    return deco


def names() -> list[str]:
    """Every registered preset name, sorted."""
    return sorted(_REGISTRY)


def similar(name: str, n: int = 6) -> list[str]:
    """Registered names near ``name``, nearest first, case ignored: the same name in other case,
    then the same family with the nearest trailing number (``ho-rk4-x8`` -> ``ho-rk4-x7``,
    ``ho-rk4-x10``, ...), then names that read alike."""
    low = name.strip().lower()
    by_low = {k.lower(): k for k in _REGISTRY}
    out = [by_low[low]] if low in by_low else []
    m = re.fullmatch(r"(.*?)(\d+)", low)
    if m:
        stem, num = m.group(1), int(m.group(2))
        kin = [(abs(int(k[len(stem):]) - num), k) for k in by_low if k.startswith(stem) and k[len(stem):].isdigit()]
        out += [by_low[k] for _, k in sorted(kin)]
    out += [by_low[k] for k in difflib.get_close_matches(low, list(by_low), n=n, cutoff=0.6)]
    return list(dict.fromkeys(out))[:n]


def info(name: str) -> PresetInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = similar(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown preset {name!r} ({len(_REGISTRY)} registered, "
                         f"see `models.presets.names()`{hint})") from None


def get(name: str) -> ArchSpec:
    """The spec of a registered preset (raises ValueError for unknown names)."""
    return replace(info(name).fn(), name=name)


# ---------------------------------------------------------------------------
# HO-ResNet (000/001 §4.1): conv3x3(3->64), blocks at 64 channels, 32x32.

def _ho(scheme: str, blocks: int, *, form="butcher", depth=0, step=StepSpec()) -> ArchSpec:
    model_args = dict(scheme=scheme, blocks=blocks, form=form, depth=depth, step=step, width=64)
    return ArchSpec(stages=(StageSpec(**model_args),), stem_width=64, head="gap-fc")


# 001 Table 3 (CIFAR-10): (scheme, blocks, printed params, accuracy)
_HO_ROWS = [
    ("euler", 4, "0.3M", 91.72), ("midpoint", 2, "0.3M", 91.97), ("rk4", 1, "0.3M", 91.51),
    ("euler", 8, "0.59M", 92.68), ("midpoint", 4, "0.59M", 92.95), ("rk4", 2, "0.59M", 92.98),
    ("euler", 14, "1.03M", 93.02), ("midpoint", 7, "1.03M", 93.17), ("verner8", 1, "1.03M", 93.39),
    ("rk4", 3, "0.89M", 93.41),
    ("euler", 28, "2.07M", 92.81), ("midpoint", 14, "2.07M", 94.08), ("rk4", 7, "2.07M", 94.79),
    ("verner8", 2, "2.07M", 94.91),
    ("euler", 42, "3.01M", 92.73), ("midpoint", 21, "3.01M", 93.87), ("rk4", 10, "2.87M", 94.83),
    ("verner8", 3, "3.01M", 95.02),
]
_HO_ADAPTIVE = [(1, "1.03M", 94.17), (2, "2.07M+2", 95.06), (3, "3.01M+3", 95.15)]
_HO_INCONSISTENT = {("euler", 42), ("midpoint", 21), ("verner8", 3), ("rk4", 10)}


def _register_ho():
    for scheme, n, params, acc in _HO_ROWS:
        ok = (scheme, n) not in _HO_INCONSISTENT
        register(f"ho-{scheme}-x{n}", params, "001 Table 3", count="no-bn", consistent=ok,
                 paper_accuracy=acc)(lambda s=scheme, n=n: _ho(s, n))
        if scheme in ("midpoint", "rk4"):
            # the papers' own wiring (000/001 eqs. 6-9); same parameters
            register(f"ho-{scheme}-paper-x{n}", params, "001 Table 3 (paper form)", count="no-bn",
                     consistent=ok)(lambda s=scheme, n=n: _ho(s, n, form="paper"))
    for n, params, acc in _HO_ADAPTIVE:
        # "RK8 Adaptive" (001 §2.4): Verner with one learnable step per block
        register(f"ho-verner8-adaptive-x{n}", params, "001 Table 3", count="no-bn", consistent=n != 3,
                 paper_accuracy=acc)(lambda n=n: _ho("verner8", n, step=StepSpec("learnable", 1.0)))


_register_ho()


# 000 Table 3: nested midpoint (000 §3.5, §4.5)
@register("ho-midpoint-x8", "1.18M", "000 Table 3", count="no-bn", paper_accuracy=93.86)
def ho_midpoint_x8():
    return _ho("midpoint", 8)


@register("ho-nest-midpoint-x4-once", "0.59M", "000 Table 3", count="no-bn", paper_accuracy=93.12)
def ho_nest_midpoint_x4_once():
    # "x4" counts depth-0 midpoint blocks: 2 outer blocks of depth 1 = 8 leaves
    return _ho("midpoint", 2, depth=1)


@register("ho-nest-midpoint-x8-once", "1.18M", "000 Table 3", count="no-bn", paper_accuracy=93.72)
def ho_nest_midpoint_x8_once():
    return _ho("midpoint", 4, depth=1)


@register("ho-nest-midpoint-x8-twice", "1.18M", "000 Table 3", count="no-bn", paper_accuracy=93.81)
def ho_nest_midpoint_x8_twice():
    return _ho("midpoint", 2, depth=2)


# 000 Table 4: one fixed Verner block with scaling factor F
for _f, _acc in ((1.2, 93.56), (2.0, 94.17), (2.5, 94.09), (3.0, 93.67)):
    register(f"ho-verner8-x1-f{_f:g}", "1.03M", "000 Table 4", count="no-bn", paper_accuracy=_acc)(
        lambda f=_f: _ho("verner8", 1, step=StepSpec("fixed", f)))


# ---------------------------------------------------------------------------
# CIFAR pre-act ResNet and LM-ResNet (002): 16/32/64 channels at 32/16/8.
#
# Every one is pre-activation (BN-ReLU-conv, He et al. 2016), as 002's LM-ResNets and every
# network the search samples, so that a comparison with them changes the stacking only.
# 002 Table 2's ResNet-20/32/44/56 rows (He et al. 2015b) are the original *post*-activation
# networks: the same parameter counts, but their printed errors belong to another block design,
# so our pre-activation ResNet-20..56 carry no printed accuracy. Its ResNet-110 row is the
# pre-activation network of He et al. 2016, and is ours.

def _cifar(scheme: str, depth: int, *, stochastic_depth=False, survival_last=0.5) -> ArchSpec:
    n = (depth - 2) // 6  # blocks per stage: depth = 6n + 2
    stages = tuple(StageSpec(scheme=scheme, blocks=n, width=w, downsample=i > 0,
                             stochastic_depth=stochastic_depth) for i, w in enumerate((16, 32, 64)))
    return ArchSpec(stages=stages, stem_width=16, transition="resblock", head="gap-fc",
                    survival_last=survival_last)


def _preset(doc: str, fn: Callable[[], ArchSpec]) -> Callable[[], ArchSpec]:
    fn.__doc__ = doc
    return fn


# depth: (printed params, ResNet's printed CIFAR-10 error if pre-activation, LM-ResNet's printed error), 002 Table 2
_CIFAR_ROWS = {20: ("0.27M", None, 8.33), 32: ("0.46M", None, 7.18), 44: ("0.66M", None, 6.66),
               56: ("0.85M", None, 6.31), 110: ("1.7M", 6.37, None)}

for _d, (_p, _res_err, _lm_err) in _CIFAR_ROWS.items():
    # 002 Table 2 prints the 110-layer networks on CIFAR-100 too: 1.7M (ResNet-110 after Huang et al.)
    _c100 = "1.7M" if _d == 110 else None
    if _res_err is None:
        _src = f"pre-activation; 002 Table 2's ResNet-{_d} is post-activation (He et al. 2015b), same count"
        _doc = (f"Pre-activation ResNet-{_d} (He et al. 2016 blocks). 002 Table 2 prints ResNet-{_d} for the "
                f"original post-activation network (He et al. 2015b): the same {_p} parameters, another block, "
                "so no printed accuracy is attached here.")
    else:
        _src = "pre-activation, 002 Table 2 (He et al. 2016)"
        _doc = f"Pre-activation ResNet-{_d}, 002 Table 2's row from He et al. 2016 ({_res_err}% error)."
    register(f"resnet-{_d}", _p, _src, paper_accuracy=None if _res_err is None else round(100 - _res_err, 2),
             cifar100_params=_c100)(
        _preset(_doc, lambda d=_d: _cifar("euler", d)))
    if _lm_err is not None:
        _src, _doc = ("pre-activation, 002 Table 2",
                      f"LM-ResNet-{_d}, pre-activation (002 Table 2: {_lm_err}% error on CIFAR-10).")
    else:
        _src, _doc = ("pre-activation, 002 (Table 2 has it on CIFAR-100 only)",
                      f"LM-ResNet-{_d}, pre-activation; 002 prints it on CIFAR-100 only (Table 2), and on "
                      "CIFAR-10 with stochastic depth (Table 4, lm-resnet-110-sd).")
    register(f"lm-resnet-{_d}", _p, _src, paper_accuracy=None if _lm_err is None else round(100 - _lm_err, 2),
             cifar100_params=_c100)(
        _preset(_doc, lambda d=_d: _cifar("lm", d)))

# 002 Table 4: LM-ResNet with stochastic depth, p_L = 0.8 (56) and 0.5 (110)
register("lm-resnet-56-sd", "0.85M", "pre-activation, 002 Table 4", paper_accuracy=94.86)(_preset(
    "LM-ResNet-56 with stochastic depth, p_L = 0.8, pre-activation (002 Table 4: 5.14% error).",
    lambda: _cifar("lm", 56, stochastic_depth=True, survival_last=0.8)))
register("lm-resnet-110-sd", "1.7M", "pre-activation, 002 Table 4", paper_accuracy=95.20)(_preset(
    "LM-ResNet-110 with stochastic depth, p_L = 0.5, pre-activation (002 Table 4: 4.80% error).",
    lambda: _cifar("lm", 110, stochastic_depth=True, survival_last=0.5)))


# ---------------------------------------------------------------------------
# RKCNN (004 §4.1.2): conv3x3(3->k1), periods, attentional transitions, multiscale head.

def _rkcnn(variant: str, growth, stages, steps=1) -> ArchSpec:
    periods = tuple(StageSpec(scheme=f"rkcnn-{variant}", width=k, rk_stages=s, rk_steps=steps,
                              downsample=i > 0) for i, (k, s) in enumerate(zip(growth, stages)))
    return ArchSpec(stages=periods, stem_width=growth[0], transition="conv-attention", head="multiscale")


def _rkcnn_name(row: dict) -> str:
    k = row["growth"]
    ks = f"k{k[0]}" if len(set(k)) == 1 else "k" + "_".join(map(str, k))
    return f"rkcnn-{row['variant']}-{'_'.join(map(str, row['stages']))}-{ks}"


for _row in PAPER_PARAM_ROWS:
    register(_rkcnn_name(_row), _row["cifar10"] + "M", _row["source"], cifar100_params=_row["cifar100"] + "M")(
        lambda r=_row: _rkcnn(r["variant"], r["growth"], r["stages"]))
