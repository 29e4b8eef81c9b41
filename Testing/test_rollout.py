"""Attention rollout: closed forms on hand-built attention, and a real timm ViT checked
against attention recomputed independently from its weights."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import sharpened_small_vit

from IPMNRiskLib.rollout import attention_rollout, capture_attentions, class_token_maps, logits_and_rollout_maps


def rollout_map(model, x, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """(B, 2, 192, 192) tensor -> (B, 12, 12) raw rollout maps."""
    return logits_and_rollout_maps(model, x, head_fusion, discard_ratio)[1]


def as_layer(matrix, batch=1, heads=1):
    """(N, N) -> (B, H, N, N) with every batch item and head equal."""
    matrix = np.asarray(matrix, float)
    return np.broadcast_to(matrix, (batch, heads, *matrix.shape)).copy()


# --- closed forms ------------------------------------------------------------------------------------

def test_identity_attention_rolls_out_to_identity():
    rollout = attention_rollout([as_layer(np.eye(5))] * 4)
    np.testing.assert_allclose(rollout[0], np.eye(5))


def test_uniform_attention_over_three_layers_mixes_identity_and_uniform():
    # Â = (I + U) / 2 and U U = U, so Â^L = 2^-L I + (1 - 2^-L) U
    n = 6
    uniform = np.full((n, n), 1.0 / n)
    rollout = attention_rollout([as_layer(uniform)] * 3)
    np.testing.assert_allclose(rollout[0], np.eye(n) / 8 + (7 / 8) * uniform)


def test_two_layers_multiply_later_layer_on_the_left():
    a1 = np.array([[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [0.1, 0.0, 0.9]])
    a2 = np.array([[0.0, 1.0, 0.0], [0.3, 0.3, 0.4], [1.0, 0.0, 0.0]])
    hat1 = np.array([[0.75, 0.25, 0.0], [0.1, 0.6, 0.3], [0.05, 0.0, 0.95]])
    hat2 = np.array([[0.5, 0.5, 0.0], [0.15, 0.65, 0.2], [0.5, 0.0, 0.5]])
    rollout = attention_rollout([as_layer(a1), as_layer(a2)])
    np.testing.assert_allclose(rollout[0], hat2 @ hat1)
    assert not np.allclose(hat1 @ hat2, hat2 @ hat1)


def test_heads_are_averaged_by_default():
    head_a = np.array([[1.0, 0.0], [0.0, 1.0]])
    head_b = np.array([[0.0, 1.0], [1.0, 0.0]])
    layer = np.stack([head_a, head_b])[None]
    # mean = 0.5 everywhere; + I -> [[1.5, .5], [.5, 1.5]] / 2
    np.testing.assert_allclose(attention_rollout([layer])[0], [[0.75, 0.25], [0.25, 0.75]])


def test_max_fusion_renormalises_each_row_by_its_own_sum():
    head_a = np.array([[0.6, 0.4, 0.0], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    head_b = np.array([[0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    layer = np.stack([head_a, head_b])[None]
    fused_plus_identity = np.maximum(head_a, head_b) + np.eye(3)  # row sums 3.2, 2.7, 2.0
    expected = fused_plus_identity / fused_plus_identity.sum(axis=1, keepdims=True)
    rollout = attention_rollout([layer], head_fusion="max")[0]
    np.testing.assert_allclose(rollout, expected)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0)


def test_min_fusion_takes_the_smallest_head_weight():
    head_a = np.array([[0.6, 0.4], [0.1, 0.9]])
    head_b = np.array([[0.2, 0.8], [0.5, 0.5]])
    layer = np.stack([head_a, head_b])[None]
    fused_plus_identity = np.minimum(head_a, head_b) + np.eye(2)
    expected = fused_plus_identity / fused_plus_identity.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(attention_rollout([layer], head_fusion="min")[0], expected)


def test_discarding_zeroes_the_lowest_weights_but_never_the_class_token_column():
    attention = np.array([[0.01, 0.59, 0.40],
                          [0.02, 0.18, 0.80],
                          [0.03, 0.27, 0.70]])
    # the six weights outside column 0: .59 .40 .18 .80 .27 .70; discarding half removes .18 .27 .40
    kept = np.array([[0.01, 0.59, 0.0],
                     [0.02, 0.0, 0.80],
                     [0.03, 0.0, 0.70]]) + np.eye(3)
    expected = kept / kept.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(attention_rollout([as_layer(attention)], discard_ratio=0.5)[0], expected)


def test_each_batch_item_is_rolled_out_on_its_own():
    first, second = np.eye(3), np.full((3, 3), 1 / 3)
    layer = np.stack([as_layer(first)[0], as_layer(second)[0]])
    rollout = attention_rollout([layer, layer])
    np.testing.assert_allclose(rollout[0], attention_rollout([as_layer(first)] * 2)[0])
    np.testing.assert_allclose(rollout[1], attention_rollout([as_layer(second)] * 2)[0])


def test_unknown_head_fusion_is_refused():
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([as_layer(np.eye(2))], head_fusion="median")


def one_layer_rollout(fused):
    """Â = (A + I) with rows renormalised, for a single fused (N, N) layer."""
    with_identity = fused + np.eye(len(fused))
    return with_identity / with_identity.sum(axis=1, keepdims=True)


def test_half_precision_attention_is_rolled_out_in_double_precision():
    heads = np.array([[[0.1, 0.3, 0.6], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]],
                      [[0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [0.35, 0.25, 0.4]]], np.float16)
    exact = heads.astype(np.float64).mean(axis=0)
    rollout = attention_rollout([heads[None]])
    assert rollout.dtype == np.float64
    np.testing.assert_allclose(rollout[0], one_layer_rollout(exact), rtol=1e-12)


def test_attention_tensors_that_carry_gradients_are_accepted():
    import torch

    attention = np.array([[0.5, 0.5], [0.25, 0.75]])
    tensor = torch.tensor(attention[None, None], requires_grad=True)
    np.testing.assert_allclose(attention_rollout([tensor])[0], one_layer_rollout(attention), rtol=1e-6)


def test_discarding_a_sixth_of_six_weights_zeroes_exactly_the_lowest():
    attention = np.array([[0.01, 0.59, 0.40],
                          [0.02, 0.18, 0.80],
                          [0.03, 0.27, 0.70]])
    kept = attention.copy()
    kept[1, 1] = 0.0  # int(6 x 0.2) = 1 weight outside column 0: the lowest is .18
    np.testing.assert_allclose(attention_rollout([as_layer(attention)], discard_ratio=0.2)[0],
                               one_layer_rollout(kept))


def test_equal_weights_are_discarded_in_token_order():
    levels = np.random.default_rng(5).integers(1, 4, (5, 5)) / 10.0  # many ties among 20 weights
    # the 10 lowest of the 20 weights outside column 0, ties broken by (row, column)
    ranked = sorted(((levels[r, c], r, c) for r in range(5) for c in range(1, 5)))
    kept = levels.copy()
    for _, r, c in ranked[:10]:
        kept[r, c] = 0.0
    np.testing.assert_allclose(attention_rollout([as_layer(levels)], discard_ratio=0.5)[0], one_layer_rollout(kept))


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_a_discard_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([as_layer(np.eye(3))], discard_ratio=ratio)


@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 1, 3, 4), (1, 1, 4, 3)])
def test_attention_that_is_not_batch_heads_square_is_refused(shape):
    with pytest.raises(ValueError, match="expected"):
        attention_rollout([np.full(shape, 1.0 / 3)])


@pytest.mark.parametrize("model", [SimpleNamespace(),
                                   SimpleNamespace(blocks=[]),
                                   SimpleNamespace(blocks=[SimpleNamespace()]),
                                   SimpleNamespace(blocks=[SimpleNamespace(attn=SimpleNamespace())])])
def test_a_model_without_timm_attention_blocks_is_refused(model):
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        with capture_attentions(model):
            pass


def test_the_map_skips_every_prefix_token_after_the_class_token():
    # 2 prefix tokens (class + 1 register token) and a 2 x 2 patch grid: N = 6
    rollout = np.arange(2 * 6 * 6, dtype=float).reshape(2, 6, 6)
    model = SimpleNamespace(num_prefix_tokens=2, patch_embed=SimpleNamespace(grid_size=(2, 2)))
    maps = class_token_maps(model, rollout)
    np.testing.assert_array_equal(maps[0], [[2, 3], [4, 5]])
    np.testing.assert_array_equal(maps[1], [[38, 39], [40, 41]])


# --- a real timm ViT ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_vit():
    """Depth-2 ViT on 2 x 192 x 192 with sharpened (scaled) query/key weights, so attention is
    far from uniform and head fusions differ."""
    return sharpened_small_vit()


@pytest.fixture(scope="module")
def images():
    import torch

    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 2, 192, 192, generator=generator)


def attentions_from_weights(model, x):
    """Each layer's softmax(q k^T / sqrt(d)) recomputed from the block weights (no hooks)."""
    import torch

    attentions = []
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in model.blocks:
            attn = block.attn
            h = block.norm1(tokens)
            batch, n, _ = h.shape
            qkv = (h @ attn.qkv.weight.T + attn.qkv.bias).reshape(batch, n, 3, attn.num_heads, attn.head_dim)
            q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
            attentions.append(torch.softmax(q @ k.transpose(-2, -1) / attn.head_dim ** 0.5, dim=-1).numpy())
            tokens = block(tokens)
    return attentions


def product_formula_maps(attentions):
    """Class-token row of prod_l (0.5 mean_h A_l + 0.5 I), last layer on the left, as 12 x 12."""
    n = attentions[0].shape[-1]
    rollout = np.broadcast_to(np.eye(n), (attentions[0].shape[0], n, n))
    for attention in attentions:
        rollout = (0.5 * attention.mean(axis=1) + 0.5 * np.eye(n)) @ rollout
    return rollout[:, 0, 1:].reshape(-1, 12, 12)


@pytest.fixture(scope="module")
def expected_maps(small_vit, images):
    return product_formula_maps(attentions_from_weights(small_vit, images))


def set_fused(model, fused):
    for block in model.blocks:
        block.attn.fused_attn = fused


def test_rollout_of_an_unfused_vit_equals_the_product_formula(small_vit, images, expected_maps):
    set_fused(small_vit, False)
    try:
        maps = rollout_map(small_vit, images)
    finally:
        set_fused(small_vit, True)
    assert maps.shape == (2, 12, 12)
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-7)
    assert not np.allclose(maps[0], maps.mean())  # the sharpened model does not attend uniformly


def test_a_vit_built_with_fused_attention_still_gives_the_true_maps(small_vit, images, expected_maps):
    assert all(block.attn.fused_attn for block in small_vit.blocks)
    np.testing.assert_allclose(rollout_map(small_vit, images), expected_maps, rtol=1e-4, atol=1e-7)


def test_logits_and_maps_by_default_are_the_model_output_and_the_mean_fusion_rollout(small_vit, images,
                                                                                     expected_maps):
    import torch

    logits, maps = logits_and_rollout_maps(small_vit, images)
    with torch.no_grad():
        torch.testing.assert_close(logits, small_vit(images), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps, expected_maps, rtol=1e-4, atol=1e-7)


def test_capturing_attention_restores_fused_attention_and_removes_its_hooks(small_vit, images):
    with capture_attentions(small_vit) as attentions:
        assert not any(block.attn.fused_attn for block in small_vit.blocks)
        small_vit(images)
    assert len(attentions) == 2 and attentions[0].shape == (2, 3, 145, 145)
    assert all(block.attn.fused_attn for block in small_vit.blocks)
    assert all(not block.attn.attn_drop._forward_hooks for block in small_vit.blocks)


def test_capturing_leaves_the_model_output_unchanged(small_vit, images):
    import torch

    with torch.no_grad():
        plain = small_vit(images)
        with capture_attentions(small_vit):
            captured = small_vit(images)
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)


def test_max_and_min_head_fusion_give_other_maps_than_the_mean(small_vit, images, expected_maps):
    for fusion in ("max", "min"):
        maps = rollout_map(small_vit, images, head_fusion=fusion)
        assert np.abs(maps - expected_maps).max() > 1e-3 * expected_maps.max()


def test_discarding_weak_attention_changes_the_map(small_vit, images, expected_maps):
    maps = rollout_map(small_vit, images, discard_ratio=0.9)
    assert np.abs(maps - expected_maps).max() > 1e-3 * expected_maps.max()
