"""Test-time augmentation: the training flips/rotations, averaged probabilities with their
spread, and rollout maps taken back to the original orientation before averaging."""

import numpy as np
import pytest

from IPMNRiskLib import rollout as rollout_module
from IPMNRiskLib.grids import DIHEDRAL_VIEWS, transform_tiles, undo_transform_tiles
from IPMNRiskLib.tta import module_engine, predict


def predict_with_tta(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2, 192, 192) -> (mean probabilities (3,), spread (3,) std over the 8 views)."""
    prediction = predict(model, x, rollout=False)
    return prediction.probabilities, prediction.spread


def make_module(forward):
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return forward(x)

    return Wrapper()


def channel_means(x):
    """Logits that ignore orientation: the means of the two channels and their difference."""
    import torch

    means = x.mean(dim=(2, 3))
    return torch.stack([means[:, 0], means[:, 1], means[:, 0] - means[:, 1]], dim=1) * 5


def top_left_corner(x):
    """Logits that depend on orientation: each tile's pixel that lands at its top-left corner."""
    import torch

    corners = x[:, 1, ::64, ::64].reshape(x.shape[0], -1).mean(dim=1)
    return torch.stack([corners, -corners, torch.zeros_like(corners)], dim=1) * 5


@pytest.fixture
def x():
    return np.random.default_rng(0).random((2, 192, 192)).astype(np.float32)


def test_all_eight_training_augmentations_are_classified_in_one_batch(x):
    model = make_module(channel_means)
    predict_with_tta(model, x)
    (batch,) = model.seen
    assert batch.shape == (8, 2, 192, 192)
    for view, (flip, turns) in zip(batch.numpy(), DIHEDRAL_VIEWS):
        np.testing.assert_array_equal(view, transform_tiles(x, flip, turns))


def test_probabilities_sum_to_one_and_an_orientation_blind_model_has_no_spread(x):
    probabilities, spread = predict_with_tta(make_module(channel_means), x)
    assert probabilities.shape == (3,) and probabilities.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(spread, 0.0, atol=1e-6)


def test_an_orientation_sensitive_model_shows_a_spread(x):
    probabilities, spread = predict_with_tta(make_module(top_left_corner), x)
    assert probabilities.sum() == pytest.approx(1.0)
    assert np.all(spread >= 0) and spread.max() > 0.01


def test_without_tta_one_view_and_zero_spread(x):
    model = make_module(top_left_corner)
    prediction = predict(model, x, tta=False, rollout=False)
    assert model.seen[0].shape[0] == 1 and prediction.views == 1
    assert np.all(prediction.spread == 0)


def test_a_double_precision_input_reaches_the_model_as_float32(x):
    import torch

    model = make_module(channel_means)
    predict(model, x.astype(np.float64), rollout=False)
    assert model.seen[0].dtype == torch.float32


def test_a_module_runs_as_a_float32_pytorch_engine_on_its_own_device(x):
    import torch

    engine = module_engine(make_module(lambda batch: torch.zeros(batch.shape[0], 3)), rollout=False)
    assert (engine.choice.engine, engine.choice.precision, engine.choice.device) == ("pytorch", "fp32", "cpu")
    np.testing.assert_allclose(predict(engine, x, rollout=False).probabilities, 1 / 3)


def test_without_rollout_there_is_no_patch_map(x):
    assert predict(make_module(channel_means), x, rollout=False).patch_map is None


def test_head_fusion_and_discard_ratio_reach_the_rollout(x, monkeypatch):
    requested = []

    def recording_maps(engine, batch, grid, head_fusion, discard_ratio):
        requested.append((head_fusion, discard_ratio))
        return pooled_t2_maps(engine, batch, grid)

    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", recording_maps)
    predict(logits_only(channel_means), x, tta=False, head_fusion="max", discard_ratio=0.3)
    assert requested == [("max", 0.3)]


def logits_only(forward):
    """A stand-in network as an engine that gives logits only (the rollout is injected)."""
    return module_engine(make_module(forward), rollout=False)


def pooled_t2_maps(engine, batch, grid, head_fusion="mean", discard_ratio=0.0):
    """A stand-in rollout that follows the image: each patch's mean T2 intensity."""
    return engine(batch)[0], batch[:, 1].reshape(-1, 12, 16, 12, 16).mean(axis=(2, 4))


def test_rollout_maps_are_turned_back_before_averaging(x, monkeypatch):
    # a map that follows the image must come out the same with and without TTA
    monkeypatch.setattr(rollout_module, "engine_logits_and_rollout_maps", pooled_t2_maps)
    model = logits_only(channel_means)
    with_tta = predict(model, x, tta=True).patch_map
    without = predict(model, x, tta=False).patch_map
    np.testing.assert_allclose(with_tta, without, rtol=1e-6)
    # and it is not orientation-blind: a view left in its augmented orientation differs
    assert not np.allclose(transform_tiles(without, True, 1), without)


def test_tta_rollout_of_a_real_vit_is_the_mean_of_the_un_augmented_view_maps(x):
    import torch

    from IPMNRiskLib.network import create_vit

    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 48, "num_heads": 3}).eval()
    prediction = predict(model, x, tta=True)
    expected = []
    for flip, turns in DIHEDRAL_VIEWS:
        view = torch.from_numpy(transform_tiles(x, flip, turns)[None])
        expected.append(undo_transform_tiles(rollout_module.logits_and_rollout_maps(model, view, "mean", 0.0)[1][0], flip, turns))
    np.testing.assert_allclose(prediction.patch_map, np.mean(expected, axis=0), rtol=1e-5)
