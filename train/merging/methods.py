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

These are the reference implementations. The hot spots of TIES and DARE (the top-k magnitude mask, and the whole
generalized task arithmetic when no norm-matching rescale is asked for) run as blocked numpy kernels from
:mod:`train.merging.kernels`, which give bit for bit the same results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from train.merging.kernels import GTAOptions, gta_blocked, magnitude_mask

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
    if opts.blocked:  # the fast kernel, bit for bit the reference's result
        return gta_blocked(base_c, tensors, opts, release)
    return gta_reference(base_c, tensors, opts, release)


def gta_reference(base_c: Tensor, tensors: Sequence[Tensor], opts: GTAOptions, release: bool = False) -> Tensor:
    """:func:`generalized_task_arithmetic` with whole-tensor steps (``base_c``: the base in the compute dtype).

    The reference :func:`train.merging.kernels.gta_blocked` is tested against bitwise, and the path for
    norm-matching rescale (``"l1"``/``"l2"``/``"linf"``), whose norms are whole-tensor reductions."""
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
    "GTAOptions",
    "dare_linear",
    "dare_ties",
    "elect_sign_mask",
    "ema",
    "generalized_task_arithmetic",
    "gta_reference",
    "linear",
    "magnitude_mask",
    "magnitude_prune",
    "random_drop",
    "slerp",
    "task_arithmetic",
    "ties",
]
