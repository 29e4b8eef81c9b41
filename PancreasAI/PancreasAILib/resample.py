"""The one resampling helper: move voxel values from one grid to another in physical space."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import Volume

# Output voxels computed per call to scipy: bounds the memory of the coordinate work.
_CHUNK_VOXELS = 8_000_000


def resample(source: Volume, target_shape: tuple[int, int, int], target_ijk_to_ras: np.ndarray,
             order: int = 1, fill_value: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Values of `source` at the voxel centres of a target grid.

    order 0 = nearest neighbour (labels), 1 = trilinear (images, probabilities).
    Target voxels outside the source get `fill_value`. Returns (K, J, I) of `dtype`.
    Works slab by slab, so memory stays near the size of the output.
    """
    if order not in (0, 1):
        raise ValueError("order must be 0 (nearest) or 1 (linear)")
    target_to_source = np.linalg.inv(source.ijk_to_ras) @ np.asarray(target_ijk_to_ras, float)
    # Round away float noise (1e-9 voxel grid): a voxel centre that should land exactly on the
    # source's last slice must not land 1e-15 beyond it, where scipy returns fill_value.
    target_to_source = np.round(target_to_source * 2.0**30) / 2.0**30
    # scipy indexes arrays (K, J, I): reverse the (i, j, k) axes of the index transform.
    reverse = np.eye(3)[::-1]
    matrix = reverse @ target_to_source[:3, :3] @ reverse
    offset = reverse @ target_to_source[:3, 3]
    output = np.empty(tuple(target_shape), dtype=dtype)
    slab = max(1, _CHUNK_VOXELS // max(1, int(np.prod(target_shape[1:]))))
    for k0 in range(0, target_shape[0], slab):
        k1 = min(k0 + slab, target_shape[0])
        ndimage.affine_transform(
            source.array, matrix, offset=offset + matrix @ np.array([k0, 0.0, 0.0]),
            output_shape=(k1 - k0, *target_shape[1:]), output=output[k0:k1], order=order,
            mode="constant", cval=fill_value, prefilter=False)
    return output


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
