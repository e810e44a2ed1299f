"""Merge methods on small hand-made tensors with exact expected values, and mergekit config semantics."""

from __future__ import annotations

import math

import pytest
import torch

from train.merging import kernels as K
from train.merging import methods as M
from train.merging.config import MergeConfig, MergeConfigError, evaluate_setting, resolve_parameters, tensor_t


def T(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def assert_exact(actual: torch.Tensor, expected) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else torch.tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected.to(actual.dtype), atol=1e-6, rtol=0), f"{actual} != {expected}"


# -- linear / ema ------------------------------------------------------------------------------------------------


def test_linear_weighted_average_and_plain_sum():
    a, b = T(1, 2), T(3, 6)
    assert_exact(M.linear([a, b], [1, 3]), [2.5, 5.0])  # (1*1 + 3*3)/4, (2 + 18)/4
    assert_exact(M.linear([a, b], [1, 3], normalize=False), [10.0, 20.0])
    assert_exact(M.linear([a, b]), [2.0, 4.0])  # default: uniform mean


def test_linear_refuses_zero_weight_sum_and_shape_mismatch():
    with pytest.raises(ValueError, match="sum to zero"):
        M.linear([T(1), T(2)], [1, -1])
    with pytest.raises(ValueError, match="different shapes"):
        M.linear([T(1, 2), T(1, 2, 3)])


def test_ema_running_average():
    assert_exact(M.ema([T(0, 0), T(4, 8)], beta=0.75), [1.0, 2.0])
    # avg=0 -> 0.5*0 + 0.5*4 = 2 -> 0.5*2 + 0.5*8 = 5
    assert_exact(M.ema([T(0), T(4), T(8)], beta=0.5), [5.0])
    with pytest.raises(ValueError, match="beta"):
        M.ema([T(0), T(1)], beta=1.5)


def test_methods_do_not_modify_inputs():
    a, b = T(1, 2), T(3, 4)
    M.ema([a, b], 0.5)
    M.linear([a, b])
    assert torch.equal(a, T(1, 2)) and torch.equal(b, T(3, 4))


# -- task arithmetic ---------------------------------------------------------------------------------------------


def test_task_arithmetic_lambda_and_normalize():
    base = T(1, 1, 1)
    x1, x2 = T(2, 0, 1), T(1, 3, 1)  # deltas [1,-1,0] and [0,2,0]
    assert_exact(M.task_arithmetic(base, [x1, x2], [1.0, 0.5]), [2.0, 1.0, 1.0])
    assert_exact(M.task_arithmetic(base, [x1, x2], [1.0, 0.5], lambda_=2.0), [3.0, 1.0, 1.0])
    assert_exact(M.task_arithmetic(base, [x1, x2], [1.0, 0.5], normalize=True), [1 + 1 / 1.5, 1.0, 1.0])


# -- TIES --------------------------------------------------------------------------------------------------------

BASE4 = torch.zeros(4)
X1, X2, X3 = T(1, -2, 3, 0), T(-3, 1, 1.5, 0), T(1, 1.5, -1, 2)


def test_magnitude_prune_keeps_top_density():
    assert_exact(M.magnitude_prune(T(0.1, -3, 2, -0.5), 0.5), [0.0, -3.0, 2.0, 0.0])
    assert_exact(M.magnitude_prune(T(0.1, -3, 2, -0.5), 1.0), [0.1, -3.0, 2.0, -0.5])
    assert_exact(M.magnitude_prune(T(0.1, -3, 2, -0.5), 0.3), [0.0, -3.0, 0.0, 0.0])  # k = int(1.2) = 1


def test_ties_sign_election_and_disjoint_mean():
    # position 0: 1 - 3 + 1 = -1 -> "-" elected, only x2 agrees -> -3
    # position 1: -2 + 1 + 1.5 = 0.5 -> "+", x2 and x3 agree -> (1 + 1.5) / 2
    # position 2: 3 + 1.5 - 1 -> "+", x1 and x2 -> (3 + 1.5) / 2
    # position 3: only x3 is nonzero; zeros never count in the mean -> 2
    assert_exact(M.ties(BASE4, [X1, X2, X3], [1, 1, 1]), [-3.0, 1.25, 2.25, 2.0])
    assert_exact(M.ties(BASE4, [X1, X2, X3], [1, 1, 1], normalize=False), [-3.0, 2.5, 4.5, 2.0])


def test_ties_trimming_changes_the_elected_sign():
    # density 0.5 keeps 2 of 4: x1 -> [0,-2,3,0], x2 -> [-3,0,1.5,0], x3 -> [0,1.5,0,2]
    # position 1 is now -2 + 0 + 1.5 = -0.5 -> "-" elected -> -2 (was +1.25 untrimmed)
    assert_exact(M.ties(BASE4, [X1, X2, X3], [1, 1, 1], [0.5, 0.5, 0.5]), [-3.0, -2.0, 2.25, 2.0])


def test_ties_weighted_election_divides_by_agreeing_weights():
    # weighted deltas: x1 [1,-2,3,0], 2*x2 [-6,2,3,0], x3 [1,1.5,-1,2]
    out = M.ties(BASE4, [X1, X2, X3], [1, 2, 1])
    assert_exact(out, [-6 / 2, (2 + 1.5) / 3, (3 + 3) / 3, 2.0])


def test_sign_election_count_and_tie_goes_positive():
    # count: position 0 has signs +,-,+ -> "+" -> x1 and x3 -> (1 + 1) / 2
    assert_exact(M.ties(BASE4, [X1, X2, X3], [1, 1, 1], consensus="count")[0:1], [1.0])
    # equal and opposite deltas: the sum is 0, the elected sign is "+"
    assert_exact(M.ties(torch.zeros(1), [T(2), T(-2)], [1, 1]), [2.0])


def test_ties_with_base_offset_and_lambda():
    base = T(10, 10)
    out = M.ties(base, [T(12, 9), T(14, 11)], [1, 1], lambda_=0.5)
    # pos0 deltas 2, 4 -> mean 3 -> *0.5 -> 11.5 ; pos1 deltas -1, 1 -> sum 0 -> "+" -> 1 -> *0.5 -> 10.5
    assert_exact(out, [11.5, 10.5])


# -- DARE --------------------------------------------------------------------------------------------------------

# torch's CPU generator (mt19937) is stable across versions: these masks are what torch.rand(8) < 0.5 gives.
MASK_SEED0 = [1, 0, 1, 1, 1, 0, 1, 0]
MASK_SEED1 = [0, 1, 1, 0, 1, 0, 1, 0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dare_drop_and_rescale_with_fixed_seed():
    delta = torch.full((8,), 3.0)
    out = M.random_drop(delta, 0.5, gen(0))
    assert_exact(out, [6.0 * m for m in MASK_SEED0])  # kept entries are divided by density 0.5
    assert torch.equal(out, M.random_drop(delta, 0.5, gen(0)))  # same seed, same result
    assert_exact(M.random_drop(delta, 0.5, gen(1)), [6.0 * m for m in MASK_SEED1])
    assert_exact(M.random_drop(delta, 0.5, gen(0), rescale=False), [3.0 * m for m in MASK_SEED0])
    assert torch.equal(M.random_drop(delta, 1.0, gen(0)), delta)  # density 1 keeps everything


def test_dare_rescale_to_l1_norm():
    delta = T(1, 2, 3, 4, 5, 6, 7, 8)
    out = M.random_drop(delta, 0.5, gen(0), rescale="l1")
    kept = delta * torch.tensor(MASK_SEED0)
    assert_exact(out, kept * (delta.abs().sum() / kept.abs().sum()))
    assert math.isclose(float(out.abs().sum()), 36.0, rel_tol=1e-6)


def test_dare_linear_and_dare_ties_with_fixed_seeds():
    base = torch.ones(8)
    x1 = base + 1.0  # delta +1 everywhere
    x2 = base - 0.5  # delta -0.5 everywhere
    out = M.dare_linear(base, [x1, x2], [1.0, 1.0], [0.5, 0.5], [gen(0), gen(1)])
    expected = [1 + 2.0 * a - 1.0 * b for a, b in zip(MASK_SEED0, MASK_SEED1)]
    assert_exact(out, expected)
    out = M.dare_ties(base, [x1, x2], [1.0, 1.0], [0.5, 0.5], [gen(0), gen(1)])
    # after the drop, where both survive the sum 2 - 1 > 0 elects "+", so only x1's +2 is kept; normalize=false
    expected = [1 + (2.0 if a else (-1.0 if b else 0.0)) for a, b in zip(MASK_SEED0, MASK_SEED1)]
    assert_exact(out, expected)


# -- SLERP -------------------------------------------------------------------------------------------------------


def test_slerp_endpoints_and_midpoint():
    a, b = T(1, 0), T(0, 1)
    assert_exact(M.slerp(a, b, 0.0), [1.0, 0.0])
    assert_exact(M.slerp(a, b, 1.0), [0.0, 1.0])
    h = math.sqrt(0.5)
    assert_exact(M.slerp(a, b, 0.5), [h, h])  # on the unit circle, unlike lerp's [0.5, 0.5]
    # coefficients apply to the unnormalized tensors: sin(pi/4)/sin(pi/2) each
    assert_exact(M.slerp(T(1, 0), T(0, 3), 0.5), [h, 3 * h])
    # a third of the way along a 90 degree arc
    assert_exact(M.slerp(a, b, 1 / 3), [math.cos(math.pi / 6), math.sin(math.pi / 6)])


def test_slerp_falls_back_to_lerp_for_parallel_tensors():
    assert_exact(M.slerp(T(1, 2), T(2, 4), 0.5), [1.5, 3.0])
    assert_exact(M.slerp(T(1, 2), T(-1, -2), 0.25), [0.5, 1.0])  # anti-parallel, lerp too
    x = T(0.3, -1.7, 2.5)
    assert torch.equal(M.slerp(x, x.clone(), 0.37), x)


def test_slerp_matrix_is_treated_as_one_vector():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    h = math.sqrt(0.5)
    assert_exact(M.slerp(a, b, 0.5), torch.tensor([[h, 0.0], [0.0, h]]))


def test_identity_properties():
    x = torch.randn(5, 7, generator=gen(3))
    same = [x.clone(), x.clone()]
    assert torch.equal(M.linear(same, [1, 1]), x)
    assert torch.equal(M.ema(same, 0.5), x)
    assert torch.equal(M.task_arithmetic(x, same, [0.4, 0.6], lambda_=3.0), x)
    assert torch.equal(M.ties(x, same, [1, 1], [0.3, 0.3]), x)
    assert torch.equal(M.dare_ties(x, same, [1, 1], [0.3, 0.3], [gen(0), gen(1)]), x)
    assert torch.equal(M.dare_linear(x, same, [1, 1], [0.3, 0.3], [gen(0), gen(1)]), x)


# -- mergekit config semantics -----------------------------------------------------------------------------------


def test_gradient_and_filter_settings():
    assert evaluate_setting("x", 0.3, 0.9) == 0.3
    assert evaluate_setting("x", [0.0, 1.0], 0.5) == 0.5
    assert math.isclose(evaluate_setting("x", [0.0, 0.5, 1.0], 0.25), 0.25)
    assert evaluate_setting("x", [0.0, 0.5, 0.3, 0.7, 1.0], 1.0) == 1.0
    cond = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.9}, {"value": 0.5}]
    assert evaluate_setting("model.layers.1.self_attn.q_proj.weight", cond, 0.25) == 0.25
    assert evaluate_setting("model.layers.1.mlp.up_proj.weight", cond, 0.25) == 0.9
    assert evaluate_setting("model.norm.weight", cond, 1.0) == 0.5


def test_tensor_position_follows_mergekit():
    assert tensor_t("model.layers.3.mlp.up_proj.weight", 5) == 0.75
    assert tensor_t("model.layers.0.input_layernorm.weight", 5) == 0.0
    assert tensor_t("model.embed_tokens.weight", 5) == 0.0
    assert tensor_t("model.norm.weight", 5) == 1.0
    assert tensor_t("lm_head.weight", 5) == 1.0


def test_mergekit_defaults():
    def cfg(method, **params):
        return MergeConfig.from_dict(
            {
                "merge_method": method,
                "base_model": "base",
                "models": [{"model": "base"}, {"model": "a", "parameters": {"weight": 0.5, **params}}],
            }
        )

    glob, per = resolve_parameters(cfg("ties"), "w", 0.0, cfg("ties").non_base_models())
    assert glob == {"int8_mask": False, "lambda": 1.0, "rescale": False, "normalize": True}
    assert per == [{"weight": 0.5, "density": 1.0}]
    glob, _ = resolve_parameters(cfg("dare_ties"), "w", 0.0, cfg("dare_ties").non_base_models())
    assert glob["normalize"] is False and glob["rescale"] is True
    glob, _ = resolve_parameters(cfg("task_arithmetic"), "w", 0.0, cfg("task_arithmetic").non_base_models())
    assert glob == {"int8_mask": False, "lambda": 1.0, "rescale": False, "normalize": False}
    lin = MergeConfig.from_dict({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}]})
    assert resolve_parameters(lin, "w", 0.0, lin.models)[0] == {"normalize": True}


def test_parameter_precedence_and_required_errors():
    c = MergeConfig.from_dict(
        {
            "merge_method": "ties",
            "base_model": "base",
            "models": [{"model": "a", "parameters": {"weight": 0.7}}, {"model": "b"}],
            "parameters": {"weight": 0.2, "density": [0.2, 0.6], "lambda": 0.9},
        }
    )
    glob, per = resolve_parameters(c, "model.layers.1.x", 1.0, c.non_base_models())
    assert glob["lambda"] == 0.9
    assert per == [{"weight": 0.7, "density": 0.6}, {"weight": 0.2, "density": 0.6}]
    no_weight = MergeConfig.from_dict({"merge_method": "ties", "base_model": "base", "models": [{"model": "a"}]})
    with pytest.raises(MergeConfigError, match="missing required parameter 'weight' for model 'a'"):
        resolve_parameters(no_weight, "w", 0.0, no_weight.non_base_models())
    slerp = MergeConfig.from_dict({"merge_method": "slerp", "base_model": "a", "models": [{"model": "b"}]})
    with pytest.raises(MergeConfigError, match="missing required parameter 't'"):
        resolve_parameters(slerp, "w", 0.0, slerp.non_base_models())


@pytest.mark.parametrize(
    "data, match",
    [
        ({"merge_method": "passthrough", "models": [{"model": "a"}]}, "unknown merge_method"),
        ({"merge_method": "ties", "models": [{"model": "a"}]}, "needs a base_model"),
        ({"merge_method": "slerp", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}]}, "exactly two"),
        ({"merge_method": "linear", "models": [{"model": "a"}], "tokenizer_source": "union"}, "union"),
        ({"merge_method": "linear", "models": [{"model": "a"}], "modules": {"x": {}}}, "modules"),
        ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"densty": 1}}]}, "unknown parameter"),
        ({"merge_method": "linear", "models": [{"model": "a"}], "dtype": "float8"}, "unknown dtype"),
        ({"merge_method": "linear", "models": [{"model": "a"}], "vocab_mismatch": "pad"}, "vocab_mismatch"),
        ({"merge_method": "linear", "models": [{"model": "a"}], "colour": 1}, "unknown top-level"),
        ({"merge_method": "linear", "slices": [{"sources": []}, {"sources": []}]}, "single 'slices'"),
    ],
)
def test_invalid_configs_are_refused(data, match):
    with pytest.raises(MergeConfigError, match=match):
        MergeConfig.from_dict(data)


def test_whole_model_slices_become_models():
    c = MergeConfig.from_dict(
        {
            "slices": [
                {
                    "sources": [
                        {"model": "a", "layer_range": [0, 2]},
                        {"model": "b", "layer_range": [0, 2]},
                    ]
                }
            ],
            "merge_method": "slerp",
            "base_model": "a",
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]},
            "dtype": "bfloat16",
        }
    )
    assert [m.model for m in c.models] == ["a", "b"] and c.models[1].layer_range == (0, 2)
    glob, _ = resolve_parameters(c, "model.layers.1.self_attn.q_proj.weight", 1.0, c.non_base_models())
    assert glob["t"] == 1.0


def test_ties_rescale_after_trim():
    # mergekit allows rescale for TIES too (default false): the trimmed delta is divided by the density
    out = M.generalized_task_arithmetic(
        torch.zeros(4), [T(0.1, -3, 2, -0.5)], [1.0], [0.5], sparsify="magnitude", rescale=True
    )
    assert_exact(out, [0.0, -6.0, 4.0, 0.0])


def test_magnitude_mask_keeps_exactly_k_with_ties():
    # four entries tie at the threshold; k = 3 keeps the larger one and the first two tied ones (index order)
    mask = M.magnitude_mask(T(1, 1, -5, 1, 1), 0.6)
    assert mask.tolist() == [True, True, True, False, False]
    assert int(M.magnitude_mask(torch.zeros(10), 0.5).sum()) == 5


def test_release_drops_list_entries_and_never_modifies_inputs():
    g = gen(5)
    base, a, b = (torch.randn(6, 4, generator=g) for _ in range(3))
    a0, b0, base0 = a.clone(), b.clone(), base.clone()
    kw = dict(sparsify="magnitude", consensus="sum", normalize=True, lambda_=0.7)
    expected = M.generalized_task_arithmetic(base, [a, b], [1.0, 0.5], [0.5, 0.8], **kw)
    given = [a, b]
    got = M.generalized_task_arithmetic(base, given, [1.0, 0.5], [0.5, 0.8], release=True, **kw)
    assert torch.equal(got, expected) and given == [None, None]
    given = [a, b]
    assert torch.equal(M.linear(given, [0.2, 0.8], release=True), M.linear([a, b], [0.2, 0.8])) and given == [None] * 2
    given = [a, b]
    assert torch.equal(M.ema(given, 0.3, release=True), M.ema([a, b], 0.3)) and given == [None] * 2
    assert torch.equal(a, a0) and torch.equal(b, b0) and torch.equal(base, base0)
    # the same tensor passed twice is fine
    twice = M.generalized_task_arithmetic(base, [a, a], [1.0, 1.0], [0.5, 0.5], release=True, **kw)
    assert torch.equal(twice, M.generalized_task_arithmetic(base, [a0, a0.clone()], [1.0, 1.0], [0.5, 0.5], **kw))


def test_non_contiguous_inputs():
    g = gen(9)
    base, a, b = (torch.randn(5, 3, generator=g) for _ in range(3))
    expected = M.ties(base, [a, b], [1.0, 0.5], [0.6, 0.6])
    got = M.ties(base.T.contiguous().T, [a.T.contiguous().T, b.T.contiguous().T], [1.0, 0.5], [0.6, 0.6])
    assert torch.equal(got, expected)
    assert torch.equal(M.ties(base.T, [a.T, b.T], [1.0, 0.5], [0.6, 0.6]), expected.T)
    assert torch.equal(M.linear([a.T, b.T], [0.3, 0.7]), M.linear([a, b], [0.3, 0.7]).T)


def test_dare_mask_is_one_draw_over_the_whole_tensor():
    # the drop mask is drawn in 1M-entry chunks; it must equal a single torch.rand over the tensor
    n = (1 << 20) + 12345
    delta = torch.ones(n)
    expected = (torch.rand(n, generator=gen(4)) < 0.3).float() / 0.3
    assert torch.equal(M.random_drop(delta, 0.3, gen(4)), expected)


# -- blocked kernel ----------------------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that -0.0 vs 0.0 and NaN payloads count as differences."""
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("quantized", [False, True])
def test_blocked_kernel_is_bitwise_the_whole_tensor_reference(dtype, quantized, monkeypatch):
    # small blocks so that every case spans many blocks, with a partial last one
    monkeypatch.setattr(K, "_BLOCK", 1000)
    g = gen(21)
    shape = (97, 53)
    base = torch.randn(shape, generator=g)
    xs = [base + torch.randn(shape, generator=g) * 0.01 for _ in range(3)]
    if quantized:  # many exact ties at the threshold, exact zero deltas, one model equal to another in places
        base, xs = (base * 8).round() / 8, [(x * 8).round() / 8 for x in xs]
        xs[1].view(-1)[::3] = xs[0].view(-1)[::3]
    base, xs = base.to(dtype), [x.to(dtype) for x in xs]
    cases = [
        dict(sparsify=None, consensus=None, normalize=True),
        dict(sparsify="magnitude", consensus="sum", normalize=True),
        dict(sparsify="magnitude", consensus="count", normalize=True, lambda_=0.7, rescale=True),
        dict(sparsify="magnitude", consensus=None, normalize=False),
        dict(sparsify="random", consensus="sum", normalize=False, rescale=True),
        dict(sparsify="random", consensus="sum", normalize=True, lambda_=1.3),
        dict(sparsify="random", consensus=None, normalize=False, rescale=True),
    ]
    for kw in cases:
        for densities in ([0.5, 0.3, 0.9], [1.0, 0.0, 0.37], [0.0002, 0.9999, 0.5]):
            for weights in ([1.0, 0.5, 0.3], [0.3, -0.7, 1.0]):
                for n in (1, 2, 3):
                    args = (base, xs[:n], weights[:n], densities[:n])
                    full = kw | {"lambda_": kw.get("lambda_", 1.0), "rescale": kw.get("rescale", False)}
                    opts = K.GTAOptions(weights[:n], densities[:n], generators=[gen(5 + i) for i in range(n)], **full)
                    ref = M.gta_reference(base.to(M._compute_dtype([base, *xs])), list(xs[:n]), opts, False)
                    got = M.generalized_task_arithmetic(*args, generators=[gen(5 + i) for i in range(n)], **kw)
                    assert got.dtype == ref.dtype and got.shape == ref.shape
                    assert torch.equal(_bits(got), _bits(ref)), (kw, densities[:n], weights[:n])


def test_magnitude_mask_when_the_sample_misses_the_threshold(monkeypatch):
    # the strided sample only sees the small entries (or only the large ones), so the bracket must be widened
    monkeypatch.setattr(K, "_BLOCK", 4096)
    n = K._SAMPLE * 4
    for small_sampled in (True, False):
        v = torch.arange(n, dtype=torch.float32) % 977 + 1.0  # many ties
        sampled = torch.arange(n) % 4 == 0
        v[sampled if small_sampled else ~sampled] *= 1e-3
        for density in (0.1, 0.5, 0.8):
            k = int(density * n)
            mask = M.magnitude_mask(-v, density)
            assert int(mask.sum()) == k
            threshold = float(v.sort(descending=True).values[k - 1])
            assert bool((v[mask] >= threshold).all()) and bool((v[~mask] <= threshold).all())
            tied = torch.nonzero(v == threshold).squeeze(1)
            kept_tied = mask[tied]
            assert kept_tied.tolist() == sorted(kept_tied.tolist(), reverse=True)  # the first tied ones are kept


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"weight": "heavy"}, r"models\[0\].parameters.weight"),
        ({"weight": [0.1, "x"]}, r"models\[0\].parameters.weight\[1\]"),
        ({"weight": [{"filter": "mlp", "value": "a"}]}, r"models\[0\].parameters.weight\[0\].value"),
    ],
)
def test_a_parameter_of_the_wrong_type_is_named_when_the_config_is_read(params, where):
    from train.merging.config import MergeConfig, MergeConfigError

    models = [{"model": "a", "parameters": params}, {"model": "b", "parameters": {"weight": 1}}]
    with pytest.raises(MergeConfigError, match=where + ": expected a number"):
        MergeConfig.from_dict({"merge_method": "linear", "models": models})
    ok = [{"model": "a"}, {"model": "b", "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1}]}}]
    MergeConfig.from_dict(
        {"merge_method": "ties", "base_model": "a", "parameters": {"density": [0.2, 0.8]}, "models": ok}
    )
    with pytest.raises(MergeConfigError, match="parameters.normalize: expected true or false"):
        MergeConfig.from_dict(
            {"merge_method": "ties", "base_model": "a", "parameters": {"normalize": 1}, "models": ok}
        )
