"""Turn a trial into a spec, and say whether a spec is a point of the space.

``sample_spec(trial)`` only calls ``trial.suggest_categorical`` /
``suggest_int``, so it takes an Optuna trial, a ``FixedTrial`` or any object
with those methods; Optuna itself is not imported here. Widths are left
unset: :func:`search_space.budget.solve_widths` fits them to the budget.

Per stage the space chooses: scheme (every registered tableau, ``lm``, or
an RKCNN variant), form (midpoint/rk4), blocks (or RKCNN s and r), nesting
depth, step mode and value, stochastic depth (and 002's ``p_L`` where a stage
uses it). The number of stages and which of them downsample are sampled too.

:func:`why_not_in_space` replays a spec through :func:`sample_spec` itself,
answering every question from the spec and checking each answer against the
choices offered, so the membership test cannot drift from the sampler. Every
registered preset is a point of the space (``tests/test_presets.py``).
"""
from __future__ import annotations

import random
from dataclasses import fields, replace
from typing import Protocol

from models.schemes import TABLEAUX
from models.spec import (
    PAPER_FORMS,
    RKCNN_SCHEMES,
    ArchSpec,
    SpecError,
    StageSpec,
    StepSpec,
)

from .budget import MAX_WIDTH, WIDTH_MULTIPLE, count_params

# Caps. Each bounds the cost of the deepest network the space can draw; each
# reaches the papers' largest network of its kind.
MAX_STAGES = 3               # stages of a ResNet-style network (HO-ResNet has 1, CIFAR ResNets 3)
MAX_LEAVES_PER_STAGE = 42    # sub-nets per stage: 001's ResNet-86 rows (Euler x42, Midpoint x21, RK4 x10,
                             # RK8 x3). At a fixed budget the width shrinks as depth grows, so MACs stay about
                             # level, but a proxy epoch runs sub-nets one after another: a 42-sub-net stage
                             # takes about 1.5x the time of the 28 of 001's 58-layer rows
MAX_DEPTH = 2                # nesting depth (000 Table 3 goes to "twice")
SAMPLED_LEAVES_PER_BLOCK = 16  # the space nests only where s**(d+1) stays small (midpoint twice: 8, rk4 once: 16);
                               # a spec may nest deeper (models.spec.MAX_LEAVES_PER_BLOCK), the sampler does not:
                               # rk4 twice (64 leaves) or Verner once (196) would be one block past the stage cap
FIXED_STEPS = (0.5, 1.0, 1.2, 2.0, 2.5, 3.0)  # 000 Table 4's factors and a damped 0.5
SURVIVAL_LAST = (0.5, 0.8)   # p_L of stochastic depth: 002 Table 4 uses 0.8 (LM-ResNet-56) and 0.5 (-110)
RKCNN_PERIODS = (2, 3)       # periods of an RKCNN (004 uses 3; 003 Table 1 also has fewer)
RKCNN_STAGES = (2, 3, 4, 5, 6, 7)  # s per period: 004 Tables 3-5 use 2..6 (RKCNN-I-5_5_6), 003 Table 3 up to 7
                                   # (7x1); Phase I of a period has s units whose inputs grow to s*k channels,
                                   # so at a fixed budget s = 7 costs about twice the proxy time of s = 3
RKCNN_STEPS = (1, 2)         # r time-steps per period (003; 004 uses 1)


class TrialLike(Protocol):
    def suggest_categorical(self, name: str, choices): ...
    def suggest_int(self, name: str, low: int, high: int): ...


class RandomTrial:
    """Answers :func:`sample_spec`'s questions uniformly at random, seeded: the space
    sampled without a study (tests, benchmarks). ``params`` records the answers."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.params: dict = {}

    def suggest_categorical(self, name: str, choices):
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]

    def suggest_int(self, name: str, low: int, high: int):
        self.params[name] = self.rng.randint(low, high)
        return self.params[name]


def _sample_resnet_stage(trial: TrialLike, i: int) -> StageSpec:
    p = f"s{i}."
    downsample = bool(trial.suggest_categorical(p + "downsample", [True, False])) if i else False
    scheme = trial.suggest_categorical(p + "scheme", [*TABLEAUX, "lm"])
    form, depth = "butcher", 0
    if scheme in PAPER_FORMS:
        form = trial.suggest_categorical(p + "form", ["butcher", "paper"])
    if scheme == "lm":
        blocks = trial.suggest_int(p + "blocks", 2, MAX_LEAVES_PER_STAGE)
    else:
        s = TABLEAUX[scheme].stages
        if form == "butcher" and 1 < s and s * s <= SAMPLED_LEAVES_PER_BLOCK:
            deepest = max(d for d in range(MAX_DEPTH + 1) if s ** (d + 1) <= SAMPLED_LEAVES_PER_BLOCK)
            depth = trial.suggest_int(p + "depth", 0, deepest)
        leaves = s ** (depth + 1)
        blocks = trial.suggest_int(p + "blocks", 1, max(1, MAX_LEAVES_PER_STAGE // leaves))
    mode = trial.suggest_categorical(p + "step", ["fixed", "learnable"])
    value = trial.suggest_categorical(p + "step_value", list(FIXED_STEPS)) if mode == "fixed" else 1.0
    sd = bool(trial.suggest_categorical(p + "stochastic_depth", [False, True]))
    return StageSpec(scheme=scheme, blocks=blocks, form=form, depth=depth, step=StepSpec(mode, value),
                     stochastic_depth=sd, downsample=downsample)


def _sample_rkcnn_stage(trial: TrialLike, i: int) -> StageSpec:
    p = f"s{i}."
    variant = trial.suggest_categorical(p + "variant", list(RKCNN_SCHEMES))
    s = trial.suggest_categorical(p + "rk_stages", list(RKCNN_STAGES))
    r = trial.suggest_categorical(p + "rk_steps", list(RKCNN_STEPS))
    return StageSpec(scheme=variant, rk_stages=s, rk_steps=r, downsample=i > 0)


def sample_spec(trial: TrialLike, *, seed: int = 0) -> ArchSpec:
    """One architecture without widths. Families: ``resnet`` (1-3 stages of
    scheme blocks; 1 stage at full resolution is HO-ResNet, 000/001) and
    ``rkcnn`` (2-3 periods, 004)."""
    family = trial.suggest_categorical("family", ["resnet", "rkcnn"])
    if family == "resnet":
        n = trial.suggest_int("stages", 1, MAX_STAGES)
        stages = tuple(_sample_resnet_stage(trial, i) for i in range(n))
        p_last = ArchSpec.survival_last
        if any(s.stochastic_depth for s in stages):
            p_last = trial.suggest_categorical("survival_last", list(SURVIVAL_LAST))
        return ArchSpec(stages=stages, name="sampled", transition="resblock", head="gap-fc",
                        survival_last=p_last, seed=seed)
    n = trial.suggest_int("periods", min(RKCNN_PERIODS), max(RKCNN_PERIODS))
    stages = tuple(_sample_rkcnn_stage(trial, i) for i in range(n))
    attention = trial.suggest_categorical("attention", [True, False])
    return ArchSpec(stages=stages, name="sampled", transition="conv-attention" if attention else "conv",
                    head="multiscale", seed=seed)


# ---------------------------------------------------------------------------
# membership

# Fields the space does not choose: widths are solved for the budget (the stem
# with them), the name and seed label a network, the data set fixes the input and classes,
# and a retrain protocol the dropout.
_NOT_CHOSEN = ("name", "seed", "stem_width", "num_classes", "in_channels", "image_size", "dropout")

# How a trial parameter reads from a spec: "s{i}.<field>" is stage i's field
# unless renamed here (to the spec path and its reader); the rest are top-level.
_STAGE_READS = {"step": ("step.mode", lambda st: st.step.mode),
                "step_value": ("step.value", lambda st: st.step.value),
                "variant": ("scheme", lambda st: st.scheme)}
_TOP_READS = {"family": lambda sp: "rkcnn" if sp.stages[0].is_rkcnn else "resnet",
              "stages": lambda sp: len(sp.stages), "periods": lambda sp: len(sp.stages),
              "attention": lambda sp: sp.transition == "conv-attention",
              "survival_last": lambda sp: sp.survival_last}


class _Outside(Exception):
    pass


class _ReplayTrial:
    """Answers each question of :func:`sample_spec` from a spec; an answer the
    question does not offer ends the replay with the reason."""

    def __init__(self, spec: ArchSpec):
        self.spec = spec

    def _read(self, name: str):
        """``(value, spec path)`` of a trial parameter."""
        if name in _TOP_READS:
            return _TOP_READS[name](self.spec), name
        head, field = name.split(".", 1)
        i = int(head[1:])
        path, read = _STAGE_READS.get(field, (field, lambda st: getattr(st, field)))
        return read(self.spec.stages[i]), f"stages[{i}].{path}"

    def suggest_categorical(self, name: str, choices):
        value, where = self._read(name)
        for c in choices:
            if c == value and isinstance(c, bool) == isinstance(value, bool):  # True is not 1
                return c
        raise _Outside(f"{where}: {value!r} is not among the space's choices {list(choices)}")

    def suggest_int(self, name: str, low: int, high: int):
        value, where = self._read(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Outside(f"{where}: {value!r} lies outside the space's range [{low}, {high}]")
        return value


def _chosen(spec: ArchSpec) -> dict:
    """The parts of a spec the space chooses, as a plain dict."""
    defaults = {f.name: f.default for f in fields(ArchSpec)}
    spec = replace(spec, stages=tuple(replace(s, width=None) for s in spec.stages),
                   **{k: defaults[k] for k in _NOT_CHOSEN})
    return spec.to_dict()


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            d = _first_difference(a[k], b.get(k), f"{path}.{k}" if path else k)
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} where the space gives {b!r}"


def why_not_in_space(spec: ArchSpec) -> str | None:
    """``None`` if ``spec`` is a point of the space (widths, stem width, name,
    seed and the data set's shape aside), else the first reason it is not.

    The spec is replayed through :func:`sample_spec`: every question is
    answered from the spec and must be among the choices (or within the range)
    the sampler offers, and the replayed spec must equal the given one.
    """
    try:
        spec.validate()
    except SpecError as e:
        return f"not a valid spec: {e}"
    try:
        replayed = sample_spec(_ReplayTrial(spec), seed=spec.seed)
    except _Outside as e:
        return str(e)
    return _first_difference(_chosen(spec), _chosen(replayed))


def in_space(spec: ArchSpec) -> bool:
    """Whether ``spec`` is a point of the space (see :func:`why_not_in_space`)."""
    return why_not_in_space(spec) is None


# ---------------------------------------------------------------------------
# the space's reach

def extreme_specs() -> tuple[list[ArchSpec], list[ArchSpec]]:
    """``(smallest, largest)``: per family, the space's network with the fewest and the
    most sub-networks its caps allow, widths aside. At equal width and sub-net count the
    schemes hold the same parameters (up to one scalar per block), so these bound every
    network the sampler can draw: one Euler block against :data:`MAX_STAGES` stages of
    :data:`MAX_LEAVES_PER_STAGE` sub-nets; one RKCNN-E period of the fewest stages against
    the most periods of RKCNN-I (phase II doubles the units) of the most stages and steps."""
    def rkcnn(variant: str, periods: int, s: int, r: int) -> ArchSpec:
        return ArchSpec(stages=tuple(StageSpec(scheme=variant, rk_stages=s, rk_steps=r, downsample=i > 0)
                                     for i in range(periods)), transition="conv", head="multiscale")
    smallest = [ArchSpec(stages=(StageSpec("euler", 1),)),
                rkcnn("rkcnn-e", min(RKCNN_PERIODS), min(RKCNN_STAGES), min(RKCNN_STEPS))]
    largest = [ArchSpec(stages=tuple(StageSpec("euler", MAX_LEAVES_PER_STAGE, downsample=i > 0)
                                     for i in range(MAX_STAGES))),
               rkcnn("rkcnn-i", max(RKCNN_PERIODS), max(RKCNN_STAGES), max(RKCNN_STEPS))]
    return smallest, largest


def param_range() -> tuple[int, int]:
    """The fewest and the most parameters a network of the space can have, at the width
    solver's narrowest and widest widths: a budget outside cannot be met by any trial."""
    smallest, largest = extreme_specs()
    lo = min(count_params(s.with_widths([WIDTH_MULTIPLE] * len(s.stages))) for s in smallest)
    hi = max(count_params(s.with_widths([MAX_WIDTH] * len(s.stages))) for s in largest)
    return lo, hi
