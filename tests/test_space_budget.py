"""The space at a budget: what the sampler offers can be brought to the budget (at most
1% pruned), every paper network near a budget is a point of the space there, and the
width solver's finer widths and free stem give exact counts."""
import collections

import pytest

import models
from models import ArchSpec, StageSpec, StepSpec, presets
from models.blocks import LearnableStep
from search_space import BudgetError, RandomTrial, count_params, param_range, sample_spec, solve_widths
from search_space import param_count
from search_space.param_count import ParamCounter
from search_space.sampling import FIXED_STEPS, reach_specs, why_not_in_space

SAMPLES = 300


@pytest.mark.parametrize("budget", [100_000, 1_000_000, 10_000_000])
def test_at_most_one_percent_of_sampled_networks_miss_the_budget(budget):
    """A property of the space at a budget, over a few hundred seeded samples at the
    default 2%: the sampler offers only sizes the budget leaves room for, and the solver
    finds widths for all but at most 1% of them. Every tenth solved network is built
    and counted, so the solver's count is the network's, and replayed: it is a point of
    the space at that budget."""
    pruned, counted = [], 0
    for seed in range(SAMPLES):
        spec = sample_spec(RandomTrial(seed), budget=budget)
        try:
            solved = solve_widths(spec, budget, 0.02)
        except BudgetError as e:
            pruned.append((seed, models.describe(spec), str(e)))
            continue
        if seed % 10 == 0:
            assert abs(count_params(solved) - budget) <= 0.02 * budget, (seed, solved.widths, solved.stem_width)
            # what the space at a budget samples stays in it, widths and stem solved
            assert why_not_in_space(solved, budget=budget) is None, (seed, models.describe(solved))
            counted += 1
    assert len(pruned) <= SAMPLES // 100, pruned
    assert counted >= SAMPLES // 10 - 3


def test_the_space_at_a_budget_counts_the_data_sets_head():
    """The head holds (2 + classes) parameters per channel it reads: at 50k with 1,000
    classes (a folder data set) a quarter of the networks sized for a 10-class head miss
    the budget; sized for the real head, at most 1% do."""
    budget, pruned = 50_000, []
    for seed in range(200):
        spec = sample_spec(RandomTrial(seed), budget=budget, num_classes=1000)
        assert spec.num_classes == 1000
        try:
            solve_widths(spec, budget)
        except BudgetError as e:
            pruned.append((seed, models.describe(spec), str(e)))
    assert len(pruned) <= 2, pruned


def _near(budget: int) -> list[str]:
    return [n for n in presets.names() if abs(count_params(presets.get(n)) - budget) <= 0.1 * budget]


@pytest.mark.parametrize("budget", [100_000, 1_000_000, 10_000_000])
def test_every_preset_within_ten_percent_of_a_budget_is_in_the_space_there(budget):
    near = _near(budget)
    assert budget == 10_000_000 or near       # 100k: RKCNN-I/-R 2_2_2 at k26/28; 1.0M: HO-ResNet x14 and more
    for name in near:
        assert why_not_in_space(presets.get(name), budget=budget, paper_forms=True) is None, name


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_is_in_the_space_at_the_budgets_it_is_within_ten_percent_of(name):
    """At its own count and at the two ends of the budgets it lies within 10% of."""
    spec = presets.get(name)
    count = count_params(spec)
    for budget in (count, int(count / 1.1) + 1, int(count / 0.9)):
        reason = why_not_in_space(spec, budget=budget, paper_forms=True)
        assert reason is None, (budget, reason)


def test_the_space_at_a_budget_leaves_out_deep_narrow_stages_and_says_why():
    """At 100k one stage of 42 Euler sub-nets would be 11-12 channels wide, where one channel
    moves the count 17%: no widths meet 100k +-2%. The space at 100k leaves it out, naming
    the budget; without a budget, or at 2.0M, it is a point of the space."""
    spec = ArchSpec(stages=(StageSpec("euler", 42),))
    with pytest.raises(BudgetError):
        solve_widths(spec, 100_000)
    reason = why_not_in_space(spec, budget=100_000)
    assert reason.startswith("stages[0].blocks: 42 lies outside the space's range [1, ")
    assert reason.endswith("at a budget of 100,000 params (within 2%)")
    assert why_not_in_space(spec) is None
    assert why_not_in_space(spec, budget=2_000_000) is None


def test_the_budget_sets_the_sizes_on_offer():
    """Sizes are asked last, within what the budget leaves room for: a one-stage network
    holds at most 14 sub-nets at 100k (the budget-free space offers 42), and at 30M none
    holds fewer than 7 (512 channels hold about 4.7M params per sub-net)."""
    def one_stage_subnets(budget):
        specs = [sample_spec(RandomTrial(s), budget=budget) for s in range(300)]
        return [s.stages[0].blocks * models.spec.subnets_per_block(s.stages[0].scheme, s.stages[0].depth)
                for s in specs if len(s.stages) == 1 and not s.stages[0].is_rkcnn]
    small, large, free = one_stage_subnets(100_000), one_stage_subnets(30_000_000), one_stage_subnets(None)
    assert len(small) > 30 and max(small) <= 14 < max(free)
    assert min(large) >= 7 > min(free)


def test_the_reach_is_where_every_network_shape_fits():
    """The smallest budget the space reaches is three Verner stages of one block at 8
    channels (50,050 params); the largest, two RKCNN-E periods of s = 7, r = 2 at 512."""
    lo, hi = param_range()
    smallest, largest = reach_specs()
    assert lo == 50_050 == count_params(smallest[0].with_widths([8, 8, 8]))
    assert hi == count_params(largest[1].with_widths([512, 512]))
    assert [s.scheme for s in smallest[0].stages] == ["verner8"] * 3


def test_paper_forms_are_left_out_unless_a_study_asks():
    """000/001's printed midpoint/RK4 is not an ODE step: out of the sampled space by
    default; with ``paper_forms`` about half of midpoint/RK4 stages use it, and the
    paper-form presets are points of the space only then."""
    def forms(**space):
        c = collections.Counter()
        for seed in range(600):
            for s in sample_spec(RandomTrial(seed), **space).stages:
                if s.scheme in ("midpoint", "rk4"):
                    c[s.form] += 1
        return c
    assert forms()["paper"] == 0 and forms()["butcher"] > 50
    both = forms(paper_forms=True)
    assert 0.3 < both["paper"] / (both["paper"] + both["butcher"]) < 0.7
    reason = why_not_in_space(presets.get("ho-rk4-paper-x7"))
    assert reason.startswith("stages[0].form: 'paper' where the space gives 'butcher'")
    assert "only when a study asks for it" in reason
    assert why_not_in_space(presets.get("ho-rk4-paper-x7"), paper_forms=True) is None


def test_a_learnable_step_starts_at_one_of_the_fixed_values():
    """000 §4.6 decays a learnable factor from 2: a learnable step's start is a sampled
    choice among the fixed values, so a learnable step starting at 2 is a point of the space."""
    starts = collections.Counter(s.step.value for seed in range(600)
                                 for s in sample_spec(RandomTrial(seed)).stages if s.step.mode == "learnable")
    assert set(starts) == set(FIXED_STEPS)
    spec = ArchSpec(stages=(StageSpec("verner8", 1, step=StepSpec("learnable", 2.0)),))
    assert why_not_in_space(spec) is None
    assert why_not_in_space(spec, budget=1_000_000) is None
    steps = [m for m in models.build(spec.with_widths([8])).modules() if isinstance(m, LearnableStep)]
    assert steps and all(float(p.detach()) == 2.0 for m in steps for p in m.parameters())
    # a sampled LM stage's start reaches every block's own h, the opening Euler block included
    lm = next(sp for seed in range(600) for sp in [sample_spec(RandomTrial(seed), budget=100_000)]
              if len(sp.stages) == 1 and sp.stages[0].scheme == "lm" and sp.stages[0].step.mode == "learnable"
              and sp.stages[0].step.value != 1.0)
    hs = [float(m.h.detach()) for m in models.build(lm.with_widths([8])).modules() if isinstance(m, LearnableStep)]
    assert hs == [lm.stages[0].step.value] * lm.stages[0].blocks
    assert models.describe(spec) == "RK8 x1 Adaptive from 2"      # the label tells the starts apart


def test_the_solver_goes_finer_only_where_multiples_of_8_cannot_meet_the_budget():
    # one Verner block: 56 channels hold 795,602 and 64 hold 1,038,282; 63 hold 1.006M
    verner = solve_widths(ArchSpec(stages=(StageSpec("verner8", 1),)), 1_000_000)
    assert verner.widths == (63,) and verner.stem_width is None
    assert abs(count_params(verner) - 1_000_000) <= 20_000
    # where multiples of 8 meet it, they are kept (001's RK4 x7 at 64 channels)
    assert solve_widths(ArchSpec(stages=(StageSpec("rk4", 7),)), 2_074_058, tolerance=0.005).widths == (64,)


def test_a_free_stem_absorbs_what_one_channel_cannot():
    """At 52k one Verner block is 14 channels (50,732 params) or 15 (58,135), 14% apart: a
    20-channel stem, the block narrowing from it through its projection shortcut, brings
    it within 2%. The counter's count with a free stem, narrower or wider than the first
    stage, is the built network's."""
    spec = solve_widths(ArchSpec(stages=(StageSpec("verner8", 1),)), 52_000)
    assert spec.widths == (14,) and spec.stem_width == 20
    assert count_params(spec) == 51_982
    for stem in (8, 13, 14, 15, 28):
        for scheme, blocks in (("verner8", 1), ("lm", 3), ("rk4", 2)):
            s = ArchSpec(stages=(StageSpec(scheme, blocks), StageSpec("euler", 2, downsample=True)))
            counted = ParamCounter(s)([[14, 27]], stem=[stem])[0]
            assert counted == count_params(s.with_widths([14, 27], stem_width=stem)), (scheme, stem)


def test_widths_that_are_not_multiples_of_8_are_counted_exactly():
    """The counter reads its forms at multiples of 8; odd widths (attention's c // 2
    included) must still give the built network's count."""
    for seed in range(40):
        spec = sample_spec(RandomTrial(seed))
        widths = [9 + (7 * seed + 5 * j) % 50 for j in range(len(spec.stages))]
        assert ParamCounter(spec)([widths])[0] == count_params(spec.with_widths(widths)), (seed, widths)


def test_a_warm_solve_builds_nothing(monkeypatch):
    """A worker keeps the probes of a stage it has read: solving the same spec again
    builds no network (it rebuilt them before once all three pieces had been read)."""
    spec = ArchSpec(stages=tuple(StageSpec("rkcnn-i", rk_stages=3, downsample=i > 0) for i in range(3)),
                    transition="conv-attention", head="multiscale")
    solve_widths(spec, 1_000_000)   # RKCNN's constant pattern +- 3 steps: every stage in all three pieces
    builds = []
    real = param_count._shapes
    monkeypatch.setattr(param_count, "_shapes", lambda s: builds.append(s) or real(s))
    for budget in (1_000_000, 1_500_000):
        solve_widths(spec, budget)
    assert builds == []


def test_a_study_of_the_earlier_sampler_is_refused_on_resume():
    """Its questions differ (RKCNN s and r were categorical, the paper form was always asked):
    resuming it would fail inside Optuna mid-run, so ``run`` refuses it in one line."""
    from studies.config import SETTINGS_FORMAT, RunOptions, StudySettings, check_resume
    opts = RunOptions.from_user(study="old", trials=4, synthetic=True)
    settings = StudySettings.from_options(opts, "cpu")
    assert settings.format == SETTINGS_FORMAT == 2 and check_resume(settings, opts) == []
    settings.format = 1
    with pytest.raises(ValueError, match="created by an earlier version .* use another --study name"):
        check_resume(settings, opts)
    settings.format, opts = 2, RunOptions.from_user(study="old", trials=4, synthetic=True, paper_forms=True)
    with pytest.raises(ValueError, match="created with --paper-forms False; it cannot change"):
        check_resume(settings, opts)


def test_run_help_says_pruned_trials_count_and_the_summary_counts_them_apart(capsys):
    """``--trials`` counts pruned trials: the help says so, and the summary ``run`` and
    ``show`` print names trained networks and pruned trials apart."""
    import search
    from studies.results import counts_text
    try:
        rc = search.main(["run", "--help"])
    except SystemExit as e:      # argparse's own exit, where main lets it through
        rc = e.code
    assert rc in (0, None)
    help_text = " ".join(capsys.readouterr().out.split())
    assert "pruned trials count toward it" in help_text
    assert "--paper-forms" in help_text and "not an ODE step" in help_text
    text = counts_text({"trials": {"total": 12, "COMPLETE": 10, "PRUNED": 2}, "networks": 10, "duplicates": [],
                        "fidelities": {1: 7, 3: 3}})
    assert text == "12 trials: 10 networks scored (7 at 1 epoch, 3 at 3 epochs), 2 pruned"


@pytest.mark.parametrize("paper_forms", [False, True])
def test_a_study_samples_within_its_budget_and_its_paper_forms_setting(paper_forms, tmp_path):
    """The objective hands the sampler the study's budget, tolerance and ``paper_forms``:
    at 100k (74% of uniform samples pruned before) every trial's network meets it within 2%,
    and the paper form appears only when the study was created with ``--paper-forms``."""
    import optuna
    from studies.config import RunOptions, StudySettings
    from studies.objective import spec_for_trial
    from studies.session import Session
    from studies.storage import open_store
    opts = RunOptions.from_user(study="space", trials=40, budget="100k", synthetic=True, paper_forms=paper_forms)
    store = open_store("space", f"sqlite:///{tmp_path / 'space.db'}", create=True, owner="h:1")
    study = store.create_study(["maximize", "minimize"])
    settings = StudySettings.from_options(opts, "cpu")
    settings.save(study)
    session = Session.resolve(store, settings, "cpu")
    study.sampler = optuna.samplers.RandomSampler(seed=1)
    forms = collections.Counter()
    for _ in range(40):
        spec = spec_for_trial(study.ask(), session)
        assert abs(count_params(spec) - 100_000) <= 2_000, models.describe(spec)
        forms.update(s.form for s in spec.stages if s.scheme in ("midpoint", "rk4"))
    assert forms["butcher"] > 0 and (forms["paper"] > 0) == paper_forms, forms
    store.close()
