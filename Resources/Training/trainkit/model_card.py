"""What a training run records in its model card besides protocol, data and metrics: software,
command line, hardware and the size of the network."""

from __future__ import annotations

import platform
import shlex
import sys
from importlib import metadata
from typing import Iterable, Optional, Sequence

DEFAULT_PACKAGES = ("torch", "numpy", "monai", "scikit-learn", "safetensors", "SimpleITK", "timm")


def software_versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict:
    """{package: version} for the installed ones, plus Python's."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command as a person would retype it: `script` (e.g. its path in the repository)
    with `argv` (the arguments given to main(), else those of this process)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", script, *arguments])


def count_parameters(model, include_bn_running_stats: bool) -> int:
    """Number of parameter values of a torch module; with the BatchNorm running mean and
    variance if asked, as Keras counts (the MoNet paper's 403,556 for MoNet)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    total = sum(p.numel() for p in model.parameters())
    if include_bn_running_stats:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.running_mean is not None:
                total += module.running_mean.numel() + module.running_var.numel()
    return total


def hardware_record(distributed) -> dict:
    """Device, process count and DDP backend (None for one process) of a `distributed.Distributed`."""
    import torch

    record = {"device": str(distributed.device.type), "processes": distributed.world_size,
              "backend": distributed.backend}
    if distributed.device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(distributed.device)
    return record
