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

from collections.abc import Sequence

import torch

Tensor = torch.Tensor

# mergekit's threshold for "nearly parallel": above it slerp is numerically unstable and equals lerp anyway.
SLERP_DOT_THRESHOLD = 0.9995


def _compute_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_same_shape(tensors: Sequence[Tensor]) -> None:
    if not tensors:
        raise ValueError("no tensors to merge")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"tensors to merge have different shapes: {sorted(shapes)}")


def _weight_view(weights: Sequence[float], like: Tensor) -> Tensor:
    """Weights as a tensor broadcastable against a stack of tensors shaped like ``like``."""
    w = torch.tensor(list(weights), dtype=like.dtype)
    return w.view(-1, *([1] * like.dim()))


def linear(tensors: Sequence[Tensor], weights: Sequence[float] | None = None, normalize: bool = True) -> Tensor:
    """Weighted average ``sum(w_i x_i) / sum(w_i)`` (or the plain weighted sum when ``normalize`` is false).

    ``weights`` defaults to all ones, so the default is the uniform mean.
    """
    _check_same_shape(tensors)
    weights = [1.0] * len(tensors) if weights is None else list(weights)
    if len(weights) != len(tensors):
        raise ValueError(f"{len(weights)} weights for {len(tensors)} tensors")
    dtype = _compute_dtype(tensors)
    out = torch.zeros_like(tensors[0], dtype=dtype)
    for w, t in zip(weights, tensors):
        out.add_(t.to(dtype), alpha=float(w))
    if normalize:
        total = float(sum(weights))
        if abs(total) < 1e-8:
            raise ValueError(f"linear merge with normalize=true needs weights that do not sum to zero, got {weights}")
        out.div_(total)
    return out


def ema(tensors: Sequence[Tensor], beta: float = 0.5) -> Tensor:
    """Exponential moving average over ``tensors`` in order: ``avg = t[0]``, then ``avg = beta*avg + (1-beta)*t[i]``.

    With ``tensors = [previous_average, new_checkpoint]`` this is one update of a running merged model, the form the
    distillation loop uses after each iteration. ``beta`` is the weight kept by the running average.
    """
    _check_same_shape(tensors)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ema beta must be in [0, 1], got {beta}")
    dtype = _compute_dtype(tensors)
    avg = tensors[0].to(dtype, copy=True)
    for t in tensors[1:]:
        avg.mul_(beta).add_(t.to(dtype), alpha=1.0 - beta)
    return avg


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude and zero the rest (TIES "trim")."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return torch.zeros_like(delta)
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.view_as(delta)


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
    if density <= 0.0:
        return torch.zeros_like(delta)
    mask = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return _rescale(delta, delta * mask, density, rescale)


def _rescale(original: Tensor, kept: Tensor, density: float, rescale: bool | str) -> Tensor:
    if density >= 1.0 or rescale is False or rescale is None:
        return kept
    if rescale is True:
        return kept / density
    return _match_norm(original, kept, str(rescale))


def _match_norm(original: Tensor, masked: Tensor, norm: str, eps: float = 1e-7) -> Tensor:
    if norm == "l1":
        before, after = original.abs().sum(), masked.abs().sum()
    elif norm == "l2":
        before, after = original.norm(), masked.norm()
    elif norm == "linf":
        before, after = original.abs().max(), masked.abs().max()
    else:
        raise ValueError(f"unknown rescale norm {norm!r}; expected true, false, 'l1', 'l2' or 'linf'")
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


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
) -> Tensor:
    """``base + lambda * combine(sparsify(x_i - base) * w_i)``: the engine behind task arithmetic, TIES and DARE.

    ``sparsify``: None, ``"magnitude"`` (TIES trim) or ``"random"`` (DARE drop, one generator per model).
    ``consensus``: None or ``"sum"``/``"count"`` (TIES sign election, then the disjoint mean).
    ``normalize``: divide the combined delta by the sum of the weights that contributed at each position.
    ``rescale``: after sparsifying, divide by the density (True) or match the ``"l1"``/``"l2"``/``"linf"`` norm of
    the unsparsified delta; mergekit's default is true for DARE and false for TIES.
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
    deltas = []
    for i, x in enumerate(tensors):
        d = x.to(dtype) - base_c
        if sparsify == "magnitude":
            d = _rescale(d, magnitude_prune(d, densities[i]), densities[i], rescale)
        elif sparsify == "random":
            gen = generators[i] if generators is not None else None
            d = random_drop(d, densities[i], gen, rescale)
        elif sparsify is not None:
            raise ValueError(f"unknown sparsification {sparsify!r}; expected None, 'magnitude' or 'random'")
        deltas.append(d)
    stacked = torch.stack(deltas)
    del deltas
    w = _weight_view(weights, base_c)
    weighted = stacked * w
    del stacked
    if consensus is not None:
        mask = elect_sign_mask(weighted, consensus)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1.0
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1.0
    if normalize:
        mixed = mixed / divisor
    if lambda_ != 1.0:
        mixed = mixed * lambda_
    return base_c + mixed


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


def slerp(a: Tensor, b: Tensor, t: float, dot_threshold: float = SLERP_DOT_THRESHOLD, eps: float = 1e-8) -> Tensor:
    """Spherical linear interpolation from ``a`` (``t=0``) to ``b`` (``t=1``), treating each tensor as one vector.

    The angle comes from the normalized tensors; the interpolation coefficients are applied to the unnormalized ones
    (mergekit's formulation), so norms are interpolated too. Nearly parallel or anti-parallel tensors
    (``|cos| > dot_threshold``) fall back to ``(1-t) a + t b``.
    """
    _check_same_shape([a, b])
    dtype = _compute_dtype([a, b])
    a_c, b_c = a.to(dtype), b.to(dtype)
    a_norm, b_norm = a_c.norm(), b_c.norm()
    a_dir = a_c / a_norm if a_norm > eps else a_c
    b_dir = b_c / b_norm if b_norm > eps else b_c
    dot = float((a_dir * b_dir).sum())
    if abs(dot) > dot_threshold:
        return torch.lerp(a_c, b_c, float(t))
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64))
    sin_theta = torch.sin(theta)
    s0 = float(torch.sin((1.0 - t) * theta) / sin_theta)
    s1 = float(torch.sin(t * theta) / sin_theta)
    return s0 * a_c + s1 * b_c


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
