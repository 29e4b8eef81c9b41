"""Gradient-weighted attention rollout (Chefer et al. 2021) against the formula written out with
torch autograd on a tiny ViT, and the faithfulness measures of evaluate_explanations."""

import numpy as np
import pytest
from conftest import sharpened_small_vit

from IPMNRiskLib.explanations import gradient_rollout, logits_and_gradient_rollout_maps
from IPMNRiskLib.grids import DIHEDRAL_VIEWS, transform_tiles, undo_transform_tiles
from IPMNRiskLib.tta import gradient_rollout_map

import evaluate_explanations as ev


@pytest.fixture(scope="module")
def tiny_vit():
    """Depth-2 ViT on 2 x 192 x 192 with sharpened query/key weights (attention far from uniform)."""
    return sharpened_small_vit()


@pytest.fixture(scope="module")
def image():
    import torch

    return torch.rand(1, 2, 192, 192, generator=torch.Generator().manual_seed(1))


def chefer_by_autograd(model, x, target_class):
    """The formula from the paper, with the ViT's forward written out from its weights: each
    block's softmax(q k^T / sqrt(d)) is a tensor of the graph, its gradient comes from
    torch.autograd.grad of the target logit; Ā = mean_h relu(grad * A); R = R + Ā R."""
    import torch

    tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    attentions = []
    for block in model.blocks:
        attn = block.attn
        h = block.norm1(tokens)
        batch, n, channels = h.shape
        qkv = (h @ attn.qkv.weight.T + attn.qkv.bias).reshape(batch, n, 3, attn.num_heads, attn.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        probabilities = torch.softmax(q @ k.transpose(-2, -1) / attn.head_dim ** 0.5, dim=-1)
        attentions.append(probabilities)
        mixed = (probabilities @ v).transpose(1, 2).reshape(batch, n, channels)
        tokens = tokens + attn.proj(mixed)
        tokens = tokens + block.mlp(block.norm2(tokens))
    logits = model.forward_head(model.norm(tokens))
    gradients = torch.autograd.grad(logits[0, target_class], attentions)
    relevance = torch.eye(attentions[0].shape[-1], dtype=torch.float64)
    for a, g in zip(attentions, gradients):
        a_bar = (g.double() * a.double()).clamp(min=0).mean(dim=1)[0]
        relevance = relevance + a_bar @ relevance
    return relevance[0, 1:].reshape(12, 12).detach().numpy(), logits.detach().numpy()


# --- the formula ---------------------------------------------------------------------------------

@pytest.mark.parametrize("target_class", [0, 2])
def test_the_map_equals_chefer_s_formula_computed_with_autograd(tiny_vit, image, target_class):
    expected, expected_logits = chefer_by_autograd(tiny_vit, image, target_class)
    logits, maps = logits_and_gradient_rollout_maps(tiny_vit, image, target_class)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-9)
    assert np.ptp(expected) > 0  # a map with structure, not the identity's zero row


def test_without_a_target_each_image_explains_its_most_probable_class(tiny_vit, image):
    import torch

    logits, maps = logits_and_gradient_rollout_maps(tiny_vit, image)
    expected, _ = chefer_by_autograd(tiny_vit, image, int(np.argmax(logits[0])))
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-9)
    with torch.no_grad():
        np.testing.assert_allclose(logits, tiny_vit(image).numpy(), rtol=1e-4, atol=1e-5)


def test_the_class_asked_about_changes_the_map(tiny_vit, image):
    maps = [logits_and_gradient_rollout_maps(tiny_vit, image, c)[1][0] for c in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(maps[a] - maps[b]).max() > 1e-3 * max(np.abs(maps[a]).max(), 1e-12)


def test_the_positive_part_is_taken_of_the_product_of_gradient_and_attention():
    """Signed entries pin the order: relu(g * a), not relu(g) * relu(a) nor g * a. (On real
    attention, which is never negative, relu(g) * a gives the same numbers.)"""
    attention = np.array([[[[-1.0, 0.5], [0.5, 0.5]]]])
    gradient = np.array([[[[-2.0, -1.0], [1.0, 1.0]]]])
    relevance = gradient_rollout([attention], [gradient])
    # relu(g * a) = [[2, 0], [0.5, 0.5]]; R = I + that
    np.testing.assert_allclose(relevance[0], [[3.0, 0.0], [0.5, 1.5]])


def test_heads_are_averaged_after_the_relu():
    attention = np.stack([np.full((2, 2), 0.5), np.full((2, 2), 0.5)])[None]
    gradient = np.stack([np.array([[2.0, 4.0], [0.0, 0.0]]), np.array([[-2.0, 0.0], [0.0, 0.0]])])[None]
    relevance = gradient_rollout([attention], [gradient])
    # head 1: [[1, 2], [0, 0]]; head 2: relu([[-1, 0], ...]) = 0; mean: [[0.5, 1], [0, 0]]
    np.testing.assert_allclose(relevance[0], [[1.5, 1.0], [0.0, 1.0]])


def test_layers_accumulate_from_the_first_block_as_r_plus_a_bar_r():
    first = np.array([[[[0.0, 1.0], [0.0, 0.0]]]])
    second = np.array([[[[0.0, 0.0], [1.0, 0.0]]]])
    ones = np.ones_like(first)
    relevance = gradient_rollout([first, second], [ones, ones])
    r1 = np.eye(2) + first[0, 0]
    np.testing.assert_allclose(relevance[0], r1 + second[0, 0] @ r1)


def test_a_gradient_missing_for_a_layer_is_refused():
    with pytest.raises(ValueError, match="one gradient per attention layer"):
        gradient_rollout([np.ones((1, 1, 2, 2))] * 2, [np.ones((1, 1, 2, 2))])


def test_a_target_class_the_model_does_not_have_is_refused(tiny_vit, image):
    with pytest.raises(ValueError, match="target_class"):
        logits_and_gradient_rollout_maps(tiny_vit, image, 3)


def test_the_vit_keeps_fused_attention_and_no_hooks_afterwards(tiny_vit, image):
    logits_and_gradient_rollout_maps(tiny_vit, image, 0)
    assert all(block.attn.fused_attn for block in tiny_vit.blocks)
    assert all(not block.attn.attn_drop._forward_hooks for block in tiny_vit.blocks)


# --- test-time augmentation ------------------------------------------------------------------------

def test_with_tta_every_view_explains_the_same_class_and_is_turned_back_before_averaging(tiny_vit, image):
    x = image[0].numpy()
    views = [transform_tiles(x, flip, turns) for flip, turns in DIHEDRAL_VIEWS]
    per_view = [logits_and_gradient_rollout_maps(tiny_vit, v[None], 1)[1][0] for v in views]
    expected = np.mean([undo_transform_tiles(m, flip, turns) for m, (flip, turns) in zip(per_view, DIHEDRAL_VIEWS)],
                       axis=0)
    np.testing.assert_allclose(gradient_rollout_map(tiny_vit, x, 1, tta=True), expected, rtol=1e-5, atol=1e-12)


def test_the_tta_map_of_a_flipped_input_is_the_flipped_map(tiny_vit, image):
    x = image[0].numpy()
    flipped = transform_tiles(x, True, 1)
    np.testing.assert_allclose(gradient_rollout_map(tiny_vit, flipped, 2),
                               transform_tiles(gradient_rollout_map(tiny_vit, x, 2), True, 1), rtol=1e-4, atol=1e-9)


def test_without_tta_the_map_is_the_original_view_s(tiny_vit, image):
    np.testing.assert_allclose(gradient_rollout_map(tiny_vit, image[0].numpy(), 0, tta=False),
                               logits_and_gradient_rollout_maps(tiny_vit, image, 0)[1][0])


# --- measuring explanations ------------------------------------------------------------------------

def test_the_auc_of_a_straight_line_from_one_to_zero_is_one_half():
    fractions = np.linspace(0, 1, 7)
    assert ev.curve_auc(fractions, 1 - fractions) == pytest.approx(0.5)


def test_the_auc_follows_uneven_steps_by_the_trapezoid():
    # 0..0.5 at 1, then down to 0 at 1: 0.5 + 0.25
    assert ev.curve_auc([0.0, 0.5, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(0.75)


def test_the_pointing_game_hits_when_the_peak_is_inside_the_mask():
    mask = np.zeros((12, 12), bool)
    mask[3:5, 6:8] = True
    relevance = np.zeros((12, 12))
    relevance[4, 7] = 1.0
    assert ev.pointing_game(relevance, mask) == 1.0
    relevance[0, 0] = 2.0
    assert ev.pointing_game(relevance, mask) == 0.0


def test_the_mass_inside_is_one_when_the_map_is_the_mask():
    mask = np.zeros((12, 12), bool)
    mask[2:6, 2:9] = True
    assert ev.mass_inside(mask.astype(float), mask) == pytest.approx(1.0)
    assert ev.mass_inside(np.ones((12, 12)), mask) == pytest.approx(mask.mean())


def test_an_empty_mask_gives_no_value_rather_than_zero():
    empty = np.zeros((12, 12), bool)
    assert np.isnan(ev.mass_inside(np.ones((12, 12)), empty))
    assert np.isnan(ev.pointing_game(np.ones((12, 12)), empty))


def test_deletion_removes_the_most_relevant_patches_first_to_the_channel_mean():
    x = np.random.default_rng(0).random((2, 192, 192)).astype(np.float32)
    relevance = np.zeros((12, 12))
    relevance[5, 7] = 1.0
    fractions, inputs = ev.perturbed_inputs(x, ev.relevance_order(relevance), 4, "deletion", "mean")
    assert fractions[0] == 0 and fractions[-1] == 1 and len(fractions) == 37
    np.testing.assert_array_equal(inputs[0], x)
    mean = x.mean(axis=(1, 2))
    np.testing.assert_allclose(inputs[1][:, 80:96, 112:128], np.broadcast_to(mean[:, None, None], (2, 16, 16)))
    np.testing.assert_allclose(inputs[-1], np.broadcast_to(mean[:, None, None], x.shape))


def test_insertion_starts_from_nothing_and_reveals_the_input():
    x = np.random.default_rng(0).random((2, 192, 192)).astype(np.float32)
    _, inputs = ev.perturbed_inputs(x, ev.relevance_order(np.ones((12, 12))), 144, "insertion", "zero")
    assert len(inputs) == 2
    assert not inputs[0].any()
    np.testing.assert_array_equal(inputs[1], x)


def test_a_mask_reaches_the_patch_grid_through_the_input_s_crop_and_tiling(small_mr_phantom, random_vit_card):
    """The pancreas mask given to the model as its T2 (0/1 survives the min-max normalisation)
    must land on the same patches as the mask brought onto the grid."""
    from PancreasAILib.volume import Volume
    from IPMNRiskLib.grids import RegionBox
    from IPMNRiskLib.inference import model_input

    p = small_mr_phantom
    t1, region = Volume(p.t1, p.ijk_to_ras), RegionBox(*p.pancreas_box_ras)
    prepared = model_input(t1, Volume(p.t2, p.ijk_to_ras), region, random_vit_card)
    as_t2 = model_input(t1, Volume(p.pancreas.astype(np.float32), p.ijk_to_ras), region, random_vit_card)
    grid_mask = ev.mask_patch_grid(Volume(p.pancreas, p.ijk_to_ras), prepared.plan, prepared.window)
    assert grid_mask.any() and (~grid_mask).any()
    assert not np.array_equal(grid_mask, grid_mask.T)  # a transposed grid would be told apart
    np.testing.assert_array_equal(grid_mask, ev.patch_fractions(as_t2.x[1]) >= 0.5)


class PatchDetector:
    """A toy 'model' whose class-1 logit is 8 x (the mean of channel 1 over patch (2, 3) + over
    patch (7, 9)) - 4: a planted answer to which patches matter."""

    def __init__(self):
        import torch

        self.parameter = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.parameter])

    def __call__(self, batch):
        import torch

        evidence = (batch[:, 1, 32:48, 48:64].mean(dim=(1, 2)) + batch[:, 1, 112:128, 144:160].mean(dim=(1, 2)))
        return torch.stack([torch.zeros_like(evidence), 8 * evidence - 4, torch.zeros_like(evidence)], dim=1)


def test_deleting_the_planted_patches_first_lowers_the_probability_more_than_a_random_order():
    x = np.zeros((2, 192, 192), np.float32)
    x[1, 32:48, 48:64] = x[1, 112:128, 144:160] = 1.0
    true_map = np.zeros((12, 12))
    true_map[2, 3] = true_map[7, 9] = 1.0
    model = PatchDetector()
    faithful = ev.perturbation_auc(model, x, true_map, 1, "deletion", step=2, baseline="zero")
    arbitrary = np.mean([ev.perturbation_auc(model, x, np.random.default_rng(seed).random((12, 12)), 1, "deletion",
                                             step=2, baseline="zero") for seed in range(5)])
    assert faithful < 0.05 and arbitrary > faithful + 0.3
    assert ev.perturbation_auc(model, x, true_map, 1, "insertion", step=2, baseline="zero") > 0.9


def test_the_script_writes_a_row_per_case_and_method_and_a_table(tmp_path, random_vit_card, capsys):
    from PancreasAIPhantoms.mr import make_mr_phantom

    cases = [(f"p{c}", 10 + c, make_mr_phantom(seed=10 + c, risk_class=c, shape=(12, 96, 96),
                                                spacing=(2.4, 2.4, 4.0))) for c in (0, 2)]
    assert ev.main(["-o", str(tmp_path), "--model", str(random_vit_card.weights_path), "--no-tta", "--step", "48"],
                   cases) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / ev.CSV_FILE, encoding="utf-8")))
    assert [(r["case"], r["method"]) for r in rows] == [(c, m) for c in ("p0", "p2") for m in ev.METHODS]
    assert rows[0]["lesion_mass"] == ""  # a normal case has no lesion
    table = (tmp_path / ev.TABLE_FILE).read_text(encoding="utf-8")
    assert "| gradient-rollout |" in table and "run time" in table
    assert table in capsys.readouterr().out


def test_a_model_that_cannot_be_loaded_exits_2_with_a_sentence_and_writes_nothing(tmp_path, capsys):
    assert ev.main(["--output", str(tmp_path / "out"), "--model", str(tmp_path / "missing.safetensors"),
                    "--phantoms", "1"]) == 2
    assert "error: No model file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
