"""The small synthetic sample volumes bundled with the extension, checked by SHA256.

The module self-tests run the demo models on them, and they appear in Slicer's Sample Data
module under "PancreasAI". They are phantoms made by our own generator
(Resources/make_sample_data.py, not shipped), not patient data.

The files live in each module's Resources/SampleData folder; an installed extension puts the
resources of all its modules in one Resources folder beside this package.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

CATEGORY = "PancreasAI"

CT_VOLUME_FILE = "PancreasAI-CT-phantom.nrrd"
CT_PANCREAS_FILE = "PancreasAI-CT-phantom-pancreas.seg.nrrd"
MR_T1_FILE = "PancreasAI-MR-phantom-T1.nrrd"
MR_T2_FILE = "PancreasAI-MR-phantom-T2.nrrd"
MR_REGION_FILE = "PancreasAI-MR-phantom-region.mrk.json"
MR_REGION_NODE = "Pancreas region"


@dataclass(frozen=True)
class SampleFile:
    """One bundled file; `load_file_type` is the Slicer reader that loads it."""

    file_name: str
    node_name: str
    sha256: str
    load_file_type: str


@dataclass(frozen=True)
class Sample:
    """One entry of Slicer's Sample Data module: the files that load together."""

    name: str
    module: str
    files: tuple[SampleFile, ...]


SAMPLES = (
    Sample("PancreasAICTPhantom", "PancreasSegMoNet", (
        SampleFile(CT_VOLUME_FILE, "CT phantom",
                   "6cbc028da8c91ab67650c1f2ef92ee37d6e2952956cd39de151543e4349ef1ab", "VolumeFile"),
        SampleFile(CT_PANCREAS_FILE, "CT phantom pancreas",
                   "4514026aef2e283b8482fb2975241814c2c2185d7b01a1020fd9e4184f84cddc", "SegmentationFile"),
    )),
    Sample("PancreasAIMRPhantom", "IPMNRisk", (
        SampleFile(MR_T1_FILE, "T1 phantom",
                   "015a98c708c84be9bfde91804754d9f97973ff27ef18d28b076bdfffc62cbe43", "VolumeFile"),
        SampleFile(MR_T2_FILE, "T2 phantom",
                   "e2945480feeb2531c4a7a0e9cb376893d31dc8045c7d21dd0725057bef0e20a5", "VolumeFile"),
        SampleFile(MR_REGION_FILE, MR_REGION_NODE,
                   "ebfee8ceef2dc62c4739a484e8ea3d12238bdc85f1267c6e5031bfc44200035c", "MarkupsFile"),
    )),
)

_SCRIPTED_MODULES = Path(__file__).resolve().parents[1]  # installed: qt-scripted-modules; source: PancreasAI/


def _candidate_paths(module: str, relative: str) -> tuple[Path, Path]:
    """Where a module resource lies in an installed extension, then in the source tree."""
    return (_SCRIPTED_MODULES / "Resources" / relative,
            _SCRIPTED_MODULES.parent / module / "Resources" / relative)


def _bundled_location(module: str, relative: str) -> Path:
    """The first place the resource exists, or the installed place if it exists nowhere."""
    candidates = _candidate_paths(module, relative)
    return next((path for path in candidates if path.is_file()), candidates[0])


def _entry(file_name: str) -> tuple[Sample, SampleFile]:
    for sample in SAMPLES:
        for entry in sample.files:
            if entry.file_name == file_name:
                return sample, entry
    known = ", ".join(entry.file_name for sample in SAMPLES for entry in sample.files)
    raise KeyError(f"{file_name!r} is not a bundled sample file; the bundled files are {known}.")


def file_sha256(path: Path) -> str:
    """Hex SHA256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sample_path(file_name: str) -> Path:
    """Path of the bundled sample file `file_name` (e.g. CT_VOLUME_FILE), after checking its SHA256.

    Raises InputError, naming the file, if it is missing or its content differs from what the
    extension shipped.
    """
    sample, entry = _entry(file_name)
    path = _bundled_location(sample.module, f"SampleData/{file_name}")
    if not path.is_file():
        raise InputError(f"The sample file {path} is missing from the PancreasAI extension; "
                         "reinstall the extension.")
    if file_sha256(path) != entry.sha256:
        raise InputError(f"The sample file {path} is damaged or was changed (its SHA256 differs from "
                         "the one the extension shipped); reinstall the extension.")
    return path


def register_sample_data() -> bool:
    """Add the samples to Slicer's Sample Data module (category "PancreasAI").

    The URIs are file:// URLs of the bundled files: Sample Data copies them into its cache with
    urllib, which reads file URLs, and checks the SHA256 as for a download. Returns False where
    the Sample Data module cannot be imported (outside Slicer).
    """
    try:
        import SampleData
    except ImportError:
        return False
    for sample in SAMPLES:
        paths = [_bundled_location(sample.module, f"SampleData/{entry.file_name}") for entry in sample.files]
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY,
            sampleName=sample.name,
            uris=[path.as_uri() for path in paths],
            fileNames=[entry.file_name for entry in sample.files],
            nodeNames=[entry.node_name for entry in sample.files],
            checksums=[f"SHA256:{entry.sha256}" for entry in sample.files],
            loadFileType=[entry.load_file_type for entry in sample.files],
            thumbnailFileName=str(_bundled_location(sample.module, f"Icons/{sample.module}.png")),
        )
    return True
