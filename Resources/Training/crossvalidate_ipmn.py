"""Nested cross-validation of the IPMN risk ViT, its ablations and the CNN baselines, with the
paper's protocol: per-fold and mean +- sd accuracy, macro precision and macro recall, like the
paper's Tables I and II.

Data (one of):
  --cohort CSV      one row per scan: patient, t1, t2, label and the region (roi_center +
                    roi_size as "R,A,S" mm, or roi_mask); paths relative to the CSV
  --phantoms N      N synthetic phantom patients, each seen with all three risk classes

Folds (scikit-learn StratifiedGroupKFold: all scans of a patient in one fold, classes
stratified): each of --folds outer folds is once the test set; the rest is split into
--inner-folds inner folds, the first of which validates (it picks the checkpoint with the best
balanced accuracy) while the others train. The selected model classifies the central 9-slice
window of every test case, as IPMNRisk does.

Methods (--methods, several at once; or all, ablations, baselines):
  early-fusion      the method: one ViT on T1 + T2 as 2 channels (what IPMNRisk runs)
  t1-only, t2-only  one-channel ViT on one sequence (Table II)
  late-fusion       two one-channel ViTs, class tokens concatenated, one linear head (Table II)
  alexnet, densenet121, resnet18, efficientnet_b5, mobilenet_v2
                    CNN baselines with 2 input channels (Table I), with Grad-CAM maps of a few
                    test cases per fold as PNG

  python Resources/Training/crossvalidate_ipmn.py --cohort cohort.csv --methods all --pretrained-hub --output runs/cv
  several GPUs: torchrun --standalone --nproc_per_node 4 Resources/Training/crossvalidate_ipmn.py ...
  continue:     the same command with --resume (finished folds are kept, a started fold goes on)

Then train the model for IPMNRisk on all the data: train_ipmn.py --cohort cohort.csv --cv-results runs/cv ...
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.checkpoint import to_json_value, write_json_atomically
from trainkit.distributed import Distributed
from trainkit.model_card import command_line, hardware_record, software_versions
from trainkit.protocol import add_protocol_arguments, protocol_from_arguments
from trainkit.script import run_script
from trainkit.runlog import Curves
from trainkit.seeding import derived_seed, seed_everything, use_deterministic_kernels

from PancreasAILib.errors import InputError
from IPMNRiskLib.network import CLASS_NAMES

from ipmn_data import (card_preprocessing, central_samples, data_sha256, phantom_cases,
                       read_cohort_csv, training_samples)
from ipmn_folds import OuterFold, nested_folds
from ipmn_metrics import classification_metrics, write_fold_table, write_results_table
from ipmn_networks import (METHOD_GROUPS, METHODS, build_network, gradcam_maps, parameter_count,
                           write_gradcam_png)
from ipmn_setup import (add_model_arguments, add_phantom_shape_arguments, add_preprocessing_arguments,
                        add_run_arguments, architecture_of, cache_of, prepare_everywhere, pretrained_of,
                        pretrained_record, steps_of)
from ipmn_training import (IPMNProtocol, TrainingRun, add_class_weights_argument, check_protocol,
                           full_protocol_record, predict_probabilities)

logger = logging.getLogger("crossvalidate_ipmn")

SCRIPT = "Resources/Training/crossvalidate_ipmn.py"
HOW = ("nested cross-validation: outer folds test, the first inner fold of the rest validates (best balanced "
       "accuracy picks the checkpoint); scikit-learn StratifiedGroupKFold by patient; test on the central "
       "9-slice window of each case; mean and sample standard deviation over outer folds")


def selected_methods(names: Sequence[str]) -> list[str]:
    methods = []
    for name in names:
        for method in METHOD_GROUPS.get(name, (name,)):
            if method not in METHODS:
                raise InputError(f"Unknown method '{name}'; choose from {', '.join([*METHODS, *METHOD_GROUPS])}.")
            if method not in methods:
                methods.append(method)
    return methods


def load_cases(args):
    """(cases, description)."""
    if args.cohort:
        cases = read_cohort_csv(args.cohort)
        return cases, f"cohort {Path(args.cohort).name}: {len(cases)} scans of {len({c.patient_id for c in cases})} patients"
    if args.phantoms is None or args.phantoms < 1:
        raise InputError("Give the data: --cohort CSV, or --phantoms N (at least 1).")
    seeds = range(args.first_seed, args.first_seed + args.phantoms)
    return (phantom_cases(seeds, args.phantom_shape, args.phantom_spacing),
            f"{args.phantoms} synthetic phantom patients (seeds {seeds[0]}-{seeds[-1]}) x 3 classes")


def write_split(path: Path, prepared, folds: list[OuterFold]) -> None:
    """Which case is where: stays in the output folder (case names may identify patients)."""
    outer_of, validation_of = {}, {}
    for fold in folds:
        outer_of.update({int(i): fold.number for i in fold.test})
        validation_of.update({int(i): fold.number for i in fold.validation})
    cases = [{"case_id": c.case_id, "patient_id": c.patient_id, "label": c.label, "test_in_outer_fold": outer_of[i],
              "validates_in_outer_fold": validation_of.get(i)} for i, c in enumerate(prepared)]
    write_json_atomically(path, {"cases": cases})


def gradcam_choice(labels: np.ndarray, count: int) -> list[int]:
    """Up to `count` positions: the first case of each class, then the next ones in order."""
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(len(CLASS_NAMES)) if np.any(labels == c)]
    chosen += [i for i in range(len(labels)) if i not in chosen]
    return chosen[:count]


class CrossValidation:
    """One run: the data, its folds, and every method over every outer fold."""

    def __init__(self, args, argv, dist: Distributed) -> None:
        self.args, self.argv, self.dist = args, argv, dist
        self.output = Path(args.output)
        self.protocol = protocol_from_arguments(IPMNProtocol, args)
        check_protocol(self.protocol, args.class_weights, dist)
        self.methods = selected_methods(args.methods)
        phantoms = not args.cohort
        self.architecture, self.params = architecture_of(args, phantoms)
        seed_everything(args.seed)
        use_deterministic_kernels()
        cases, self.description = load_cases(args)
        cache = cache_of(args, self.output, phantoms)
        self.prepared, self.steps = prepare_everywhere(cases, steps_of(args, phantoms), cache, dist)
        self.data_sha256 = data_sha256(self.prepared)
        self.folds = nested_folds([c.label for c in self.prepared], [c.patient_id for c in self.prepared],
                                  args.folds, args.inner_folds, args.seed)
        if dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            write_split(self.output / "split.json", self.prepared, self.folds)
        logger.info("Data: %s; %d outer folds of %s test cases, %d inner folds", self.description, len(self.folds),
                    "/".join(str(len(f.test)) for f in self.folds), args.inner_folds)

    def settings(self) -> dict:
        """What the results depend on (recorded in cv.json; a finished fold is reused on
        --resume only when these are unchanged)."""
        return to_json_value({
            "data_sha256": self.data_sha256, "architecture": self.architecture, "architecture_params": self.params,
            "preprocessing": card_preprocessing(self.steps),
            "protocol": full_protocol_record(self.protocol, self.args.class_weights),
            "folds": self.args.folds, "inner_folds": self.args.inner_folds, "seed": self.args.seed,
            "test_tta": self.args.test_tta})

    def method_settings(self, method: str) -> dict:
        pretrained = pretrained_of(self.args, method, self.architecture)
        return {**self.settings(), "method": method, "pretrained": pretrained_record(pretrained)}

    # --- one fold ---

    def run_fold(self, method: str, fold: OuterFold) -> dict:
        """Train on the fold's training cases, select on its validation cases, test; returns the
        fold's row (and writes result.json)."""
        folder = self.output / method / f"fold-{fold.number:02d}"
        result_path = folder / "result.json"
        settings = self.method_settings(method)
        if self.args.resume and result_path.is_file():
            result = json.loads(result_path.read_text(encoding="utf-8"))
            if result.get("settings") == settings:
                logger.info("%s fold %d: done earlier (test accuracy %.3f).", method, fold.number,
                            result["metrics"]["accuracy"])
                return result["row"]
        seed = derived_seed(self.args.seed, fold.number)
        import torch

        torch.manual_seed(seed)  # the same initial weights whichever folds ran before
        pretrained = pretrained_of(self.args, method, self.architecture)
        network = build_network(method, self.architecture, self.params, pretrained)
        train = training_samples([self.prepared[i] for i in fold.train], self.protocol.window_jitter)
        val = central_samples([self.prepared[i] for i in fold.validation])
        curves = Curves(folder / "curves.csv", folder / "tensorboard", enabled=self.dist.is_main)
        run = TrainingRun(network, train, val, self.protocol, self.args.class_weights, seed, self.dist,
                          folder / "checkpoints", settings, curves, name=f"{method} fold {fold.number}")
        logger.info("%s fold %d: %d training windows (%d cases), %d validation cases, %d test cases; %s parameters",
                    method, fold.number, len(train), len(fold.train), len(val), len(fold.test),
                    f"{parameter_count(network):,}")
        if self.args.resume:
            run.resume()
        try:
            best = run.run()
        finally:
            curves.close()
        self.dist.run_on_main(lambda: self.test_fold(method, fold, network, best, run.state, settings, result_path))
        self.dist.barrier()
        if self.dist.is_main and not self.args.keep_checkpoints:
            # A finished fold is reused from result.json; its checkpoint (weights, best weights and
            # optimiser state: about 1.4 GB for ViT-B) is not needed any more.
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        return json.loads(result_path.read_text(encoding="utf-8"))["row"]

    def test_fold(self, method: str, fold: OuterFold, network, best: dict, state, settings: dict,
                  result_path: Path) -> None:
        network.load_state_dict(best)
        test = central_samples([self.prepared[i] for i in fold.test])
        probabilities = predict_probabilities(network, test, self.dist.device, tta=self.args.test_tta)
        predicted, truth = probabilities.argmax(1), test.labels
        metrics = classification_metrics(truth, predicted)
        predictions = [{"case_id": case.case_id, "truth": int(t), "predicted": int(p),
                        "probabilities": [round(float(v), 6) for v in row]}
                       for case, t, p, row in zip(test.cases, truth, predicted, probabilities)]
        row = {"fold": fold.number, **metrics, "test_cases": len(test), "best_step": state.best_step}
        if METHODS[method].family == "cnn" and self.args.gradcam_cases > 0:
            self.write_gradcam(method, fold, network, test, predicted, probabilities)
        write_json_atomically(result_path, {"settings": settings, "row": row, "metrics": metrics,
                                            "predictions": predictions, "best_row": state.best_row,
                                            "history": state.history})
        logger.info("%s fold %d: test accuracy %.3f, precision %.3f, recall %.3f (best step %d)", method, fold.number,
                    metrics["accuracy"], metrics["macro_precision"], metrics["macro_recall"], state.best_step)

    def write_gradcam(self, method, fold, network, test, predicted, probabilities) -> None:
        chosen = gradcam_choice(test.labels, self.args.gradcam_cases)
        grids = test.inputs(chosen)
        maps = gradcam_maps(network, method, grids, [int(predicted[i]) for i in chosen])
        folder = self.output / method / "gradcam" / f"fold-{fold.number:02d}"
        for position, grid, cam in zip(chosen, grids, maps):
            case = test.cases[position]
            caption = (f"{case.case_id}: truth {CLASS_NAMES[case.label]}, predicted "
                       f"{CLASS_NAMES[predicted[position]]} (p = {probabilities[position].max():.2f}); "
                       f"Grad-CAM of {METHODS[method].title}")
            write_gradcam_png(folder / f"{case.case_id}.png", grid, cam, caption)

    # --- everything ---

    def run(self) -> None:
        results = {}
        for method in self.methods:
            rows = [self.run_fold(method, fold) for fold in self.folds]
            if self.dist.is_main:
                summary = write_fold_table(self.output / method, METHODS[method].title, rows)
                results[method] = {"title": METHODS[method].title, "summary": summary, "folds": rows,
                                   "pretrained": self.method_settings(method)["pretrained"]}
                self.write_results(results)
                logger.info("%s: accuracy %.3f, precision %.3f, recall %.3f (means over %d folds)", method,
                            summary["accuracy"]["mean"], summary["macro_precision"]["mean"],
                            summary["macro_recall"]["mean"], len(rows))
        if self.dist.is_main:
            logger.info("Tables: %s and %s", self.output / "results.md", self.output / "results.csv")

    def write_results(self, results: dict) -> None:
        write_results_table(self.output, [{"method": m, "title": r["title"], "folds": len(r["folds"]),
                                           "summary": r["summary"]} for m, r in results.items()])
        with open(self.output / "predictions.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["method", "fold", "case", "truth", "predicted", *(f"p_{n}" for n in CLASS_NAMES)])
            for method in results:
                for fold in self.folds:
                    document = json.loads((self.output / method / f"fold-{fold.number:02d}" / "result.json")
                                          .read_text(encoding="utf-8"))
                    for item in document["predictions"]:
                        writer.writerow([method, fold.number, item["case_id"], item["truth"], item["predicted"],
                                         *item["probabilities"]])
        write_json_atomically(self.output / "cv.json", {
            **self.settings(), "data": self.description, "how": HOW, "methods": results,
            "hardware": hardware_record(self.dist), "software": software_versions(),
            "command": command_line(SCRIPT, self.argv)})


def crossvalidate(args, argv: Optional[Sequence[str]] = None) -> int:
    """Run the cross-validation the arguments describe; returns the exit code (0 done, 2 refused)."""
    return run_script(SCRIPT, argv, log_file=Path(args.output) / "cv.log", device=args.device,
                      body=lambda dist: CrossValidation(args, argv, dist).run(), logger=logger,
                      on_interrupt="Finished folds and validations are kept: run the same command with --resume.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (give one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", metavar="CSV", help="cohort CSV (see above)")
    source.add_argument("--phantoms", type=int, metavar="N", help="number of synthetic phantom patients")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom patient")
    add_phantom_shape_arguments(data)
    add_preprocessing_arguments(data)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--methods", nargs="+", default=["early-fusion"], metavar="METHOD",
                            help=f"{', '.join(METHODS)}; or all, ablations, baselines (default: early-fusion)")
    evaluation.add_argument("--folds", type=int, default=10, help="outer folds (default: %(default)s, the paper's)")
    evaluation.add_argument("--inner-folds", type=int, default=9,
                            help="inner folds of each outer training set; the first validates (default: %(default)s)")
    evaluation.add_argument("--test-tta", action="store_true",
                            help="classify test cases over the 8 flip / quarter-turn views, as IPMNRisk does by "
                                 "default (the paper: one view)")
    evaluation.add_argument("--gradcam-cases", type=int, default=3,
                            help="CNN baselines: Grad-CAM PNGs of this many test cases per fold (default: %(default)s)")
    add_model_arguments(parser)
    add_protocol_arguments(parser, IPMNProtocol)
    add_class_weights_argument(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="folder for tables, logs, curves, checkpoints and Grad-CAM maps")
    run.add_argument("--keep-checkpoints", action="store_true",
                     help="keep the checkpoint of each finished fold (default: removed once the fold is tested)")
    add_run_arguments(run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return crossvalidate(args, argv)


if __name__ == "__main__":
    sys.exit(main())
