"""Train MoNet, or one of the paper's baselines, for PancreasSegMoNet: writes .safetensors + model card.

Data (one of):
  --msd DIR                  the Medical Segmentation Decathlon Task07_Pancreas folder as
                             distributed (dataset.json, imagesTr, labelsTr)
  --images DIR --labels DIR  CT and label files paired by file name
  --phantoms N               synthetic CT phantoms (how the bundled demo weights were made)
Every non-zero label is pancreas (Task07: pancreas 1 and tumour 2 merged, as in the paper).

Slices go through exactly the pre-processing the module uses at inference
(PancreasSegMoNetLib.preprocessing) and the networks are the module's own classes, so training
and inference cannot drift apart.

Protocol defaults (Knolle, Kaissis et al. 2021): 70/30 split by patient, 256 x 256 slices,
soft Dice loss, NAdam lr 5e-4, lr / 10 after 2 epochs without validation improvement,
rotation +-10 degrees, zoom +-0.25, shift 0.2, He-uniform initialisation.

  one GPU or the CPU:  python Resources/Training/train_monet.py --msd Task07_Pancreas --output runs/monet
  several GPUs:        torchrun --nproc_per_node 4 Resources/Training/train_monet.py --msd ... --output ...
  continue a run:      the same command with --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve()
for sub in ("PancreasAI", "PancreasSegMoNet"):
    if str(HERE.parents[2] / sub) not in sys.path:
        sys.path.insert(0, str(HERE.parents[2] / sub))

from PancreasAILib.errors import InputError, PancreasAIError  # noqa: E402
from PancreasAILib.weights import save_model  # noqa: E402
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING  # noqa: E402

from segmentation_data import (DEFAULT_PHANTOM_SHAPE, PANCREAS_RULE, CachedSlices, PreparedCase,  # noqa: E402
                               SliceCache, folder_cases, msd_cases, phantom_cases, prepare_cases)
from segmentation_networks import (ARCHITECTURES, NetworkSpec, build_network, output_bias,  # noqa: E402
                                   parameter_counts)
from trainkit.checkpoint import (load_latest_checkpoint, optimizer_parts, restore_optimizer,  # noqa: E402
                                 save_checkpoint, to_json_value, write_json_atomically)
from trainkit.distributed import Distributed  # noqa: E402
from trainkit.hashing import FileHashes  # noqa: E402
from trainkit.initial_weights import add_initial_weights_argument, initial_weights_record, load_initial_weights  # noqa: E402,E501
from trainkit.model_card import command_line, hardware_record, software_versions  # noqa: E402
from trainkit.protocol import (add_protocol_arguments, changed_fields, option,  # noqa: E402
                               protocol_from_arguments, protocol_record)
from trainkit.run_files import RunFiles  # noqa: E402
from trainkit.script import run_script  # noqa: E402
from trainkit.runlog import Curves, progress_bar  # noqa: E402
from trainkit.seeding import (derived_seed, generator_states, process_rng_state,  # noqa: E402
                              restore_generator_states, restore_process_rng_state, seed_everything,
                              use_deterministic_kernels)

logger = logging.getLogger("train_monet")

SCRIPT = "Resources/Training/train_monet.py"
VALIDATION_BATCH = 16


@dataclass(frozen=True)
class MoNetProtocol:
    """The paper's training protocol; each field is a command-line option of the same name."""

    FIXED: ClassVar[dict] = {
        "split": "random by patient (scikit-learn GroupShuffleSplit, seeded)",
        "soft_dice": "soft Dice over the whole batch on sigmoid probabilities (MONAI DiceLoss, batch=True)",
        "optimizer": "NAdam",
        "lr_schedule": "ReduceLROnPlateau on the validation loss",
        "augmentation": "random rotation, zoom and shift, identical for a slice and its mask",
        "init": "He-uniform (each network's own initialisation)",
        "sampling": "training slices drawn at random with replacement",
    }

    validation_fraction: float = option(0.3, "fraction of the patients held out for validation")
    learning_rate: float = option(5e-4, "NAdam learning rate", flags=("--learning-rate", "--lr"))
    lr_factor: float = option(0.1, "learning-rate factor when the validation loss stops improving")
    lr_patience: int = option(2, "epochs without validation improvement before the learning rate drops")
    rotation_degrees: float = option(10.0, "largest random rotation in degrees")
    zoom: float = option(0.25, "largest random zoom, as a fraction")
    shift: float = option(0.2, "largest random shift, as a fraction of the slice size")
    loss: str = option("dice", "training loss: dice (the paper) or dice+bce (soft Dice plus binary "
                               "cross-entropy)", choices=("dice", "dice+bce"))
    dice_smooth: float = option(1.0, "smoothing added to numerator and denominator of the soft Dice")
    batch_size: int = option(8, "slices per optimiser step, over all processes")
    epochs: int = option(100, "number of epochs (the paper trains to convergence)")
    steps_per_epoch: int = option(0, "optimiser steps per epoch; 0: as many as one pass over the training slices")
    empty_fraction: float = option(0.15, "fraction of the slices without pancreas used for training and validation")
    early_stopping_patience: int = option(0, "stop after this many epochs without validation improvement; 0: never")
    crop: int = option(0, "train on square crops of this many pixels near the pancreas, at the model's pixel "
                          "scale (faster; validation stays on whole slices); 0: whole slices, as the paper")
    recalibration_slices: int = option(64, "with --crop: whole training slices on which BatchNorm statistics "
                                           "are measured again before each validation; 0: validate and save "
                                           "the network with the statistics it gathered on the crops")
    prior_init: bool = option(False, "start the output at the training slices' pancreas pixel fraction "
                                     "instead of 0.5 (not in the paper)")
    precision: str = option("fp32", "arithmetic of the training steps: fp32 (the paper), or bf16 mixed precision "
                                    "(torch.autocast: convolutions in bfloat16, weights, BatchNorm and loss in "
                                    "float32; 2-3x faster on CPUs with AMX and on recent GPUs)",
                            choices=("fp32", "bf16"))


# Settings that may change when a run is resumed (to train longer, or stop earlier).
RESUMABLE_CHANGES = ("epochs", "early_stopping_patience")


# --- data -------------------------------------------------------------------------------------

def discover_cases(args) -> list:
    if args.msd:
        return msd_cases(Path(args.msd), args.patient_pattern)
    if args.images or args.labels:
        if not (args.images and args.labels):
            raise InputError("--images and --labels go together: the CT folder and the label folder.")
        return folder_cases(Path(args.images), Path(args.labels), args.patient_pattern)
    return phantom_cases(args.phantoms, args.first_seed, args.phantom_shape)


def describe_data(args, count: int) -> tuple[str, dict]:
    """(one line for people, the source's parameters) for the model card."""
    if args.msd:
        return (f"Medical Segmentation Decathlon Task07_Pancreas, {count} training cases",
                {"kind": "msd", "folder": str(args.msd)})
    if args.images:
        return (f"{count} CT and label files", {"kind": "folders", "images": str(args.images),
                                               "labels": str(args.labels)})
    text = (f"{args.phantoms} synthetic CT phantoms (seeds {args.first_seed}-"
            f"{args.first_seed + args.phantoms - 1}), PancreasAIPhantoms.ct")
    if tuple(args.phantom_shape) != DEFAULT_PHANTOM_SHAPE:
        text += f", {' x '.join(map(str, args.phantom_shape[::-1]))} voxels"
    return text, {"kind": "phantoms", "count": args.phantoms, "first_seed": args.first_seed,
                  "shape": list(args.phantom_shape)}


def split_by_patient(patient_ids: Sequence[str], validation_fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """(n_cases,) bool, True for validation: a seeded random `validation_fraction` of the
    patients, all cases of a patient on the same side."""
    from sklearn.model_selection import GroupShuffleSplit

    n_patients = len(set(patient_ids))
    n_validation = max(1, int(round(n_patients * validation_fraction)))
    if n_patients < 2 or n_validation >= n_patients:
        raise InputError(
            f"A training/validation split needs at least 2 patients and a validation fraction that "
            f"leaves some for training; there are {n_patients} patient(s) and the fraction is "
            f"{validation_fraction}.")
    # scikit-learn draws from a RandomState that shares rng's bit generator: the same
    # permutation rng.permutation(n_patients) gives (the first version of this script), and rng
    # goes on from where it would have.
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_validation,
                                 random_state=np.random.RandomState(rng.bit_generator))
    _, validation = next(splitter.split(np.zeros(len(patient_ids)), groups=list(patient_ids)))
    is_validation = np.zeros(len(patient_ids), dtype=bool)
    is_validation[validation] = True
    return is_validation


@dataclass
class SliceSet:
    """Slices of cached cases, as (case, slice) index pairs; read from disk batch by batch."""

    cases: list[CachedSlices]
    index: np.ndarray  # (N, 2) int64

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, positions: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, 1, S, S) float32 CT and mask for the slices at `positions`."""
        import torch

        pairs = self.index[np.asarray(positions, dtype=np.int64)]
        images = np.stack([self.cases[c].images[s] for c, s in pairs]).astype(np.float32)
        masks = np.stack([self.cases[c].masks[s] for c, s in pairs]).astype(np.float32)
        return torch.from_numpy(images[:, None]), torch.from_numpy(masks[:, None])


def select_slices(cached: list[CachedSlices], is_validation: np.ndarray, empty_fraction: float,
                  max_val_slices: int, rng: np.random.Generator) -> tuple[SliceSet, SliceSet]:
    """All slices with pancreas plus a random `empty_fraction` of the others, case by case in
    order; validation limited to a fixed random subset of `max_val_slices`."""
    train_pairs, val_pairs = [], []
    for case_index, slices in enumerate(cached):
        keep = slices.pancreas_slices | (rng.random(len(slices.pancreas_slices)) < empty_fraction)
        pairs = [(case_index, int(s)) for s in np.flatnonzero(keep)]
        (val_pairs if is_validation[case_index] else train_pairs).extend(pairs)
    if len(val_pairs) > max_val_slices:
        pick = np.sort(rng.choice(len(val_pairs), max_val_slices, replace=False))
        val_pairs = [val_pairs[i] for i in pick]
    as_index = lambda pairs: np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return SliceSet(cached, as_index(train_pairs)), SliceSet(cached, as_index(val_pairs))


def write_data_manifest(path: Path, prepared: list[PreparedCase], data_sha256: str, description: str,
                        cache: SliceCache, is_validation: Optional[np.ndarray] = None) -> None:
    """The run's cases (with split once known): stays in the run folder, not in the model card,
    because a site's case names may identify patients."""
    cases = []
    for index, case in enumerate(prepared):
        item = {"case_id": case.case_id, "patient_id": case.patient_id, "cache_key": case.cache_key,
                "slice_count": case.slice_count}
        if is_validation is not None:
            item["split"] = "validation" if is_validation[index] else "training"
        cases.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"data": description, "data_sha256": data_sha256,
                                 "slice_cache": str(cache.folder), "cases": cases})


# --- augmentation, loss, validation -------------------------------------------------------------

def random_affine(batch: int, generator, protocol: MoNetProtocol) -> "torch.Tensor":
    """(batch, 2, 3) random rotation, zoom and shift for F.affine_grid (normalised coordinates)."""
    import torch

    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(protocol.rotation_degrees)
    scale = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * protocol.zoom
    offset = (torch.rand(batch, 2, generator=generator) * 2 - 1) * protocol.shift * 2  # coordinates span 2
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) * scale
    theta[:, 0, 1] = -torch.sin(angle) * scale
    theta[:, 1, 0] = torch.sin(angle) * scale
    theta[:, 1, 1] = torch.cos(angle) * scale
    theta[:, :, 2] = offset
    return theta


def apply_affine(images, masks, theta):
    """The same transform for each slice and its mask, both bilinear; the mask is then cut at 0.5,
    as `label_slices` makes the masks in the first place. (B, 1, H, W).

    A nearest-neighbour mask would move its edge by up to half a pixel against the image's,
    at random from slice to slice: noise at the very scale of the boundary errors that are
    left to learn."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    # Outside the slice is air: 0 after windowing.
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return images, (masks >= 0.5).to(images.dtype)


def random_crop_corners(masks, size: int, generator) -> list[tuple[int, int]]:
    """(top, left) of a size x size crop per slice of (B, 1, H, W) `masks`: centred on a random
    pancreas pixel moved by up to size / 4, or anywhere when the slice has no pancreas."""
    import torch

    masks = masks.cpu()
    height, width = masks.shape[-2:]
    corners = []
    for mask in masks[:, 0]:
        pixels = torch.nonzero(mask > 0)
        if len(pixels):
            centre = pixels[torch.randint(len(pixels), (1,), generator=generator)][0]
            centre = centre + torch.randint(-size // 4, size // 4 + 1, (2,), generator=generator)
        else:
            centre = torch.stack([torch.randint(height, (1,), generator=generator)[0],
                                  torch.randint(width, (1,), generator=generator)[0]])
        corners.append((int(min(max(int(centre[0]) - size // 2, 0), height - size)),
                        int(min(max(int(centre[1]) - size // 2, 0), width - size))))
    return corners


def crop_batch(images, masks, corners: list[tuple[int, int]], size: int):
    """Crop slice n and its mask at corners[n]. (B, 1, H, W) -> (B, 1, size, size)."""
    import torch

    pick = lambda batch: torch.stack([batch[n, :, top:top + size, left:left + size]  # noqa: E731
                                      for n, (top, left) in enumerate(corners)])
    return pick(images), pick(masks)


def soft_dice_loss(smooth: float):
    """The paper's soft Dice loss (Keras: 1 - (2 sum(p g) + s) / (sum p + sum g + s) over the
    whole batch), as MONAI's DiceLoss on probabilities (the networks end in a sigmoid)."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=False, batch=True, smooth_nr=smooth, smooth_dr=smooth)


def training_loss(protocol: MoNetProtocol):
    """loss(probabilities, masks): the soft Dice, plus binary cross-entropy for 'dice+bce' (on
    probabilities clipped to [1e-6, 1 - 1e-6]; MONAI's DiceCELoss wants logits, our networks
    end in a sigmoid). Validation always uses the soft Dice alone."""
    import torch.nn.functional as F

    dice = soft_dice_loss(protocol.dice_smooth)
    if protocol.loss == "dice":
        return dice
    return lambda probabilities, masks: dice(probabilities, masks) + F.binary_cross_entropy(
        probabilities.clamp(1e-6, 1 - 1e-6), masks)


def validation_loss(network, slices: SliceSet, smooth: float, dist: Distributed) -> tuple[float, float]:
    """(soft Dice loss, soft Dice) over all validation slices at once: the same formula as the
    training loss, summed over batches (and processes) before dividing."""
    import torch

    network.eval()
    mine = np.array_split(np.arange(len(slices)), dist.world_size)[dist.rank]
    intersection = total = 0.0
    with torch.inference_mode():
        for start in range(0, len(mine), VALIDATION_BATCH):
            images, masks = slices.batch(mine[start:start + VALIDATION_BATCH])
            probabilities = network(images.to(dist.device).contiguous(memory_format=torch.channels_last))
            masks = masks.to(dist.device)
            intersection += float((probabilities * masks).sum())
            total += float(probabilities.sum() + masks.sum())
    intersection, total = dist.sum([intersection, total])
    loss = 1 - (2 * intersection + smooth) / (total + smooth)
    return loss, 1 - loss


def patient_dice_on_model_grid(network, cases: list[CachedSlices], device, threshold: float = 0.5) -> list[float]:
    """Per-case Dice of the thresholded prediction over all slices of each case, on the model's
    grid (no resampling back, no clean-up); NaN for a case without pancreas."""
    import torch

    network.eval()
    scores = []
    with torch.inference_mode():
        for slices in cases:
            overlap = predicted = reference = 0
            for start in range(0, len(slices.images), VALIDATION_BATCH):
                images = torch.from_numpy(np.asarray(slices.images[start:start + VALIDATION_BATCH], np.float32)[:, None])
                prediction = (network(images.to(device))[:, 0] >= threshold).cpu().numpy()
                truth = np.asarray(slices.masks[start:start + VALIDATION_BATCH]) > 0
                overlap += int(np.count_nonzero(prediction & truth))
                predicted += int(np.count_nonzero(prediction))
                reference += int(np.count_nonzero(truth))
            scores.append(2 * overlap / (predicted + reference) if reference else math.nan)
    return scores


def pancreas_fraction(slices: SliceSet) -> float:
    """Fraction of the pixels of `slices` that are pancreas."""
    pancreas = sum(int(np.count_nonzero(slices.cases[c].masks[s])) for c, s in slices.index)
    size = slices.cases[0].masks.shape[-1]
    return pancreas / (len(slices) * size * size)


def set_output_prior(network, fraction: float) -> None:
    """Make the untrained network output `fraction` everywhere (a logit bias), not 0.5."""
    import torch

    with torch.no_grad():
        output_bias(network).fill_(math.log(fraction / (1 - fraction)))


def recalibrated_batch_norm(network, slices: SliceSet, rng: np.random.Generator, count: int, device):
    """A copy of `network` whose BatchNorm running statistics are measured again on `count`
    random whole slices, weights unchanged: trained on crops, the statistics describe crops,
    while inference sees whole slices with the air around the body."""
    import copy

    import torch

    calibrated = copy.deepcopy(network)
    batch_norms = [m for m in calibrated.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    dropouts = [m for m in calibrated.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    momenta, rates = [bn.momentum for bn in batch_norms], [d.p for d in dropouts]
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration slices
    for dropout in dropouts:
        dropout.p = 0.0
    calibrated.train()
    pick = np.sort(rng.choice(len(slices), min(count, len(slices)), replace=False))
    with torch.no_grad():
        for start in range(0, len(pick), VALIDATION_BATCH):
            images, _ = slices.batch(pick[start:start + VALIDATION_BATCH])
            calibrated(images.to(device).contiguous(memory_format=torch.channels_last))
    for bn, momentum in zip(batch_norms, momenta):
        bn.momentum = momentum
    for dropout, rate in zip(dropouts, rates):
        dropout.p = rate
    return calibrated.eval()


# --- the run ------------------------------------------------------------------------------------

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
    is_validation: np.ndarray
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


def prepare_data(args, dist: Distributed, files: RunFiles, preprocessing: dict):
    cases = discover_cases(args)
    description, source = describe_data(args, len(cases))
    cache = SliceCache(Path(args.cache_dir) if args.cache_dir else files.weights.parent / "slice-cache",
                       preprocessing)

    def prepare() -> None:
        logger.info("Data: %s. Slice cache: %s", description, cache.folder)
        prepared, data_sha256 = prepare_cases(cases, cache, FileHashes(cache.folder.parent / "file-hashes.json"),
                                              show_progress=dist.is_main)
        write_data_manifest(files.data_manifest, prepared, data_sha256, description, cache)

    dist.run_on_main(prepare)
    manifest = json.loads(files.data_manifest.read_text(encoding="utf-8"))
    prepared = [PreparedCase(c["case_id"], c["patient_id"], c["cache_key"], c["slice_count"])
                for c in manifest["cases"]]
    cached = [cache.get(case.cache_key) for case in prepared]
    return description, source, manifest["data_sha256"], prepared, cached, cache


def start_run(args, argv, dist: Distributed) -> Run:
    import torch

    protocol = protocol_from_arguments(MoNetProtocol, args)
    spec = ARCHITECTURES[args.architecture]
    initial_weights_record(args.initial_weights)  # a missing or broken model file fails before the data are read
    preprocessing = {**DEFAULT_PREPROCESSING, "input_size": args.input_size}
    files = RunFiles.for_output(args.output)
    check_settings(protocol, spec, preprocessing, dist)

    # The order of random draws is that of the first version of this script, so that the
    # documented demo command still makes the same split, slices and batches.
    seed_everything(args.seed)
    use_deterministic_kernels()
    rng = np.random.default_rng(args.seed)
    description, source, data_sha256, prepared, cached, cache = prepare_data(args, dist, files, preprocessing)
    is_validation = split_by_patient([case.patient_id for case in prepared], protocol.validation_fraction, rng)
    train, val = select_slices(cached, is_validation, protocol.empty_fraction, args.max_val_slices, rng)
    if dist.is_main:
        write_data_manifest(files.data_manifest, prepared, data_sha256, description, cache, is_validation)
    if len(train) == 0 or len(val) == 0:
        raise InputError("No slice is left for training or for validation: the label maps hold (almost) "
                         "no pancreas. Check that the label files belong to the CTs.")

    # Channels-last: the same arithmetic, laid out as oneDNN and cuDNN convolve fastest.
    network = build_network(spec).to(dist.device, memory_format=torch.channels_last)
    if args.initial_weights:
        load_initial_weights(network, args.initial_weights, spec.class_name)
    elif protocol.prior_init:
        fraction = float(np.clip(pancreas_fraction(train), 1e-4, 0.5))
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
              prepared, is_validation, train, val, network, None, optimizer, scheduler, sampler, rng,
              training_loss(protocol), steps, RunState())
    if args.resume:
        resume(run)
    elif dist.is_main and any(files.checkpoints.glob("epoch-*")):
        logger.warning("Starting a new run: removing the checkpoint of an earlier run in %s "
                       "(--resume would have continued it).", files.checkpoints)
        for stale in files.checkpoints.glob("epoch-*"):
            stale.unlink()
    run.model = dist.wrap(network)
    n_val_patients = len({p.patient_id for p, v in zip(prepared, is_validation) if v})
    logger.info("%s: %s parameters (%s with BatchNorm statistics); %s", spec.title,
                f"{parameter_counts(network)['trainable']:,}", f"{parameter_counts(network)['with_bn_running_stats']:,}",
                dist.describe())
    logger.info("%d training slices from %d cases, %d validation slices from %d cases (%d patients)",
                len(train), int((~is_validation).sum()), len(val), int(is_validation.sum()), n_val_patients)
    logger.info("Protocol: %s", json.dumps(protocol_record(protocol)))
    return run


def check_settings(protocol: MoNetProtocol, spec: NetworkSpec, preprocessing: dict, dist: Distributed) -> None:
    size = int(preprocessing["input_size"])
    if size % spec.size_multiple:
        raise InputError(f"{spec.title} needs an input size divisible by {spec.size_multiple}; got {size}.")
    if protocol.crop and (protocol.crop > size or protocol.crop % spec.size_multiple):
        raise InputError(f"The crop size must be at most the input size ({size}) and divisible by "
                         f"{spec.size_multiple} for {spec.title}; got {protocol.crop}.")
    if protocol.batch_size % dist.world_size:
        raise InputError(f"The batch size ({protocol.batch_size}) must be divisible by the number of "
                         f"processes ({dist.world_size}): each takes an equal part of every batch.")
    if protocol.recalibration_slices < 0:
        raise InputError(f"--recalibration-slices must be 0 (keep the statistics gathered on the crops) or a "
                         f"number of slices; got {protocol.recalibration_slices}.")
    if not 0 < protocol.validation_fraction < 1:
        raise InputError(f"The validation fraction must lie between 0 and 1 (got {protocol.validation_fraction}).")


def resume(run: Run) -> None:
    """Continue from the last checkpoint: weights, optimiser, scheduler, random states, history."""
    checkpoint = load_latest_checkpoint(run.files.checkpoints)
    if checkpoint is None:
        raise InputError(f"--resume: there is no checkpoint in {run.files.checkpoints}; start without --resume.")
    state = checkpoint.state
    differences = changed_fields(state["run"], run.fingerprint())
    if differences:
        raise InputError(f"The checkpoint in {run.files.checkpoints} belongs to a run with other settings "
                         f"({'; '.join(differences)}). Resume with the original settings, or start a new "
                         "run without --resume.")
    tensors = checkpoint.tensors
    run.network.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(run.optimizer, tensors, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    restore_generator_states(tensors, state["rng"], {"sampler": run.sampler}, {"selection": run.rng})
    processes = tensors["rng.process"]
    if processes.shape[0] == run.dist.world_size:
        restore_process_rng_state(processes[run.dist.rank], run.dist.device)
    else:
        logger.warning("The checkpoint was written by %d processes, this run has %d: dropout masks will "
                       "differ from those of an uninterrupted run.", processes.shape[0], run.dist.world_size)
        import torch

        torch.manual_seed(derived_seed(run.args.seed, run.dist.rank, checkpoint.epoch))
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
        images, masks = apply_affine(images.to(dist.device), masks.to(dist.device), theta)
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
    processes = run.dist.all_gather(process_rng_state(run.dist.device))
    if not run.dist.is_main:
        return
    tensors = {f"model.{key}": value for key, value in run.network.state_dict().items()}
    optimizer_tensors, optimizer_document = optimizer_parts(run.optimizer)
    generator_tensors, generator_document = generator_states({"sampler": run.sampler}, {"selection": run.rng})
    tensors.update(optimizer_tensors)
    tensors.update(generator_tensors)
    tensors["rng.process"] = processes
    save_checkpoint(run.files.checkpoints, epoch, tensors, {
        "run": run.fingerprint(), "optimizer": optimizer_document, "scheduler": run.scheduler.state_dict(),
        "rng": generator_document, "history": run.state.history, "best_val_loss": run.state.best_val_loss,
        "best_epoch": run.state.best_epoch, "world_size": run.dist.world_size})


def model_card(run: Run, metrics: dict) -> dict:
    history = run.state.history
    return {
        "name": run.files.weights.stem,
        "title": run.args.title or run.spec.title,
        "architecture": run.spec.class_name,
        "architecture_params": run.spec.params,
        "parameters": parameter_counts(run.network),
        "task": "pancreas segmentation on CT",
        "classes": ["pancreas"],
        "preprocessing": run.preprocessing,
        "postprocessing": {"threshold": 0.5, "keep_largest_component": True},
        "intended_use": run.args.intended_use,
        "training": {
            "data": run.description,
            "data_source": run.data_source,
            "data_sha256": run.data_sha256,
            "labels": PANCREAS_RULE,
            "cases": {"training": int((~run.is_validation).sum()), "validation": int(run.is_validation.sum())},
            "slices": {"training": len(run.train), "validation": len(run.val)},
            "protocol": protocol_record(run.protocol),
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
    """Re-write the best model's card with the final history and per-patient validation Dice."""
    if not run.dist.is_main:
        return
    if not run.files.weights.exists() or not run.state.history:
        raise PancreasAIError("No model was saved: the validation loss never became a number. "
                              "Lower the learning rate or check the data.")
    from safetensors.torch import load_file

    best = build_network(run.spec).to(run.dist.device)
    best.load_state_dict(load_file(str(run.files.weights)))
    every_case = run.train.cases  # a SliceSet refers to the slices of all cases
    val_cases = [slices for slices, v in zip(every_case, run.is_validation) if v]
    scores = [s for s in patient_dice_on_model_grid(best, val_cases, run.dist.device) if not math.isnan(s)]
    best_row = next(row for row in run.state.history if row["epoch"] == run.state.best_epoch)
    metrics = {"validation": best_row}
    if scores:
        metrics["validation_patients"] = {
            "dice_mean": float(np.mean(scores)), "dice_sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            "cases": len(scores),
            "how": "per case, all its slices on the model's grid, threshold 0.5, no clean-up; "
                   "evaluate_segmentation.py gives Dice and HD95 on the original grid"}
    save_model(best.state_dict(), run.files.weights, model_card(run, metrics))
    logger.info("Best validation loss %.4f at epoch %d; model: %s", run.state.best_val_loss,
                run.state.best_epoch, run.files.weights)
    if scores:
        spread = metrics["validation_patients"]["dice_sd"]
        logger.info("Validation Dice per patient (model grid): %.3f%s over %d case(s)",
                    metrics["validation_patients"]["dice_mean"],
                    "" if spread is None else f" +- {spread:.3f}", len(scores))


def train(args, argv: Optional[Sequence[str]] = None) -> int:
    """Run the training the arguments describe; returns the exit code (0 done, 2 refused)."""
    def body(dist: Distributed) -> None:
        run = start_run(args, argv, dist)
        train_epochs(run)
        finish(run)

    return run_script(SCRIPT, argv, log_file=RunFiles.for_output(args.output).log, device=args.device,
                      body=body, logger=logger,
                      on_interrupt="Finished epochs are kept: run the same command with --resume to continue.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (give one source)")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--msd", metavar="DIR", help="Medical Segmentation Decathlon Task07_Pancreas folder")
    source.add_argument("--images", metavar="DIR", help="folder of CT files (with --labels)")
    source.add_argument("--phantoms", type=int, metavar="N", help="number of synthetic CT phantoms")
    data.add_argument("--labels", metavar="DIR", help="folder of label files named as the CTs")
    data.add_argument("--patient-pattern", metavar="REGEX",
                      help="regular expression whose first group in a case name is the patient "
                           "(several scans per patient); default: each case is a patient")
    data.add_argument("--first-seed", type=int, default=0, help="seed of the first phantom")
    data.add_argument("--phantom-shape", type=int, nargs=3, default=list(DEFAULT_PHANTOM_SHAPE),
                      metavar=("K", "J", "I"), help="phantom size in voxels (slices, rows, columns)")
    data.add_argument("--cache-dir", metavar="DIR",
                      help="where pre-processed slices are kept (default: slice-cache beside the output)")
    model = parser.add_argument_group("model")
    model.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="monet",
                       help="MoNet or one of the paper's baselines (default: monet)")
    model.add_argument("--input-size", type=int, default=int(DEFAULT_PREPROCESSING["input_size"]),
                       help="slice size in pixels after in-plane resampling (default: %(default)s)")
    add_protocol_arguments(parser, MoNetProtocol)
    run = parser.add_argument_group("run")
    run.add_argument("--output", required=True, help="path of the .safetensors to write (its card goes beside it)")
    run.add_argument("--title", help="title in the model card (default: the architecture's name)")
    run.add_argument("--intended-use", default="", help="intended use, written into the model card")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    run.add_argument("--max-val-slices", type=int, default=10**9,
                     help="validate on a fixed random subset of this many slices (saves time)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="auto: a GPU when there is one (under torchrun: one per process)")
    run.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    add_initial_weights_argument(run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return train(args, argv)


if __name__ == "__main__":
    sys.exit(main())
