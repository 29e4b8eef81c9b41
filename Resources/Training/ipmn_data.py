"""Cases for training and evaluating the IPMN risk ViT: where they come from, the checks every
case passes, and the pre-processed crop stacks the model's inputs are cut from.

Sources: a cohort CSV (one row per scan: patient, T1, T2, region, label) or synthetic T1/T2
phantoms (PancreasAIPhantoms.mr; one patient per seed, seen once per risk class).

Each case goes through exactly what IPMNRisk runs at inference: the card's optional MRI
pre-processing (IPMNRiskLib.preprocessing), then `plan_crop` / `crop_stacks` of
IPMNRiskLib.grids (T2 in canonical axial order, the region's voxels, every slice resized to
64 x 64, T1 sampled at T2's pixel positions, each modality normalised to [0, 1] over its whole
volume or its crop stack: the protocol's `normalisation`). What is kept per case is its two
crop stacks, (K, 64, 64) float32 each: every 9-slice window (sliding window for training, the
central one for validation and test) is tiled from them on demand. Stacks are cached on disk,
so N4 and smoothing run once per case and data set.

The one statistic fitted on data, the standardisation landmarks, is fitted on a training part
only (`prepare_cases(..., fit_on=...)`): each case's own mapped landmarks are computed once
(`case_landmarks`) and averaged over the training cases, so the cross-validation refits them
for every outer fold at little cost.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.resample import overlap_fraction
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume
from IPMNRiskLib.grids import (NORMALISATIONS, SLICES_PER_SAMPLE, RegionBox, central_window, crop_stacks,
                               input_format, make_input, plan_crop, slice_window_starts, window_indices)
from IPMNRiskLib.network import CLASS_NAMES
from PancreasAIPhantoms.mr import make_mr_phantom
from IPMNRiskLib.preprocessing import DEFAULT_PERCENTILES, intensity_landmarks, preprocess_volume

from trainkit.hashing import FileHashes
from trainkit.runlog import progress_bar

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: The normalisation of stacks prepared without saying which (IPMNRisk's default for a card
#: without the entry).
DEFAULT_NORMALISATION = NORMALISATIONS[0]
#: The paper's MRI pre-processing, with the parameters IPMNRisk records in a model card; the
#: standardisation landmarks are fitted on the training cases (`fit_landmarks`).
PAPER_PREPROCESSING = {
    "n4_bias_correction": {"shrink_factor": 4, "iterations": [50, 50, 30]},
    "smoothing": {"iterations": 5, "conductance": 1.0},
    "standardisation": {"percentiles": list(DEFAULT_PERCENTILES)},
}
NO_PREPROCESSING = {"n4_bias_correction": False, "smoothing": False, "standardisation": False}
#: Only the intensity standardisation (for volumes already bias-corrected and smoothed).
STANDARDISATION_ONLY = {**NO_PREPROCESSING, "standardisation": {"percentiles": list(DEFAULT_PERCENTILES)}}

CSV_REQUIRED = ("patient", "t1", "t2", "label")
_LABEL_WORDS = {"normal": 0, "low risk ipmn": 1, "low risk": 1, "low grade": 1, "low": 1,
                "high risk ipmn": 2, "high risk": 2, "high grade": 2, "high": 2}


# --- labels and regions as written in a CSV -----------------------------------------------------

def parse_label(text: str) -> int:
    """'0' / '1' / '2' or a class name ('normal', 'low-risk IPMN', 'high-risk IPMN'; case,
    hyphens and underscores do not matter) -> 0, 1 or 2. ValueError otherwise."""
    cleaned = re.sub(r"[\s_-]+", " ", text.strip().lower())
    if cleaned in _LABEL_WORDS:
        return _LABEL_WORDS[cleaned]
    try:
        number = float(cleaned)
    except ValueError:
        number = None
    if number is not None and number in (0.0, 1.0, 2.0):
        return int(number)
    raise ValueError(f"the label '{text}' is not 0, 1, 2 or one of the class names "
                     f"({', '.join(CLASS_NAMES)})")


def parse_ras_triple(text: str, what: str) -> tuple[float, float, float]:
    """'R,A,S' (commas, semicolons or spaces) -> three floats in mm. ValueError otherwise."""
    parts = [p for p in re.split(r"[,;\s]+", text.strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError(f"{what} '{text}' is not three numbers in mm written as R,A,S")
    return values  # type: ignore[return-value]


# --- one case ------------------------------------------------------------------------------------

def check_overlap(case_id: str, t1: Volume, t2: Volume) -> None:
    """InputError naming the case when its T1 and T2 share no point in space."""
    if overlap_fraction(t1, t2) <= 0.0:
        raise InputError(f"Case {case_id}: the T1 and T2 volumes do not overlap in space; check that "
                         "both come from the same study of this patient.")


@dataclass(frozen=True)
class CohortCase:
    """One scan of the cohort CSV: T1 and T2 files, a region, a risk class.

    region: (centre RAS mm, size mm) of a box, or None when `roi_mask` (a mask file whose
    non-zero voxels' bounding box is the region) is given instead.
    """

    case_id: str
    patient_id: str
    label: int
    t1: Path
    t2: Path
    region: Optional[tuple[tuple[float, float, float], tuple[float, float, float]]]
    roi_mask: Optional[Path]
    row: int

    def load(self) -> tuple[Volume, Volume, RegionBox]:
        """(T1, T2, region), checked; errors name the case."""
        t1 = _read(self, self.t1, "T1 file")
        t2 = _read(self, self.t2, "T2 file")
        check_overlap(self.case_id, t1, t2)
        if self.roi_mask is not None:
            mask = _read(self, self.roi_mask, "region mask")
            try:
                region = RegionBox.from_mask(mask)
            except PancreasAIError as error:
                raise InputError(f"Case {self.case_id}: {error}") from error
        else:
            region = RegionBox(*self.region)
        return t1, t2, region

    def identity(self, hashes: FileHashes) -> str:
        """SHA256 of what defines the case's input: its files' contents and its region."""
        files = [self.t1, self.t2] + ([self.roi_mask] if self.roi_mask is not None else [])
        try:
            digests = [_content_sha256(hashes, path) for path in files]
        except OSError as error:
            raise InputError(f"Case {self.case_id}: {error.filename} cannot be read ({error.strerror}).") from error
        record = json.dumps({"files": digests, "region": self.region})
        return hashlib.sha256(record.encode()).hexdigest()


@dataclass(frozen=True)
class PhantomCase:
    """A synthetic T1/T2 pair of patient `seed` with an IPMN of class `label` (0 none)."""

    seed: int
    label: int
    shape: tuple[int, int, int] = (24, 160, 160)
    spacing: tuple[float, float, float] = (1.5, 1.5, 4.0)

    @property
    def case_id(self) -> str:
        return f"phantom-{self.seed:04d}-class{self.label}"

    @property
    def patient_id(self) -> str:
        return f"phantom-{self.seed:04d}"

    def load(self) -> tuple[Volume, Volume, RegionBox]:
        phantom = make_mr_phantom(self.seed, self.label, shape=tuple(self.shape), spacing=tuple(self.spacing))
        return (Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras),
                RegionBox(*phantom.pancreas_box_ras))

    def identity(self, hashes: FileHashes) -> str:
        record = json.dumps({"phantom": [self.seed, self.label, list(self.shape), list(self.spacing)]})
        return hashlib.sha256(record.encode()).hexdigest()


Case = Union[CohortCase, PhantomCase]


def _content_sha256(hashes: FileHashes, path: Path) -> str:
    """SHA256 of an image file, or of the files of a DICOM series folder (names and contents)."""
    if not path.is_dir():
        return hashes.sha256(path)
    members = sorted(p for p in path.rglob("*") if p.is_file())
    record = "\n".join(f"{p.relative_to(path)}\t{hashes.sha256(p)}" for p in members)
    return hashlib.sha256(record.encode()).hexdigest()


def _read(case: CohortCase, path: Path, what: str) -> Volume:
    try:
        return read_volume(path)
    except PancreasAIError as error:
        raise InputError(f"Case {case.case_id} (CSV row {case.row}): the {what} could not be read. {error}") from error


# --- where cases come from -----------------------------------------------------------------------

def phantom_cases(seeds: Iterable[int], shape: Sequence[int] = (24, 160, 160),
                  spacing: Sequence[float] = (1.5, 1.5, 4.0)) -> list[PhantomCase]:
    """Every seed as a patient with one scan per risk class (seed-major order)."""
    return [PhantomCase(int(seed), label, tuple(int(n) for n in shape), tuple(float(s) for s in spacing))
            for seed in seeds for label in range(len(CLASS_NAMES))]


def read_cohort_csv(path: str | Path) -> list[CohortCase]:
    """The cohort described by a CSV, every row checked; file paths are relative to the CSV.

    Columns (names case-insensitive): patient, t1, t2, label (0/1/2 or a class name), and the
    region as roi_center + roi_size ("R,A,S" in mm) or roi_mask (a mask file); optional: case
    (a name per scan; default the patient, numbered when a patient has several scans).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The cohort file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"The cohort file {path} cannot be read as UTF-8 text ({error}).") from error
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower(): name for name in (reader.fieldnames or [])}
    missing = [name for name in CSV_REQUIRED if name not in columns]
    if missing:
        raise InputError(f"The cohort file {path} lacks the column(s) {', '.join(missing)}; it needs "
                         f"{', '.join(CSV_REQUIRED)} and roi_center + roi_size or roi_mask.")
    if "roi_mask" not in columns and not {"roi_center", "roi_size"} <= set(columns):
        raise InputError(f"The cohort file {path} has no region columns: give roi_center and roi_size "
                         "(\"R,A,S\" in mm) or roi_mask (a mask file) for every scan.")
    rows = []
    for number, raw in enumerate(reader, start=2):  # row 1 is the header
        row = {key: (raw.get(original) or "").strip() for key, original in columns.items()}
        if any(row.values()):
            rows.append((number, row))
    if not rows:
        raise InputError(f"The cohort file {path} lists no scans.")
    scans_per_patient: dict[str, int] = {}
    for _, row in rows:
        scans_per_patient[row["patient"]] = scans_per_patient.get(row["patient"], 0) + 1
    cases, seen, counters = [], {}, {}
    for number, row in rows:
        case = _case_from_row(row, number, path.parent, scans_per_patient, counters)
        if case.case_id in seen:
            raise InputError(f"Row {number}: the case name {case.case_id} is used again (first in row "
                             f"{seen[case.case_id]}); give each scan its own name in a 'case' column.")
        seen[case.case_id] = number
        cases.append(case)
    return cases


def _case_from_row(row: dict, number: int, folder: Path, scans_per_patient: dict,
                   counters: dict) -> CohortCase:
    patient = row["patient"]
    if not patient:
        raise InputError(f"Row {number}: no patient given; every scan needs the patient it belongs to.")
    if row.get("case"):
        case_id = row["case"]
    elif scans_per_patient[patient] > 1:
        counters[patient] = counters.get(patient, 0) + 1
        case_id = f"{patient}-{counters[patient]}"
    else:
        case_id = patient
    where = f"Row {number} (case {case_id})"
    if not row["label"]:
        raise InputError(f"{where}: no label; give 0, 1, 2 or a class name ({', '.join(CLASS_NAMES)}).")
    try:
        label = parse_label(row["label"])
    except ValueError as error:
        raise InputError(f"{where}: {error}.") from error
    t1, t2 = (_existing_file(row[key], key.upper(), where, folder) for key in ("t1", "t2"))
    if t1.resolve() == t2.resolve():
        raise InputError(f"{where}: T1 and T2 are the same file ({t1}); give the T1-weighted and the "
                         "T2-weighted series of one study.")
    has_box = bool(row.get("roi_center") or row.get("roi_size"))
    has_mask = bool(row.get("roi_mask"))
    if has_box == has_mask:
        raise InputError(f"{where}: give the region either as roi_center and roi_size or as roi_mask "
                         f"({'both' if has_box else 'neither'} given).")
    region, roi_mask = None, None
    if has_mask:
        roi_mask = _existing_file(row["roi_mask"], "region mask", where, folder)
    else:
        try:
            center = parse_ras_triple(row.get("roi_center", ""), "roi_center")
            size = parse_ras_triple(row.get("roi_size", ""), "roi_size")
        except ValueError as error:
            raise InputError(f"{where}: {error}.") from error
        if min(size) <= 0:
            raise InputError(f"{where}: the region size must be positive in each direction (got {size}).")
        region = (center, size)
    return CohortCase(case_id, patient, label, t1, t2, region, roi_mask, number)


def _existing_file(text: str, what: str, where: str, folder: Path) -> Path:
    if not text:
        raise InputError(f"{where}: no {what} file given.")
    path = Path(text)
    path = path if path.is_absolute() else folder / path
    if not path.exists():
        raise InputError(f"{where}: the {what} file {path} does not exist.")
    return path


# --- pre-processing options ----------------------------------------------------------------------

def preprocessing_steps(choice: str) -> dict:
    """'paper', 'standardisation' (that step alone) or 'none' -> the steps' options
    (standardisation still without landmarks)."""
    if choice == "paper":
        return json.loads(json.dumps(PAPER_PREPROCESSING))
    if choice == "standardisation":
        return json.loads(json.dumps(STANDARDISATION_ONLY))
    if choice == "none":
        return dict(NO_PREPROCESSING)
    raise ValueError(f"unknown pre-processing '{choice}'")


def card_preprocessing(steps: dict, normalisation: str = DEFAULT_NORMALISATION) -> dict:
    """The model card's "preprocessing": the input format with `normalisation` (one of
    IPMNRiskLib.grids.NORMALISATIONS) plus the steps (False when off)."""
    return {**input_format(normalisation), **{key: steps.get(key) or False for key in NO_PREPROCESSING}}


def without_fitted_statistics(preprocessing: dict) -> dict:
    """A card's "preprocessing" without the standardisation landmarks (fitted on a training
    part): what two runs on different training parts of one cohort have in common."""
    standard = preprocessing.get("standardisation")
    if not isinstance(standard, dict):
        return dict(preprocessing)
    return {**preprocessing, "standardisation": {key: value for key, value in standard.items()
                                                 if not key.endswith("_landmarks")}}


def _without_standardisation(steps: dict) -> dict:
    return {**steps, "standardisation": False}


# --- the stack cache -----------------------------------------------------------------------------

def _save_npz(path: Optional[Path], **arrays: np.ndarray) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    with open(temporary, "wb") as stream:
        np.savez(stream, **arrays)
    os.replace(temporary, path)


def _load_npz(path: Optional[Path]) -> Optional[dict]:
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:  # a damaged file only costs recomputing it
        logger.warning("Ignoring the damaged cache file %s (%s).", path, error)
        return None


def _key(document) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


class StackCache:
    """Crop stacks per (case identity, pre-processing, normalisation), the volumes after N4 and
    smoothing (needed twice when the standardisation landmarks are fitted), and each case's
    mapped standardisation landmarks. folder None: nothing is kept on disk (phantoms, which are
    quicker to make again than to read); the landmarks are kept in memory in any case."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hashes = FileHashes(self.folder / "file-hashes.json" if self.folder is not None else None)
        self.landmarks: dict[str, dict] = {}

    def stacks_path(self, identity: str, steps: dict, normalisation: str = DEFAULT_NORMALISATION) -> Optional[Path]:
        if self.folder is None:
            return None
        setting = _key({"format": CACHE_FORMAT, "input": input_format(normalisation), "steps": steps})
        return self.folder / f"stacks-{setting[:16]}" / f"{identity[:32]}.npz"

    def volumes_path(self, identity: str, steps: dict) -> Optional[Path]:
        if self.folder is None:
            return None
        setting = _key({"format": CACHE_FORMAT, "steps": _without_standardisation(steps)})
        return self.folder / f"volumes-{setting[:16]}" / f"{identity[:32]}.npz"

    def landmarks_key(self, identity: str, steps: dict) -> str:
        """Which mapped landmarks: the case, the steps before standardisation, the percentiles."""
        return _key({"format": CACHE_FORMAT, "identity": identity, "steps": _without_standardisation(steps),
                     "percentiles": list(steps["standardisation"].get("percentiles", DEFAULT_PERCENTILES))})


# --- prepared cases ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedCase:
    """A case ready for the model: t1, t2 (K, 64, 64) float32 in [0, 1] crop stacks of the
    region, T1 at T2's pixel positions; sha256 of identity, label and stacks; identity: SHA256
    of the case's source (files and region, or phantom parameters)."""

    case_id: str
    patient_id: str
    label: int
    t1: np.ndarray
    t2: np.ndarray
    sha256: str
    identity: str = ""

    @property
    def slice_count(self) -> int:
        return int(self.t2.shape[0])

    def window_input(self, start: int) -> np.ndarray:
        """(2, 192, 192) float32: the 9 slices from `start` (last one repeated), T1 then T2."""
        indices = window_indices(start, self.slice_count)
        return make_input(self.t1[indices], self.t2[indices])

    def window_starts(self, jitter: int) -> list[int]:
        """Training windows: every sliding window (jitter < 0, the paper's), or those starting
        within `jitter` slices of the central one."""
        n = self.slice_count
        if jitter < 0:
            return slice_window_starts(n)
        central = int(central_window(n)[0])
        last = max(n - SLICES_PER_SAMPLE, 0)
        return sorted({min(max(central + d, 0), last) for d in range(-jitter, jitter + 1)})

    @property
    def central_start(self) -> int:
        """The window inference uses (start n // 2 - 4)."""
        return int(central_window(self.slice_count)[0])


def _in_case(case: Case, work: Callable):
    try:
        return work()
    except PancreasAIError as error:
        if str(error).startswith("Case "):
            raise
        raise type(error)(f"Case {case.case_id}: {error}") from error


def _corrected_volumes(case: Case, steps: dict, cache: StackCache, identity: str) -> tuple[Volume, Volume, RegionBox]:
    """T1, T2 after N4 and smoothing (cached when either runs), and the region."""
    t1, t2, region = _in_case(case, case.load)
    first_steps = _without_standardisation(steps)
    if not (first_steps.get("n4_bias_correction") or first_steps.get("smoothing")):
        return t1, t2, region
    path = cache.volumes_path(identity, steps)
    stored = _load_npz(path)
    if stored is None:
        # Geometry first, as at inference: a bad region fails before the slow steps.
        _in_case(case, lambda: plan_crop(t1, t2, region))
        t1 = preprocess_volume(t1, first_steps, "t1")
        t2 = preprocess_volume(t2, first_steps, "t2")
        _save_npz(path, t1=t1.array, t2=t2.array)
        return t1, t2, region
    return Volume(stored["t1"], t1.ijk_to_ras), Volume(stored["t2"], t2.ijk_to_ras), region


def mapped_landmarks(array: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                     scale: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """(P,) float64: one volume's percentile landmarks, mapped linearly so that the first and
    last land on `scale` (unchanged by any linear rescaling of the volume's intensities)."""
    marks = intensity_landmarks(array, percentiles)
    span = max(marks[-1] - marks[0], 1e-12)
    return scale[0] + (marks - marks[0]) / span * (scale[1] - scale[0])


def fit_standard_scale(arrays: Iterable[np.ndarray], percentiles: Sequence[float] = DEFAULT_PERCENTILES,
                       scale: tuple[float, float] = (0.0, 100.0)) -> list[float]:
    """Standard-scale landmarks for one modality from training volumes (for the model card):
    the mean of the volumes' `mapped_landmarks`."""
    mapped = [mapped_landmarks(array, percentiles, scale) for array in arrays]
    if not mapped:
        raise ValueError("no training volumes given")
    return np.mean(mapped, axis=0).tolist()


def case_landmarks(case: Case, steps: dict, cache: StackCache, identity: str) -> dict:
    """{"t1": (P,), "t2": (P,)} the case's own mapped landmarks after N4 and smoothing, computed
    once per case and steps (kept in `cache`, and on disk when it has a folder). Per case, so
    averaging them over any training part uses no other case."""
    key = cache.landmarks_key(identity, steps)
    if key in cache.landmarks:
        return cache.landmarks[key]
    path = cache.folder / "landmarks" / f"{key[:32]}.json" if cache.folder is not None else None
    if path is not None and path.is_file():
        try:
            cache.landmarks[key] = json.loads(path.read_text(encoding="utf-8"))
            return cache.landmarks[key]
        except (OSError, ValueError) as error:  # a damaged file only costs recomputing it
            logger.warning("Ignoring the damaged cache file %s (%s).", path, error)
    percentiles = steps["standardisation"].get("percentiles", list(DEFAULT_PERCENTILES))
    t1, t2, _ = _corrected_volumes(case, steps, cache, identity)
    marks = {modality: mapped_landmarks(np.asarray(volume.array), percentiles).tolist()
             for modality, volume in (("t1", t1), ("t2", t2))}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".part")
        temporary.write_text(json.dumps(marks), encoding="utf-8")
        os.replace(temporary, path)
    cache.landmarks[key] = marks
    return marks


def fit_landmarks(cases: Sequence[Case], steps: dict, cache: StackCache, identities: Sequence[str],
                  show_progress: bool = True) -> dict:
    """Standard-scale landmarks of T1 and T2 over `cases` (after N4 and smoothing; give the
    training cases only), as the model card records them; `steps` unchanged when
    standardisation is off."""
    standard = steps.get("standardisation")
    if not standard:
        return steps
    if not cases:
        raise ValueError("no training cases to fit the standardisation landmarks on")
    percentiles = standard.get("percentiles", list(DEFAULT_PERCENTILES))
    bar = progress_bar(list(zip(cases, identities)), description="landmarks", enabled=show_progress)
    per_case = [case_landmarks(case, steps, cache, identity) for case, identity in bar]
    landmarks = {f"{modality}_landmarks": np.mean([marks[modality] for marks in per_case], axis=0).tolist()
                 for modality in ("t1", "t2")}
    return {**steps, "standardisation": {"percentiles": list(percentiles), **landmarks}}


def prepare_case(case: Case, steps: dict, cache: StackCache, identity: str,
                 normalisation: str = DEFAULT_NORMALISATION) -> PreparedCase:
    """The case's crop stacks through the inference code path (cached); `steps` with the
    fitted landmarks when standardisation is on."""
    path = cache.stacks_path(identity, steps, normalisation)
    stored = _load_npz(path)
    if stored is None:
        t1, t2, region = _corrected_volumes(case, steps, cache, identity)
        plan = _in_case(case, lambda: plan_crop(t1, t2, region))
        if steps.get("standardisation"):
            only_standardisation = {"standardisation": steps["standardisation"]}
            t1 = preprocess_volume(t1, only_standardisation, "t1")
            t2 = preprocess_volume(t2, only_standardisation, "t2")
        t1_stack, t2_stack = _in_case(case, lambda: crop_stacks(plan, t1, t2, normalisation))
        stored = {"t1": np.ascontiguousarray(t1_stack, np.float32),
                  "t2": np.ascontiguousarray(t2_stack.array, np.float32)}
        _save_npz(path, **stored)
    digest = hashlib.sha256(f"{identity}\t{case.label}\t".encode())
    digest.update(stored["t1"].tobytes())
    digest.update(stored["t2"].tobytes())
    return PreparedCase(case.case_id, case.patient_id, int(case.label), stored["t1"], stored["t2"],
                        digest.hexdigest(), identity)


def case_identities(cases: Sequence[Case], cache: StackCache) -> list[str]:
    """Each case's identity (SHA256 of its files and region, or of its phantom parameters)."""
    return [_in_case(case, lambda case=case: case.identity(cache.hashes)) for case in cases]


def prepare_cases(cases: Sequence[Case], steps: dict, cache: StackCache, fit_on: Optional[Sequence[int]] = None,
                  normalisation: str = DEFAULT_NORMALISATION, show_progress: bool = True,
                  save_hashes: bool = True) -> tuple[list[PreparedCase], dict]:
    """All cases prepared with the standardisation landmarks fitted on the cases at positions
    `fit_on` (the training part: never a case that validates or tests) when standardisation is
    on; returns the prepared cases and the steps as the model card records them."""
    identities = case_identities(cases, cache)
    if steps.get("standardisation") and fit_on is None:
        raise ValueError("say which cases are the training part (fit_on): the standardisation landmarks are "
                         "fitted on them alone")
    fit_on = [] if fit_on is None else [int(i) for i in fit_on]
    steps = fit_landmarks([cases[i] for i in fit_on], steps, cache, [identities[i] for i in fit_on], show_progress)
    prepared = [prepare_case(case, steps, cache, identity, normalisation) for case, identity in
                zip(progress_bar(cases, description="cases", enabled=show_progress), identities)]
    if save_hashes:
        cache.hashes.save()
    return prepared, steps


def data_sha256(cases: Sequence[PreparedCase]) -> str:
    """SHA256 of the data set: every case's source (files and region, or phantom parameters)
    and label, in any order. The same whatever the pre-processing and whichever training part
    its landmarks were fitted on, so runs on one cohort can be matched."""
    digest = hashlib.sha256()
    for line in sorted(f"{case.identity}\t{case.label}" for case in cases):
        digest.update(f"{line}\n".encode())
    return digest.hexdigest()


def inputs_sha256(cases: Sequence[PreparedCase]) -> str:
    """SHA256 of what the network sees: every case's source, label and crop stacks, in order."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(f"{case.sha256}\n".encode())
    return digest.hexdigest()


# --- samples: which window of which case -----------------------------------------------------------

@dataclass
class WindowSamples:
    """Samples as (case, window start) pairs; inputs are tiled from the stacks on demand."""

    cases: list[PreparedCase]
    index: np.ndarray  # (N, 2) int64: case position, first slice

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 risk class of each sample."""
        return np.array([self.cases[c].label for c, _ in self.index], dtype=np.int64)

    def input(self, position: int) -> np.ndarray:
        case, start = self.index[position]
        return self.cases[case].window_input(int(start))

    def inputs(self, positions: Iterable[int]) -> np.ndarray:
        """(B, 2, 192, 192) float32."""
        return np.stack([self.input(int(p)) for p in positions])


def training_samples(cases: Sequence[PreparedCase], jitter: int) -> WindowSamples:
    """Every training window of every case, case by case in order."""
    pairs = [(c, s) for c, case in enumerate(cases) for s in case.window_starts(jitter)]
    return WindowSamples(list(cases), np.asarray(pairs, dtype=np.int64).reshape(-1, 2))


def central_samples(cases: Sequence[PreparedCase]) -> WindowSamples:
    """One sample per case: the central window, what IPMNRisk classifies."""
    pairs = [(c, case.central_start) for c, case in enumerate(cases)]
    return WindowSamples(list(cases), np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
