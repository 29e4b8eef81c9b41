"""Training one IPMN risk network with the paper's protocol: the loop shared by the final model
(train_ipmn.py) and every fold of the cross-validation (crossvalidate_ipmn.py).

Each optimiser step draws `batch_size` training windows at random (with replacement) and one
of the 8 flip / quarter-turn views per window, applied to every 64 x 64 tile in place (all 9
slices and both channels alike: IPMNRiskLib.grids.transform_tiles, the function test-time
augmentation uses); cross-entropy with class weights; Adam. Every `eval_every` steps the
central window of each validation case is classified; the weights with the best balanced
accuracy are kept. A checkpoint (.safetensors + JSON) is written at each validation, so a
stopped run resumes exactly where it was.
"""

from __future__ import annotations

import argparse
import math
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError
from IPMNRiskLib.grids import DIHEDRAL_VIEWS, transform_tiles

from ipmn_data import WindowSamples
from ipmn_metrics import classification_metrics
from trainkit.checkpoint import (load_checkpoint_of_run, optimizer_parts, restore_optimizer, save_checkpoint,
                                 to_json_value)
from trainkit.distributed import Distributed
from trainkit.protocol import option, protocol_record
from trainkit.runlog import Curves, progress_bar
from trainkit.seeding import checkpoint_rng_states, restore_checkpoint_rng_states

logger = logging.getLogger(__name__)

#: normal, low-risk, high-risk (the authors' code).
PAPER_CLASS_WEIGHTS = (1.0, 0.65, 0.45)
EVALUATION_BATCH = 32
#: Settings that may change when a run is resumed (to train longer).
RESUMABLE_CHANGES = ("steps",)


@dataclass(frozen=True)
class IPMNProtocol:
    """The paper's training protocol; each field is a command-line option of the same name.
    The class weights (three numbers) are the option --class-weights, default PAPER_CLASS_WEIGHTS."""

    FIXED: ClassVar[dict] = {
        "loss": "cross-entropy with class weights",
        "optimizer": "Adam",
        "augmentation": "random horizontal flip and 0-3 quarter turns (one of 8 views, uniformly), "
                        "the same for all 9 tiles and both channels",
        "sampling": "training windows drawn at random with replacement",
        "validation": "central 9-slice window of each validation case, as IPMNRisk classifies",
        "checkpoint_selection": "best validation balanced accuracy",
    }

    learning_rate: float = option(0.003, "Adam learning rate", flags=("--learning-rate", "--lr"))
    batch_size: int = option(8, "grids per optimiser step, over all processes")
    steps: int = option(3000, "optimiser steps (the authors' code counts steps)")
    window_jitter: int = option(-1, "training windows: -1 every sliding window of 9 slices (the paper's); "
                                    "N >= 0 only those starting within N slices of the central one")
    eval_every: int = option(100, "optimiser steps between validations (and checkpoints)")
    lr_schedule: str = option("constant", "constant (the paper's), or warmup-cosine: linear warm-up over 5%% of "
                                          "the steps, then cosine decay to 0 (helps a ViT trained from scratch)",
                              choices=("constant", "warmup-cosine"))
    precision: str = option("fp32", "arithmetic of the training steps: fp32 (the paper's), or bf16 mixed precision "
                                    "(torch.autocast: matrix products in bfloat16, weights and loss in float32; "
                                    "faster on CPUs with AMX and on recent GPUs)", choices=("fp32", "bf16"))


def learning_rate_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (1-based)."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, steps // 20)
    done = step - 1
    return min(1.0, (done + 1) / warmup) * 0.5 * (
        1.0 + math.cos(math.pi * min(1.0, max(0, done - warmup) / max(1, steps - warmup))))


def add_class_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class-weights", type=float, nargs=3, default=list(PAPER_CLASS_WEIGHTS),
                        metavar=("NORMAL", "LOW", "HIGH"),
                        help="cross-entropy weight of each class (default: the authors' %(default)s)")


def full_protocol_record(protocol: IPMNProtocol, class_weights: Sequence[float]) -> dict:
    """The protocol as the model card records it."""
    return {**protocol_record(protocol), "class_weights": [float(w) for w in class_weights]}


def check_protocol(protocol: IPMNProtocol, class_weights: Sequence[float], dist: Distributed) -> None:
    if protocol.batch_size < 1 or protocol.steps < 1 or protocol.eval_every < 1:
        raise InputError("The batch size, the number of steps and --eval-every must be at least 1.")
    if protocol.batch_size % dist.world_size:
        raise InputError(f"The batch size ({protocol.batch_size}) must be divisible by the number of "
                         f"processes ({dist.world_size}): each takes an equal part of every batch.")
    if min(class_weights) < 0 or max(class_weights) <= 0:
        raise InputError(f"The class weights must be non-negative and not all zero (got {list(class_weights)}).")


# --- classifying ------------------------------------------------------------------------------------

def predict_probabilities(network, samples: WindowSamples, device, positions: Optional[np.ndarray] = None,
                          tta: bool = False) -> np.ndarray:
    """(N, 3) float64 softmax of the samples at `positions` (default all), in batches of 32;
    with `tta`, the mean over the 8 flip / quarter-turn views (as IPMNRisk's default)."""
    import torch

    positions = np.arange(len(samples)) if positions is None else np.asarray(positions)
    views = DIHEDRAL_VIEWS if tta else DIHEDRAL_VIEWS[:1]
    network.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(positions), EVALUATION_BATCH):
            grids = samples.inputs(positions[start:start + EVALUATION_BATCH])
            total = 0.0
            for flip, turns in views:
                batch = grids if (flip, turns) == (False, 0) else np.stack([transform_tiles(g, flip, turns) for g in grids])
                logits = network(torch.from_numpy(batch).to(device))
                total = total + torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
            parts.append(total / len(views))
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def validation_metrics(network, samples: WindowSamples, dist: Distributed) -> dict:
    """Accuracy, macro precision / recall and balanced accuracy over all validation samples;
    each process classifies its part, the confusion matrices are summed."""
    mine = np.array_split(np.arange(len(samples)), dist.world_size)[dist.rank]
    predicted = predict_probabilities(network, samples, dist.device, mine).argmax(1)
    truth = samples.labels[mine]
    confusion = np.zeros((3, 3))
    np.add.at(confusion, (truth, predicted), 1)
    confusion = np.asarray(dist.sum(confusion.ravel().tolist())).reshape(3, 3).round().astype(int)
    pairs = [(t, p) for t in range(3) for p in range(3) for _ in range(confusion[t, p])]
    all_truth, all_predicted = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    return classification_metrics(all_truth, all_predicted)


# --- the loop ---------------------------------------------------------------------------------------

@dataclass
class TrainingState:
    step: int = 0
    history: list = field(default_factory=list)
    best_score: float = -1.0
    best_step: int = 0
    best_row: dict = field(default_factory=dict)


@dataclass
class TrainingRun:
    """One network trained on `train`, selected on `val`.

    fingerprint: what must not change between a run and its resumption (minus `steps`);
    checkpoints: folder of the resumable checkpoint; on_best(state_dict, state): called in the
    main process whenever the validation balanced accuracy improves.
    """

    network: object
    train: WindowSamples
    val: WindowSamples
    protocol: IPMNProtocol
    class_weights: Sequence[float]
    seed: int
    dist: Distributed
    checkpoints: Path
    fingerprint: dict
    curves: Optional[Curves] = None
    name: str = "training"
    on_best: Optional[Callable[[dict, TrainingState], None]] = None
    state: TrainingState = field(default_factory=TrainingState)

    def __post_init__(self) -> None:
        import torch

        self.network = self.network.to(self.dist.device)
        self.model = self.dist.wrap(self.network)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.protocol.learning_rate)
        weights = torch.tensor([float(w) for w in self.class_weights], dtype=torch.float32)
        self.loss_function = torch.nn.CrossEntropyLoss(weight=weights.to(self.dist.device))
        # Every process draws the same batches (and takes its part); the numbers are those of
        # the first version of train_ipmn.py, so the documented demo command is unchanged.
        self.sampler = np.random.default_rng(self.seed)
        self.train_labels = self.train.labels
        self.best_state: Optional[dict] = None

    # --- checkpoints ---

    def _checkpoint_fingerprint(self) -> dict:
        """The fingerprint as flat 'a.b' keys (so a refusal names the one setting that
        changed), without the settings a resumed run may change."""
        flat = {}

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict) and value:
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            else:
                flat[prefix] = value

        walk("", to_json_value(self.fingerprint))
        return {key: value for key, value in flat.items() if key.split(".")[-1] not in RESUMABLE_CHANGES}

    def save(self) -> None:
        """Collective (every process sends its random state); the main process writes."""
        generator_tensors, generator_document = checkpoint_rng_states(self.dist, {}, {"sampler": self.sampler})
        if not self.dist.is_main:
            return
        tensors = {f"model.{key}": value for key, value in self.network.state_dict().items()}
        if self.best_state is not None:
            tensors.update({f"best.{key}": value for key, value in self.best_state.items()})
        optimizer_tensors, optimizer_document = optimizer_parts(self.optimizer)
        tensors.update(optimizer_tensors)
        tensors.update(generator_tensors)
        state = self.state
        save_checkpoint(self.checkpoints, state.step, tensors, {
            "run": self._checkpoint_fingerprint(), "optimizer": optimizer_document, "rng": generator_document,
            "history": state.history, "best_score": state.best_score, "best_step": state.best_step,
            "best_row": state.best_row, "world_size": self.dist.world_size})

    def resume(self) -> bool:
        """Continue from the last checkpoint; False when there is none."""
        checkpoint = load_checkpoint_of_run(self.checkpoints, self._checkpoint_fingerprint())
        if checkpoint is None:
            return False
        document = checkpoint.state
        tensors = checkpoint.tensors

        def part(prefix: str) -> dict:
            return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}

        self.network.load_state_dict(part("model."))
        self.best_state = part("best.") or None
        restore_optimizer(self.optimizer, tensors, document["optimizer"])
        restore_checkpoint_rng_states(tensors, document["rng"], self.dist, {}, {"sampler": self.sampler},
                                      seed=self.seed, position=checkpoint.epoch)
        self.state = TrainingState(checkpoint.epoch, document["history"], document["best_score"],
                                   document["best_step"], document["best_row"])
        logger.info("%s: resuming after step %d (best validation balanced accuracy %.3f at step %d).",
                    self.name, self.state.step, self.state.best_score, self.state.best_step)
        return True

    # --- steps ---

    def _step(self, step: int) -> float:
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = self.protocol.learning_rate * learning_rate_factor(
                self.protocol.lr_schedule, step, self.protocol.steps)

        batch_size = self.protocol.batch_size
        pick = self.sampler.integers(len(self.train), size=batch_size)
        views = [DIHEDRAL_VIEWS[self.sampler.integers(len(DIHEDRAL_VIEWS))] for _ in pick]
        mine = range(batch_size)[self.dist.shard(batch_size)]
        grids = np.stack([transform_tiles(self.train.input(int(pick[n])), *views[n]) for n in mine])
        labels = self.train_labels[pick[list(mine)]]
        self.model.train()
        with torch.autocast(self.dist.device.type, dtype=torch.bfloat16, enabled=self.protocol.precision == "bf16"):
            logits = self.model(torch.from_numpy(grids).to(self.dist.device))
        loss = self.loss_function(logits.float(), torch.from_numpy(labels).to(self.dist.device))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _validate(self, step: int, loss_total: float, loss_count: int, started: float) -> None:
        state, dist = self.state, self.dist
        metrics = validation_metrics(self.network, self.val, dist)
        summed_loss, summed_count = dist.sum([loss_total, loss_count])
        row = {"step": step, "train_loss": summed_loss / max(summed_count, 1),
               **{f"val_{key}": value for key, value in metrics.items()},
               "seconds": round(time.perf_counter() - started, 1)}
        state.history.append(row)
        state.step = step
        improved = metrics["balanced_accuracy"] > state.best_score
        if improved:
            state.best_score, state.best_step, state.best_row = metrics["balanced_accuracy"], step, row
            self.best_state = {key: value.detach().cpu().clone() for key, value in self.network.state_dict().items()}
            if dist.is_main and self.on_best is not None:
                self.on_best(self.best_state, state)
        logger.info("%s step %d: train loss %.4f, val accuracy %.3f, balanced %.3f%s", self.name, step,
                    row["train_loss"], metrics["accuracy"], metrics["balanced_accuracy"], " -> best" if improved else "")
        if self.curves is not None:
            self.curves.write(state.history, step_key="step")
        self.save()

    def run(self) -> dict:
        """Train to `protocol.steps`; returns the best weights (CPU tensors)."""
        protocol, state = self.protocol, self.state
        started = time.perf_counter()
        loss_total, loss_count = 0.0, 0
        bar = progress_bar(range(state.step + 1, protocol.steps + 1), total=max(protocol.steps - state.step, 0),
                           description=self.name, enabled=self.dist.is_main)
        for step in bar:
            loss = self._step(step)
            loss_total, loss_count = loss_total + loss, loss_count + 1
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % protocol.eval_every == 0 or step == protocol.steps:
                self._validate(step, loss_total, loss_count, started)
                loss_total, loss_count, started = 0.0, 0, time.perf_counter()
        if self.best_state is None:
            raise InputError(f"{self.name}: no validation was run; --steps must be at least 1.")
        return self.best_state
