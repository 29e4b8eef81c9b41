"""Drawing tools for synthetic phantoms: a voxel grid in body-frame millimetres, smooth
signed-distance shapes (ellipsoids, tubes swept along splines), noise fields and a
multi-channel canvas that paints tissues and keeps the coverage of labelled structures.

Shapes are signed-distance fields (mm, negative inside) turned into anti-aliased coverage,
so outlines stay smooth at any voxel size. Only numpy and scipy are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter, zoom

Box = tuple[slice, slice, slice]
Vec3 = tuple[float, float, float]


# ---------------------------------------------------------------------------------------
# Grid and geometry
# ---------------------------------------------------------------------------------------


class Grid:
    """A (K, J, I) voxel grid placed in the body frame.

    Column i runs toward the patient's left, row j toward posterior and slice k toward
    superior (axial LPS-like storage, as most CT and MR series are stored). The body
    frame is the anatomy's own millimetres; ``anatomy_scale`` (real mm per body-frame mm)
    makes a smaller or larger patient from the same anatomy.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        body_offset: tuple[float, float],
        w_of_first_slice: float,
        anatomy_scale: float = 1.0,
    ) -> None:
        """spacing: (sx, sy, sz) real mm. body_offset: body-frame mm from the image centre
        to the body centre (toward left, toward posterior). w_of_first_slice: body-frame
        height of slice k = 0."""
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.scale = float(anatomy_scale)
        k_count, j_count, i_count = self.shape
        fx, fy, fz = (s / self.scale for s in self.spacing)
        self.frame_spacing = (fx, fy, fz)
        self.centre_index = ((i_count - 1) / 2.0, (j_count - 1) / 2.0)
        self.body_offset = (float(body_offset[0]), float(body_offset[1]))
        self.w0 = float(w_of_first_slice)
        self.u = ((np.arange(i_count) - self.centre_index[0]) * fx - self.body_offset[0]).astype(np.float32)
        self.v = ((np.arange(j_count) - self.centre_index[1]) * fy - self.body_offset[1]).astype(np.float32)
        self.w = (self.w0 + np.arange(k_count) * fz).astype(np.float32)

    def ijk_to_ras(self, z_offset: float = 0.0) -> np.ndarray:
        """4x4 float64 matrix (i, j, k, 1) -> RAS mm; image centre at R = A = 0 and the
        body frame's w = 0 at S = z_offset."""
        sx, sy, sz = self.spacing
        matrix = np.diag([-sx, -sy, sz, 1.0])
        matrix[0, 3] = self.centre_index[0] * sx
        matrix[1, 3] = self.centre_index[1] * sy
        matrix[2, 3] = self.w0 * self.scale + z_offset
        return matrix

    def to_ras(self, point_uvw: Sequence[float], z_offset: float = 0.0) -> np.ndarray:
        """RAS mm of a body-frame point (u, v, w), consistent with ijk_to_ras(z_offset)."""
        u, v, w = point_uvw
        left = (u + self.body_offset[0]) * self.scale
        posterior = (v + self.body_offset[1]) * self.scale
        return np.array([-left, -posterior, w * self.scale + z_offset], dtype=np.float64)

    def box(self, low: Sequence[float], high: Sequence[float]) -> Box | None:
        """Index slices (k, j, i) of the voxels whose centres lie in [low, high] (u, v, w mm)."""
        ranges = []
        for axis_coords, lo, hi in ((self.w, low[2], high[2]), (self.v, low[1], high[1]), (self.u, low[0], high[0])):
            start = int(np.searchsorted(axis_coords, lo, side="left"))
            stop = int(np.searchsorted(axis_coords, hi, side="right"))
            if stop <= start:
                return None
            ranges.append(slice(start, stop))
        return ranges[0], ranges[1], ranges[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable body-frame coordinates (u, v, w) mm of the voxels in ``box``."""
        return (
            self.u[box[2]][None, None, :],
            self.v[box[1]][None, :, None],
            self.w[box[0]][:, None, None],
        )


def coverage(sdf_mm: np.ndarray, ramp_mm: float) -> np.ndarray:
    """Fraction of a voxel inside a shape, from its signed distance (mm, negative inside).

    A linear ramp one voxel wide gives anti-aliased, smooth-looking outlines."""
    return np.clip(0.5 - sdf_mm / ramp_mm, 0.0, 1.0).astype(np.float32, copy=False)


def ellipsoid_sdf(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: Sequence[float],
    semi_axes: Sequence[float],
    angle_deg: float = 0.0,
) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid rotated in the axial plane.

    First-order estimate (r - 1) / |grad r|, exact on the surface, which is all the
    anti-aliasing ramp needs."""
    u, v, w = coords
    du = u - centre[0]
    dv = v - centre[1]
    if angle_deg:
        theta = np.deg2rad(angle_deg)
        c, s = np.cos(theta), np.sin(theta)
        du, dv = du * c + dv * s, -du * s + dv * c
    qu = du / semi_axes[0]
    qv = dv / semi_axes[1]
    qw = (w - centre[2]) / semi_axes[2]
    r = np.sqrt(qu * qu + qv * qv + qw * qw)
    grad = np.sqrt((qu / semi_axes[0]) ** 2 + (qv / semi_axes[1]) ** 2 + (qw / semi_axes[2]) ** 2)
    return (r - 1.0) * r / np.maximum(grad, 1e-6)


def ellipsoid_box(grid: Grid, centre: Sequence[float], semi_axes: Sequence[float], margin: float = 3.0) -> Box | None:
    """Voxel box enclosing an ellipsoid in any axial rotation."""
    in_plane = max(semi_axes[0], semi_axes[1]) + margin
    reach = (in_plane, in_plane, semi_axes[2] + margin)
    return grid.box([c - r for c, r in zip(centre, reach)], [c + r for c, r in zip(centre, reach)])


def smooth_path(control_points: np.ndarray, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``step_mm`` along a cubic spline through control points (N, 3) mm.

    Returns (points (M, 3), parameter (M,) in [0, 1] of each point along the controls)."""
    control_points = np.asarray(control_points, dtype=np.float64)
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(control_points, axis=0), axis=1))]
    spline = CubicSpline(chord, control_points, bc_type="natural")
    dense_t = np.linspace(0.0, chord[-1], max(8, int(chord[-1] / (step_mm * 0.25))))
    dense = spline(dense_t)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
    samples = np.linspace(0.0, arc[-1], max(2, int(np.ceil(arc[-1] / step_mm)) + 1))
    t = np.interp(samples, arc, dense_t)
    return spline(t), t / chord[-1]


def tube_sdf(grid: Grid, points: np.ndarray, radii: np.ndarray, margin: float = 3.0) -> tuple[Box | None, np.ndarray | None]:
    """Signed distance (mm) to the union of balls centred on ``points`` (M, 3) with ``radii`` (M,).

    Closely spaced balls (step <= radius / 2) sweep a smooth tube of varying calibre.
    Returns the voxel box the tube can touch and the distance inside that box."""
    points = np.asarray(points, dtype=np.float32)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float32), (len(points),))
    reach = float(radii.max()) + margin
    box = grid.box(points.min(axis=0) - reach, points.max(axis=0) + reach)
    if box is None:
        return None, None
    u, v, w = grid.coords(box)
    u, v, w = u.ravel(), v.ravel(), w.ravel()
    sdf = np.full((len(w), len(v), len(u)), 1e4, dtype=np.float32)
    for (pu, pv, pw), radius in zip(points, radii):
        r = radius + margin
        i0, i1 = np.searchsorted(u, pu - r), np.searchsorted(u, pu + r, side="right")
        j0, j1 = np.searchsorted(v, pv - r), np.searchsorted(v, pv + r, side="right")
        k0, k1 = np.searchsorted(w, pw - r), np.searchsorted(w, pw + r, side="right")
        if i1 <= i0 or j1 <= j0 or k1 <= k0:
            continue
        du2 = (u[i0:i1] - pu) ** 2
        dv2 = (v[j0:j1] - pv) ** 2
        dw2 = (w[k0:k1] - pw) ** 2
        dist = np.sqrt(dw2[:, None, None] + dv2[None, :, None] + du2[None, None, :]) - radius
        np.minimum(sdf[k0:k1, j0:j1, i0:i1], dist, out=sdf[k0:k1, j0:j1, i0:i1])
    return box, sdf


def values_in_box(values: np.ndarray, box: Box, sub: Box, fill: float) -> np.ndarray:
    """Values defined on ``box`` resampled onto the voxels of ``sub`` (``fill`` outside)."""
    out = np.full([s.stop - s.start for s in sub], fill, dtype=np.float32)
    src, dst = [], []
    for outer, inner in zip(box, sub):
        lo, hi = max(outer.start, inner.start), min(outer.stop, inner.stop)
        if hi <= lo:
            return out
        src.append(slice(lo - outer.start, hi - outer.start))
        dst.append(slice(lo - inner.start, hi - inner.start))
    out[tuple(dst)] = values[tuple(src)]
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: Sequence[float]) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise smooth over ``cell`` voxels per axis (float32)."""
    coarse_shape = tuple(max(2, int(np.ceil(n / c)) + 2) for n, c in zip(shape, cell))
    coarse = rng.standard_normal(coarse_shape, dtype=np.float32)
    factors = [(n + 2 * c) / m for n, c, m in zip(shape, cell, coarse_shape)]
    fine = zoom(coarse, factors, order=1, mode="nearest", grid_mode=False)
    start = [max(0, (f - n) // 2) for f, n in zip(fine.shape, shape)]
    fine = fine[tuple(slice(s, s + n) for s, n in zip(start, shape))]
    if fine.shape != tuple(shape):  # rounding in zoom: pad with edge values
        fine = np.pad(fine, [(0, n - f) for n, f in zip(shape, fine.shape)], mode="edge")
    # Linear interpolation between independent nodes lowers the variance; 1.6 restores ~1.
    return fine.astype(np.float32, copy=False) * 1.6


def fine_texture(rng: np.random.Generator, shape: tuple[int, int, int], sigma_voxels: float) -> np.ndarray:
    """Unit-variance noise correlated over about ``sigma_voxels`` in each axial slice (float32).

    In-plane only (thick slices decorrelate anyway), drawn on a half-resolution grid and
    enlarged by pixel repetition: a quarter of the cost, and the blocks vanish under the
    scanner blur applied later."""
    k_count, j_count, i_count = shape
    half = rng.standard_normal((k_count, (j_count + 1) // 2, (i_count + 1) // 2), dtype=np.float32)
    sigma = max(0.3, sigma_voxels / 2.0)
    smooth = gaussian_filter(half, sigma=(0.0, sigma, sigma), truncate=2.5)
    # A 2D Gaussian of sigma s shrinks white noise by about 1 / (2 sqrt(pi) s).
    smooth *= np.float32(2.0 * np.sqrt(np.pi) * sigma)
    full = np.repeat(np.repeat(smooth, 2, axis=1), 2, axis=2)
    return full[:, :j_count, :i_count]


# ---------------------------------------------------------------------------------------
# Canvas
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tissue:
    """Mean intensity per channel and the amplitude of its fine texture per channel."""

    mean: tuple[float, ...]
    texture: tuple[float, ...] = ()


class Canvas:
    """Paints tissues into one or more intensity channels and tracks labelled structures.

    ``fractions[name]`` is the visible coverage (0..1) of a labelled structure: painting
    any other tissue over it removes the covered part, as an annotator would label it.
    """

    def __init__(
        self,
        grid: Grid,
        tissues: Mapping[str, Tissue],
        background: str,
        texture: np.ndarray,
        labels: Sequence[str] = ("pancreas",),
    ) -> None:
        """texture: (K, J, I) float32 unit-variance field that modulates every tissue by
        its own amplitude; labels: the structures whose coverage is tracked."""
        self.grid = grid
        self.tissues = dict(tissues)
        first = self.tissues[background].mean
        self.channels = [np.full(grid.shape, value, dtype=np.float32) for value in first]
        self.texture = texture
        self.fractions = {name: np.zeros(grid.shape, dtype=np.float32) for name in labels}
        self.ramp_mm = min(grid.frame_spacing[0], grid.frame_spacing[1])

    def paint(
        self,
        tissue: str,
        box: Box | None,
        alpha: np.ndarray | None,
        label: str | Sequence[str] = (),
        occlude: bool = True,
    ) -> None:
        """Blend ``tissue`` into ``box`` with coverage ``alpha`` (broadcastable to the box).

        label: also add the coverage to these labelled structures; occlude=False leaves the
        labelled structures untouched (texture inside an organ, not a new organ)."""
        labels = (label,) if isinstance(label, str) else tuple(label)
        if box is None or alpha is None:
            return
        spec = self.tissues[tissue]
        texture = self.texture[box]
        for channel, mean, amplitude in zip(self.channels, spec.mean, spec.texture or (0.0,) * len(spec.mean)):
            region = channel[box]
            value = mean + amplitude * texture if amplitude else np.float32(mean)
            region += alpha * (value - region)
        for name, fraction in self.fractions.items():
            region = fraction[box]
            if name in labels:
                region += alpha * (1.0 - region)
            elif occlude:
                region *= 1.0 - alpha

    def paint_layers_2d(self, layers: Sequence[tuple[str, np.ndarray]]) -> None:
        """First paint: tissues that do not change along the body axis, in one 3D pass.

        layers: (tissue, coverage (1, J, I)) in painting order, composited in 2D over the
        untextured background. Nothing labelled may be painted yet."""
        for c, channel in enumerate(self.channels):
            mean = channel[:1].copy()
            amplitude = np.zeros_like(mean)
            for tissue, alpha in layers:
                spec = self.tissues[tissue]
                mean += alpha * (spec.mean[c] - mean)
                amplitude += alpha * ((spec.texture[c] if spec.texture else 0.0) - amplitude)
            np.multiply(self.texture, amplitude, out=channel)
            channel += mean

    def paint_sdf(self, tissue: str, box: Box | None, sdf: np.ndarray | None, **kwargs) -> None:
        """Paint the inside of a signed-distance field."""
        if box is None or sdf is None:
            return
        self.paint(tissue, box, coverage(sdf, self.ramp_mm), **kwargs)
