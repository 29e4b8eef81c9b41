"""The IPMN Vision Transformer: timm ViTs on a 2 x 192 x 192 input with 3 classes.

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
NUM_CLASSES = 3  # normal, low-risk IPMN, high-risk IPMN
CLASS_NAMES = ("normal", "low-risk IPMN", "high-risk IPMN")

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

# The input format is fixed by the tiling, not by the card.
_FIXED_ARGUMENTS = {"in_chans": IN_CHANNELS, "img_size": GRID_SIZE, "num_classes": NUM_CLASSES}


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
    fixed = sorted(set(architecture_params) & set(_FIXED_ARGUMENTS))
    if fixed:
        raise ModelFileError(
            f"The architecture parameters may not set {', '.join(fixed)}: the input is always "
            f"{IN_CHANNELS} x {GRID_SIZE} x {GRID_SIZE} with {NUM_CLASSES} classes.")


def create_vit(architecture: str, architecture_params: Optional[dict] = None):
    """A randomly initialised timm ViT for (B, 2, 192, 192) input and 3 output logits."""
    params = dict(architecture_params or {})
    _check_architecture(architecture, params)
    return _timm().create_model(architecture, pretrained=False, **_FIXED_ARGUMENTS, **params)


def load_pretrained_natural_image(architecture: str, file_path: Optional[str | Path] = None,
                                  architecture_params: Optional[dict] = None):
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
            return timm.create_model(architecture, pretrained=True, **_FIXED_ARGUMENTS, **params)
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
                                  **_FIXED_ARGUMENTS, **params)
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
    """The card's fine-tuned ViT with its weights loaded strictly, in eval mode on the CPU."""
    _check_architecture(card.architecture, card.architecture_params)
    state_dict = load_state_dict(card, VIT_ARCHITECTURES)
    model = create_vit(card.architecture, card.architecture_params)
    try:
        load_into(model, state_dict, card)
    except RuntimeError as error:  # torch raises on wrong shapes even when not strict
        raise ModelFileError(
            f"The weights in {card.weights_path.name} do not fit the {card.architecture} architecture "
            f"described by its card ({str(error).splitlines()[-1].strip().rstrip('.')}).") from error
    return model.eval()
