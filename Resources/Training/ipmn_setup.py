"""What train_ipmn.py and crossvalidate_ipmn.py share on their command lines: the data, the
pre-processing, the ViT and its starting weights, the run; preparing the data once (the main
process fills the stack cache, the others read it); and the labels of the task (--task)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from PancreasAILib.errors import InputError
from PancreasAILib.weights import sha256_of_file
from IPMNRiskLib.network import DEMO_ARCHITECTURE, PAPER_ARCHITECTURE, TASKS, VIT_ARCHITECTURES, task_label
from PancreasAIPhantoms.mr import make_mr_phantom

from ipmn_data import DEFAULT_NORMALISATION, Case, PreparedCase, StackCache, prepare_cases, preprocessing_steps
from ipmn_networks import METHODS, Pretrained, default_hub_name
from trainkit.distributed import Distributed

logger = logging.getLogger(__name__)
_WARNED: set = set()  # methods already warned about in this process

_PHANTOM_DEFAULTS = inspect.signature(make_mr_phantom).parameters
PHANTOM_SHAPE = tuple(_PHANTOM_DEFAULTS["shape"].default)
PHANTOM_SPACING = tuple(_PHANTOM_DEFAULTS["spacing"].default)


def add_phantom_shape_arguments(group) -> None:
    group.add_argument("--phantom-shape", type=int, nargs=3, default=list(PHANTOM_SHAPE), metavar=("K", "J", "I"),
                       help="phantom size in voxels (slices, rows, columns; default %(default)s)")
    group.add_argument("--phantom-spacing", type=float, nargs=3, default=list(PHANTOM_SPACING),
                       metavar=("X", "Y", "Z"), help="phantom voxel size in mm (default %(default)s)")


def add_preprocessing_arguments(group) -> None:
    group.add_argument("--preprocessing", choices=["auto", "paper", "standardisation", "none"], default="auto",
                       help="MRI pre-processing before cropping, recorded in the model card and repeated by "
                            "IPMNRisk: 'paper' = N4 bias-field correction, edge-preserving smoothing and "
                            "intensity standardisation (landmarks fitted on the training cases only: in the "
                            "cross-validation on each outer fold's training part); 'standardisation' = that "
                            "step alone (for volumes already corrected); 'none'; auto (default): paper for a "
                            "cohort CSV, none for phantoms")
    group.add_argument("--cache-dir", metavar="DIR",
                       help="where pre-processed crop stacks are kept (default: ipmn-cache beside the output; "
                            "phantoms: not kept)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--architecture", choices=VIT_ARCHITECTURES,
                       help=f"timm ViT (default: {PAPER_ARCHITECTURE[0]}, the paper's ViT-B/16, for a cohort; "
                            f"the small demo ViT for phantoms)")
    group.add_argument("--architecture-params", metavar="JSON",
                       help="timm arguments of the ViT as JSON, e.g. '{\"depth\": 4, \"embed_dim\": 96, "
                            "\"num_heads\": 3}' (default: none; the demo ViT's for "
                            f"{DEMO_ARCHITECTURE[0]})")
    start = group.add_mutually_exclusive_group()
    start.add_argument("--pretrained-file", metavar="PATH",
                       help="start from natural-image weights in a local .safetensors (timm adapts them to "
                            "2 channels and 192 x 192); default: random initialisation")
    start.add_argument("--pretrained-hub", nargs="?", const="default", metavar="NAME",
                       help="start from weights fetched from the Hugging Face hub (needs internet); NAME "
                            f"defaults to {default_hub_name('early-fusion', PAPER_ARCHITECTURE[0])} for ViT-B")


def add_run_arguments(group) -> None:
    group.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="auto: a GPU when there is one (under torchrun: one per process)")
    group.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")


def architecture_of(args, phantoms: bool) -> tuple[str, dict]:
    """(timm name, parameters) of the ViT the arguments ask for."""
    default = DEMO_ARCHITECTURE[0] if phantoms else PAPER_ARCHITECTURE[0]
    architecture = args.architecture or default
    if args.architecture_params:
        try:
            params = json.loads(args.architecture_params)
        except json.JSONDecodeError as error:
            raise InputError(f"--architecture-params is not valid JSON ({error}).") from error
        if not isinstance(params, dict):
            raise InputError("--architecture-params must be a JSON object, e.g. '{\"depth\": 4}'.")
        return architecture, params
    return architecture, dict(DEMO_ARCHITECTURE[1]) if architecture == DEMO_ARCHITECTURE[0] else {}


def pretrained_of(args, method: str, architecture: str) -> Optional[Pretrained]:
    """The starting weights of `method`. A --pretrained-file holds ViT weights: the CNN
    baselines then start from random weights (with a warning; the record says so)."""
    if args.pretrained_file and METHODS[method].family == "cnn":
        if method not in _WARNED:
            _WARNED.add(method)
            logger.warning("%s starts from random weights: --pretrained-file holds ViT weights (use "
                           "--pretrained-hub for ImageNet CNN weights).", METHODS[method].title)
        return None
    if args.pretrained_file:
        path = Path(args.pretrained_file)
        if not path.is_file():
            raise InputError(f"No pretrained weights file at {path}.")
        return Pretrained(file=path)
    if args.pretrained_hub:
        name = default_hub_name(method, architecture) if args.pretrained_hub == "default" else args.pretrained_hub
        return Pretrained(hub_name=name)
    return None


def pretrained_record(pretrained: Optional[Pretrained]) -> Optional[dict]:
    """How the weights started, for the model card (a file by name and SHA256)."""
    if pretrained is None:
        return None
    if pretrained.file is not None:
        return {"file": pretrained.file.name, "sha256": sha256_of_file(pretrained.file)}
    return {"hub": pretrained.hub_name}


def steps_of(args, phantoms: bool) -> dict:
    choice = args.preprocessing
    return preprocessing_steps(("none" if phantoms else "paper") if choice == "auto" else choice)


def cache_of(args, output: Path, phantoms: bool) -> StackCache:
    """--cache-dir, else ipmn-cache beside the output; phantoms are not cached unless asked."""
    if args.cache_dir:
        return StackCache(Path(args.cache_dir))
    return StackCache(None if phantoms else Path(output).parent / "ipmn-cache")


def prepare_everywhere(cases: Sequence[Case], steps: dict, cache: StackCache, dist: Distributed,
                       fit_on: Optional[Sequence[int]] = None,
                       normalisation: str = DEFAULT_NORMALISATION) -> tuple[list[PreparedCase], dict]:
    """Prepared cases in every process, the standardisation landmarks fitted on the cases at
    positions `fit_on` (the training part): the main process fills the cache first (its errors
    stop all processes), then the others read it (or, without a cache, make them too)."""
    result = dist.run_on_main(lambda: prepare_cases(cases, steps, cache, fit_on, normalisation, show_progress=True))
    if dist.is_main:
        return result
    return prepare_cases(cases, steps, cache, fit_on, normalisation, show_progress=False, save_hashes=False)


def task_description(task: str) -> str:
    """The model card's "task": what the model tells, for its task (--task)."""
    return (f"IPMN risk class ({task}: {', '.join(TASKS[task])}) from paired T1/T2 MRI (3 x 3 grids of 9 slices, "
            "early fusion)")


def task_labels(cases: Sequence[Case], task: str) -> list[int]:
    """Each case's class in `task` (cases carry the 3-class risk label; `network.task_label`)."""
    return [task_label(task, case.label) for case in cases]


def with_task_labels(prepared: Sequence[PreparedCase], task: str) -> list[PreparedCase]:
    """Prepared cases labelled with their class in `task` (the stacks are those of the risk label's
    case: a phantom is drawn with its risk class, whatever the task)."""
    return [dataclasses.replace(case, label=task_label(task, case.label)) for case in prepared]
