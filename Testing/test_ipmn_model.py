"""The IPMN ViT: input format, strict loading of our model files, and timm's adaptation of
natural-image weights (2 channels, 12 x 12 patch grid) from a local file."""

import pytest

from PancreasAILib.errors import ModelFileError
from PancreasAILib.weights import save_model
from IPMNRiskLib.network import create_vit, load_pretrained_natural_image, load_vit

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 3}
CLASSES = ["normal", "low-risk IPMN", "high-risk IPMN"]


def card_fields(params=TINY, name="tiny"):
    return {"name": name, "architecture": "vit_tiny_patch16_224", "architecture_params": params,
            "classes": CLASSES, "preprocessing": {}}


def test_the_vit_takes_two_channel_192_grids_and_gives_three_logits():
    import torch

    model = create_vit("vit_tiny_patch16_224", TINY).eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 2, 192, 192))
    assert logits.shape == (2, 3)
    assert tuple(model.patch_embed.grid_size) == (12, 12)
    assert model.pos_embed.shape == (1, 145, 48)


def test_architecture_parameters_may_not_change_the_input_format():
    with pytest.raises(ModelFileError, match="in_chans"):
        create_vit("vit_tiny_patch16_224", {**TINY, "in_chans": 3})


def test_an_unknown_architecture_is_refused_in_words():
    with pytest.raises(ModelFileError, match="not an IPMN risk architecture"):
        create_vit("resnet18", {})


def test_a_saved_model_loads_back_identically(tmp_path):
    import torch

    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", TINY).eval()
    card = save_model(model.state_dict(), tmp_path / "tiny.safetensors", card_fields())
    loaded = load_vit(card)
    assert not loaded.training
    x = torch.rand(1, 2, 192, 192)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_weights_of_another_size_are_refused_with_the_reason(tmp_path):
    model = create_vit("vit_tiny_patch16_224", TINY)
    card = save_model(model.state_dict(), tmp_path / "tiny.safetensors",
                      card_fields(params={**TINY, "embed_dim": 96}))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_vit(card)


@pytest.fixture(scope="module")
def natural_image_file(tmp_path_factory):
    """A randomly initialised 3-channel 224 x 224 ViT of the tiny architecture, as timm
    would publish it (1000-class head), saved as .safetensors."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    path = tmp_path_factory.mktemp("pretrained") / "vit_tiny_natural.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return path, {k: v.clone() for k, v in source.state_dict().items()}


def test_pretrained_patch_embedding_keeps_red_and_green_kernels_scaled_by_three_halves(natural_image_file):
    import torch

    path, source = natural_image_file
    model = load_pretrained_natural_image("vit_tiny_patch16_224", path, TINY)
    expected = source["patch_embed.proj.weight"][:, :2] * 1.5
    assert model.patch_embed.proj.weight.shape == (48, 2, 16, 16)
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), expected)


def test_pretrained_position_embedding_is_resampled_to_the_12_by_12_grid(natural_image_file):
    import torch

    path, source = natural_image_file
    model = load_pretrained_natural_image("vit_tiny_patch16_224", path, TINY)
    assert source["pos_embed"].shape == (1, 197, 48)
    assert model.pos_embed.shape == (1, 145, 48)
    # the class token's embedding is carried over, the patch grid is interpolated
    torch.testing.assert_close(model.pos_embed[0, 0].detach(), source["pos_embed"][0, 0])
    patch_grid = model.pos_embed[0, 1:].detach().reshape(12, 12, 48)
    source_grid = source["pos_embed"][0, 1:].reshape(14, 14, 48)
    assert abs(float(patch_grid.mean() - source_grid.mean())) < 0.2 * float(source_grid.std())


def test_pretrained_transformer_blocks_are_copied_and_the_head_is_new(natural_image_file):
    import torch

    path, source = natural_image_file
    model = load_pretrained_natural_image("vit_tiny_patch16_224", path, TINY)
    state = model.state_dict()
    torch.testing.assert_close(state["blocks.1.attn.qkv.weight"], source["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(state["cls_token"], source["cls_token"])
    assert state["head.weight"].shape == (3, 48)


def test_a_missing_pretrained_file_is_reported(tmp_path):
    with pytest.raises(ModelFileError, match="No pretrained weights file"):
        load_pretrained_natural_image("vit_tiny_patch16_224", tmp_path / "absent.safetensors", TINY)


def test_pretrained_weights_of_another_architecture_are_refused(natural_image_file):
    path, _ = natural_image_file
    with pytest.raises(ModelFileError, match="does not hold"):
        load_pretrained_natural_image("vit_tiny_patch16_224", path, {**TINY, "depth": 3})


def test_no_pretrained_file_means_the_hub_weights_of_the_named_tag(monkeypatch):
    # offline here: check that the request reaches timm as a hub download, without fetching
    import timm

    calls = {}

    def fake_create_model(name, **kwargs):
        calls.update(name=name, **kwargs)
        return "model"

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    assert load_pretrained_natural_image("vit_base_patch16_224.augreg_in21k") == "model"
    assert calls["name"] == "vit_base_patch16_224.augreg_in21k" and calls["pretrained"] is True
    assert "pretrained_cfg_overlay" not in calls
    assert (calls["in_chans"], calls["img_size"], calls["num_classes"]) == (2, 192, 3)
    assert sorted(calls) == sorted(["name", "pretrained", "in_chans", "img_size", "num_classes"])
