"""Command line: segment the pancreas in CT files or DICOM folders, one or many.

    python -m PancreasSegMoNetLib segment INPUT... --output DIR     (also: pancreas-seg)
    python -m PancreasSegMoNetLib models                             list known models

For each case it writes <case>_pancreas.seg.nrrd (opens in Slicer with name, colour and
terminology) and <case>_pancreas.nii.gz (label map, 1 = pancreas) on the input's grid, and
<case>_pancreas.json (model and its SHA256, threshold, warnings, volume, seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from PancreasAILib.cli_support import ProgressPrinter, ProgressSink, add_run_options, case_name, main_with
from PancreasAILib.errors import OutputError, PancreasAIError
from PancreasAILib.output_files import all_or_nothing, prepare_output_folder, refuse_existing, user_path
from PancreasAILib.segmentation_file import SegmentInfo, write_segmentation

from .pancreas_segment import PANCREAS_TERMINOLOGY, SEGMENT_COLOR, SEGMENT_ID, SEGMENT_NAME

PANCREAS_SEGMENT = SegmentInfo(1, SEGMENT_ID, SEGMENT_NAME, SEGMENT_COLOR, PANCREAS_TERMINOLOGY)


def output_paths(output_dir: Path, case: str) -> dict[str, Path]:
    """The files of one case: the only place that names them (the Slicer route reads them back)."""
    return {"segmentation": output_dir / f"{case}_pancreas.seg.nrrd",
            "labelmap": output_dir / f"{case}_pancreas.nii.gz",
            "result": output_dir / f"{case}_pancreas.json"}


def result_record(result, card, case: str) -> dict:
    """What `<case>_pancreas.json` holds: everything about the result but the voxels."""
    return {"case": case, "model": card.name, "model_sha256": card.sha256, "threshold": result.threshold,
            "warnings": list(result.warnings), "voxel_count": result.voxel_count,
            "volume_ml": round(result.volume_ml, 3), "seconds": round(result.seconds, 3)}


def read_result_record(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def segment_files(inputs: list[Path], output_dir: Path, model=None, device: str = "auto",
                  threshold=None, keep_largest_component: bool = True, overwrite: bool = False,
                  progress_format: str = "bar", sink: Optional[ProgressSink] = None) -> int:
    """Segment every input; returns the number of cases that failed. A result that cannot be
    written (full disk, another run's file) stops the batch with `OutputError`. Progress and
    messages go to `sink` when given (a run in this process), else as `progress_format` says."""
    from PancreasAILib.volume_io import read_volume, write_volume

    from .registry import model_registry
    from .segmentation import segment_ct

    from PancreasAILib.devices import resolve_device

    output_dir = prepare_output_folder(output_dir)
    device = resolve_device(device)  # no PyTorch, or no GPU: say so once, not per case
    printer = ProgressPrinter(len(inputs), progress_format, sink)
    card = model_registry().resolve(model, progress=printer)
    printer.message(f"Model: {card.name}. {card.intended_use}".strip())
    failures = 0
    for index, path in enumerate(inputs):
        name = case_name(path)
        printer.start_case(index, name)
        paths = output_paths(output_dir, name)
        try:
            refuse_existing(list(paths.values()), overwrite)
            ct = read_volume(path)
            result = segment_ct(ct, card, threshold=threshold, keep_largest_component=keep_largest_component,
                                device=device, progress=printer)
            with all_or_nothing(list(paths.values()), overwrite) as (seg_temp, label_temp, result_temp):
                write_segmentation(result.mask, seg_temp, [PANCREAS_SEGMENT])
                write_volume(result.mask, label_temp)
                result_temp.write_text(json.dumps(result_record(result, card, name), indent=2) + "\n",
                                       encoding="utf-8")
            for warning in result.warnings:
                printer.message(f"{name}: warning: {warning}")
            printer.message(f"{name}: pancreas {result.volume_ml:.1f} ml ({result.voxel_count} voxels), "
                            f"{result.seconds:.1f} s -> {paths['segmentation']}")
        except OutputError:
            printer.close()
            raise
        except PancreasAIError as error:
            failures += 1
            printer.case_failed(name, error)
    printer.close()
    return failures


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given; a folder of volume files gives each; a folder of DICOM files is one case."""
    from PancreasAILib.volume_io import is_volume_file

    paths = []
    for item in items:
        path = user_path(item)
        if path.is_dir():
            volumes = sorted(p for p in path.iterdir() if is_volume_file(p))
            paths.extend(volumes if volumes else [path])
        else:
            paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pancreas-seg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="segment the pancreas in CT volumes")
    segment.add_argument("inputs", nargs="+", help="NIfTI/NRRD files, folders of them, or DICOM series folders")
    segment.add_argument("--output", "-o", required=True, type=Path, help="folder for the results")
    add_run_options(segment)
    segment.add_argument("--threshold", type=float, help="probability threshold (default: model card)")
    segment.add_argument("--no-largest-component", action="store_true",
                         help="keep every connected piece, not only the largest")
    commands.add_parser("models", help="list the known models and where they are")
    return parser


def main(argv: list[str] | None = None, sink: Optional[ProgressSink] = None) -> int:
    """The shell's entry point; with `sink`, a run in this process (see `main_with`)."""
    from .registry import model_registry

    return main_with(build_parser(), _run, model_registry, argv, sink)


def _run(args, sink: Optional[ProgressSink] = None) -> int:
    failures = segment_files(
        expand_inputs(args.inputs), args.output, args.model, args.device, args.threshold,
        not args.no_largest_component, args.overwrite, args.progress_format, sink)
    return 1 if failures else 0
