"""From a CT volume (or, with an MR model, a T2-weighted MRI) to a pancreas mask on the same voxel grid.

CT (any orientation, spacing, oblique direction) -> canonical axial (a view, no copy) ->
slabs of slices -> 256 x 256 slices scaled to [0, 1] -> MoNet -> probabilities back onto the
canonical slab -> threshold -> 3D clean-up -> original axis order. Work is done slab by slab,
so memory stays near the size of the input plus one uint8 mask; what belongs to the whole CT
(the intensity range of a "volume_min_max" card) is computed once, before the first slab.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.orientation import axial_reorientation, obliquity_degrees
from PancreasAILib.progress import CancelToken, ProgressCallback, no_progress
from PancreasAILib.engines import EngineChoice, NetworkRecipe, batch_sizes_for, build_engine, choose_engine
from PancreasAILib.resample import resampled_at_least
from PancreasAILib.volume import Volume, check_geometry, check_scalar_volume
from PancreasAILib.weights import ModelCard

from .registry import model_registry, monet_recipe
from .preprocessing import check_preprocessing, intensity_range, modality, model_slices

logger = logging.getLogger(__name__)

# Slices per slab: bounds memory for 512 x 512 x 600 CTs; the network sees `batch_size` at once.
SLAB_SLICES = 32
MIN_SIZE_KJI = (1, 32, 32)
# Labelling structure of 26-connectivity: voxels sharing a face, an edge or a corner are joined.
_NEIGHBOURS_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass
class SegmentationResult:
    """mask: uint8 (K, J, I) on the input's grid, 1 = pancreas; engine: which engine ran the
    network (`EngineChoice.label`), at `precision` ('fp32' or 'bf16')."""

    mask: Volume
    model_name: str
    threshold: float
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""
    precision: str = ""

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask.array))

    @property
    def volume_ml(self) -> float:
        return self.voxel_count * float(np.prod(self.mask.spacing)) / 1000.0


def check_ct(ct: Volume, modality: str = "CT") -> list[str]:
    """Refuse what cannot be an image of `modality` ("CT" or "MR"); return warnings for what
    looks unlike one."""
    what = f"{modality} volume"
    check_scalar_volume(ct.array, what, min_size=(1, 1, 1))
    check_geometry(ct.ijk_to_ras, what)
    axial_shape = axial_reorientation(ct).apply(ct.array).shape
    if any(n < m for n, m in zip(axial_shape, MIN_SIZE_KJI)):
        raise InputError(
            f"The {what} is too small: its axial slices are {axial_shape[2]} x {axial_shape[1]} "
            f"voxels; at least {MIN_SIZE_KJI[2]} x {MIN_SIZE_KJI[1]} are needed.")
    warnings = []
    low, high = float(ct.array.min()), float(ct.array.max())
    if modality == "CT" and (low > -500 or high < 0):
        warnings.append(
            f"The image values run from {low:g} to {high:g}, which does not look like a CT in "
            "Hounsfield units (air is about -1000): is it an MRI or a rescaled image? "
            "This MoNet was trained on CT only; the result is unlikely to be meaningful.")
    if modality == "MR" and low < -500:
        warnings.append(
            f"The image values run from {low:g} to {high:g}; values below -500 look like a CT in Hounsfield "
            "units, and this MoNet was trained on MRI only: the result is unlikely to be meaningful.")
    angle = obliquity_degrees(ct)
    if angle > 20:  # pragma: no mutate (> and >= differ only at exactly 20 degrees)
        warnings.append(
            f"The volume is tilted {angle:.0f} degrees from the patient axes; MoNet segments its "
            "nearest-axial slices, which differ from true axial ones at this tilt.")
    return warnings


def card_keeps_largest_component(card: ModelCard) -> bool:
    """The card's `postprocessing.keep_largest_component`; True when the card has none, as every
    card written before the key existed was used."""
    keep = card.data.get("postprocessing", {}).get("keep_largest_component", True)
    if not isinstance(keep, bool):
        raise ModelFileError(
            f"The model card {card.card_path.name} gives postprocessing.keep_largest_component as {keep!r}; "
            "it must be true or false. Correct the card.")
    return keep


def check_card(card: ModelCard) -> None:
    """Refuse, before any work, a card whose pre- or post-processing this version cannot repeat."""
    check_preprocessing(card.preprocessing)
    card_keeps_largest_component(card)


def segment_ct(ct: Volume, card: Optional[ModelCard] = None, *, threshold: Optional[float] = None,
               keep_largest_component: Optional[bool] = None, device: str = "auto", engine: str = "auto",
               precision: str = "auto", batch_size: Optional[int] = None,
               progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
               choice: Optional[EngineChoice] = None, recipe: Optional[NetworkRecipe] = None) -> SegmentationResult:
    """Segment the pancreas in `ct` ((K, J, I) Hounsfield units with its IJK-to-RAS; or an MR
    image when the card's pre-processing says "modality": "MR").

    threshold, keep_largest_component: None takes the card's post-processing (threshold 0.5
    and keeping the largest component when the card says nothing); engine / precision: see
    `PancreasAILib.engines.choose_engine` ('auto' picks the fastest allowed; precision 'fp32'
    forces the exact float32 path); batch_size: slices per network call (default: measured on
    this machine, see `engines.BatchSizes`); choice: an engine taken as it is, without
    `choose_engine`'s checks (the precision check and benchmarks); recipe: another network than
    the card's MoNet, through exactly the same pre- and post-processing (the evaluation of the
    paper's baselines).
    """
    started = time.perf_counter()
    cancel = cancel or CancelToken()
    card = card or model_registry().resolve(None)
    check_card(card)
    warnings = check_ct(ct, modality(card.preprocessing))
    for warning in warnings:
        logger.warning(warning)
    preprocessing = card.preprocessing
    if keep_largest_component is None:
        keep_largest_component = card_keeps_largest_component(card)
    threshold = float(card.data.get("postprocessing", {}).get("threshold", 0.5)
                      if threshold is None else threshold)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"The probability threshold must lie between 0 and 1 (got {threshold}).")
    choice = choice or choose_engine(card, engine, precision, device)
    progress(0.0, "Loading model")
    recipe = recipe or monet_recipe(card)
    network = build_engine(card, recipe, choice)
    batches = batch_sizes_for(recipe, choice, batch_size)

    reorientation = axial_reorientation(ct)
    canonical = reorientation.apply_volume(ct)
    intensity = intensity_range(canonical, preprocessing)
    n_slices = canonical.shape[0]
    canonical_mask = np.zeros(canonical.shape, dtype=np.uint8)
    for k0 in range(0, n_slices, SLAB_SLICES):
        cancel.raise_if_cancelled()
        progress(0.05 + 0.85 * k0 / n_slices, f"Segmenting slices {k0 + 1}-{min(k0 + SLAB_SLICES, n_slices)} of {n_slices}")
        slab = canonical.slab(k0, min(k0 + SLAB_SLICES, n_slices))
        slices, grid = model_slices(slab, preprocessing, intensity)
        probabilities = batches.run(slices[:, None], network)[0][:, 0]
        canonical_mask[k0:k0 + slab.shape[0]] = resampled_at_least(
            Volume(probabilities, grid), slab.shape, slab.ijk_to_ras, threshold)

    cancel.raise_if_cancelled()
    progress(0.92, "Cleaning up")
    if keep_largest_component:
        canonical_mask = largest_component(canonical_mask)
    if not canonical_mask.any():
        warnings.append("No pancreas was found in this volume (no voxel above the threshold).")
    mask = np.ascontiguousarray(reorientation.undo(canonical_mask))
    progress(1.0, "Done")
    return SegmentationResult(Volume(mask, ct.ijk_to_ras), card.name, threshold, warnings,
                              time.perf_counter() - started, network.choice.label, network.choice.precision)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary (K, J, I) mask (same shape and dtype).

    Labelling works inside the mask's bounding box: the int32 label image of a whole
    512 x 512 x 600 CT alone would take 630 MB.
    """
    if not mask.any():
        return mask
    extents = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    ends = [int(extent[-1]) + 1 for extent in extents]  # pragma: no mutate (a larger box labels alike)
    box = tuple(slice(int(extent[0]), end) for extent, end in zip(extents, ends))
    labels, count = ndimage.label(mask[box], structure=_NEIGHBOURS_26)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    kept = np.zeros_like(mask)
    kept[box] = labels == sizes.argmax()
    return kept
