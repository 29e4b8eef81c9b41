"""Nested cross-validation of the IPMN risk ViT, its ablations and the CNN baselines: per-fold and
mean +- sd accuracy, macro precision and macro recall, like the paper's Tables I and II.

Data (one of):
  --cohort CSV      one row per scan: patient, t1, t2, label and the region (roi_center +
                    roi_size as "R,A,S" mm, or roi_mask); paths relative to the CSV
  --phantoms N      N synthetic phantom patients, each seen with all three risk classes
  --cyst-x DIR      the public Cyst-X benchmark folder as published (see cyst_x.py): T1/T2
                    crops, IPMN_labels_total.xlsx, and its published folds when present

Task (--task): 3-class (normal, low-risk, high-risk IPMN; the seed paper's, default) or 2-class
(high-risk IPMN vs no or low-risk IPMN, the Cyst-X benchmark's second task, reported as AUC; the
data's risk label 2 is class 1, 0 and 1 are class 0). Folds, their "every class" checks, class
weights, Grad-CAM captions, predictions.csv and the pooled metrics follow its classes; cv.json and
benchmark.json record it. A 2-class run without --class-weights uses balanced weights.

Folds (scikit-learn StratifiedGroupKFold: all scans of a patient in one fold, classes of the task
stratified): each of --folds outer folds is once the test set; the other patients, its
training part, are split into --inner-folds inner folds. With --cyst-x, --folds-by chooses the
outer folds: published (the benchmark's split file of the task: 3-class/t2.csv, 2-class/
two_inputs.csv; auto uses it when present), patients (ours, as above) or centre
(leave-one-centre-out); inner folds are always ours, inside the training part.

Inner selection (--inner-selection):
  grid (default)    for each learning rate of --lr-grid and each inner fold, a network trains on
                    the other inner folds for --steps steps and is validated on that inner fold
                    every --eval-every steps (balanced accuracy of the central windows). The
                    learning rate and number of steps with the best mean over the inner folds
                    (ties: fewer steps, then the larger learning rate) are refit on the whole
                    training part, without validation or checkpoint selection, and that model
                    is tested. Every test score is then free of any choice made on the test fold.
  checkpoint        (the earlier behaviour) inner fold 1 validates and picks the checkpoint of
                    one network trained on the other inner folds with --lr; no hyperparameter
                    is selected, so this selects only the checkpoint.

Cost: grid trains folds x (learning rates x inner folds + 1) networks per method, of up to
--steps steps each: 10 x (3 x 9 + 1) = 280 with the defaults, 28 times the 10 of checkpoint. On
a cohort that is days of GPU time for ViT-B: try it on few folds, or --inner-selection checkpoint.

Nothing fitted on data sees a test case: the standardisation landmarks (--preprocessing paper)
are fitted per outer fold on its training part, and every case of that fold is prepared with
them; balanced class weights (--class-weights balanced) are fitted on the cases each network
trains on.

Besides the per-fold tables, every case's out-of-fold prediction is pooled per method: accuracy,
balanced accuracy, macro F1 and AUC (3-class: one-vs-rest, macro over the classes; 2-class: the
binary AUC of high risk; each fold's result.json has its AUC too), overall and per centre
(Cyst-X), with seeded bootstrap 95 % intervals (<method>/benchmark.json and .csv, --bootstrap
resamples), and a reliability diagram of the predicted class's probability (<method>/calibration.png).

Methods (--methods, several at once; or all, ablations, baselines):
  early-fusion      the method: one ViT on T1 + T2 as 2 channels (what IPMNRisk runs)
  t1-only, t2-only  one-channel ViT on one sequence (Table II)
  late-fusion       two one-channel ViTs, class tokens concatenated, one linear head (Table II)
  alexnet, densenet121, resnet18, efficientnet_b5, mobilenet_v2
                    CNN baselines with 2 input channels (Table I), with Grad-CAM maps of a few
                    test cases per fold as PNG

  python Resources/Training/crossvalidate_ipmn.py --cohort cohort.csv --methods all --pretrained-hub --output runs/cv
  several GPUs: torchrun --standalone --nproc_per_node 4 Resources/Training/crossvalidate_ipmn.py ...
  continue:     the same command with --resume (finished folds and finished inner runs are kept,
                a started training goes on from its checkpoint)

Then train the model for IPMNRisk on all the data: train_ipmn.py --cohort cohort.csv --cv-results runs/cv ...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.checkpoint import to_json_value, write_json_atomically
from trainkit.distributed import Distributed
from trainkit.model_card import command_line, hardware_record, software_versions
from trainkit.script import run_script
from trainkit.runlog import Curves
from trainkit.seeding import derived_seed, seed_everything, use_deterministic_kernels

from PancreasAILib.errors import InputError
from IPMNRiskLib.network import TASKS

import cyst_x
from ipmn_data import (PreparedCase, card_preprocessing, central_samples, data_sha256, inputs_sha256, phantom_cases,
                       read_cohort_csv, training_samples)
from ipmn_folds import OuterFold, nested_folds, nested_folds_from_tests, patients_in_several_folds
from ipmn_metrics import (DEFAULT_BOOTSTRAP, SELECTION_RULE, chosen_setting, grouped_metrics,
                          reliability_curve, selection_table, write_benchmark_table, write_calibration_png,
                          write_fold_table, write_results_table)
from ipmn_networks import (METHOD_GROUPS, METHODS, build_network, gradcam_maps, parameter_count,
                           write_gradcam_png)
from ipmn_setup import (add_model_arguments, add_phantom_shape_arguments, add_preprocessing_arguments,
                        add_run_arguments, architecture_of, cache_of, prepare_everywhere, pretrained_of,
                        pretrained_record, steps_of, task_labels, with_task_labels)
from ipmn_training import (TrainingRun, add_ipmn_protocol_arguments, check_protocol, fit_class_weights,
                           full_protocol_record, held_out_metrics, ipmn_protocol_from_arguments,
                           predict_probabilities, task_of)

logger = logging.getLogger("crossvalidate_ipmn")

SCRIPT = "Resources/Training/crossvalidate_ipmn.py"
#: The paper's 0.003 and two smaller rates, each a third of the one before.
DEFAULT_LR_GRID = (0.003, 0.001, 0.0003)
INNER_SELECTIONS = ("grid", "checkpoint")
_COMMON_HOW = ("standardisation landmarks fitted on each outer fold's training part, balanced class weights on the "
               "cases each network trains on; scikit-learn StratifiedGroupKFold by patient; test on the central "
               "9-slice window of each case; mean and sample standard deviation over outer folds")
HOW = {
    "grid": "nested cross-validation: outer folds test; on the rest, every learning rate of the grid trains on each "
            "inner training part and validates on its inner fold every eval_every steps (balanced accuracy); the "
            f"learning rate and number of steps chosen by {SELECTION_RULE} are refit on the whole outer training "
            f"part without validation or checkpoint selection, then tested; {_COMMON_HOW}",
    "checkpoint": "cross-validation selecting only the checkpoint: outer folds test, the first inner fold of the rest "
                  "validates (its best balanced accuracy picks the checkpoint of one network trained on the other "
                  f"inner folds; no hyperparameter is selected); {_COMMON_HOW}",
}


def selected_methods(names: Sequence[str]) -> list[str]:
    methods = []
    for name in names:
        for method in METHOD_GROUPS.get(name, (name,)):
            if method not in METHODS:
                raise InputError(f"Unknown method '{name}'; choose from {', '.join([*METHODS, *METHOD_GROUPS])}.")
            if method not in methods:
                methods.append(method)
    return methods


def trainings_per_method(selection: str, folds: int, inner_folds: int, learning_rates: int) -> int:
    """Networks one method trains: folds x (learning rates x inner folds + 1 refit) for the grid
    selection, one per fold for the checkpoint selection."""
    return folds * (learning_rates * inner_folds + 1) if selection == "grid" else folds


def learning_rate_grid(args) -> tuple[float, ...]:
    """The learning rates the inner folds choose from (grid selection); checked."""
    if args.inner_selection == "checkpoint":
        if args.lr_grid is not None:
            raise InputError("--lr-grid is for --inner-selection grid; with the checkpoint selection give one "
                             "learning rate with --lr.")
        return ()
    if args.learning_rate is not None:
        raise InputError("With --inner-selection grid the inner folds choose the learning rate: give the candidates "
                         "with --lr-grid (e.g. --lr-grid 0.001), or use --inner-selection checkpoint with --lr.")
    grid = tuple(float(lr) for lr in (args.lr_grid or DEFAULT_LR_GRID))
    if min(grid) <= 0 or len(set(grid)) != len(grid):
        given = " ".join(f"{lr:g}" for lr in grid)
        raise InputError(f"--lr-grid needs distinct positive learning rates (got {given}).")
    return grid


FOLDS_BY = ("auto", "published", "patients", "centre")


def load_cases(args):
    """(cases, description, source record or None)."""
    if args.cyst_x:
        cohort = cyst_x.read_cyst_x(args.cyst_x)
        logger.info("%s (rows %s without a label)", cohort.description(),
                    ", ".join(map(str, cohort.skipped_unlabelled)) or "none")
        return cohort.cases, cohort.description(), cohort.record()
    if args.cohort:
        cases = read_cohort_csv(args.cohort)
        return (cases, f"cohort {Path(args.cohort).name}: {len(cases)} scans of {len({c.patient_id for c in cases})} "
                "patients", None)
    if args.phantoms is None or args.phantoms < 1:
        raise InputError("Give the data: --cohort CSV, or --phantoms N (at least 1).")
    seeds = range(args.first_seed, args.first_seed + args.phantoms)
    return (phantom_cases(seeds, args.phantom_shape, args.phantom_spacing),
            f"{args.phantoms} synthetic phantom patients (seeds {seeds[0]}-{seeds[-1]}) x 3 classes", None)


def outer_folds(args, cases) -> tuple[list[OuterFold], dict]:
    """The nested folds (stratified by the classes of --task) and how the outer ones were made
    ({"by", ...} for cv.json)."""
    task = task_of(args)
    names = TASKS[task]
    labels, patients = task_labels(cases, task), [c.patient_id for c in cases]
    by = args.folds_by
    if not args.cyst_x:
        if by not in ("auto", "patients"):
            raise InputError(f"--folds-by {by} is for --cyst-x (the benchmark's split file and centres).")
        by = "patients"
    split_file = cyst_x.published_split_file(args.cyst_x, task) if args.cyst_x else None
    if by == "auto":
        by = "published" if split_file is not None else "patients"
    if by == "patients":
        return (nested_folds(labels, patients, args.folds, args.inner_folds, args.seed, names),
                {"by": "patients", "rule": "scikit-learn StratifiedGroupKFold by patient, stratified by class"})
    if by == "centre":
        centres, tests = cyst_x.centre_outer_tests(cases)
        return (nested_folds_from_tests(tests, labels, patients, args.inner_folds, args.seed, names=centres,
                                        class_names=names),
                {"by": "centre", "rule": "leave-one-centre-out", "fold_centres": centres})
    if split_file is None:
        raise InputError(f"{args.cyst_x} has no published {task} split "
                         f"({' or '.join(cyst_x.PUBLISHED_SPLITS[task])}); use our own folds with --folds-by patients.")
    tests = cyst_x.published_outer_tests(cases, cyst_x.read_published_folds(split_file), split_file)
    shared = patients_in_several_folds(tests, patients)
    if shared:
        logger.warning("The published split tests %d patient(s) in more than one fold (%s): their scans are not "
                       "kept together.", len(shared), ", ".join(shared[:5]))
    return (nested_folds_from_tests(tests, labels, patients, args.inner_folds, args.seed, class_names=names),
            {"by": "published", "file": split_file.relative_to(Path(args.cyst_x)).as_posix(),
             "patients_in_several_folds": len(shared)})


def write_split(path: Path, cases, folds: list[OuterFold], task: str) -> None:
    """Which case is where: stays in the output folder (case names may identify patients).
    Per case: its risk label and its class in `task`, the outer fold that tests it, and for every
    other outer fold the inner fold it validates in (inner fold 1 is the checkpoint selection's
    validation set)."""
    outer_of, inner_of = {}, {}
    for fold in folds:
        outer_of.update({int(i): fold.number for i in fold.test})
        for inner_number, (_, validation) in enumerate(fold.inner, start=1):
            for i in validation:
                inner_of.setdefault(int(i), {})[str(fold.number)] = inner_number
    records = [{"case_id": c.case_id, "patient_id": c.patient_id, "label": c.label, "task_class": label,
                "test_in_outer_fold": outer_of[i],
                "validates_in_inner_fold": inner_of.get(i, {}),
                **({"centre": c.centre} if hasattr(c, "centre") else {})}
               for i, (c, label) in enumerate(zip(cases, task_labels(cases, task)))]
    write_json_atomically(path, {"cases": records})


def gradcam_choice(labels: np.ndarray, count: int, classes: int = 3) -> list[int]:
    """Up to `count` positions: the first case of each of `classes` classes, then the next ones in order."""
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(classes) if np.any(labels == c)]
    chosen += [i for i in range(len(labels)) if i not in chosen]
    return chosen[:count]


@dataclass
class FoldData:
    """Every case of the cohort prepared for one outer fold, labelled with its class in the task:
    the standardisation landmarks in `steps` are fitted on the fold's training part alone."""

    prepared: list[PreparedCase]
    steps: dict
    inputs_sha256: str

    def cases(self, positions: Sequence[int]) -> list[PreparedCase]:
        return [self.prepared[int(i)] for i in positions]


@dataclass
class TestedModel:
    """The weights a fold tests and how they were made: learning rate, optimiser steps, the
    class weights used, the training history, and the selection's record for result.json."""

    network: object
    weights: dict
    learning_rate: float
    steps: int
    class_weights: list
    history: list
    record: dict


class CrossValidation:
    """One run: the data, its folds, and every method over every outer fold."""

    def __init__(self, args, argv, dist: Distributed) -> None:
        self.args, self.argv, self.dist = args, argv, dist
        self.output = Path(args.output)
        self.protocol = ipmn_protocol_from_arguments(args)
        check_protocol(self.protocol, dist)
        self.task = self.protocol.task
        self.class_names = TASKS[self.task]
        self.selection = args.inner_selection
        self.lr_grid = learning_rate_grid(args)
        self.methods = selected_methods(args.methods)
        if args.bootstrap < 1:
            raise InputError(f"--bootstrap needs at least 1 resample (got {args.bootstrap}); 1000 is usual.")
        phantoms = not (args.cohort or args.cyst_x)
        self.architecture, self.params = architecture_of(args, phantoms)
        seed_everything(args.seed)
        use_deterministic_kernels()
        self.cases, self.description, self.source = load_cases(args)
        self.cache = cache_of(args, self.output, phantoms)
        self.steps = steps_of(args, phantoms)
        self.data_sha256: Optional[str] = None  # from the first fold's cases (the same for every fold)
        self._fold_data: Optional[tuple[object, FoldData]] = None
        self.folds, self.folds_record = outer_folds(args, self.cases)
        if dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            write_split(self.output / "split.json", self.cases, self.folds, self.task)
        trainings = trainings_per_method(self.selection, len(self.folds), args.inner_folds, len(self.lr_grid))
        logger.info("Data: %s; %d outer folds of %s test cases, %d inner folds", self.description, len(self.folds),
                    "/".join(str(len(f.test)) for f in self.folds), args.inner_folds)
        if self.selection == "grid":
            logger.info("Inner selection: learning rate (of %s) and number of steps (every %d up to %d) on the inner "
                        "folds, then a refit on each outer training part: %d trainings per method = %d outer folds "
                        "x (%d learning rates x %d inner folds + 1), %d for %d method(s).",
                        ", ".join(f"{lr:g}" for lr in self.lr_grid), self.protocol.eval_every, self.protocol.steps,
                        trainings, len(self.folds), len(self.lr_grid), args.inner_folds,
                        trainings * len(self.methods), len(self.methods))
        else:
            logger.info("Inner selection: checkpoint only (inner fold 1 validates; learning rate %g fixed): %d "
                        "trainings per method, %d for %d method(s).", self.protocol.learning_rate, trainings,
                        trainings * len(self.methods), len(self.methods))

    # --- data of one outer fold ---

    def fold_data(self, fold: OuterFold) -> FoldData:
        """Every case prepared with the statistics fitted on `fold`'s training part (the last
        fold's preparation is kept: without standardisation it serves every fold)."""
        fitted = bool(self.steps.get("standardisation"))
        key = tuple(int(i) for i in fold.training_part) if fitted else "no fitted statistics"
        if self._fold_data is None or self._fold_data[0] != key:
            if fitted:
                logger.info("Outer fold %d: standardisation landmarks fitted on its %d training cases.", fold.number,
                            len(fold.training_part))
            prepared, steps = prepare_everywhere(self.cases, self.steps, self.cache, self.dist,
                                                 fit_on=fold.training_part, normalisation=self.protocol.normalisation)
            prepared = with_task_labels(prepared, self.task)
            self._fold_data = (key, FoldData(prepared, steps, inputs_sha256(prepared)))
            self.data_sha256 = self.data_sha256 or data_sha256(prepared)
        return self._fold_data[1]

    # --- what results depend on ---

    def protocol_record(self) -> dict:
        """The protocol as cv.json records it; with the grid selection, the learning rate is
        chosen per fold and no checkpoint is selected, which the record says."""
        record = full_protocol_record(self.protocol)
        if self.selection == "grid":
            record["learning_rate"] = None
            record["learning_rate_grid"] = list(self.lr_grid)
            record["origins"]["learning_rate"] = "chosen per outer fold on its inner folds from learning_rate_grid"
            record["checkpoint_selection"] = ("none: the refit on the whole outer training part trains for the number "
                                              "of steps the inner folds chose")
        return record

    def selection_settings(self) -> dict:
        return {"inner_selection": self.selection, **({"lr_grid": list(self.lr_grid)} if self.lr_grid else {})}

    def settings(self) -> dict:
        """What the whole run depends on (cv.json); the landmarks, fitted per fold, are in each
        fold's result.json."""
        return to_json_value({
            "data_sha256": self.data_sha256, "architecture": self.architecture, "architecture_params": self.params,
            "preprocessing": card_preprocessing(self.steps, self.protocol.normalisation),
            "protocol": self.protocol_record(), "task": self.task, "classes": list(self.class_names),
            "folds": len(self.folds), "outer_folds": self.folds_record,
            "inner_folds": self.args.inner_folds,
            "seed": self.args.seed, "test_tta": self.args.test_tta, **self.selection_settings()})

    def training_settings(self, method: str, data: FoldData) -> dict:
        """What a training in one outer fold depends on (its resumption and reuse check)."""
        pretrained = pretrained_of(self.args, method, self.architecture)
        return to_json_value({
            "data_sha256": self.data_sha256, "inputs_sha256": data.inputs_sha256, "architecture": self.architecture,
            "architecture_params": self.params,
            "preprocessing": card_preprocessing(data.steps, self.protocol.normalisation),
            "protocol": full_protocol_record(self.protocol), "folds": len(self.folds),
            "inner_folds": self.args.inner_folds, "seed": self.args.seed, "method": method,
            "pretrained": pretrained_record(pretrained)})

    def fold_settings(self, method: str, data: FoldData) -> dict:
        """What a fold's result depends on (a finished fold is reused on --resume only when
        these are unchanged)."""
        return {**self.training_settings(method, data), "test_tta": self.args.test_tta, **self.selection_settings()}

    def method_pretrained(self, method: str) -> Optional[dict]:
        return pretrained_record(pretrained_of(self.args, method, self.architecture))

    # --- one fold ---

    def run_fold(self, method: str, fold: OuterFold) -> dict:
        """Select, train and test one outer fold; returns its row (and writes result.json)."""
        folder = self.output / method / f"fold-{fold.number:02d}"
        result_path = folder / "result.json"
        data = self.fold_data(fold)
        settings = self.fold_settings(method, data)
        if self.args.resume and result_path.is_file():
            result = json.loads(result_path.read_text(encoding="utf-8"))
            if result.get("settings") == settings:
                logger.info("%s fold %d: done earlier (test accuracy %.3f).", method, fold.number,
                            result["metrics"]["accuracy"])
                return result["row"]
        if self.selection == "grid":
            tested = self.grid_selected_model(method, fold, data, folder)
        else:
            tested = self.checkpoint_selected_model(method, fold, data, folder)
        self.dist.run_on_main(lambda: self.test_fold(method, fold, data, tested, settings, result_path))
        self.dist.barrier()
        if self.dist.is_main and not self.args.keep_checkpoints:
            # A finished fold is reused from result.json; its checkpoint (weights, best weights and
            # optimiser state: about 1.4 GB for ViT-B) is not needed any more.
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        return json.loads(result_path.read_text(encoding="utf-8"))["row"]

    def new_network(self, method: str, seed: int):
        import torch

        torch.manual_seed(seed)  # the same initial weights whichever runs came before
        pretrained = pretrained_of(self.args, method, self.architecture)
        return build_network(method, self.architecture, self.params, pretrained, len(self.class_names))

    def run_to_the_end(self, run: TrainingRun, curves: Curves) -> dict:
        """Train `run` (from its checkpoint with --resume); returns the weights it ends with."""
        if self.args.resume:
            run.resume()
        try:
            return run.run()
        finally:
            curves.close()

    def checkpoint_selected_model(self, method: str, fold: OuterFold, data: FoldData, folder: Path) -> TestedModel:
        """Train on the first inner training part, keep the checkpoint with the best balanced
        accuracy on inner fold 1 (the checkpoint is all that is selected)."""
        seed = derived_seed(self.args.seed, fold.number)
        network = self.new_network(method, seed)
        train_cases, val_cases = data.cases(fold.train), data.cases(fold.validation)
        class_weights = fit_class_weights(self.protocol.class_weights, train_cases, self.task)
        train, val = training_samples(train_cases, self.protocol.window_jitter), central_samples(val_cases)
        curves = Curves(folder / "curves.csv", folder / "tensorboard", enabled=self.dist.is_main)
        fingerprint = {**self.training_settings(method, data), "class_weights_used": class_weights}
        run = TrainingRun(network, train, val, self.protocol, class_weights, seed, self.dist, folder / "checkpoints",
                          fingerprint, curves, name=f"{method} fold {fold.number}")
        logger.info("%s fold %d: %d training windows (%d cases), %d validation cases, %d test cases; %s parameters",
                    method, fold.number, len(train), len(train_cases), len(val), len(fold.test),
                    f"{parameter_count(network):,}")
        best = self.run_to_the_end(run, curves)
        return TestedModel(network, best, self.protocol.learning_rate, run.state.best_step, class_weights,
                           run.state.history, {"best_row": run.state.best_row})

    def grid_selected_model(self, method: str, fold: OuterFold, data: FoldData, folder: Path) -> TestedModel:
        """Every (learning rate, inner fold) run, the choice of learning rate and steps, and the
        refit with them on the whole outer training part."""
        curves = {(lr, inner_number): self.inner_curve(method, fold, data, folder, lr, inner_number, train, validation)
                  for lr in self.lr_grid
                  for inner_number, (train, validation) in enumerate(fold.inner, start=1)}
        table = selection_table(curves)
        chosen = chosen_setting(table)
        logger.info("%s fold %d: learning rate %g and %d steps chosen (mean inner-validation balanced accuracy %.3f)",
                    method, fold.number, chosen["learning_rate"], chosen["step"], chosen["mean_balanced_accuracy"])
        learning_rate, steps = chosen["learning_rate"], chosen["step"]
        seed = derived_seed(self.args.seed, fold.number)
        network = self.new_network(method, seed)
        cases = data.cases(fold.training_part)
        class_weights = fit_class_weights(self.protocol.class_weights, cases, self.task)
        train = training_samples(cases, self.protocol.window_jitter)
        fingerprint = {**self.training_settings(method, data), "class_weights_used": class_weights,
                       "refit": {"learning_rate": learning_rate, "number_of_steps": steps}}
        curves_file = Curves(folder / "curves.csv", folder / "tensorboard", enabled=self.dist.is_main)
        # The schedule spans --steps, as in the inner runs; the refit stops where they were best.
        run = TrainingRun(network, train, None, dataclasses.replace(self.protocol, learning_rate=learning_rate),
                          class_weights, seed, self.dist, folder / "checkpoints", fingerprint, curves_file,
                          name=f"{method} fold {fold.number} refit", last_step=steps)
        logger.info("%s fold %d refit: %d training windows (%d cases), %d test cases; %s parameters", method,
                    fold.number, len(train), len(cases), len(fold.test), f"{parameter_count(network):,}")
        weights = self.run_to_the_end(run, curves_file)
        selection = {"rule": SELECTION_RULE, "learning_rates": list(self.lr_grid), "table": table, "chosen": chosen}
        return TestedModel(network, weights, learning_rate, steps, class_weights, run.state.history,
                           {"selection": selection})

    def inner_curve(self, method: str, fold: OuterFold, data: FoldData, folder: Path, learning_rate: float,
                    inner_number: int, train_positions: np.ndarray, validation_positions: np.ndarray) -> list[dict]:
        """The validation curve [{"step", "balanced_accuracy", ...}] of one inner run: trained on
        an inner training part with `learning_rate` for --steps steps, validated on its inner
        fold. Kept in a small JSON, reused on --resume when its settings are unchanged."""
        name = f"lr-{learning_rate:g}-inner-{inner_number:02d}"
        path = folder / "inner" / f"{name}.json"
        settings = {**self.training_settings(method, data), "outer_fold": fold.number,
                    "learning_rate": learning_rate, "inner_fold": inner_number}
        if self.args.resume and path.is_file():
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("settings") == settings:
                logger.info("%s fold %d, learning rate %g, inner fold %d: done earlier.", method, fold.number,
                            learning_rate, inner_number)
                return document["curve"]
        seed = derived_seed(self.args.seed, fold.number, inner_number)  # the same start for every learning rate
        network = self.new_network(method, seed)
        train_cases, val_cases = data.cases(train_positions), data.cases(validation_positions)
        class_weights = fit_class_weights(self.protocol.class_weights, train_cases, self.task)
        run = TrainingRun(network, training_samples(train_cases, self.protocol.window_jitter),
                          central_samples(val_cases), dataclasses.replace(self.protocol, learning_rate=learning_rate),
                          class_weights, seed, self.dist, folder / "inner" / name / "checkpoints",
                          {**settings, "class_weights_used": class_weights},
                          name=f"{method} fold {fold.number} lr {learning_rate:g} inner {inner_number}",
                          keep_best=False)
        if self.args.resume:
            run.resume()
        run.run()
        curve = [{"step": row["step"], "balanced_accuracy": row["val_balanced_accuracy"],
                  "accuracy": row["val_accuracy"], "train_loss": row["train_loss"]} for row in run.state.history]
        if self.dist.is_main:
            write_json_atomically(path, {"settings": settings, "class_weights_used": class_weights,
                                         "training_cases": len(train_cases), "validation_cases": len(val_cases),
                                         "curve": curve})
            shutil.rmtree(folder / "inner" / name, ignore_errors=True)
        self.dist.barrier()
        return curve

    def test_fold(self, method: str, fold: OuterFold, data: FoldData, tested: TestedModel, settings: dict,
                  result_path: Path) -> None:
        network = tested.network
        network.load_state_dict(tested.weights)
        test = central_samples(data.cases(fold.test))
        probabilities = predict_probabilities(network, test, self.dist.device, tta=self.args.test_tta)
        predicted, truth = probabilities.argmax(1), test.labels
        metrics = held_out_metrics(truth, probabilities)
        predictions = [{"case_id": case.case_id, "truth": int(t), "predicted": int(p),
                        "probabilities": [round(float(v), 6) for v in row]}
                       for case, t, p, row in zip(test.cases, truth, predicted, probabilities)]
        row = {"fold": fold.number, **metrics, "test_cases": len(test), "learning_rate": tested.learning_rate,
               "steps": tested.steps}
        if METHODS[method].family == "cnn" and self.args.gradcam_cases > 0:
            self.write_gradcam(method, fold, network, test, predicted, probabilities)
        write_json_atomically(result_path, to_json_value({
            "settings": settings, "row": row, "metrics": metrics, "predictions": predictions,
            "class_weights_used": tested.class_weights, **tested.record, "history": tested.history}))
        logger.info("%s fold %d: test accuracy %.3f, precision %.3f, recall %.3f (learning rate %g, %d steps)", method,
                    fold.number, metrics["accuracy"], metrics["macro_precision"], metrics["macro_recall"],
                    tested.learning_rate, tested.steps)

    def write_gradcam(self, method, fold, network, test, predicted, probabilities) -> None:
        chosen = gradcam_choice(test.labels, self.args.gradcam_cases, len(self.class_names))
        grids = test.inputs(chosen)
        maps = gradcam_maps(network, method, grids, [int(predicted[i]) for i in chosen])
        folder = self.output / method / "gradcam" / f"fold-{fold.number:02d}"
        for position, grid, cam in zip(chosen, grids, maps):
            case = test.cases[position]
            caption = (f"{case.case_id}: truth {self.class_names[case.label]}, predicted "
                       f"{self.class_names[predicted[position]]} (p = {probabilities[position].max():.2f}); "
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
                                   "pretrained": self.method_pretrained(method),
                                   "pooled": self.write_pooled(method)}
                self.write_results(results)
                logger.info("%s: accuracy %.3f, precision %.3f, recall %.3f (means over %d folds)", method,
                            summary["accuracy"]["mean"], summary["macro_precision"]["mean"],
                            summary["macro_recall"]["mean"], len(rows))
        if self.dist.is_main:
            logger.info("Tables: %s and %s", self.output / "results.md", self.output / "results.csv")

    def write_pooled(self, method: str) -> dict:
        """The out-of-fold predictions of every case pooled: accuracy, balanced accuracy, macro
        F1 and AUC overall and per centre (Cyst-X) with seeded bootstrap 95 % intervals
        (`benchmark.json`, `benchmark.csv`) and a reliability diagram (`calibration.png`)."""
        by_case = {}
        for fold in self.folds:
            document = json.loads((self.output / method / f"fold-{fold.number:02d}" / "result.json")
                                  .read_text(encoding="utf-8"))
            by_case.update({item["case_id"]: item for item in document["predictions"]})
        items = [by_case[case.case_id] for case in self.cases]
        truth = np.array([item["truth"] for item in items])
        probabilities = np.array([item["probabilities"] for item in items], float)
        centres = [case.centre for case in self.cases] if self.args.cyst_x else None
        benchmark = grouped_metrics(truth, probabilities, centres, self.args.seed, self.args.bootstrap)
        curve = reliability_curve(truth, probabilities)
        folder = self.output / method
        write_benchmark_table(folder / "benchmark.csv", benchmark)
        write_calibration_png(folder / "calibration.png", curve, f"{METHODS[method].title}\n{len(truth)} "
                              "out-of-fold predictions", binary=probabilities.shape[1] == 2)
        record = {**benchmark, "bootstrap": {"resamples": self.args.bootstrap, "seed": self.args.seed,
                                             "interval": "95 % percentile, cases resampled with replacement"},
                  "task": self.task, "classes": list(self.class_names),
                  "auc": (f"binary, of {self.class_names[1]}" if probabilities.shape[1] == 2
                          else "one-vs-rest, macro over classes"),
                  "calibration": {"file": "calibration.png", "bins": curve}}
        write_json_atomically(folder / "benchmark.json", to_json_value(record))
        overall = benchmark["overall"]
        logger.info("%s, all %d out-of-fold predictions: accuracy %.3f, balanced accuracy %.3f, macro F1 %.3f, AUC %s",
                    method, overall["cases"], overall["accuracy"], overall["balanced_accuracy"], overall["macro_f1"],
                    "undefined" if overall["auc"] is None else f"{overall['auc']:.3f}")
        return record

    def write_results(self, results: dict) -> None:
        write_results_table(self.output, [{"method": m, "title": r["title"], "folds": len(r["folds"]),
                                           "summary": r["summary"]} for m, r in results.items()])
        with open(self.output / "predictions.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["method", "fold", "case", "truth", "predicted", *(f"p_{n}" for n in self.class_names)])
            for method in results:
                for fold in self.folds:
                    document = json.loads((self.output / method / f"fold-{fold.number:02d}" / "result.json")
                                          .read_text(encoding="utf-8"))
                    for item in document["predictions"]:
                        writer.writerow([method, fold.number, item["case_id"], item["truth"], item["predicted"],
                                         *item["probabilities"]])
        trainings = trainings_per_method(self.selection, len(self.folds), self.args.inner_folds, len(self.lr_grid))
        write_json_atomically(self.output / "cv.json", {
            **self.settings(), "data": self.description,
            **({"data_source": self.source} if self.source else {}), "how": HOW[self.selection],
            "trainings_per_method": trainings, "methods": results,
            "hardware": hardware_record(self.dist), "software": software_versions(),
            "command": command_line(SCRIPT, self.argv)})


def crossvalidate(args, argv: Optional[Sequence[str]] = None) -> int:
    """Run the cross-validation the arguments describe; returns the exit code (0 done, 2 refused)."""
    return run_script(SCRIPT, argv, log_file=Path(args.output) / "cv.log", device=args.device,
                      body=lambda dist: CrossValidation(args, argv, dist).run(), logger=logger,
                      on_interrupt="Finished folds, inner runs and validations are kept: run the same command "
                                   "with --resume.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (give one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--cohort", metavar="CSV", help="cohort CSV (see above)")
    source.add_argument("--phantoms", type=int, metavar="N", help="number of synthetic phantom patients")
    source.add_argument("--cyst-x", metavar="DIR", help="the Cyst-X benchmark folder as published (see cyst_x.py)")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom patient")
    add_phantom_shape_arguments(data)
    add_preprocessing_arguments(data)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--methods", nargs="+", default=["early-fusion"], metavar="METHOD",
                            help=f"{', '.join(METHODS)}; or all, ablations, baselines (default: early-fusion)")
    evaluation.add_argument("--folds", type=int, default=10,
                            help="outer folds when they are ours (default: %(default)s, the paper's)")
    evaluation.add_argument("--folds-by", choices=FOLDS_BY, default="auto",
                            help="with --cyst-x: the outer folds of the benchmark's published split file "
                                 "(published), ours by patient (patients), or one per centre (centre: "
                                 "leave-one-centre-out); auto (default): published when the folder has the file, "
                                 "else patients")
    evaluation.add_argument("--inner-folds", type=int, default=9,
                            help="inner folds of each outer training part (default: %(default)s)")
    evaluation.add_argument("--inner-selection", choices=INNER_SELECTIONS, default="grid",
                            help="grid (default): the inner folds choose the learning rate (of --lr-grid) and the "
                                 "number of steps, then a refit on the whole outer training part is tested; costs "
                                 "folds x (learning rates x inner folds + 1) trainings per method, 10 x (3 x 9 + 1) = "
                                 "280 with the defaults. checkpoint: inner fold 1 picks the checkpoint of one "
                                 "network trained with --lr (selects only the checkpoint; 10 trainings per method)")
    evaluation.add_argument("--lr-grid", type=float, nargs="+", metavar="LR",
                            help="with --inner-selection grid: the learning rates tried (default: "
                                 f"{' '.join(f'{lr:g}' for lr in DEFAULT_LR_GRID)}: the paper's 0.003 and two smaller "
                                 "ones, each a third of the one before); the steps tried are every --eval-every up "
                                 "to --steps")
    evaluation.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                            help="resamples of the pooled out-of-fold predictions for the 95 %% intervals of "
                                 "benchmark.json (default: %(default)s)")
    evaluation.add_argument("--test-tta", action="store_true",
                            help="classify test cases over the 8 flip / quarter-turn views, as IPMNRisk does by "
                                 "default (the paper: one view)")
    evaluation.add_argument("--gradcam-cases", type=int, default=3,
                            help="CNN baselines: Grad-CAM PNGs of this many test cases per fold (default: %(default)s)")
    add_model_arguments(parser)
    add_ipmn_protocol_arguments(parser)
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
