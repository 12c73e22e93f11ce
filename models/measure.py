"""Cost measurements of a network: parameters, MACs and peak tensor memory.

These are the search's cost objectives (memory as 001 Table 2 compares the
schemes).  Everything here works on any device, CPU included; nothing in this
module mutates the model it is given (mode, BN running statistics and ``.grad``
are restored) or draws from torch's global generator.

Public API
----------
``count_params(model)``
    Trainable + non-trainable parameters (buffers excluded).
``count_macs(model, input_shape=(1, 3, 32, 32))``
    Multiply-accumulates of one eval-mode forward, per image.
``peak_memory(model, input_shape=(3, 32, 32), batch=2, mode="inference")``
    Peak bytes of tensors alive during a forward (``"inference"``) or a
    forward + loss + backward (``"training"``), per image; run on the meta
    device by default (see below).
``measure(model, input_shape=(3, 32, 32))``
    All of the above in one dict (plus ``cuda_peak_bytes``, None off CUDA).
``cuda_peak_bytes(model, batch=2, input_shape=(3, 32, 32))``
    ``torch.cuda.max_memory_allocated`` over one training step (None on CPU).
``MemoryTracker``
    The dispatch-mode tracker behind ``peak_memory``, usable on any code.

Memory counting conventions
---------------------------
* What is counted is the *storage* of every tensor produced by an ATen op
  while the tracker is active: the first time a storage is seen its
  ``nbytes`` is added to the live total, and it is subtracted when the storage
  is freed.  Views and in-place ops return an already-seen storage, so they
  add nothing.  Storage lifetime is followed with ``weakref.finalize`` on the
  ``UntypedStorage`` Python object: PyTorch preserves that object for as long
  as the C++ ``StorageImpl`` lives (the same object is returned by every
  ``t.untyped_storage()`` call), so the finalizer fires exactly when the last
  tensor/view/autograd-saved reference goes away, i.e. when the memory would
  be returned to the allocator.  (This is the mechanism used by
  ``torch.distributed._tools.mem_tracker`` too.)
* The input batch is counted (it is created under the tracker); parameters
  and buffers are not (their storages are ignored, also when an op returns a
  view of them such as ``weight.t()`` or updates them in place such as BN's
  running statistics): they are the same for every scheme at equal
  parameters.
* Training: forward + loss + ``backward()`` in train mode, parameter
  ``.grad`` set to None first.  Activations saved for backward, activation
  gradients and every backward temporary are counted.  The tensors that end
  up as parameters' ``.grad`` are NOT counted (``count_param_grads=False``,
  the default): like the parameters they are parameter-sized, identical for
  schemes of equal parameter count and independent of the batch, so counting
  them would make the per-image figure depend on the batch size.  Pass
  ``count_param_grads=True`` to include them.  No optimizer step.
* Only tensors that pass through the dispatcher are seen: scratch buffers a
  kernel allocates and frees internally (e.g. oneDNN/cuDNN workspaces) are
  not, nor is allocator caching/fragmentation.  That is what makes the figure
  device-independent and exact; ``cuda_peak_bytes`` gives the allocator's
  view on CUDA.
* Per-image figures are ``peak // batch`` at batch 2 (BN in train mode needs
  more than one image).  The batch-independent overhead (BN statistics,
  logits, loss) is a fraction of a percent of the total for conv nets.
* Random draws (the input batch, stochastic depth's decisions) come from a
  private generator seeded with 0 (:func:`models.blocks.private_draws`), so
  the figure is deterministic and torch's global generator is never touched:
  a worker measures the next trial in a thread while the current one trains,
  and even forking and restoring the global state there changed the training
  thread's numbers. (Dropout draws on the device; on meta it draws nothing.)
* Where the step runs: by default on the meta device, through
  ``torch.func.functional_call`` with meta twins of the parameters and
  buffers (shared ones stay shared, ``requires_grad`` kept).  The figure
  depends only on which storages exist, their sizes and when they are freed,
  and a meta kernel produces the same outputs (shapes, strides, aliasing) as a
  real one but for batch norm in eval mode (see ``models._tracking``), so it
  equals a CPU run byte for byte (``tests/test_measure.py`` checks it on a
  preset of every kind and sampled networks) while computing nothing: a
  tenth to a third of a second for a 1M network on a 2-core CPU, where the
  CPU run took seconds (mostly oneDNN setting up each new convolution shape).
  The input is drawn on the CPU from the private generator whatever the
  device, so stochastic depth drops the same blocks on meta, CPU and CUDA.  A model that cannot run on meta (it builds CPU
  tensors in its forward, say) is measured on its own device instead.
* The garbage collector is paused during the step: no storage can then be
  freed at a moment that depends on earlier allocations.
"""

from __future__ import annotations

import copy
import functools
import gc
import itertools
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ._tracking import MemoryTracker, MetaKernelsRemembered
from .blocks import private_draws

__all__ = [
    "MemoryTracker",
    "count_params",
    "count_macs",
    "peak_memory",
    "measure",
    "cuda_peak_bytes",
]

_MODES = ("inference", "training")


# --------------------------------------------------------------------------
# parameters and MACs
# --------------------------------------------------------------------------

def count_params(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen (buffers not included).

    Shared parameters are counted once (``model.parameters()`` dedupes).
    """
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one eval-mode forward, for ONE image.

    ``input_shape`` includes the batch dimension; the count is divided by it.

    We use ``torch.utils.flop_counter.FlopCounterMode`` rather than module
    hooks: it works at the ATen level, so it sees every convolution / matmul
    however the block engine composes them (functional calls, nested RK
    blocks, shared sub-nets evaluated several times), and its formulas for
    grouped/strided/transposed convolutions, (b)mm/addmm and attention are
    maintained upstream.  It counts FLOPs = 2 x MACs of those ops only; bias
    adds, BN, activations, pooling and the RK linear combinations are not
    counted (the papers' convention of counting conv/FC multiply-adds).  So a
    conv counts ``Cout*Cin/groups*kh*kw*Hout*Wout`` and a Linear
    ``in_features*out_features``.

    The forward runs on the meta device (no compute, no memory) via
    ``torch.func.functional_call`` with meta copies of the parameters and
    buffers; if the model cannot run on meta (e.g. it builds CPU tensors in
    its forward) it falls back to a real no-grad forward on its own device.
    """

    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2:
        raise ValueError(f"input_shape must include the batch dimension, got {shape}")
    batch = shape[0]
    dtype = _float_dtype(model)

    def run(device: torch.device, state=None) -> int:
        counter = FlopCounterMode(display=False)
        x = torch.zeros(shape, dtype=dtype, device=device)
        with _eval_mode(model), torch.no_grad():
            if state is None:
                with counter:
                    model(x)
            else:
                with MetaKernelsRemembered(), counter:  # the counter sees every op, then the memory
                    torch.func.functional_call(model, state, (x,), strict=False)
        return int(counter.get_total_flops())

    meta = torch.device("meta")
    try:
        state = {
            name: torch.empty_like(t, device=meta)
            for name, t in itertools.chain(
                model.named_parameters(remove_duplicate=False),
                model.named_buffers(remove_duplicate=False),
            )
        }
        flops = run(meta, state)
    except Exception:  # model not meta-traceable: measure it for real
        flops = run(_model_device(model))
    return flops // 2 // batch


# --------------------------------------------------------------------------
# peak memory
# --------------------------------------------------------------------------

def peak_memory(
    model: nn.Module,
    input_shape: Sequence[int] = (3, 32, 32),
    batch: int = 2,
    mode: str = "inference",
    device=None,
    count_param_grads: bool = False,
) -> int:
    """Peak bytes of tensors alive per image during one inference or training step.

    ``input_shape`` excludes the batch dimension.  ``mode="inference"``: one
    forward, ``model.eval()`` under ``torch.no_grad()``.  ``mode="training"``:
    ``model.train()``, forward, loss (cross-entropy against fixed labels when
    the output is ``(batch, classes)``, else mean of squares) and
    ``backward()``.  ``device``: where to run the step; default ``"meta"``
    (no compute; falls back to the model's own device if the model cannot
    run on meta); a real device runs it there (a model elsewhere is
    deep-copied there, never moved).  See the module docstring for what is
    and is not counted.  Returns ``peak_bytes // batch``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    batch = int(batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if mode == "training" and batch < 2 and _has_batchnorm(model):
        raise ValueError("training-mode BatchNorm needs batch >= 2")
    shape = tuple(int(s) for s in input_shape)
    if device is None or torch.device(device).type == "meta":
        try:
            return _tracked_step(model, shape, batch, mode, torch.device("meta"), count_param_grads) // batch
        except Exception:  # model not meta-traceable: measure it for real
            if device is not None:
                raise
    model, device = _on_device(model, device)
    return _tracked_step(model, shape, batch, mode, device, count_param_grads) // batch


def _meta_twins(model: nn.Module) -> tuple[dict, list, list]:
    """Meta copies of the parameters and buffers, by name for ``functional_call``
    (a tensor shared under two names gets one twin), the parameters' twins in
    ``model.parameters()`` order, and every twin."""
    twins: dict[int, torch.Tensor] = {}
    state = {}
    for name, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)):
        if id(t) not in twins:
            twins[id(t)] = torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)
        state[name] = twins[id(t)]
    return state, [twins[id(p)] for p in model.parameters()], list(twins.values())


def _tracked_step(model, input_shape, batch, mode, device, count_param_grads) -> int:
    dtype = _float_dtype(model)
    on_meta = device.type == "meta"
    if on_meta:
        state, params, ignore = _meta_twins(model)
        run = functools.partial(torch.func.functional_call, model, state, strict=False)
    else:
        params = list(model.parameters())
        ignore = params + list(model.buffers())

        def run(args):
            return model(*args)
    training = mode == "training"
    shape = (batch, *input_shape)
    with _preserved_state(model, device, training) as gen, _gc_paused():
        tracker = MemoryTracker(ignore=ignore, count_meta=on_meta)
        # the input is drawn on the CPU on every device, so the decisions that follow agree
        drawn = torch.randn(shape, dtype=dtype, generator=gen)

        def make_input() -> torch.Tensor:  # under the tracker: the input batch is counted once
            if on_meta:
                return torch.empty(shape, dtype=dtype, device=device)
            return drawn.clone() if device.type == "cpu" else drawn.to(device)

        try:
            if not training:
                model.eval()
                with torch.no_grad(), tracker:
                    x = make_input()
                    out = run((x,))
                    del x, out
                return tracker.peak
            model.train()
            for p in params:
                p.grad = None
            with tracker:
                x = make_input()
                out = run((x,))
                loss = _loss(out)
                del out
                loss.backward()
                del loss, x
            if count_param_grads:
                return tracker.peak
            grad_serials = [tracker.serial_of(p.grad) for p in params if p.grad is not None]
            return tracker.peak_excluding(s for s in grad_serials if s is not None)
        finally:
            tracker.close()


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loss(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 2 and out.is_floating_point():
        target = torch.arange(out.shape[0], device=out.device) % out.shape[1]
        return F.cross_entropy(out, target)
    return out.float().square().mean()


# --------------------------------------------------------------------------
# CUDA allocator figure
# --------------------------------------------------------------------------

def cuda_peak_bytes(
    model: nn.Module,
    batch: int = 2,
    input_shape: Sequence[int] = (3, 32, 32),
    relative: bool = False,
) -> Optional[int]:
    """``torch.cuda.max_memory_allocated`` over one training step of a batch.

    Returns None unless the model lives on a CUDA device.  The figure is the
    caching allocator's peak during forward + loss + backward in train mode
    (``.grad`` cleared first; model state restored afterwards): it includes
    parameters, buffers, gradients, kernel workspaces and anything else
    allocated on that device.  ``relative=True`` subtracts what was already
    allocated before the step (parameters etc.).  Not per image.
    """
    device = _model_device(model)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    dtype = _float_dtype(model)
    params = list(model.parameters())
    gc.collect()
    with _preserved_state(model, device, True) as gen, torch.cuda.device(device):
        model.train()
        for p in params:
            p.grad = None
        x = torch.randn((int(batch), *input_shape), dtype=dtype, generator=gen)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = x.to(device)
        loss = _loss(model(x))
        loss.backward()
        del loss, x
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        for p in params:
            p.grad = None
    return int(peak - base) if relative else int(peak)


# --------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------

def measure(model: nn.Module, input_shape: Sequence[int] = (3, 32, 32), batch: int = 2) -> dict:
    """Params, MACs/image, inference and training peak bytes/image (+ CUDA peak).

    Keys: ``params``, ``macs``, ``inference_bytes_per_image``,
    ``training_bytes_per_image`` and ``cuda_peak_bytes`` (allocator peak for
    a training step of ``batch`` images on CUDA, None elsewhere).
    """
    shape = tuple(int(s) for s in input_shape)
    return {
        "params": count_params(model),
        "macs": count_macs(model, (1, *shape)),
        "inference_bytes_per_image": peak_memory(model, shape, batch, "inference"),
        "training_bytes_per_image": peak_memory(model, shape, batch, "training"),
        "cuda_peak_bytes": cuda_peak_bytes(model, batch, shape),
    }


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _float_dtype(model: nn.Module) -> torch.dtype:
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _on_device(model: nn.Module, device) -> tuple[nn.Module, torch.device]:
    here = _model_device(model)
    if device is None:
        return model, here
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device == here:
        return model, device
    return copy.deepcopy(model).to(device), device


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def _preserved_state(model: nn.Module, device: torch.device, training: bool) -> Iterator[torch.Generator]:
    """Restore per-module train flags, buffers (BN stats) and ``.grad``; yield the private
    CPU generator, seeded with 0, that this thread's draws come from meanwhile."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    buffers = [b.detach().clone() for b in model.buffers()] if training else None
    try:
        with private_draws(torch.Generator().manual_seed(0)) as gen:
            yield gen
    finally:
        for m, was_training in modes:
            m.training = was_training
        for p, g in zip(params, grads):
            p.grad = g
        if buffers is not None:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
