"""Command line: segment the pancreas in CT files or DICOM folders, one or many.

    python -m PancreasSegMoNetLib segment INPUT... --output DIR     (also: pancreas-seg)
    python -m PancreasSegMoNetLib models                             list known models
    python -m PancreasSegMoNetLib check-precision CT... --model M    may M run in bf16? (card)

For each case it writes <case>_pancreas.seg.nrrd (opens in Slicer with name, colour and
terminology) and <case>_pancreas.nii.gz (label map, 1 = pancreas) on the input's grid, and
<case>_pancreas.json (model and its SHA256, engine and precision, threshold, warnings,
volume, seconds). A CT given as a DICOM series folder also gets <case>_pancreas.dcm, a DICOM
Segmentation (SEG) referring to the series' images, to send to a PACS (needs highdicom).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from PancreasAILib.cli_support import (ProgressPrinter, ProgressSink, add_run_options, case_name,
                                       engine_message, main_with)
from PancreasAILib.errors import OutputError, PancreasAIError
from PancreasAILib.output_files import all_or_nothing, prepare_output_folder, refuse_existing, user_path
from PancreasAILib.segmentation_file import SegmentInfo, write_segmentation

from .pancreas_segment import PANCREAS_TERMINOLOGY, SEGMENT_COLOR, SEGMENT_ID, SEGMENT_NAME

#: The issue's gate for reduced precision: every calibration case's mask this close to float32's.
CHECK_MIN_DICE = 0.99

PANCREAS_SEGMENT = SegmentInfo(1, SEGMENT_ID, SEGMENT_NAME, SEGMENT_COLOR, PANCREAS_TERMINOLOGY)


def output_paths(output_dir: Path, case: str, dicom_seg: bool = False) -> dict[str, Path]:
    """The files of one case: the only place that names them (the Slicer route reads them back);
    `dicom_seg` adds the DICOM SEG of a case read from a DICOM series."""
    paths = {"segmentation": output_dir / f"{case}_pancreas.seg.nrrd",
             "labelmap": output_dir / f"{case}_pancreas.nii.gz",
             "result": output_dir / f"{case}_pancreas.json"}
    if dicom_seg:
        paths["dicom_seg"] = output_dir / f"{case}_pancreas.dcm"
    return paths


def result_record(result, card, case: str, source: Optional[Path] = None,
                  dicom_seg: Optional[Path] = None) -> dict:
    """What `<case>_pancreas.json` holds: everything about the result but the voxels, and the
    CT it came from (`input`, absolute), which a review (PancreasAILib.review) shows under it;
    `dicom_seg`, the DICOM SEG's file name, when one was written beside it."""
    return {"case": case, **({"input": str(user_path(source))} if source is not None else {}),
            **({"dicom_seg": Path(dicom_seg).name} if dicom_seg is not None else {}),
            "model": card.name, "model_sha256": card.sha256,
            "engine": result.engine, "precision": result.precision, "threshold": result.threshold,
            "warnings": list(result.warnings), "voxel_count": result.voxel_count,
            "volume_ml": round(result.volume_ml, 3), "seconds": round(result.seconds, 3)}


def read_result_record(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def segment_files(inputs: list[Path], output_dir: Path, model=None, device: str = "auto",
                  threshold=None, keep_largest_component: Optional[bool] = None, overwrite: bool = False,
                  progress_format: str = "bar", sink: Optional[ProgressSink] = None,
                  engine: str = "auto", precision: str = "auto", batch_size: Optional[int] = None) -> int:
    """Segment every input; returns the number of cases that failed. A result that cannot be
    written (full disk, another run's file) stops the batch with `OutputError`. Progress and
    messages go to `sink` when given (a run in this process), else as `progress_format` says.
    threshold, keep_largest_component: None takes the model card's post-processing."""
    from PancreasAILib.dicom_seg import dicom_seg_unavailable
    from PancreasAILib.engines import choose_engine
    from PancreasAILib.volume_io import read_volume, write_volume

    from .registry import model_registry
    from .segmentation import check_card, segment_ct

    output_dir = prepare_output_folder(output_dir)
    printer = ProgressPrinter(len(inputs), progress_format, sink)
    card = model_registry().resolve(model, progress=printer)
    check_card(card)  # a card this version cannot follow: said once, not per case
    # no PyTorch, no GPU, no OpenVINO, or bf16 not allowed: said once, not per case
    choice = choose_engine(card, engine, precision, device)
    printer.message(f"Model: {card.name}. {card.intended_use}".strip())
    printer.message(engine_message(choice))
    no_dicom_seg = dicom_seg_unavailable() if any(path.is_dir() for path in inputs) else ""
    if no_dicom_seg:  # the other files are complete without it
        printer.message(f"warning: no DICOM SEG (.dcm) for the DICOM series: {no_dicom_seg}")
    failures = 0
    for index, path in enumerate(inputs):
        name = case_name(path)
        printer.start_case(index, name)
        paths = output_paths(output_dir, name, dicom_seg=path.is_dir() and not no_dicom_seg)
        try:
            refuse_existing(list(paths.values()), overwrite)
            ct = read_volume(path)
            result = segment_ct(ct, card, threshold=threshold, keep_largest_component=keep_largest_component,
                                device=choice.device, engine=choice.engine, precision=choice.precision,
                                batch_size=batch_size, progress=printer)
            dicom_seg = None
            if "dicom_seg" in paths:
                dicom_seg = _dicom_seg_or_warning(result.mask, path, card, name, printer)
                if dicom_seg is None:
                    paths.pop("dicom_seg")
            with all_or_nothing(list(paths.values()), overwrite) as temporary:
                temp = dict(zip(paths, temporary))
                write_segmentation(result.mask, temp["segmentation"], [PANCREAS_SEGMENT])
                write_volume(result.mask, temp["labelmap"])
                if dicom_seg is not None:
                    dicom_seg.save_as(temp["dicom_seg"])
                record = result_record(result, card, name, path, paths.get("dicom_seg"))
                temp["result"].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
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


def _dicom_seg_or_warning(mask, series_folder: Path, card, name: str, printer: ProgressPrinter):
    """The case's DICOM SEG, or None with a warning: a series the SEG cannot refer to slice by
    slice spoils only the SEG, not the segmentation."""
    from PancreasAILib.dicom_seg import dicom_segmentation

    try:
        return dicom_segmentation(mask, series_folder, PANCREAS_SEGMENT, card)
    except PancreasAIError as error:
        printer.message(f"{name}: warning: {error}")
        return None


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
    largest = segment.add_mutually_exclusive_group()
    largest.add_argument("--largest-component", action="store_true",
                         help="keep only the largest connected piece (default: as the model card says; "
                              "a card that says nothing keeps only the largest)")
    largest.add_argument("--no-largest-component", action="store_true",
                         help="keep every connected piece, not only the largest")
    segment.add_argument("--batch-size", type=int,
                         help="slices per network call (default: the fastest, measured once on this machine)")
    check = commands.add_parser(
        "check-precision", help="compare bf16 with float32 on calibration CTs and record the result in "
                                "the model card (bf16 is used only for weights that passed)")
    check.add_argument("inputs", nargs="+", help="calibration CTs: files, folders of them, or DICOM series folders")
    check.add_argument("--model", help="registry name or .safetensors path (default: first in registry)")
    check.add_argument("--precision", default="bf16", choices=["bf16"], help="the reduced precision to check")
    check.add_argument("--min-dice", type=float, default=CHECK_MIN_DICE,
                       help=f"the mask Dice every case must reach (default {CHECK_MIN_DICE})")
    check.add_argument("--progress-format", choices=["bar", "json"], default="bar")
    commands.add_parser("models", help="list the known models and where they are")
    return parser


def main(argv: list[str] | None = None, sink: Optional[ProgressSink] = None) -> int:
    """The shell's entry point; with `sink`, a run in this process (see `main_with`)."""
    from .registry import model_registry

    return main_with(build_parser(), _run, model_registry, argv, sink)


def largest_component_choice(args) -> Optional[bool]:
    """--largest-component: True, --no-largest-component: False, neither: None (the card's)."""
    if args.no_largest_component:
        return False
    return True if args.largest_component else None


def _run(args, sink: Optional[ProgressSink] = None) -> int:
    if args.command == "check-precision":
        from .precision_check import check_precision

        record = check_precision(expand_inputs(args.inputs), args.model, args.precision, args.min_dice, sink,
                                 args.progress_format)
        return 0 if record["passed"] else 1
    failures = segment_files(
        expand_inputs(args.inputs), args.output, args.model, args.device, args.threshold,
        largest_component_choice(args), args.overwrite, args.progress_format, sink,
        args.engine, args.precision, args.batch_size)
    return 1 if failures else 0
