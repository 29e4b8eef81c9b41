"""Deterministic synthetic portal-venous abdominal CT with a pancreas label.

Used to train the demo weights, in tests and in the Slicer self-test: each seed gives a
different synthetic patient (body habitus, organ positions, pancreas shape, noise, slice
range, pixel size) and the same seed always gives identical arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from scipy.ndimage import gaussian_filter

from .anatomy import paint_abdomen, sample_anatomy
from .canvas import Canvas, Grid, Tissue, fine_texture


@dataclass(frozen=True)
class CtPhantom:
    """One synthetic CT.

    hu: (K, J, I) int16, Hounsfield units. pancreas: (K, J, I) bool.
    ijk_to_ras: 4x4 float64, (i, j, k, 1) -> RAS mm; i toward the patient's left,
    j toward posterior, k toward superior. spacing: (sx, sy, sz) mm.
    """

    hu: np.ndarray
    pancreas: np.ndarray
    ijk_to_ras: np.ndarray
    spacing: tuple[float, float, float]


def _ct_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """Portal-venous-phase attenuation (HU) of each tissue, varied per patient.

    The pancreas is a little brighter than the liver and has a coarser texture, as on
    real portal-venous scans; the enhancing veins run along it."""
    def hu(low: float, high: float, texture: float = 0.0) -> Tissue:
        return Tissue((float(rng.uniform(low, high)),), (texture,))

    liver = hu(98.0, 118.0, 4.0)
    pancreas_hu = liver.mean[0] + rng.uniform(4.0, 18.0)
    return {
        "air": Tissue((-1000.0,)),
        "fat": hu(-115.0, -95.0, 6.0),
        "visceral_fat": hu(-105.0, -85.0, 8.0),
        "muscle": hu(42.0, 55.0, 4.0),
        "liver": liver,
        "spleen": hu(110.0, 128.0, 3.0),
        "kidney_cortex": hu(150.0, 185.0, 4.0),
        "kidney_medulla": hu(115.0, 145.0, 4.0),
        "sinus_fat": hu(-90.0, -60.0, 10.0),
        "artery": hu(150.0, 200.0, 2.0),
        "ivc": hu(120.0, 150.0, 3.0),
        "portal_vein": hu(150.0, 190.0, 2.0),
        "pancreas": Tissue((float(np.clip(pancreas_hu, 100.0, 135.0)),), (7.0,)),
        "bowel_wall": hu(75.0, 100.0, 4.0),
        "bowel_fluid": hu(5.0, 30.0, 6.0),
        "stomach_content": hu(10.0, 35.0, 8.0),
        "stool": hu(-80.0, 10.0, 50.0),
        "bile": hu(2.0, 15.0, 2.0),
        "gas": Tissue((-995.0,), (4.0,)),
        "bone_cortical": hu(450.0, 700.0, 40.0),
        "bone_cancellous": hu(160.0, 250.0, 25.0),
        "disc": hu(70.0, 100.0, 5.0),
        "csf": hu(15.0, 35.0, 3.0),
    }


def make_ct_phantom(
    seed: int,
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] | None = None,
) -> CtPhantom:
    """Synthetic abdominal CT (portal venous phase) around the pancreas.

    shape: (K, J, I) voxels. spacing: (sx, sy, sz) mm; None draws a field of view that
    holds the whole body, as a clinical reconstruction does, and a slice thickness of
    2-3 mm. The pancreas lies near the middle of the slice range, shifted per seed."""
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    scale = rng.uniform(0.88, 1.1)  # real mm per anatomy mm: smaller and larger patients
    if spacing is None:
        field_of_view = 2.0 * anatomy.body_semi[0] * scale * rng.uniform(1.08, 1.3)
        in_plane = field_of_view / shape[2]
        spacing = (in_plane, in_plane, float(rng.choice([2.0, 2.5, 2.5, 3.0])))
    spacing = tuple(float(s) for s in spacing)
    k_count = shape[0]
    span = k_count * spacing[2] / scale
    w_first = -0.5 * span + rng.uniform(-0.25, 0.25) * span - 5.0
    body_offset = (rng.uniform(-10.0, 10.0), rng.uniform(-25.0, -5.0))
    grid = Grid(shape, spacing, body_offset, w_first, anatomy_scale=scale)

    texture = fine_texture(rng, grid.shape, sigma_voxels=1.5 / spacing[0])
    canvas = Canvas(grid, _ct_tissues(rng), "air", texture)
    paint_abdomen(canvas, anatomy, rng)

    hu = _scanner(canvas.channels[0], rng)
    pancreas = canvas.fractions["pancreas"] >= 0.5
    ijk_to_ras = grid.ijk_to_ras(z_offset=float(rng.uniform(-200.0, -100.0)))
    return CtPhantom(hu=hu, pancreas=pancreas, ijk_to_ras=ijk_to_ras, spacing=spacing)


def _scanner(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Quantum noise (sigma 5-25 HU, slightly correlated in-plane) and the scanner's
    in-plane blur, applied in one filtering pass; returns int16 HU."""
    noise_sigma = rng.uniform(5.0, 25.0)
    blur = 0.7
    # A 2D Gaussian of sigma s shrinks white noise by about 1 / (2 sqrt(pi) s).
    white_sigma = noise_sigma * 2.0 * np.sqrt(np.pi) * blur
    noisy = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(white_sigma)
    blurred = gaussian_filter(noisy, sigma=(0.0, blur, blur), truncate=3.0)
    return np.clip(np.rint(blurred), -1024, 3071).astype(np.int16)


def make_ct_phantom_set(seeds: Iterable[int], **kwargs) -> Iterator[CtPhantom]:
    """Phantoms for each seed in turn (keyword arguments as make_ct_phantom)."""
    for seed in seeds:
        yield make_ct_phantom(int(seed), **kwargs)
