"""A voxel array with its physical geometry, and the checks every input goes through.

Arrays are indexed (K, J, I) like Slicer's ``arrayFromVolume``; ``ijk_to_ras`` is the 4 x 4
matrix that maps a voxel index (i, j, k, 1) to RAS millimetres, so spacing, origin and an
oblique direction are all in one place and cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


def make_ijk_to_ras(spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3)) -> np.ndarray:
    """4 x 4 IJK-to-RAS from spacing (i, j, k) mm, origin (RAS mm) and a 3 x 3 direction
    whose columns are the RAS unit vectors of the i, j and k axes."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(direction) * np.asarray(spacing)  # column n scaled by spacing[n]
    matrix[:3, 3] = origin
    return matrix


# eq=False: the generated __eq__ would compare arrays (ValueError: truth value ambiguous) and
# the generated __hash__ would hash them (TypeError); a Volume is compared by identity.
@dataclass(frozen=True, eq=False)
class Volume:
    """array: (K, J, I) voxels; ijk_to_ras: 4 x 4 float64."""

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "ijk_to_ras", np.asarray(self.ijk_to_ras, dtype=np.float64))
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError("ijk_to_ras must be a 4 x 4 matrix")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """3 x 3 whose columns are the RAS unit vectors of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel (0, 0, 0) in mm."""
        return self.ijk_to_ras[:3, 3].copy()

    def with_array(self, array: np.ndarray) -> "Volume":
        """Another voxel array on exactly this grid."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return Volume(array, self.ijk_to_ras)

    def slab(self, k_start: int, k_stop: int) -> "Volume":
        """Slices k_start..k_stop-1 as a volume that keeps their physical position."""
        shift = np.eye(4)
        shift[2, 3] = k_start
        return Volume(self.array[k_start:k_stop], self.ijk_to_ras @ shift)

    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous voxel indices (i, j, k) -> (N, 3) RAS mm."""
        ijk = np.atleast_2d(ijk)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        """(N, 3) RAS mm -> (N, 3) continuous voxel indices (i, j, k)."""
        ras = np.atleast_2d(ras)
        inverse = np.linalg.inv(self.ijk_to_ras)
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def corners_ras(self) -> np.ndarray:
        """(8, 3) RAS positions of the centres of the eight corner voxels."""
        k, j, i = (n - 1 for n in self.array.shape[:3])
        ijk = np.array([[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)])
        return self.ijk_to_ras_points(ijk)


def check_spacing(spacing, what: str) -> None:
    """Refuse a voxel size of 0 (or negative, or not a number) along any axis."""
    spacing = np.asarray(spacing, dtype=np.float64)
    bad = ~(np.isfinite(spacing) & (spacing >= 1e-6))
    if bad.any():
        axis = "IJK"[int(np.flatnonzero(bad)[0])]
        raise InputError(f"The {what} has a voxel size of {spacing[bad][0]:g} mm along its {axis} axis "
                         f"(spacing {' x '.join(f'{s:g}' for s in spacing)} mm); set the spacing "
                         "(Volumes module, Volume Information) or re-export the image.")


def check_geometry(ijk_to_ras: np.ndarray, what: str) -> None:
    """Refuse a voxel grid that no output could keep exactly: non-finite numbers, a zero voxel
    size, or axes that are not perpendicular (a sheared grid).

    Sheared grids are refused rather than resampled: NIfTI's orientation fields and the
    network's in-plane resampling both assume perpendicular axes, so any output of such a grid
    would lie elsewhere than the input (tens of mm at the corners).
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"The {what} has an invalid position in space (its voxel-to-RAS matrix holds "
                         "numbers that are not finite); re-export the image.")
    axes = matrix[:3, :3]  # pragma: no mutate (the last row of an IJK-to-RAS matrix is 0 0 0 1)
    spacing = np.linalg.norm(axes, axis=0)
    check_spacing(spacing, what)
    direction = axes / spacing
    gram = direction.T @ direction
    off = np.abs(gram - np.eye(3))
    if off.max() > 1e-4:  # pragma: no mutate (> or >= differ only at exactly the tolerance)
        cosine = np.abs(gram[~np.eye(3, dtype=bool)]).max()
        angle = np.degrees(np.arcsin(min(1.0, cosine)))
        raise InputError(
            f"The {what}'s voxel axes are not perpendicular (sheared by {angle:.1f} degrees, as in a "
            "gantry-tilted CT stored without correction); resample it onto a regular grid first "
            "(Slicer: Resample Scalar/Vector/DWI Volume, or 'Harden transform'; or re-export with "
            "gantry-tilt correction).")


def check_scalar_volume(array: np.ndarray, what: str, min_size: tuple[int, int, int] = (1, 8, 8),
                        max_voxels: int = 2_000_000_000) -> None:
    """Refuse arrays no model here can use, with a message that names the problem.

    min_size is the smallest accepted (K, J, I).
    """
    # (K, J, I, 3 or 4) uint8 is how colour images arrive; other 4D arrays are series.
    if array.ndim == 4 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        raise InputError(f"The {what} is a colour (RGB) image; a grey-scale scan is needed.")
    if array.ndim == 4:
        raise InputError(
            f"The {what} has 4 dimensions {array.shape} (a time series or several volumes in one "
            "file); choose a single 3D volume, e.g. one phase of the series.")
    if array.ndim != 3:
        raise InputError(f"The {what} has {array.ndim} dimension(s); a 3D volume is needed.")
    if array.size == 0:
        raise InputError(f"The {what} is empty (shape {array.shape}).")
    if array.size > max_voxels:
        raise InputError(
            f"The {what} has {array.size:,} voxels, more than the {max_voxels:,} this tool accepts; "
            "crop it to the abdomen first (Crop Volume module).")
    if any(n < m for n, m in zip(array.shape, min_size)):
        raise InputError(
            f"The {what} is too small ({array.shape[2]} x {array.shape[1]} x {array.shape[0]} voxels); "
            f"at least {min_size[2]} x {min_size[1]} x {min_size[0]} are needed.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"The {what} has voxel type {array.dtype}; a real-valued scan is needed.")
    if np.issubdtype(array.dtype, np.floating):  # pragma: no mutate (integers are always finite)
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(
                f"The {what} contains {bad:,} voxels that are not numbers (NaN or infinite); "
                "fix or re-export the image.")
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(f"The {what} has the same value ({low}) everywhere: there is no image in it.")
