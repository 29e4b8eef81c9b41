"""The one route from a T1/T2 pair and a region node to an IPMN risk result in the scene, for a
click, a console call and a script alike: T1 and T2 are written into a work folder, the command
line's work (cli.py) runs on them, in this process or in a separate one (the runner decides),
and its files come back into the scene. Every route therefore gives the same
`AssessmentOutcome`, node attributes and files.

    assess(t1_node, t2_node, region_node)                   blocking, in this process by default
    start_assessment(runner, t1_node, t2_node, region_node) returns the running task at once
    assess(t1_node, t2_node, "automatic")                   the region found on T2 (automatic_region.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from PancreasAILib.errors import InputError
from PancreasAILib.progress import CancelToken, ProgressCallback
from PancreasAILib.route import cancellable, new_work_folder, run_to_end, start_then_import
from PancreasAILib.scene import export_volume_node

PACKAGE = "IPMNRiskLib"
#: The module folder, on the PYTHONPATH of a background task.
MODULE_DIR = str(Path(__file__).resolve().parents[1])
CASE = "assessment"  # the case name of the work folder's results


@dataclass
class AssessmentOutcome:
    """What an assessment gives, whatever route it took. For research use only."""

    risk_class: int
    class_name: str
    class_names: list[str]  # from the model card
    probabilities: np.ndarray
    spread: np.ndarray  # over the test-time views; 0 without them
    heat_map_node: object
    table_node: object
    grid_png: Optional[bytes]  # the 3 x 3 grid with the heat map, as PNG bytes
    model_name: str
    model_sha256: str
    engine: str  # what ran the network, e.g. 'openvino 2026.4.1 fp32 cpu'
    precision: str  # 'fp32' or 'bf16'
    explanation: str  # the heat map's method: 'rollout' (the paper's) or 'gradient-rollout'
    warnings: list[str]
    seconds: float
    summary: dict  # everything the command line's <case>_ipmn_result.json holds
    region_node: object = None  # an automatic region: its box as an ROI beside T2
    pancreas_node: object = None  # an automatic region: the pancreas it was found from, a segmentation


def assessment_arguments(t1_path: str, t2_path: str, center_ras, size_mm, output_dir: str,
                         model: Optional[str], device: str, tta: bool, engine: str = "auto",
                         precision: str = "auto", explanation: str = "rollout",
                         segmentation_model: Optional[str] = None) -> list[str]:
    """Command-line arguments of `python -m IPMNRiskLib` for one T1/T2 pair and a box (centre
    and size; both None: the automatic region). No scene file: the caller puts the result into
    its own scene (and PythonSlicer cannot write one). engine / precision: see
    `PancreasAILib.engines.choose_engine`; explanation: the heat map's method
    (`explanations.EXPLANATIONS`); segmentation_model: an automatic region's MR MoNet."""
    def triple(values) -> str:
        return ",".join(f"{float(value):.3f}" for value in values)

    # "--option=value": a centre such as "-12.5,40,7" would otherwise be read as an option.
    region = (["--roi-auto"] if center_ras is None else
              [f"--roi-center={triple(center_ras)}", f"--roi-size={triple(size_mm)}"])
    arguments = ["assess", "--t1", str(t1_path), "--t2", str(t2_path), *region, "--case", CASE,
                 "--output", str(output_dir), "--device", device, "--engine", engine, "--precision", precision,
                 "--explanation", explanation, "--progress-format", "json", "--no-scene"]
    if model:
        arguments += ["--model", str(model)]
    if segmentation_model:
        arguments += ["--segmentation-model", str(segmentation_model)]
    if not tta:
        arguments.append("--no-tta")
    return arguments


def start_assessment(runner, t1_node, t2_node, region_node, model: Optional[str] = None, device: str = "auto",
                     tta: bool = True, point_box_size_mm: float = 60.0,
                     on_progress: Optional[ProgressCallback] = None, on_finished: Optional[Callable] = None,
                     engine: str = "auto", precision: str = "auto", explanation: str = "rollout",
                     segmentation_model: Optional[str] = None):
    """Start assessing with `runner` and return the task (`task.cancel()` stops it).

    region_node - a markups ROI, a segmentation (the extent of its segments) or a markups point
      list (its first point centres a cube of `point_box_size_mm`); or "automatic"
      (`automatic_region.AUTOMATIC`): an MR MoNet (`segmentation_model`, default the first
      installed) segments the pancreas on T2, and the outcome's region_node and pancreas_node
      show the box and the mask.
    on_finished(outcome, error_message) is called once at the end: (AssessmentOutcome, "") on
    success; (None, reason) on failure; (None, "") when cancelled. The scene changes only on
    success (a heat map and a table beside T2).
    engine / precision: which inference engine runs the network, and at which precision
    ('auto': the fastest allowed, see `PancreasAILib.engines.choose_engine`).
    explanation: 'rollout' (attention rollout, the paper's) or 'gradient-rollout' (gradient-weighted,
    computed on PyTorch whatever the engine).
    """
    from .automatic_region import AUTOMATIC
    from .result_nodes import region_box_from_node

    if isinstance(region_node, str) and region_node == AUTOMATIC:
        center, size = None, None
    else:
        region = region_box_from_node(region_node, point_box_size_mm)
        center, size = region.center_ras, region.size_mm
    with new_work_folder("IPMNRisk") as work_folder:
        t1_path = export_volume_node(t1_node, work_folder / "t1.nrrd", "T1 volume")
        t2_path = export_volume_node(t2_node, work_folder / "t2.nrrd", "T2 volume")
        output_dir = work_folder / "output"
        arguments = assessment_arguments(t1_path, t2_path, center, size, output_dir, model, device, tta, engine,
                                         precision, explanation, segmentation_model)
        return start_then_import(runner, PACKAGE, arguments, [MODULE_DIR], work_folder,
                                 lambda: import_assessment(t2_node, output_dir, CASE),
                                 on_progress=on_progress, on_finished=on_finished)


def assess(t1_node, t2_node, region_node, model: Optional[str] = None, device: str = "auto", tta: bool = True,
           point_box_size_mm: float = 60.0, progress: Optional[ProgressCallback] = None,
           cancel: Optional[CancelToken] = None, runner=None, engine: str = "auto",
           precision: str = "auto", explanation: str = "rollout",
           segmentation_model: Optional[str] = None) -> AssessmentOutcome:
    """`start_assessment` run to its end (in this process unless `runner` says otherwise).
    Raises the input's problem (`InputError`...), `route.TaskFailed`, or `OperationCancelled`."""
    from PancreasAILib.runners import InProcessRunner

    return run_to_end(lambda finished: start_assessment(
        runner or InProcessRunner(), t1_node, t2_node, region_node, model, device, tta, point_box_size_mm,
        on_progress=cancellable(progress, cancel), on_finished=finished, engine=engine, precision=precision,
        explanation=explanation, segmentation_model=segmentation_model))


def import_assessment(t2_node, output_dir: Path, case: str) -> AssessmentOutcome:
    """Put what the command line wrote for `case` into the scene beside `t2_node`."""
    from PancreasAILib.scene import world_ijk_to_ras
    from PancreasAILib.volume_io import read_volume

    from .cli import output_paths
    from .result_nodes import add_assessment_to_scene
    from .summary import read_summary

    if t2_node.GetScene() is None:
        raise InputError("The T2 volume was removed from the scene during the assessment.")
    paths = output_paths(Path(output_dir), case)
    summary = read_summary(paths["result"])
    heat_map = read_volume(paths["heat_map"])
    dims = t2_node.GetImageData().GetDimensions()[::-1]
    if heat_map.shape != tuple(dims) or not np.allclose(heat_map.ijk_to_ras, world_ijk_to_ras(t2_node), atol=1e-3):
        raise InputError(f"The heat map in {output_dir} is not on the grid of '{t2_node.GetName()}'.")
    grid_png = paths["grid_png"].read_bytes() if paths["grid_png"].exists() else None
    pancreas = read_volume(paths["pancreas"]) if paths["pancreas"].exists() else None
    if pancreas is not None and (pancreas.shape != heat_map.shape or
                                 not np.allclose(pancreas.ijk_to_ras, heat_map.ijk_to_ras, atol=1e-3)):
        raise InputError(f"The automatic region's pancreas in {output_dir} is not on the grid of "
                         f"'{t2_node.GetName()}'.")
    nodes = add_assessment_to_scene(t2_node, heat_map, summary)
    region_node = pancreas_node = None
    if pancreas is not None:
        from .region_nodes import add_automatic_region_nodes

        try:
            region_node, pancreas_node = add_automatic_region_nodes(t2_node, summary, pancreas)
        except BaseException:
            for node in (nodes.heat_map_node, nodes.table_node):
                t2_node.GetScene().RemoveNode(node)
            raise
    return AssessmentOutcome(
        risk_class=int(summary["risk_class"]), class_name=summary["class_name"],
        class_names=list(summary["class_names"]), probabilities=np.asarray(summary["probabilities"]),
        spread=np.asarray(summary["spread"]), heat_map_node=nodes.heat_map_node, table_node=nodes.table_node,
        grid_png=grid_png, model_name=summary["model"], model_sha256=summary["model_sha256"],
        engine=summary.get("engine", ""), precision=summary.get("precision", ""),
        explanation=summary.get("explanation") or "rollout", warnings=list(summary["warnings"]),
        seconds=float(summary["seconds"]), summary=summary, region_node=region_node, pancreas_node=pancreas_node)
