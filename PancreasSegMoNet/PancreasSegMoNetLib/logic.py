"""The one route from a CT volume node to its "Pancreas" segment, for a click, a console call and
a script alike: the CT is written into a work folder, the command line's work (cli.py) runs on
it, in this process or in a separate one (the runner decides), and its files come back into the
scene. Every route therefore gives the same `SegmentationOutcome`, node attributes and files.

    segment(volume_node)                          blocking, in this process by default
    start_segmentation(runner, volume_node, ...)  returns the running task at once
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PancreasAILib.errors import InputError
from PancreasAILib.progress import CancelToken, ProgressCallback
from PancreasAILib.route import cancellable, new_work_folder, run_to_end, start_then_import
from PancreasAILib.scene import export_volume_node

PACKAGE = "PancreasSegMoNetLib"
#: The module folder, on the PYTHONPATH of a background task.
MODULE_DIR = str(Path(__file__).resolve().parents[1])
CASE = "input"  # the work folder's CT file, and so the case name of its results

# Attributes of the segmentation node: which model made the segment, and what it warned about.
MODEL_ATTRIBUTE = "PancreasSegMoNet.Model"
MODEL_SHA256_ATTRIBUTE = "PancreasSegMoNet.ModelSHA256"
WARNINGS_ATTRIBUTE = "PancreasSegMoNet.Warnings"  # one warning per line
ENGINE_ATTRIBUTE = "PancreasSegMoNet.Engine"  # e.g. "openvino 2026.4.1 fp32 cpu"
PRECISION_ATTRIBUTE = "PancreasSegMoNet.Precision"  # "fp32" or "bf16"


@dataclass
class SegmentationOutcome:
    """What a segmentation gives, whatever route it took."""

    segmentation_node: object
    model_name: str
    model_sha256: str
    threshold: float
    warnings: list[str]
    voxel_count: int
    volume_ml: float
    seconds: float  # the computation, without writing and reading the work files
    engine: str  # which engine ran the network (`EngineChoice.label`)
    precision: str  # "fp32" or "bf16"


def segmentation_arguments(input_path: str, output_dir: str, model: Optional[str], device: str,
                           threshold: Optional[float], keep_largest_component: Optional[bool],
                           precision: str = "auto", engine: str = "auto") -> list[str]:
    """Command-line arguments of `python -m PancreasSegMoNetLib` for one CT file."""
    arguments = ["segment", str(input_path), "--output", str(output_dir), "--device", device,
                 "--engine", engine, "--precision", precision, "--progress-format", "json"]
    if model:
        arguments += ["--model", str(model)]
    if threshold is not None:
        arguments += ["--threshold", repr(float(threshold))]
    if keep_largest_component is not None:  # None: as the model card says
        arguments.append("--largest-component" if keep_largest_component else "--no-largest-component")
    return arguments


def start_segmentation(runner, volume_node, segmentation_node=None, model: Optional[str] = None,
                       device: str = "auto", threshold: Optional[float] = None,
                       keep_largest_component: bool = True, on_progress: Optional[ProgressCallback] = None,
                       on_finished: Optional[Callable] = None, precision: str = "auto", engine: str = "auto"):
    """Start segmenting `volume_node` with `runner` and return the task (`task.cancel()` stops it).

    on_finished(outcome, error_message) is called once at the end: (SegmentationOutcome, "") on
    success; (None, reason) on failure; (None, "") when cancelled. The scene changes only on
    success: the "Pancreas" segment of `segmentation_node` (None: a new segmentation beside
    the CT) is replaced, and nothing else. precision 'fp32' forces the exact float32 path;
    'auto' allows bf16 where the CPU and the model card allow it (`PancreasAILib.engines`).
    """
    with new_work_folder("PancreasSegMoNet") as work_folder:
        input_path = export_volume_node(volume_node, work_folder / f"{CASE}.nrrd", "CT volume")
        output_dir = work_folder / "output"
        arguments = segmentation_arguments(input_path, output_dir, model, device, threshold,
                                           keep_largest_component, precision, engine)
        return start_then_import(
            runner, PACKAGE, arguments, [MODULE_DIR], work_folder,
            lambda: import_segmentation(volume_node, output_dir, CASE, segmentation_node),
            on_progress=on_progress, on_finished=on_finished)


def segment(volume_node, segmentation_node=None, model: Optional[str] = None, device: str = "auto",
            threshold: Optional[float] = None, keep_largest_component: bool = True,
            progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
            runner=None, precision: str = "auto", engine: str = "auto") -> SegmentationOutcome:
    """`start_segmentation` run to its end (in this process unless `runner` says otherwise).
    Raises `route.TaskFailed` with the reason, or `OperationCancelled` (scene unchanged)."""
    from PancreasAILib.runners import InProcessRunner

    return run_to_end(lambda finished: start_segmentation(
        runner or InProcessRunner(), volume_node, segmentation_node, model, device, threshold,
        keep_largest_component, on_progress=cancellable(progress, cancel), on_finished=finished,
        precision=precision, engine=engine))


def import_segmentation(volume_node, output_dir: Path, case: str, segmentation_node=None) -> SegmentationOutcome:
    """Put what the command line wrote for `case` into the scene (see `start_segmentation`)."""
    from .cli import output_paths, read_result_record
    from .pancreas_segment import import_mask_file

    if volume_node.GetScene() is None:
        raise InputError("The CT volume was removed from the scene during the segmentation.")
    if segmentation_node is not None and segmentation_node.GetScene() is None:
        raise InputError("The output segmentation was removed from the scene during the segmentation.")
    paths = output_paths(Path(output_dir), case)
    record = read_result_record(paths["result"])
    node = import_mask_file(volume_node, paths["labelmap"], segmentation_node)
    node.SetAttribute(MODEL_ATTRIBUTE, record["model"])
    node.SetAttribute(MODEL_SHA256_ATTRIBUTE, record["model_sha256"])
    node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(record["warnings"]))
    node.SetAttribute(ENGINE_ATTRIBUTE, record["engine"])
    node.SetAttribute(PRECISION_ATTRIBUTE, record["precision"])
    return SegmentationOutcome(
        segmentation_node=node, model_name=record["model"], model_sha256=record["model_sha256"],
        threshold=float(record["threshold"]), warnings=list(record["warnings"]),
        voxel_count=int(record["voxel_count"]), volume_ml=float(record["volume_ml"]),
        seconds=float(record["seconds"]), engine=record["engine"], precision=record["precision"])
