"""Tests of models/measure.py: hand-counted peaks, batch independence, MACs,
and the meta-device step agreeing with a CPU run byte for byte."""


import pytest
import torch
import torch.nn as nn

import models
from models import presets
from models.measure import (
    MemoryTracker,
    count_macs,
    count_params,
    cuda_peak_bytes,
    measure,
    peak_memory,
)
from models.spec import subnets_per_block
from search_space import BudgetError, RandomTrial, sample_spec, solve_widths

F32 = 4
C, H, W = 8, 8, 8          # toy activation: C x H x W floats per image
IN = (3, H, W)
X_BYTES = 3 * H * W * F32  # input, per image
A = C * H * W * F32        # one activation, per image


class Freed(nn.Module):
    """y = conv(x); z = relu(y); del y; w = z + 1  ->  peak x + 2A."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x)
        z = torch.relu(y)
        del y
        w = z + 1
        return w


class Kept(Freed):
    """Same, but y stays referenced from a list  ->  peak x + 3A."""

    def forward(self, x):
        y = self.conv(x)
        stages = [y]
        z = torch.relu(y)
        del y
        w = z + 1
        assert len(stages) == 1
        return w


class ViewsInPlace(Freed):
    """In-place op and views share y's storage  ->  peak x + A."""

    def forward(self, x):
        y = self.conv(x)
        y.relu_()
        v = y.flatten(1)            # view
        u = v.transpose(0, 1)       # view of a view
        u.mul_(2.0)                 # in-place on the view
        return v.view(y.shape)      # view again


@pytest.mark.parametrize("batch", [2, 5])
def test_hand_count_freed_kept_views(batch):
    freed = peak_memory(Freed(), IN, batch=batch)
    kept = peak_memory(Kept(), IN, batch=batch)
    views = peak_memory(ViewsInPlace(), IN, batch=batch)
    assert freed == X_BYTES + 2 * A
    assert kept == X_BYTES + 3 * A
    assert kept - freed == A
    assert views == X_BYTES + A


def test_tracker_del_drops_count_and_views_do_not_add():
    with MemoryTracker() as mt:
        a = torch.empty(1000)            # 4000 bytes
        assert mt.current == 4000
        b = a.view(10, 100)              # view: same storage
        a.add_(1)                        # in-place: same storage
        assert mt.current == 4000
        c = torch.ones(250)              # 1000 bytes
        assert mt.current == 5000
        del a
        assert mt.current == 5000        # b still holds the storage
        del b
        assert mt.current == 1000        # the finalizer fired on del
        del c
        assert mt.current == 0
    assert mt.peak == 5000
    mt.close()


def test_parameters_and_buffers_not_counted():
    lin = nn.Linear(100, 100, bias=False)  # 40 kB weight, t() is a view of it
    bn = nn.BatchNorm1d(100)
    with MemoryTracker(ignore=list(lin.parameters()) + list(bn.buffers())) as mt:
        x = torch.empty(2, 100)            # 800 bytes
        y = lin(x)                         # 800 bytes, weight.t() not counted
        bn.train()
        bn(y)                              # in-place running-stat updates not counted
    assert mt.peak < 5 * 800
    mt.close()


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_per_image_independent_of_batch(mode):
    net = small_net()
    b2 = peak_memory(net, (3, 32, 32), batch=2, mode=mode)
    b8 = peak_memory(net, (3, 32, 32), batch=8, mode=mode)
    assert abs(b2 - b8) / b8 < 0.03


def test_training_exceeds_inference_and_state_restored():
    net = small_net()
    net.train()
    net[1].eval()  # a mixed-mode model must come back mixed
    flags = [m.training for m in net.modules()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    inf = peak_memory(net, (3, 32, 32), mode="inference")
    tr = peak_memory(net, (3, 32, 32), mode="training")
    assert tr > inf > 0
    assert [m.training for m in net.modules()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    # deterministic
    assert peak_memory(net, (3, 32, 32), mode="training") == tr


def test_param_grads_excluded_by_default():
    # Wide 1x1 conv on a tiny image: the weight gradient (256 kB) dwarfs activations.
    net = nn.Sequential(nn.Conv2d(256, 256, 1, bias=False))
    without = peak_memory(net, (256, 2, 2), batch=2, mode="training")
    with_grads = peak_memory(net, (256, 2, 2), batch=2, mode="training", count_param_grads=True)
    grad_bytes = 256 * 256 * F32
    assert with_grads > grad_bytes // 2      # per image at batch 2
    assert without < grad_bytes // 4


def test_count_macs_conv_and_linear():
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 64, 32, 32)) == 64 * 64 * 9 * 32 * 32
    assert count_macs(conv, (4, 64, 32, 32)) == 64 * 64 * 9 * 32 * 32  # per image
    lin = nn.Linear(100, 7)
    assert count_macs(lin, (1, 100)) == 100 * 7
    # not runnable on meta -> falls back to a real forward
    class MakesCpuTensor(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(10, 3)

        def forward(self, x):
            return self.lin(x) + torch.tensor([1.0, 2.0, 3.0]).to(x.device).numpy().sum()

    assert count_macs(MakesCpuTensor(), (1, 10)) == 30


def test_count_params_and_measure():
    net = small_net()
    assert count_params(net) == sum(p.numel() for p in net.parameters())
    out = measure(net)
    assert set(out) == {"params", "macs", "inference_bytes_per_image",
                        "training_bytes_per_image", "cuda_peak_bytes"}
    assert out["params"] == count_params(net)
    assert out["macs"] > 0
    assert out["training_bytes_per_image"] > out["inference_bytes_per_image"]
    assert out["cuda_peak_bytes"] is None   # CPU model
    assert cuda_peak_bytes(net) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tracker_matches_cpu_and_allocator_peak():
    """The tracked step run on CUDA (not on meta, peak_memory's default) gives the CPU's
    figure; the allocator's own peak for the same step is at least that."""
    net = small_net()
    cpu_inf = peak_memory(net, (3, 32, 32), mode="inference", device="cpu")
    cpu_tr = peak_memory(net, (3, 32, 32), mode="training", device="cpu")
    gpu = small_net().cuda()
    assert peak_memory(gpu, (3, 32, 32), mode="inference", device="cuda") == cpu_inf
    # cuDNN may pick kernels that keep other tensors for backward than oneDNN's
    assert abs(peak_memory(gpu, (3, 32, 32), mode="training", device="cuda") - cpu_tr) / cpu_tr < 0.05
    assert peak_memory(gpu, (3, 32, 32), mode="inference") == cpu_inf         # meta twins of CUDA weights
    peak = cuda_peak_bytes(gpu, batch=2, relative=True)
    assert peak is not None and peak >= 2 * cpu_inf
    assert measure(gpu)["cuda_peak_bytes"] is not None


class SeenDevice(Freed):
    """Freed, noting the device each forward runs on."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.device.type)
        return super().forward(x)


class NeedsValues(SeenDevice):
    """Reads a value in its forward, which a meta tensor does not have."""

    def forward(self, x):
        self.seen.append(x.device.type)
        return super().forward(x) * float(x.abs().sum() > 0)


def test_default_step_runs_on_meta_and_falls_back_to_the_model_device():
    net = SeenDevice()
    assert peak_memory(net, IN) == X_BYTES + 2 * A    # the hand count, without computing anything
    assert net.seen == ["meta"]
    needs = NeedsValues()
    assert peak_memory(needs, IN) == peak_memory(needs, IN, device="cpu")
    assert needs.seen[-1] == "cpu"
    with pytest.raises(RuntimeError, match="meta"):
        peak_memory(NeedsValues(), IN, device="meta")   # asked for meta explicitly: no fallback


def _one_preset_per_kind() -> list[str]:
    """The smallest preset of each kind of network (family, schemes, forms,
    nesting, step mode, stochastic depth), from the registry."""
    kinds = {}
    for name in presets.names():
        spec = presets.get(name)
        kind = (spec.transition, spec.head, tuple((s.scheme, s.form, s.depth, s.step.mode, s.stochastic_depth,
                                                   s.downsample) for s in spec.stages))
        size = sum((s.blocks * subnets_per_block(s.scheme, s.depth) + s.rk_stages) * s.width ** 2
                   for s in spec.stages)  # about the parameters: the smallest is the fastest to run
        kinds.setdefault(kind, []).append((size, name))
    return [min(names)[1] for names in kinds.values()]


def _sampled(count: int) -> list:
    """Sampled specs at 100k parameters (other tableaux, narrowing stages' projections)."""
    out, seed = [], 0
    while len(out) < count:
        try:
            out.append(solve_widths(sample_spec(RandomTrial(seed)), 100_000, tolerance=0.1))
        except BudgetError:
            pass
        seed += 1
    three = next(s for s in map(sample_spec, map(RandomTrial, range(1000)))
                 if len(s.stages) == 3 and not s.stages[0].is_rkcnn)
    return out + [three.with_widths([48, 32, 16])]


@pytest.mark.parametrize("spec", [presets.get(n) for n in _one_preset_per_kind()] + _sampled(4),
                         ids=lambda spec: spec.name if spec.name != "sampled" else models.describe(spec))
def test_meta_step_equals_a_cpu_run_byte_for_byte(spec):
    """The meta step (kernels computed and remembered) gives exactly the CPU
    figure, in both modes, stochastic depth's drops included."""
    net = models.build(spec)
    shape = (3, 8, 8)  # the figures' equality does not hang on the resolution; 8px keeps CPU runs short
    for mode in ("inference", "training"):
        cpu = peak_memory(net, shape, mode=mode, device="cpu")
        assert peak_memory(net, shape, mode=mode, device="meta") == cpu, mode
        assert peak_memory(net, shape, mode=mode, device="meta") == cpu, mode + ", kernels remembered"
