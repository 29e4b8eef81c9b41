"""Training one IPMN risk network with the paper's protocol: the loop shared by the final model
(train_ipmn.py) and every run of the cross-validation (crossvalidate_ipmn.py).

Each optimiser step draws `batch_size` training windows at random (with replacement) and one
of the 8 flip / quarter-turn views per window, applied to every 64 x 64 tile in place (all 9
slices and both channels alike: IPMNRiskLib.grids.transform_tiles, the function test-time
augmentation uses); cross-entropy with class weights; Adam. Every `eval_every` steps the
central window of each validation case is classified and the weights with the best balanced
accuracy are kept; a run without validation cases (the cross-validation's refit) just trains
for its number of steps. A checkpoint (.safetensors + JSON) is written every `eval_every` steps,
so a stopped run resumes exactly where it was.

The protocol (`IPMNProtocol`) holds, for every setting, the paper's value with its source (the
article, or the authors' public code) and ours where it differs, with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError
from IPMNRiskLib.grids import DIHEDRAL_VIEWS, NORMALISATIONS, transform_tiles
from IPMNRiskLib.network import DEFAULT_TASK, TASKS

from ipmn_data import PreparedCase, WindowSamples
from ipmn_metrics import classification_metrics, pooled_metrics
from trainkit.checkpoint import (load_checkpoint_of_run, optimizer_parts, restore_optimizer, save_checkpoint,
                                 to_json_value)
from trainkit.distributed import Distributed
from trainkit.protocol import add_protocol_arguments, option, preset_field, protocol_from_arguments, protocol_record
from trainkit.runlog import Curves, progress_bar
from trainkit.seeding import checkpoint_rng_states, restore_checkpoint_rng_states

logger = logging.getLogger(__name__)

ARTICLE = "article (Proietto Salanitri et al., EMBC 2022)"
AUTHORS_CODE = "authors' code"
#: --class-weights balanced: scikit-learn's rule, fitted on the cases of each training part.
BALANCED = "balanced"
EVALUATION_BATCH = 32
#: Settings that may change when a run is resumed (to train longer).
RESUMABLE_CHANGES = ("steps",)
#: The origin of the class weights of a 2-class run that was given none under --protocol paper.
TASK_CLASS_WEIGHTS_ORIGIN = ("balanced for the 2-class task: the paper's 1 0.65 0.45 weigh its three classes and do "
                             "not apply to two; balanced weights are fitted on each training part")


def task_of(arguments: argparse.Namespace) -> str:
    """The --task of parsed arguments (3-class when not given)."""
    return getattr(arguments, "task", None) or DEFAULT_TASK


_NUMBER_WORDS = {2: "two", 3: "three"}


def class_weights_setting(words: Sequence[str], task: str = DEFAULT_TASK) -> str:
    """--class-weights as given (one number per class of `task`, or the word balanced; as separate
    words or one string) -> the protocol's setting: 'balanced', or the numbers as '1 0.65 0.45'.
    InputError for anything else."""
    parts = [part for word in words for part in str(word).replace(",", " ").split()]
    if len(parts) == 1 and parts[0].lower() == BALANCED:
        return BALANCED
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = []
    names = TASKS[task]
    if len(numbers) != len(names) or not all(math.isfinite(n) for n in numbers):
        example = "1 0.65 0.45" if len(names) == 3 else "1 2"
        raise InputError(f"--class-weights takes {_NUMBER_WORDS[len(names)]} numbers for the {task} task, one per "
                         f"class ({', '.join(names)}), e.g. {example}, or the word balanced; got '{' '.join(parts)}'.")
    return " ".join(str(int(n)) if n.is_integer() else repr(n) for n in numbers)


@dataclass(frozen=True)
class IPMNProtocol:
    """The training protocol: the paper's (defaults) or ours (`--protocol ours`); each field is a
    command-line option of the same name (trainkit.protocol), recorded in the model card with
    whose value it is."""

    FIXED: ClassVar[dict] = {
        "loss": "cross-entropy with class weights",
        "optimizer": "Adam",
        "augmentation": "random horizontal flip and 0-3 quarter turns (one of 8 views, uniformly), "
                        "the same for all 9 tiles and both channels",
        "sampling": "training windows drawn at random with replacement",
        "validation": "central 9-slice window of each validation case, as IPMNRisk classifies",
        "checkpoint_selection": "best validation balanced accuracy",
    }

    preset: str = preset_field()
    task: str = option("3-class", "the classes the network learns: 3-class (normal, low-risk, high-risk IPMN) or "
                                  "2-class (high-risk IPMN vs no or low-risk IPMN, the Cyst-X benchmark's task, "
                                  "reported as AUC); the model card's classes say which",
                       choices=tuple(TASKS), source=f"{ARTICLE} (three classes)")
    learning_rate: float = option(0.003, "Adam learning rate", flags=("--learning-rate", "--lr"), source=ARTICLE)
    batch_size: int = option(8, "grids per optimiser step, over all processes", source=ARTICLE)
    steps: int = option(3000, "optimiser steps (the cross-validation's grid selection: of each inner run; its refit "
                              "stops at the number chosen)",
                        source=f"{ARTICLE} (3000); {AUTHORS_CODE} (counted as optimiser steps)")
    window_jitter: int = option(-1, "training windows: -1 every sliding window of 9 slices (the paper's); "
                                    "N >= 0 only those starting within N slices of the central one",
                                source=f"{ARTICLE} (every window of 9 consecutive slices)")
    eval_every: int = option(100, "optimiser steps between validations (and checkpoints); the grid selection of "
                                  "the cross-validation tries every multiple of it as the number of steps")
    lr_schedule: str = option("constant", "constant (the paper's), or warmup-cosine: linear warm-up over 5%% of "
                                          "the steps, then cosine decay to 0 (helps a ViT trained from scratch)",
                              choices=("constant", "warmup-cosine"),
                              source=f"{ARTICLE} (Adam at lr 0.003; no schedule)")
    precision: str = option("fp32", "arithmetic of the training steps: fp32, or bf16 mixed precision "
                                    "(torch.autocast: matrix products in bfloat16, weights and loss in float32; "
                                    "faster on CPUs with AMX and on recent GPUs)", choices=("fp32", "bf16"))
    normalisation: str = option(
        "volume_min_max", "how each sequence is scaled to [0, 1]: volume_min_max (min-max of each whole volume "
                          "after the MRI pre-processing) or crop_stack_min_max (min-max of the region's crop "
                          "stack); recorded in the model card, which IPMNRisk follows", choices=NORMALISATIONS,
        source=f"{ARTICLE} (each volume normalised to [0, 1]); {AUTHORS_CODE} (z-score, then min-max of each volume)",
        ours="crop_stack_min_max",
        why="independent of the field of view, of bright organs far from the pancreas and of the empty margin of "
            "a resampled T1, and a training window sees the scaling of the central window at inference")
    class_weights: str = option(
        "1 0.65 0.45", "cross-entropy weight of each class: one number per class of the task (3-class: normal, "
                       "low-risk, high-risk), or balanced (scikit-learn's rule, cases / (classes x cases of the "
                       "class), over the cases of each training part; the 2-class task's default under either "
                       "preset)", source=f"{AUTHORS_CODE} (class weights [1, 0.65, 0.45])", ours=BALANCED,
        why="the authors' numbers fit their cohort's class shares; balanced weights are fitted on each training part",
        nargs="+", metavar="WEIGHT")


def add_ipmn_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """--protocol paper|ours and one option per setting of `IPMNProtocol`; --class-weights takes
    one number per class of --task (`--class-weights 1 1 1`) or the word balanced."""
    add_protocol_arguments(parser, IPMNProtocol)


def ipmn_protocol_from_arguments(arguments: argparse.Namespace) -> IPMNProtocol:
    """The protocol of the --protocol preset with the options given; InputError for class weights
    that are neither one number per class of the task nor balanced. A 2-class run given no class
    weights has balanced ones (the paper's three numbers are for its three classes)."""
    task = task_of(arguments)
    given = vars(arguments).get("class_weights")
    if given is not None:
        words = given if isinstance(given, (list, tuple)) else [given]
        arguments = argparse.Namespace(**{**vars(arguments), "class_weights": class_weights_setting(words, task)})
    protocol = protocol_from_arguments(IPMNProtocol, arguments)
    if given is None and len(TASKS[protocol.task]) != 3:
        protocol = dataclasses.replace(protocol, class_weights=BALANCED)
    return protocol


def learning_rate_factor(schedule: str, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (1-based)."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, steps // 20)
    done = step - 1
    return min(1.0, (done + 1) / warmup) * 0.5 * (
        1.0 + math.cos(math.pi * min(1.0, max(0, done - warmup) / max(1, steps - warmup))))


def fit_class_weights(setting: str, cases: Sequence[PreparedCase], task: str = DEFAULT_TASK) -> list[float]:
    """The cross-entropy weights (one per class of `task`) a network trained on `cases` (labelled
    with the task's classes) uses: the setting's numbers, or for 'balanced' scikit-learn's rule
    over the cases (scans, not windows), n_cases / (classes x n_cases of the class). InputError
    when a class is absent."""
    names = TASKS[task]
    if setting != BALANCED:
        return [float(word) for word in class_weights_setting([setting], task).split()]
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([case.label for case in cases], dtype=np.int64)
    absent = [name for label, name in enumerate(names) if not np.any(labels == label)]
    if absent:
        raise InputError(f"Balanced class weights need every class in the training cases; there is no case of "
                         f"{' or '.join(absent)}. Give {len(names)} numbers with --class-weights instead.")
    return [float(w) for w in compute_class_weight("balanced", classes=np.arange(len(names)), y=labels)]


def full_protocol_record(protocol: IPMNProtocol, class_weights: Optional[Sequence[float]] = None) -> dict:
    """The protocol as the model card records it; with `class_weights`, the numbers the run
    used (under "class_weights_used": the setting may be 'balanced')."""
    record = protocol_record(protocol)
    if len(TASKS[protocol.task]) != 3 and protocol.class_weights == BALANCED and protocol.preset == "paper":
        record["origins"]["class_weights"] = TASK_CLASS_WEIGHTS_ORIGIN
    if class_weights is not None:
        record["class_weights_used"] = [float(w) for w in class_weights]
    return record


def check_protocol(protocol: IPMNProtocol, dist: Distributed) -> None:
    if protocol.batch_size < 1 or protocol.steps < 1 or protocol.eval_every < 1:
        raise InputError("The batch size, the number of steps and --eval-every must be at least 1.")
    if protocol.batch_size % dist.world_size:
        raise InputError(f"The batch size ({protocol.batch_size}) must be divisible by the number of "
                         f"processes ({dist.world_size}): each takes an equal part of every batch.")
    if protocol.class_weights != BALANCED:
        weights = fit_class_weights(protocol.class_weights, [], protocol.task)
        if min(weights) < 0 or max(weights) <= 0:
            raise InputError(f"The class weights must be non-negative and not all zero (got {weights}).")


# --- classifying ------------------------------------------------------------------------------------

def predict_probabilities(network, samples: WindowSamples, device, positions: Optional[np.ndarray] = None,
                          tta: bool = False) -> np.ndarray:
    """(N, C) float64 softmax of the samples at `positions` (default all), in batches of 32;
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


def validation_metrics(network, samples: WindowSamples, dist: Distributed, classes: int = 3) -> dict:
    """Accuracy, macro precision / recall and balanced accuracy over all validation samples of
    `classes` classes; each process classifies its part, the confusion matrices are summed."""
    mine = np.array_split(np.arange(len(samples)), dist.world_size)[dist.rank]
    predicted = predict_probabilities(network, samples, dist.device, mine).argmax(1)
    truth = samples.labels[mine]
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (truth, predicted), 1)
    confusion = np.asarray(dist.sum(confusion.ravel().tolist())).reshape(classes, classes).round().astype(int)
    pairs = [(t, p) for t in range(classes) for p in range(classes) for _ in range(confusion[t, p])]
    all_truth, all_predicted = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    return classification_metrics(all_truth, all_predicted, classes)


def held_out_metrics(truth: np.ndarray, probabilities: np.ndarray) -> dict:
    """The four metrics of `classification_metrics` and the AUC (`pooled_metrics`: 2 classes the
    binary AUC of class 1, high risk; 3 one-vs-rest macro; None when a class is absent)."""
    return {**classification_metrics(truth, probabilities.argmax(1), probabilities.shape[1]),
            "auc": pooled_metrics(truth, probabilities)["auc"]}


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
    """One network trained on `train` for `protocol.steps` steps (or until `last_step`), selected
    on `val`; without `val` (None) nothing is validated and the last weights are the result.

    class_weights: (C,) cross-entropy weights, one per class of `protocol.task`; fingerprint: what
    must not change between a run and its resumption (minus `steps`); checkpoints: folder of
    the resumable checkpoint; last_step: stop after this step, the learning-rate schedule still
    spanning `protocol.steps` (a refit for the number of steps an inner validation chose);
    on_best(state_dict, state): called in the main process whenever the validation balanced
    accuracy improves.
    """

    network: object
    train: WindowSamples
    val: Optional[WindowSamples]
    protocol: IPMNProtocol
    class_weights: Sequence[float]
    seed: int
    dist: Distributed
    checkpoints: Path
    fingerprint: dict
    curves: Optional[Curves] = None
    name: str = "training"
    on_best: Optional[Callable[[dict, TrainingState], None]] = None
    last_step: Optional[int] = None
    keep_best: bool = True
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

    def train_step(self, step: int) -> float:
        """One optimiser step (step numbers from 1: the learning-rate schedule's position); the batch loss."""
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
        """Record the step's row (with the validation metrics when there are validation cases),
        keep the best weights, write the curves and a checkpoint."""
        state, dist = self.state, self.dist
        summed_loss, summed_count = dist.sum([loss_total, loss_count])
        row = {"step": step, "train_loss": summed_loss / max(summed_count, 1)}
        improved = False
        if self.val is not None:
            metrics = validation_metrics(self.network, self.val, dist, len(TASKS[self.protocol.task]))
            row.update({f"val_{key}": value for key, value in metrics.items()})
            improved = metrics["balanced_accuracy"] > state.best_score
        row["seconds"] = round(time.perf_counter() - started, 1)
        state.history.append(row)
        state.step = step
        if improved:
            state.best_score, state.best_step, state.best_row = row["val_balanced_accuracy"], step, row
            if self.keep_best:
                self.best_state = {key: value.detach().cpu().clone()
                                   for key, value in self.network.state_dict().items()}
            if dist.is_main and self.on_best is not None:
                self.on_best(self.best_state, state)
        if self.val is not None:
            logger.info("%s step %d: train loss %.4f, val accuracy %.3f, balanced %.3f%s", self.name, step,
                        row["train_loss"], row["val_accuracy"], row["val_balanced_accuracy"],
                        " -> best" if improved else "")
        else:
            logger.info("%s step %d: train loss %.4f", self.name, step, row["train_loss"])
        if self.curves is not None:
            self.curves.write(state.history, step_key="step")
        self.save()

    @property
    def final_step(self) -> int:
        """The step the run stops after."""
        return self.protocol.steps if self.last_step is None else min(self.last_step, self.protocol.steps)

    def run(self) -> dict:
        """Train to `final_step`; returns the best weights, or without validation cases the
        last ones (CPU tensors)."""
        protocol, state, final = self.protocol, self.state, self.final_step
        started = time.perf_counter()
        loss_total, loss_count = 0.0, 0
        bar = progress_bar(range(state.step + 1, final + 1), total=max(final - state.step, 0),
                           description=self.name, enabled=self.dist.is_main)
        for step in bar:
            loss = self.train_step(step)
            loss_total, loss_count = loss_total + loss, loss_count + 1
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % protocol.eval_every == 0 or step == final:
                self._validate(step, loss_total, loss_count, started)
                loss_total, loss_count, started = 0.0, 0, time.perf_counter()
        if self.val is None or not self.keep_best:
            if state.step < 1:
                raise InputError(f"{self.name}: no step was run; the number of steps must be at least 1.")
            return {key: value.detach().cpu().clone() for key, value in self.network.state_dict().items()}
        if self.best_state is None:
            raise InputError(f"{self.name}: no validation was run; --steps must be at least 1.")
        return self.best_state
