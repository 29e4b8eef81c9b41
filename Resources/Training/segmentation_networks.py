"""The segmentation networks a run can train, named as in the MoNet paper's Table 1.

The model card's `architecture` is the class name (MoNet, UNet, AttentionUNet) and
`architecture_params` its constructor arguments, so `load_network` can rebuild any of them;
the classes themselves live in PancreasSegMoNetLib, where inference uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PancreasAILib.weights import ModelCard, load_into, load_state_dict

from trainkit.model_card import count_parameters


@dataclass(frozen=True)
class NetworkSpec:
    class_name: str
    params: dict = field(default_factory=dict)
    title: str = ""
    size_multiple: int = 4  # input height and width must be divisible by this


ARCHITECTURES = {
    "monet": NetworkSpec("MoNet", {"in_channels": 1, "n_classes": 1}, "MoNet", 4),
    "unet16": NetworkSpec("UNet", {"base_filters": 16, "in_channels": 1, "n_classes": 1}, "U-Net-16", 16),
    "unet64": NetworkSpec("UNet", {"base_filters": 64, "in_channels": 1, "n_classes": 1}, "U-Net-64", 16),
    "attention-unet": NetworkSpec("AttentionUNet", {"base_filters": 64, "in_channels": 1, "n_classes": 1},
                                  "Attention U-Net", 16),
}


def network_class(class_name: str) -> type:
    from segmentation_baselines import AttentionUNet, UNet
    from PancreasSegMoNetLib.network import MoNet

    classes = {"MoNet": MoNet, "UNet": UNet, "AttentionUNet": AttentionUNet}
    return classes[class_name]


def build_network(spec: NetworkSpec):
    """A freshly initialised network (each class initialises itself as the paper's Keras code)."""
    return network_class(spec.class_name)(**spec.params)


def output_bias(model):
    """The parameter that sets every output pixel's logit before the sigmoid: MoNet's head
    BatchNorm bias, the U-Nets' head convolution bias."""
    head = model.head
    return head.bn.bias if hasattr(head, "bn") else head.bias


def parameter_counts(model) -> dict:
    return {"trainable": count_parameters(model, False),
            "with_bn_running_stats": count_parameters(model, True)}


def load_network(card: ModelCard, device: str = "cpu"):
    """The network of any segmentation card, verified and ready for inference."""
    from PancreasSegMoNetLib.network import prepare_for_inference
    from PancreasSegMoNetLib.registry import build_monet

    if card.architecture == "MoNet":
        return build_monet(card, device)  # the module's own loader, as Slicer uses it
    state_dict = load_state_dict(card, ("UNet", "AttentionUNet"))
    model = network_class(card.architecture)(**card.architecture_params)
    load_into(model, state_dict, card)
    return prepare_for_inference(model).to(device)
