"""The MoNet training protocol as options: for every setting the paper's value with its source
(the article, Knolle, Kaissis et al., PLOS ONE 2021, or the authors' public code,
TUM-AIMED/MoNet), our value where it differs and why, and the checks a run's settings must
pass before any data are read.

Every value is written once, here: train_monet.py turns the fields into command-line options
(`--protocol paper` or `ours`, then one option per setting), the model card records each value
and whose it is (trainkit.protocol), and Resources/Training/PROTOCOLS.md explains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from PancreasAILib.errors import InputError

from segmentation_networks import NetworkSpec
from trainkit.distributed import Distributed
from trainkit.protocol import option, preset_field

ARTICLE = "article"
LOADER = "authors' code: preprocessing/data_loader.py"
NOTEBOOK = "authors' code: panc+tumor-seg.ipynb"
KERAS_AUGMENTATION = "authors' code: Keras ImageDataGenerator in panc+tumor-seg.ipynb"
SLICE_CHOICES = ("pancreas-range", "pancreas-and-fraction")


@dataclass(frozen=True)
class MoNetProtocol:
    """The paper's training protocol (defaults) or ours (`--protocol ours`); each field is a
    command-line option of the same name."""

    FIXED: ClassVar[dict] = {
        "split": "by patient: test patients first, then validation patients from the rest (scikit-learn "
                 "GroupShuffleSplit, seeded; counts rounded up, as scikit-learn's train_test_split)",
        "soft_dice": "soft Dice over the whole batch on sigmoid probabilities (MONAI DiceLoss, batch=True)",
        "optimizer": "NAdam",
        "lr_schedule": "ReduceLROnPlateau on the validation loss",
        "checkpoint": "lowest validation loss (the test cases are never seen in training or selection)",
        "augmentation": "random rotation, zoom and shift, identical for a slice and its mask",
        "init": "He-uniform (each network's own initialisation)",
        "sampling": "training slices drawn at random with replacement",
    }

    preset: str = preset_field()
    test_fraction: float = option(
        0.3, "fraction of the patients held out as the test set, never used to train or select; 0: none "
             "(then score the model on other data)", source=f"{ARTICLE} (70/30); {LOADER} (train_test_split, "
                                                            "test_size=0.3)")
    validation_fraction: float = option(
        0.1, "fraction of the other patients that validates (learning-rate drops, checkpoint)",
        source=f"{LOADER} (train_test_split of the training part, test_size=0.1)")
    slices: str = option(
        "pancreas-range", "slices used for training and validation: pancreas-range (the slices from the first "
                          "to the last with pancreas, with --z-margin more on each side) or pancreas-and-fraction "
                          "(every slice with pancreas and --empty-fraction of the others)",
        choices=SLICE_CHOICES, source=f"{LOADER} (crop_volume, 2D mode)", ours="pancreas-and-fraction",
        why="the network also sees slices far from the pancreas, which it must leave empty when it "
            "segments a whole CT")
    z_margin: int = option(16, "with --slices pancreas-range: slices kept above and below the pancreas",
                           source=f"{LOADER} (crop_height 32, half on each side)")
    empty_fraction: float = option(0.15, "with --slices pancreas-and-fraction: fraction of the slices without "
                                         "pancreas used for training and validation")
    intensity_scaling: str = option(
        "volume_min_max", "CT intensities: volume_min_max (clip to the window, then min-max of the whole "
                          "volume) or window (clip to the window and scale it to 0..1)",
        choices=("volume_min_max", "window"), source=f"{LOADER} (preprocess_scan: clip, then scale_array)",
        ours="window", why="a fixed window: a slice's values do not depend on what else the scan holds")
    window_low: float = option(-150.0, "lower end of the CT window in HU", source=f"{LOADER} (np.clip)",
                               ours=-160.0, why="the abdominal soft-tissue window (W 400, L 40) the pancreas is "
                                                "read in")
    window_high: float = option(200.0, "upper end of the CT window in HU", source=f"{LOADER} (np.clip)",
                                ours=240.0, why="the abdominal soft-tissue window (W 400, L 40) the pancreas is "
                                                "read in")
    learning_rate: float = option(5e-4, "NAdam learning rate", flags=("--learning-rate", "--lr"), source=ARTICLE)
    lr_factor: float = option(0.1, "learning-rate factor when the validation loss stops improving", source=ARTICLE)
    lr_patience: int = option(2, "epochs without validation improvement before the learning rate drops",
                              source=ARTICLE)
    rotation_degrees: float = option(10.0, "largest random rotation in degrees", source=ARTICLE)
    zoom: float = option(0.25, "largest random zoom, as a fraction", source=ARTICLE)
    zoom_axes: str = option(
        "independent", "independent (a zoom drawn for each in-plane axis) or isotropic (one zoom for both)",
        choices=("independent", "isotropic"), source=f"{KERAS_AUGMENTATION} (zoom_range)", ours="isotropic",
        why="keeps the gland's shape: the pixels are square after resampling")
    shift: float = option(0.2, "largest random shift, as a fraction of the slice size", source=ARTICLE)
    fill: str = option(
        "nearest", "what a transformed slice shows outside the original: nearest (the edge pixels repeated) "
                   "or zeros", choices=("nearest", "zeros"), source=f"{KERAS_AUGMENTATION} (fill_mode default)",
        ours="zeros", why="outside the slice is air, 0 after windowing; repeating the edge rows draws streaks")
    loss: str = option("dice", "training loss: dice (the paper) or dice+bce (soft Dice plus binary "
                               "cross-entropy)", choices=("dice", "dice+bce"), source=ARTICLE)
    dice_smooth: float = option(1.0, "smoothing added to numerator and denominator of the soft Dice",
                                source=f"{NOTEBOOK} (dice_coeff, smooth = 1)")
    batch_size: int = option(16, "slices per optimiser step, over all processes", source=f"{NOTEBOOK} (b_size = 16)",
                             ours=8, why="half the memory and time of a step on the CPU-only machines the demo "
                                         "weights were trained on")
    epochs: int = option(100, "number of epochs (the paper trains to convergence)")
    steps_per_epoch: int = option(0, "optimiser steps per epoch; 0: as many as one pass over the training slices",
                                  source=f"{NOTEBOOK} (fit: training slices // batch size)")
    early_stopping_patience: int = option(0, "stop after this many epochs without validation improvement; 0: never")
    keep_largest_component: bool = option(
        False, "post-processing recorded in the card: keep only the largest connected piece of the mask",
        source=f"{ARTICLE} (scores the network's thresholded masks)", ours=True,
        why="the pancreas is one organ: islands on the bowel or the spleen are removed")
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

    def preprocessing(self, base: dict) -> dict:
        """The module's pre-processing `base` with this protocol's CT intensities (model card); an
        MR `base` (PancreasSegMoNetLib.preprocessing.mr_preprocessing) is kept as it is."""
        if base.get("modality") == "MR":
            return dict(base)
        return {**base, "window_hu": [float(self.window_low), float(self.window_high)],
                "intensity_scaling": self.intensity_scaling}


#: Settings that only a CT has (Hounsfield units): refused on the command line of an MR run.
CT_ONLY = ("intensity_scaling", "window_low", "window_high")


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
    if not 0 <= protocol.test_fraction < 1:
        raise InputError(f"The test fraction must lie between 0 (no test set) and 1 (got {protocol.test_fraction}).")
    if not 0 < protocol.validation_fraction < 1:
        raise InputError(f"The validation fraction must lie between 0 and 1 (got {protocol.validation_fraction}).")
    if protocol.z_margin < 0:
        raise InputError(f"--z-margin must be 0 or more slices; got {protocol.z_margin}.")
    if protocol.window_high <= protocol.window_low:
        raise InputError(f"The CT window must have --window-high above --window-low (got {protocol.window_low} "
                         f"to {protocol.window_high} HU).")
