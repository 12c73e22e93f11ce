"""Turn a trial into a spec (SPEC §3).

``sample_spec(trial)`` only calls ``trial.suggest_categorical`` /
``suggest_int``, so it takes an Optuna trial, a ``FixedTrial`` or any object
with those methods; Optuna itself is not imported here. Widths are left
unset: :func:`search_space.budget.solve_widths` fits them to the budget.

Per stage the space chooses: scheme (every registered tableau, ``lm``, or
an RKCNN variant), form (midpoint/rk4), blocks (or RKCNN s and r), nesting
depth, step mode and value, stochastic depth. The number of stages and
which of them downsample are sampled too.
"""
from __future__ import annotations

from typing import Protocol

from models.schemes import TABLEAUX
from models.spec import PAPER_FORMS, RKCNN_SCHEMES, ArchSpec, StageSpec, StepSpec

MAX_STAGES = 3               # stages of a ResNet-style network (HO-ResNet has 1, CIFAR ResNets 3)
MAX_LEAVES_PER_STAGE = 28    # sub-nets per stage: Euler x28 / RK4 x7 / RK8 x2 of 001 at most
MAX_DEPTH = 2                # nesting depth (000 Table 3 goes to "twice")
SAMPLED_LEAVES_PER_BLOCK = 16  # the space nests only where s**(d+1) stays small (midpoint twice: 8, rk4 once: 16);
                               # a spec may nest deeper (models.spec.MAX_LEAVES_PER_BLOCK), the sampler does not
FIXED_STEPS = (0.5, 1.0, 1.2, 2.0, 2.5, 3.0)  # 000 Table 4's factors and a damped 0.5
RKCNN_STAGES = (2, 3, 4, 5)  # s per period (004 Tables 3-5 use 2..6)
RKCNN_STEPS = (1, 2)         # r time-steps per period (003; 004 uses 1)


class TrialLike(Protocol):
    def suggest_categorical(self, name: str, choices): ...
    def suggest_int(self, name: str, low: int, high: int): ...


def _sample_resnet_stage(trial: TrialLike, i: int) -> StageSpec:
    p = f"s{i}."
    downsample = bool(trial.suggest_categorical(p + "downsample", [True, False])) if i else False
    scheme = trial.suggest_categorical(p + "scheme", [*TABLEAUX, "lm"])
    form, depth = "butcher", 0
    if scheme in PAPER_FORMS:
        form = trial.suggest_categorical(p + "form", ["butcher", "paper"])
    if scheme == "lm":
        leaves = 1
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
        return ArchSpec(stages=stages, name="sampled", transition="resblock", head="gap-fc", seed=seed)
    n = trial.suggest_int("periods", 2, 3)
    stages = tuple(_sample_rkcnn_stage(trial, i) for i in range(n))
    attention = trial.suggest_categorical("attention", [True, False])
    return ArchSpec(stages=stages, name="sampled", transition="conv-attention" if attention else "conv",
                    head="multiscale", seed=seed)
