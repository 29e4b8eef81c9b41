"""Evaluate pancreas segmentation per patient: Dice, Hausdorff distance (maximum) and 95 %
Hausdorff distance (mm) to CSV, a mean +- sd table like Table 1 of the MoNet paper (Markdown),
and box plots (PNG).

What is evaluated (give one or more; all go into one table):
  --model [NAME=]PATH_OR_NAME     a segmentation model file (.safetensors with its .json card) or a
                                  PancreasSegMoNet registry name. MoNet and the paper's baselines run
                                  through the module's own pipeline (PancreasSegMoNetLib.segment_ct).
  --predictions [NAME=]DIR        label maps made by any tool, one per case, named <case>.nii.gz
                                  or <case>_pancreas.nii.gz (what pancreas-seg writes)
Against the ground truth of:
  --msd DIR | --images DIR --labels DIR | --phantoms N
  --cases-of RUN [--split S]      only the cases of a training run (the run's .safetensors, .json
                                  or .run/data.json) in its split S: "test" (the default), the
                                  cases held out from training and from model selection.
                                  "validation" and "training" chose the checkpoint and fitted the
                                  model, so their scores are optimistic: they are refused unless
                                  --allow-selection-cases is given, and then the summary says so.
                                  Without --cases-of every case given is evaluated.

Raw and pipeline masks. The paper scores the thresholded network output with no clean-up (raw);
the module keeps its largest connected component (pipeline). Each model runs once per case,
without the clean-up, and the pipeline mask is derived from the raw one with
PancreasSegMoNetLib.segmentation.largest_component, as segment_ct would; both are scored
(dice_raw, hd_raw_mm, ... and dice, hd_mm, ...). With --no-largest-component, or a model card
whose post-processing has keep_largest_component false, the pipeline keeps every piece too, so
its columns equal the raw ones (the summary says so). Label maps from --predictions are scored as
given, in the pipeline columns; there is no raw network output for them, so their raw columns
are empty.

Metrics are computed on the ground truth's voxel grid with its physical spacing; every non-zero
label is pancreas (segmentation_metrics). A case with no pancreas predicted has Dice 0, and HD
and HD95 equal to the diagonal of its scan's voxel grid, the largest distance possible in it, so
that it counts in the means as the worst case; the summary names these cases. A case with no
pancreas in its ground truth is left out of every mean and named.

Writes to --output: per_case_metrics.csv (COLUMNS), summary.md, dice_boxplot.png (pipeline),
hd_boxplot.png (raw, as the paper), hd95_boxplot.png (pipeline).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.run_files import RunFiles
from trainkit.runlog import progress_bar, run_logging

from PancreasAILib.cli_support import case_name
from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.volume import Volume
from PancreasAILib.weights import ModelCard

from segmentation_data import (DEFAULT_PHANTOM_SHAPE, Case, check_same_grid, folder_cases,
                               msd_cases, phantom_cases)
from segmentation_metrics import case_metrics

logger = logging.getLogger("evaluate_segmentation")

METRICS_FILE = "per_case_metrics.csv"
SUMMARY_FILE = "summary.md"
#: split: the run's split the case belongs to with --cases-of, else empty. *_raw: the raw mask
#: (empty for label maps); the others: the pipeline's mask. empty_prediction: no pancreas
#: predicted, so HD and HD95 are the scan's diagonal (segmentation_metrics.case_metrics).
COLUMNS = ("model", "case", "split", "dice_raw", "dice", "hd_raw_mm", "hd_mm", "hd95_raw_mm", "hd95_mm",
           "empty_prediction", "reference_ml", "predicted_raw_ml", "predicted_ml", "seconds")
SPLITS = ("test", "validation", "training")
#: Why scoring a split other than test is optimistic: what those cases did to the model.
SELECTION_ROLES = {"validation": "selected the model (the validation loss drove the learning-rate schedule "
                                 "and chose the checkpoint that was kept)",
                   "training": "trained the model"}


# --- what is evaluated --------------------------------------------------------------------------

@dataclass
class Prediction:
    """The masks of one model on one case, on the CT's grid. raw: the thresholded network output
    without clean-up (None for label maps made elsewhere); pipeline: what the module gives (or
    the label map as given)."""

    raw: Optional[Volume]
    pipeline: Volume


@dataclass
class ModelPredictor:
    """A model card run through PancreasSegMoNetLib.segment_ct."""

    name: str
    card: ModelCard
    device: str
    threshold: Optional[float]
    no_largest_component: bool  # --no-largest-component
    batch_size: int

    @property
    def keeps_largest_component(self) -> bool:
        """The pipeline's clean-up: the card's post-processing, unless --no-largest-component."""
        from PancreasSegMoNetLib.segmentation import card_keeps_largest_component

        return not self.no_largest_component and card_keeps_largest_component(self.card)

    def predict(self, case_id: str, ct: Volume) -> Prediction:
        """One network run without clean-up; the pipeline mask is its largest component (26-connected
        components do not depend on axis order, so this equals segment_ct's own clean-up)."""
        from PancreasSegMoNetLib.segmentation import largest_component, segment_ct

        result = segment_ct(ct, self.card, threshold=self.threshold, device=self.device,
                            keep_largest_component=False, batch_size=self.batch_size, recipe=self._recipe())
        for warning in result.warnings:
            logger.warning("Case %s, %s: %s", case_id, self.name, warning)
        raw = result.mask
        if not self.keeps_largest_component:
            return Prediction(raw, raw)
        kept = largest_component(raw.array)
        return Prediction(raw, raw if kept is raw.array else Volume(kept, raw.ijk_to_ras))

    def _recipe(self):
        """The card's MoNet as the module runs it; a baseline through exactly the same pre- and
        post-processing and engine (segment_ct's `recipe`)."""
        if self.card.architecture == "MoNet":
            return None
        from PancreasAILib.engines import NetworkRecipe
        from PancreasSegMoNetLib.network import WithProbabilities

        from segmentation_networks import load_network

        size = int(self.card.preprocessing.get("input_size", 256))
        channels = int(self.card.architecture_params.get("in_channels", 1))
        return NetworkRecipe(f"{self.card.architecture.lower()}-probabilities",
                             lambda: WithProbabilities(load_network(self.card, "cpu")), (channels, size, size))

    def description(self) -> dict:
        parameters = self.card.data.get("parameters", {}).get("with_bn_running_stats")
        size_mb = self.card.weights_path.stat().st_size / 1e6 if self.card.weights_path.exists() else None
        return {"parameters": parameters, "size_mb": size_mb, "architecture": self.card.architecture}


@dataclass
class PredictionFolder:
    """Label maps already made, one file per case."""

    name: str
    folder: Path

    def __post_init__(self) -> None:
        from segmentation_data import volume_files

        if not self.folder.is_dir():
            raise InputError(f"The prediction folder {self.folder} does not exist.")
        self.files = {}
        for path in volume_files(self.folder):
            name = case_name(path)
            self.files.setdefault(name[:-len("_pancreas")] if name.endswith("_pancreas") else name, path)

    def predict(self, case_id: str, ct: Volume) -> Prediction:
        """The label map as given, as the pipeline mask; no raw one."""
        from PancreasAILib.volume_io import read_volume

        path = self.files.get(case_id)
        if path is None:
            raise InputError(f"Case {case_id}: {self.folder} has no prediction for it (expected "
                             f"{case_id}.nii.gz or {case_id}_pancreas.nii.gz).")
        try:
            return Prediction(None, read_volume(path))
        except PancreasAIError as error:
            raise InputError(f"Case {case_id}: the prediction of {self.name} could not be read. {error}") from error

    def description(self) -> dict:
        return {"parameters": None, "size_mb": None, "architecture": "label maps"}


def _named(item: str) -> tuple[Optional[str], str]:
    """'NAME=VALUE' -> (NAME, VALUE); 'VALUE' -> (None, VALUE)."""
    name, separator, value = item.partition("=")
    return (name, value) if separator and name and not Path(item).exists() else (None, item)


def build_predictors(args) -> list:
    from PancreasSegMoNetLib.registry import model_registry

    predictors = []
    for item in args.model or []:
        name, reference = _named(item)
        card = model_registry().resolve(reference)
        predictors.append(ModelPredictor(name or card.name, card, args.device, args.threshold,
                                         args.no_largest_component, args.batch_size))
    for item in args.predictions or []:
        name, folder = _named(item)
        predictors.append(PredictionFolder(name or Path(folder).name, Path(folder)))
    if not predictors:
        raise InputError("Nothing to evaluate: give --model and/or --predictions.")
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise InputError(f"Two of the evaluated models have the same name ({', '.join(names)}); "
                         "name them with NAME=PATH.")
    return predictors


# --- ground truth -------------------------------------------------------------------------------

def discover_cases(args) -> list[Case]:
    """The cases given, or with --cases-of the run's cases of the evaluated split."""
    if not args.cases_of and (args.split or args.allow_selection_cases):
        raise InputError("--split and --allow-selection-cases choose among the cases of a training run: "
                         "give the run with --cases-of RUN, or leave them out to evaluate every case given.")
    if args.msd:
        cases = msd_cases(Path(args.msd))
    elif args.images or args.labels:
        if not (args.images and args.labels):
            raise InputError("--images and --labels go together: the CT folder and the label folder.")
        cases = folder_cases(Path(args.images), Path(args.labels))
    else:
        cases = phantom_cases(args.phantoms, args.first_seed, args.phantom_shape)
    if args.cases_of:
        return cases_of_run(Path(args.cases_of), cases, evaluated_split(args), args.allow_selection_cases)
    return cases


def evaluated_split(args) -> Optional[str]:
    """The run's split that is evaluated ('test' unless --split says otherwise); None without --cases-of."""
    return (args.split or "test") if args.cases_of else None


def cases_of_run(run: Path, cases: list[Case], split: str = "test", allow_selection_cases: bool = False) -> list[Case]:
    """The cases of `split` of a training run (from its run folder's data.json), in its order.

    A split that took part in fitting or selecting the model is refused unless
    `allow_selection_cases`: its scores would be optimistic.
    """
    if split in SELECTION_ROLES and not allow_selection_cases:
        raise InputError(
            f"The run's {split} cases are refused: they {SELECTION_ROLES[split]}, so their scores would be "
            "optimistic and not comparable with a held-out test set. Evaluate the run's test cases (--split test, "
            f"the default); to score the {split} cases anyway, marked as optimistic in the summary, add "
            "--allow-selection-cases.")
    manifest = run if run.name == "data.json" else RunFiles.for_output(
        run.with_suffix("") if run.suffix in (".json", ".safetensors") else run).data_manifest
    if not manifest.is_file():
        raise InputError(f"{manifest} does not exist: give the .safetensors of a run made by train_monet.py "
                         "(its .run folder must be beside it) or the run's data.json.")
    document = json.loads(manifest.read_text(encoding="utf-8"))
    wanted = [c["case_id"] for c in document["cases"] if c.get("split") == split]
    if not wanted and split == "test":
        raise InputError(
            f"The training run {manifest.parent} has no held-out test cases (its data.json lists none): it was "
            "made before train_monet.py held out a test set, or with --test-fraction 0. Its validation cases "
            "selected the checkpoint, so they are no test set either. Retrain with a test split (train_monet.py "
            "--test-fraction above 0), or evaluate on data independent of the run without --cases-of; to score "
            "its validation cases anyway, marked as optimistic, give --split validation --allow-selection-cases.")
    if not wanted:
        raise InputError(f"The training run {manifest.parent} has no {split} cases (its data.json lists none).")
    known = {case.case_id: case for case in cases}
    missing = [case_id for case_id in wanted if case_id not in known]
    if missing:
        raise InputError(f"{len(missing)} {split} case(s) of the run are not in the data given "
                         f"({', '.join(missing[:5])}): evaluate on the data the model was trained with.")
    return [known[case_id] for case_id in wanted]


# --- evaluation and reports -----------------------------------------------------------------------

def evaluate(cases: Sequence[Case], predictors: Sequence, save_predictions: Optional[Path] = None,
             split: Optional[str] = None) -> list[dict]:
    """One row per (model, case) with the COLUMNS: the metrics of the raw and the pipeline mask.

    save_predictions: a folder for the models' pipeline masks, <folder>/<model>/<case>.nii.gz.
    split: the run's split the cases come from (--cases-of), for the CSV.
    """
    from PancreasAILib.volume_io import write_volume

    rows = []
    for case in progress_bar(cases, description="Evaluating"):
        ct, reference = case.load()
        for predictor in predictors:
            started = time.perf_counter()
            prediction = predictor.predict(case.case_id, ct)
            seconds = time.perf_counter() - started
            check_same_grid(case.case_id, reference, prediction.pipeline, "ground truth",
                            f"prediction of {predictor.name}")
            row = {"model": predictor.name, "case": case.case_id, "split": split,
                   **score(prediction, reference),
                   "seconds": seconds if isinstance(predictor, ModelPredictor) else None}
            rows.append(row)
            logger.info("%s %s: %s", case.case_id, predictor.name, _log_text(row))
            if save_predictions is not None and isinstance(predictor, ModelPredictor):
                write_volume(prediction.pipeline, save_predictions / predictor.name / f"{case.case_id}.nii.gz")
    return rows


def score(prediction: Prediction, reference: Volume) -> dict:
    """case_metrics of the pipeline mask, and of the raw one as the *_raw columns (None for label maps)."""
    pipeline = case_metrics(prediction.pipeline, reference)
    if prediction.raw is None:
        raw = dict.fromkeys(pipeline)
    elif prediction.raw is prediction.pipeline:
        raw = pipeline
    else:
        raw = case_metrics(prediction.raw, reference)
    return {"dice_raw": raw["dice"], "dice": pipeline["dice"], "hd_raw_mm": raw["hd_mm"], "hd_mm": pipeline["hd_mm"],
            "hd95_raw_mm": raw["hd95_mm"], "hd95_mm": pipeline["hd95_mm"],
            "empty_prediction": pipeline["empty_prediction"], "reference_ml": pipeline["reference_ml"],
            "predicted_raw_ml": raw["predicted_ml"], "predicted_ml": pipeline["predicted_ml"]}


def _log_text(row: dict) -> str:
    number = lambda value, digits: "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"  # noqa: E731
    text = (f"Dice {number(row['dice'], 3)} (raw {number(row['dice_raw'], 3)}), "
            f"HD {number(row['hd_mm'], 1)} mm (raw {number(row['hd_raw_mm'], 1)}), "
            f"HD95 {number(row['hd95_mm'], 1)} mm (raw {number(row['hd95_raw_mm'], 1)})")
    if row["empty_prediction"]:
        text += "; no pancreas predicted: HD and HD95 are the scan's diagonal"
    return text


def write_metrics_csv(rows: Sequence[dict], path: Path) -> None:
    digits = {"dice_raw": 4, "dice": 4, "hd_raw_mm": 2, "hd_mm": 2, "hd95_raw_mm": 2, "hd95_mm": 2,
              "reference_ml": 2, "predicted_raw_ml": 2, "predicted_ml": 2, "seconds": 2}
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row[key], digits.get(key)) for key in COLUMNS})


def _csv_value(value, digits: Optional[int]):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(value, digits) if digits is not None else value


def mean_sd(values: Sequence[float], digits: int) -> str:
    """'mean ± sd' (sample standard deviation) of the finite values; '-' when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}f}"
    return f"{np.mean(finite):.{digits}f} ± {np.std(finite, ddof=1):.{digits}f}"


SUMMARY_NOTES = (
    "Mean ± sample standard deviation over cases, each case scored on the ground truth's voxel grid in mm "
    "with its spacing. Raw: the thresholded network output with no clean-up, as the paper scores it; "
    "pipeline: the mask the module gives, the raw mask's largest connected component. HD (max, as the paper) "
    "is the raw mask's Hausdorff distance, the larger of the two directed maximum surface distances; HD95 is "
    "the pipeline mask's, the larger of the two directed 95th-percentile surface distances (MONAI's "
    "convention for both). A case with no pancreas predicted has Dice 0, and HD and HD95 equal to the "
    "diagonal of its scan's voxel grid (the largest distance possible in it), so it counts in the means as "
    "the worst case. Parameters include BatchNorm running statistics, as the paper counts them.")


def selection_warning(split: Optional[str]) -> Optional[str]:
    """The loud first line of a summary of cases that took part in fitting or selecting the model."""
    if split not in SELECTION_ROLES:
        return None
    used = "select" if split == "validation" else "train"
    return (f"WARNING: these cases were used to {used} the model ({split} split): the scores are optimistic "
            "and not comparable with a held-out test set.")


def summary_table(rows: Sequence[dict], predictors: Sequence, data_text: str, split: Optional[str] = None) -> str:
    """Markdown: one line per model as in the paper's Table 1, with notes on what was scored how.

    split: the run's split the cases come from (--cases-of); a selection split puts a warning
    in the title and on the first line.
    """
    warning = selection_warning(split)
    if warning:
        lines = [f"# OPTIMISTIC SCORES: segmentation evaluation: {data_text}", "",
                 f"**{warning}**", ""]
    else:
        lines = [f"# Segmentation evaluation: {data_text}", ""]
    lines += ["| model | parameters | weights (MB) | Dice (raw, as the paper) | Dice (pipeline: largest component) "
              "| HD (mm, max, as the paper) | HD95 (mm) | cases |", "|---|---|---|---|---|---|---|---|"]
    notes = []
    for predictor in predictors:
        mine = [row for row in rows if row["model"] == predictor.name]
        info = predictor.description()
        parameters = f"{info['parameters']:,}" if info["parameters"] else "-"
        size = f"{info['size_mb']:.1f}" if info["size_mb"] else "-"
        lines.append(f"| {predictor.name} | {parameters} | {size} | {mean_sd([r['dice_raw'] for r in mine], 3)} | "
                     f"{mean_sd([r['dice'] for r in mine], 3)} | {mean_sd([r['hd_raw_mm'] for r in mine], 1)} | "
                     f"{mean_sd([r['hd95_mm'] for r in mine], 1)} | {len(mine)} |")
        if isinstance(predictor, PredictionFolder):
            notes.append(f"{predictor.name}: label maps, scored as given in the pipeline columns (Dice, HD95); "
                         "there is no raw network output for them, so their raw columns (Dice raw, HD) are empty.")
        elif not predictor.keeps_largest_component:
            reason = ("--no-largest-component" if predictor.no_largest_component
                      else "its model card's post-processing has keep_largest_component false")
            notes.append(f"{predictor.name}: {reason}: the pipeline keeps every connected piece too, "
                         "so its columns equal the raw ones.")
        empty = [r["case"] for r in mine if r["empty_prediction"]]
        notes.append(f"{predictor.name}: no pancreas predicted in {len(empty)} case(s)"
                     + (f" ({', '.join(empty)}): Dice 0, HD and HD95 the scan's diagonal, counted in the means."
                        if empty else "."))
    no_reference = sorted({r["case"] for r in rows if r["reference_ml"] == 0})
    if no_reference:
        notes.append(f"No pancreas in the ground truth of {', '.join(no_reference)}: left out of every mean.")
    lines += ["", SUMMARY_NOTES, ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def box_plots(rows: Sequence[dict], names: Sequence[str], folder: Path) -> list[Path]:
    """dice_boxplot.png (pipeline), hd_boxplot.png (raw, as the paper) and hd95_boxplot.png
    (pipeline): one box per model with every case as a dot."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed, so there are no box plots (pip install matplotlib); "
                       "the CSV and the table are complete.")
        return []
    written = []
    for key, label, file_name in (("dice", "Dice (pipeline)", "dice_boxplot.png"),
                                  ("hd_raw_mm", "HD (mm, max, raw)", "hd_boxplot.png"),
                                  ("hd95_mm", "HD95 (mm, pipeline)", "hd95_boxplot.png")):
        data = [np.array([r[key] for r in rows if r["model"] == name and r[key] is not None and math.isfinite(r[key])])
                for name in names]
        figure = Figure(figsize=(1.8 + 1.4 * len(names), 4.2))
        axes = figure.subplots()
        axes.boxplot([d if len(d) else np.array([np.nan]) for d in data], showmeans=True)
        for position, values in enumerate(data, start=1):
            spread = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
            axes.plot(position + spread, values, "o", markersize=3, alpha=0.6, color="tab:blue")
        axes.set_xticks(range(1, len(names) + 1), names, rotation=20 if len(names) > 3 else 0)
        axes.set_ylabel(label)
        axes.set_title(f"{label} per case")
        axes.grid(axis="y", alpha=0.3)
        path = folder / file_name
        figure.savefig(path, dpi=150, bbox_inches="tight")
        written.append(path)
    return written


def describe(args, count: int) -> str:
    if args.msd:
        source = f"MSD {Path(args.msd).name}"
    elif args.images:
        source = f"{Path(args.images).name} / {Path(args.labels).name}"
    else:
        source = f"synthetic CT phantoms (seeds {args.first_seed}-{args.first_seed + args.phantoms - 1})"
    split = evaluated_split(args)
    return f"{source}, {count} case(s)" + (f" ({split} cases of the run)" if split else "")


def run(args) -> int:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with run_logging(output / "evaluate.log", is_main=True):
        try:
            cases = discover_cases(args)
            predictors = build_predictors(args)
            split = evaluated_split(args)
            warning = selection_warning(split)
            if warning:
                logger.warning(warning)
            logger.info("Evaluating %s on %d case(s)", ", ".join(p.name for p in predictors), len(cases))
            rows = evaluate(cases, predictors, output / "predictions" if args.save_predictions else None, split)
        except PancreasAIError as error:
            logger.error("error: %s", error)
            return 2
        write_metrics_csv(rows, output / METRICS_FILE)
        table = summary_table(rows, predictors, describe(args, len(cases)), split)
        (output / SUMMARY_FILE).write_text(table, encoding="utf-8")
        plots = box_plots(rows, [p.name for p in predictors], output)
        print(table)
        logger.info("Wrote %s", ", ".join(str(p) for p in [output / METRICS_FILE, output / SUMMARY_FILE, *plots]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what is evaluated")
    what.add_argument("--model", action="append", metavar="[NAME=]MODEL",
                      help="model file (.safetensors/.json) or registry name; repeat to compare")
    what.add_argument("--predictions", action="append", metavar="[NAME=]DIR",
                      help="folder of predicted label maps; repeat to compare")
    data = parser.add_argument_group("ground truth (give one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--msd", metavar="DIR", help="Medical Segmentation Decathlon Task07_Pancreas folder")
    source.add_argument("--images", metavar="DIR", help="folder of CT files (with --labels)")
    source.add_argument("--phantoms", type=int, metavar="N", help="number of synthetic CT phantoms")
    data.add_argument("--labels", metavar="DIR", help="folder of label files named as the CTs")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom")
    data.add_argument("--phantom-shape", type=int, nargs=3, default=list(DEFAULT_PHANTOM_SHAPE),
                      metavar=("K", "J", "I"), help="phantom size in voxels")
    data.add_argument("--cases-of", metavar="RUN",
                      help="only the cases of this training run's --split (its .safetensors or data.json)")
    data.add_argument("--split", choices=SPLITS,
                      help="which of the run's cases (default: test, the held-out ones); validation and "
                           "training need --allow-selection-cases")
    data.add_argument("--allow-selection-cases", action="store_true",
                      help="score the run's validation or training cases anyway, marked as optimistic")
    options = parser.add_argument_group("running models")
    options.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    options.add_argument("--threshold", type=float, help="probability threshold (default: the model card's)")
    options.add_argument("--no-largest-component", action="store_true",
                         help="the pipeline keeps every connected piece too, not only the largest")
    options.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    options.add_argument("--save-predictions", action="store_true",
                         help="also write each model's label maps to OUTPUT/predictions/<model>/")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the CSV, table and plots")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
