"""The paper's baselines: 2D U-Net (64 or 16 base filters) and Attention U-Net.

Built as the MoNet authors built them in Keras (MONET.md, last section; BatchNorm with the
Keras settings, as in MoNet), so that the parameter counts, BatchNorm running mean and
variance included, are the published ones: U-Net-64 31,054,145; U-Net-16 1,946,705;
Attention U-Net (64) 31,753,349.

The layer choices that make those counts exact:
- every level, the bottleneck included, is conv3x3 (bias) -> ReLU -> BN -> spatial dropout ->
  conv3x3 (bias) -> ReLU -> BN; dropout 0.3 in the encoder and bottleneck, none in the decoder;
- max-pooling down, one 2x2 stride-2 transposed conv (bias) up, halving the channels;
- decoder input is [upsampled, skip] concatenated;
- attention gate: 1x1 convs with bias and no BN, each skip and upsampled map projected to the
  upsampled width, summed, ReLU, 1x1 conv (bias) to one channel, sigmoid, multiplied into the
  skip;
- head: 1x1 conv with bias.

Input (B, in_channels, H, W), H and W divisible by 16; output (B, n_classes, H, W) logits, as
MoNet's: the activation belongs to the loss and to inference (`output_probabilities`).
"""
from __future__ import annotations

import torch
from torch import nn

from PancreasSegMoNetLib.network import batch_norm

DEPTH = 4  # down-sampling levels
ENCODER_DROPOUT = 0.3


class DoubleConv(nn.Module):
    """Two 3x3 convs (bias), each followed by ReLU then BatchNorm, spatial dropout between."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            batch_norm(out_channels),
            nn.Dropout2d(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            batch_norm(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) weighting a skip by the upsampled features.

    skip (B, Cs, H, W), gating (B, Cg, H, W) -> skip * alpha, alpha (B, 1, H, W) in [0, 1].
    """

    def __init__(
        self, skip_channels: int, gating_channels: int, intermediate_channels: int
    ) -> None:
        super().__init__()
        self.skip_projection = nn.Conv2d(skip_channels, intermediate_channels, 1)
        self.gating_projection = nn.Conv2d(gating_channels, intermediate_channels, 1)
        self.attention = nn.Conv2d(intermediate_channels, 1, 1)

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        combined = torch.relu(self.skip_projection(skip) + self.gating_projection(gating))
        return skip * torch.sigmoid(self.attention(combined))


class SkipThrough(nn.Module):
    """The plain U-Net's skip connection: the skip unchanged, whatever the gating signal."""

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip


class UNet(nn.Module):
    """2D U-Net with four down-sampling levels; widths base, 2x, 4x, 8x and 16x at the bottom."""

    def __init__(
        self,
        base_filters: int = 64,
        in_channels: int = 1,
        n_classes: int = 1,
        attention: bool = False,
    ) -> None:
        super().__init__()
        widths = [base_filters * 2**level for level in range(DEPTH + 1)]
        self.encoders = nn.ModuleList()
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(in_channels, width, ENCODER_DROPOUT))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], ENCODER_DROPOUT)
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(2 * width, width, 2, stride=2))
            self.gates.append(AttentionGate(width, width, width) if attention else SkipThrough())
            self.decoders.append(DoubleConv(2 * width, width, dropout=0.0))
        self.head = nn.Conv2d(base_filters, n_classes, 1)
        _keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, n_classes, H, W) logits; H, W divisible by 16."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, gate, decoder, skip in zip(self.ups, self.gates, self.decoders, reversed(skips)):
            x = up(x)
            x = decoder(torch.cat([x, gate(skip, x)], dim=1))
        return self.head(x)


class AttentionUNet(UNet):
    """The U-Net above with an attention gate on every skip connection."""

    def __init__(self, base_filters: int = 64, in_channels: int = 1, n_classes: int = 1) -> None:
        super().__init__(base_filters, in_channels, n_classes, attention=True)


def _keras_init(model: UNet) -> None:
    """Initialise as the Keras original: He-uniform for the 3x3 and gate convs, Glorot-uniform
    (Keras' default) for the transposed convs and the head; biases start at zero."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    for module in [*model.ups, model.head]:
        nn.init.xavier_uniform_(module.weight)
