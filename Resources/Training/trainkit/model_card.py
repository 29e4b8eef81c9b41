"""What a training run records in its model card besides protocol, data and metrics."""

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


def hardware_record(distributed) -> dict:
    """Device, process count and DDP backend (None for one process) of a `distributed.Distributed`."""
    import torch

    record = {"device": str(distributed.device.type), "processes": distributed.world_size,
              "backend": distributed.backend}
    if distributed.device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(distributed.device)
    return record
