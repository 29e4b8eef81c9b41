"""A MoNet run's data: its cases (Decathlon folder, folder pair, Cyst-X's MR images and masks, or
phantoms), their slices cached
on the model's grid, the split by patient and the slices each side uses.

The cases themselves, their checks and the slice cache are segmentation_data's; this file
decides which of them a run trains and validates on, in the order of random draws of the first
version of train_monet.py (so that the documented demo commands make the same split).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError

from segmentation_data import (DEFAULT_MR_PHANTOM_SHAPE, DEFAULT_PHANTOM_SHAPE, CachedSlices, PreparedCase,
                               SliceCache, folder_cases, msd_cases, phantom_cases, prepare_cases)
from trainkit.checkpoint import write_json_atomically
from trainkit.distributed import Distributed
from trainkit.hashing import FileHashes
from trainkit.run_files import RunFiles

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("train_monet")


#: Cyst-X's segmentation data (Pan et al., arXiv 2507.22017), per sequence: images and masks
#: folders whose files share their names.
CYST_X_SEGMENTATION = "IPMN_images_masks"


def modality_of(args) -> str:
    """"CT" or "MR", the modality a run trains on (--modality; Cyst-X is MR)."""
    return "MR" if getattr(args, "modality", "ct") == "mr" else "CT"


def phantom_shape(args) -> tuple[int, ...]:
    """--phantom-shape, or the default phantom's of the run's modality."""
    if getattr(args, "phantom_shape", None):
        return tuple(int(n) for n in args.phantom_shape)
    return DEFAULT_MR_PHANTOM_SHAPE if modality_of(args) == "MR" else DEFAULT_PHANTOM_SHAPE


def cyst_x_folders(args) -> tuple[Path, Path]:
    """(images, masks) of the --cyst-x folder's --sequence."""
    base = Path(args.cyst_x) / CYST_X_SEGMENTATION / args.sequence
    images, masks = base / "images", base / "masks"
    if not (images.is_dir() and masks.is_dir()):
        raise InputError(f"{base} has no images and masks folders: give --cyst-x the Cyst-X folder that holds "
                         f"{CYST_X_SEGMENTATION}/{args.sequence}/images and .../masks.")
    return images, masks


def discover_cases(args) -> list:
    if args.msd:
        return msd_cases(Path(args.msd), args.patient_pattern)
    if getattr(args, "cyst_x", None):
        return folder_cases(*cyst_x_folders(args), args.patient_pattern, "MR")
    if args.images or args.labels:
        if not (args.images and args.labels):
            raise InputError("--images and --labels go together: the image folder and the label folder.")
        return folder_cases(Path(args.images), Path(args.labels), args.patient_pattern, modality_of(args))
    return phantom_cases(args.phantoms, args.first_seed, phantom_shape(args), modality_of(args))


def describe_data(args, count: int) -> tuple[str, dict]:
    """(one line for people, the source's parameters) for the model card."""
    if args.msd:
        return (f"Medical Segmentation Decathlon Task07_Pancreas, {count} training cases",
                {"kind": "msd", "folder": str(args.msd)})
    if getattr(args, "cyst_x", None):
        return (f"Cyst-X {args.sequence.upper()} images and pancreas masks, {count} cases",
                {"kind": "cyst_x", "folder": str(args.cyst_x), "sequence": args.sequence})
    if args.images:
        return (f"{count} {modality_of(args)} and label files", {"kind": "folders", "images": str(args.images),
                                                                "labels": str(args.labels)})
    shape = phantom_shape(args)
    if modality_of(args) == "MR":
        text = (f"T2 images of {args.phantoms} synthetic MR phantoms (seeds {args.first_seed}-"
                f"{args.first_seed + args.phantoms - 1}, risk class seed % 3), PancreasAIPhantoms.mr")
        default_shape, kind = DEFAULT_MR_PHANTOM_SHAPE, "mr_phantoms"
    else:
        text = (f"{args.phantoms} synthetic CT phantoms (seeds {args.first_seed}-"
                f"{args.first_seed + args.phantoms - 1}), PancreasAIPhantoms.ct")
        default_shape, kind = DEFAULT_PHANTOM_SHAPE, "phantoms"
    if shape != default_shape:
        text += f", {' x '.join(map(str, shape[::-1]))} voxels"
    return text, {"kind": kind, "count": args.phantoms, "first_seed": args.first_seed, "shape": list(shape)}


SPLITS = ("training", "validation", "test")


def _held_out_count(count: int, fraction: float) -> int:
    """Patients a fraction of `count` holds out: rounded up, as scikit-learn's train_test_split
    does (281 cases x 0.3 -> 85, the paper's number); 0 for a fraction of 0."""
    return math.ceil(round(count * fraction, 6)) if fraction > 0 else 0


def _draw_patients(patient_ids: Sequence[str], count: int, rng: np.random.Generator) -> np.ndarray:
    """(n_cases,) bool: the cases of `count` patients drawn at random (GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    # scikit-learn draws from a RandomState that shares rng's bit generator: the same
    # permutation rng.permutation(n_patients) gives (the first version of this script), and rng
    # goes on from where it would have.
    splitter = GroupShuffleSplit(n_splits=1, test_size=count, random_state=np.random.RandomState(rng.bit_generator))
    _, drawn = next(splitter.split(np.zeros(len(patient_ids)), groups=list(patient_ids)))
    chosen = np.zeros(len(patient_ids), dtype=bool)
    chosen[drawn] = True
    return chosen


def split_by_patient(patient_ids: Sequence[str], test_fraction: float, validation_fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """(n_cases,) str array of "training", "validation" or "test", all cases of a patient on
    one side: a seeded random `test_fraction` of the patients is the test set, then
    `validation_fraction` of the others validates (as the authors' loader: two successive
    train_test_split). Without a test set the draws are those of the first version of this
    script, which had only a validation set."""
    patients = list(patient_ids)
    n_patients = len(set(patients))
    n_test = _held_out_count(n_patients, test_fraction)
    n_validation = max(1, _held_out_count(n_patients - n_test, validation_fraction))
    if n_patients - n_test - n_validation < 1:
        raise InputError(
            f"A training/validation{'/test' if n_test else ''} split needs at least "
            f"{3 if n_test else 2} patients and fractions that leave some for training; there are "
            f"{n_patients} patient(s), the test fraction is {test_fraction} and the validation fraction "
            f"{validation_fraction}.")
    split = np.full(len(patients), "training", dtype=object)
    if n_test:
        is_test = _draw_patients(patients, n_test, rng)
        split[is_test] = "test"
    rest = np.flatnonzero(split == "training")
    is_validation = _draw_patients([patients[i] for i in rest], n_validation, rng)
    split[rest[is_validation]] = "validation"
    return split.astype(str)


@dataclass
class SliceSet:
    """Slices of cached cases, as (case, slice) index pairs; read from disk batch by batch."""

    cases: list[CachedSlices]
    index: np.ndarray  # (N, 2) int64

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, positions: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(B, 1, S, S) float32 CT and mask for the slices at `positions`."""
        import torch

        pairs = self.index[np.asarray(positions, dtype=np.int64)]
        images = np.stack([self.cases[c].images[s] for c, s in pairs]).astype(np.float32)
        masks = np.stack([self.cases[c].masks[s] for c, s in pairs]).astype(np.float32)
        return torch.from_numpy(images[:, None]), torch.from_numpy(masks[:, None])


def used_slices(slices: CachedSlices, protocol, rng: np.random.Generator) -> np.ndarray:
    """Indices of the slices of one case used for training or validation: the pancreas's
    first to last slice with `z_margin` more on each side (pancreas-range, the authors'), or
    every slice with pancreas plus a random `empty_fraction` of the others (ours)."""
    pancreas = np.asarray(slices.pancreas_slices, dtype=bool)
    if protocol.slices == "pancreas-range":
        present = np.flatnonzero(pancreas)
        if not len(present):
            return present
        first, last = max(int(present[0]) - protocol.z_margin, 0), min(int(present[-1]) + protocol.z_margin,
                                                                         len(pancreas) - 1)
        return np.arange(first, last + 1)
    return np.flatnonzero(pancreas | (rng.random(len(pancreas)) < protocol.empty_fraction))


def select_slices(cached: list[CachedSlices], split: np.ndarray, protocol, max_val_slices: int,
                  rng: np.random.Generator) -> tuple[SliceSet, SliceSet]:
    """The training and validation slices (`used_slices`), case by case in order; the test
    cases give none. Validation limited to a fixed random subset of `max_val_slices`."""
    train_pairs, val_pairs = [], []
    for case_index, slices in enumerate(cached):
        if split[case_index] == "test":
            continue
        pairs = [(case_index, int(s)) for s in used_slices(slices, protocol, rng)]
        (val_pairs if split[case_index] == "validation" else train_pairs).extend(pairs)
    if len(val_pairs) > max_val_slices:
        pick = np.sort(rng.choice(len(val_pairs), max_val_slices, replace=False))
        val_pairs = [val_pairs[i] for i in pick]
    as_index = lambda pairs: np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return SliceSet(cached, as_index(train_pairs)), SliceSet(cached, as_index(val_pairs))


def write_data_manifest(path: Path, prepared: list[PreparedCase], data_sha256: str, description: str,
                        cache: SliceCache, split: Optional[np.ndarray] = None) -> None:
    """The run's cases (with their split, "training", "validation" or "test", once known):
    stays in the run folder, not in the model card, because a site's case names may identify
    patients. evaluate_segmentation.py --cases-of reads the test cases from it."""
    cases = []
    for index, case in enumerate(prepared):
        item = {"case_id": case.case_id, "patient_id": case.patient_id, "cache_key": case.cache_key,
                "slice_count": case.slice_count}
        if split is not None:
            item["split"] = str(split[index])
        cases.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"data": description, "data_sha256": data_sha256,
                                 "slice_cache": str(cache.folder), "cases": cases})


def pancreas_pixels(slices: SliceSet) -> tuple[int, int]:
    """(pancreas pixels, all pixels) of `slices`."""
    pancreas = sum(int(np.count_nonzero(slices.cases[c].masks[s])) for c, s in slices.index)
    size = slices.cases[0].masks.shape[-1]
    return pancreas, len(slices) * size * size


def prepare_data(args, dist: Distributed, files: RunFiles, preprocessing: dict):
    cases = discover_cases(args)
    description, source = describe_data(args, len(cases))
    cache = SliceCache(Path(args.cache_dir) if args.cache_dir else files.weights.parent / "slice-cache",
                       preprocessing)

    def prepare() -> None:
        logger.info("Data: %s. Slice cache: %s", description, cache.folder)
        prepared, data_sha256 = prepare_cases(cases, cache, FileHashes(cache.folder.parent / "file-hashes.json"),
                                              show_progress=dist.is_main)
        write_data_manifest(files.data_manifest, prepared, data_sha256, description, cache)

    dist.run_on_main(prepare)
    manifest = json.loads(files.data_manifest.read_text(encoding="utf-8"))
    prepared = [PreparedCase(c["case_id"], c["patient_id"], c["cache_key"], c["slice_count"])
                for c in manifest["cases"]]
    cached = [cache.get(case.cache_key) for case in prepared]
    return description, source, manifest["data_sha256"], prepared, cached, cache
