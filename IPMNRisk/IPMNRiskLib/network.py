"""The IPMN Vision Transformer: timm ViTs on a 2 x 192 x 192 input with one logit per class of
its task (`TASKS`): the seed paper's 3 classes, or Cyst-X's 2 (high-risk vs no or low-risk).

timm is imported inside the functions so the Slicer module loads without it. Three ways to
get a model, one per purpose:

- `create_vit`: random weights (tests, training from scratch);
- `load_pretrained_natural_image`: ImageNet weights adapted by timm to 2 channels and a
  12 x 12 patch grid (training starts here, as in the paper);
- `load_vit`: our own fine-tuned `.safetensors` + model card, loaded strictly (inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from PancreasAILib.errors import MissingDependencyError, ModelFileError
from PancreasAILib.weights import ModelCard, load_into, load_state_dict

from .grids import GRID_SIZE

IN_CHANNELS = 2  # T1, T2
#: The classification tasks, each with its class names (class 0 first). Data carry the 3-class
#: risk label (0 normal, 1 low-risk, 2 high-risk IPMN); `task_label` turns it into a task's class.
#: A model card's `classes` list names its task; a card without one is 3-class (older cards).
TASKS = {
    "3-class": ("normal", "low-risk IPMN", "high-risk IPMN"),  # Proietto Salanitri et al. 2022
    "2-class": ("no or low-risk IPMN", "high-risk IPMN"),  # Cyst-X: high risk vs no / low risk, reported as AUC
}
DEFAULT_TASK = "3-class"
#: The names of the risk labels data carry (and of the 3-class task's classes).
CLASS_NAMES = TASKS[DEFAULT_TASK]
NUM_CLASSES = len(CLASS_NAMES)
HIGH_RISK_LABEL = 2

#: The paper's ViT-B/16; its ImageNet-21k weights are `vit_base_patch16_224.augreg_in21k`.
PAPER_ARCHITECTURE = ("vit_base_patch16_224", {})
#: Small enough to train on phantoms with 2 CPU cores in about 20-30 minutes
#: (about 0.5 M parameters, ~20 images/s forward + backward on 2 busy cores).
DEMO_ARCHITECTURE = ("vit_tiny_patch16_224", {"depth": 4, "embed_dim": 96, "num_heads": 3})
#: 16 x 16 patches: every 64 x 64 slice tile is exactly 4 x 4 patches.
VIT_ARCHITECTURES = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
PATCH_SIZE = 16
#: The patch tokens of every IPMN ViT: 192 / 16 = 12 rows and columns (after one class token).
PATCH_GRID = (GRID_SIZE // PATCH_SIZE, GRID_SIZE // PATCH_SIZE)

# The input format is fixed by the tiling, the number of classes by the task; neither by the
# architecture parameters.
_FIXED_ARGUMENTS = {"in_chans": IN_CHANNELS, "img_size": GRID_SIZE}
_NOT_PARAMETERS = (*_FIXED_ARGUMENTS, "num_classes")


def check_task(task: str) -> str:
    """`task` if it is one of TASKS; ValueError naming them otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown IPMN task '{task}'; choose one of {', '.join(TASKS)}")
    return task


def task_label(task: str, risk_label: int) -> int:
    """A 3-class risk label (0 normal, 1 low-risk, 2 high-risk IPMN) as the class of `task`:
    itself for 3-class; for 2-class 1 (high-risk IPMN) or 0 (no or low-risk IPMN)."""
    check_task(task)
    if task == "2-class":
        return int(int(risk_label) == HIGH_RISK_LABEL)
    return int(risk_label)


def task_of_classes(class_names, where: str = "The model card") -> str:
    """The task whose class names are `class_names` (empty: 3-class, as older cards); a
    `ModelFileError` naming the known tasks for any other list."""
    names = tuple(class_names or ()) or TASKS[DEFAULT_TASK]
    for task, task_names in TASKS.items():
        if names == task_names:
            return task
    known = "; ".join(f"{task}: {', '.join(task_names)}" for task, task_names in TASKS.items())
    raise ModelFileError(f"{where} lists the classes {', '.join(names)}, which are not those of an IPMN risk task "
                         f"({known}); the card does not belong to an IPMN risk model, or was edited.")


def card_task(card: ModelCard) -> str:
    """The task of a model card, from its classes (see `task_of_classes`)."""
    return task_of_classes(card.classes, card.card_path.name)


def _timm():
    try:
        import timm
    except ImportError as error:
        raise MissingDependencyError("The 'timm' package is needed for IPMN risk models: "
                                     "pip install timm") from error
    return timm


def _check_architecture(architecture: str, architecture_params: dict) -> None:
    if architecture not in VIT_ARCHITECTURES:
        raise ModelFileError(
            f"'{architecture}' is not an IPMN risk architecture; expected one of "
            f"{', '.join(VIT_ARCHITECTURES)}.")
    fixed = sorted(set(architecture_params) & set(_NOT_PARAMETERS))
    if fixed:
        raise ModelFileError(
            f"The architecture parameters may not set {', '.join(fixed)}: the input is always "
            f"{IN_CHANNELS} x {GRID_SIZE} x {GRID_SIZE}, and the classes are those of the card's task.")


def create_vit(architecture: str, architecture_params: Optional[dict] = None, num_classes: int = NUM_CLASSES):
    """A randomly initialised timm ViT for (B, 2, 192, 192) input and `num_classes` output logits."""
    params = dict(architecture_params or {})
    _check_architecture(architecture, params)
    return _timm().create_model(architecture, pretrained=False, num_classes=num_classes, **_FIXED_ARGUMENTS,
                                **params)


def load_pretrained_natural_image(architecture: str, file_path: Optional[str | Path] = None,
                                  architecture_params: Optional[dict] = None, num_classes: int = NUM_CLASSES):
    """A ViT initialised from 3-channel 224 x 224 natural-image weights, adapted by timm.

    timm keeps the R and G kernels of the patch embedding scaled by 3 / 2 (two input
    channels) and resamples the position embedding from 14 x 14 to 12 x 12; the classifier
    starts random. With `file_path` (a local `.safetensors` of the same architecture and
    parameters) nothing is downloaded; without it timm fetches the named weights from the
    Hugging Face hub (needs internet), e.g. 'vit_base_patch16_224.augreg_in21k' for the
    paper's ImageNet-21k ViT-B/16.
    """
    params = dict(architecture_params or {})
    _check_architecture(architecture.split(".")[0], params)
    timm = _timm()
    if file_path is None:
        try:
            return timm.create_model(architecture, pretrained=True, num_classes=num_classes, **_FIXED_ARGUMENTS,
                                     **params)
        except Exception as error:  # hub and network errors come in many types
            raise ModelFileError(
                f"Could not fetch the pretrained {architecture} weights ({error}). Offline, download "
                "its model.safetensors on a connected machine and give it with --pretrained-file.") from error
    file_path = Path(file_path)
    if not file_path.is_file():
        raise ModelFileError(f"No pretrained weights file at {file_path}.")
    if file_path.suffix != ".safetensors":
        raise ModelFileError(f"{file_path.name}: pretrained weights are read from .safetensors files only.")
    # custom_load=False: timm's generic loader (the architecture's default reads .npz files)
    overlay = dict(file=str(file_path), custom_load=False)
    try:
        model = timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=overlay,
                                  num_classes=num_classes, **_FIXED_ARGUMENTS, **params)
    except RuntimeError as error:
        raise ModelFileError(_not_this_architecture(file_path, architecture, params,
                                                    str(error).splitlines()[0])) from error
    _check_all_tensors_used(model, file_path, architecture, params)
    return model


def _not_this_architecture(file_path: Path, architecture: str, params: dict, detail: str) -> str:
    return (f"{file_path.name} does not hold {architecture} weights with the parameters "
            f"{params or 'of the standard model'} ({detail}).")


def _check_all_tensors_used(model, file_path: Path, architecture: str, params: dict) -> None:
    """timm loads non-strictly once it drops the 1000-class head, so a file with fewer or more
    blocks would load silently; compare the tensor names ourselves."""
    from safetensors import safe_open

    with safe_open(str(file_path), framework="pt") as weights:
        in_file = {key for key in weights.keys() if not key.startswith("head.")}
    in_model = {key for key in model.state_dict() if not key.startswith("head.")}
    missing, unexpected = sorted(in_model - in_file), sorted(in_file - in_model)
    if missing or unexpected:
        example = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelFileError(_not_this_architecture(file_path, architecture, params, example))


def load_vit(card: ModelCard):
    """The card's fine-tuned ViT (one logit per class of the card's task) with its weights loaded
    strictly, in eval mode on the CPU."""
    _check_architecture(card.architecture, card.architecture_params)
    num_classes = len(TASKS[card_task(card)])
    state_dict = load_state_dict(card, VIT_ARCHITECTURES)
    model = create_vit(card.architecture, card.architecture_params, num_classes)
    try:
        load_into(model, state_dict, card)
    except RuntimeError as error:  # torch raises on wrong shapes even when not strict
        raise ModelFileError(
            f"The weights in {card.weights_path.name} do not fit the {card.architecture} architecture "
            f"described by its card ({str(error).splitlines()[-1].strip().rstrip('.')}).") from error
    return model.eval()
