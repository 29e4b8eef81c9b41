"""The paper's augmentation of training slices (random rotation, zoom and shift, the same for a
slice and its mask; zoom per axis or isotropic, fill by the nearest edge pixel or zeros, as the
protocol says), and the optional crops near the pancreas. Tensors are (B, 1, H, W)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from monet_protocol import MoNetProtocol

if TYPE_CHECKING:
    import torch


def random_affine(batch: int, generator, protocol: MoNetProtocol) -> "torch.Tensor":
    """(batch, 2, 3) random rotation, zoom and shift for F.affine_grid (normalised coordinates).

    zoom_axes "isotropic": one zoom factor per slice; "independent": one per in-plane axis, as
    Keras' ImageDataGenerator draws them (the authors' augmentation)."""
    import torch

    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(protocol.rotation_degrees)
    scale_x = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * protocol.zoom
    scale_y = scale_x
    if protocol.zoom_axes == "independent":
        scale_y = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * protocol.zoom
    offset = (torch.rand(batch, 2, generator=generator) * 2 - 1) * protocol.shift * 2  # coordinates span 2
    theta = torch.zeros(batch, 2, 3)
    # rotation @ diag(scale_x, scale_y): output coordinates -> input coordinates
    theta[:, 0, 0] = torch.cos(angle) * scale_x
    theta[:, 0, 1] = -torch.sin(angle) * scale_y
    theta[:, 1, 0] = torch.sin(angle) * scale_x
    theta[:, 1, 1] = torch.cos(angle) * scale_y
    theta[:, :, 2] = offset
    return theta


#: grid_sample's padding for each `fill` of the protocol: Keras' "nearest" repeats the edge pixels.
PADDING_MODES = {"zeros": "zeros", "nearest": "border"}


def apply_affine(images, masks, theta, fill: str = "zeros"):
    """The same transform for each slice and its mask, both bilinear; the mask is then cut at 0.5,
    as `label_slices` makes the masks in the first place. (B, 1, H, W). Outside the original
    slice: zeros (air after windowing) or the nearest edge pixel (`fill` "nearest", Keras').

    A nearest-neighbour mask would move its edge by up to half a pixel against the image's,
    at random from slice to slice: noise at the very scale of the boundary errors that are
    left to learn."""
    import torch.nn.functional as F

    padding = PADDING_MODES[fill]
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return images, (masks >= 0.5).to(images.dtype)


def random_crop_corners(masks, size: int, generator) -> list[tuple[int, int]]:
    """(top, left) of a size x size crop per slice of (B, 1, H, W) `masks`: centred on a random
    pancreas pixel moved by up to size / 4, or anywhere when the slice has no pancreas."""
    import torch

    masks = masks.cpu()
    height, width = masks.shape[-2:]
    corners = []
    for mask in masks[:, 0]:
        pixels = torch.nonzero(mask > 0)
        if len(pixels):
            centre = pixels[torch.randint(len(pixels), (1,), generator=generator)][0]
            centre = centre + torch.randint(-size // 4, size // 4 + 1, (2,), generator=generator)
        else:
            centre = torch.stack([torch.randint(height, (1,), generator=generator)[0],
                                  torch.randint(width, (1,), generator=generator)[0]])
        corners.append((int(min(max(int(centre[0]) - size // 2, 0), height - size)),
                        int(min(max(int(centre[1]) - size // 2, 0), width - size))))
    return corners


def crop_batch(images, masks, corners: list[tuple[int, int]], size: int):
    """Crop slice n and its mask at corners[n]. (B, 1, H, W) -> (B, 1, size, size)."""
    import torch

    pick = lambda batch: torch.stack([batch[n, :, top:top + size, left:left + size]  # noqa: E731
                                      for n, (top, left) in enumerate(corners)])
    return pick(images), pick(masks)
