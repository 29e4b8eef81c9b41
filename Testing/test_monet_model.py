"""MoNet as specified in MONET.md: size, shapes, layer settings, initialisation, fast inference."""
import math

import pytest
import torch
from torch import nn

from PancreasSegMoNetLib.network import MoNet, output_probabilities, prepare_for_inference
from trainkit.model_card import count_parameters


@pytest.fixture
def model() -> MoNet:
    torch.manual_seed(0)
    return MoNet()


def convolutions(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_has_401666_trainable_parameters(model):
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 401_666
    assert count_parameters(model, include_bn_running_stats=False) == 401_666


def test_has_403556_parameters_counting_bn_running_stats_as_the_paper_does(model):
    assert count_parameters(model, include_bn_running_stats=True) == 403_556


def test_three_class_model_has_403596_parameters_counting_bn_running_stats():
    assert count_parameters(MoNet(n_classes=3), include_bn_running_stats=True) == 403_596


def test_has_30_batchnorm_layers(model):
    assert len(batch_norms(model)) == 30


def test_batchnorm_uses_keras_epsilon_and_momentum(model):
    for bn in batch_norms(model):
        assert bn.eps == pytest.approx(1e-3)
        assert bn.momentum == pytest.approx(0.01)


def test_no_convolution_has_a_bias(model):
    assert all(conv.bias is None for conv in convolutions(model))


def test_down_sampling_uses_4x4_stride_2_convolutions(model):
    for down in (model.down0, model.down1):
        assert down.conv.kernel_size == (4, 4)
        assert down.conv.stride == (2, 2)


def test_rddc_uses_spatial_dropout_of_0_2(model):
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert len(dropouts) == 5
    assert all(d.p == pytest.approx(0.2) for d in dropouts)


def test_every_stage_has_the_specified_output_shape_for_a_256_slice(model):
    expected = {
        "encoder0": (16, 256), "down0": (16, 128), "encoder1": (32, 128), "down1": (32, 64),
        "bottleneck": (64, 64), "up1": (64, 128), "decoder1": (32, 128), "up0": (32, 256),
        "decoder0": (16, 256), "head": (1, 256),
    }
    shapes = {}
    for name in expected:
        getattr(model, name).register_forward_hook(
            lambda module, inputs, output, name=name: shapes.__setitem__(name, tuple(output.shape))
        )
    with torch.no_grad():
        model.eval()(torch.randn(1, 1, 256, 256))
    assert shapes == {name: (1, c, s, s) for name, (c, s) in expected.items()}


def test_single_class_output_is_a_logit_whose_sigmoid_is_a_probability(model):
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 1, 32, 32))
    probabilities = output_probabilities(logits)
    assert logits.shape == probabilities.shape == (2, 1, 32, 32)
    assert logits.min() < 0.0 or logits.max() > 1.0  # a logit, not a probability
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert torch.equal(probabilities, torch.sigmoid(logits))


def test_multi_class_output_sums_to_one_over_classes():
    with torch.no_grad():
        probabilities = output_probabilities(MoNet(n_classes=3).eval()(torch.randn(2, 1, 32, 32)))
    assert probabilities.shape == (2, 3, 32, 32)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_convolution_weights_are_he_uniform(model):
    for conv in convolutions(model):
        fan_in = conv.weight[0].numel()  # in_channels x kH x kW (for Up, in == out channels)
        bound = math.sqrt(6.0 / fan_in)
        largest = conv.weight.abs().max().item()
        assert largest <= bound
        if conv.weight.numel() >= 144:
            # PyTorch's default init stops at 1 / sqrt(fan_in) = 0.41 x this bound.
            assert largest > 0.9 * bound


def randomise_batch_norms(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(1)
    for bn in batch_norms(model):
        n = bn.num_features
        bn.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
        bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
        bn.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
        bn.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


def test_prepared_model_gives_the_eval_models_output(model):
    randomise_batch_norms(model)
    model.eval()
    ct_slices = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ct_slices)
        prepared = prepare_for_inference(model)
        got = prepared(ct_slices)
    # The probabilities to 1e-5; the logits (up to about 100 with these statistics) relatively.
    assert torch.allclose(torch.sigmoid(got), torch.sigmoid(expected), rtol=0.0, atol=1e-5)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert batch_norms(prepared) == []


def test_prepared_model_has_every_batchnorm_folded_into_its_convolution(model):
    prepared = prepare_for_inference(model)
    assert batch_norms(prepared) == []
    assert all(conv.bias is not None for conv in convolutions(prepared))
    assert not prepared.training


def test_preparing_for_inference_leaves_the_original_model_unchanged(model):
    prepare_for_inference(model)
    assert len(batch_norms(model)) == 30
    assert model.training


def test_each_rddc_applies_dilations_4_3_2_1_in_turn_keeping_the_slice_size(model):
    """MONET.md: repeated *decreasingly* dilated convolutions, 'same' padding at every rate."""
    for block in (model.encoder0, model.encoder1, model.bottleneck, model.decoder1, model.decoder0):
        called = []
        handles = [conv.register_forward_hook(
            lambda module, inputs, output: called.append(
                (module.dilation, module.padding, inputs[0].shape[-2:], output.shape[-2:])))
            for conv in convolutions(block.rddc)]
        channels = block.rddc.conv_d1.conv.out_channels
        with torch.no_grad():
            block.rddc.eval()(torch.randn(1, channels, 12, 12))
        for handle in handles:
            handle.remove()
        assert [c[0] for c in called] == [(4, 4), (3, 3), (2, 2), (1, 1)]
        assert [c[1] for c in called] == [(4, 4), (3, 3), (2, 2), (1, 1)]
        assert all(tuple(c[2]) == tuple(c[3]) == (12, 12) for c in called)


def test_parameters_per_block_are_as_specified(model):
    """3x3 convolutions without bias plus a BatchNorm (weight and bias) per convolution."""
    def conv_bn(cin, cout, k=3):
        return cin * cout * k * k + 2 * cout

    def feature_block(cin, cout):
        return conv_bn(cin, cout) + 4 * conv_bn(cout, cout)

    expected = {
        "encoder0": feature_block(1, 16), "down0": conv_bn(16, 16, 4),
        "encoder1": feature_block(16, 32), "down1": conv_bn(32, 32, 4),
        "bottleneck": feature_block(32, 64), "up1": conv_bn(64, 64, 4),
        "decoder1": feature_block(96, 32), "up0": conv_bn(32, 32, 4),
        "decoder0": feature_block(48, 16), "head": conv_bn(16, 1, 1),
    }
    assert {name: count_parameters(getattr(model, name), False) for name in expected} == expected


def test_rddc_dropout_defaults_to_0_2_and_follows_the_models_setting():
    from PancreasSegMoNetLib.network import RDDC

    assert RDDC(4).dropout.p == pytest.approx(0.2)
    dropouts = [m for m in MoNet(dropout=0.5).modules() if isinstance(m, nn.Dropout2d)]
    assert len(dropouts) == 5 and all(d.p == pytest.approx(0.5) for d in dropouts)


def test_multi_class_softmax_runs_without_an_implicit_dimension_warning():
    import warnings

    torch.manual_seed(0)
    model = MoNet(n_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            output_probabilities(model(torch.randn(1, 1, 16, 16)))


def test_he_uniform_weights_fill_the_whole_symmetric_range(model):
    """U(-b, b): negative and positive weights alike, near both ends of the range."""
    for conv in convolutions(model):
        if conv.weight.numel() >= 2304:
            bound = math.sqrt(6.0 / conv.weight[0].numel())
            assert conv.weight.min().item() < -0.9 * bound
            assert conv.weight.max().item() > 0.9 * bound
            assert abs(conv.weight.mean().item()) < 0.1 * bound


def test_prepared_model_is_channels_last_and_without_gradients(model):
    prepared = prepare_for_inference(model)
    assert all(not p.requires_grad for p in prepared.parameters())
    for conv in convolutions(prepared):
        if conv.weight.shape[1] > 1 and conv.weight.shape[-1] > 1:
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
            assert not conv.weight.is_contiguous()


def test_preparing_leaves_a_convolution_without_batchnorm_as_it_is():
    """Blocks holding only a `conv` (or only a `bn`) are not folded, and the outputs still agree."""
    class ConvOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    class BnOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x)

    torch.manual_seed(0)
    network = nn.Sequential(ConvOnly(), BnOnly())
    randomise_batch_norms(network)
    network.eval()
    x = torch.randn(1, 2, 8, 8)
    prepared = prepare_for_inference(network)
    with torch.no_grad():
        assert torch.allclose(prepared(x), network(x), rtol=0.0, atol=1e-5)
    assert len(batch_norms(prepared)) == 1
