"""Which torch device to run on: 'auto', 'cpu' or 'gpu'/'cuda', with a message when it cannot be had."""

from __future__ import annotations

from .errors import MissingDependencyError, PancreasAIError


def import_torch():
    """torch, or a message that says how to get it."""
    try:
        import torch
    except ImportError as error:
        raise MissingDependencyError(
            "PyTorch is not installed. In 3D Slicer, click the module's Apply button once to "
            "install it (through the PyTorch extension); elsewhere: pip install torch.") from error
    return torch


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when available; 'gpu'/'cuda' without one is an error the user can fix."""
    torch = import_torch()
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise PancreasAIError("No CUDA GPU is available to PyTorch here; choose 'auto' or 'cpu' as device.")
        return "cuda"
    if device != "cpu":
        raise PancreasAIError(f"Unknown device '{device}'; use auto, cpu or gpu.")
    return "cpu"
