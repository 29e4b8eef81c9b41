"""Cases for training and evaluating pancreas segmentation: where they come from, the checks
every case passes, and their slices cached on the model's grid.

Sources: the Medical Segmentation Decathlon Task07_Pancreas folder as distributed
(dataset.json + imagesTr/labelsTr), a pair of folders of image and label files with the same
names (CT, or MR such as Cyst-X's IPMN_images_masks), synthetic CT phantoms, or the T2 images
of synthetic MR phantoms. Every non-zero label is pancreas (Task07's 1 pancreas and
2 tumour merged, as in the paper).

Slices go through PancreasSegMoNetLib.preprocessing, the code inference uses (its intensity
scaling, a "volume_min_max" range included, taken over the whole CT as inference takes it),
and are cached per case as .npy (CT float16 in [0, 1], mask uint8) under a folder named for
the pre-processing parameters, so a large data set is read from disk as needed (memory-mapped)
instead of sitting in memory as float32.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from PancreasAILib.cli_support import case_name
from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.orientation import axial_reorientation
from PancreasAILib.volume import Volume, check_scalar_volume
from PancreasAILib.volume_io import VOLUME_SUFFIXES, read_volume
from PancreasAIPhantoms.ct import make_ct_phantom
from PancreasAIPhantoms.mr import make_mr_phantom
from PancreasAILib.resample import resample
from PancreasSegMoNetLib.preprocessing import inplane_grid, model_slices

from trainkit.checkpoint import write_json_atomically
from trainkit.hashing import FileHashes
from trainkit.runlog import progress_bar

logger = logging.getLogger(__name__)

PANCREAS_RULE = "every non-zero label value is pancreas (MSD Task07: 1 pancreas and 2 tumour merged)"
DEFAULT_PHANTOM_SHAPE = tuple(inspect.signature(make_ct_phantom).parameters["shape"].default)
DEFAULT_MR_PHANTOM_SHAPE = tuple(inspect.signature(make_mr_phantom).parameters["shape"].default)
CACHE_FORMAT = 1


# --- one case ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseFingerprint:
    """content_sha256 keys the slice cache; data_record feeds the data set's SHA256;
    volumes are kept when computing the fingerprint needed them anyway (phantoms)."""

    content_sha256: str
    data_record: bytes
    volumes: Optional[tuple[Volume, Volume]] = None


@dataclass(frozen=True)
class FileCase:
    """A CT file and its label file (same voxel grid), of one patient."""

    case_id: str
    image: Path
    label: Path
    patient_id: str

    def load(self) -> tuple[Volume, Volume]:
        """(CT in Hounsfield units, label map), both checked; errors name the case."""
        ct = _read(self.case_id, self.image, "CT")
        labels = _read(self.case_id, self.label, "label map")
        check_case(self.case_id, ct, labels)
        return ct, labels

    def fingerprint(self, hashes: FileHashes) -> CaseFingerprint:
        try:
            image_sha, label_sha = hashes.sha256(self.image), hashes.sha256(self.label)
        except OSError as error:
            raise InputError(f"Case {self.case_id}: {error.filename} cannot be read ({error.strerror}).") from error
        content = hashlib.sha256(f"{image_sha}\t{label_sha}".encode()).hexdigest()
        return CaseFingerprint(content, f"{self.case_id}\t{image_sha}\t{label_sha}\n".encode())


@dataclass(frozen=True)
class PhantomCase:
    """A synthetic image with its pancreas label, one per seed: a CT (PancreasAIPhantoms.ct), or
    with modality "MR" the T2-weighted image of an MR phantom (PancreasAIPhantoms.mr) whose IPMN
    risk class (which lesion the gland holds) is seed % 3, so a set of seeds holds normal glands
    and small and large cysts alike."""

    seed: int
    shape: tuple[int, int, int] = DEFAULT_PHANTOM_SHAPE
    modality: str = "CT"

    @property
    def case_id(self) -> str:
        return f"{'mr-' if self.modality == 'MR' else ''}phantom-{self.seed:04d}"

    @property
    def patient_id(self) -> str:
        return self.case_id

    def load(self) -> tuple[Volume, Volume]:
        if self.modality == "MR":
            phantom = make_mr_phantom(self.seed, self.seed % 3, shape=tuple(self.shape))
            image = phantom.t2
        else:
            phantom = make_ct_phantom(self.seed, shape=tuple(self.shape))
            image = phantom.hu
        return (Volume(image, phantom.ijk_to_ras),
                Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras))

    def fingerprint(self, hashes: FileHashes) -> CaseFingerprint:
        image, labels = self.load()
        # The voxels themselves, as the first version of train_monet.py hashed them.
        record = image.array.tobytes() + labels.array.tobytes()
        return CaseFingerprint(hashlib.sha256(record).hexdigest(), record, (image, labels))


Case = Union[FileCase, PhantomCase]



def _read(case_id: str, path: Path, what: str) -> Volume:
    try:
        return read_volume(path)
    except PancreasAIError as error:
        raise InputError(f"Case {case_id}: the {what} could not be read. {error}") from error


def _grid_text(volume: Volume) -> str:
    size = " x ".join(str(n) for n in volume.shape[::-1])
    spacing = " x ".join(f"{s:.3g}" for s in volume.spacing)
    origin = ", ".join(f"{o:.1f}" for o in volume.origin)
    return f"{size} voxels of {spacing} mm at ({origin})"


def check_same_grid(case_id: str, reference: Volume, other: Volume,
                    reference_name: str = "CT", other_name: str = "label map") -> None:
    """Refuse `other` unless it lies on `reference`'s voxel grid (to 5 % of a voxel)."""
    same_shape = tuple(other.shape) == tuple(reference.shape)
    tolerance = 0.05 * float(np.min(reference.spacing))
    if same_shape and float(np.abs(other.ijk_to_ras - reference.ijk_to_ras).max()) <= tolerance:
        return
    raise InputError(
        f"Case {case_id}: the {other_name} is not on the {reference_name}'s voxel grid "
        f"({other_name}: {_grid_text(other)}; {reference_name}: {_grid_text(reference)}). "
        f"Both must come from the same series; resample the {other_name} onto the {reference_name} first.")


def check_case(case_id: str, ct: Volume, labels: Volume) -> None:
    """A usable CT, a label map of whole numbers on its grid; warns when there is no pancreas."""
    try:
        check_scalar_volume(ct.array, "CT", min_size=(1, 8, 8))
    except InputError as error:
        raise InputError(f"Case {case_id}: {error}") from error
    check_same_grid(case_id, ct, labels)
    values = labels.array
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise InputError(
            f"Case {case_id}: the label map holds fractional values; a label map of whole numbers "
            "(0 background, 1 pancreas, 2 tumour) is needed. Is it a probability map or an image?")
    if values.min() < 0:
        raise InputError(f"Case {case_id}: the label map holds negative values ({values.min()}); "
                         "is it a CT given as labels?")
    if not np.any(values > 0):
        logger.warning("Case %s: the label map has no pancreas (all zero).", case_id)


# --- where cases come from ----------------------------------------------------------------------

def volume_files(folder: Path) -> list[Path]:
    """Volume files in `folder`, without hidden files and macOS '._' companions."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.lower().endswith(".seg.nrrd"))


def _patient_of(case_id: str, pattern: Optional[str]) -> str:
    if not pattern:
        return case_id
    match = re.search(pattern, case_id)
    if match is None:
        raise InputError(f"Case {case_id}: its name does not match the patient pattern '{pattern}'.")
    return match.group(1) if match.groups() else match.group(0)


def folder_cases(images: Path, labels: Path, patient_pattern: Optional[str] = None,
                 modality: str = "CT") -> list[Case]:
    """Image files in `images` (CTs, or MR images with `modality` "MR") paired with the label
    files of the same name in `labels`.

    patient_pattern: a regular expression whose first group (or whole match) in a case name
    is the patient, for data with several scans per patient; default: one patient per case.
    """
    images, labels = Path(images), Path(labels)
    image = "CT" if modality == "CT" else "MR image"
    for folder, what in ((images, image), (labels, "label")):
        if not folder.is_dir():
            raise InputError(f"The {what} folder {folder} does not exist.")
    image_files = volume_files(images)
    if not image_files:
        raise InputError(f"{images} holds no {image} files ({', '.join(VOLUME_SUFFIXES)}).")
    label_files = {case_name(p): p for p in volume_files(labels)}
    missing = [case_name(p) for p in image_files if case_name(p) not in label_files]
    if missing:
        raise InputError(
            f"No label map for {len(missing)} {image}(s) in {images}: {_first(missing)}. Each {image} needs a "
            f"label file of the same name in {labels}.")
    unused = sorted(set(label_files) - {case_name(p) for p in image_files})
    if unused:
        logger.warning("%d label file(s) in %s have no %s and are not used: %s", len(unused), labels, image,
                       _first(unused))
    return [FileCase(case_name(p), p, label_files[case_name(p)], _patient_of(case_name(p), patient_pattern))
            for p in image_files]


def msd_cases(folder: Path, patient_pattern: Optional[str] = None) -> list[Case]:
    """The training cases of a Medical Segmentation Decathlon task folder as distributed
    (dataset.json listing imagesTr/labelsTr pairs), sorted by name."""
    folder = Path(folder)
    manifest = folder / "dataset.json"
    if not manifest.is_file():
        if (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir():
            logger.warning("%s has no dataset.json; pairing imagesTr and labelsTr by file name.", folder)
            return folder_cases(folder / "imagesTr", folder / "labelsTr", patient_pattern)
        raise InputError(f"{folder} is not a Medical Segmentation Decathlon task folder: it has no "
                         "dataset.json and no imagesTr/labelsTr folders. Give the Task07_Pancreas folder.")
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        entries = [(folder / item["image"], folder / item["label"]) for item in document["training"]]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"{manifest} is not a Decathlon dataset.json with a 'training' list of "
                         f"image/label pairs ({error}).") from error
    modality = " ".join(str(m) for m in document.get("modality", {}).values())
    if modality and "CT" not in modality.upper():
        logger.warning("%s says the modality is %s; MoNet is trained on CT.", manifest, modality)
    missing = [f"{case_name(image)}: {path}" for image, label in entries
               for path in (image, label) if not path.is_file()]
    if missing:
        raise InputError(f"{len(missing)} file(s) listed in {manifest} are missing ({_first(missing)}); "
                         "unpack the complete archive.")
    cases = [FileCase(case_name(image), image, label, _patient_of(case_name(image), patient_pattern))
             for image, label in entries]
    return sorted(cases, key=lambda case: case.case_id)


def phantom_cases(count: int, first_seed: int = 0,
                  shape: Sequence[int] = DEFAULT_PHANTOM_SHAPE, modality: str = "CT") -> list[Case]:
    """`count` CT phantoms, or with modality "MR" the T2 images of MR phantoms."""
    return [PhantomCase(seed, tuple(int(n) for n in shape), modality) for seed in range(first_seed, first_seed + count)]


def _first(items: Sequence[str], count: int = 5) -> str:
    return ", ".join(items[:count]) + (f" and {len(items) - count} more" if len(items) > count else "")


# --- slices on the model's grid, cached -----------------------------------------------------------

def label_slices(canonical_labels: Volume, preprocessing: dict) -> np.ndarray:
    """Canonical binary label slab -> (K, size, size) float32 in {0, 1} on the model's grid: the
    slices `model_slices` makes of the CT, bilinear, each pixel pancreas when at least half covered."""
    size = int(preprocessing["input_size"])
    grid = inplane_grid(canonical_labels, size)
    labels = resample(canonical_labels, (canonical_labels.shape[0], size, size), grid,
                      order=1,  # pragma: no mutate (resample's default; explicit: bilinear, then >= 0.5)
                      )
    return (labels >= 0.5).astype(np.float32)


def slices_on_model_grid(ct: Volume, labels: Volume, preprocessing: dict) -> tuple[np.ndarray, np.ndarray]:
    """(K, S, S) float32 CT in [0, 1] and (K, S, S) uint8 pancreas mask: canonical axial slices
    exactly as the module feeds them to the network. The whole CT goes to `model_slices` at
    once, so its intensity range (`preprocessing.intensity_range`) is the whole CT's, as in
    `segment_ct`."""
    reorientation = axial_reorientation(ct)
    images, _ = model_slices(reorientation.apply_volume(ct), preprocessing)
    pancreas = labels.with_array(labels.array > 0)
    masks = label_slices(reorientation.apply_volume(pancreas), preprocessing)
    return images, masks.astype(np.uint8)


@dataclass(frozen=True)
class CachedSlices:
    """images: (K, S, S) float16 in [0, 1]; masks: (K, S, S) uint8; both memory-mapped."""

    images: np.ndarray
    masks: np.ndarray
    pancreas_slices: np.ndarray  # (K,) bool: the slice holds pancreas


class SliceCache:
    """Per-case slice files under `root/<size>px-<hash of the pre-processing parameters>/`."""

    def __init__(self, root: Path, preprocessing: dict) -> None:
        settings = {"format": CACHE_FORMAT, "preprocessing": preprocessing, "labels": PANCREAS_RULE}
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(root) / f"{int(preprocessing['input_size'])}px-{tag}"
        self.settings = settings

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        stem = self.folder / key[:32]
        return (stem.with_name(stem.name + ".images.npy"), stem.with_name(stem.name + ".masks.npy"),
                stem.with_name(stem.name + ".json"))

    def get(self, key: str) -> Optional[CachedSlices]:
        images_path, masks_path, meta_path = self._paths(key)
        if not meta_path.exists():  # written last: its presence marks a complete entry
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            images = np.load(images_path, mmap_mode="r")
            masks = np.load(masks_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            logger.warning("Re-creating the damaged cache entry %s (%s).", meta_path, error)
            return None
        return CachedSlices(images, masks, np.asarray(meta["pancreas_slices"], dtype=bool))

    def put(self, key: str, case_id: str, images: np.ndarray, masks: np.ndarray) -> CachedSlices:
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_path = self.folder / "settings.json"
        if not settings_path.exists():
            write_json_atomically(settings_path, self.settings)
        images_path, masks_path, meta_path = self._paths(key)
        for path, array in ((images_path, images.astype(np.float16)), (masks_path, masks.astype(np.uint8))):
            temporary = path.with_name(path.name + ".part")
            with open(temporary, "wb") as stream:
                np.save(stream, array)
            os.replace(temporary, path)
        pancreas = masks.reshape(len(masks), -1).any(axis=1)
        write_json_atomically(meta_path, {"case_id": case_id, "shape": list(images.shape),
                                          "pancreas_slices": pancreas.astype(int).tolist()})
        return self.get(key)


@dataclass(frozen=True)
class PreparedCase:
    case_id: str
    patient_id: str
    cache_key: str
    slice_count: int


def prepare_cases(cases: Sequence[Case], cache: SliceCache, hashes: FileHashes,
                  show_progress: bool = True) -> tuple[list[PreparedCase], str]:
    """Put every case's slices in the cache (reading only what is not there yet); returns the
    cases as prepared and the SHA256 of the whole data set (files' or phantoms' content, in
    case order)."""
    data_hash = hashlib.sha256()
    prepared = []
    for case in progress_bar(cases, description="Preparing cases", enabled=show_progress):
        fingerprint = case.fingerprint(hashes)
        data_hash.update(fingerprint.data_record)
        slices = cache.get(fingerprint.content_sha256)
        if slices is None:
            ct, labels = fingerprint.volumes or case.load()
            images, masks = slices_on_model_grid(ct, labels, cache.settings["preprocessing"])
            slices = cache.put(fingerprint.content_sha256, case.case_id, images, masks)
        prepared.append(PreparedCase(case.case_id, case.patient_id, fingerprint.content_sha256,
                                     len(slices.pancreas_slices)))
    hashes.save()
    return prepared, data_hash.hexdigest()
