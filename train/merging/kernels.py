"""Fast blocked kernels for the merge methods: the TIES trim mask and generalized task arithmetic.

:mod:`train.merging.methods` holds the merge methods as small whole-tensor functions, the reference. The two hot
spots of TIES and DARE merges are here instead, computed block by block on L2-resident buffers with numpy:

* :func:`magnitude_mask`: the exact ``k`` entries of largest magnitude, without sorting the tensor or holding
  full-size copies of it (a strided sample brackets the k-th magnitude, one blocked pass counts around it);
* :func:`gta_blocked`: delta, trim or DARE drop, rescale, weight, sign election, disjoint sum, divisor, lambda and
  base in one pass over blocks of all models, bit for bit the result of the reference (the tests compare them
  bitwise, for every option, with small blocks).

Nothing here knows about files or models; only torch and numpy are imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
import torch

Tensor = torch.Tensor

# Elements per block in the blocked passes (TIES/DARE kernel, k-th magnitude): a block's handful of scratch buffers
# (128 KB each in float32) stay in the L2 cache, so a sequence of elementwise steps costs about one trip to memory.
# At most torch's parallel grain size (32768), so that the few torch ops per block (conversions, DARE draws) run
# inline instead of starting an OpenMP parallel region each: with intra-op threads on a busy machine those regions'
# spin-waits made the kernel ~10x slower.
_BLOCK = 1 << 15
_SAMPLE = 65536  # entries of |delta| sampled to bracket the k-th largest magnitude


def magnitude_mask(delta: Tensor, density: float) -> Tensor:
    """Boolean mask of the ``int(density * numel)`` entries of largest magnitude (the TIES "trim").

    A small strided sample brackets the k-th largest magnitude, one blocked pass counts the entries above the
    bracket and collects the few inside it, and the exact k-th value is taken among those. Besides the mask only a
    few MB are allocated, where a top-k or a full k-th value would hold several full-size copies plus int64 indices.
    Entries tied with the threshold are kept in index order until exactly k are kept (mergekit's count).
    """
    n = delta.numel()
    k = int(density * n)
    if density >= 1.0 or k >= n:
        return torch.ones_like(delta, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    flat = delta.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    values = flat.contiguous().numpy()
    scratch = numpy.empty(min(_BLOCK, n), dtype=values.dtype)

    def magnitudes():
        for s in range(0, n, _BLOCK):
            v = values[s : s + _BLOCK]
            yield numpy.abs(v, out=scratch[: v.size])

    lo, hi = _sample_bracket(numpy.sort(numpy.abs(values[:: max(1, n // _SAMPLE)])), k, n)
    threshold, keep_ties = _kth_largest_magnitude(magnitudes, n, k, lo, hi)
    mask = numpy.empty(n, dtype=bool)
    seen = [0]
    for s in range(0, n, _BLOCK):
        v = values[s : s + _BLOCK]
        _trim_block(v, scratch[: v.size], mask[s : s + v.size], threshold, keep_ties, seen)
    return torch.from_numpy(mask).view(delta.shape)


def _trim_block(v, scratch, keep, threshold, keep_ties: int | None, seen: list[int]) -> None:
    """``keep = |v| >= threshold`` for one block, dropping tied entries beyond the first ``keep_ties`` of the tensor.

    ``keep_ties`` is None when the ties need no trimming; ``seen`` counts the tied entries of the earlier blocks.
    """
    numpy.abs(v, out=scratch)
    numpy.greater_equal(scratch, threshold, out=keep)
    if keep_ties is None:
        return
    tied = numpy.flatnonzero(scratch == threshold)
    if seen[0] + tied.size > keep_ties:
        keep[tied[max(0, keep_ties - seen[0]) :]] = False
    seen[0] += tied.size


def _sample_bracket(sample: numpy.ndarray, k: int, n: int) -> tuple[float, float]:
    """``(lo, hi)`` around where the k-th largest of ``n`` magnitudes should lie, from a sorted sample of them."""
    m = sample.size
    pos = min(m - 1, max(0, int((1.0 - k / n) * m)))
    margin = max(64, 4 * int(math.sqrt(m)))
    lo = numpy.nextafter(sample[max(0, pos - margin)], sample.dtype.type(-numpy.inf))
    return lo, sample[min(m - 1, pos + margin)]


class _Bracket:
    """Counts the magnitudes above ``hi`` and collects those in ``(lo, hi]``, block by block."""

    def __init__(self, lo, hi, block: int):
        self.lo, self.hi = lo, hi
        self.above = 0
        self.inside: list[numpy.ndarray] = []
        self._g1 = numpy.empty(block, dtype=bool)
        self._g2 = numpy.empty(block, dtype=bool)

    def add(self, magnitudes: numpy.ndarray) -> None:
        g1, g2 = self._g1[: magnitudes.size], self._g2[: magnitudes.size]
        numpy.greater(magnitudes, self.hi, out=g1)
        self.above += int(numpy.count_nonzero(g1))
        numpy.greater(magnitudes, self.lo, out=g2)
        numpy.logical_xor(g1, g2, out=g2)  # lo < |x| <= hi (NaN is in neither)
        self.inside.append(magnitudes[g2])

    def select(self, k: int):
        """``(k-th largest, keep_ties)`` if the bracket holds it, else None. ``keep_ties``: see :func:`_trim_block`."""
        inside = numpy.concatenate(self.inside) if self.inside else numpy.empty(0)
        if self.above >= k or self.above + inside.size < k:
            return None
        idx = inside.size - (k - self.above)
        threshold = numpy.partition(inside, idx)[idx]
        greater = self.above + int(numpy.count_nonzero(inside > threshold))
        tied = int(numpy.count_nonzero(inside == threshold))
        return threshold, (k - greater if greater + tied > k else None)


def _kth_largest_magnitude(magnitudes, n: int, k: int, lo, hi, bracket: _Bracket | None = None):
    """``(k-th largest, keep_ties)`` of ``n`` magnitudes (``0 < k < n``), exact, without sorting them all.

    ``magnitudes()`` yields them block by block (each block may reuse one buffer). ``(lo, hi)`` is the first guess of
    a bracket; ``bracket``, when given, is that bracket already counted in a pass the caller made. Further passes
    widen the bracket until it holds the k-th value (rare: the guess comes from a sample).
    """
    while True:
        if bracket is None:
            bracket = _Bracket(lo, hi, _BLOCK)
            for block in magnitudes():
                bracket.add(block)
        found = bracket.select(k)
        if found is not None:
            return found
        if bracket.above >= k:  # the bracket was too low: widen upwards, to the largest magnitude
            lo, hi = hi, max((numpy.fmax.reduce(m) for m in magnitudes() if m.size), default=hi)
        elif lo < 0:  # fewer than k magnitudes that are not NaN: keep them all
            return type(lo)(-numpy.inf), None
        else:  # too high: widen downwards
            lo, hi = type(lo)(-1.0), lo
        bracket = None


@dataclass(frozen=True)
class GTAOptions:
    """The options of :func:`train.merging.methods.generalized_task_arithmetic` (one weight and density per model),
    as the reference and the blocked kernel take them."""

    weights: Sequence[float]
    densities: Sequence[float]
    sparsify: str | None = None
    consensus: str | None = None
    normalize: bool = False
    lambda_: float = 1.0
    rescale: bool | str = False
    generators: Sequence[torch.Generator | None] | None = None

    @property
    def blocked(self) -> bool:
        """Whether :func:`gta_blocked` computes these options; a norm-matching rescale (``"l1"``/``"l2"``/``"linf"``)
        needs whole-tensor norms, and unknown methods are left to the reference to reject."""
        return (
            not isinstance(self.rescale, str)
            and self.sparsify in (None, "magnitude", "random")
            and self.consensus in (None, "sum", "count")
        )


def gta_blocked(base_c: Tensor, tensors: Sequence[Tensor], opts: GTAOptions, release: bool = False) -> Tensor:
    """Generalized task arithmetic block by block, bit for bit the result of the whole-tensor reference
    (:func:`train.merging.methods.gta_reference`); ``base_c`` is the base in the compute dtype.

    The TIES trim needs each delta's k-th magnitude first: one pass per trimmed model counts it (deltas computed
    block by block and dropped). Then one pass over blocks of all models does everything else: delta, trim or DARE
    drop, rescale, weight, sign election, disjoint sum, divisor, lambda and base. No full-size buffer besides the
    result is allocated, each block's steps run on L2-resident buffers, and the boolean steps use numpy, whose
    comparisons and logical ops are several times faster than torch's on CPU. Every floating-point step is the same
    elementwise operation, in the same order, as in the whole-tensor reference, so the results are identical (the
    tests compare them bitwise). Inputs are read twice when trimmed, so they are released only at the end.
    """
    weights, densities, generators = opts.weights, opts.densities, opts.generators
    sparsify, consensus, normalize, lambda_ = opts.sparsify, opts.consensus, opts.normalize, opts.lambda_
    n = len(tensors)
    dtype = base_c.dtype
    base_f = base_c.detach().reshape(-1).contiguous()
    base_n = base_f.numpy()
    numel = base_f.numel()
    xs = [t.detach().reshape(-1) for t in tensors]
    if release and isinstance(tensors, list):  # the caller gives up the list; ``xs`` holds the inputs until the end
        tensors[:] = [None] * n
    block = max(1, min(_BLOCK, numel))
    npdtype = base_n.dtype
    delta_t = [torch.empty(block, dtype=dtype) for _ in range(n - 1)]  # model 0's goes straight into the result
    mags = numpy.empty(block, dtype=npdtype)
    b1, b2, b3, b4 = (numpy.empty(block, dtype=bool) for _ in range(4))

    plain = [x.dtype == dtype and x.is_contiguous() for x in xs]  # numpy can read these directly
    xs_n = [x.numpy() if p else None for x, p in zip(xs, plain)]

    def delta_into(i: int, s: int, e: int, out: Tensor) -> numpy.ndarray:
        if plain[i]:
            return numpy.subtract(xs_n[i][s:e], base_n[s:e], out=out.numpy())
        torch.sub(xs[i][s:e].to(dtype), base_f[s:e], out=out)
        return out.numpy()

    # pass 1: the k-th magnitude of each trimmed delta
    ks = [int(float(d) * numel) for d in densities]
    trims: list[tuple | None] = []
    for i in range(n):
        k = ks[i]
        if not (sparsify == "magnitude" and 0.0 < float(densities[i]) < 1.0 and 0 < k < numel):
            trims.append(None)
            continue
        step = max(1, numel // _SAMPLE)
        sample = torch.sub(xs[i][::step].to(dtype), base_f[::step]).abs_().numpy()
        lo, hi = _sample_bracket(numpy.sort(sample), k, numel)
        scratch = torch.from_numpy(mags)

        def magnitudes(i=i, scratch=scratch):
            for s in range(0, numel, block):
                e = min(s + block, numel)
                yield numpy.abs(delta_into(i, s, e, scratch[: e - s]), out=mags[: e - s])

        trims.append(_kth_largest_magnitude(magnitudes, numel, k, lo, hi))

    # pass 2: everything else, block by block over all models
    result = torch.empty(numel, dtype=dtype)
    acc = numpy.empty(block, dtype=npdtype) if consensus is not None and n > 1 else None
    sign_t = torch.empty(block, dtype=dtype) if consensus == "count" else None
    divisor = numpy.empty(block, dtype=npdtype) if consensus is not None and normalize else None
    weight = numpy.empty(block, dtype=npdtype) if divisor is not None else None
    total = float(sum(float(w) for w in weights))
    total = total if abs(total) >= 1e-8 else 1.0
    seen = [[0] for _ in range(n)]
    for s in range(0, numel, block):
        e = min(s + block, numel)
        size = e - s
        views = []
        for i in range(n):
            density, w = float(densities[i]), float(weights[i])
            mode = sparsify if density < 1.0 else None
            out = result[s:e] if i == 0 else delta_t[i - 1][:size]
            if mode is not None and density <= 0.0:  # sparsified away
                v = out.numpy()
                v.fill(0.0)
            else:
                v = delta_into(i, s, e, out)
                if trims[i] is not None:
                    keep = b1[:size]
                    _trim_block(v, mags[:size], keep, trims[i][0], trims[i][1], seen[i])
                    numpy.multiply(v, keep, out=v)
                elif mode == "random":
                    gen = generators[i] if generators is not None else None
                    drawn = torch.rand(size, generator=gen, dtype=torch.float32).numpy()
                    numpy.multiply(v, numpy.less(drawn, numpy.float32(density), out=b1[:size]), out=v)
                elif mode == "magnitude" and ks[i] <= 0:  # keeps nothing (k == numel keeps all: times 1.0)
                    numpy.multiply(v, 0.0, out=v)
                if mode is not None and opts.rescale is True:
                    numpy.divide(v, density, out=v)
            numpy.multiply(v, w, out=v)
            views.append(v)
        mixed = views[0]
        if consensus is not None:
            if consensus == "count":
                a = torch.from_numpy(acc[:size]) if acc is not None else torch.empty(size, dtype=dtype)
                torch.sign(torch.from_numpy(views[0]), out=a)
                for v in views[1:]:
                    a.add_(torch.sign(torch.from_numpy(v), out=sign_t[:size]))
                elected = a.numpy()
            elif n > 1:
                elected = numpy.add(views[0], views[1], out=acc[:size])
                for v in views[2:]:
                    numpy.add(elected, v, out=elected)
            else:
                elected = views[0]
            positive, negative = b2[:size], b3[:size]
            numpy.greater_equal(elected, 0, out=positive)  # ties go to "+"
            numpy.logical_not(positive, out=negative)
            agree, other = b1[:size], b4[:size]
            if divisor is not None:
                div = divisor[:size]
                div.fill(0.0)
            for w, v in zip(weights, views):
                numpy.logical_and(numpy.greater(v, 0, out=agree), positive, out=agree)  # zero deltas never agree
                numpy.logical_and(numpy.less(v, 0, out=other), negative, out=other)
                numpy.logical_or(agree, other, out=agree)
                numpy.multiply(v, agree, out=v)
                if divisor is not None:  # div + w * agree, as torch's add_(agree, alpha=w); where= is ~30x slower
                    numpy.add(div, numpy.multiply(agree, float(w), out=weight[:size]), out=div)
            for v in views[1:]:
                numpy.add(mixed, v, out=mixed)
            if divisor is not None:
                numpy.add(div, numpy.equal(div, 0, out=agree), out=div)  # 0 -> 1, the rest + 0.0
                numpy.divide(mixed, div, out=mixed)
        else:
            for v in views[1:]:
                numpy.add(mixed, v, out=mixed)
            if normalize:
                numpy.divide(mixed, total, out=mixed)
        if lambda_ != 1.0:
            numpy.multiply(mixed, float(lambda_), out=mixed)
        numpy.add(mixed, base_n[s:e], out=mixed)
    xs.clear()
    xs_n.clear()
    return result.view(base_c.shape)


__all__ = ["GTAOptions", "gta_blocked", "magnitude_mask"]
