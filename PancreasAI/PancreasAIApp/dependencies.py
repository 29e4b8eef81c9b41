"""Installing what the models need, when a button is first clicked (never at import): torch
and torchvision through the PyTorch extension (which picks the CPU or CUDA build that fits the
computer), timm and safetensors with pip, from `Resources/requirements.txt`, without ever
replacing a package Slicer already has. OpenVINO, the faster CPU engine, is offered once
(`Resources/requirements-engine.txt`): declining it keeps PyTorch and is remembered."""

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

import slicer
from slicer.i18n import tr as _

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
ENGINE_REQUIREMENTS_FILE = REQUIREMENTS_FILE.with_name("requirements-engine.txt")
#: Where the answer to the OpenVINO offer is kept (Slicer's settings), so it is asked only once.
ENGINE_OFFER_SETTING = "PancreasAI/OpenVINOOffer"
#: Installed only through the PyTorch extension, which picks the CPU or CUDA build that fits
#: this computer; a plain pip install would fetch a build that may not.
TORCH_PACKAGES = ("torch", "torchvision")
#: Packages Slicer already has and that must never be replaced as a side effect of ours.
PROTECTED_PACKAGES = ("torch", "torchvision", "SimpleITK", "numpy")


def requirementLines(path: Path = REQUIREMENTS_FILE, environment: Optional[dict] = None) -> list[str]:
    """The requirement lines of `requirements.txt` that apply to this Python (or to the marker
    `environment` given, e.g. {"python_version": "3.9"}), without comments or markers."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer always has pip, which carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            lines.append(line.split(";", 1)[0].strip())
    return lines


def requirementName(line: str) -> str:
    """`timm==1.0.31` -> `timm`. Our requirements import under their distribution name."""
    return re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]


def missingPackages() -> list[str]:
    """Names of the needed packages that are not installed (found without importing them)."""
    needed = [*TORCH_PACKAGES, *(requirementName(line) for line in requirementLines())]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def ensureDependencies(parentWidget=None) -> bool:
    """Make sure torch, torchvision, timm and safetensors can be imported, offering to install
    what is missing. Returns True when everything is available; False when the user declined
    or the installation failed (the user has then been told why)."""
    missing = missingPackages()
    if not missing:
        return True
    if any(name in TORCH_PACKAGES for name in missing) and not _installTorch(parentWidget):
        return False
    pipLines = [line for line in requirementLines() if requirementName(line) in missing]
    if pipLines and not _installWithPip(pipLines, parentWidget):
        return False
    importlib.invalidate_caches()
    stillMissing = missingPackages()
    if stillMissing:
        slicer.util.errorDisplay(
            _("These Python packages are still not available: {packages}. Restart Slicer and try "
              "again.").format(packages=", ".join(stillMissing)),
            windowTitle=_("PancreasAI"), parent=parentWidget)
        return False
    return True


def offerEngine(parentWidget=None, settings=None) -> bool:
    """Offer OpenVINO once, if it is missing: True when it is (or has just been) installed.

    The run goes on either way: without OpenVINO PyTorch runs the network. A "no" is kept in
    Slicer's settings (`ENGINE_OFFER_SETTING`), so the question comes once; a failed
    installation is reported and asked again next time.
    """
    if importlib.util.find_spec("openvino") is not None:
        return True
    if settings is None:
        import qt

        settings = qt.QSettings()
    if str(settings.value(ENGINE_OFFER_SETTING, "")) == "declined":
        return False
    lines = requirementLines(ENGINE_REQUIREMENTS_FILE)
    if not slicer.util.confirmYesNoDisplay(
            _("OpenVINO runs the PancreasAI networks 2 to 3 times faster on this computer's CPU, with "
              "the same results. Install it now ({packages})? This needs an internet connection and "
              "takes a minute.\n\nNo: PyTorch runs them, and you will not be asked again.")
            .format(packages=", ".join(lines)),
            windowTitle=_("Faster inference on the CPU"), parent=parentWidget):
        settings.setValue(ENGINE_OFFER_SETTING, "declined")
        return False
    if not _installWithPip(lines, parentWidget, confirm=False):
        return False
    importlib.invalidate_caches()
    return importlib.util.find_spec("openvino") is not None


def _installTorch(parentWidget) -> bool:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay(
            _("PancreasAI runs its models with PyTorch, which is installed by the 'PyTorch' "
              "extension. Install the PyTorch extension with the Extensions Manager, restart "
              "Slicer, then click the button again."),
            windowTitle=_("PyTorch extension needed"), parent=parentWidget)
        return False
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
    except Exception as error:
        logging.exception("Installing PyTorch failed")
        slicer.util.errorDisplay(
            _("Installing PyTorch failed. Check the internet connection, or install PyTorch from "
              "the PyTorch Utils module, then try again."),
            windowTitle=_("PancreasAI"), parent=parentWidget, detailedText=str(error))
        return False
    return torch is not None


def _installWithPip(lines: list[str], parentWidget, confirm: bool = True) -> bool:
    if confirm and not slicer.util.confirmOkCancelDisplay(
            _("PancreasAI needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
              "Install them now? This needs an internet connection and takes a minute or two.")
            .format(packages="\n".join(lines)),
            windowTitle=_("Install Python packages"), parent=parentWidget):
        return False
    constraintsPath = _writeProtectedVersions()
    try:
        slicer.util.pip_install([*lines, "--constraint", constraintsPath])
    except Exception as error:
        logging.exception("Installing %s failed", lines)
        slicer.util.errorDisplay(
            _("Installing {packages} failed. Check the internet connection (or ask IT to allow "
              "access to pypi.org) and try again.").format(packages=", ".join(lines)),
            windowTitle=_("PancreasAI"), parent=parentWidget, detailedText=str(error))
        return False
    finally:
        os.remove(constraintsPath)
    return True


def _writeProtectedVersions() -> str:
    """A pip constraints file pinning the installed torch, SimpleITK, numpy...: pip then
    refuses (instead of silently replacing them) if a package asked for other versions."""
    pins = []
    for name in PROTECTED_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    handle, path = tempfile.mkstemp(prefix="PancreasAI-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(pins) + "\n")
    return path
