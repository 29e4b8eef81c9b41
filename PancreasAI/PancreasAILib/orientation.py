"""Canonical axial orientation: every model here sees slices the same way round.

Canonical storage is the usual DICOM axial one: i runs to the patient's left, j to posterior,
k to superior (LPS). An input in any orientation is brought there by permuting and flipping
its axes only (no interpolation); an oblique input goes to the nearest such orientation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .volume import Volume

# RAS sign that canonical i, j, k should point to along x (R), y (A), z (S).
_CANONICAL_SIGNS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Reorientation:
    """How to turn a (K, J, I) array into canonical order and back.

    source_axis[n] is the source voxel axis (0 = i, 1 = j, 2 = k) that becomes canonical
    axis n; flip[n] tells whether it is reversed.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    source_shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.source_axis == (0, 1, 2) and not any(self.flip)

    def _array_order(self) -> tuple[int, int, int]:
        # canonical array axes are (k, j, i); voxel axis a is array axis 2 - a
        return tuple(2 - self.source_axis[n] for n in (2, 1, 0))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Source (K, J, I) -> canonical (K', J', I'); a view, no copy."""
        out = np.transpose(array, self._array_order())
        flips = tuple(slice(None, None, -1) if self.flip[n] else slice(None) for n in (2, 1, 0))
        return out[flips]

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Canonical (K', J', I') -> source (K, J, I); a view, no copy."""
        flips = tuple(slice(None, None, -1) if self.flip[n] else slice(None) for n in (2, 1, 0))
        return np.transpose(array[flips], np.argsort(self._array_order()))

    def canonical_ijk_to_ras(self, source_ijk_to_ras: np.ndarray) -> np.ndarray:
        """IJK-to-RAS of the canonical array (same physical voxels)."""
        source_dims = self.source_shape[::-1]  # (I, J, K)
        new_to_old = np.zeros((4, 4))
        new_to_old[3, 3] = 1.0
        for n, axis in enumerate(self.source_axis):
            if self.flip[n]:
                new_to_old[axis, n] = -1.0
                new_to_old[axis, 3] = source_dims[axis] - 1
            else:
                new_to_old[axis, n] = 1.0
        return np.asarray(source_ijk_to_ras) @ new_to_old

    def apply_volume(self, volume: Volume) -> Volume:
        return Volume(self.apply(volume.array), self.canonical_ijk_to_ras(volume.ijk_to_ras))


def axial_reorientation(volume: Volume) -> Reorientation:
    """The axis permutation and flips that bring `volume` to canonical axial order."""
    direction = np.abs(volume.direction)
    # canonical axis n (x, y, z) takes the voxel axis that points most along it
    best = max(itertools.permutations(range(3)),
               key=lambda perm: sum(direction[n, perm[n]] for n in range(3)))
    flip = tuple(bool(np.sign(volume.direction[n, best[n]]) != _CANONICAL_SIGNS[n]) for n in range(3))
    return Reorientation(tuple(int(a) for a in best), flip, tuple(volume.shape[:3]))


def obliquity_degrees(volume: Volume) -> float:
    """Largest angle in degrees between a voxel axis and its nearest patient axis."""
    cosines = np.abs(volume.direction).max(axis=0)
    # The clip guards arccos against rounding; |component| / norm does not exceed 1 in IEEE
    # arithmetic, so its mutants cannot be told apart.
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1, 1))))  # pragma: no mutate
