"""The one resampling helper: move voxel values from one grid to another in physical space."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import Volume

# Output voxels computed per call to scipy: bounds the memory of the coordinate work.
_CHUNK_VOXELS = 8_000_000
# Voxel-index slack at the border of the source, so float noise in the grid transform cannot
# move a centre that lies exactly on the border outside.
_EDGE_TOLERANCE = 1e-6


def resample(source: Volume, target_shape: tuple[int, int, int], target_ijk_to_ras: np.ndarray,
             order: int = 1, fill_value: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Values of `source` at the voxel centres of a target grid.

    order 0 = nearest neighbour (labels), 1 = trilinear (images, probabilities).
    A target voxel centre is inside the source when it lies within the source voxels' physical
    extent (up to half a voxel beyond the outer voxel centres, where the edge values hold, as
    in ITK and Slicer); centres outside get `fill_value`. Returns (K, J, I) of `dtype`.
    Works slab by slab, so memory stays near the size of the output.
    """
    if order not in (0, 1):
        raise ValueError("order must be 0 (nearest) or 1 (linear)")
    target_shape = tuple(int(n) for n in target_shape)
    target_to_source = np.linalg.inv(source.ijk_to_ras) @ np.asarray(target_ijk_to_ras)
    # scipy indexes arrays (K, J, I): reverse the (i, j, k) axes of the index transform.
    reverse = np.eye(3)[::-1]
    matrix = reverse @ target_to_source[:3, :3] @ reverse
    offset = reverse @ target_to_source[:3, 3]
    output = np.empty(target_shape, dtype=dtype)
    slab = max(1, _CHUNK_VOXELS // max(1, int(np.prod(target_shape[1:]))))
    for k0 in range(0, target_shape[0], slab):
        k1 = min(k0 + slab, target_shape[0])
        slab_offset = offset + matrix @ np.array([k0, 0.0, 0.0])
        slab_shape = (k1 - k0, *target_shape[1:])
        # mode "nearest" repeats the edge voxels, which is what the outer half voxel holds
        # ("constant" would give it fill_value); centres further out get fill_value below.
        ndimage.affine_transform(
            source.array, matrix, offset=slab_offset, output=output[k0:k1], order=order, mode="nearest")
        outside = _outside_source(matrix, slab_offset, slab_shape, source.shape)
        if outside is not None:
            output[k0:k1][outside] = fill_value
    return output


def _outside_source(matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, int, int],
                    source_shape: tuple[int, ...]) -> np.ndarray | None:
    """(K, J, I) bool of the target voxels whose source (k, j, i) index lies beyond the source
    voxels' extent [-0.5, n - 0.5] on some axis; None when there are none."""
    limit = np.asarray(source_shape) - 0.5 + _EDGE_TOLERANCE
    corners = np.array([[k, j, i] for k in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for i in (0, shape[2] - 1)])
    mapped = corners @ matrix.T + offset
    # The source box is convex and the map affine: all corners inside means all voxels inside.
    if np.all(mapped >= -0.5 - _EDGE_TOLERANCE) and np.all(mapped <= limit):
        return None
    k, j, i = (np.arange(n) for n in shape)
    outside = np.zeros(shape, dtype=bool)
    for axis in range(3):
        coordinate = ((matrix[axis, 0] * k)[:, None, None] + (matrix[axis, 1] * j)[None, :, None]
                      + (matrix[axis, 2] * i)[None, None, :] + offset[axis])
        outside |= coordinate < -0.5 - _EDGE_TOLERANCE
        outside |= coordinate > limit[axis]
    return outside


def resampled_at_least(source: Volume, target_shape: tuple[int, int, int], target_ijk_to_ras: np.ndarray,
                       threshold: float) -> np.ndarray:
    """`resample(source, target_shape, target_ijk_to_ras, order=1) >= threshold` as bool,
    computed only where it can be true (threshold > 0, the fill value being 0).

    A trilinear value is a weighted mean of its 8 neighbours (edge voxels repeat beyond the
    edge), so it reaches the threshold only within one voxel of a source voxel that does.
    Target voxels outside that box's image are False without being interpolated; inside it,
    `resample` runs on the sub-grid as it would on the whole grid.
    """
    if not threshold > 0:
        raise ValueError("the threshold must be above the fill value 0")
    target_shape = tuple(int(n) for n in target_shape)
    mask = np.zeros(target_shape, dtype=bool)
    above = source.array >= threshold
    if not above.any():
        return mask
    # (k, j, i) index box of the voxels at or above the threshold, one voxel wider all round
    low = np.array([np.flatnonzero(above.any(axis=other))[0] for other in ((1, 2), (0, 2), (0, 1))]) - 1.0
    high = np.array([np.flatnonzero(above.any(axis=other))[-1] for other in ((1, 2), (0, 2), (0, 1))]) + 1.0
    corners_kji = np.array([[k, j, i] for k in (low[0], high[0]) for j in (low[1], high[1])
                            for i in (low[2], high[2])])
    source_to_target = np.linalg.inv(np.asarray(target_ijk_to_ras)) @ source.ijk_to_ras
    corners_ijk = np.c_[corners_kji[:, ::-1], np.ones(8)] @ source_to_target.T
    corners_kji_target = corners_ijk[:, 2::-1]
    # Every target voxel whose source position lies inside the box (the box's image is convex);
    # one on its surface is one voxel away from the nearest value at or above the threshold,
    # so its value is below it.
    start = np.maximum(np.ceil(corners_kji_target.min(0)), 0).astype(int)
    stop = np.minimum(np.floor(corners_kji_target.max(0)) + 1, target_shape).astype(int)
    if np.any(stop <= start):
        return mask
    shift = np.eye(4)
    shift[:3, 3] = start[::-1]
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    values = resample(source, tuple(stop - start), np.asarray(target_ijk_to_ras) @ shift, order=1)
    mask[box] = values >= threshold
    return mask


def resample_like(source: Volume, reference: Volume, order: int = 1, fill_value: float = 0.0,
                  dtype=np.float32) -> Volume:
    """`source` resampled onto the grid of `reference`."""
    array = resample(source, reference.shape[:3], reference.ijk_to_ras, order, fill_value, dtype)
    return Volume(array, reference.ijk_to_ras)


def overlap_fraction(moving: Volume, reference: Volume) -> float:
    """Fraction of `reference`'s bounding box (in RAS) that `moving`'s bounding box covers."""
    def ras_box(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        corners = volume.corners_ras()
        half_voxel = np.abs(volume.ijk_to_ras[:3, :3]).sum(axis=1) / 2
        return corners.min(0) - half_voxel, corners.max(0) + half_voxel

    low_a, high_a = ras_box(moving)
    low_b, high_b = ras_box(reference)
    inter = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None)
    return float(np.prod(inter) / np.prod(high_b - low_b))
