"""The paper's baselines have the published sizes and produce full-resolution logits."""
import pytest
import torch

from segmentation_baselines import AttentionGate, AttentionUNet, UNet
from PancreasSegMoNetLib.network import output_probabilities
from trainkit.model_card import count_parameters


def test_unet_64_has_the_published_31054145_parameters():
    assert count_parameters(UNet(base_filters=64), include_bn_running_stats=True) == 31_054_145


def test_unet_16_has_the_published_1946705_parameters():
    assert count_parameters(UNet(base_filters=16), include_bn_running_stats=True) == 1_946_705


def test_attention_unet_has_the_published_31753349_parameters():
    model = AttentionUNet(base_filters=64)
    assert count_parameters(model, include_bn_running_stats=True) == 31_753_349


@pytest.mark.parametrize(
    "build", [lambda: UNet(base_filters=16), lambda: AttentionUNet(base_filters=16)],
    ids=["unet", "attention_unet"],
)
def test_output_is_a_logit_map_the_size_of_the_input_whose_sigmoid_is_the_probability(build):
    torch.manual_seed(0)
    with torch.no_grad():
        logits = build().eval()(torch.randn(2, 1, 32, 48))
    probabilities = output_probabilities(logits)
    assert logits.shape == probabilities.shape == (2, 1, 32, 48)
    assert logits.min() < 0.0  # a logit, not a probability
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert torch.equal(probabilities, torch.sigmoid(logits))


def test_attention_gate_only_attenuates_the_skip():
    torch.manual_seed(0)
    skip, gating = torch.randn(1, 8, 16, 16), torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        gated = AttentionGate(8, 8, 8)(skip, gating)
    ratio = gated / skip  # one weight per pixel, shared by all channels
    assert ratio.min() >= 0.0 and ratio.max() <= 1.0
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
