"""The exact parameter count of a spec as a function of its stage widths, for
every candidate width vector of the solver (:mod:`search_space.budget`) at
once, in milliseconds.

A network is a stem, stages and a head. Each stage's modules depend only on its
own fields, the spec's transition and two widths: its input ``c_in`` (the
previous stage, or the stem) and its own ``c``; which modules exist depends on
the widths only through the stage's *piece*: whether it widens, keeps or
narrows its input (a shape-changing block or transition, a projection when
narrowing). Within a piece every dimension of every parameter is affine in
``(c_in, c)`` (``c_in*c*k*k`` convolutions, ``s*k`` dense RKCNN inputs, ``c//2``
attention), and the stem's and head's in the widths. A candidate's count is
then a sum over parts (stem, stages, head) of products of affine forms, and
each part is read off ``models.build(..., device="meta")`` probe builds: the
same code path that builds the trained network, never a second formula.
``tests/test_spec_budget.py`` holds the result to ``sum(p.numel())`` of the
built network for every preset and 500 sampled specs.

Why this and not the alternatives. The quadratic fit per width signature of
commit b9013d4 built the whole network 10-30 times per signature, 1-10 s per
spec. One build cannot give a dimension's form: widths are capped at 4096
channels (``ArchSpec.validate``), too few to keep a constant apart from a
multiple of a width in one number; two probes that move ``c_in`` by 8 and ``c``
by ``8*v`` (``|v| >= 65``) give it exactly for any dimension in which ``c_in``
enters at most 4 times over. Building a stage's every piece twice would cost
five to six builds of it; instead (see :class:`_Part`) a stage is built twice
in its widening piece, whose forms hold ``c_in`` and ``c`` apart, and the other
pieces are that plus their difference in the stage's smallest variant, because
pieces differ only in how a stage opens; a stage of more than three blocks is
built with one and with two blocks, its count being affine in its blocks. All
of one spec's probes are stages of a few chained networks (each probe after a
one-block bridge stage that sets its input width, or after a probe that ends
there), and the stem and head are read off two or three tiny networks. A spec
then costs two to three builds of its network when nothing is cached (a
parameter needs two observations: a solve cannot cost less than two builds),
less for long stages. Parts are cached per probe spec (the stage's own fields
and the spec's), so a worker pays for a stage once. Probe builds skip the
initialisers' fills of meta tensors (shapes are all they read) and pause the
garbage collector. The two structural facts used (pieces differ in the
opening; blocks after the first repeat) hold for every stacking scheme of
000-004; the 500-spec test is what would catch a network that broke them.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import itertools
from collections import Counter
from contextlib import contextmanager

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import models
from models.spec import MAX_STAGES, ArchSpec, SpecError, StageSpec

# Stage probe points (c_in, c) in channels, per piece (sign of c - c_in): a first
# and a second. From the first point of "keep" to any other, and from a piece's
# first point to its second, c_in moves by 8 and c by 8*v with |v| >= _V, so a
# dimension g + (a*c_in + b*c)/8 changes by a + b*v: a is the residue (|a| <= 32),
# then b and g follow. Every width stays within ArchSpec's [1, 4096].
_V = 65
_Z = 8 + 16 * _V
_PROBES = {0: ((_Z, _Z), (_Z + 8, _Z + 8)),
           1: ((_Z + 8, _Z + 8 * _V), (_Z + 16, _Z + 16 * _V)),
           -1: ((_Z + 8, _Z - 8 * _V), (_Z + 16, _Z - 16 * _V))}
_PIECE_OF = {pt: piece for piece, pts in _PROBES.items() for pt in pts}
_W_HEAD, _V_HEAD = 64, 17  # head probes: 64 channels, then width j moved by 8 * 17**j (see _head)
_PART_CACHE = 512          # stages kept per process (tens of kB each while their pieces are read)


# --------------------------------------------------------------------------
# probe builds
# --------------------------------------------------------------------------

_FILLS = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
                    # the initialisers that dispatch as a whole (the others call the methods above)
                    torch.nn.init.kaiming_uniform_, torch.nn.init.uniform_, torch.nn.init.normal_,
                    torch.nn.init.constant_})


class _SkipMetaFills(TorchFunctionMode):
    """Initialisers fill meta tensors through Python decompositions that cost
    a fifth of a meta build; a probe reads shapes only, so it skips them.
    Function modes are per thread: a build in another thread is untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FILLS:
            t = args[0] if args else kwargs["tensor"]  # torch.nn.init passes the tensor by keyword
            if t.is_meta:
                return t
        return func(*args, **kwargs)


@contextmanager
def _probing():
    """Probe builds allocate many small objects and free them by reference
    count; generational collections in between double their time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _SkipMetaFills():
            yield
    finally:
        if enabled:
            gc.enable()


def _shapes(spec: ArchSpec) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes of ``spec``'s network by part (``"stem"``, ``"stages.3"``,
    ``"head"``) and name within the part."""
    net = models.build(spec, device="meta")
    out: dict[str, dict] = {}
    for name, p in net.named_parameters():
        head, _, rest = name.partition(".")
        if head == "stages":
            index, _, rest = rest.partition(".")
            head = f"stages.{index}"
        elif head not in ("stem", "head"):
            raise RuntimeError(f"parameter {name!r} lies outside the network's stem, stages and head, "
                               f"the parts search_space.param_count counts")
        out.setdefault(head, {})[rest] = tuple(p.shape)
    return out


def _observe(requests: list) -> None:
    """Build the observations ``(part, stage, point)`` as stages of chained probe
    networks (as many stages per network as the image size lets downsample and
    the spec allows). An observation at ``(c_in, c)`` follows one whose stage
    ends at ``c_in`` where there is one, else a one-block bridge stage that
    ends there; each part gets its shapes."""
    if not requests:
        return
    template = requests[0][0].probe
    room = max(0, template.image_size.bit_length() - 1)  # halvings of the image a network may make
    todo, chains = list(requests), []
    while todo:  # greedily: next an observation whose c_in is the last width, else any (after a bridge)
        chain, halvings, last = [], 0, None
        while todo:
            pick = next((r for r in todo if r[2][0] == last), todo[0])
            stages = len(chain) + (pick[2][0] != last)
            if chain and (halvings + pick[1].downsample > room or stages >= MAX_STAGES):
                break
            todo.remove(pick)
            if pick[2][0] != last:
                chain.append((None, StageSpec(), pick[2][0]))  # bridge
            chain.append((pick, pick[1], pick[2][1]))
            halvings += pick[1].downsample
            last = pick[2][1]
        chains.append(chain)
    for chain in chains:
        spec = dataclasses.replace(template, stages=tuple(stage for _, stage, _ in chain))
        seen = _shapes(spec.with_widths([w for _, _, w in chain]))
        for k, (req, _, _) in enumerate(chain):
            if req is not None:
                req[0].add(req[1], req[2], seen.get(f"stages.{k}", {}))


def _pair(p, q, dp, dq):
    """``(g, a, b)`` from one dimension at two points, or None if they cannot
    tell ``a`` from ``b`` (see ``_PROBES``)."""
    (x1, y1), (x2, y2) = p, q
    u, v = (x2 - x1) // 8, (y2 - y1) // 8
    if abs(u) != 1 or abs(v) < _V:
        return None
    delta = dq - dp
    a = u * ((delta + abs(v) // 2) % abs(v) - abs(v) // 2)
    b, rest = divmod(delta - a * u, v)
    g, frac = divmod(dp * 8 - a * x1 - b * y1, 8)
    return (g, a, b) if rest == 0 and frac == 0 else None


def _form(obs: dict, pieces: set) -> tuple | None:
    """The affine form of one parameter's dimensions from its observations
    ``{point: shape}``, or None while they do not determine it. Points of one
    piece are one code path; a name met in several pieces is one form only if
    a further point confirms it."""
    points = list(obs)
    if len({len(s) for s in obs.values()}) != 1:
        raise RuntimeError("a parameter changes rank between probes of a stage")
    if all(x == y for x, y in points):  # only c_in == c seen: one variable
        if len(points) < 2:
            return None
        (z1, _), (z2, _) = points[:2]
        dims = []
        for d1, d2 in zip(obs[points[0]], obs[points[1]]):
            b, rest = divmod((d2 - d1) * 8, z2 - z1)
            g, frac = divmod(d1 * 8 - b * z1, 8)
            if rest or frac:
                raise RuntimeError("a parameter dimension is not affine in the widths")
            dims.append((g, 0, b))
    else:
        if len(pieces) > 1 and len(points) < 3:
            return None
        dims = None
        for p, q in itertools.permutations(points, 2):
            trial = [_pair(p, q, dp, dq) for dp, dq in zip(obs[p], obs[q])]
            if all(t is not None for t in trial):
                dims = trial
                break
        if dims is None:
            return None
    for (x, y), shape in obs.items():
        if tuple(g + (a * x + b * y) // 8 for g, a, b in dims) != shape:
            raise RuntimeError("a parameter dimension is not affine in the widths within a piece")
    return tuple(dims)


def _combine(*terms) -> Counter:
    """``sum(k * forms)`` over ``(k, forms)`` terms, negative multiplicities kept."""
    out = Counter()
    for k, forms in terms:
        for form, mult in forms.items():
            out[form] += k * mult
    return Counter({form: mult for form, mult in out.items() if mult})


class _Part:
    """One stage as a function of its input and own widths: ``forms(pieces)``
    gives, per piece, a Counter of dimension forms ``((g, a, b), ...)``, each
    dimension being ``g + (a*c_in + b*c) // 8`` (a multiplicity may be negative).
    ``probe`` is the stage after a one-block bridge, the spec's other fields
    normalised; it keys the cache.

    The stage is read exactly in its widening piece (its "main" piece, whose
    forms hold c_in and c apart; "keep" where only that is asked for, as for a
    first stage), at both of that piece's points; a stage of
    more than three blocks from its one- and two-block variants, its count
    being affine in its blocks (every block after the first is the same
    block). Another piece is the main one plus their difference in the
    stage's smallest variant (one block; RKCNN: one stage, one step), since
    pieces differ only in how a stage opens; that variant is read at each
    piece's first point, a parameter met in several pieces being one form
    confirmed at a third point, and at a second point where a parameter is met
    in one piece only (a narrowing projection)."""

    def __init__(self, probe: ArchSpec):
        self.probe, self.stage = probe, probe.stages[1]
        st = self.stage
        self.small = (dataclasses.replace(st, rk_stages=1, rk_steps=1) if st.is_rkcnn else
                      dataclasses.replace(st, blocks=1))
        self._by_blocks = not st.is_rkcnn and st.blocks > 3  # 1 + 2 blocks built instead of all of them
        self._main_variants = ((self.small, dataclasses.replace(st, blocks=2)) if self._by_blocks else (st,))
        self.main: int | None = None
        self._seen: dict[tuple, dict] = {}   # (stage variant, point) -> {name: shape}
        self._forms: dict[int, Counter] = {}

    def add(self, stage: StageSpec, point, shapes: dict) -> None:
        self._seen[(stage, point)] = shapes

    def _decode(self, stage: StageSpec, names) -> dict:
        out = {}
        for name in names:
            obs = {pt: s[name] for (v, pt), s in self._seen.items() if v == stage and name in s}
            out[name] = _form(obs, {_PIECE_OF[pt] for pt in obs})
        return out

    def wanted(self, pieces) -> list[tuple]:
        """Observations ``(stage variant, point)`` still to be made for ``pieces``."""
        if self.main is None or (self.main == 0 and set(pieces) - {0}):
            # "keep" alone (a first stage after its own-width stem) is read directly; any
            # other piece needs the widening one, whose forms hold c_in and c apart
            self.main = 0 if set(pieces) == {0} else 1
        todo = ([] if self.main in self._forms else  # read already (its shapes may be gone)
                [(v, pt) for v in self._main_variants for pt in _PROBES[self.main]])
        others = [p for p in pieces if p != self.main and p not in self._forms]
        if others:
            firsts = [(self.small, _PROBES[p][0]) for p in (self.main, *others)]
            todo += firsts
            if all(f in self._seen for f in firsts):  # second points where a form is still open
                names = {n for f in firsts for n in self._seen[f]}
                for name, form in self._decode(self.small, names).items():
                    if form is None:
                        where = [p for p in (self.main, *others) if name in self._seen[(self.small, _PROBES[p][0])]]
                        todo.append((self.small, _PROBES[where[0]][1]))
        return [w for i, w in enumerate(todo) if w not in self._seen and w not in todo[:i]]

    def _read(self, stage: StageSpec, piece: int) -> Counter:
        names = self._seen[(stage, _PROBES[piece][0])]
        second = self._seen.get((stage, _PROBES[piece][1]))
        if second is not None and set(second) != set(names):
            raise RuntimeError(f"{stage.scheme} stage: its modules change within a piece")
        forms = self._decode(stage, names)
        if None in forms.values():
            raise RuntimeError(f"cannot read the form of a parameter of a {stage.scheme} stage from the probes")
        return Counter(forms.values())

    def forms(self, pieces) -> list[Counter]:
        m = self.main
        if m not in self._forms:
            if self._by_blocks:  # the first block, then blocks - 1 times the second
                one, two = (self._read(v, m) for v in self._main_variants)
                b = self.stage.blocks
                self._forms[m] = _combine((2 - b, one), (b - 1, two))
            else:
                self._forms[m] = self._read(self.stage, m)
        base = None
        for p in pieces:
            if p not in self._forms:
                base = base or self._read(self.small, m)
                self._forms[p] = _combine((1, self._forms[m]), (1, self._read(self.small, p)), (-1, base))
        if len(self._forms) == len(_PROBES):
            self._seen.clear()  # every piece read: the shapes are no longer needed
        return [self._forms[p] for p in pieces]


@functools.lru_cache(maxsize=_PART_CACHE)
def _part(probe: ArchSpec) -> _Part:
    return _Part(probe)


@functools.lru_cache(maxsize=_PART_CACHE)
def _head(probe: ArchSpec) -> tuple[Counter, Counter]:
    """The head's and the stem's dimension forms ``(g, a_1, .., a_n)``,
    ``g + sum(a_j * w_j) // 8``, read off ``probe`` (one-block stages, no stem
    width: the stem's is the first stage's) at 64 channels everywhere and after
    moving width ``j`` by ``8 * 17**j`` (the ``a_j`` are then the base-17 digits
    of a dimension's change, for dimensions that take each width at most once);
    where that does not fit under 4096 channels or a third width vector
    contradicts it, after moving one width by 8 at a time."""
    n = len(probe.stages)
    base = (_W_HEAD,) * n
    check = tuple(w + 8 * (3, 1, 2)[j % 3] for j, w in enumerate(base))
    seen: dict[tuple, dict] = {}

    def at(point):
        if point not in seen:
            shapes = _shapes(probe.with_widths(list(point)))
            seen[point] = {f"{part}.{name}": s for part in ("stem", "head") for name, s in shapes[part].items()}
        return seen[point]

    def forms(coefficients) -> dict | None:
        out = {}
        try:
            for name, shape in at(base).items():
                dims = [coefficients(name, k, d) for k, d in enumerate(shape)]
                if any(c is None for c in dims):
                    return None
                out[name] = tuple((d - sum(c) * _W_HEAD // 8, *c) for d, c in zip(shape, dims))
            ok = all(tuple(g + sum(a * w for a, w in zip(c, check)) // 8 for g, *c in out[name]) == shape
                     for name, shape in at(check).items())
        except KeyError:  # a parameter present at some widths only
            return None
        return out if ok else None

    far = tuple(w + 8 * _V_HEAD ** j for j, w in enumerate(base))

    def digits(name, k, d):
        delta, out = at(far)[name][k] - d, []
        for _ in range(n):
            out.append((delta + _V_HEAD // 2) % _V_HEAD - _V_HEAD // 2)
            delta = (delta - out[-1]) // _V_HEAD
        return None if delta else out

    moved = [tuple(w + 8 * (j == i) for j, w in enumerate(base)) for i in range(n)]
    found = forms(digits) if max(far) <= 4096 else None
    found = found or forms(lambda name, k, d: [at(p)[name][k] - d for p in moved])
    if found is None:
        raise RuntimeError("the head's or stem's parameter shapes are not affine in the widths")
    if any(a for name, dims in found.items() if name.startswith("stem.") for _, _, *rest in dims for a in rest):
        raise RuntimeError("the stem's parameters depend on more than its own width")
    return (Counter(d for name, d in found.items() if name.startswith("head.")),
            Counter(d for name, d in found.items() if name.startswith("stem.")))


# --------------------------------------------------------------------------
# the exact count as a function of the widths
# --------------------------------------------------------------------------

def _probe_spec(spec: ArchSpec, stages) -> ArchSpec:
    # name and seed label and initialise a network; they never shape it
    return dataclasses.replace(spec, stages=tuple(stages), stem_width=None, name="probe", seed=0)


def _evaluate(forms: Counter, cols) -> np.ndarray:
    """Sum over parameters of the product of their dimensions, exactly (int64)."""
    total = np.zeros(len(cols[0]), dtype=np.int64)
    for dims, mult in forms.items():
        term = np.full(len(cols[0]), mult, dtype=np.int64)
        for g, *coefs in dims:  # g + (sum of coefficient * width) // 8
            term *= g + sum(a * c for a, c in zip(coefs, cols) if a) // 8
        total += term
    return total


@functools.lru_cache(maxsize=_PART_CACHE)
def _polynomial(forms: tuple, nvars: int) -> tuple:
    """The same sum as a polynomial in the widths / 8, ``((exponents, coefficient), ...)``,
    exact where every width is a multiple of 8 (the solver's candidates): a few
    monomials instead of one product per parameter form."""
    total = Counter()
    for dims, mult in forms:
        terms = Counter({(0,) * nvars: mult})  # a 0-dim parameter (a learnable step) counts 1
        for g, *coefs in dims:
            nxt = Counter()
            for e, c in terms.items():
                nxt[e] += c * g
                for v, a in enumerate(coefs):
                    if a:
                        nxt[e[:v] + (e[v] + 1,) + e[v + 1:]] += c * a
            terms = nxt
        total.update(terms)
    return tuple((e, c) for e, c in total.items() if c)


def _count_of(forms: Counter, cols) -> np.ndarray:
    if not all((c % 8 == 0).all() for c in cols):
        return _evaluate(forms, cols)
    units = [c // 8 for c in cols]
    total = np.zeros(len(cols[0]), dtype=np.int64)
    for exponents, coef in _polynomial(tuple(forms.items()), len(cols)):
        term = np.full(len(cols[0]), coef, dtype=np.int64)
        for u, k in zip(units, exponents):
            if k:
                term *= u ** k
        total += term
    return total


class ParamCounter:
    """``ParamCounter(spec)(widths)``: the exact parameter count of ``spec``'s
    network for each row of ``widths`` (one width per stage), as int64; equal to
    ``sum(p.numel())`` of ``models.build(spec.with_widths(row))``."""

    def __init__(self, spec: ArchSpec):
        self.spec = spec
        stages = [dataclasses.replace(s, width=None) for s in spec.stages]
        self._parts = [_part(_probe_spec(spec, (StageSpec(), s))) for s in stages]
        self._head = _probe_spec(spec, [StageSpec() for _ in stages])

    def __call__(self, widths, stem=None) -> np.ndarray:
        w = np.atleast_2d(np.asarray(widths, dtype=np.int64))
        if w.ndim != 2 or w.shape[1] != len(self.spec.stages) or (w < 1).any():
            raise SpecError(f"widths: need rows of {len(self.spec.stages)} positive integers, "
                            f"one per stage, got shape {w.shape}")
        if stem is not None:  # one stem width per row
            stem = np.broadcast_to(np.asarray(stem, dtype=np.int64), (len(w),))
            if (stem < 1).any():
                raise SpecError("stem widths: need positive integers")
        elif self.spec.stem_width:
            stem = np.full(len(w), self.spec.stem_width)
        else:
            stem = w[:, 0]
        inputs = [stem] + [w[:, j - 1] for j in range(1, w.shape[1])]
        signs = [np.sign(w[:, j] - x) for j, x in enumerate(inputs)]
        rows = [{piece: s == piece for piece in (-1, 0, 1)} for s in signs]
        pieces = [[piece for piece, r in rs.items() if r.any()] for rs in rows]
        with _probing():
            for _ in range(2):  # the main pieces and first points, then the second points still open
                _observe([(part, *want) for part, ps in zip(self._parts, pieces) for want in part.wanted(ps)])
            head, stem_forms = _head(self._head)
            forms = [part.forms(ps) for part, ps in zip(self._parts, pieces)]
        cols = [w[:, j] for j in range(w.shape[1])]
        total = _count_of(head, cols) + _count_of(stem_forms, [stem] + cols[1:])
        for j, x in enumerate(inputs):
            for piece, f in zip(pieces[j], forms[j]):
                r = rows[j][piece]
                total[r] += _count_of(f, [x[r], w[r, j]])
        return total
