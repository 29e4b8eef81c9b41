"""Assess IPMN risk from a T1/T2 pair and a region around the pancreas.

T1 + T2 + region -> optional pre-processing (model card) -> T2 in canonical axial order ->
crop box = the region's voxels -> every box slice resized to 64 x 64 (T1 sampled at the same
physical pixel positions) -> normalised per modality (over the crop stack or the whole
volume, as the card says) -> central 9 slices -> 2 x 192 x 192 -> ViT (over the test-time
augmentations, as one batch through an inference engine: OpenVINO on the CPU, PyTorch on a
GPU, see `PancreasAILib.engines`) -> class probabilities and spread;
a 12 x 12 map (attention rollout, the paper's, or gradient-weighted attention rollout, which
needs gradients and so runs on PyTorch: `explanations`) -> back through the tiles and the crop
box into T2's own grid as a heat map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from PancreasAILib.engines import EngineChoice, build_engine, choose_engine
from PancreasAILib.errors import InputError
from PancreasAILib.picture import (PixelGeometry, draw_colour_bar, draw_edge_labels, draw_scale_bar, draw_text,
                                   label_font, slice_position_text)
from PancreasAILib.progress import ProgressCallback, no_progress
from PancreasAILib.resample import overlap_fraction, resample
from PancreasAILib.volume import Volume, check_geometry, check_scalar_volume
from PancreasAILib.weights import ModelCard

from .colormap import apply_colormap, colormap_table
from .explanations import EXPLANATION_TITLES, check_explanation
from .grids import (GRID_SIZE, TILE_SIZE, TILES_PER_SIDE, CropPlan, RegionBox, central_window,
                    crop_stacks, heat_stack, make_input, patch_map_to_slices, plan_crop)
from .network import TASKS, card_task
from .preprocessing import check_preprocessing, preprocess_volume
from .registry import ipmn_recipe
from .rollout import HEAD_FUSIONS
from .tta import gradient_rollout_map, predict

__all__ = ["Assessment", "ModelInput", "RegionBox", "assess", "model_input", "vit_engine", "render_grid_png",
           "RESEARCH_USE_NOTICE"]

RESEARCH_USE_NOTICE = (
    "For research use only. This risk class comes from a model, not from a clinical "
    "assessment; it is not a medical device and must not guide patient care.")


@dataclass(frozen=True)
class Assessment:
    """Result of `assess`.

    probabilities, spread: (C,) mean and std over the test-time views (spread 0 without TTA), C
    the number of classes of the card's task, in the order of class_names (3-class: normal,
    low-risk IPMN, high-risk IPMN; 2-class: no or low-risk IPMN, high-risk IPMN; `network.TASKS`);
    heat_map: float32 Volume on T2's grid, max 1, zero outside the crop box (None without
    rollout); grid_image: (192, 192, 2) the model's input (channel 0 T1, 1 T2);
    grid_heat: (192, 192) rollout per pixel of the grid, max 1 (None without rollout);
    tile_centers_ras: (9, 3) RAS mm of the centre of each tile's slice;
    warnings: what the user should know about the input (the result still stands);
    engine: what ran the network (`EngineChoice.label`, e.g. 'openvino 2026.4.1 fp32 cpu'),
    at `precision` ('fp32' or 'bf16');
    tile_ijk_to_ras: 4 x 4, where the tiles' pixels lie: pixel (row r, column c) of a tile cut
    from crop-stack slice s is at (i, j, k) = (c, r, s) (None: not known, the grid picture then
    has no orientation letters or scale bar);
    explanation: the method that made the map ('rollout' or 'gradient-rollout', see
    `explanations.EXPLANATIONS`), explanation_engine: what computed it (the gradient method
    runs on PyTorch in float32 even when `engine` is OpenVINO).
    """

    risk_class: int
    class_name: str
    probabilities: np.ndarray
    spread: np.ndarray
    heat_map: Optional[Volume]
    grid_image: np.ndarray
    grid_heat: Optional[np.ndarray]
    model_name: str
    research_use_notice: str
    class_names: tuple[str, ...]
    tile_centers_ras: np.ndarray
    views: int
    warnings: tuple[str, ...] = ()
    engine: str = ""
    precision: str = ""
    tile_ijk_to_ras: Optional[np.ndarray] = None
    explanation: str = "rollout"
    explanation_engine: str = ""


def _check_pair(t1: Volume, t2: Volume) -> None:
    check_scalar_volume(np.asarray(t1.array), "T1 volume", min_size=(1, 1, 1))
    check_scalar_volume(np.asarray(t2.array), "T2 volume", min_size=(1, 1, 1))
    check_geometry(t1.ijk_to_ras, "T1 volume")
    check_geometry(t2.ijk_to_ras, "T2 volume")
    same_data = np.shares_memory(t1.array, t2.array) or (
        t1.shape == t2.shape and np.allclose(t1.ijk_to_ras, t2.ijk_to_ras)
        and np.array_equal(t1.array, t2.array))
    if same_data:
        raise InputError("The same image was chosen as T1 and as T2: select the T1-weighted and the "
                         "T2-weighted series of one study.")
    if overlap_fraction(t1, t2) <= 0.0:
        raise InputError("The T1 and T2 volumes do not overlap in space: check that they come from "
                         "the same study of the same patient.")


def _class_names(card: ModelCard) -> tuple[str, ...]:
    """The class names of the card's task (`network.TASKS`); ModelFileError for any other list."""
    return TASKS[card_task(card)]


def _heat_map(patch_map: np.ndarray, window: np.ndarray, t2_stack: Volume, plan: CropPlan,
              t2: Volume) -> Volume:
    """(12, 12) rollout -> float32 Volume on T2's own grid, max 1, zero outside the crop box."""
    # only the box's slices are sampled below, so extra zero slices would change nothing
    stack = heat_stack(patch_map_to_slices(patch_map), window, t2_stack.shape[0])  # pragma: no mutate
    # One pixel of margin all round: box voxels on the stack's outer pixels stay interior
    # whatever the rounding of the grid transform (the margin weighs in at rounding level).
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    source = Volume(np.pad(stack, 1), t2_stack.ijk_to_ras @ shift)
    t2_canonical = plan.reorientation.apply_volume(t2)
    box_shape, box_ijk_to_ras = plan.box.sub_grid(t2_canonical)
    canonical = np.zeros(t2_canonical.shape, np.float32)
    canonical[plan.box.array_slices] = resample(source, box_shape, box_ijk_to_ras)
    array = np.ascontiguousarray(plan.reorientation.undo(canonical))
    peak = float(array.max())
    if peak > 0:
        array /= peak
    return Volume(array, t2.ijk_to_ras)


def _grid_heat(patch_map: np.ndarray) -> np.ndarray:
    factor = GRID_SIZE // len(patch_map)  # pragma: no mutate (an exact multiple: np.repeat takes 14.0 as 14)
    grid = np.repeat(np.repeat(patch_map, factor, 0), factor, 1)
    peak = float(grid.max())
    return grid / peak if peak > 0 else grid


def _tile_centers_ras(t2_stack: Volume, window: np.ndarray) -> np.ndarray:
    center = (TILE_SIZE - 1) / 2
    ijk = np.array([[center, center, float(s)] for s in window])
    return t2_stack.ijk_to_ras_points(ijk)


@dataclass(frozen=True)
class ModelInput:
    """What the network sees of one case, and what maps its answer back: x (2, 192, 192);
    window: the T2 stack's slices in the grid; t2: T2 after pre-processing (its own grid)."""

    x: np.ndarray
    window: np.ndarray
    t2_stack: Volume
    plan: CropPlan
    t2: Volume
    class_names: tuple[str, ...]


def model_input(t1: Volume, t2: Volume, region: RegionBox, card: ModelCard,
                checkpoint=lambda fraction, status: None) -> ModelInput:
    """Check the pair and the card, pre-process, crop and tile: everything before the network
    (shared by `assess` and the precision check, which runs one input through two engines)."""
    checkpoint(0.0, "Checking the T1 and T2 volumes and the region")
    class_names = _class_names(card)  # a card of no known task is refused before any work
    _check_pair(t1, t2)
    options = card.preprocessing
    check_preprocessing(options)
    plan = plan_crop(t1, t2, region)  # geometry first: pre-processing keeps grids, and is slow

    checkpoint(0.05, "Pre-processing T1")
    t1 = preprocess_volume(t1, options, "t1")
    checkpoint(0.25, "Pre-processing T2")
    t2 = preprocess_volume(t2, options, "t2")

    checkpoint(0.45, "Cropping the region")
    t1_stack, t2_stack = crop_stacks(plan, t1, t2, options.get("normalisation", "crop_stack_min_max"))
    window = central_window(t2_stack.shape[0])
    x = make_input(t1_stack[window], t2_stack.array[window])
    return ModelInput(x, window, t2_stack, plan, t2, class_names)


def vit_engine(card: ModelCard, choice: EngineChoice, rollout: bool = True, head_fusion: str = "mean"):
    """The card's ViT on the engine of `choice`: with rollout, giving each block's attention
    fused by `head_fusion`; without, the logits alone (timm's fused attention, faster)."""
    return build_engine(card, ipmn_recipe(card, head_fusion if rollout else None), choice)


def explanation_choice(choice: EngineChoice) -> EngineChoice:
    """Where the gradient-weighted rollout runs for an assessment on `choice`: PyTorch in float32
    on the same device (OpenVINO has no gradients; bf16 gradients would blur the relu's sign)."""
    return EngineChoice("pytorch", "fp32", choice.device)


def assess(t1: Volume, t2: Volume, region: RegionBox, card: ModelCard, *, tta: bool = True,
           rollout: bool = True, head_fusion: str = "mean", discard_ratio: float = 0.0,
           explanation: str = "rollout", device: str = "auto", engine: str = "auto", precision: str = "auto",
           progress: Optional[ProgressCallback] = None, cancel=None) -> Assessment:
    """Classify the IPMN risk in `region` of a T1/T2 pair; see the module docstring.

    t1, t2: Volumes (any grids that overlap; T1 is sampled at T2's positions);
    region: box around the pancreas in RAS; card: an IPMN ViT model card;
    device / engine / precision: see `PancreasAILib.engines.choose_engine` ('auto' picks the
    fastest allowed; precision 'fp32' forces the exact float32 path);
    explanation: 'rollout' (attention rollout, the paper's; head_fusion and discard_ratio apply)
    or 'gradient-rollout' (Chefer et al.: the probabilities come from the chosen engine, the map
    of the assessed class from the card's ViT on PyTorch, float32; `explanation_choice`);
    cancel: an object with raise_if_cancelled() (PancreasAILib.progress.CancelToken).
    """
    check_explanation(explanation)
    if explanation == "gradient-rollout" and (head_fusion != "mean" or discard_ratio != 0.0):
        raise ValueError("head_fusion and discard_ratio belong to attention rollout; gradient-weighted rollout "
                         "averages the heads itself and discards nothing: leave them at 'mean' and 0.")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError("discard_ratio must be in [0, 1)")
    report = progress or no_progress

    def checkpoint(fraction: float, status: str) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        report(fraction, status)

    prepared = model_input(t1, t2, region, card, checkpoint)
    checkpoint(0.55, "Loading the model")
    choice = choose_engine(card, engine, precision, device)
    attention_rollout = rollout and explanation == "rollout"
    network = vit_engine(card, choice, attention_rollout, head_fusion)
    checkpoint(0.65, "Classifying" + (" (8 test-time views)" if tta else ""))
    prediction = predict(network, prepared.x, tta=tta, rollout=attention_rollout, head_fusion=head_fusion,
                         discard_ratio=discard_ratio)
    risk_class = int(np.argmax(prediction.probabilities))
    patch_map, map_engine = prediction.patch_map, network.choice.label if attention_rollout else ""
    if rollout and explanation == "gradient-rollout":
        checkpoint(0.75, "Explaining the class (gradient-weighted attention rollout, PyTorch)")
        map_choice = explanation_choice(network.choice)
        patch_map = gradient_rollout_map(_torch_vit(card, map_choice.device), prepared.x, risk_class, tta=tta)
        map_engine = map_choice.label

    checkpoint(0.9, "Mapping attention back onto T2")
    heat_map = grid_heat = None
    if rollout:
        heat_map = _heat_map(patch_map, prepared.window, prepared.t2_stack, prepared.plan, prepared.t2)
        grid_heat = _grid_heat(patch_map)
    report(1.0, "Done")
    return Assessment(
        risk_class=risk_class, class_name=prepared.class_names[risk_class],
        probabilities=prediction.probabilities, spread=prediction.spread,
        heat_map=heat_map, grid_image=np.ascontiguousarray(np.moveaxis(prepared.x, 0, -1)),
        grid_heat=grid_heat, model_name=card.name, research_use_notice=RESEARCH_USE_NOTICE,
        class_names=prepared.class_names, tile_centers_ras=_tile_centers_ras(prepared.t2_stack, prepared.window),
        views=prediction.views, warnings=_coverage_warnings(prepared.plan), engine=network.choice.label,
        precision=network.choice.precision, tile_ijk_to_ras=prepared.t2_stack.ijk_to_ras,
        explanation=explanation if rollout else "", explanation_engine=map_engine)


def _torch_vit(card: ModelCard, device: str):
    """The card's ViT on PyTorch (float32, eval mode) on `device`, for gradients."""
    from .network import load_vit

    return load_vit(card).to(device)


def _coverage_warnings(plan: CropPlan) -> tuple[str, ...]:
    """A region that T1 covers only in part (plan_crop refuses less than MIN_T1_COVERAGE) leaves
    the T1 channel blank elsewhere, which the network never saw in training."""
    if plan.t1_inside is None:
        return ()
    coverage = float(plan.t1_inside.mean())
    if coverage >= 0.995:
        return ()
    return (f"The T1 volume covers only {coverage:.0%} of the region; the T1 channel is blank in the rest, "
            "unlike in training: check that T1 covers the whole pancreas, or move the region.",)


# --- the 3 x 3 grid as a picture -----------------------------------------------------------------

def heat_scale_title(explanation: str) -> str:
    """The colour bar's title: the method that made the map, and that the map is relative."""
    method = EXPLANATION_TITLES.get(explanation, EXPLANATION_TITLES["rollout"])
    return f"{method}, relative to its peak (not a probability)"


def grid_pixel_geometry(tile_ijk_to_ras: np.ndarray, scale: int) -> PixelGeometry:
    """How the pixels of every tile lie in the patient once each grid pixel is drawn as
    scale x scale picture pixels (the tiles are resized crops: one tile pixel spans the crop
    box's extent / (TILE_SIZE - 1), which `tile_ijk_to_ras` already holds)."""
    tile = PixelGeometry(row_step_ras=tile_ijk_to_ras[:3, 1], column_step_ras=tile_ijk_to_ras[:3, 0])
    return tile.resized((TILE_SIZE, TILE_SIZE), (TILE_SIZE * scale, TILE_SIZE * scale))


def tile_position_texts(assessment: Assessment) -> list[str]:
    """Each tile's slice position along its normal, e.g. 'S -12.5 mm', row by row from the top left.

    The crop stack is in canonical axial order, so its slices' normal is the patient axis
    nearest to S whatever the scan's orientation; without tile geometry that is assumed.
    """
    normal = (0.0, 0.0, 1.0) if assessment.tile_ijk_to_ras is None else assessment.tile_ijk_to_ras[:3, 2]
    return [slice_position_text(center, normal) for center in assessment.tile_centers_ras]


def render_grid_png(assessment: Assessment, path: str | Path, scale: int = 2,
                    max_opacity: float = 0.6) -> Path:
    """Write the T2 grid with the attention heat map blended in (inferno) as a PNG.

    The heat map's opacity grows with its value, so unattended tissue stays plain grey. Around
    the grid: orientation letters (all tiles share them) and a scale bar for the tiles' pixels;
    on each tile its slice position; below, a colour bar of the heat map and a caption with the
    class and the research-use notice.
    """
    from PIL import Image, ImageDraw

    grey = np.clip(assessment.grid_image[..., 1], 0.0, 1.0)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    if assessment.grid_heat is not None:
        opacity = max_opacity * np.clip(assessment.grid_heat, 0.0, 1.0)[..., None]
        rgb = (1.0 - opacity) * rgb + opacity * apply_colormap(assessment.grid_heat)
    side = GRID_SIZE * scale
    grid = np.repeat(np.repeat(np.round(rgb), scale, 0), scale, 1).astype(np.uint8)
    borders = np.arange(1, TILES_PER_SIDE) * (side // TILES_PER_SIDE)  # each tile is another slice
    grid[borders] = 90
    grid[:, borders] = 90

    margin, colour_bar_height, caption_height = 22, 50, 40
    heat_height = colour_bar_height if assessment.grid_heat is not None else 0
    canvas = Image.new("RGB", (side + 2 * margin, side + 2 * margin + heat_height + caption_height))
    canvas.paste(Image.fromarray(grid), (margin, margin))
    draw = ImageDraw.Draw(canvas)
    font, small_font, letter_font = label_font(13), label_font(11), label_font(15)
    box = (margin, margin, margin + side, margin + side)
    tile_side = side // TILES_PER_SIDE
    for n, text in enumerate(tile_position_texts(assessment)):
        row, column = divmod(n, TILES_PER_SIDE)
        draw_text(draw, (margin + column * tile_side + 3, margin + row * tile_side + 2), text, small_font)
    if assessment.tile_ijk_to_ras is not None:
        geometry = grid_pixel_geometry(assessment.tile_ijk_to_ras, scale)
        draw_edge_labels(draw, box, geometry.edge_labels(), letter_font, margin)
        # in the bottom-left corner of the margin: a vertical arm (pixels not square) rises beside the tiles
        draw_scale_bar(draw, (margin - 6, box[3] + margin // 2 + 3), geometry, tile_side - 8, font)
    y = box[3] + margin
    if assessment.grid_heat is not None:
        draw_colour_bar(canvas, (margin, y + 18, margin + side, y + 30),
                        np.round(colormap_table() * 255).astype(np.uint8), heat_scale_title(assessment.explanation),
                        "0 low", "1 high (the peak)", font)
        y += heat_height
    probability = assessment.probabilities[assessment.risk_class]
    draw_text(draw, (margin, y + 3), f"{assessment.class_name} (p = {probability:.2f}), {assessment.model_name}", font)
    draw_text(draw, (margin, y + 21), "For research use only", font, fill=(255, 200, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")  # pragma: no mutate: Pillow upper-cases the format name
    return path
