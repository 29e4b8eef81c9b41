"""The MoNet paper's training protocol (Knolle, Kaissis et al., PLOS ONE 2021) as options with
their defaults, and the checks a run's settings must pass before any data are read.

Every default is written once, here: train_monet.py turns the fields into command-line options
and the model card records their values (trainkit.protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from PancreasAILib.errors import InputError

from segmentation_networks import NetworkSpec
from trainkit.distributed import Distributed
from trainkit.protocol import option


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


def check_settings(protocol: MoNetProtocol, spec: NetworkSpec, preprocessing: dict, dist: Distributed) -> None:
    """Refuse, naming the setting, what the network, the processes or the protocol cannot do."""
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
