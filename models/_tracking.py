"""The live-tensor tracker behind :mod:`models.measure`, and the meta-kernel memo that
makes tracked steps on the meta device cheap.

:class:`MemoryTracker` follows every storage an ATen op produces until it is freed
(``weakref.finalize`` on the ``UntypedStorage``), keeping the running and peak bytes;
:class:`MetaKernelsRemembered` answers repeated meta ops from memory. The conventions
(what is counted, on which device) are in :mod:`models.measure`'s docstring.
"""
from __future__ import annotations

import itertools
import weakref
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["MemoryTracker", "MetaKernelsRemembered"]


# --------------------------------------------------------------------------
# live-tensor tracker
# --------------------------------------------------------------------------

class MemoryTracker(TorchDispatchMode):
    """Tracks the bytes of tensor storages alive, with their running peak.

    Use as a context manager::

        with MemoryTracker(ignore=model.parameters()) as mt:
            x = torch.randn(2, 3, 32, 32)   # counted: created under the mode
            y = model(x)
        mt.peak, mt.current

    Every storage produced by an op under the mode (or passed to
    :meth:`track`) is added once when first seen and removed when freed (see
    the module docstring).  Storages of tensors in ``ignore`` are never
    counted.  ``peak``/``current`` are live figures; :meth:`peak_excluding`
    replays the recorded timeline without some storages (used to leave out
    parameter gradients once we know which tensors became ``.grad``).
    Meta tensors are ignored unless ``count_meta`` (a meta tensor's storage
    has the size and lifetime the real one would have).
    """

    def __init__(self, ignore: Iterable[torch.Tensor] = (), count_meta: bool = False):
        super().__init__()
        self._count_meta = count_meta
        self._ignore: set[int] = set()
        self._ignore_refs: list = []  # keep the ignored storage objects alive (stable ids)
        for t in ignore:
            self._add_ignore(t)
        self._live: dict[int, int] = {}  # id(storage) -> serial
        self._finalizers: dict[int, weakref.finalize] = {}  # serial -> finalizer
        self._serial = itertools.count()
        self.events: list[tuple[int, int]] = []  # (serial, +nbytes | -nbytes)
        self.current = 0
        self.peak = 0
        self._closed = False

    # -- bookkeeping --------------------------------------------------------
    def _add_ignore(self, t: torch.Tensor) -> None:
        st = _storage(t)
        if st is not None:
            self._ignore.add(id(st))
            self._ignore_refs.append(st)

    def track(self, tensor: torch.Tensor) -> None:
        """Count an existing tensor's storage as live (no-op if already seen)."""
        st = _storage(tensor)
        if st is None or (st.device.type == "meta" and not self._count_meta):
            return
        key = id(st)
        if key in self._ignore or key in self._live:
            return
        nbytes = int(st.nbytes())
        if nbytes == 0:
            return
        serial = next(self._serial)
        self._live[key] = serial
        self.events.append((serial, nbytes))
        self.current += nbytes
        if self.current > self.peak:
            self.peak = self.current
        self._finalizers[serial] = weakref.finalize(st, self._freed, key, serial, nbytes)

    def _freed(self, key: int, serial: int, nbytes: int) -> None:
        if self._closed:
            return
        self._live.pop(key, None)
        self._finalizers.pop(serial, None)
        self.events.append((serial, -nbytes))
        self.current -= nbytes

    def serial_of(self, tensor: torch.Tensor) -> Optional[int]:
        """Serial number of a tracked, still-alive tensor's storage, else None."""
        st = _storage(tensor)
        return None if st is None else self._live.get(id(st))

    def peak_excluding(self, serials: Iterable[int] = ()) -> int:
        """Peak of the recorded timeline with the given storages left out."""
        skip = set(serials)
        cur = peak = 0
        for serial, delta in self.events:
            if serial in skip:
                continue
            cur += delta
            peak = max(peak, cur)
        return peak

    def close(self) -> None:
        """Stop listening for frees (detaches the pending finalizers)."""
        self._closed = True
        for fin in list(self._finalizers.values()):
            fin.detach()
        self._finalizers.clear()
        self._ignore_refs.clear()

    # -- dispatch -----------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = _meta_outputs(func, args, kwargs) if self._count_meta else func(*args, **kwargs)
        real = out
        if self._count_meta and func is _BATCH_NORM and not _bn_training(args, kwargs):
            real = out[:1]
        for t in tree_flatten(real)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


# The one meta kernel (of those the networks here use) whose outputs differ from
# the CPU and CUDA kernels': batch norm in eval mode returns the per-channel
# saved mean and inverse std on meta, empty tensors on a real device. The
# tracker counts only the output there; tests/test_measure.py compares meta and
# CPU figures byte for byte to catch any other.
_BATCH_NORM = torch.ops.aten.native_batch_norm.default


def _bn_training(args, kwargs) -> bool:
    return bool(args[5] if len(args) > 5 else (kwargs or {})["training"])


def _storage(t: torch.Tensor):
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, ...
        return None


# --------------------------------------------------------------------------
# meta kernels, remembered
# --------------------------------------------------------------------------

# Many meta kernels are Python (torch._refs) and cost about a millisecond per
# call, more than the CPU kernel at batch 2. A network repeats the same ops on
# the same shapes block after block, and a functional op's outputs on meta are
# a function of its arguments' metadata, so the first call's outputs are
# remembered (sizes, strides, dtype) and later calls get fresh empty tensors
# of that layout. Only ops that write no argument and alias no output, take and
# give meta tensors only and draw no random numbers qualify; an output whose
# storage an empty tensor of its layout would not reproduce byte for byte is
# never remembered.
_META_OUTPUTS: dict = {}       # (op, argument metadata) -> (output tree, layouts), or None: run the kernel
_META_OUTPUTS_MAX = 100_000    # entries kept (a few hundred bytes each) before starting afresh
_QUALIFIES: dict = {}          # op -> whether its outputs may be remembered


def _qualifies(func) -> bool:
    ok = _QUALIFIES.get(func)
    if ok is None:
        schema = getattr(func, "_schema", None)
        ok = (schema is not None
              and all(a.alias_info is None for a in schema.arguments)
              and all(r.alias_info is None for r in schema.returns)
              and torch.Tag.nondeterministic_seeded not in func.tags)
        _QUALIFIES[func] = ok
    return ok


def _signature(a):
    if isinstance(a, torch.Tensor):
        if a.device.type != "meta":
            raise TypeError("not a meta tensor")
        return (tuple(a.shape), a.stride(), a.storage_offset(), a.dtype)
    if isinstance(a, (list, tuple)):
        return (type(a), *(_signature(x) for x in a))
    return a


def _layout(t):
    if not isinstance(t, torch.Tensor):
        return (False, t)
    if t.device.type != "meta" or t.storage_offset() != 0:
        raise TypeError("not a fresh meta tensor")
    layout = (tuple(t.shape), t.stride(), t.dtype)
    empty = torch.empty_strided(*layout[:2], dtype=t.dtype, device="meta")
    if empty.untyped_storage().nbytes() != t.untyped_storage().nbytes():
        raise TypeError("storage not reproduced by an empty tensor")
    return (True, layout)


def _meta_outputs(func, args, kwargs):
    """``func(*args, **kwargs)`` on meta tensors, from memory where it qualifies."""
    if not _qualifies(func):
        return func(*args, **kwargs)
    try:
        key = (func, _signature(args), _signature(tuple(sorted(kwargs.items()))))
        known = _META_OUTPUTS.get(key, False)
    except TypeError:  # a real tensor among the arguments, or an unhashable one
        return func(*args, **kwargs)
    if known is None:
        return func(*args, **kwargs)
    if known is not False:
        tree, layouts = known
        return tree_unflatten([torch.empty_strided(*lay[:2], dtype=lay[2], device="meta") if is_t else lay
                               for is_t, lay in layouts], tree)
    out = func(*args, **kwargs)
    flat, tree = tree_flatten(out)
    try:
        entry = (tree, [_layout(t) for t in flat])
    except TypeError:
        entry = None
    if len(_META_OUTPUTS) >= _META_OUTPUTS_MAX:
        _META_OUTPUTS.clear()
    _META_OUTPUTS[key] = entry
    return out


class MetaKernelsRemembered(TorchDispatchMode):
    """Runs meta ops through :func:`_meta_outputs`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _meta_outputs(func, args, kwargs or {})
