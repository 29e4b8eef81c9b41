"""From a T1/T2 pair to the 2 x 192 x 192 input of the IPMN ViT, and back to voxels.

One family of functions shared by inference and training, so both see identical inputs:

- which slices: `central_window` (inference) and `slice_window_starts` (training), 9 consecutive
  axial slices, the last one repeated when fewer exist;
- where: `crop_box_for_region` turns a region in RAS into a voxel box of the canonical axial T2
  grid, `crop_box_stack` resizes every slice of the box to 64 x 64 and keeps the physical
  position of each 64 x 64 pixel as an IJK-to-RAS matrix (`stack_grid`), which is what lets
  the attention map go back into the scan;
- intensities: `normalise_volume` maps one modality's crop stack to [0, 1], over the stack's
  own range or over the whole volume's (`NORMALISATIONS`);
- the pair: `plan_crop` (geometry checks, no pixels touched) then `crop_stacks` gives both
  normalised stacks, T1 sampled at the physical positions of T2's pixels;
- layout: `tile_grid` / `untile_grid` (3 x 3 tiles, row by row from the top left) and
  `make_input` (channel 0 = T1, channel 1 = T2);
- augmentation: `transform_tiles` flips / rotates every 64 x 64 tile in place (training
  augmentation and test-time augmentation use this one function).

Conventions chosen here (model cards record them: `INPUT_FORMAT`):

- Resizing a crop of n voxels to 64 pixels maps the first and last voxel centres onto the
  first and last pixel centres ("align corners"). Every pixel then lies inside the box, so
  both directions (scan -> tiles and heat map -> scan) sample only real values, never the
  zero padding outside a grid.
- Normalisation to [0, 1] is min-max per modality, over one of two ranges (the card's
  "normalisation"):
  "crop_stack_min_max" (ours; the default, also for a card without the entry): the range of
  the crop stack (all slices of the crop box, after resizing). It does not depend on
  the field of view, on bright structures far from the pancreas, or on the empty margin a
  resampled T1 may have, and a training window sees the same scaling as the central window at
  inference.
  "volume_min_max" (the paper's): the range of each whole volume as passed in (after any
  pre-processing), T1 over its own grid's voxels. Normalising first and then cropping gives
  what cropping first and then mapping the crop through the volume's min-max gives (bilinear
  weights sum to 1, and every pixel is either inside a scan or 0), so the second is done and
  no whole-volume copy is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from PancreasAILib.errors import InputError
from PancreasAILib.orientation import Reorientation, axial_reorientation
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume

SLICES_PER_SAMPLE = 9
TILE_SIZE = 64
TILES_PER_SIDE = 3
GRID_SIZE = TILE_SIZE * TILES_PER_SIDE  # 192
#: How each modality is scaled to [0, 1] (min-max = the authors' z-score then min-max, see
#: `normalise_volume`): over its crop stack (ours, the default) or over its whole volume (the
#: paper's). See the module docstring.
NORMALISATIONS = ("crop_stack_min_max", "volume_min_max")
#: What a model file's card records under "preprocessing" so the input can be rebuilt exactly:
#: 9 slices of 64 x 64, resized bilinearly with aligned corners, each modality's crop stack
#: min-max normalised to [0, 1]; `input_format` gives it for another normalisation.
INPUT_FORMAT = {"slices_per_sample": SLICES_PER_SAMPLE, "tile_size": TILE_SIZE,
                "tile_resize": "bilinear_align_corners", "normalisation": NORMALISATIONS[0]}
#: Every training / test-time augmentation: (horizontal flip first?, quarter turns after).
DIHEDRAL_VIEWS: tuple[tuple[bool, int], ...] = tuple(
    (flip, turns) for flip in (False, True) for turns in range(4))

_BOUNDARY_TOLERANCE = 1e-6  # voxel units: a region edge this close to a voxel centre includes it


def _check_normalisation(normalisation: str) -> None:
    """ValueError unless `normalisation` is one of `NORMALISATIONS`."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"Unknown normalisation {normalisation!r}: use one of {', '.join(NORMALISATIONS)}.")


def input_format(normalisation: str = NORMALISATIONS[0]) -> dict:
    """A new copy of `INPUT_FORMAT` with `normalisation` (one of `NORMALISATIONS`): what a card
    records under "preprocessing" for a model trained on that input."""
    _check_normalisation(normalisation)
    return {**INPUT_FORMAT, "normalisation": normalisation}


# --- which slices ------------------------------------------------------------------------------

def window_indices(start: int, n_slices: int, k: int = SLICES_PER_SAMPLE) -> np.ndarray:
    """(k,) slice indices start, start + 1, ...; past the last slice the last one repeats."""
    if n_slices < 1:
        raise ValueError("a stack needs at least one slice")
    return np.minimum(np.arange(start, start + k), n_slices - 1)


def slice_window_starts(n_slices: int, k: int = SLICES_PER_SAMPLE) -> list[int]:
    """First slice of every window of k consecutive slices (training samples).

    A stack of fewer than k slices gives one window (start 0, last slice repeated).
    """
    if n_slices < 1:
        raise ValueError("a stack needs at least one slice")
    return list(range(max(1, n_slices - k + 1)))


def central_window(n_slices: int, k: int = SLICES_PER_SAMPLE) -> np.ndarray:
    """(k,) indices of the central k slices: start = n // 2 - k // 2 (n // 2 - 4 for k = 9)."""
    return window_indices(max(0, n_slices // 2 - k // 2), n_slices, k)


# --- where: region -> voxel box -> 64 x 64 stack ------------------------------------------------

@dataclass(frozen=True)
class RegionBox:
    """An axis-aligned box in patient space: centre_ras (3,) and size_mm (3,), both RAS mm."""

    center_ras: tuple[float, float, float]
    size_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        center = np.asarray(self.center_ras, float).reshape(3)
        size = np.asarray(self.size_mm, float).reshape(3)
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(size))):
            raise InputError("The region's centre or size is not a number.")
        if np.any(size <= 0):
            raise InputError(f"The region has no extent (size {size.tolist()} mm); "
                             "draw a box around the pancreas.")
        object.__setattr__(self, "center_ras", tuple(center.tolist()))
        object.__setattr__(self, "size_mm", tuple(size.tolist()))

    @classmethod
    def from_mask(cls, mask: Volume) -> "RegionBox":
        """Bounding box in RAS of the non-zero voxels of a mask (whole voxels, any direction)."""
        nonzero = np.argwhere(np.asarray(mask.array) != 0)
        if nonzero.size == 0:
            raise InputError("The mask used as region is empty: segment the pancreas first or draw a box.")
        # argwhere gives (k, j, i); whole voxels reach half a voxel beyond their centres
        low_ijk = nonzero.min(0)[::-1] - 0.5
        high_ijk = nonzero.max(0)[::-1] + 0.5
        corners = _box_corners(low_ijk, high_ijk)
        ras = mask.ijk_to_ras_points(corners)
        low, high = ras.min(0), ras.max(0)
        return cls(tuple((low + high) / 2), tuple(high - low))

    def corners_ras(self) -> np.ndarray:
        """(8, 3) RAS corners."""
        half = np.asarray(self.size_mm) / 2
        return _box_corners(np.asarray(self.center_ras) - half, np.asarray(self.center_ras) + half)


@dataclass(frozen=True)
class CropBox:
    """A box of voxels: lower (i, j, k) is the first voxel inside, upper (i, j, k) one past the last."""

    lower: tuple[int, int, int]
    upper: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxels along (i, j, k)."""
        return tuple(int(b - a) for a, b in zip(self.lower, self.upper))

    @property
    def array_slices(self) -> tuple[slice, slice, slice]:
        """Index a (K, J, I) array with this box."""
        return tuple(slice(self.lower[axis], self.upper[axis]) for axis in (2, 1, 0))

    def sub_grid(self, volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
        """(K, J, I) shape and IJK-to-RAS of the box's voxels as a grid of their own."""
        shift = np.eye(4)
        shift[:3, 3] = self.lower
        return self.size[::-1], volume.ijk_to_ras @ shift


def _box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1])
                     for z in (low[2], high[2])])


def crop_box_for_region(volume_canonical: Volume, region: RegionBox, what: str = "T2 volume") -> CropBox:
    """Voxels of `volume_canonical` whose centres lie inside `region`, clipped to the volume.

    For an oblique volume the region's corners are taken into voxel space and their bounding
    box is used. Raises InputError when no voxel is inside.
    """
    ijk = volume_canonical.ras_to_ijk_points(region.corners_ras())
    lower = np.ceil(ijk.min(0) - _BOUNDARY_TOLERANCE)
    upper = np.floor(ijk.max(0) + _BOUNDARY_TOLERANCE) + 1
    # a lower corner past the volume's end (or an upper one before its start) leaves the box empty
    lower, upper = np.maximum(lower, 0), np.minimum(upper, volume_canonical.shape[::-1])
    if np.any(upper <= lower):
        center = ", ".join(f"{v:.1f}" for v in region.center_ras)
        raise InputError(
            f"The region (centre RAS {center} mm, size {' x '.join(f'{v:.0f}' for v in region.size_mm)} mm) "
            f"lies outside the {what}: place it over the pancreas in this scan.")
    return CropBox(tuple(int(v) for v in lower), tuple(int(v) for v in upper))


def stack_grid(volume_canonical: Volume, box: CropBox,
               tile_size: int = TILE_SIZE) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K_box, tile_size, tile_size) and IJK-to-RAS of the resized crop stack.

    Stack pixel (p, q) of slice s sits at voxel (i0 + p (n_i - 1) / (tile_size - 1),
    j0 + q (n_j - 1) / (tile_size - 1), k0 + s) of `volume_canonical` (align corners).
    """
    n_i, n_j, n_k = box.size
    if min(n_i, n_j) < 2:
        raise InputError(f"The region covers only {n_i} x {n_j} voxels in the axial plane; more are needed.")
    stack_to_volume = np.eye(4)
    stack_to_volume[0, 0] = (n_i - 1) / (tile_size - 1)
    stack_to_volume[1, 1] = (n_j - 1) / (tile_size - 1)
    stack_to_volume[:3, 3] = box.lower
    return (n_k, tile_size, tile_size), volume_canonical.ijk_to_ras @ stack_to_volume


def _box_with_margin(volume: Volume, box: CropBox) -> Volume:
    """The box's voxels plus one voxel all round (edge values repeated at the volume border).

    Sampling exactly at the box's outer voxel centres can land a rounding error outside the
    array, where the resampler returns the fill value; the margin makes those points interior.
    """
    dims = volume.shape[::-1]
    take, pad = [], []
    for axis in (2, 1, 0):
        first, stop = box.lower[axis] - 1, box.upper[axis] + 1
        take.append(slice(max(first, 0), min(stop, dims[axis])))
        pad.append((max(0, -first), max(0, stop - dims[axis])))
    array = np.pad(np.asarray(volume.array)[tuple(take)], pad, mode="edge")
    shift = np.eye(4)
    shift[:3, 3] = np.asarray(box.lower) - 1
    return Volume(array, volume.ijk_to_ras @ shift)


def crop_box_stack(volume_canonical: Volume, box: CropBox, tile_size: int = TILE_SIZE) -> Volume:
    """Every slice of `box`, each resized bilinearly to tile_size x tile_size.

    Returns a float32 Volume (K_box, tile_size, tile_size) whose ijk_to_ras gives the RAS
    position of every pixel (see `stack_grid`).
    """
    shape, stack_ijk_to_ras = stack_grid(volume_canonical, box, tile_size)
    source = _box_with_margin(volume_canonical, box)
    return Volume(resample(source, shape, stack_ijk_to_ras), stack_ijk_to_ras)


# --- intensities -------------------------------------------------------------------------------

def normalise_volume(array: np.ndarray, valid: Optional[np.ndarray] = None,
                     intensity_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """One modality's crop stack -> float32 in [0, 1] (the authors' z-score then min-max).

    Min-max is unchanged by the z-score (an increasing affine map) in front of it, so only
    min-max is computed. `valid` (same shape, bool) marks the pixels that lie inside the scan
    (a T1 that does not cover the whole box); the others become 0. The range mapped onto
    [0, 1] is that of the valid pixels, or `intensity_range` (low, high) in the array's units
    when given (the whole volume's, for "volume_min_max"). A constant range gives zeros.
    """
    array = np.asarray(array, dtype=np.float64)
    valid = np.ones(array.shape, bool) if valid is None else np.asarray(valid, bool)
    if not valid.any():
        return np.zeros(array.shape, np.float32)
    if intensity_range is None:
        low, high = float(array[valid].min()), float(array[valid].max())
    else:
        low, high = (float(v) for v in intensity_range)
    if high <= low:
        return np.zeros(array.shape, np.float32)
    scaled = np.where(valid, (array - low) / (high - low), 0.0)
    if intensity_range is not None:
        # resampled float32 values may pass the volume's extremes by a rounding error
        np.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled.astype(np.float32)


def _volume_intensity_range(volume: Volume) -> tuple[float, float]:
    """(lowest, highest) voxel value of the whole volume, in its units, without copying it."""
    array = np.asarray(volume.array)
    return float(array.min()), float(array.max())


# --- the T1/T2 pair: plan the crop (geometry only), then cut both stacks ------------------------

MIN_AXIAL_SLICES = 3
MIN_REGION_VOXELS_IN_PLANE = 8
#: Fraction of the crop stack that must lie inside the T1 volume.
MIN_T1_COVERAGE = 0.75


@dataclass(frozen=True)
class CropPlan:
    """Where the model looks, decided from geometry alone (so bad input fails before any slow
    pre-processing): T2's reorientation to canonical axial order, the crop box on that
    canonical grid, the crop stack's grid, and which stack pixels T1 covers (None when T1 is
    on T2's grid, i.e. all of them)."""

    reorientation: Reorientation
    box: CropBox
    stack_shape: tuple[int, int, int]
    stack_ijk_to_ras: np.ndarray
    t1_inside: Optional[np.ndarray]


def same_grid(a: Volume, b: Volume) -> bool:
    return a.shape == b.shape and np.allclose(a.ijk_to_ras, b.ijk_to_ras, atol=1e-4)


def plan_crop(t1: Volume, t2: Volume, region: RegionBox) -> CropPlan:
    """The crop of `region` on T2's grid; InputError when T2 has too few axial slices, the
    region is outside T2 or too small in-plane, or mostly outside T1."""
    reorientation = axial_reorientation(t2)
    t2_canonical = reorientation.apply_volume(t2)
    if t2_canonical.shape[0] < MIN_AXIAL_SLICES:
        raise InputError(f"The T2 volume has only {t2_canonical.shape[0]} axial slice(s); an axial "
                         f"stack of at least {MIN_AXIAL_SLICES} slices is needed.")
    box = crop_box_for_region(t2_canonical, region)
    n_i, n_j, _ = box.size
    if min(n_i, n_j) < MIN_REGION_VOXELS_IN_PLANE:
        raise InputError(
            f"The region covers only {n_i} x {n_j} voxels of the T2 volume in the axial plane "
            f"(size {' x '.join(f'{v:.0f}' for v in region.size_mm)} mm); at least "
            f"{MIN_REGION_VOXELS_IN_PLANE} x {MIN_REGION_VOXELS_IN_PLANE} are needed: draw the box "
            "around the whole pancreas.")
    stack_shape, stack_ijk_to_ras = stack_grid(t2_canonical, box)
    t1_inside = None
    if not same_grid(t1, t2):
        # interpolating ones gives 1 wherever T1 has voxels and the fill value 0 elsewhere
        ones = Volume(np.ones(t1.shape, np.uint8), t1.ijk_to_ras)  # pragma: no mutate (uint8 only saves memory)
        t1_inside = resample(ones, stack_shape, stack_ijk_to_ras) > 0
        coverage = float(t1_inside.mean())
        if coverage < MIN_T1_COVERAGE:
            raise InputError(
                f"The region lies {'partly ' if coverage > 0 else ''}outside the T1 volume (only "
                f"{coverage:.0%} of it is covered): check that T1 covers the pancreas, or move the region.")
    return CropPlan(reorientation, box, stack_shape, stack_ijk_to_ras, t1_inside)


def crop_stacks(plan: CropPlan, t1: Volume, t2: Volume,
                normalisation: str = NORMALISATIONS[0]) -> tuple[np.ndarray, Volume]:
    """Both modalities' crop stacks, each normalised to [0, 1]: T1 (K, 64, 64) float32, and T2
    as a Volume whose ijk_to_ras places every pixel in patient space.

    T1 on T2's grid is cut exactly like T2; T1 on another grid is interpolated once, straight
    to the pixel positions of T2's stack (that is "T1 resampled onto T2's grid"), the pixels it
    does not cover being 0. `normalisation` (one of `NORMALISATIONS`, ValueError otherwise):
    "crop_stack_min_max" maps each stack's own range (T1's over the pixels it covers) onto
    [0, 1]; "volume_min_max" maps each whole volume's range, as the paper does (see the module
    docstring for why the two orders of cropping and normalising agree).
    """
    _check_normalisation(normalisation)
    t2_stack = crop_box_stack(plan.reorientation.apply_volume(t2), plan.box)
    if plan.t1_inside is None:
        t1_values = crop_box_stack(plan.reorientation.apply_volume(t1), plan.box).array
    else:
        t1_values = resample(t1, plan.stack_shape, plan.stack_ijk_to_ras)
    t1_range = t2_range = None
    if normalisation == "volume_min_max":
        t1_range, t2_range = _volume_intensity_range(t1), _volume_intensity_range(t2)
    return (normalise_volume(t1_values, plan.t1_inside, t1_range),
            t2_stack.with_array(normalise_volume(t2_stack.array, intensity_range=t2_range)))


# --- layout --------------------------------------------------------------------------------------

def tile_grid(slices: np.ndarray) -> np.ndarray:
    """(..., 9, t, t) -> (..., 3t, 3t): slice n goes to tile row n // 3, column n % 3."""
    slices = np.asarray(slices)
    *lead, n, t, t2 = slices.shape
    if n != TILES_PER_SIDE ** 2 or t != t2:
        raise ValueError(f"expected (..., 9, t, t) slices, got {slices.shape}")
    side = TILES_PER_SIDE
    grid = slices.reshape(*lead, side, side, t, t)
    grid = np.moveaxis(grid, -3, -2)  # (..., tile row, pixel row, tile column, pixel column)
    return grid.reshape(*lead, side * t, side * t)


def untile_grid(grid: np.ndarray) -> np.ndarray:
    """(..., 3t, 3t) -> (..., 9, t, t); the inverse of `tile_grid`."""
    grid = np.asarray(grid)
    *lead, rows, cols = grid.shape
    side = TILES_PER_SIDE
    if rows != cols or rows % side:
        raise ValueError(f"expected a square grid divisible into 3 x 3 tiles, got {grid.shape}")
    t = rows // side
    tiles = grid.reshape(*lead, side, t, side, t)
    tiles = np.moveaxis(tiles, -2, -3)  # (..., tile row, tile column, pixel row, pixel column)
    return tiles.reshape(*lead, side * side, t, t)


def make_input(t1_slices: np.ndarray, t2_slices: np.ndarray) -> np.ndarray:
    """Two (9, 64, 64) stacks in [0, 1] -> (2, 192, 192) float32; channel 0 = T1, 1 = T2."""
    t1_slices, t2_slices = np.asarray(t1_slices), np.asarray(t2_slices)
    expected = (SLICES_PER_SAMPLE, TILE_SIZE, TILE_SIZE)
    if t1_slices.shape != expected or t2_slices.shape != expected:
        raise ValueError(f"expected two {expected} stacks, got {t1_slices.shape} and {t2_slices.shape}")
    return np.stack([tile_grid(t1_slices), tile_grid(t2_slices)]).astype(np.float32)


# --- augmentation ------------------------------------------------------------------------------

def transform_tiles(grid: np.ndarray, flip: bool, quarter_turns: int) -> np.ndarray:
    """Flip (left-right) then rotate by quarter_turns x 90 degrees every tile of (..., 3t, 3t).

    Each tile is transformed in place, so tile n still holds slice n: this is the paper's
    augmentation (identical for all slices and both channels, which share the leading axes).
    Works for image grids (192 x 192) and patch maps (12 x 12) alike.
    """
    tiles = untile_grid(grid)
    if flip:
        tiles = tiles[..., ::-1]
    tiles = np.rot90(tiles, quarter_turns, axes=(-2, -1))
    return np.ascontiguousarray(tile_grid(tiles))


def undo_transform_tiles(grid: np.ndarray, flip: bool, quarter_turns: int) -> np.ndarray:
    """The inverse of `transform_tiles` with the same arguments."""
    tiles = np.rot90(untile_grid(grid), -quarter_turns, axes=(-2, -1))
    if flip:
        tiles = tiles[..., ::-1]
    return np.ascontiguousarray(tile_grid(tiles))


# --- back from patches to voxels ----------------------------------------------------------------

def patch_map_to_slices(patch_map: np.ndarray) -> np.ndarray:
    """(12, 12) map over ViT patches -> (9, 64, 64): each patch's value fills its 16 x 16 pixels.

    Blocks, not interpolation: one value per patch is all the attention says, and tiles
    (different slices) must not bleed into each other.
    """
    patch_map = np.asarray(patch_map)
    if patch_map.ndim != 2 or patch_map.shape[0] != patch_map.shape[1] or GRID_SIZE % len(patch_map):
        raise ValueError(f"expected a square patch map dividing {GRID_SIZE}, got {patch_map.shape}")
    factor = GRID_SIZE // len(patch_map)
    return untile_grid(np.kron(patch_map, np.ones((factor, factor))))


def heat_stack(slice_maps: np.ndarray, window: np.ndarray, n_stack_slices: int) -> np.ndarray:
    """(9, t, t) maps of the window's slices -> (K_box, t, t), zero on slices not shown.

    A slice that appears several times (short stacks repeat the last slice) gets the mean.
    """
    slice_maps = np.asarray(slice_maps)
    total = np.zeros((n_stack_slices, *slice_maps.shape[1:]))
    count = np.zeros(n_stack_slices)
    np.add.at(total, window, slice_maps)
    np.add.at(count, window, 1)
    return total / np.maximum(count, 1)[:, None, None]
