"""Command line: IPMN risk from T1/T2 pairs, one case or a CSV of cases.

    python -m IPMNRiskLib assess --t1 T1 --t2 T2 --roi-center=R,A,S --roi-size=X,Y,Z --output DIR
    python -m IPMNRiskLib assess --t1 T1 --t2 T2 --roi-mask PANCREAS.nii.gz --output DIR
    python -m IPMNRiskLib assess --t1 T1 --t2 T2 --roi-auto --output DIR   (region found on T2)
    python -m IPMNRiskLib batch cases.csv --output DIR        (also: ipmn-risk ...)
    python -m IPMNRiskLib check-precision --model MODEL --cases cases.csv

Per case it writes <case>_ipmn_result.json, <case>_ipmn_heatmap.nrrd (attention on T2's grid;
--explanation rollout, the paper's, or gradient-rollout; the result records which),
<case>_ipmn_grid.png (the 3 x 3 T2 grid with the map) and <case>_ipmn_scene.mrb (T1, T2, the
heat map, the region and a result table, for review in Slicer). T1 and T2 are NIfTI/NRRD files
or DICOM series folders, each on its own grid. The batch CSV has columns
case, t1, t2 and either roi_center + roi_size ("R,A,S" in mm) or roi_mask, or roi_mask
"automatic"; it writes results.csv. The automatic region (--roi-auto; in a batch, roi_mask
"automatic") is the box, 8 mm wider on every side, around the pancreas that an MR MoNet
(automatic_region.py) segments on T2; that mask is written as <case>_ipmn_pancreas.nrrd. Every result is for research use only; each records the engine and precision that
computed it. check-precision runs the cases of such a CSV in float32 and in bf16 and records in
the model card whether they agree, which bf16 needs before it is used (PancreasAILib.engines).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from PancreasAILib.cli_support import (ProgressPrinter, ProgressSink, add_run_options, case_name, engine_message,
                                       main_with)
from PancreasAILib.errors import InputError, OutputError, PancreasAIError
from PancreasAILib.output_files import all_or_nothing, prepare_output_folder, refuse_existing, user_path
from PancreasAILib.progress import ProgressCallback

from .automatic_region import segmentation_package
from .explanations import EXPLANATIONS
from .grids import RegionBox

#: The column word of each class of every task (`network.TASKS`). A results.csv has a probability
#: and a spread column per class of all tasks; a row fills those of its model's task and leaves the
#: others empty, so one table reads for both tasks and p_high_risk is always P(high-risk IPMN):
#: 3-class rows fill p_normal, p_low_risk, p_high_risk; 2-class rows p_no_or_low_risk, p_high_risk.
#: `task` says which; risk_class is the class's number within its task.
CLASS_COLUMN_WORDS = {"normal": "normal", "low-risk IPMN": "low_risk", "high-risk IPMN": "high_risk",
                      "no or low-risk IPMN": "no_or_low_risk"}
_WORDS = tuple(CLASS_COLUMN_WORDS.values())
RESULT_COLUMNS = ["case", "status", "task", "risk_class", "class_name", *(f"p_{w}" for w in _WORDS),
                  *(f"spread_{w}" for w in _WORDS), "model", "engine", "precision",
                  "explanation", "heat_map", "grid_png", "scene", "message"]
#: The precision check's criterion (the issue's): bf16 is allowed when it changes no class and
#: no class probability by more than this, on every case.
MAX_PROBABILITY_DIFFERENCE = 0.02
CRITERION = (f"the same class on every case and every class probability within {MAX_PROBABILITY_DIFFERENCE} "
             "of float32's (8 test-time views, attention rollout on, as assessments run)")


@dataclass(frozen=True)
class Case:
    name: str
    t1: Path
    t2: Path
    roi_center: Optional[tuple[float, float, float]] = None
    roi_size: Optional[tuple[float, float, float]] = None
    roi_mask: Optional[Path] = None
    roi_auto: bool = False

    def region(self) -> RegionBox:
        """The region the case gives (not the automatic one, which needs T2: `assess_case`)."""
        if self.roi_mask is not None:
            from PancreasAILib.volume_io import read_volume

            return RegionBox.from_mask(read_volume(self.roi_mask))
        if self.roi_center is None or self.roi_size is None:
            raise InputError(f"Case {self.name}: give the region as roi_center and roi_size, or as roi_mask.")
        return RegionBox(self.roi_center, self.roi_size)


def output_paths(output_dir: Path, case: str) -> dict[str, Path]:
    """The files of one case: the only place that names them (the Slicer route reads them back).
    "pancreas" (the automatic region's mask) is written only for an automatic region."""
    return {kind: output_dir / f"{case}_ipmn_{suffix}" for kind, suffix in
            (("result", "result.json"), ("heat_map", "heatmap.nrrd"), ("grid_png", "grid.png"),
             ("scene", "scene.mrb"), ("pancreas", "pancreas.nrrd"))}


def assess_case(case: Case, output_dir: Path, card, device: str = "cpu", tta: bool = True,
                write_scene: bool = True, overwrite: bool = False,
                progress: Optional[ProgressCallback] = None, engine: str = "auto",
                precision: str = "auto", explanation: str = "rollout",
                segmentation_model: Optional[str] = None) -> dict:
    """Assess one case and write its files (all or none); returns the summary. explanation: the
    heat map's method (`explanations.EXPLANATIONS`); segmentation_model: the MR MoNet of an
    automatic region (default: the first installed, `automatic_region.segmentation_card`)."""
    from PancreasAILib.volume_io import read_volume, write_volume

    from .inference import assess, render_grid_png
    from .summary import assessment_summary, write_summary

    paths = output_paths(output_dir, case.name)
    if not write_scene:
        paths.pop("scene")
    if not case.roi_auto:
        paths.pop("pancreas")
    refuse_existing(list(paths.values()), overwrite)
    t1, t2 = read_volume(case.t1), read_volume(case.t2)
    started = time.perf_counter()
    found = None
    if case.roi_auto:
        from .automatic_region import find_region

        found = find_region(t2, segmentation_model, device=device)
        region = found.region
    else:
        region = case.region()
    assessment = assess(t1, t2, region, card, tta=tta, device=device, engine=engine, precision=precision,
                        explanation=explanation, progress=progress)
    summary = assessment_summary(assessment, region, case.name, card, time.perf_counter() - started)
    if found is not None:
        summary["region"].update(found.record())
        summary["warnings"] = [*found.warnings, *summary["warnings"]]
    with all_or_nothing(list(paths.values()), overwrite) as temporary:
        temp = dict(zip(paths, temporary))
        if found is not None:
            write_volume(found.mask, temp["pancreas"])
        write_volume(assessment.heat_map, temp["heat_map"])
        render_grid_png(assessment, temp["grid_png"])
        if write_scene:
            write_review_scene(t1, t2, assessment.heat_map, summary, temp["scene"],
                               found.mask if found is not None else None)
        # the inputs, so that a review (PancreasAILib.review) can show them beside the result
        summary = {**summary, "t1": str(user_path(case.t1)), "t2": str(user_path(case.t2))}
        write_summary({**summary, **{k: str(v) for k, v in paths.items() if k != "result"}}, temp["result"])
    return {**summary, **{k: str(v) for k, v in paths.items()}}


def write_review_scene(t1, t2, heat_map, summary: dict, path: Path, pancreas=None) -> Path:
    """A Slicer scene for review: T1, T2, the heat map over T2, the region as an ROI, the table;
    with an automatic region, the pancreas mask it was found from as a segmentation."""
    from PancreasAILib.scene import save_scene_bundle

    from .result_nodes import build_review_scene

    scene = build_review_scene(t1, t2, heat_map, summary)
    if pancreas is not None:
        segmentation_package()
        from PancreasSegMoNetLib.pancreas_segment import apply_pancreas_mask

        apply_pancreas_mask(scene.GetFirstNodeByName("T2"), pancreas.array > 0)
    return save_scene_bundle(scene, path)


def read_cases_csv(path: Path) -> list[Case]:
    """Cases from a CSV; relative paths are taken relative to the CSV's folder."""
    path = user_path(path)
    base = path.parent
    if not path.is_file():
        raise InputError(f"The case list {path} does not exist.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"The case list {path} could not be read as a CSV table ({error}).") from error
    if not rows:
        raise InputError(f"{path} has no cases.")
    missing = {"t1", "t2"} - set(rows[0])
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; expected case, t1, t2, "
                         "and roi_center + roi_size or roi_mask.")
    cases = []
    for number, row in enumerate(rows, start=2):
        def path_of(key: str) -> Optional[Path]:
            value = (row.get(key) or "").strip()
            return user_path(base / os.path.expanduser(value)) if value else None  # "." named, not ""

        name = (row.get("case") or "").strip() or case_name(path_of("t2") or Path(f"case{number}"))
        automatic = (row.get("roi_mask") or "").strip().lower() == "automatic"
        try:
            cases.append(Case(name, path_of("t1"), path_of("t2"),
                              parse_triple(row.get("roi_center")), parse_triple(row.get("roi_size")),
                              None if automatic else path_of("roi_mask"), automatic))
        except ValueError as error:
            raise InputError(f"{path}, line {number} ({name}): {error}") from error
    return cases


def parse_triple(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    if text is None or not text.strip():
        return None
    values = [float(v) for v in text.replace(";", ",").split(",")]
    if len(values) != 3:
        raise ValueError(f"'{text}' is not three numbers R,A,S")
    return tuple(values)


def run_cases(cases: list[Case], output_dir: Path, model=None, device: str = "auto", tta: bool = True,
              write_scene: bool = True, overwrite: bool = False, progress_format: str = "bar",
              sink: Optional[ProgressSink] = None, engine: str = "auto", precision: str = "auto",
              explanation: str = "rollout", segmentation_model: Optional[str] = None) -> list[dict]:
    """Assess every case; one failing case does not stop the others, but a result that cannot be
    written (full disk, another run's file) stops the batch with `OutputError`. Returns one row
    per case. Progress and messages go to `sink` when given (a run in this process). The engine
    is chosen once (`engines.choose_engine`) and said once, with why a faster one was not."""
    from PancreasAILib.devices import resolve_device
    from PancreasAILib.engines import choose_engine

    from .registry import model_registry

    from .network import card_task

    output_dir = prepare_output_folder(output_dir)
    printer = ProgressPrinter(len(cases), progress_format, sink)
    card = model_registry().resolve(model, progress=printer)
    card_task(card)  # a card of no known task stops the batch once, before any case
    device = resolve_device(device)
    printer.message(f"Model: {card.name}. For research use only.")
    choice = choose_engine(card, engine, precision, device)
    printer.message(engine_message(choice))
    if explanation == "gradient-rollout" and choice.engine != "pytorch":
        from .inference import explanation_choice

        printer.message(f"The heat maps (gradient-weighted attention rollout) need gradients, which {choice.engine} "
                        f"does not give: PyTorch computes them ({explanation_choice(choice).label}).")
    if write_scene:
        from PancreasAILib.scene import scenes_unavailable

        reason = scenes_unavailable()
        if reason:  # the other files are complete without it
            printer.message(f"No review scenes (.mrb): {reason}.")
            write_scene = False
    rows = []
    for index, case in enumerate(cases):
        printer.start_case(index, case.name)
        try:
            result = assess_case(case, output_dir, card, choice.device, tta, write_scene, overwrite, printer,
                                 choice.engine, choice.precision, explanation, segmentation_model)
            probabilities, spread = result["probabilities"], result["spread"]
            rows.append({"case": case.name, "status": "ok", "risk_class": result["risk_class"],
                         "class_name": result["class_name"],
                         **probability_cells(result["class_names"], probabilities, spread),
                         "model": result["model"], "engine": result["engine"],
                         "precision": result["precision"], "explanation": result["explanation"],
                         "heat_map": result["heat_map"],
                         "grid_png": result["grid_png"], "scene": result.get("scene", ""), "message": ""})
            for warning in result["warnings"]:
                printer.message(f"{case.name}: warning: {warning}")
            printer.message(f"{case.name}: {result['class_name']} (p = {max(probabilities):.2f}; "
                            + ", ".join(f"{n} {p:.2f}+-{s:.2f}" for n, p, s in
                                        zip(result["class_names"], probabilities, spread)) + ")")
        except OutputError:
            printer.close()
            raise
        except PancreasAIError as error:
            rows.append({"case": case.name, "status": "failed", "message": str(error)})
            printer.case_failed(case.name, error)
    printer.close()
    return rows


def probability_cells(class_names, probabilities, spread) -> dict:
    """The results.csv cells of one result: task, and p_<class> / spread_<class> of each of its
    classes (see CLASS_COLUMN_WORDS; the other classes' cells stay empty)."""
    from .network import task_of_classes

    cells = {"task": task_of_classes(class_names, "The result")}
    for name, p, s in zip(class_names, probabilities, spread):
        cells.update({f"p_{CLASS_COLUMN_WORDS[name]}": f"{p:.4f}", f"spread_{CLASS_COLUMN_WORDS[name]}": f"{s:.4f}"})
    return cells


def write_results_csv(rows: list[dict], path: Path, overwrite: bool = False) -> Path:
    """The batch's table, written whole or not at all (an earlier table is kept unless overwrite).
    Its columns (RESULT_COLUMNS) read for models of either task: one probability and one spread
    column per class of both tasks, a row filling those of its own (see CLASS_COLUMN_WORDS)."""
    path = user_path(path)
    with all_or_nothing([path], overwrite) as (temporary,):
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=RESULT_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipmn-risk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("assess", help="assess one T1/T2 pair")
    one.add_argument("--t1", required=True, type=Path, help="NIfTI/NRRD file or DICOM series folder")
    one.add_argument("--t2", required=True, type=Path, help="NIfTI/NRRD file or DICOM series folder")
    one.add_argument("--roi-center", help="R,A,S of the box centre in mm (write --roi-center=-12,40,7)")
    one.add_argument("--roi-size", help="X,Y,Z box size in mm")
    one.add_argument("--roi-mask", type=Path, help="a mask (e.g. pancreas segmentation) whose extent is the region")
    one.add_argument("--roi-auto", action="store_true",
                     help="find the region automatically: an MR MoNet segments the pancreas on T2 and the box "
                          "around it is the region (demo weights: phantoms only)")
    one.add_argument("--case", help="case name for the output files (default: the T2 file's or folder's name)")
    batch = commands.add_parser("batch", help="assess every case of a CSV")
    batch.add_argument("csv", type=Path)
    for command in (one, batch):
        command.add_argument("--output", "-o", required=True, type=Path)
        add_run_options(command)
        command.add_argument("--no-tta", action="store_true", help="no test-time augmentation (8x faster)")
        command.add_argument("--no-scene", action="store_true", help="do not write the .mrb review scene")
        command.add_argument("--segmentation-model", metavar="MODEL",
                             help="the MR pancreas segmentation model of an automatic region (PancreasSegMoNet "
                                  "registry name or .safetensors path; default: the first MR model installed)")
        command.add_argument("--explanation", choices=EXPLANATIONS, default="rollout",
                             help="how the heat map is made: rollout (attention rollout, the paper's) or "
                                  "gradient-rollout (gradient-weighted attention rollout of the assessed class, "
                                  "Chefer et al. 2021; runs on PyTorch)")
    check = commands.add_parser("check-precision", help="run the cases of a CSV in float32 and in bf16 and "
                                "record in the model card whether they agree (bf16 is used only after a pass)")
    check.add_argument("--model", help="registry name or .safetensors path (default: first in registry)")
    check.add_argument("--cases", required=True, type=Path, help="a case list as for the batch command")
    check.add_argument("--precision", default="bf16", choices=["bf16"], help="the precision to check")
    check.add_argument("--progress-format", choices=["bar", "json"], default="bar")
    commands.add_parser("models", help="list the known models")
    return parser


def main(argv: list[str] | None = None, sink: Optional[ProgressSink] = None) -> int:
    """The shell's entry point; with `sink`, a run in this process (see `main_with`)."""
    from .registry import model_registry

    return main_with(build_parser(), _run, model_registry, argv, sink)


def _run(args, sink: Optional[ProgressSink] = None) -> int:
    if args.command == "check-precision":
        record = check_precision(read_cases_csv(args.cases), args.model, args.precision, args.progress_format, sink)
        return 0 if record["passed"] else 1
    if args.command == "assess":
        given = [args.roi_mask is not None, args.roi_center is not None or args.roi_size is not None, args.roi_auto]
        if sum(given) != 1 or (given[1] and (args.roi_center is None or args.roi_size is None)):
            raise InputError("Give the region one way: --roi-center and --roi-size, or --roi-mask, or --roi-auto.")
        try:
            cases = [Case(args.case or case_name(user_path(args.t2)), args.t1, args.t2, parse_triple(args.roi_center),
                          parse_triple(args.roi_size), args.roi_mask, args.roi_auto)]
        except ValueError as error:
            raise InputError(str(error)) from error
    else:
        cases = read_cases_csv(args.csv)
        refuse_existing([user_path(args.output) / "results.csv"], args.overwrite)
    rows = run_cases(cases, args.output, args.model, args.device, not args.no_tta, not args.no_scene,
                     args.overwrite, args.progress_format, sink, args.engine, args.precision, args.explanation,
                     args.segmentation_model)
    if args.command == "batch":
        path = write_results_csv(rows, user_path(args.output) / "results.csv", args.overwrite)
        print(f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} cases assessed; table: {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


# --- check-precision ------------------------------------------------------------------------------

def check_precision(cases: list[Case], model=None, precision: str = "bf16", progress_format: str = "bar",
                    sink: Optional[ProgressSink] = None) -> dict:
    """Run every case in float32 and in `precision` on the CPU, compare them by `CRITERION` and
    record the result in the model card (`engines.record_precision_check`); returns the record.

    A case that cannot be assessed stops the check with its error and records nothing: an
    agreement on fewer cases than asked is not the agreement asked for.
    """
    from PancreasAILib.engines import choose_engine

    from .registry import model_registry

    printer = ProgressPrinter(len(cases), progress_format, sink)
    card = model_registry().resolve(model, progress=printer)
    reference = choose_engine(card, "auto", "fp32", "cpu")
    trial, native = low_precision_choice(precision)
    printer.message(f"Model: {card.name}. float32 by {reference.label}; {precision} by {trial.label}.")
    if not native:
        printer.message(f"This CPU does not compute {precision} natively, so PyTorch emulates it (CPU autocast): "
                        f"the agreement found holds for {precision} arithmetic, but runs here are not faster.")
    compared = []
    try:
        for index, case in enumerate(cases):
            printer.start_case(index, case.name)
            compared.append(compare_case(case, card, reference, trial, printer))
            printer.message(_case_line(compared[-1], precision))
        record = precision_record(compared, trial, native, precision)
        card = _record(card, precision, record)
        verdict = "passed" if record["passed"] else "FAILED"
        printer.message(f"{precision} check {verdict}: worst probability difference "
                        f"{record['worst_difference']:.4f} (allowed {MAX_PROBABILITY_DIFFERENCE}); "
                        f"recorded in {card.card_path}.")
    finally:
        printer.close()
    return record


def _record(card, precision: str, record: dict):
    from PancreasAILib.engines import record_precision_check

    try:
        return record_precision_check(card, precision, record)
    except OSError as error:
        raise OutputError(f"The check's result could not be written into {card.card_path} ({error}): copy the "
                          "card and its weights to a folder you may write to and check the copy.") from error


def low_precision_choice(precision: str = "bf16"):
    """(EngineChoice, native) for computing `precision` on this CPU: OpenVINO where the CPU has
    it natively, else PyTorch's CPU autocast, which emulates it. Built directly, not through
    `choose_engine`, whose gate refuses bf16 until this very check has passed."""
    from PancreasAILib.cpu import detect_cpu_features
    from PancreasAILib.engines import EngineChoice, openvino_available

    native = detect_cpu_features().native_bf16
    engine = "openvino" if native and openvino_available() else "pytorch"
    return EngineChoice(engine, precision, "cpu"), native


def compare_case(case: Case, card, reference, trial, progress: Optional[ProgressCallback] = None) -> dict:
    """One case's input through both engines (as `assess` runs it): the classes and the
    largest difference of a class probability."""
    from PancreasAILib.volume_io import read_volume

    from .inference import model_input, vit_engine
    from .tta import predict

    prepared = model_input(read_volume(case.t1), read_volume(case.t2), case.region(), card,
                           progress or (lambda fraction, status: None))
    exact = predict(vit_engine(card, reference), prepared.x)
    lower_engine = vit_engine(card, trial)
    if lower_engine.choice.precision != trial.precision:
        raise InputError(f"{lower_engine.choice.label} could not compute {trial.precision} on this CPU, so "
                         "there is nothing to check; nothing was recorded in the card.")
    lower = predict(lower_engine, prepared.x)
    return {"case": case.name, "fp32_class": int(exact.probabilities.argmax()),
            f"{trial.precision}_class": int(lower.probabilities.argmax()),
            "max_probability_difference": float(abs(exact.probabilities - lower.probabilities).max())}


def precision_record(compared: list[dict], trial, native: bool, precision: str = "bf16") -> dict:
    """The card's record of the check (see `engines.record_precision_check`)."""
    worst = max((row["max_probability_difference"] for row in compared), default=0.0)
    same_classes = all(row["fp32_class"] == row[f"{precision}_class"] for row in compared)
    return {"passed": bool(compared) and same_classes and worst <= MAX_PROBABILITY_DIFFERENCE,
            "criterion": CRITERION, "engine": trial.label, "native": bool(native), "cases": compared,
            "worst_difference": worst}


def _case_line(row: dict, precision: str) -> str:
    same = "same class" if row["fp32_class"] == row[f"{precision}_class"] else "DIFFERENT class"
    return (f"{row['case']}: fp32 class {row['fp32_class']}, {precision} class {row[f'{precision}_class']} "
            f"({same}); largest probability difference {row['max_probability_difference']:.4f}")
