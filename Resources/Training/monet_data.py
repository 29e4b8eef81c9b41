"""A MoNet run's data: its cases (Decathlon folder, folder pair or phantoms), their slices cached
on the model's grid, the split by patient and the slices each side uses.

The cases themselves, their checks and the slice cache are segmentation_data's; this file
decides which of them a run trains and validates on, in the order of random draws of the first
version of train_monet.py (so that the documented demo commands make the same split).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError

from segmentation_data import (DEFAULT_PHANTOM_SHAPE, CachedSlices, PreparedCase, SliceCache, folder_cases,
                               msd_cases, phantom_cases, prepare_cases)
from trainkit.checkpoint import write_json_atomically
from trainkit.distributed import Distributed
from trainkit.hashing import FileHashes
from trainkit.run_files import RunFiles

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("train_monet")


def discover_cases(args) -> list:
    if args.msd:
        return msd_cases(Path(args.msd), args.patient_pattern)
    if args.images or args.labels:
        if not (args.images and args.labels):
            raise InputError("--images and --labels go together: the CT folder and the label folder.")
        return folder_cases(Path(args.images), Path(args.labels), args.patient_pattern)
    return phantom_cases(args.phantoms, args.first_seed, args.phantom_shape)


def describe_data(args, count: int) -> tuple[str, dict]:
    """(one line for people, the source's parameters) for the model card."""
    if args.msd:
        return (f"Medical Segmentation Decathlon Task07_Pancreas, {count} training cases",
                {"kind": "msd", "folder": str(args.msd)})
    if args.images:
        return (f"{count} CT and label files", {"kind": "folders", "images": str(args.images),
                                               "labels": str(args.labels)})
    text = (f"{args.phantoms} synthetic CT phantoms (seeds {args.first_seed}-"
            f"{args.first_seed + args.phantoms - 1}), PancreasAIPhantoms.ct")
    if tuple(args.phantom_shape) != DEFAULT_PHANTOM_SHAPE:
        text += f", {' x '.join(map(str, args.phantom_shape[::-1]))} voxels"
    return text, {"kind": "phantoms", "count": args.phantoms, "first_seed": args.first_seed,
                  "shape": list(args.phantom_shape)}


def split_by_patient(patient_ids: Sequence[str], validation_fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """(n_cases,) bool, True for validation: a seeded random `validation_fraction` of the
    patients, all cases of a patient on the same side."""
    from sklearn.model_selection import GroupShuffleSplit

    n_patients = len(set(patient_ids))
    n_validation = max(1, int(round(n_patients * validation_fraction)))
    if n_patients < 2 or n_validation >= n_patients:
        raise InputError(
            f"A training/validation split needs at least 2 patients and a validation fraction that "
            f"leaves some for training; there are {n_patients} patient(s) and the fraction is "
            f"{validation_fraction}.")
    # scikit-learn draws from a RandomState that shares rng's bit generator: the same
    # permutation rng.permutation(n_patients) gives (the first version of this script), and rng
    # goes on from where it would have.
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_validation,
                                 random_state=np.random.RandomState(rng.bit_generator))
    _, validation = next(splitter.split(np.zeros(len(patient_ids)), groups=list(patient_ids)))
    is_validation = np.zeros(len(patient_ids), dtype=bool)
    is_validation[validation] = True
    return is_validation


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


def select_slices(cached: list[CachedSlices], is_validation: np.ndarray, empty_fraction: float,
                  max_val_slices: int, rng: np.random.Generator) -> tuple[SliceSet, SliceSet]:
    """All slices with pancreas plus a random `empty_fraction` of the others, case by case in
    order; validation limited to a fixed random subset of `max_val_slices`."""
    train_pairs, val_pairs = [], []
    for case_index, slices in enumerate(cached):
        keep = slices.pancreas_slices | (rng.random(len(slices.pancreas_slices)) < empty_fraction)
        pairs = [(case_index, int(s)) for s in np.flatnonzero(keep)]
        (val_pairs if is_validation[case_index] else train_pairs).extend(pairs)
    if len(val_pairs) > max_val_slices:
        pick = np.sort(rng.choice(len(val_pairs), max_val_slices, replace=False))
        val_pairs = [val_pairs[i] for i in pick]
    as_index = lambda pairs: np.asarray(pairs, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return SliceSet(cached, as_index(train_pairs)), SliceSet(cached, as_index(val_pairs))


def write_data_manifest(path: Path, prepared: list[PreparedCase], data_sha256: str, description: str,
                        cache: SliceCache, is_validation: Optional[np.ndarray] = None) -> None:
    """The run's cases (with split once known): stays in the run folder, not in the model card,
    because a site's case names may identify patients."""
    cases = []
    for index, case in enumerate(prepared):
        item = {"case_id": case.case_id, "patient_id": case.patient_id, "cache_key": case.cache_key,
                "slice_count": case.slice_count}
        if is_validation is not None:
            item["split"] = "validation" if is_validation[index] else "training"
        cases.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"data": description, "data_sha256": data_sha256,
                                 "slice_cache": str(cache.folder), "cases": cases})


def pancreas_fraction(slices: SliceSet) -> float:
    """Fraction of the pixels of `slices` that are pancreas."""
    pancreas = sum(int(np.count_nonzero(slices.cases[c].masks[s])) for c, s in slices.index)
    size = slices.cases[0].masks.shape[-1]
    return pancreas / (len(slices) * size * size)


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
