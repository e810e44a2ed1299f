"""Merge methods as small pure functions over tensors.

Every function takes the tensors of one parameter (one per input model, all of the same shape) and returns the
merged tensor. Nothing here knows about files or models, so the same functions serve the streaming merge, the
in-memory baseline of the benchmark and anyone who wants to merge two state dicts by hand.

Semantics follow mergekit (https://github.com/arcee-ai/mergekit) so that a mergekit config gives the same model:

* ``linear``: ``sum(w_i * x_i)``, divided by ``sum(w_i)`` when ``normalize`` (mergekit default: true).
* ``task_arithmetic`` / ``ties`` / ``dare_linear`` / ``dare_ties`` are all "generalized task arithmetic": task
  vectors ``d_i = x_i - base`` are optionally sparsified (``magnitude`` top-k for TIES, seeded Bernoulli drop for
  DARE), weighted by ``w_i``, optionally filtered by a sign election (TIES), summed, optionally normalized by the sum
  of the weights that contributed, scaled by ``lambda`` and added back to the base.
* ``slerp``: spherical interpolation from the base (``t=0``) to the other model (``t=1``), falling back to linear
  interpolation when the two tensors are nearly parallel (``|cos| > 0.9995``), as mergekit does.
* ``ema`` (fastslow's own): a running average ``avg <- beta * avg + (1 - beta) * x`` over checkpoints in order.

All arithmetic is done in float32 (or float64 if the inputs are float64) and the result is returned in that compute
dtype; callers cast to the output dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy
import torch

Tensor = torch.Tensor

# mergekit's threshold for "nearly parallel": above it slerp is numerically unstable and equals lerp anyway.
SLERP_DOT_THRESHOLD = 0.9995


def _compute_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _release(tensors: Sequence[Tensor], i: int, release: bool) -> None:
    """Drop the list's reference to input ``i`` once it is no longer needed (``release=True`` callers own the list).

    The streaming merge passes memory-mapped inputs this way: the map, and its pages in the resident set, go away
    as soon as the last reference does, instead of when the whole tensor is merged.
    """
    if release and isinstance(tensors, list):
        tensors[i] = None


def _fresh(t: Tensor, dtype: torch.dtype, scale: float) -> Tensor:
    """``t * scale`` in ``dtype`` as a new contiguous buffer (inputs are never written to)."""
    return torch.mul(t.to(dtype), scale).contiguous()


def _check_same_shape(tensors: Sequence[Tensor]) -> None:
    if not tensors:
        raise ValueError("no tensors to merge")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"tensors to merge have different shapes: {sorted(shapes)}")


def linear(
    tensors: Sequence[Tensor], weights: Sequence[float] | None = None, normalize: bool = True, release: bool = False
) -> Tensor:
    """Weighted average ``sum(w_i x_i) / sum(w_i)`` (or the plain weighted sum when ``normalize`` is false).

    ``weights`` defaults to all ones, so the default is the uniform mean. Inputs are never modified; with
    ``release=True`` the entries of the list ``tensors`` are set to None as soon as they have been used.
    """
    _check_same_shape(tensors)
    weights = [1.0] * len(tensors) if weights is None else list(weights)
    if len(weights) != len(tensors):
        raise ValueError(f"{len(weights)} weights for {len(tensors)} tensors")
    dtype = _compute_dtype(tensors)
    scale = 1.0
    if normalize:
        total = float(sum(weights))
        if abs(total) < 1e-8:
            raise ValueError(f"linear merge with normalize=true needs weights that do not sum to zero, got {weights}")
        scale = 1.0 / total  # folded into the weights: one pass over memory fewer than dividing at the end
    out = _fresh(tensors[0], dtype, float(weights[0]) * scale)
    _release(tensors, 0, release)
    for i in range(1, len(tensors)):
        out.add_(tensors[i].to(dtype), alpha=float(weights[i]) * scale)
        _release(tensors, i, release)
    return out


def ema(tensors: Sequence[Tensor], beta: float = 0.5, release: bool = False) -> Tensor:
    """Exponential moving average over ``tensors`` in order: ``avg = t[0]``, then ``avg = beta*avg + (1-beta)*t[i]``.

    With ``tensors = [previous_average, new_checkpoint]`` this is one update of a running merged model, the form the
    distillation loop uses after each iteration. ``beta`` is the weight kept by the running average.
    """
    _check_same_shape(tensors)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ema beta must be in [0, 1], got {beta}")
    dtype = _compute_dtype(tensors)
    avg = _fresh(tensors[0], dtype, 1.0)
    _release(tensors, 0, release)
    for i in range(1, len(tensors)):
        avg.mul_(beta).add_(tensors[i].to(dtype), alpha=1.0 - beta)
        _release(tensors, i, release)
    return avg


_CHUNK = 1 << 20  # elements per chunk for the whole-tensor passes of the reference path: temporaries stay at a few MB
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


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude and zero the rest (TIES "trim")."""
    if density >= 1.0:
        return delta
    return delta * magnitude_mask(delta, density)


def random_drop(
    delta: Tensor, density: float, generator: torch.Generator | None = None, rescale: bool | str = True
) -> Tensor:
    """DARE: keep each entry with probability ``density`` (seeded by ``generator``) and rescale what is kept.

    ``rescale=True`` divides the kept entries by ``density`` (the DARE paper's ``1/(1-p)``, which keeps the expected
    delta unchanged). ``rescale="l1"|"l2"|"linf"`` instead matches that norm of the original delta, as recent mergekit
    versions do. ``rescale=False`` only drops.
    """
    if density >= 1.0:
        return delta
    return _sparsify_(delta.clone(), density, "random", rescale, generator)


def _norm(t: Tensor, norm: str) -> float:
    if norm == "l1":
        return float(t.abs().sum())
    if norm == "l2":
        return float(t.norm())
    if norm == "linf":
        return float(t.abs().max())
    raise ValueError(f"unknown rescale norm {norm!r}; expected true, false, 'l1', 'l2' or 'linf'")


def _sparsify_(
    d: Tensor, density: float, method: str | None, rescale: bool | str, generator: torch.Generator | None = None
) -> Tensor:
    """Sparsify ``d`` in place (``"magnitude"`` trim or ``"random"`` drop), then rescale what is kept."""
    if method is None or density >= 1.0:
        return d
    if density <= 0.0:
        return d.zero_()
    if method not in ("magnitude", "random"):
        raise ValueError(f"unknown sparsification {method!r}; expected None, 'magnitude' or 'random'")
    before = _norm(d, rescale) if isinstance(rescale, str) else None
    if method == "magnitude":
        mask = magnitude_mask(d, density)
        for dc, mc in zip(d.view(-1).split(_CHUNK), mask.view(-1).split(_CHUNK)):
            dc.mul_(mc)  # chunked: multiplying by a bool mask promotes it to a full float temporary
        del mask
    else:
        # chunk by chunk from one generator: the same draws as one torch.rand over the whole tensor (checked in
        # the tests), without a full-size float temporary
        for dc in d.view(-1).split(_CHUNK):
            dc.mul_(torch.rand(dc.shape, generator=generator, dtype=torch.float32) < density)
    if rescale is True:
        d.div_(density)
    elif isinstance(rescale, str):
        after = _norm(d, rescale)
        if before >= 1e-7 and after >= 1e-7:
            d.mul_(before / after)
    return d


def elect_sign_mask(weighted_deltas: Tensor, method: str = "sum") -> Tensor:
    """TIES sign election over a stack ``[n_models, ...]``: True where a delta agrees with the elected sign.

    ``method="sum"`` elects the sign of the summed (weighted) deltas, i.e. the side with the larger total mass (the
    TIES paper and mergekit's default); ``"count"`` elects the sign most deltas have. Ties go to ``+``. Zero deltas
    never agree, so they do not count in the disjoint mean.
    """
    sign = weighted_deltas.sign()
    if method == "sum":
        elected = torch.where(weighted_deltas.sum(dim=0) >= 0, 1.0, -1.0).to(sign.dtype)
    elif method == "count":
        elected = torch.where(sign.sum(dim=0) >= 0, 1.0, -1.0).to(sign.dtype)
    else:
        raise ValueError(f"unknown sign consensus method {method!r}; expected 'sum' or 'count'")
    return sign == elected


def generalized_task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    *,
    sparsify: str | None = None,
    consensus: str | None = None,
    normalize: bool = False,
    lambda_: float = 1.0,
    rescale: bool | str = False,
    generators: Sequence[torch.Generator | None] | None = None,
    release: bool = False,
) -> Tensor:
    """``base + lambda * combine(sparsify(x_i - base) * w_i)``: the engine behind task arithmetic, TIES and DARE.

    ``sparsify``: None, ``"magnitude"`` (TIES trim) or ``"random"`` (DARE drop, one generator per model).
    ``consensus``: None or ``"sum"``/``"count"`` (TIES sign election, then the disjoint mean).
    ``normalize``: divide the combined delta by the sum of the weights that contributed at each position.
    ``rescale``: after sparsifying, divide by the density (True) or match the ``"l1"``/``"l2"``/``"linf"`` norm of
    the unsparsified delta; mergekit's default is true for DARE and false for TIES.
    ``release``: set the entries of the list ``tensors`` to None, so that each input lives only as long as the
    method needs it (until its delta is taken, or to the end when deltas are recomputed per block); inputs are never
    modified.
    """
    _check_same_shape([base, *tensors])
    n = len(tensors)
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models")
    densities = [1.0] * n if densities is None else list(densities)
    if len(densities) != n:
        raise ValueError(f"{len(densities)} densities for {n} models")
    dtype = _compute_dtype([base, *tensors])
    base_c = base.to(dtype)
    if n == 0:
        return base_c.clone()
    opts = GTAOptions(list(weights), densities, sparsify, consensus, normalize, lambda_, rescale, generators)
    if isinstance(rescale, str) or sparsify not in (None, "magnitude", "random") or consensus not in _CONSENSUS:
        return _gta_whole(base_c, tensors, opts, release)
    return _gta_blocked(base_c, tensors, opts, release)


_CONSENSUS = (None, "sum", "count")


@dataclass(frozen=True)
class GTAOptions:
    """The options of :func:`generalized_task_arithmetic` (one weight and density per model), as its two kernels
    take them."""

    weights: Sequence[float]
    densities: Sequence[float]
    sparsify: str | None = None
    consensus: str | None = None
    normalize: bool = False
    lambda_: float = 1.0
    rescale: bool | str = False
    generators: Sequence[torch.Generator | None] | None = None


def _gta_whole(base_c: Tensor, tensors: Sequence[Tensor], opts: GTAOptions, release: bool) -> Tensor:
    """:func:`generalized_task_arithmetic` with whole-tensor steps: the reference the blocked kernel is tested
    against, and the path for norm-matching rescale (``"l1"``/``"l2"``/``"linf"``), whose norms are whole-tensor
    reductions."""
    weights, densities, generators, consensus = opts.weights, opts.densities, opts.generators, opts.consensus
    dtype = base_c.dtype
    n = len(tensors)
    # Each weighted, sparsified delta lives in a buffer of its own and they are combined in place: stacking them
    # would hold several extra copies of the largest tensor (the embedding) at once.
    deltas = []
    for i in range(n):
        d = torch.sub(tensors[i].to(dtype), base_c).contiguous()
        _release(tensors, i, release)
        gen = generators[i] if generators is not None else None
        deltas.append(_sparsify_(d, densities[i], opts.sparsify, opts.rescale, gen).mul_(float(weights[i])))
    if consensus is not None:
        acc = _signed_sum(deltas, consensus)
        positive = acc >= 0  # the elected sign; ties go to "+"
        divisor = acc.zero_() if opts.normalize else None  # reuse the buffer: one full-size tensor less at the peak
        # chunked so that the boolean temporaries (and their float promotions) stay a few MB
        flat = [d.view(-1) for d in deltas]
        for i, pos in enumerate(positive.view(-1).split(_CHUNK)):
            sl = slice(i * _CHUNK, i * _CHUNK + pos.numel())
            for w, d in zip(weights, flat):
                agree = torch.where(pos, d[sl] > 0, d[sl] < 0)  # zero deltas never agree
                d[sl].mul_(agree)
                if divisor is not None:
                    divisor.view(-1)[sl].add_(agree, alpha=float(w))
        del positive, acc
        if divisor is not None:
            divisor[divisor == 0] = 1.0
    else:
        total = float(sum(float(w) for w in weights))
        divisor = total if abs(total) >= 1e-8 else 1.0
    mixed = deltas[0]
    for d in deltas[1:]:
        mixed.add_(d)
    del deltas
    if opts.normalize:
        mixed.div_(divisor)
    if opts.lambda_ != 1.0:
        mixed.mul_(opts.lambda_)
    return mixed.add_(base_c)


def _gta_blocked(base_c: Tensor, tensors: Sequence[Tensor], opts: GTAOptions, release: bool) -> Tensor:
    """:func:`generalized_task_arithmetic` block by block, bit for bit the result of :func:`_gta_whole`.

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
    for i in range(n):
        _release(tensors, i, release)  # ``xs`` holds them until the end
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


def _signed_sum(weighted_deltas: Sequence[Tensor], method: str) -> Tensor:
    """Sum of the deltas (``"sum"``) or of their signs (``"count"``): its sign is the elected one."""
    if method not in ("sum", "count"):
        raise ValueError(f"unknown sign consensus method {method!r}; expected 'sum' or 'count'")
    acc = torch.zeros_like(weighted_deltas[0])
    for d in weighted_deltas:
        if method == "sum":
            acc.add_(d)
        else:
            for a, c in zip(acc.view(-1).split(_CHUNK), d.view(-1).split(_CHUNK)):
                a.add_(c.sign())
    return acc


def task_arithmetic(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    lambda_: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """``base + lambda * sum(w_i * (x_i - base))`` (divided by ``sum(w_i)`` when ``normalize``)."""
    return generalized_task_arithmetic(base, tensors, weights, normalize=normalize, lambda_=lambda_)


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = True,
    consensus: str = "sum",
) -> Tensor:
    """TIES: trim each delta to its top ``density`` by magnitude, elect a sign per entry, average the agreeing ones."""
    return generalized_task_arithmetic(
        base,
        tensors,
        weights,
        densities,
        sparsify="magnitude",
        consensus=consensus,
        normalize=normalize,
        lambda_=lambda_,
    )


def dare_linear(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool | str = True,
) -> Tensor:
    """DARE then task arithmetic: drop each delta entry with probability ``1 - density``, rescale, weighted sum."""
    return generalized_task_arithmetic(
        base,
        tensors,
        weights,
        densities,
        sparsify="random",
        normalize=normalize,
        lambda_=lambda_,
        rescale=rescale,
        generators=generators,
    )


def dare_ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    densities: Sequence[float] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool | str = True,
    consensus: str = "sum",
) -> Tensor:
    """DARE then TIES sign election and disjoint merge."""
    return generalized_task_arithmetic(
        base,
        tensors,
        weights,
        densities,
        sparsify="random",
        consensus=consensus,
        normalize=normalize,
        lambda_=lambda_,
        rescale=rescale,
        generators=generators,
    )


def slerp(
    a: Tensor,
    b: Tensor,
    t: float,
    dot_threshold: float = SLERP_DOT_THRESHOLD,
    eps: float = 1e-8,
) -> Tensor:
    """Spherical linear interpolation from ``a`` (``t=0``) to ``b`` (``t=1``), treating each tensor as one vector.

    The angle comes from the normalized tensors; the interpolation coefficients are applied to the unnormalized ones
    (mergekit's formulation), so norms are interpolated too. Nearly parallel or anti-parallel tensors
    (``|cos| > dot_threshold``) fall back to ``(1-t) a + t b``.
    """
    _check_same_shape([a, b])
    dtype = _compute_dtype([a, b])
    a_c, b_c = a.to(dtype), b.to(dtype)
    a_norm, b_norm = float(a_c.norm()), float(b_c.norm())
    # cosine without materialising the normalized tensors; a (near-)zero tensor is left unnormalized, as mergekit does
    dot = float(torch.dot(a_c.reshape(-1), b_c.reshape(-1))) / (
        (a_norm if a_norm > eps else 1.0) * (b_norm if b_norm > eps else 1.0)
    )
    if abs(dot) > dot_threshold:
        return torch.lerp(a_c, b_c, float(t))
    theta = math.acos(max(-1.0, min(1.0, dot)))
    s0 = math.sin((1.0 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return _fresh(a_c, dtype, s0).add_(b_c, alpha=s1)


__all__ = [
    "SLERP_DOT_THRESHOLD",
    "dare_linear",
    "dare_ties",
    "elect_sign_mask",
    "ema",
    "generalized_task_arithmetic",
    "linear",
    "magnitude_prune",
    "random_drop",
    "slerp",
    "task_arithmetic",
    "ties",
]
