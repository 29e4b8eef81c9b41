"""Pictures for people: a CT or MR slice with a mask outline, as a PNG, the way a radiologist
looks at it (axial: patient's right on the image's left, anterior up; coronal: superior up)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.orientation import axial_reorientation
from PancreasAILib.volume import Volume


def to_grey(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Window a 2D array to uint8 grey levels."""
    scaled = (np.asarray(image, np.float32) - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D binary mask."""
    from scipy import ndimage

    mask = mask > 0
    return mask & ~ndimage.binary_erosion(mask)


def _display_views(volume: Volume, mask: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float]]]:
    """Axial and coronal slices through the mask's centre: (name, image, mask, (row, column) mm)."""
    reorientation = axial_reorientation(volume)
    image = reorientation.apply(volume.array)
    labels = reorientation.apply(mask)
    spacing = reorientation.apply_volume(volume).spacing  # i, j, k in mm
    if labels.any():
        k, j, _ = (int(round(c)) for c in np.argwhere(labels).mean(axis=0))
    else:
        k, j = image.shape[0] // 2, image.shape[1] // 2
    axial = ("axial", image[k], labels[k], (spacing[1], spacing[0]))
    # canonical k runs to superior: flip so superior is up
    coronal = ("coronal", image[::-1, j, :], labels[::-1, j, :], (spacing[2], spacing[0]))
    return [axial, coronal]


def overlay_png(volume: Volume, mask: np.ndarray, path: str | Path, window: Sequence[float],
                color: Sequence[int] = (249, 180, 111), title: Optional[str] = None,
                height: int = 384) -> Path:
    """Axial and coronal views of `volume` with the outline and a light fill of `mask`."""
    from PIL import Image, ImageDraw

    panels = []
    views = _display_views(volume, mask)
    # One scale (pixels per mm) for all panels: the axial view gets `height` pixels.
    axial_image, axial_mm = views[0][1], views[0][3]
    pixels_per_mm = height / (axial_image.shape[0] * axial_mm[0])
    for name, image, labels, (row_mm, column_mm) in views:
        grey = to_grey(image, *window)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        inside = labels > 0
        rgb[inside] = 0.75 * rgb[inside] + 0.25 * np.asarray(color, np.float32)
        rgb[outline(labels)] = color
        picture = Image.fromarray(rgb.astype(np.uint8))
        size = (max(1, round(picture.width * column_mm * pixels_per_mm)),
                max(1, round(picture.height * row_mm * pixels_per_mm)))
        panels.append((name, picture.resize(size, Image.BILINEAR)))
    caption = 24
    canvas = Image.new("RGB", (sum(p.width for _, p in panels) + 8 * (len(panels) - 1),
                               max(p.height for _, p in panels) + caption))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, picture in panels:
        canvas.paste(picture, (x, caption))
        draw.text((x + 4, 6), name, fill=(255, 255, 255))
        x += picture.width + 8
    if title:
        draw.text((80, 6), title, fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
