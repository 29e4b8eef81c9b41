"""Convert a PyTorch checkpoint (.pth, .pt, .ckpt, .bin) into a PancreasAI model file: .safetensors + model card.

PancreasAI never unpickles model files, because a pickle can run any code hidden in it. This
script reads the checkpoint with torch.load(weights_only=True), which accepts only tensors and
plain containers, so a checkpoint that needs code to load is refused. The tensors are then
loaded strictly into the network the module would build (--architecture), and written with a
model card: the architecture, the pre-processing of the training protocol --protocol names
(paper, the default, or ours; Resources/Training/PROTOCOLS.md), --title,
--intended-use, the source file's name and SHA256, and a note that the metrics are unknown.

MoNet, for PancreasSegMoNet:
  python Resources/Training/convert_checkpoint.py monet.pth --architecture monet --output monet.safetensors
The IPMN ViT-B/16, for IPMNRisk:
  python Resources/Training/convert_checkpoint.py ipmn.pth --architecture vit_base_patch16_224 --output ipmn.safetensors

An IPMN checkpoint's task (--task 3-class or 2-class, IPMNRiskLib.network.TASKS) is that of its
classifier: 3 outputs are the 3-class task, 2 the 2-class one (high-risk vs no or low-risk IPMN);
--task says it when the checkpoint has no `head.weight`. The card's classes name the task.

The checkpoint holds a state_dict: plain (torch.save(model.state_dict(), ...)) or under
"state_dict", "model_state_dict" or "model" (a "module." prefix from DistributedDataParallel
is removed). If the model was trained with other pre-processing than the default (another
slice size or window, or the IPMN paper's MRI pre-processing with its fitted landmarks),
write it into the card's "preprocessing" before use.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.model_card import command_line, software_versions
from trainkit.protocol import PRESETS, protocol_preset

from PancreasAILib.cli_support import run_command
from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.weights import save_model, sha256_of_file, state_dict_misfits
from IPMNRiskLib.network import TASKS, VIT_ARCHITECTURES

from segmentation_networks import ARCHITECTURES

if TYPE_CHECKING:
    import torch

SCRIPT = "Resources/Training/convert_checkpoint.py"
#: Where trainers commonly keep the state_dict inside a checkpoint, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
DDP_PREFIX = "module."
METRICS_UNKNOWN = {"note": "unknown: converted from a PyTorch checkpoint, which records no evaluation; "
                           "evaluate the model on your own data before relying on it"}


@dataclass(frozen=True)
class Target:
    """The network a checkpoint must fit, and what its card says about it."""

    network: "torch.nn.Module"
    title: str
    card_fields: dict


def segmentation_target(architecture: str, preset: str) -> Target:
    """MoNet or a baseline of the MoNet paper, as train_monet.py builds and describes it, with
    the CT intensities and post-processing of the protocol `preset`."""
    from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING
    from monet_protocol import MoNetProtocol
    from segmentation_networks import build_network, parameter_counts

    protocol = protocol_preset(MoNetProtocol, preset)
    spec = ARCHITECTURES[architecture]
    network = build_network(spec)
    return Target(network, spec.title, {
        "architecture": spec.class_name, "architecture_params": spec.params,
        "parameters": parameter_counts(network), "task": "pancreas segmentation on CT",
        "classes": ["pancreas"], "preprocessing": protocol.preprocessing(DEFAULT_PREPROCESSING),
        "postprocessing": {"threshold": 0.5, "keep_largest_component": protocol.keep_largest_component}})


def ipmn_task(args, state_dict: dict) -> str:
    """--task, else the task whose number of classes the checkpoint's classifier (`head.weight`)
    has, else 3-class; InputError when --task and the classifier disagree."""
    head = state_dict.get("head.weight")
    outputs = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    of_head = next((task for task, names in TASKS.items() if len(names) == outputs), None)
    if args.task and of_head and args.task != of_head:
        raise InputError(f"--task {args.task} has {len(TASKS[args.task])} classes, but the checkpoint's classifier "
                         f"has {outputs} outputs (the {of_head} task): give --task {of_head}, or leave --task out.")
    return args.task or of_head or "3-class"


def ipmn_target(args, task: str) -> Target:
    """The IPMN ViT (early fusion) of `task`, as train_ipmn.py builds and describes it."""
    from ipmn_data import card_preprocessing, preprocessing_steps
    from ipmn_networks import build_network, parameter_count
    from ipmn_setup import architecture_of, task_description
    from ipmn_training import IPMNProtocol

    architecture, params = architecture_of(args, phantoms=False)
    network = build_network("early-fusion", architecture, params, num_classes=len(TASKS[task]))
    return Target(network, "IPMN ViT", {
        "architecture": architecture, "architecture_params": params,
        "parameters": parameter_count(network),
        "task": task_description(task),
        "classes": list(TASKS[task]),
        # The paper's MRI pre-processing needs landmarks fitted on the training cohort, which a
        # checkpoint does not hold: the card states the input format without it.
        "preprocessing": card_preprocessing(preprocessing_steps("none"),
                                            protocol_preset(IPMNProtocol, args.protocol).normalisation)})


def target_for(args, state_dict: dict) -> Target:
    if args.architecture in ARCHITECTURES:
        if args.architecture_params or args.task:
            raise InputError(f"{'--architecture-params' if args.architecture_params else '--task'} is for the IPMN "
                             "ViTs; the segmentation networks are fixed by --architecture.")
        return segmentation_target(args.architecture, args.protocol)
    return ipmn_target(args, ipmn_task(args, state_dict))


def read_checkpoint(path: Path) -> object:
    """What torch.load(weights_only=True) finds in `path`: tensors and plain containers only."""
    import pickle

    import torch

    if not path.is_file():
        raise InputError(f"No checkpoint file at {path}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it reads anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL ([\w.]+)", str(error))
        raise ModelFileError(
            f"{path.name} holds more than tensors{f' (it needs {needed.group(1)})' if needed else ''}, and "
            "loading it would run code from the file, so it was not loaded; if you trust where it came "
            "from, save only the model's weights where it was made (torch.save(model.state_dict(), "
            "'weights.pth')) and convert that file.") from error
    except Exception as error:  # torch reports unreadable files with many error types
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(f"{path.name} is not a PyTorch checkpoint: torch could not read it "
                             f"({type(error).__name__}{': ' + detail if detail else ''}).") from error


def is_tensor_mapping(value) -> bool:
    import torch

    return (isinstance(value, dict) and bool(value)
            and all(isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()))


def state_dict_of(checkpoint, name: str) -> dict:
    """The tensors of a checkpoint: the state_dict itself, or the one under STATE_DICT_KEYS,
    without a DistributedDataParallel "module." prefix."""
    if is_tensor_mapping(checkpoint):
        state_dict = checkpoint
    elif isinstance(checkpoint, dict) and any(is_tensor_mapping(checkpoint.get(key)) for key in STATE_DICT_KEYS):
        state_dict = next(checkpoint[key] for key in STATE_DICT_KEYS if is_tensor_mapping(checkpoint.get(key)))
    else:
        found = (f"its top-level keys are {', '.join(map(str, list(checkpoint)[:8]))}"
                 if isinstance(checkpoint, dict) and checkpoint else f"it holds a {type(checkpoint).__name__}")
        raise ModelFileError(
            f"{name} holds no state_dict (tensor names mapped to tensors) at its top level or under "
            f"{', '.join(repr(key) for key in STATE_DICT_KEYS)}; {found}.")
    if all(key.startswith(DDP_PREFIX) for key in state_dict):
        state_dict = {key[len(DDP_PREFIX):]: tensor for key, tensor in state_dict.items()}
    return state_dict


def load_checked(target: Target, state_dict: dict, name: str, architecture: str) -> dict:
    """`state_dict` loaded strictly into the target network; its tensors, as the network holds them."""
    misfits = state_dict_misfits(target.network, state_dict)
    if misfits:
        hint = "--architecture" + ("" if architecture in ARCHITECTURES else " and --architecture-params")
        raise ModelFileError(
            f"{name} does not hold {architecture} weights ({'; '.join(misfits)}); check {hint}.")
    target.network.load_state_dict(state_dict, strict=True)
    return target.network.state_dict()


def refuse_existing_output(weights: Path, overwrite: bool) -> None:
    existing = [path for path in (weights, weights.with_suffix(".json")) if path.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} already exists; use --overwrite to replace it, or choose another --output.")


def convert(args, argv: Optional[Sequence[str]] = None) -> int:
    """Read, check and write; returns the exit code (0 done; errors are raised)."""
    checkpoint_path = Path(args.checkpoint)
    weights = Path(args.output).with_suffix(".safetensors")
    refuse_existing_output(weights, args.overwrite)
    state_dict = state_dict_of(read_checkpoint(checkpoint_path), checkpoint_path.name)
    target = target_for(args, state_dict)
    tensors = load_checked(target, state_dict, checkpoint_path.name, args.architecture)
    card = save_model(tensors, weights, {
        "name": weights.stem, "title": args.title or target.title, **target.card_fields,
        "intended_use": args.intended_use,
        "source": {"converted_from": checkpoint_path.name, "sha256": sha256_of_file(checkpoint_path)},
        "metrics": METRICS_UNKNOWN,
        "conversion": {"command": command_line(SCRIPT, argv), "software": software_versions()}})
    print(f"Wrote {card.weights_path} and its model card {card.card_path} ({card.architecture}, "
          f"{len(tensors)} tensors). Its metrics are unknown: evaluate it before use.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the PyTorch checkpoint (.pth, .pt, .ckpt, .bin)")
    parser.add_argument("--architecture", required=True, choices=[*sorted(ARCHITECTURES), *VIT_ARCHITECTURES],
                        help="the network the checkpoint holds: monet (PancreasSegMoNet), a baseline of the "
                             "MoNet paper, or the IPMN risk ViT (IPMNRisk)")
    parser.add_argument("--architecture-params", metavar="JSON",
                        help="timm arguments of an IPMN ViT as JSON, as given to train_ipmn.py (default: none; "
                             "the demo ViT's for vit_tiny_patch16_224)")
    parser.add_argument("--task", choices=tuple(TASKS),
                        help="IPMN ViTs: the classes the checkpoint was trained for (default: those of its "
                             "classifier, 3 outputs 3-class, 2 outputs 2-class); written into the card")
    parser.add_argument("--output", required=True, help="path of the .safetensors to write (its card goes beside it)")
    parser.add_argument("--title", help="title in the model card (default: the architecture's name)")
    parser.add_argument("--intended-use", default="", help="intended use, written into the model card")
    parser.add_argument("--protocol", choices=PRESETS, default="paper",
                        help="the training protocol whose input the checkpoint expects: paper (default: MoNet's CT "
                             "clipped to -150..200 HU and scaled per volume, raw masks; the IPMN ViT's sequences "
                             "normalised per whole volume) or ours (window -160..240 HU, largest component; crop-"
                             "stack normalisation); see Resources/Training/PROTOCOLS.md")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model file and card")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: convert(args, argv))


if __name__ == "__main__":
    sys.exit(main())
