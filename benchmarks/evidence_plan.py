"""The sizes of an evidence run (``benchmarks/evidence.py``) and how long they take on one H100.

:class:`Plan` holds every size; :data:`DEFAULT` is the GPU plan and :data:`SMOKE` the
CPU check. :func:`estimate` predicts each stage's minutes from first principles:
training FLOPs = 6 x MACs per image (``models.measure.count_macs``: 2 FLOPs per
multiply-add, backward ~ 2 x forward) x images x epochs, at an assumed achieved
throughput (:data:`H100_BF16_TFLOPS`), plus fixed costs per run and per trial. The
study's networks are a random sample of the search space with widths solved to the
budget, and the papers' presets within 10% of it (what the study enqueues).
``python benchmarks/evidence.py --estimate`` prints it; ``benchmarks/README.md`` explains it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import optuna

import models
import trainers
from models import SpecError
from models.measure import count_macs
from search_space import BudgetError, count_params, parse_budget, sample_spec, solve_widths
from studies.launch import PRESET_SPAN

__all__ = ["DEFAULT", "Plan", "ROW_2M", "SMOKE", "estimate"]

# 001 Table 3, the equal-parameter row at 2.07M (the paper form of RK4 beside the Butcher one)
ROW_2M = ("ho-euler-x28", "ho-midpoint-x14", "ho-rk4-x7", "ho-rk4-paper-x7", "ho-verner8-x2",
          "ho-verner8-adaptive-x2")

# ---- the estimate's assumptions (benchmarks/README.md says where each comes from)
H100_BF16_TFLOPS = 120.0   # achieved training TFLOP/s of the bf16 channels_last proxy, eager (~12% of dense peak)
NAIVE_TFLOPS = 30.0        # the naive fp32 loop (TF32 convolutions), when its DataLoader keeps up
COMPILE_SECONDS = 60.0     # torch.compile of the bench model's train and eval graphs
RUN_SECONDS = 2.0          # per training run: data to the device, build, cuDNN autotuning, evaluation
TRIAL_SECONDS = 2.5        # per study trial besides training: sample, solve, build, measure (CPU), storage;
                           # the CPU smoke measures 1.5 s + 0.7 s for its tiny networks on 2 busy cores
PRUNED_SECONDS = 2.0       # per pruned trial: sample and a failed width solve
CIFAR_TRAIN, CIFAR_VAL = 45_000, 5_000


@dataclass(frozen=True)
class Plan:
    """Sizes of one evidence run: :data:`DEFAULT` (one H100, ~19 min) or :data:`SMOKE` (CPU, ~1 min)."""

    device: str | None = None          # cuda or cpu (None: cuda when available)
    threads: int | None = None         # torch CPU threads (None: torch's default); 1 for tiny networks on a
                                       # busy CPU, where two threads spinning against each other are 30x slower
    synthetic: bool = False            # synthetic data (trainers.synthetic) instead of CIFAR-10
    train_images: int = 1024           # synthetic only: training images (validation/test: a quarter, >= 32)
    image_size: int = 32               # synthetic only: image side, pixels
    batch: int | None = None           # proxy batch override, lr scaled with it (None: the proxy's 512)
    bench_preset: str = "ho-euler-x14"  # the model the bench times (001 Table 3, 1.03M)
    bench_epochs: int | None = None    # bench proxy epochs (None: the proxy protocol's own, 5)
    compile: bool = True               # also time a torch.compile'd proxy (compile seconds apart)
    baseline_workers: int = 8          # DataLoader workers of the naive loop
    baseline_batches: int | None = None  # stop the naive loop's epoch after this many batches
    preset_epochs: int = 8             # proxy epochs of each 2.07M preset
    budget: str = "1.0M"               # the study's parameter budget
    tolerance: float = 0.02            # relative distance to the budget allowed
    trials: int = 40                   # proxy-trained trials the study must hold (pruned ones aside)
    study_epochs: int = 5              # proxy epochs of a study trial (one rung, no promotion)
    retrain_epochs: int = 20           # fast-protocol epochs, fewer if the measured speed says so
    retrain_min: int = 5               # networks retrained: at least
    retrain_max: int = 8               # networks retrained: at most
    stage_minutes: float = 8.5         # the presets, study and retrain stages each stop here (partial, resumable)
    call_minutes: float | None = None  # they also stop this long after the command started (None: no limit)
    prepare_ahead: bool | None = None  # study workers prepare the next trial in a thread while the device
                                       # trains (None: on CUDA); results are bitwise the same either way
                                       # (tests/test_gpu_paths.py), only the wall time changes


DEFAULT = Plan()
SMOKE = Plan(device="cpu", threads=1, synthetic=True, train_images=32, image_size=8, batch=16,
             bench_preset="ho-euler-x4", bench_epochs=1, compile=False, baseline_workers=0, baseline_batches=2,
             preset_epochs=1, budget="100k", tolerance=0.1, trials=6, study_epochs=1, retrain_epochs=1,
             stage_minutes=2.0)
# what may change between the calls of one chain without making earlier stages stale (a study
# asked for more trials grows, as `search.py run` with a larger --trials)
HOW_NOT_WHAT = ("threads", "stage_minutes", "call_minutes", "baseline_workers", "trials", "prepare_ahead")


def _macs(spec) -> int:
    return count_macs(models.build(spec))


def _sampled(budget: int, tolerance: float, n: int, seed: int = 0) -> tuple[list[int], float]:
    """MACs of ``n`` random networks of the search space solved to the budget, and the
    fraction of samples that no widths could fit (pruned in a study)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    macs, pruned = [], 0
    while len(macs) < n:
        trial = study.ask()
        try:
            macs.append(_macs(solve_widths(sample_spec(trial, budget=budget, tolerance=tolerance), budget, tolerance)))
        except (BudgetError, SpecError):
            pruned += 1
        study.tell(trial, 0.0)
    return macs, pruned / (pruned + n)


def estimate(plan: Plan = DEFAULT, samples: int = 40) -> dict:
    """Predicted seconds per stage on one H100 for ``plan`` (CIFAR-10 sizes), with the inputs."""
    hp, fast = trainers.PROTOCOLS["proxy"], trainers.PROTOCOLS["fast"]
    proxy_images = CIFAR_TRAIN // hp["batch_size"] * hp["batch_size"]                  # drop_last
    fast_images = (CIFAR_TRAIN + CIFAR_VAL) // fast["batch_size"] * fast["batch_size"]

    def train_s(macs: float, images: int, epochs: int) -> float:
        return 6 * macs * images * epochs / (H100_BF16_TFLOPS * 1e12)

    bench_macs = _macs(models.presets.get(plan.bench_preset))
    bench_epochs = plan.bench_epochs or hp["epochs"]
    bench = (RUN_SECONDS + train_s(bench_macs, proxy_images, bench_epochs)
             + plan.compile * (COMPILE_SECONDS + RUN_SECONDS + train_s(bench_macs, proxy_images, bench_epochs))
             + 6 * bench_macs * CIFAR_TRAIN / (NAIVE_TFLOPS * 1e12))
    row = {n: _macs(models.presets.get(n)) for n in ROW_2M}
    presets = sum(RUN_SECONDS + train_s(m, proxy_images, plan.preset_epochs) for m in row.values())

    budget = parse_budget(plan.budget)
    near = {n: _macs(models.presets.get(n)) for n in models.presets.names()
            if abs(count_params(models.presets.get(n)) - budget) <= PRESET_SPAN * budget}
    sampled, pruned_frac = _sampled(budget, plan.tolerance, samples)
    mean_sampled = sum(sampled) / len(sampled)
    n_sampled = max(0, plan.trials - len(near))
    n_pruned = n_sampled * pruned_frac / (1 - pruned_frac)
    study = (sum(train_s(m, proxy_images, plan.study_epochs) for m in near.values())
             + n_sampled * train_s(mean_sampled, proxy_images, plan.study_epochs)
             + (len(near) + n_sampled) * (RUN_SECONDS + TRIAL_SECONDS) + n_pruned * PRUNED_SECONDS)
    # the retrained set: the Pareto front (taken as sampled networks of mean size) and the two best presets
    best_presets = sorted(near.values(), reverse=True)[:2]
    retrain_macs = (plan.retrain_max - len(best_presets)) * mean_sampled + sum(best_presets)
    retrain = plan.retrain_max * RUN_SECONDS + train_s(retrain_macs, fast_images, plan.retrain_epochs)
    seconds = {"bench": bench, "presets": presets, "study": study, "retrain": retrain, "report": 20.0}
    return {"seconds": seconds, "total_seconds": sum(seconds.values()),
            "inputs": {"tflops": H100_BF16_TFLOPS, "bench_gmacs": bench_macs / 1e9,
                       "row_2m_gmacs": {k: v / 1e9 for k, v in row.items()},
                       "near_budget_presets_gmacs": {k: v / 1e9 for k, v in near.items()},
                       "sampled_mean_gmacs": mean_sampled / 1e9, "sampled_pruned_fraction": pruned_frac,
                       "study_trials": {"presets": len(near), "sampled": n_sampled, "pruned": n_pruned},
                       "retrain_gmacs_per_epoch_set": retrain_macs / 1e9,
                       "proxy_images_per_epoch": proxy_images, "fast_images_per_epoch": fast_images}}


def plan_key(plan: Plan) -> dict:
    """The fields that make a stage's result what it is (HOW_NOT_WHAT left out)."""
    return {k: v for k, v in dataclasses.asdict(plan).items() if k not in HOW_NOT_WHAT}
