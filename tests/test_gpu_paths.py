"""Faults the first GPU run would meet, reproduced on the CPU by forcing the CUDA paths.

* torch's fused SGD (the trainer's optimiser on CUDA) with stochastic depth skipping a
  block on the first step;
* resuming a checkpoint onto a device that is not the CPU (``meta`` stands in for CUDA:
  torch's RNG setters take CPU byte tensors only);
* a worker preparing the next trial in a thread (sample, solve, build, measure) while the
  current trial trains: the training thread's random numbers must not change.
"""
from __future__ import annotations

import importlib
import threading

import pytest
import torch
from torch import nn

import models
import trainers
from models import ArchSpec, StageSpec, StepSpec
from models.measure import measure, peak_memory
from search_space import solve_widths
from trainers import checkpoint
from trainers._runtime import rng_state, set_rng_state
from trainers.protocols import protocol_hparams
from trainers.train import _make_optimizer


def _sd_spec(seed: int = 0) -> ArchSpec:
    """A small CIFAR-style network with stochastic depth in every stage (every block may drop)."""
    return ArchSpec(stages=(StageSpec("midpoint", 2, width=8, stochastic_depth=True),
                            StageSpec("lm", 3, width=16, stochastic_depth=True, downsample=True,
                                      step=StepSpec("learnable", 1.0))),
                    survival_last=0.5, image_size=8, seed=seed)


@pytest.fixture(scope="module")
def data():
    return trainers.synthetic(n_train=96, n_val=32, n_test=32, image_size=8, seed=1)


HP = {"batch_size": 16, "eval_batch_size": 32}


# ----------------------------------------------------------------------------- 1. fused SGD
class TwoLayers(nn.Module):
    """Two linear layers; ``skip`` drops the second, as stochastic depth drops a block."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.skip = False

    def forward(self, x):
        x = torch.relu(self.a(x))
        return x[:, :3] if self.skip else self.b(x)


@pytest.mark.parametrize("nesterov", [True, False])
def test_fused_sgd_survives_a_block_skipped_on_the_first_step_and_matches_plain_sgd(nesterov):
    hp = protocol_hparams("proxy", hparams={"nesterov": nesterov, "weight_decay": 5e-4, "lr": 0.1})
    nets = [TwoLayers() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused, plain = _make_optimizer(nets[0], hp, fused=True), _make_optimizer(nets[1], hp, fused=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for step, skip in enumerate([True, False, True, False, False]):    # b gets no gradient on step 1
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        for net, opt in zip(nets, (fused, plain)):
            net.skip = skip
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()                  # torch's fused SGD raised TypeError here on step 2
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_zero_momentum_buffers_give_plain_sgd_updates():
    """With dampening 0 a zero buffer up front is SGD's own first step (``buf = g``)."""
    hp = protocol_hparams("proxy", hparams={"lr": 0.05})
    nets = [TwoLayers() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    ours = _make_optimizer(nets[0], hp, fused=False)
    torchs = torch.optim.SGD([{"params": [p for p in nets[1].parameters() if p.ndim >= 2],
                               "weight_decay": hp["weight_decay"]},
                              {"params": [p for p in nets[1].parameters() if p.ndim < 2], "weight_decay": 0.0}],
                             lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"])
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        for net, opt in zip(nets, (ours, torchs)):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_proxy_with_stochastic_depth_trains_under_fused_sgd(data, monkeypatch):
    """The trainer's CUDA optimiser path, forced on the CPU, through a whole proxy run."""
    train_module = importlib.import_module("trainers.train")   # trainers.train is also the function
    made = []

    def fused_always(model, hp, fused=None):
        made.append(_make_optimizer(model, hp, fused=True))
        return made[-1]
    monkeypatch.setattr(train_module, "_make_optimizer", fused_always)
    r = trainers.train(lambda: models.build(_sd_spec()), data, epochs=2, hparams=HP, device="cpu",
                       progress=False)
    assert r.ok, r.reason
    assert made and made[0].defaults["fused"]


# ----------------------------------------------------------------------------- 2. resume on a device
def test_checkpoint_rng_states_stay_on_the_cpu_when_loaded_for_another_device(data, tmp_path):
    path = tmp_path / "ck.pt"
    r = trainers.train(lambda: models.build(_sd_spec()), data, protocol="fast", epochs=1, hparams=HP,
                       device="cpu", checkpoint_path=path, progress=False)
    assert r.ok
    state = checkpoint.load(path, torch.device("meta"))       # meta stands in for cuda
    assert all(t.is_meta for t in state["model"].values())     # the model's tensors go to the device
    rng = state["rng"]
    assert rng["torch"].device.type == "cpu" and rng["torch"].dtype == torch.uint8
    before = rng_state()
    set_rng_state(rng)                # torch.set_rng_state raised "must be a torch.ByteTensor"
    assert torch.equal(torch.get_rng_state(), rng["torch"])
    set_rng_state(before)
    state2, note = checkpoint.load_or_set_aside(path, torch.device("meta"))
    assert note is None and state2["rng"]["torch"].device.type == "cpu"


# ----------------------------------------------------------------------------- 3. a preparing thread
def test_builds_and_measurements_draw_nothing_from_the_global_generator(monkeypatch):
    """Neither reseeds, forks nor draws from torch's global generator (a thread running
    beside training would change its numbers)."""
    calls = []
    monkeypatch.setattr(torch, "manual_seed", lambda *a: calls.append("manual_seed"))
    monkeypatch.setattr(torch.random, "fork_rng", lambda *a, **k: calls.append("fork_rng"))
    before = torch.get_rng_state()
    spec = _sd_spec()
    models.build(spec)
    net = models.build(spec, device="meta")
    measure(net, (3, 8, 8))
    peak_memory(models.build(spec), (3, 8, 8), mode="training", device="cpu")
    assert calls == []
    assert torch.equal(before, torch.get_rng_state())


def test_same_spec_same_weights_whatever_the_global_generator():
    spec = _sd_spec(seed=5)
    torch.manual_seed(1)
    a = models.build(spec).state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    b = models.build(spec).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = models.build(_sd_spec(seed=6)).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_measurements_agree_on_meta_and_cpu_with_stochastic_depth():
    """The private generator draws the input on the CPU on every device, so the same
    blocks drop on meta and on the CPU."""
    net = models.build(_sd_spec())
    assert peak_memory(net, (3, 8, 8), mode="training") == peak_memory(net, (3, 8, 8), mode="training",
                                                                          device="cpu")


def test_a_proxy_run_is_bitwise_the_same_with_a_concurrent_preparation(data):
    """What a worker does on a GPU: the next trial is sampled, width-solved, built and
    measured in a thread while the current one trains. Before, 7 of 20 builds of one spec
    gave other weights and 1 of 4 proxy runs another accuracy."""
    def proxy():
        return trainers.train(lambda: models.build(_sd_spec()), data, epochs=2, hparams=HP, device="cpu",
                              progress=False)

    alone = proxy()
    stop = threading.Event()
    prepared = []

    def prepare_forever():
        other = ArchSpec(stages=(StageSpec("rk4", 1, stochastic_depth=True),
                                 StageSpec("euler", 2, stochastic_depth=True, downsample=True)),
                         image_size=8, seed=3)
        while not stop.is_set():
            solved = solve_widths(other, 22_346, 0.05)
            measure(models.build(solved, device="meta"), (3, 8, 8))
            models.build(solved)
            prepared.append(1)

    for _ in range(2):
        t = threading.Thread(target=prepare_forever, daemon=True)
        t.start()
        try:
            beside = proxy()
        finally:
            stop.set()
            t.join()
        stop.clear()
        assert beside.accuracy == alone.accuracy and beside.train_loss == alone.train_loss
        for k, v in alone.state_dict.items():
            assert torch.equal(v, beside.state_dict[k]), k
    assert len(prepared) >= 2       # the preparation really ran beside training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_stochastic_depth_trains_fused_and_a_killed_retrain_resumes(data, tmp_path):
    """The two faults on the device itself: fused SGD with blocks dropped on step 1, and a
    resume from a checkpoint loaded onto the GPU (same weights as an unbroken run)."""
    path = tmp_path / "ck.pt"
    make = lambda: models.build(_sd_spec())                       # noqa: E731
    full = trainers.train(make, data, protocol="fast", epochs=2, hparams=HP, device="cuda",
                          deterministic=True, progress=False)
    assert full.ok, full.reason

    def killed(epoch, entry):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        trainers.train(make, data, protocol="fast", epochs=2, hparams=HP, device="cuda", deterministic=True,
                       checkpoint_path=path, on_epoch_end=killed, progress=False)
    resumed = trainers.train(make, data, protocol="fast", epochs=2, hparams=HP, device="cuda",
                             deterministic=True, checkpoint_path=path, resume=True, progress=False)
    assert resumed.ok and resumed.resumed_from_epoch == 1
    for k, v in full.state_dict.items():
        torch.testing.assert_close(v, resumed.state_dict[k])
