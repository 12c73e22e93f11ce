"""The architecture spec: one frozen dataclass, saved in every trial, checkpoint
and export, and rebuilt from there by ``models.build(spec)``.

Validation raises :class:`SpecError` whose message names the offending field
(``stages[1].scheme``) and the allowed values.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .schemes import TABLEAUX

RKCNN_SCHEMES = ("rkcnn-e", "rkcnn-i", "rkcnn-r")
PAPER_FORMS = ("midpoint", "rk4")            # schemes with a "paper" form (000/001 eqs. 6-9)
TRANSITIONS = ("resblock", "conv", "conv-attention")
HEADS = ("gap-fc", "multiscale")
STEP_MODES = ("fixed", "learnable")
STEP_BOUNDS = (0.125, 4.0)                   # Verner's bound on a fixed step (000 §4.6, 001 §3.6); a learnable
                                             # step starts inside it and may leave it (001 §3.6)
MAX_LEAVES_PER_BLOCK = 256                   # nesting guard: s**(d+1) sub-nets in one block
# Bounds on what a spec may ask for, far above every paper network (ResNet-110: 54 sub-nets,
# 001's RK8 x3: 42), so that a typo or a hostile file is refused before a build eats the machine.
MAX_STAGES = 16                              # stages of one network
MAX_SUBNETS = 4096                           # leaf sub-nets (or RKCNN units) in the whole network
MAX_IMAGE_SIZE = 1024                        # pixels per side
MAX_CHANNELS = 4096                          # channels of a stage or the stem (the width solver stops at 512)
MAX_DROPOUT = 0.9                            # a higher rate leaves too little of a layer to learn from


class SpecError(ValueError):
    """A spec field holds a value that is not allowed; the message names both."""


def scheme_names() -> tuple[str, ...]:
    """Every scheme a stage may name: the tableau registry (the one list of
    Runge-Kutta schemes), ``lm`` and the RKCNN variants."""
    return (*TABLEAUX, "lm", *RKCNN_SCHEMES)


def subnets_per_block(scheme: str, depth: int = 0) -> int:
    """Leaf sub-networks of one block: ``s**(depth+1)`` for a tableau of ``s``
    stages (000 §3.5 nesting), 1 for ``lm`` and RKCNN (counted per period)."""
    return TABLEAUX[scheme].stages ** (depth + 1) if scheme in TABLEAUX else 1


@dataclass(frozen=True)
class StepSpec:
    mode: str = "fixed"    # "fixed": h = value; "learnable": h itself is one parameter per block, init = value, unbounded
    value: float = 1.0     # the step h (000 Table 4 tried 1, 1.2, 2, 2.5, 3)


@dataclass(frozen=True)
class StageSpec:
    scheme: str = "euler"       # a tableau name (models.schemes.TABLEAUX), "lm", or "rkcnn-e" / "rkcnn-i" / "rkcnn-r"
    blocks: int = 1             # blocks of the stage's scheme; after a "resblock" transition the first one carries
                                # the stride / width change (its first sub-net strides, its shortcut zero-pads)
    form: str = "butcher"       # "butcher" (canonical tableau) or "paper" (midpoint/rk4 as in 000/001 eqs. 6-9)
    depth: int = 0              # nesting depth d: a block's sub-nets are increments B(y) - y of blocks of depth d-1;
                                # s**(d+1) leaves
    step: StepSpec = field(default_factory=StepSpec)
    width: int | None = None    # channels of the stage (RKCNN: growth rate k); None until the width solver sets it
    stochastic_depth: bool = False  # drop blocks with probability (l/L)(1 - p_L), 002 §3
    rk_stages: int = 2          # RKCNN s: stages per time-step (004 Algorithm 1)
    rk_steps: int = 1           # RKCNN r: time-steps per period (003 "s x r"; RKCNN uses 1)
    downsample: bool = False    # the transition into this stage halves the resolution

    @property
    def is_rkcnn(self) -> bool:
        return self.scheme in RKCNN_SCHEMES


@dataclass(frozen=True)
class ArchSpec:
    stages: tuple[StageSpec, ...] = (StageSpec(),)
    name: str = "custom"          # preset name or a study's label
    stem_width: int | None = None  # channels of the stem conv3x3; None = the first stage's width
    transition: str = "resblock"  # between stages: "resblock" (the stage's first block changes shape, 002) or
                                  # "conv" / "conv-attention" (RKCNN BN-ReLU-conv1x1-avgpool2 [+ channel attention], 004)
    head: str = "gap-fc"          # "gap-fc" (BN-ReLU-GAP-FC) or "multiscale" (GAP of every stage, concat, FC; 004)
    survival_last: float = 0.5    # p_L of stochastic depth: survival probability of the last block (002 §3)
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32          # pixels (square inputs)
    dropout: float = 0.0          # rate of dropout after each convolution of RKCNN periods and transitions
                                  # (004 §4.1.2 on SVHN: 0.2); 0 = none; only RKCNN networks take it
    seed: int = 0                 # weight-initialisation seed: the same spec always gives the same network

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchSpec":
        if not isinstance(d, dict):
            raise SpecError(f"spec: expected a JSON object, got {type(d).__name__}")
        _check_keys("spec", d, cls)
        stages = d.get("stages", None)
        if not isinstance(stages, (list, tuple)) or not stages:
            raise SpecError("stages: expected a non-empty list of stage objects")
        parsed = []
        for i, s in enumerate(stages):
            if not isinstance(s, dict):
                raise SpecError(f"stages[{i}]: expected an object, got {type(s).__name__}")
            _check_keys(f"stages[{i}]", s, StageSpec)
            s = dict(s)
            step = s.pop("step", {})
            if not isinstance(step, dict):
                raise SpecError(f"stages[{i}].step: expected an object like "
                                f'{{"mode": "fixed", "value": 1.0}}, got {step!r}')
            _check_keys(f"stages[{i}].step", step, StepSpec)
            parsed.append(StageSpec(**s, step=StepSpec(**step)))
        rest = {k: v for k, v in d.items() if k != "stages"}
        spec = cls(stages=tuple(parsed), **rest)
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            d = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except RecursionError:
            raise SpecError("spec: JSON nested too deeply to be a spec (a spec is two levels deep)") from None
        return cls.from_dict(d)

    # -- helpers -------------------------------------------------------------
    def with_widths(self, widths: list[int] | tuple[int, ...], stem_width: int | None = None) -> "ArchSpec":
        if len(widths) != len(self.stages):
            raise SpecError(f"widths: need {len(self.stages)} values, one per stage, got {len(widths)}")
        return replace(self, stages=tuple(replace(s, width=int(w)) for s, w in zip(self.stages, widths)),
                       stem_width=stem_width if stem_width is not None else self.stem_width)

    @property
    def widths(self) -> tuple[int | None, ...]:
        return tuple(s.width for s in self.stages)

    # -- validation ----------------------------------------------------------
    def validate(self, require_widths: bool = False) -> "ArchSpec":
        """Raise :class:`SpecError` naming the first bad field; return self."""
        _one_of("transition", self.transition, TRANSITIONS)
        _one_of("head", self.head, HEADS)
        _int_in("num_classes", self.num_classes, 2, 100_000)
        _int_in("in_channels", self.in_channels, 1, 64)
        _int_in("image_size", self.image_size, 4, MAX_IMAGE_SIZE)
        _int_in("seed", self.seed, 0, 2**63 - 1)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout <= MAX_DROPOUT:
            raise SpecError(f"dropout: must be a number in [0, {MAX_DROPOUT}], got {self.dropout!r}")
        if not isinstance(self.survival_last, (int, float)) or not 0.0 < self.survival_last <= 1.0:
            raise SpecError(f"survival_last: must be a number in (0, 1], got {self.survival_last!r}")
        if self.stem_width is not None:
            _int_in("stem_width", self.stem_width, 1, MAX_CHANNELS)
        if not isinstance(self.stages, tuple) or not self.stages:
            raise SpecError("stages: expected at least one stage")
        if len(self.stages) > MAX_STAGES:
            raise SpecError(f"stages: at most {MAX_STAGES} stages allowed, got {len(self.stages)}")
        subnets = 0
        schemes = scheme_names()
        size = self.image_size
        for i, s in enumerate(self.stages):
            p = f"stages[{i}]"
            _one_of(f"{p}.scheme", s.scheme, schemes)
            _int_in(f"{p}.blocks", s.blocks, 1, 1000)
            _one_of(f"{p}.form", s.form, ("butcher", "paper"))
            if s.form == "paper" and s.scheme not in PAPER_FORMS:
                raise SpecError(f"{p}.form: 'paper' exists only for {', '.join(PAPER_FORMS)}; "
                                f"scheme {s.scheme!r} allows 'butcher'")
            _int_in(f"{p}.depth", s.depth, 0, 4)
            if s.depth and (s.scheme == "lm" or s.is_rkcnn):
                raise SpecError(f"{p}.depth: nesting applies to Runge-Kutta tableau schemes; "
                                f"{s.scheme!r} allows 0, got {s.depth}")
            if s.depth and s.form == "paper":
                raise SpecError(f"{p}.depth: nesting uses the 'butcher' form; form 'paper' allows 0, got {s.depth}")
            leaves = subnets_per_block(s.scheme, s.depth)
            if leaves > MAX_LEAVES_PER_BLOCK:
                raise SpecError(f"{p}.depth: {s.scheme} nested {s.depth} times has {leaves} sub-nets per block; "
                                f"at most {MAX_LEAVES_PER_BLOCK} allowed")
            if not isinstance(s.step, StepSpec):
                raise SpecError(f"{p}.step: expected a StepSpec")
            _one_of(f"{p}.step.mode", s.step.mode, STEP_MODES)
            lo, hi = STEP_BOUNDS
            v = s.step.value
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                what = " (a learnable step's initial value)" if s.step.mode == "learnable" else ""
                raise SpecError(f"{p}.step.value: must lie in [{lo}, {hi}]{what}, got {v!r}")
            if s.width is not None:
                _int_in(f"{p}.width", s.width, 1, MAX_CHANNELS)
            elif require_widths:
                raise SpecError(f"{p}.width: not set; solve widths for a budget "
                                f"(search_space.solve_widths) or give an integer")
            if not isinstance(s.stochastic_depth, bool):
                raise SpecError(f"{p}.stochastic_depth: must be true or false, got {s.stochastic_depth!r}")
            if s.is_rkcnn:
                _int_in(f"{p}.rk_stages", s.rk_stages, 1, 16)
                _int_in(f"{p}.rk_steps", s.rk_steps, 1, 16)
                if s.blocks != 1:
                    raise SpecError(f"{p}.blocks: an RKCNN stage is one period (set rk_stages / rk_steps); allowed 1, "
                                    f"got {s.blocks}")
                if s.stochastic_depth:
                    raise SpecError(f"{p}.stochastic_depth: not defined for RKCNN periods; allowed false")
            if not isinstance(s.downsample, bool):
                raise SpecError(f"{p}.downsample: must be true or false, got {s.downsample!r}")
            if i == 0 and s.downsample:
                raise SpecError("stages[0].downsample: the first stage follows the stem at full resolution; "
                                "allowed false")
            if s.downsample:
                size //= 2
                if size < 1:
                    raise SpecError(f"{p}.downsample: {self.image_size}px input cannot be halved {i} times")
            subnets += (s.rk_stages * s.rk_steps * (1 if s.scheme == "rkcnn-e" else 2) if s.is_rkcnn
                        else s.blocks * subnets_per_block(s.scheme, s.depth))
        if subnets > MAX_SUBNETS:
            raise SpecError(f"stages: {subnets:,} sub-networks in all; at most {MAX_SUBNETS:,} allowed "
                            f"(the largest paper network has 54)")
        if self.dropout and not any(s.is_rkcnn for s in self.stages) and self.transition == "resblock":
            raise SpecError(f"dropout: applies to RKCNN periods and transitions (004), and this network has none; "
                            f"allowed 0, got {self.dropout}")
        if self.head == "multiscale" and self.transition == "resblock":
            raise SpecError("head: 'multiscale' goes with RKCNN transitions ('conv', 'conv-attention'); "
                            "with 'resblock' use 'gap-fc'")
        return self


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``json.loads``'s ``object_pairs_hook`` refusing a key given twice in one object: JSON
    lets the last win, so ``"width": 64, "width": 4096`` would silently build the second."""
    d: dict = {}
    for k, v in pairs:
        if k in d:
            raise SpecError(f"spec: field {k!r} is given twice ({d[k]!r} and {v!r}); give it once")
        d[k] = v
    return d


def _check_keys(where: str, d: dict, cls) -> None:
    allowed = {f.name for f in fields(cls)}
    for k in d:
        if k not in allowed:
            raise SpecError(f"{where}.{k}: unknown field; allowed: {', '.join(sorted(allowed))}")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise SpecError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _int_in(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"{name}: must be an integer in [{lo}, {hi}], got {value!r}")
