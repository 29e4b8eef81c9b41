"""Train the IPMN risk ViT for IPMNRisk: writes .safetensors + the model card the module loads.

Data (one of):
  --cohort CSV               one row per scan: patient, t1, t2, label and the region
                             (roi_center + roi_size as "R,A,S" mm, or roi_mask); paths relative
                             to the CSV. A seeded, patient-grouped, class-stratified 1/--inner-folds
                             of the patients is the validation set that picks the checkpoint.
  --cyst-x DIR               the public Cyst-X benchmark folder as published (cyst_x.py: T1/T2
                             crops, IPMN_labels_total.xlsx); validation set chosen as for --cohort.
  (default) phantoms         synthetic T1/T2 phantoms, --patients seeds for training and
                             --val-patients others for validation (how the demo weights were made,
                             with what is now --normalisation crop_stack_min_max)

Inputs go through exactly the module's own code (IPMNRiskLib.preprocessing and .grids), and the
network is IPMNRiskLib.network's, so training and inference cannot drift apart. What is fitted
on data is fitted on the training cases only, never on the validation cases: the
standardisation landmarks (--preprocessing paper or standardisation) and balanced class
weights (--class-weights balanced); the card records both, and the normalisation used.

Task (--task): 3-class (normal, low-risk, high-risk IPMN; the seed paper's, default) or 2-class
(high-risk IPMN vs no or low-risk IPMN, the Cyst-X benchmark's second task, reported as AUC):
the data's 0 / 1 / 2 risk labels become the task's classes (2-class: high risk 1, else 0), the
validation set is stratified by them, the card's classes name them (IPMNRisk follows the card),
and the validation metrics add the AUC (2-class: of high risk). A 2-class run without
--class-weights uses balanced weights, as the paper's three are for three classes.

Protocol defaults (--protocol paper: Proietto Salanitri et al. 2022, and the authors' code):
cross-entropy with class weights [1, 0.65, 0.45], Adam lr 0.003, batch 8, 3000 optimiser steps,
every sliding window of 9 slices, each whole volume min-max normalised to [0, 1], random
horizontal flips and 90-degree rotations applied identically to all 9 slices and both
modalities, the checkpoint with the best validation balanced accuracy is kept. --protocol ours
changes two: the crop stack is min-max normalised instead of the whole volume, and the class
weights are balanced on the training cases (python train_ipmn.py --help lists every setting with
both values).

  one GPU or the CPU:  python Resources/Training/train_ipmn.py --cohort cohort.csv --pretrained-hub --output runs/ipmn
  several GPUs:        torchrun --standalone --nproc_per_node 4 Resources/Training/train_ipmn.py --cohort ... --output ...
  continue a run:      the same command with --resume
  with the cross-validation's estimate in the card:  add --cv-results runs/cv
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.checkpoint import write_json_atomically
from trainkit.initial_weights import add_initial_weights_argument, initial_weights_record, load_initial_weights  # noqa: E501
from trainkit.model_card import command_line, hardware_record, software_versions
from trainkit.run_files import RunFiles
from trainkit.script import run_script
from trainkit.runlog import Curves
from trainkit.seeding import seed_everything, use_deterministic_kernels

from PancreasAILib.errors import InputError
from PancreasAILib.weights import save_model
from IPMNRiskLib.network import TASKS

import cyst_x
from ipmn_data import (card_preprocessing, central_samples, data_sha256, inputs_sha256, phantom_cases,
                       read_cohort_csv, training_samples, without_fitted_statistics)
from ipmn_folds import holdout_split
from ipmn_networks import build_network, parameter_count
from ipmn_setup import (add_model_arguments, add_phantom_shape_arguments, add_preprocessing_arguments,
                        add_run_arguments, architecture_of, cache_of, prepare_everywhere, pretrained_of,
                        pretrained_record, steps_of, task_description, task_labels,
                        with_task_labels)
from ipmn_training import (TrainingRun, add_ipmn_protocol_arguments, check_protocol, fit_class_weights,
                           full_protocol_record, held_out_metrics, ipmn_protocol_from_arguments,
                           predict_probabilities)

logger = logging.getLogger("train_ipmn")

SCRIPT = "Resources/Training/train_ipmn.py"


# --- data ------------------------------------------------------------------------------------------

def load_data(args, dist, cache, normalisation: str, task: str):
    """(training cases, validation cases, description, source record, pre-processing steps);
    the cases labelled with their class in `task`, the validation set stratified by it, the
    standardisation landmarks fitted on the training cases alone."""
    phantoms = not (args.cohort or args.cyst_x)
    steps = steps_of(args, phantoms)
    if phantoms:
        shape, spacing = args.phantom_shape, args.phantom_spacing
        train_seeds = range(args.first_seed, args.first_seed + args.patients)
        val_seeds = range(args.val_first_seed, args.val_first_seed + args.val_patients)
        if not train_seeds or not val_seeds:
            raise InputError("--patients and --val-patients must be at least 1.")
        n_train = 3 * len(train_seeds)
        prepared, steps = prepare_everywhere(phantom_cases([*train_seeds, *val_seeds], shape, spacing),
                                             steps, cache, dist, fit_on=range(n_train), normalisation=normalisation)
        prepared = with_task_labels(prepared, task)
        train, val = prepared[:n_train], prepared[n_train:]
        description = (f"synthetic T1/T2 phantoms (PancreasAIPhantoms.mr), patients seeds {train_seeds[0]}-"
                       f"{train_seeds[-1]} x 3 classes")
        source = {"kind": "phantoms", "seeds": [train_seeds[0], train_seeds[-1]],
                  "validation_seeds": [val_seeds[0], val_seeds[-1]], "shape": list(shape), "spacing": list(spacing)}
        return train, val, description, source, steps
    if args.cyst_x:
        cohort = cyst_x.read_cyst_x(args.cyst_x)
        logger.info("%s (rows %s without a label)", cohort.description(),
                    ", ".join(map(str, cohort.skipped_unlabelled)) or "none")
        cases = cohort.cases
    else:
        cases = read_cohort_csv(args.cohort)
    train_index, val_index = holdout_split(task_labels(cases, task), [c.patient_id for c in cases],
                                           args.inner_folds, args.seed, TASKS[task])
    prepared, steps = prepare_everywhere(cases, steps, cache, dist, fit_on=train_index, normalisation=normalisation)
    prepared = with_task_labels(prepared, task)
    train, val = [prepared[i] for i in train_index], [prepared[i] for i in val_index]
    patients = len({c.patient_id for c in prepared})
    validation = f"1/{args.inner_folds} of the patients (scikit-learn StratifiedGroupKFold, first fold, seeded)"
    if args.cyst_x:
        description, source = cohort.description(), {**cohort.record(), "validation": validation}
    else:
        description = f"cohort {Path(args.cohort).name}: {len(prepared)} scans of {patients} patients"
        source = {"kind": "cohort_csv", "file": Path(args.cohort).name, "validation": validation}
    return train, val, description, source, steps


def write_data_manifest(path: Path, train, val, data_hash: str, description: str) -> None:
    """The cases and their split: stays in the run folder, out of the card (names may identify patients)."""
    cases = [{"case_id": c.case_id, "patient_id": c.patient_id, "label": c.label, "slices": c.slice_count,
              "split": split} for split, group in (("training", train), ("validation", val)) for c in group]
    write_json_atomically(path, {"data": description, "data_sha256": data_hash, "cases": cases})


def class_counts(cases, task: str) -> dict:
    return {name: sum(1 for c in cases if c.label == label) for label, name in enumerate(TASKS[task])}


def cross_validation_record(folder: Optional[str], fingerprint: dict) -> Optional[dict]:
    """The early-fusion estimate of a crossvalidate_ipmn.py run, for the card; a warning when
    that run used other data or settings than this training."""
    if not folder:
        return None
    path = Path(folder) / "cv.json"
    if not path.is_file():
        raise InputError(f"--cv-results: there is no cv.json in {folder}; give the --output folder of "
                         "crossvalidate_ipmn.py.")
    document = json.loads(path.read_text(encoding="utf-8"))
    method = document.get("methods", {}).get("early-fusion")
    if method is None:
        raise InputError(f"--cv-results: {path} has no early-fusion results (run it with --methods early-fusion).")
    # Fitted per training part, chosen per fold, or per run: not what makes two runs comparable.
    per_run = ("class_weights_used", "origins", "learning_rate_grid", "checkpoint_selection",
               *(("learning_rate",) if document.get("inner_selection") == "grid" else ()))
    comparable = {
        "data_sha256": lambda record: record.get("data_sha256"),
        "architecture": lambda record: record.get("architecture"),
        "architecture_params": lambda record: record.get("architecture_params"),
        "preprocessing": lambda record: without_fitted_statistics(record.get("preprocessing") or {}),
        "protocol": lambda record: {k: v for k, v in (record.get("protocol") or {}).items() if k not in per_run},
    }
    for key, part in comparable.items():
        if part(document) != part(fingerprint):
            logger.warning("The cross-validation in %s used another %s than this training; the card records "
                           "its estimate all the same.", folder, key)
    return {"method": "early-fusion", "outer_folds": document["folds"], "inner_folds": document["inner_folds"],
            "inner_selection": document.get("inner_selection", "checkpoint"), "summary": method["summary"],
            "per_fold": method["folds"], "data_sha256": document["data_sha256"], "protocol": document["protocol"],
            "how": document["how"]}


# --- the card ------------------------------------------------------------------------------------

def model_card(context: dict, state, metrics: dict) -> dict:
    args = context["args"]
    return {
        "name": context["files"].weights.stem,
        "title": args.title,
        "architecture": context["architecture"],
        "architecture_params": context["params"],
        "parameters": context["parameters"],
        "task": task_description(context["task"]),
        "classes": list(TASKS[context["task"]]),
        "preprocessing": card_preprocessing(context["steps"], context["normalisation"]),
        "intended_use": args.intended_use,
        "training": {
            "data": context["description"],
            "data_source": context["source"],
            "data_sha256": context["data_sha256"],
            "cases": {"training": len(context["train_cases"]), "validation": len(context["val_cases"])},
            "classes": {"training": class_counts(context["train_cases"], context["task"]),
                        "validation": class_counts(context["val_cases"], context["task"])},
            "windows": {"training": len(context["train"]), "validation": len(context["val"])},
            "protocol": context["protocol_record"],
            "pretrained": context["pretrained"],
            "initial_weights": context["initial_weights"],
            "steps_run": state.step,
            "best_step": state.best_step,
            "seed": args.seed,
            "hardware": hardware_record(context["dist"]),
            "software": software_versions(),
            "command": command_line(SCRIPT, context["argv"]),
        },
        "metrics": metrics,
        "history": state.history,
        "licence": "Apache-2.0",
    }


def final_metrics(network, context: dict, state) -> dict:
    """The selected weights on the validation cases (central window, without and with the 8
    test-time views IPMNRisk uses by default): the four metrics and the AUC (2-class: of high
    risk), plus the cross-validation estimate if given."""
    val, device = context["val"], context["dist"].device
    truth = val.labels
    metrics = {"validation_at_selected_checkpoint": state.best_row,
               "validation": {**held_out_metrics(truth, predict_probabilities(network, val, device)),
                              "cases": len(val)},
               "validation_tta": held_out_metrics(truth, predict_probabilities(network, val, device, tta=True))}
    if context["cross_validation"] is not None:
        metrics["cross_validation"] = context["cross_validation"]
    return metrics


# --- the run -------------------------------------------------------------------------------------

def run_training(args, argv, dist) -> None:
    files = RunFiles.for_output(args.output)
    protocol = ipmn_protocol_from_arguments(args)
    check_protocol(protocol, dist)
    phantoms = not (args.cohort or args.cyst_x)
    architecture, params = architecture_of(args, phantoms)
    if args.initial_weights and (args.pretrained_file or args.pretrained_hub):
        raise InputError("Give --initial-weights (one of our models) or --pretrained-file/--pretrained-hub "
                         "(natural-image weights), not both.")
    # Read its card before the data are made, so that a missing or broken file fails at once.
    initial_weights = initial_weights_record(args.initial_weights)
    pretrained = pretrained_of(args, "early-fusion", architecture)

    # The order of random draws is that of the first version of this script, so that the
    # documented demo command still makes the same model.
    seed_everything(args.seed)
    use_deterministic_kernels()
    cache = cache_of(args, files.weights, phantoms)
    train_cases, val_cases, description, source, steps = load_data(args, dist, cache, protocol.normalisation,
                                                                   protocol.task)
    data_hash = data_sha256([*train_cases, *val_cases])
    train, val = training_samples(train_cases, protocol.window_jitter), central_samples(val_cases)
    class_weights = fit_class_weights(protocol.class_weights, train_cases, protocol.task)
    if dist.is_main:
        files.folder.mkdir(parents=True, exist_ok=True)
        write_data_manifest(files.data_manifest, train_cases, val_cases, data_hash, description)
    logger.info("%d training windows from %d cases, %d validation cases; stack cache: %s",
                len(train), len(train_cases), len(val_cases), cache.folder or "none (phantoms are made again)")

    network = build_network("early-fusion", architecture, params, pretrained, len(TASKS[protocol.task]))
    record = full_protocol_record(protocol, class_weights)
    fingerprint = {"data_sha256": data_hash, "inputs_sha256": inputs_sha256([*train_cases, *val_cases]),
                   "architecture": architecture, "architecture_params": params,
                   "preprocessing": card_preprocessing(steps, protocol.normalisation), "protocol": record,
                   "pretrained": pretrained_record(pretrained), "seed": args.seed}
    if initial_weights:  # only then, so that runs without it keep their first fingerprint
        load_initial_weights(network, args.initial_weights, architecture)
        fingerprint["initial_weights"] = initial_weights
    context = {"args": args, "argv": argv, "files": files, "dist": dist, "architecture": architecture,
               "params": params, "parameters": parameter_count(network), "steps": steps,
               "normalisation": protocol.normalisation, "task": protocol.task,
               "description": description, "source": source, "data_sha256": data_hash,
               "train_cases": train_cases, "val_cases": val_cases, "train": train, "val": val,
               "protocol_record": record, "pretrained": fingerprint["pretrained"],
               "initial_weights": initial_weights,
               "cross_validation": cross_validation_record(args.cv_results, fingerprint)}
    curves = Curves(files.curves, files.tensorboard, enabled=dist.is_main)

    def save_best(best_state: dict, state) -> None:
        save_model(best_state, files.weights, model_card(context, state, {"validation_at_selected_checkpoint": state.best_row}))

    run = TrainingRun(network, train, val, protocol, class_weights, args.seed, dist, files.checkpoints,
                      fingerprint, curves, name="IPMN ViT", on_best=save_best)
    logger.info("%s %s: %s parameters, %s; %s", architecture, json.dumps(params), f"{context['parameters']:,}",
                f"pretrained {run_pretrained_text(pretrained)}", dist.describe())
    logger.info("Protocol: %s", json.dumps(record))
    if args.resume:
        if not run.resume():
            raise InputError(f"--resume: there is no checkpoint in {files.checkpoints}; start without --resume.")
    elif dist.is_main and any(files.checkpoints.glob("epoch-*.json")):
        logger.warning("Starting a new run: the checkpoint of an earlier run in %s will be replaced "
                       "(use --resume to continue it instead).", files.checkpoints)
    try:
        best = run.run()
    finally:
        curves.close()
    if dist.is_main:
        network.load_state_dict(best)
        metrics = final_metrics(network, context, run.state)
        save_model(best, files.weights, model_card(context, run.state, metrics))
        logger.info("Best validation balanced accuracy %.3f at step %d (accuracy %.3f; with test-time views %.3f); "
                    "model: %s", run.state.best_score, run.state.best_step, metrics["validation"]["accuracy"],
                    metrics["validation_tta"]["accuracy"], files.weights)


def run_pretrained_text(pretrained) -> str:
    return "no (random initialisation)" if pretrained is None else pretrained.describe()


def train(args, argv: Optional[Sequence[str]] = None) -> int:
    """Run the training the arguments describe; returns the exit code (0 done, 2 refused)."""
    return run_script(SCRIPT, argv, log_file=RunFiles.for_output(args.output).log, device=args.device,
                      body=lambda dist: run_training(args, argv, dist), logger=logger,
                      on_interrupt="Finished validations are checkpointed: run the same command with --resume.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--cohort", metavar="CSV", help="cohort CSV (see above); without it or --cyst-x: phantoms")
    source.add_argument("--cyst-x", metavar="DIR", help="the Cyst-X benchmark folder as published (see cyst_x.py)")
    data.add_argument("--inner-folds", type=int, default=9,
                      help="with --cohort or --cyst-x: 1/N of the patients validate (default %(default)s, as one "
                           "inner fold of the cross-validation)")
    data.add_argument("--patients", type=int, default=60, help="phantom patients for training (each gives 3 classes)")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first training phantom patient")
    data.add_argument("--val-patients", type=int, default=20, help="phantom patients for validation")
    data.add_argument("--val-first-seed", type=int, default=1000, help="seed of the first validation phantom patient")
    add_phantom_shape_arguments(data)
    add_preprocessing_arguments(data)
    add_model_arguments(parser)
    add_ipmn_protocol_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="path of the .safetensors to write (its card goes beside it)")
    run.add_argument("--title", default="IPMN ViT", help="title in the model card")
    run.add_argument("--intended-use", default="", help="intended use, written into the model card")
    run.add_argument("--cv-results", metavar="DIR",
                     help="output folder of crossvalidate_ipmn.py: its early-fusion estimate goes into the card")
    add_initial_weights_argument(run)
    add_run_arguments(run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return train(args, argv)


if __name__ == "__main__":
    sys.exit(main())
