"""The networks the IPMN paper compares, all on the same 2 x 192 x 192 grids (channel 0 T1,
channel 1 T2) with one output per class of the task (3, or 2: `IPMNRiskLib.network.TASKS`):

- early fusion (the method): IPMNRiskLib's own ViT, T1 and T2 as two input channels;
- the ablations of Table II: a one-channel ViT on T1 only or on T2 only, and late fusion (two
  one-channel ViTs whose class tokens are concatenated into one linear head);
- the CNN baselines of Table I: AlexNet (torchvision), DenseNet-121, ResNet18,
  EfficientNet-B5 and MobileNet-v2 (timm), with 2 input channels, and the layer Grad-CAM
  explains for each.

Only early fusion is exported for IPMNRisk; the others exist to be cross-validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from PancreasAILib.errors import ModelFileError
from IPMNRiskLib.grids import GRID_SIZE
from IPMNRiskLib.network import (IN_CHANNELS, NUM_CLASSES, PAPER_ARCHITECTURE, create_vit,
                                 load_pretrained_natural_image)

#: The paper's ImageNet-21k ViT-B/16 on the Hugging Face hub (timm name.tag).
PAPER_PRETRAINED = "vit_base_patch16_224.augreg_in21k"


@dataclass(frozen=True)
class MethodSpec:
    """One row of the paper's tables: how to build it and, for CNNs, where Grad-CAM looks."""

    name: str
    title: str
    family: str  # "vit", "late-fusion" or "cnn"
    channel: Optional[int] = None  # one-channel ViTs: 0 = T1, 1 = T2
    timm_name: Optional[str] = None
    gradcam_layer: Optional[str] = None


METHODS = {spec.name: spec for spec in (
    MethodSpec("early-fusion", "ViT, early fusion (T1 + T2 as 2 channels)", "vit"),
    MethodSpec("t1-only", "ViT, T1 only", "vit", channel=0),
    MethodSpec("t2-only", "ViT, T2 only", "vit", channel=1),
    MethodSpec("late-fusion", "ViT, late fusion (two ViTs, class tokens concatenated)", "late-fusion"),
    MethodSpec("alexnet", "AlexNet", "cnn", gradcam_layer="features.11"),
    MethodSpec("densenet121", "DenseNet-121", "cnn", timm_name="densenet121", gradcam_layer="features.norm5"),
    MethodSpec("resnet18", "ResNet18", "cnn", timm_name="resnet18", gradcam_layer="layer4"),
    MethodSpec("efficientnet_b5", "EfficientNet-B5", "cnn", timm_name="efficientnet_b5", gradcam_layer="bn2"),
    MethodSpec("mobilenet_v2", "MobileNet-v2", "cnn", timm_name="mobilenetv2_100", gradcam_layer="bn2"),
)}
ABLATIONS = ("t1-only", "t2-only", "late-fusion")
BASELINES = ("alexnet", "densenet121", "resnet18", "efficientnet_b5", "mobilenet_v2")
METHOD_GROUPS = {"all": ("early-fusion", *ABLATIONS, *BASELINES), "ablations": ("early-fusion", *ABLATIONS),
                 "baselines": ("early-fusion", *BASELINES)}


@dataclass(frozen=True)
class Pretrained:
    """Where starting weights come from: a local .safetensors file of natural-image weights,
    or a timm hub name (needs internet)."""

    file: Optional[Path] = None
    hub_name: Optional[str] = None

    def describe(self) -> str:
        return f"file {self.file.name}" if self.file else f"hub {self.hub_name}"


def default_hub_name(method: str, vit_architecture: str) -> str:
    """The weights `--pretrained-hub` fetches: the paper's ImageNet-21k ViT-B/16 for ViT-B,
    timm's default tag otherwise."""
    spec = METHODS[method]
    if spec.family == "cnn":
        return spec.timm_name or "alexnet"
    return PAPER_PRETRAINED if vit_architecture == PAPER_ARCHITECTURE[0] else vit_architecture


def _timm():
    import timm
    return timm


def _pretrained_arguments(pretrained: Optional[Pretrained], name: str) -> tuple[str, dict]:
    """(timm name, create_model arguments) for starting weights; timm adapts the first layer to
    fewer input channels and resamples ViT position embeddings."""
    if pretrained is None:
        return name, {"pretrained": False}
    if pretrained.file is not None:
        if not Path(pretrained.file).is_file():
            raise ModelFileError(f"No pretrained weights file at {pretrained.file}.")
        return name, {"pretrained": True,
                      "pretrained_cfg_overlay": dict(file=str(pretrained.file), custom_load=False)}
    return pretrained.hub_name or name, {"pretrained": True}


def _create(name: str, pretrained: Optional[Pretrained], **arguments):
    timm_name, extra = _pretrained_arguments(pretrained, name)
    try:
        return _timm().create_model(timm_name, **extra, **arguments)
    except RuntimeError as error:
        raise ModelFileError(f"The pretrained weights ({pretrained.describe()}) do not fit {name} "
                             f"({str(error).splitlines()[0]}).") from error
    except Exception as error:  # hub and network errors come in many types
        if pretrained is not None and pretrained.file is None:
            raise ModelFileError(f"Could not fetch the pretrained {timm_name} weights ({error}). Offline, "
                                 "download the weights elsewhere and use --pretrained-file.") from error
        raise


def _channel_select_class():
    import torch

    class ChannelSelect(torch.nn.Module):
        """`network` (one input channel) applied to one channel of (B, 2, H, W) grids."""

        def __init__(self, network: torch.nn.Module, channel: int) -> None:
            super().__init__()
            self.network = network
            self.channel = channel

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x[:, self.channel:self.channel + 1])

    return ChannelSelect


def _late_fusion_class():
    import torch

    class LateFusionViT(torch.nn.Module):
        """Two one-channel ViTs (T1, T2) without heads; their class tokens (after the final
        LayerNorm) are concatenated and one linear layer gives the C logits. (B, 2, H, W) -> (B, C)."""

        def __init__(self, t1_encoder: torch.nn.Module, t2_encoder: torch.nn.Module,
                     num_classes: int = NUM_CLASSES) -> None:
            super().__init__()
            self.t1_encoder = t1_encoder
            self.t2_encoder = t2_encoder
            self.head = torch.nn.Linear(t1_encoder.num_features + t2_encoder.num_features, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = torch.cat([self.t1_encoder(x[:, :1]), self.t2_encoder(x[:, 1:2])], dim=1)
            return self.head(tokens)

    return LateFusionViT


def _one_channel_vit(architecture: str, params: dict, pretrained: Optional[Pretrained], num_classes: int):
    return _create(architecture, pretrained, in_chans=1, img_size=GRID_SIZE, num_classes=num_classes, **params)


def _alexnet(pretrained: Optional[Pretrained], num_classes: int = NUM_CLASSES):
    """torchvision's AlexNet with a 2-channel first convolution and `num_classes` outputs. Pretrained
    weights (torchvision's ImageNet ones, or a local .safetensors of them) keep their
    classifier except the last layer; the first convolution is adapted as timm does."""
    import torch
    import torchvision
    from timm.models import adapt_input_conv

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes)
    model.features[0] = torch.nn.Conv2d(IN_CHANNELS, 64, kernel_size=11, stride=4, padding=2)
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False  # Grad-CAM keeps the activations it hooks
    if pretrained is None:
        return model
    if pretrained.file is not None:
        from safetensors.torch import load_file

        if not Path(pretrained.file).is_file():
            raise ModelFileError(f"No pretrained weights file at {pretrained.file}.")
        state = load_file(str(pretrained.file))
    else:
        state = torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict()
    state = {key: value for key, value in state.items() if not key.startswith("classifier.6.")}
    if "features.0.weight" in state:
        state["features.0.weight"] = adapt_input_conv(IN_CHANNELS, state["features.0.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [key for key in missing if not key.startswith("classifier.6.")]:
        raise ModelFileError(f"The pretrained weights ({pretrained.describe()}) are not AlexNet weights.")
    return model


def build_network(method: str, vit_architecture: str = PAPER_ARCHITECTURE[0], vit_params: Optional[dict] = None,
                  pretrained: Optional[Pretrained] = None, num_classes: int = NUM_CLASSES):
    """A torch module for `method`: (B, 2, 192, 192) float32 grids -> (B, num_classes) logits."""
    spec = METHODS[method]
    params = dict(vit_params or {})
    if spec.name == "early-fusion":
        if pretrained is None:
            return create_vit(vit_architecture, params, num_classes)
        if pretrained.file is not None:
            return load_pretrained_natural_image(vit_architecture, pretrained.file, params, num_classes)
        return load_pretrained_natural_image(pretrained.hub_name or vit_architecture, None, params, num_classes)
    if spec.family == "vit":
        network = _one_channel_vit(vit_architecture, params, pretrained, num_classes)
        return _channel_select_class()(network, spec.channel)
    if spec.family == "late-fusion":
        encoders = [_one_channel_vit(vit_architecture, params, pretrained, 0) for _ in range(2)]
        return _late_fusion_class()(*encoders, num_classes)
    if spec.name == "alexnet":
        return _alexnet(pretrained, num_classes)
    return _create(spec.timm_name, pretrained, in_chans=IN_CHANNELS, num_classes=num_classes)


def parameter_count(network) -> int:
    return int(sum(p.numel() for p in network.parameters()))


# --- Grad-CAM for the CNN baselines -----------------------------------------------------------------

def gradcam_maps(network, method: str, grids: np.ndarray, classes: Optional[list[int]] = None) -> np.ndarray:
    """(B, 2, 192, 192) grids -> (B, 192, 192) Grad-CAM maps in [0, 1] (pytorch-grad-cam) of the
    given classes (default: each grid's predicted class), at the method's last feature layer."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    spec = METHODS[method]
    if spec.gradcam_layer is None:
        raise ValueError(f"{spec.title} has no Grad-CAM layer (Grad-CAM is for the CNN baselines)")
    network.eval()
    device = next(network.parameters()).device
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    with GradCAM(model=network, target_layers=[network.get_submodule(spec.gradcam_layer)]) as cam:
        maps = cam(input_tensor=torch.from_numpy(np.asarray(grids, np.float32)).to(device), targets=targets)
    return np.asarray(maps, np.float32)


def write_gradcam_png(path: Path, grid: np.ndarray, cam: np.ndarray, caption: str, scale: int = 2) -> Path:
    """T1 and T2 grids side by side, each with the Grad-CAM map blended in, and a caption."""
    from PIL import Image, ImageDraw
    from pytorch_grad_cam.utils.image import show_cam_on_image

    panels = []
    for channel in range(grid.shape[0]):
        grey = np.clip(np.asarray(grid[channel], np.float32), 0.0, 1.0)
        panels.append(show_cam_on_image(np.repeat(grey[..., None], 3, axis=-1), cam, use_rgb=True))
    image = Image.fromarray(np.concatenate(panels, axis=1))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (image.width, image.height + 22), (0, 0, 0))
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((4, image.height + 4), f"{caption}   (left T1, right T2)", fill=(255, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
