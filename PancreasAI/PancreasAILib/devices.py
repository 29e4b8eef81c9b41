"""Which torch device to run on: 'auto', 'cpu', 'gpu'/'cuda' or 'mps', with a message when it cannot be had."""

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


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA, else Apple MPS, when available; 'gpu'/'cuda' or 'mps' without one is
    an error the user can fix."""
    torch = import_torch()
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _mps_available(torch) else "cpu"
    if device in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise PancreasAIError("No CUDA GPU is available to PyTorch here; choose 'auto' or 'cpu' as device.")
        return "cuda"
    if device == "mps":
        if not _mps_available(torch):
            raise PancreasAIError("Apple's MPS is not available to PyTorch here; choose 'auto' or 'cpu' as device.")
        return "mps"
    if device != "cpu":
        raise PancreasAIError(f"Unknown device '{device}'; use auto, cpu, gpu or mps.")
    return "cpu"
