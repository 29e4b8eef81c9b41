"""Deterministic synthetic paired T1/T2 abdominal MRI for the three IPMN risk classes.

Used to train the demo weights, in tests and in the Slicer self-test. The anatomy of a
synthetic patient depends on the seed only; the lesion, bias field and noise depend on
(seed, risk class), so one seed gives a normal, a low-risk and a high-risk version of the
same patient.

Classes: 0 normal pancreas (thin duct); 1 low-risk IPMN, a small simple cyst (6-12 mm,
T2 bright, T1 dark, thin wall, no nodule); 2 high-risk IPMN, a larger cyst (20-35 mm) with
an enhancing mural nodule and a dilated main pancreatic duct (>= 5 mm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter

from .anatomy import Anatomy, paint_abdomen, sample_anatomy
from .canvas import Canvas, Grid, Tissue, ellipsoid_box, ellipsoid_sdf, fine_texture, tube_sdf

@dataclass(frozen=True)
class MrPhantom:
    """One synthetic paired T1/T2 MRI on a shared grid.

    t1, t2: (K, J, I) float32, arbitrary positive MR units. pancreas, lesion: (K, J, I)
    bool; the lesion is part of the pancreas label and is empty for class 0.
    ijk_to_ras: 4x4 float64, (i, j, k, 1) -> RAS mm (i toward the patient's left,
    j toward posterior, k toward superior). lesion_center_ras: (3,) mm or None.
    pancreas_box_ras: (centre (3,), size (3,)) mm, an axis-aligned crop around the
    pancreas with a margin, as an expert would draw it.
    """

    t1: np.ndarray
    t2: np.ndarray
    ijk_to_ras: np.ndarray
    pancreas: np.ndarray
    lesion: np.ndarray
    lesion_center_ras: Optional[np.ndarray]
    pancreas_box_ras: tuple[np.ndarray, np.ndarray]
    risk_class: int
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class _Cyst:
    centre: np.ndarray  # (u, v, w) mm in the body frame
    semi_axes: tuple[float, float, float]
    angle_deg: float
    locules: list[tuple[np.ndarray, float]]  # extra daughter cysts: centre, radius
    nodule: tuple[np.ndarray, float] | None


def _mr_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """(T1, T2) signal of each tissue, varied per patient.

    T1 (gradient echo, no fat suppression): fat bright, pancreas brighter than liver,
    fluid dark. T2 (single-shot fast spin echo): fluid very bright, fat fairly bright,
    liver dark, spleen brighter than liver, pancreas intermediate. Vessels: flow voids."""
    def sig(t1: float, t2: float, texture: float = 0.03) -> Tissue:
        t1 *= rng.uniform(0.92, 1.08)
        t2 *= rng.uniform(0.92, 1.08)
        return Tissue((t1, t2), (t1 * texture, t2 * texture))

    fluid = sig(110.0, 1100.0, 0.02)
    return {
        "air": Tissue((0.0, 0.0)),
        "gas": Tissue((5.0, 5.0)),
        "fat": sig(850.0, 620.0),
        "visceral_fat": sig(820.0, 600.0),
        "sinus_fat": sig(760.0, 560.0, 0.05),
        "muscle": sig(320.0, 170.0),
        "liver": sig(560.0, 210.0),
        "spleen": sig(380.0, 440.0),
        "kidney_cortex": sig(430.0, 480.0),
        "kidney_medulla": sig(320.0, 620.0),
        "artery": sig(60.0, 50.0, 0.05),
        "ivc": sig(90.0, 70.0, 0.05),
        "portal_vein": sig(80.0, 60.0, 0.05),
        "pancreas": sig(650.0, 340.0, 0.05),
        "bowel_wall": sig(380.0, 260.0),
        "bowel_fluid": sig(140.0, 950.0, 0.05),
        "stomach_content": sig(180.0, 900.0, 0.06),
        "stool": sig(330.0, 300.0, 0.2),
        "bile": fluid,
        "bone_cortical": sig(60.0, 40.0),
        "bone_cancellous": sig(600.0, 420.0, 0.08),
        "disc": sig(260.0, 520.0),
        "csf": fluid,
        "duct": sig(130.0, 1000.0, 0.02),
        "cyst_fluid": sig(100.0, 1150.0, 0.02),
        "cyst_wall": sig(420.0, 380.0),
        "nodule": sig(420.0, 340.0, 0.06),
    }


def make_mr_phantom(
    seed: int,
    risk_class: int,
    shape: tuple[int, int, int] = (24, 160, 160),
    spacing: tuple[float, float, float] = (1.5, 1.5, 4.0),
) -> MrPhantom:
    """Synthetic paired T1/T2 axial MRI of the upper abdomen with an IPMN of ``risk_class``.

    shape: (K, J, I) voxels; spacing: (sx, sy, sz) mm. The lesion (or, for class 0, a
    random point of the gland) lies within two slices of the central slice, where the
    classifier looks."""
    if risk_class not in (0, 1, 2):
        raise ValueError(f"risk_class must be 0, 1 or 2, not {risk_class!r}")
    anatomy_rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(anatomy_rng, body_half_width=(135.0, 165.0))
    # Real mm per anatomy mm: slim to average adults, so the body mostly fits the
    # small field of view of the default grid.
    scale = float(anatomy_rng.uniform(0.75, 0.9))
    rng = np.random.default_rng([seed, risk_class, 7])
    cyst = _sample_cyst(rng, anatomy, risk_class, scale)
    focus = cyst.centre if cyst is not None else _point_on_gland(rng, anatomy)

    spacing = tuple(float(s) for s in spacing)
    k_centre = (shape[0] - 1) / 2.0 + rng.uniform(-1.5, 1.5)
    w_first = float(focus[2]) - k_centre * spacing[2] / scale
    # Keep the pancreas region inside a field of view that may crop the flanks.
    body_offset = (rng.uniform(-8.0, 8.0) - 0.25 * float(focus[0]), rng.uniform(-15.0, 0.0))
    grid = Grid(shape, spacing, body_offset, w_first, anatomy_scale=scale)

    texture = fine_texture(rng, grid.shape, sigma_voxels=1.2)
    canvas = Canvas(grid, _mr_tissues(rng), "air", texture, labels=("pancreas", "lesion"))
    paint_abdomen(canvas, anatomy, np.random.default_rng([seed, 11]))
    _paint_duct(canvas, anatomy, dilated=risk_class == 2, rng=rng, scale=scale)
    if cyst is not None:
        _paint_cyst(canvas, cyst)

    t1, t2 = (_scanner(channel, rng) for channel in canvas.channels)
    pancreas = canvas.fractions["pancreas"] >= 0.5
    lesion = canvas.fractions["lesion"] >= 0.5
    z_origin = float(rng.uniform(-150.0, 50.0))
    ijk_to_ras = grid.ijk_to_ras(z_offset=z_origin)
    lesion_center = grid.to_ras(cyst.centre, z_origin) if cyst is not None else None
    return MrPhantom(
        t1=t1,
        t2=t2,
        ijk_to_ras=ijk_to_ras,
        pancreas=pancreas,
        lesion=lesion,
        lesion_center_ras=lesion_center,
        pancreas_box_ras=_expert_box(pancreas, ijk_to_ras, rng),
        risk_class=int(risk_class),
        spacing=spacing,
    )


def _point_on_gland(rng: np.random.Generator, anatomy: Anatomy) -> np.ndarray:
    path = anatomy.pancreas_path
    return path[int(rng.uniform(0.15, 0.85) * (len(path) - 1))].copy()


def _sample_cyst(rng: np.random.Generator, anatomy: Anatomy, risk_class: int, scale: float) -> _Cyst | None:
    """Branch-duct IPMN: a cyst centred in the gland, bulging out of it when large.

    Sizes are drawn in real mm and divided by ``scale`` into the anatomy's frame."""
    if risk_class == 0:
        return None
    path, radii = anatomy.pancreas_path, anatomy.pancreas_radius
    index = int(rng.uniform(0.1, 0.9) * (len(path) - 1))
    centre = path[index].copy()
    if risk_class == 1:
        radius = rng.uniform(6.0, 12.0) / scale  # 12-24 mm: branch-duct cyst without worrisome features
        centre[:2] += rng.uniform(-0.4, 0.4, 2) * max(0.0, radii[index] - radius)
        semi = (radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.9, 1.2))
        return _Cyst(centre, semi, float(rng.uniform(0, 180)), [], None)
    radius = rng.uniform(15.0, 22.0) / scale  # 30-44 mm: a size that is itself a worrisome feature
    centre[:2] += rng.uniform(-0.3, 0.3, 2) * radii[index]
    semi = (radius * rng.uniform(0.85, 1.1), radius * rng.uniform(0.8, 1.05), radius * rng.uniform(0.85, 1.1))
    locules = []
    for _ in range(int(rng.integers(0, 3))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        locules.append((centre + direction * radius * 0.75, radius * rng.uniform(0.35, 0.55)))
    direction = rng.standard_normal(3)
    direction[2] *= 0.3  # a nodule seen on the central slices
    direction /= np.linalg.norm(direction)
    nodule_r = rng.uniform(3.5, 7.0) / scale
    surface = centre + direction * np.asarray(semi) * 0.95
    nodule = (surface - direction * nodule_r * 0.5, nodule_r)
    return _Cyst(centre, semi, float(rng.uniform(0, 180)), locules, nodule)


def _paint_duct(canvas: Canvas, anatomy: Anatomy, dilated: bool, rng: np.random.Generator, scale: float) -> None:
    """Main pancreatic duct along the gland's axis: ~1.5 mm normally, 5-9 mm when dilated
    (real mm; ``scale`` converts to the anatomy's frame)."""
    path = anatomy.pancreas_path
    start = int(0.25 * len(path))  # from the head's upper part to the tail
    radius = (rng.uniform(2.6, 4.5) if dilated else rng.uniform(0.6, 0.9)) / scale
    radii = np.interp(np.linspace(0, 1, len(path) - start), [0, 0.85, 1], [radius, radius, radius * 0.6])
    box, sdf = tube_sdf(canvas.grid, path[start:], radii)
    if box is None:
        return
    # Partial volume: a thin duct fills only part of a thick slice, so it stays faint.
    through_plane = min(1.0, 2.0 * radius / canvas.grid.frame_spacing[2])
    alpha = np.clip(0.5 - sdf / max(canvas.ramp_mm, 2.0 * radius), 0.0, 1.0) * through_plane
    canvas.paint("duct", box, alpha * canvas.fractions["pancreas"][box], occlude=False)


def _paint_cyst(canvas: Canvas, cyst: _Cyst) -> None:
    grid = canvas.grid
    reach = tuple(s + 12.0 for s in cyst.semi_axes)
    box = ellipsoid_box(grid, cyst.centre, reach)
    if box is None:
        return
    coords = grid.coords(box)
    sdf = ellipsoid_sdf(coords, cyst.centre, cyst.semi_axes, cyst.angle_deg)
    for centre, radius in cyst.locules:
        sdf = np.minimum(sdf, ellipsoid_sdf(coords, centre, (radius, radius, radius)))
    labels = ("pancreas", "lesion")
    canvas.paint_sdf("cyst_wall", box, sdf, label=labels)
    canvas.paint_sdf("cyst_fluid", box, sdf + 1.0, label=labels)
    if cyst.nodule is not None:
        centre, radius = cyst.nodule
        nodule = np.maximum(ellipsoid_sdf(coords, centre, (radius, radius, radius)), sdf)
        canvas.paint_sdf("nodule", box, nodule, label=labels)


def _scanner(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild in-plane blur, smooth multiplicative bias field (about +-15 %) and Rician noise
    (magnitude of complex Gaussian noise, sigma 1.5-4 % of the fat signal)."""
    blurred = gaussian_filter(signal, sigma=(0.0, 0.6, 0.6), truncate=2.5)
    k_count, j_count, i_count = signal.shape
    z = np.linspace(-1.0, 1.0, k_count, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, j_count, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, i_count, dtype=np.float32)[None, None, :]
    c = rng.uniform(-1.0, 1.0, 6).astype(np.float32)
    bias = np.exp(0.12 * (c[0] * x + c[1] * y + 0.5 * c[2] * z + c[3] * x * y - 0.5 * abs(c[4]) * (x * x + y * y) + 0.3 * c[5] * y * y))
    clean = blurred * bias
    sigma = np.float32(rng.uniform(0.015, 0.04) * 800.0)
    real = clean + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.maximum(magnitude, np.float32(0.1)).astype(np.float32, copy=False)


def _expert_box(pancreas: np.ndarray, ijk_to_ras: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned RAS box around the labelled pancreas with an uneven 4-12 mm margin."""
    ks, js, is_ = np.nonzero(pancreas)
    corners_ijk = np.array([[is_.min(), js.min(), ks.min(), 1.0], [is_.max(), js.max(), ks.max(), 1.0]])
    corners = (ijk_to_ras @ corners_ijk.T).T[:, :3]
    low, high = corners.min(axis=0), corners.max(axis=0)
    low = low - rng.uniform(4.0, 12.0, 3)
    high = high + rng.uniform(4.0, 12.0, 3)
    return (low + high) / 2.0, high - low
