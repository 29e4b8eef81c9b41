"""The public Cyst-X IPMN MRI benchmark (Pan et al., arXiv 2507.22017; code NUBagciLab/Cyst-X)
read from its folder as published, as cases for train_ipmn.py and crossvalidate_ipmn.py.

Layout used (the rest of the folder is ignored):

    IPMN_Classification/IPMN_labels_total.xlsx        one row per study: T1 name, T2 name, label
    IPMN_Classification/t1/*.nii.gz, t2/*.nii.gz      cropped 3D pancreas regions
    data splits/classification/3-class/t2.csv         published 3-class folds (optional; else t1.csv)
    data splits/classification/2-class/two_inputs.csv published 2-class folds (optional; --task 2-class)

The spreadsheet is read as their own loader reads it: the first row is a header, column 0 (A)
holds the T1 file name, column 1 (B) the T2 file name, column 6 (G) the label 0 / 1 / 2 (no,
low, high risk). The cases keep that label whatever the task; the training scripts turn it into
the class of their --task (2-class, the benchmark's high risk vs no / low risk: 2 -> 1, else 0;
`IPMNRiskLib.network.task_label`). Rows without a label are skipped, and so are rows without a T1 or without a
T2 name (the early-fusion ViT needs both); both are counted in the log and the run's record.
A named file that is not there, an unknown label or an unreadable spreadsheet stops the run
naming the row.

Centre: the first centre of CENTRES whose marker occurs in the T2 file name (else the T1's),
case-sensitive. Long and lower-case markers are tried before the short upper-case ones, so that
`NU` and `IU` only decide when nothing more specific matched ("northwestern" contains no `NU`,
but a name such as "MCF_..._NUx" would otherwise be ambiguous; `IU` is last as it is the
shortest). A name with no marker stops the run naming the row.

Patient: the T2 file name (else the T1's) without its extension and without modality tokens
(`t1`, `t2`, `t1w`, `t2w`, any case, between separators `_ - .` or at either end). A T1/T2 pair
of one study thus gives one patient, and so does every study of a patient whose files differ
only by the sequence; studies named by date or visit are separate patients, as the names do not
say otherwise.

Region: the crops are the pancreas regions already, so the region is the whole T2 crop; T1 is
sampled at T2's pixel positions in physical space, as IPMNRisk does at inference (the two crops
are not on one grid).

Published folds: each task has its own split files (PUBLISHED_SPLITS: 3-class t2.csv, else
t1.csv; 2-class two_inputs.csv, one row per T1/T2 pair). Their column layout is not documented,
so `read_published_folds` finds the file-name column (for a two-input file, its T2 column) and the
fold column by their headers (see there) and refuses with the headers it found otherwise; a case
is placed by its T2 file name, else its T1's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume
from IPMNRiskLib.grids import RegionBox

from ipmn_data import check_overlap
from trainkit.hashing import FileHashes

CLASSIFICATION_FOLDER = "IPMN_Classification"
LABELS_FILE = "IPMN_labels_total.xlsx"
T1_COLUMN, T2_COLUMN, LABEL_COLUMN = 0, 1, 6
#: (centre, markers): tried in this order (see the module's docstring for why).
CENTRES = (
    ("NYU", ("nyu",)),
    ("Northwestern", ("northwestern",)),
    ("AHN", ("AHN", "ahn")),
    ("MCA", ("mca",)),
    ("MCF", ("CAD", "MCF")),
    ("EMC", ("EMC",)),
    ("NU", ("NU",)),
    ("IU", ("IU",)),
)
#: The published split files of each task under the Cyst-X folder, tried in order.
PUBLISHED_SPLITS = {
    "3-class": ("data splits/classification/3-class/t2.csv", "data splits/classification/3-class/t1.csv"),
    "2-class": ("data splits/classification/2-class/two_inputs.csv",),
}
_MODALITY_TOKEN = re.compile(r"(?i)(^|[_\-.])t[12]w?(?=$|[_\-.])")


def centre_of(name: str) -> Optional[str]:
    """The centre a Cyst-X file name belongs to (CENTRES order, case-sensitive), or None."""
    for centre, markers in CENTRES:
        if any(marker in name for marker in markers):
            return centre
    return None


def stem_of(name: str) -> str:
    """A file name without its directory and its image extension (.nii.gz, .nii, .nrrd, .mha)."""
    base = Path(name.strip()).name
    for extension in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if base.lower().endswith(extension):
            return base[:-len(extension)]
    return base


def patient_of(name: str) -> str:
    """The patient a Cyst-X file name belongs to: its stem without modality tokens."""
    stripped = _MODALITY_TOKEN.sub(lambda match: match.group(1), stem_of(name))
    return re.sub(r"[_\-.]{2,}", "_", stripped).strip("_-.") or stem_of(name)


@dataclass(frozen=True)
class CystXCase:
    """One labelled Cyst-X study: T1 and T2 crops (whole-volume regions), label 0 / 1 / 2
    (Cyst-X's no / low / high risk), its centre and the spreadsheet row (Excel numbering)."""

    case_id: str
    patient_id: str
    label: int
    t1: Path
    t2: Path
    centre: str
    row: int

    def load(self) -> tuple[Volume, Volume, RegionBox]:
        """(T1, T2, the region covering the whole T2 crop), checked; errors name the case."""
        t1, t2 = (self._read(path, what) for path, what in ((self.t1, "T1 crop"), (self.t2, "T2 crop")))
        check_overlap(self.case_id, t1, t2)
        return t1, t2, whole_volume_region(t2)

    def identity(self, hashes: FileHashes) -> str:
        """SHA256 of the two files' contents and the region rule."""
        try:
            digests = [hashes.sha256(path) for path in (self.t1, self.t2)]
        except OSError as error:
            raise InputError(f"Case {self.case_id}: {error.filename} cannot be read ({error.strerror}).") from error
        record = json.dumps({"files": digests, "region": "whole T2 crop"})
        return hashlib.sha256(record.encode()).hexdigest()

    def _read(self, path: Path, what: str) -> Volume:
        try:
            return read_volume(path)
        except PancreasAIError as error:
            raise InputError(f"Case {self.case_id} (spreadsheet row {self.row}): the {what} could not be read. "
                             f"{error}") from error


def whole_volume_region(volume: Volume) -> RegionBox:
    """The RAS box around every voxel of `volume` (whole voxels), as a region."""
    return RegionBox.from_mask(Volume(np.ones(np.shape(volume.array), np.uint8), volume.ijk_to_ras))


@dataclass
class CystXCohort:
    """The labelled studies of a Cyst-X folder and what reading it skipped.

    skipped_unlabelled / skipped_unpaired: spreadsheet rows (Excel numbers) without a label, and
    with a label but without a T1 or a T2 file name.
    """

    folder: Path
    cases: list[CystXCase]
    skipped_unlabelled: list[int] = field(default_factory=list)
    skipped_unpaired: list[int] = field(default_factory=list)

    @property
    def centres(self) -> dict[str, int]:
        """{centre: number of cases}, in CENTRES order."""
        counts = {centre: sum(1 for c in self.cases if c.centre == centre) for centre, _ in CENTRES}
        return {centre: count for centre, count in counts.items() if count}

    def record(self) -> dict:
        """What the run's record says about the data source."""
        return {"kind": "cyst_x", "folder": self.folder.name, "labelled_cases": len(self.cases),
                "patients": len({c.patient_id for c in self.cases}), "centres": self.centres,
                "skipped_unlabelled_rows": len(self.skipped_unlabelled),
                "skipped_rows_without_t1_or_t2": len(self.skipped_unpaired)}

    def description(self) -> str:
        return (f"Cyst-X {self.folder.name}: {len(self.cases)} labelled T1/T2 studies of "
                f"{len({c.patient_id for c in self.cases})} patients from {len(self.centres)} centres "
                f"({', '.join(f'{k} {v}' for k, v in self.centres.items())}); skipped "
                f"{len(self.skipped_unlabelled)} rows without a label and {len(self.skipped_unpaired)} without "
                "a T1 or a T2 file")


def _cell(row: Sequence, column: int) -> str:
    value = row[column] if column < len(row) else None
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _label(text: str, number: int) -> int:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (0.0, 1.0, 2.0):
        raise InputError(f"{LABELS_FILE} row {number}: the label '{text}' in column G is not 0, 1 or 2 (no, low or "
                         "high risk); correct the row or clear its label to skip it.")
    return int(value)


def read_cyst_x(folder: str | Path) -> CystXCohort:
    """The labelled studies of a Cyst-X folder (layout in the module's docstring), every row
    checked."""
    folder = Path(folder)
    spreadsheet = folder / CLASSIFICATION_FOLDER / LABELS_FILE
    if not spreadsheet.is_file():
        raise InputError(f"{spreadsheet} does not exist: give --cyst-x the Cyst-X folder that holds "
                         f"{CLASSIFICATION_FOLDER}/{LABELS_FILE}.")
    try:
        from openpyxl import load_workbook
    except ImportError as error:
        raise InputError("Reading the Cyst-X spreadsheet needs openpyxl: pip install -r requirements-dev.txt.") \
            from error
    try:
        workbook = load_workbook(spreadsheet, read_only=True, data_only=True)
        rows = list(workbook.worksheets[0].iter_rows(values_only=True))
        workbook.close()
    except Exception as error:  # openpyxl raises many kinds for a damaged or foreign file
        raise InputError(f"{spreadsheet} cannot be read as an Excel workbook ({error}).") from error
    cohort = CystXCohort(folder, [])
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):  # row 1 is the header
        names = [_cell(row, column) for column in (T1_COLUMN, T2_COLUMN)]
        label_text = _cell(row, LABEL_COLUMN)
        if not label_text:
            if any(names):
                cohort.skipped_unlabelled.append(number)
            continue
        label = _label(label_text, number)
        if not all(names):
            cohort.skipped_unpaired.append(number)
            continue
        t1, t2 = (_crop_file(folder, modality, name, number) for modality, name in zip(("t1", "t2"), names))
        centre = centre_of(names[1]) or centre_of(names[0])
        if centre is None:
            known = "; ".join(f"{c}: {' or '.join(m)}" for c, m in CENTRES)
            raise InputError(f"{LABELS_FILE} row {number}: no centre in the file names {names[0]} and {names[1]} "
                             f"(looked for {known}).")
        case_id = stem_of(names[1])
        if case_id in seen:
            raise InputError(f"{LABELS_FILE} row {number}: the T2 file {names[1]} is listed again (first in row "
                             f"{seen[case_id]}).")
        seen[case_id] = number
        cohort.cases.append(CystXCase(case_id, patient_of(names[1]), label, t1, t2, centre, number))
    if not cohort.cases:
        raise InputError(f"{spreadsheet} has no row with a label and both file names.")
    return cohort


def _crop_file(folder: Path, modality: str, name: str, number: int) -> Path:
    path = folder / CLASSIFICATION_FOLDER / modality / Path(name).name
    if not path.is_file() and not name.endswith((".nii.gz", ".nii")):
        path = path.with_name(path.name + ".nii.gz")
    if not path.is_file():
        raise InputError(f"{LABELS_FILE} row {number}: the {modality.upper()} file {path} does not exist.")
    return path


# --- published folds -------------------------------------------------------------------------------

#: Header words (lower case, spaces / underscores / hyphens removed) that name the columns.
_FOLD_HEADERS = ("fold", "foldid", "foldnumber", "cvfold", "split", "kfold")
_NAME_HEADERS = ("t2", "t2name", "t2file", "t2path", "t2image", "filename", "file", "name", "image", "imagename",
                 "path", "filepath", "image_path", "scan", "case", "id")


def _header_key(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", header.strip().lower())


def published_split_file(folder: str | Path, task: str = "3-class") -> Optional[Path]:
    """The published split file of `task` (3-class or 2-class) under a Cyst-X folder, or None."""
    for relative in PUBLISHED_SPLITS[task]:
        path = Path(folder) / relative
        if path.is_file():
            return path
    return None


def read_published_folds(path: str | Path) -> dict[str, str]:
    """{file stem: fold} from a published split CSV.

    The layout is assumed, not documented: one row per scan, a header, a file-name column and a
    fold column. The fold column is the first whose header is one of fold, fold_id, fold number,
    cv_fold, split, kfold; the file-name column the first of t2 (or t2_name, t2_file, t2_path,
    t2_image: the T2 of a two-input file), filename, file, name, image, image_name, path,
    file_path, scan, case, id (case, spaces, hyphens and underscores do not matter). Names are
    compared without directory and extension. Anything else is refused, naming the headers found.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"The published split {path} cannot be read as text ({error}).") from error
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    keys = [_header_key(h) for h in header]

    def find(candidates):
        for candidate in candidates:
            if candidate in keys:
                return keys.index(candidate)
        return None

    fold_column, name_column = find(_FOLD_HEADERS), find(tuple(_header_key(h) for h in _NAME_HEADERS))
    if fold_column is None or name_column is None:
        missing = " and ".join(what for what, column in (("a file-name column", name_column),
                                                         ("a fold column", fold_column)) if column is None)
        raise InputError(f"The published split {path} has no {missing}: its columns are "
                         f"{', '.join(repr(h) for h in header) or 'none'}. Expected a header such as "
                         "'filename' / 't2' and 'fold'; rename the columns or use our own folds "
                         "(--folds-by patients).")
    folds = {}
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        name = row[name_column].strip() if name_column < len(row) else ""
        fold = row[fold_column].strip() if fold_column < len(row) else ""
        if not name or not fold:
            raise InputError(f"The published split {path}, row {number}: no file name or no fold.")
        folds[stem_of(name)] = fold
    return folds


def published_outer_tests(cases: Sequence[CystXCase], folds: dict[str, str], path: Path) -> list[np.ndarray]:
    """The outer test folds (sorted index arrays, in the order of the fold values: numbers as
    numbers) that a published split gives `cases`, found by the T2 file name (else the T1's);
    every case must be in it."""
    folds = {c.case_id: folds.get(c.case_id, folds.get(stem_of(c.t1.name))) for c in cases}
    absent = [case_id for case_id, fold in folds.items() if fold is None]
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise InputError(f"The published split {path} does not place {len(absent)} of the labelled cases ({shown}); "
                         "use the split that came with this data or use our own folds (--folds-by patients).")
    values = sorted({folds[c.case_id] for c in cases},
                    key=lambda v: (0, float(v), v) if re.fullmatch(r"-?\d+(\.\d+)?", v) else (1, 0.0, v))
    return [np.array([i for i, c in enumerate(cases) if folds[c.case_id] == value], dtype=np.int64)
            for value in values]


def centre_outer_tests(cases: Sequence[CystXCase]) -> tuple[list[str], list[np.ndarray]]:
    """Leave-one-centre-out: (centres in CENTRES order, the cases of each as a test fold)."""
    centres = [centre for centre, _ in CENTRES if any(c.centre == centre for c in cases)]
    if len(centres) < 2:
        raise InputError(f"Leave-one-centre-out needs cases of at least 2 centres; found {', '.join(centres)}.")
    return centres, [np.array([i for i, c in enumerate(cases) if c.centre == centre], dtype=np.int64)
                     for centre in centres]
