"""Pictures for people: a CT or MR slice with a mask outline, as a PNG, the way a radiologist
looks at it (axial: patient's right on the image's left, anterior up; coronal: superior up),
with orientation letters on each view's edges and a scale bar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.orientation import axial_reorientation
from PancreasAILib.picture import (PixelGeometry, cut_geometry, draw_edge_labels, draw_scale_bar, draw_text,
                                   label_font)
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


@dataclass(frozen=True, eq=False)
class DisplayView:
    """One picture of the demo: image and mask (rows, columns) and how its pixels lie in the patient."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    geometry: PixelGeometry


def _display_views(volume: Volume, mask: np.ndarray) -> list[DisplayView]:
    """Axial and coronal slices through the mask's centre.

    Each view is a cut of the canonical (LPS-ordered) volume; its orientation letters and pixel
    size come from that same cut (`cut_geometry`), so a flipped or oblique scan is labelled as
    it is shown.
    """
    reorientation = axial_reorientation(volume)
    canonical = reorientation.apply_volume(volume)
    labels = reorientation.apply(mask)
    if labels.any():
        k, j, _ = (int(round(c)) for c in np.argwhere(labels).mean(axis=0))
    else:
        k, j = canonical.shape[0] // 2, canonical.shape[1] // 2
    cuts = {"axial": (k, slice(None), slice(None)),
            # canonical k runs to superior: reversed so superior is up
            "coronal": (slice(None, None, -1), j, slice(None))}
    return [DisplayView(name, canonical.array[cut], labels[cut], cut_geometry(canonical.ijk_to_ras, cut))
            for name, cut in cuts.items()]


def overlay_png(volume: Volume, mask: np.ndarray, path: str | Path, window: Sequence[float],
                color: Sequence[int] = (249, 180, 111), title: Optional[str] = None,
                height: int = 384) -> Path:
    """Axial and coronal views of `volume` with the outline and a light fill of `mask`, each with
    orientation letters on its edges and a scale bar."""
    from PIL import Image, ImageDraw

    panels = []
    views = _display_views(volume, mask)
    # One scale (pixels per mm) for all panels: the axial view gets `height` pixels.
    axial = views[0]
    pixels_per_mm = height / (axial.image.shape[0] * axial.geometry.pixel_mm[0])
    for view in views:
        grey = to_grey(view.image, *window)
        rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
        inside = view.mask > 0
        rgb[inside] = 0.75 * rgb[inside] + 0.25 * np.asarray(color, np.float32)
        rgb[outline(view.mask)] = color
        picture = Image.fromarray(rgb.astype(np.uint8))
        row_mm, column_mm = view.geometry.pixel_mm
        size = (max(1, round(picture.width * column_mm * pixels_per_mm)),
                max(1, round(picture.height * row_mm * pixels_per_mm)))
        geometry = view.geometry.resized(view.image.shape, (size[1], size[0]))
        panels.append((view.name, picture.resize(size, Image.BILINEAR), geometry))
    caption, margin, gap = 24, 22, 8
    canvas = Image.new("RGB", (sum(p.width + 2 * margin for _, p, _ in panels) + gap * (len(panels) - 1),
                               max(p.height for _, p, _ in panels) + caption + 2 * margin))
    draw = ImageDraw.Draw(canvas)
    font, letter_font = label_font(13), label_font(15)
    x = 0
    for name, picture, geometry in panels:
        left, top = x + margin, caption + margin
        canvas.paste(picture, (left, top))
        box = (left, top, left + picture.width, top + picture.height)
        draw_edge_labels(draw, box, geometry.edge_labels(), letter_font, margin)
        draw_scale_bar(draw, (left + 2, box[3] + margin // 2 + 3), geometry, 0.3 * picture.width, font)
        draw_text(draw, (x + 4, 5), name, font)
        x += picture.width + 2 * margin + gap
    if title:
        draw_text(draw, (80, 5), title, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
