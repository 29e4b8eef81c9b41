"""One MoNet training run with the paper's protocol: set-up, the epochs, the resumable
checkpoint after each, the best model and its card.

`start_run` builds a `Run` from the command-line arguments (data, split, network, optimiser,
schedule; or the state of the last checkpoint with --resume), `train_epochs` trains and
validates epoch by epoch and saves the model whenever the validation loss improves, `finish`
writes the final card with the per-patient Dice of the validation and the test cases. The test
cases (a third side of the split by patient) are never trained on and never choose anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.weights import save_model
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING, check_preprocessing, mr_preprocessing

from monet_augmentation import apply_affine, crop_batch, random_affine, random_crop_corners
from monet_data import (SPLITS, SliceSet, modality_of, pancreas_pixels, prepare_data, select_slices,
                        split_by_patient, write_data_manifest)
from monet_losses import training_loss
from monet_protocol import CT_ONLY, RESUMABLE_CHANGES, MoNetProtocol, check_settings
from monet_validation import patient_dice_on_model_grid, recalibrated_batch_norm, validation_loss
from segmentation_data import PANCREAS_RULE
from segmentation_networks import ARCHITECTURES, NetworkSpec, build_network, output_bias, parameter_counts
from trainkit.checkpoint import (load_checkpoint_of_run, optimizer_parts, restore_optimizer, save_checkpoint,
                                 to_json_value)
from trainkit.distributed import Distributed
from trainkit.initial_weights import initial_weights_record, load_initial_weights
from trainkit.model_card import command_line, hardware_record, software_versions
from trainkit.protocol import protocol_from_arguments, protocol_record
from trainkit.run_files import RunFiles
from trainkit.runlog import Curves, progress_bar
from trainkit.seeding import (checkpoint_rng_states, derived_seed, restore_checkpoint_rng_states, seed_everything,
                              use_deterministic_kernels)

logger = logging.getLogger("train_monet")

#: The script whose command line the model card records.
SCRIPT = "Resources/Training/train_monet.py"


def case_counts(split: np.ndarray) -> dict:
    """{"training": n, "validation": n, "test": n} cases of each side of the split."""
    return {side: int(np.count_nonzero(split == side)) for side in SPLITS}


#: The bounds of the output's starting fraction (--prior-init).
PRIOR_LIMITS = (1e-4, 0.5)


def prior_fraction(pancreas_pixels: int, pixels: int) -> float:
    """--prior-init's starting fraction: pancreas pixels over all pixels, within PRIOR_LIMITS."""
    return float(np.clip(pancreas_pixels / pixels, *PRIOR_LIMITS))


def set_output_prior(network, fraction: float) -> None:
    """Make the untrained network's probabilities `fraction` everywhere, not 0.5: its output
    logit starts at log(fraction / (1 - fraction)) through the head's bias."""
    import torch

    with torch.no_grad():
        output_bias(network).fill_(math.log(fraction / (1 - fraction)))


@dataclass
class RunState:
    epoch: int = 0
    history: list = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0


@dataclass
class Run:
    """Everything one training run holds; built by `start_run`, advanced by `train_epoch`."""

    args: argparse.Namespace
    argv: Optional[Sequence[str]]
    protocol: MoNetProtocol
    spec: NetworkSpec
    preprocessing: dict
    files: RunFiles
    dist: Distributed
    description: str
    data_source: dict
    data_sha256: str
    prepared: list
    split: np.ndarray  # (n_cases,) "training", "validation" or "test"
    train: SliceSet
    val: SliceSet
    network: object
    model: object
    optimizer: object
    scheduler: object
    sampler: object
    rng: np.random.Generator
    loss_function: object
    steps_per_epoch: int
    state: RunState

    def fingerprint(self) -> dict:
        """What must not change between a run and its resumption (flat, so that a refusal can
        name the setting that differs)."""
        protocol = {k: v for k, v in dataclasses.asdict(self.protocol).items() if k not in RESUMABLE_CHANGES}
        return to_json_value({
            "architecture": self.spec.class_name, "architecture_params": self.spec.params,
            "preprocessing": self.preprocessing, **protocol, "seed": self.args.seed,
            "max_val_slices": self.args.max_val_slices, "data_sha256": self.data_sha256})


def base_preprocessing(args) -> dict:
    """The card's pre-processing before the protocol's CT intensities: the module's default at
    --input-size for CT; for MR (--modality mr, or --cyst-x) the percentile scaling, checked as
    inference will check it. CT-only settings given on an MR command line are refused."""
    if getattr(args, "cyst_x", None) and getattr(args, "modality", "ct") != "mr":
        raise InputError("Cyst-X's images are MRI: add --modality mr to train on them.")
    if modality_of(args) == "CT":
        return {**DEFAULT_PREPROCESSING, "input_size": args.input_size}
    given = [f"--{name.replace('_', '-')}" for name in CT_ONLY if getattr(args, name, None) is not None]
    if given:
        raise InputError(f"{', '.join(given)} set(s) Hounsfield units, which an MRI does not have; with --modality mr "
                         "the intensities are scaled by each volume's percentiles (--mr-percentiles).")
    preprocessing = mr_preprocessing(args.input_size, args.mr_percentiles)
    try:
        check_preprocessing(preprocessing)
    except PancreasAIError as error:
        raise InputError(f"--mr-percentiles {' '.join(map(str, args.mr_percentiles))}: {error}") from error
    return preprocessing


def start_run(args, argv, dist: Distributed) -> Run:
    import torch

    protocol = protocol_from_arguments(MoNetProtocol, args)
    spec = ARCHITECTURES[args.architecture]
    initial_weights_record(args.initial_weights)  # a missing or broken model file fails before the data are read
    preprocessing = protocol.preprocessing(base_preprocessing(args))
    files = RunFiles.for_output(args.output)
    check_settings(protocol, spec, preprocessing, dist)

    # The order of random draws is that of the first version of this script, so that the
    # documented demo command still makes the same split, slices and batches.
    seed_everything(args.seed)
    use_deterministic_kernels()
    rng = np.random.default_rng(args.seed)
    description, source, data_sha256, prepared, cached, cache = prepare_data(args, dist, files, preprocessing)
    split = split_by_patient([case.patient_id for case in prepared], protocol.test_fraction,
                             protocol.validation_fraction, rng)
    train, val = select_slices(cached, split, protocol, args.max_val_slices, rng)
    if dist.is_main:
        write_data_manifest(files.data_manifest, prepared, data_sha256, description, cache, split)
    if len(train) == 0 or len(val) == 0:
        raise InputError("No slice is left for training or for validation: the label maps hold (almost) "
                         "no pancreas. Check that the label files belong to the CTs.")

    # Channels-last: the same arithmetic, laid out as oneDNN and cuDNN convolve fastest.
    network = build_network(spec).to(dist.device, memory_format=torch.channels_last)
    if args.initial_weights:
        load_initial_weights(network, args.initial_weights, spec.class_name)
    elif protocol.prior_init:
        fraction = prior_fraction(*pancreas_pixels(train))
        set_output_prior(network, fraction)
        logger.info("Output bias set to the training slices' pancreas fraction %.4f", fraction)
    if dist.rank > 0:  # own dropout masks per process; rank 0 goes on like a single process
        torch.manual_seed(derived_seed(args.seed, dist.rank))
    optimizer = torch.optim.NAdam(network.parameters(), lr=protocol.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=protocol.lr_factor,
                                                           patience=protocol.lr_patience)
    sampler = torch.Generator().manual_seed(args.seed)
    steps = protocol.steps_per_epoch or math.ceil(len(train) / protocol.batch_size)
    run = Run(args, argv, protocol, spec, preprocessing, files, dist, description, source, data_sha256,
              prepared, split, train, val, network, None, optimizer, scheduler, sampler, rng,
              training_loss(protocol), steps, RunState())
    if args.resume:
        resume(run)
    elif dist.is_main and any(files.checkpoints.glob("epoch-*")):
        logger.warning("Starting a new run: removing the checkpoint of an earlier run in %s "
                       "(--resume would have continued it).", files.checkpoints)
        for stale in files.checkpoints.glob("epoch-*"):
            stale.unlink()
    run.model = dist.wrap(network)
    logger.info("%s: %s parameters (%s with BatchNorm statistics); %s", spec.title,
                f"{parameter_counts(network)['trainable']:,}", f"{parameter_counts(network)['with_bn_running_stats']:,}",
                dist.describe())
    counts = case_counts(split)
    logger.info("%d training slices from %d cases, %d validation slices from %d cases; %d test cases held out",
                len(train), counts["training"], len(val), counts["validation"], counts["test"])
    logger.info("Protocol: %s", json.dumps(protocol_record(protocol)))
    return run


def resume(run: Run) -> None:
    """Continue from the last checkpoint: weights, optimiser, scheduler, random states, history."""
    checkpoint = load_checkpoint_of_run(run.files.checkpoints, run.fingerprint())
    if checkpoint is None:
        raise InputError(f"--resume: there is no checkpoint in {run.files.checkpoints}; start without --resume.")
    state = checkpoint.state
    tensors = checkpoint.tensors
    run.network.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(run.optimizer, tensors, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    restore_checkpoint_rng_states(tensors, state["rng"], run.dist, {"sampler": run.sampler}, {"selection": run.rng},
                                  seed=run.args.seed, position=checkpoint.epoch)
    run.state = RunState(checkpoint.epoch, state["history"], state["best_val_loss"], state["best_epoch"])
    logger.info("Resuming after epoch %d (best validation loss %.4f at epoch %d).",
                checkpoint.epoch, run.state.best_val_loss, run.state.best_epoch)


def train_epoch(run: Run, epoch: int) -> float:
    """One epoch of optimiser steps; returns the mean training loss over all processes."""
    import torch

    protocol, dist = run.protocol, run.dist
    run.model.train()
    shard = dist.shard(protocol.batch_size)
    total = 0.0
    bar = progress_bar(range(run.steps_per_epoch), description=f"epoch {epoch}", enabled=dist.is_main)
    for _ in bar:
        # Every process draws and prepares the whole batch (the same random numbers in all, and
        # a crop's draws depend on the slice), then trains on its own part of it.
        picks = torch.randint(len(run.train), (protocol.batch_size,), generator=run.sampler)
        theta = random_affine(protocol.batch_size, run.sampler, protocol)
        images, masks = run.train.batch(picks.numpy())
        images, masks = apply_affine(images.to(dist.device), masks.to(dist.device), theta, protocol.fill)
        if protocol.crop:
            corners = random_crop_corners(masks, protocol.crop, run.sampler)
            images, masks = crop_batch(images, masks, corners, protocol.crop)
        images = images[shard].contiguous(memory_format=torch.channels_last)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=protocol.precision == "bf16"):
            logits = run.model(images)
        loss = run.loss_function(logits.float(), masks[shard])
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        total += float(loss.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    summed, count = dist.sum([total, run.steps_per_epoch])
    return summed / count


def save_run_checkpoint(run: Run, epoch: int) -> None:
    """Collective (every process sends its random state); the main process writes."""
    generator_tensors, generator_document = checkpoint_rng_states(run.dist, {"sampler": run.sampler},
                                                                  {"selection": run.rng})
    if not run.dist.is_main:
        return
    tensors = {f"model.{key}": value for key, value in run.network.state_dict().items()}
    optimizer_tensors, optimizer_document = optimizer_parts(run.optimizer)
    tensors.update(optimizer_tensors)
    tensors.update(generator_tensors)
    save_checkpoint(run.files.checkpoints, epoch, tensors, {
        "run": run.fingerprint(), "optimizer": optimizer_document, "scheduler": run.scheduler.state_dict(),
        "rng": generator_document, "history": run.state.history, "best_val_loss": run.state.best_val_loss,
        "best_epoch": run.state.best_epoch, "world_size": run.dist.world_size})


def recorded_protocol(protocol: MoNetProtocol, preprocessing: dict) -> dict:
    """The protocol for the card; an MR run's CT-only settings are marked unused (its intensities
    are in the card's pre-processing)."""
    record = protocol_record(protocol)
    if preprocessing.get("modality") == "MR":
        for name in CT_ONLY:
            record["origins"][name] = "not used: MR intensities are scaled by percentiles (see preprocessing)"
    return record


def model_card(run: Run, metrics: dict) -> dict:
    history = run.state.history
    return {
        "name": run.files.weights.stem,
        "title": run.args.title or run.spec.title,
        "architecture": run.spec.class_name,
        "architecture_params": run.spec.params,
        "parameters": parameter_counts(run.network),
        "task": ("pancreas segmentation on CT" if modality_of(run.args) == "CT" else
                 "pancreas segmentation on MRI (T2-weighted: the region of IPMNRisk's automatic mode)"
                 if getattr(run.args, "sequence", "t2") == "t2" else "pancreas segmentation on MRI (T1-weighted)"),
        "classes": ["pancreas"],
        "preprocessing": run.preprocessing,
        "postprocessing": {"threshold": 0.5, "keep_largest_component": run.protocol.keep_largest_component},
        "intended_use": run.args.intended_use,
        "training": {
            "data": run.description,
            "data_source": run.data_source,
            "data_sha256": run.data_sha256,
            "labels": PANCREAS_RULE,
            "cases": case_counts(run.split),
            "split": {"test_fraction": run.protocol.test_fraction,
                      "validation_fraction": run.protocol.validation_fraction,
                      "how": "by patient: the test patients are drawn first and never used in training or "
                             "selection; the validation patients, drawn from the others, drive the "
                             "learning-rate drops and choose the checkpoint; the cases are in the run's "
                             "data.json"},
            "slices": {"training": len(run.train), "validation": len(run.val)},
            "protocol": recorded_protocol(run.protocol, run.preprocessing),
            "epochs_run": len(history),
            "best_epoch": run.state.best_epoch,
            "steps_per_epoch": run.steps_per_epoch,
            "batch_size": run.protocol.batch_size,
            "seed": run.args.seed,
            "initial_weights": initial_weights_record(run.args.initial_weights),
            "max_val_slices": run.args.max_val_slices,
            "hardware": hardware_record(run.dist),
            "software": software_versions(),
            "command": command_line(SCRIPT, run.argv),
        },
        "metrics": metrics,
        "history": history,
        "licence": "Apache-2.0",
    }


def train_epochs(run: Run) -> None:
    protocol, state, dist = run.protocol, run.state, run.dist
    curves = Curves(run.files.curves, run.files.tensorboard, enabled=dist.is_main)
    if dist.is_main:
        logger.info("Curves: %s%s", run.files.curves,
                    f" and TensorBoard in {run.files.tensorboard}" if curves.has_tensorboard else
                    " (TensorBoard is not installed)")
    try:
        for epoch in range(state.epoch + 1, protocol.epochs + 1):
            patience = protocol.early_stopping_patience
            if patience and state.epoch - state.best_epoch >= patience:
                logger.info("No validation improvement for %d epochs: stopping (early_stopping_patience).", patience)
                break
            started = time.perf_counter()
            train_loss = train_epoch(run, epoch)
            dist.broadcast_buffers(run.network)
            evaluated = run.network
            if protocol.crop and protocol.recalibration_slices:
                evaluated = recalibrated_batch_norm(run.network, run.train, run.rng,
                                                    protocol.recalibration_slices, dist.device)
            val_loss, val_dice = validation_loss(evaluated, run.val, protocol.dice_smooth, dist)
            run.scheduler.step(val_loss)
            lr = run.optimizer.param_groups[0]["lr"]
            state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "val_slice_dice": val_dice, "lr": lr,
                                  "seconds": round(time.perf_counter() - started, 1)})
            state.epoch = epoch
            improved = val_loss < state.best_val_loss
            if improved:
                state.best_val_loss, state.best_epoch = val_loss, epoch
                if dist.is_main:
                    save_model(evaluated.state_dict(), run.files.weights,
                               model_card(run, {"validation": state.history[-1]}))
            logger.info("epoch %d: train loss %.4f, val loss %.4f, val Dice %.4f, lr %.1e (%.0f s)%s",
                        epoch, train_loss, val_loss, val_dice, lr, state.history[-1]["seconds"],
                        " -> saved" if improved else "")
            curves.write(state.history)
            save_run_checkpoint(run, epoch)
    finally:
        curves.close()


def finish(run: Run) -> None:
    """Re-write the best model's card with the final history and the per-patient Dice of the
    validation cases (which chose it) and of the test cases (held out)."""
    if not run.dist.is_main:
        return
    if not run.files.weights.exists() or not run.state.history:
        raise PancreasAIError("No model was saved: the validation loss never became a number. "
                              "Lower the learning rate or check the data.")
    from safetensors.torch import load_file

    best = build_network(run.spec).to(run.dist.device)
    best.load_state_dict(load_file(str(run.files.weights)))
    best_row = next(row for row in run.state.history if row["epoch"] == run.state.best_epoch)
    metrics = {"validation": best_row}
    every_case = run.train.cases  # a SliceSet refers to the slices of all cases
    for split, key, role in (("validation", "validation_patients", "chose the checkpoint: optimistic"),
                             ("test", "test_patients", "held out: never used in training or selection")):
        cases = [slices for slices, side in zip(every_case, run.split) if side == split]
        scores = [s for s in patient_dice_on_model_grid(best, cases, run.dist.device) if not math.isnan(s)]
        if scores:
            metrics[key] = {
                "dice_mean": float(np.mean(scores)), "dice_sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
                "cases": len(scores), "role": role,
                "how": "per case, all its slices on the model's grid, threshold 0.5, no clean-up; "
                       "evaluate_segmentation.py gives Dice and Hausdorff distances on the original grid"}
    save_model(best.state_dict(), run.files.weights, model_card(run, metrics))
    logger.info("Best validation loss %.4f at epoch %d; model: %s", run.state.best_val_loss,
                run.state.best_epoch, run.files.weights)
    for key, label in (("validation_patients", "Validation"), ("test_patients", "Test")):
        if key in metrics:
            spread = metrics[key]["dice_sd"]
            logger.info("%s Dice per patient (model grid): %.3f%s over %d case(s)", label, metrics[key]["dice_mean"],
                        "" if spread is None else f" +- {spread:.3f}", metrics[key]["cases"])
