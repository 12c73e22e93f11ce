"""Turn a trial into a spec, and say whether a spec is a point of the space.

``sample_spec(trial)`` only calls ``trial.suggest_categorical`` /
``suggest_int``, so it takes an Optuna trial, a ``FixedTrial`` or any object
with those methods; Optuna itself is not imported here. Widths are left
unset: :func:`search_space.budget.solve_widths` fits them to the budget.

Per stage the space chooses: scheme (every registered tableau, ``lm``, or
an RKCNN variant), blocks (or RKCNN s and r), nesting depth, step mode and
value (a learnable step's start too), stochastic depth (and 002's ``p_L`` where
a stage uses it); the form of midpoint/RK4 only when a study asks for the
papers' printed form. The number of stages and which of them downsample are
sampled too. Given the study's budget, the sizes (depth and blocks, RKCNN s
and r) are asked last, each within what the budget leaves room for
(:mod:`search_space.sizes`), so that the solver meets the budget.

:func:`why_not_in_space` replays a spec through :func:`sample_spec` itself,
answering every question from the spec and checking each answer against the
choices offered (at a budget, the budget's), so the membership test cannot
drift from the sampler. Every registered preset is a point of the space
(``tests/test_presets.py``), and at every budget within 10% of its count
(``tests/test_space_budget.py``).
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

from .budget import DEFAULT_TOLERANCE, MAX_WIDTH, MIN_WIDTH, count_params, nominal_ratios
from .sizes import Room, rkcnn_weights, subnet_weights

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
FIXED_STEPS = (0.5, 1.0, 1.2, 2.0, 2.5, 3.0)  # 000 Table 4's factors and a damped 0.5; a learnable step starts at
                                              # one of them too (000 §4.6 decays a learnable factor from 2)
SURVIVAL_LAST = (0.5, 0.8)   # p_L of stochastic depth: 002 Table 4 uses 0.8 (LM-ResNet-56) and 0.5 (-110)
RKCNN_PERIODS = (2, 3)       # periods of an RKCNN (004 uses 3; 003 Table 1 also has fewer)
RKCNN_STAGES = (2, 7)        # s per period, a range: 004 Tables 3-5 use 2..6 (RKCNN-I-5_5_6), 003 Table 3 up to 7
                             # (7x1); Phase I of a period has s units whose inputs grow to s*k channels,
                             # so at a fixed budget s = 7 costs about twice the proxy time of s = 3
RKCNN_STEPS = (1, 2)         # r time-steps per period, a range (003; 004 uses 1)


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


def _resnet_skeleton(trial: TrialLike, i: int, paper_forms: bool) -> StageSpec:
    """A scheme stage's choices other than its sizes (nesting depth and blocks)."""
    p = f"s{i}."
    downsample = bool(trial.suggest_categorical(p + "downsample", [True, False])) if i else False
    scheme = trial.suggest_categorical(p + "scheme", [*TABLEAUX, "lm"])
    form = "butcher"
    if paper_forms and scheme in PAPER_FORMS:
        # 000/001 eqs. 6-9 as printed are not an ODE step (zero sub-nets map x to 2x): asked for only
        form = trial.suggest_categorical(p + "form", ["butcher", "paper"])
    mode = trial.suggest_categorical(p + "step", ["fixed", "learnable"])
    value = trial.suggest_categorical(p + ("step_value" if mode == "fixed" else "step_init"), list(FIXED_STEPS))
    sd = bool(trial.suggest_categorical(p + "stochastic_depth", [False, True]))
    return StageSpec(scheme=scheme, form=form, step=StepSpec(mode, value), stochastic_depth=sd,
                     downsample=downsample)


def _resnet_sizes(stage: StageSpec) -> tuple[str, str, dict]:
    """The two size questions of a scheme stage and what each answer leads to:
    ``{depth: {blocks: sub-nets}}``."""
    if stage.scheme == "lm":
        return "depth", "blocks", {0: {b: subnet_weights(1, b) for b in range(2, MAX_LEAVES_PER_STAGE + 1)}}
    s = TABLEAUX[stage.scheme].stages
    depths = [0]
    if stage.form == "butcher" and 1 < s and s * s <= SAMPLED_LEAVES_PER_BLOCK:
        depths = [d for d in range(MAX_DEPTH + 1) if s ** (d + 1) <= SAMPLED_LEAVES_PER_BLOCK]
    return "depth", "blocks", {d: {b: subnet_weights(s ** (d + 1), b)
                                   for b in range(1, max(1, MAX_LEAVES_PER_STAGE // s ** (d + 1)) + 1)}
                               for d in depths}


def _rkcnn_sizes(stage: StageSpec, transition: str, first: bool) -> tuple[str, str, dict]:
    """The two size questions of an RKCNN period: ``{s: {r: sub-net equivalents}}``."""
    return "rk_stages", "rk_steps", {s: {r: rkcnn_weights(s, r, stage.scheme, transition, first)
                                         for r in range(RKCNN_STEPS[0], RKCNN_STEPS[1] + 1)}
                                     for s in range(RKCNN_STAGES[0], RKCNN_STAGES[1] + 1)}


def _ask(trial: TrialLike, name: str, allowed: list[int], offered: list[int]) -> int:
    """``suggest_int`` over the span of the values that leave room for the budget
    (all of ``offered`` when there is no budget, or when none does: the network
    cannot meet the budget and is pruned). A question with one answer is not asked
    (the depth of a scheme that does not nest)."""
    if len(offered) == 1:
        return offered[0]
    values = allowed or offered
    return trial.suggest_int(name, min(values), max(values))


def _ask_sizes(trial: TrialLike, stages: list[StageSpec], questions: list, room: Room | None,
               ratios: list[float], resnet: bool) -> list[StageSpec]:
    """Each stage's two size questions, stage by stage, each offering the values that
    leave room for the budget (:meth:`search_space.sizes.Room.allowed`)."""
    later = [(min(min(v.values()) for v in opts.values()), max(max(v.values()) for v in opts.values()))
             for _, _, opts in questions]
    decided, out = [], []
    for i, (stage, (first, second, opts)) in enumerate(zip(stages, questions)):
        p, rest = f"s{i}.", later[i + 1:]

        def allowed(options):
            return room.allowed(decided, options, rest, ratios, resnet) if room else []
        a = _ask(trial, p + first, allowed({k: list(v.values()) for k, v in opts.items()}), list(opts))
        b = _ask(trial, p + second, allowed({k: [w] for k, w in opts[a].items()}), list(opts[a]))
        decided.append(opts[a][b])
        out.append(replace(stage, **{first: a, second: b}))
    return out


def sample_spec(trial: TrialLike, *, seed: int = 0, budget: int | None = None,
                tolerance: float = DEFAULT_TOLERANCE, paper_forms: bool = False, num_classes: int = 10) -> ArchSpec:
    """One architecture without widths. Families: ``resnet`` (1-3 stages of
    scheme blocks; 1 stage at full resolution is HO-ResNet, 000/001) and
    ``rkcnn`` (2-3 periods, 004).

    With a ``budget`` (parameters, met within ``tolerance`` by the width solver)
    the sizes (nesting depth and blocks, RKCNN ``s`` and ``r``) are asked last and
    offer only the values that leave room for the budget
    (:mod:`search_space.sizes`): their ranges depend on the budget and on the
    choices already made (define-by-run), the head being one of ``num_classes``
    classes, as the spec's. ``paper_forms`` adds the paper form of
    midpoint and RK4 (000/001 eqs. 6-9), left out by default.
    """
    room = Room(budget, tolerance, num_classes) if budget else None
    family = trial.suggest_categorical("family", ["resnet", "rkcnn"])
    if family == "resnet":
        first = _resnet_skeleton(trial, 0, paper_forms)
        # asked after the first stage's scheme: at a small budget a scheme whose every
        # stage is too coarse to meet it alone (Verner's 14 sub-nets at 14 channels move
        # the count 8% per channel) comes with a second stage to share the budget
        _, _, sizes = _resnet_sizes(first)
        alone = room is None or room.feasible([[w] for bs in sizes.values() for w in bs.values()], [1.0],
                                              True)[1].any()
        n = trial.suggest_int("stages", 1 if alone else 2, MAX_STAGES)
        skeleton = [first] + [_resnet_skeleton(trial, i, paper_forms) for i in range(1, n)]
        ratios = nominal_ratios(ArchSpec(stages=tuple(skeleton))).tolist()
        stages = _ask_sizes(trial, skeleton, [_resnet_sizes(s) for s in skeleton], room, ratios, True)
        p_last = ArchSpec.survival_last
        if any(s.stochastic_depth for s in stages):
            p_last = trial.suggest_categorical("survival_last", list(SURVIVAL_LAST))
        return ArchSpec(stages=tuple(stages), name="sampled", transition="resblock", head="gap-fc",
                        survival_last=p_last, seed=seed, num_classes=num_classes)
    n = trial.suggest_int("periods", min(RKCNN_PERIODS), max(RKCNN_PERIODS))
    variants = [trial.suggest_categorical(f"s{i}.variant", list(RKCNN_SCHEMES)) for i in range(n)]
    attention = trial.suggest_categorical("attention", [True, False])
    transition = "conv-attention" if attention else "conv"
    skeleton = [StageSpec(scheme=v, downsample=i > 0) for i, v in enumerate(variants)]
    stages = _ask_sizes(trial, skeleton, [_rkcnn_sizes(s, transition, i == 0) for i, s in enumerate(skeleton)],
                        room, [1.0] * n, False)
    return ArchSpec(stages=tuple(stages), name="sampled", transition=transition, head="multiscale", seed=seed,
                    num_classes=num_classes)


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
                "step_init": ("step.value", lambda st: st.step.value),
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

    def __init__(self, spec: ArchSpec, where: str = ""):
        self.spec, self.where = spec, where

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
            raise _Outside(f"{where}: {value!r} lies outside the space's range [{low}, {high}]{self.where}")
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


def why_not_in_space(spec: ArchSpec, *, budget: int | None = None, tolerance: float = DEFAULT_TOLERANCE,
                     paper_forms: bool = False) -> str | None:
    """``None`` if ``spec`` is a point of the space (widths, stem width, name,
    seed and the data set's shape aside), else the first reason it is not.

    The spec is replayed through :func:`sample_spec` with the same ``budget``,
    ``tolerance`` and ``paper_forms`` and the spec's ``num_classes``: every question is
    answered from the spec and must be among the choices (or within the range) the
    sampler offers, and the replayed spec must equal the given one. With a budget, the sizes must also be
    among those the budget leaves room for (:mod:`search_space.sizes`).
    """
    try:
        spec.validate()
    except SpecError as e:
        return f"not a valid spec: {e}"
    where = f" at a budget of {budget:,} params (within {tolerance:.0%})" if budget else ""
    try:
        replayed = sample_spec(_ReplayTrial(spec, where), seed=spec.seed, budget=budget, tolerance=tolerance,
                               paper_forms=paper_forms, num_classes=spec.num_classes)
    except _Outside as e:
        return str(e)
    diff = _first_difference(_chosen(spec), _chosen(replayed))
    if diff and not paper_forms and ".form: 'paper'" in diff:
        diff += " (the paper form of midpoint and RK4 is in the space only when a study asks for it)"
    return diff


def in_space(spec: ArchSpec, **space) -> bool:
    """Whether ``spec`` is a point of the space (see :func:`why_not_in_space`)."""
    return why_not_in_space(spec, **space) is None


# ---------------------------------------------------------------------------
# the space's reach

def reach_specs() -> tuple[list[ArchSpec], list[ArchSpec]]:
    """``(smallest, largest)``, widths aside: per family, the network shape (every
    choice but the sizes) whose smallest network is the largest, at its smallest
    sizes, and the shape whose largest network is the smallest, at its largest
    sizes. At equal widths schemes differ in parameters mostly by their sub-nets, so
    for ResNet-style networks these are :data:`MAX_STAGES` stages of the scheme
    whose smallest stage holds the most sub-nets (Verner: 14) and one stage of the
    scheme whose largest stage holds the fewest (RK4: 10 blocks of 4); for RKCNN,
    the most periods of RKCNN-I (phase II doubles the units) at the fewest stages
    and steps, and the fewest periods of RKCNN-E at the most."""
    def rkcnn(variant: str, periods: int, s: int, r: int, transition: str) -> ArchSpec:
        return ArchSpec(stages=tuple(StageSpec(scheme=variant, rk_stages=s, rk_steps=r, downsample=i > 0)
                                     for i in range(periods)), transition=transition, head="multiscale")
    ends = []
    for scheme in (*TABLEAUX, "lm"):
        _, _, sizes = _resnet_sizes(StageSpec(scheme=scheme))
        table = [(w, d, b) for d, bs in sizes.items() for b, w in bs.items()]
        ends.append((min(table), max(table), scheme))
    (_, d, b), _, scheme = max(ends, key=lambda e: e[0])
    smallest = [ArchSpec(stages=tuple(StageSpec(scheme, b, depth=d, downsample=i > 0) for i in range(MAX_STAGES))),
                rkcnn("rkcnn-i", max(RKCNN_PERIODS), RKCNN_STAGES[0], RKCNN_STEPS[0], "conv-attention")]
    _, (_, d, b), scheme = min(ends, key=lambda e: e[1])
    largest = [ArchSpec(stages=(StageSpec(scheme, b, depth=d),)),
               rkcnn("rkcnn-e", min(RKCNN_PERIODS), RKCNN_STAGES[1], RKCNN_STEPS[1], "conv")]
    return smallest, largest


def param_range() -> tuple[int, int]:
    """The budgets the space reaches: from the smallest that every network shape it
    samples can meet at the width solver's narrowest widths, to the largest that every
    shape can meet at its widest (see :func:`reach_specs`). Inside, the sampler offers
    at every question sizes that leave room for the budget; outside, whole shapes
    could not, so a study refuses such a budget."""
    smallest, largest = reach_specs()
    lo = max(count_params(s.with_widths([MIN_WIDTH] * len(s.stages))) for s in smallest)
    hi = min(count_params(s.with_widths([MAX_WIDTH] * len(s.stages))) for s in largest)
    return lo, hi
