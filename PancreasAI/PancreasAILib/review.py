"""Radiologist review of a results folder: the worklist of its cases, and the verdicts, one row
per reviewer and case in `review.csv` beside the results.

A results folder is what `pancreas-seg segment` (`<case>_pancreas.json` + masks) or `ipmn-risk`
(`<case>_ipmn_result.json` + heat map, grid, scene; `results.csv` for a batch) wrote; the demo
writes both kinds into one folder. Nothing here needs Qt, torch or the MRML libraries: the Review
sections of both Slicer modules and the web app (`pancreasai review`) share it, and
`review_scene` puts a case into any MRML scene.

`review.csv` is rewritten whole under a lock file and replaced atomically, so a crash or a
second reviewer saving at the same moment never costs a verdict; every verdict ever recorded is
also appended to `review_history.csv`, so replacing one's own verdict loses nothing either.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import PancreasAIError

TASKS = ("segmentation", "ipmn")
VERDICTS = {"ipmn": ("agree", "disagree", "uncertain"), "segmentation": ("accept", "edited", "reject")}
#: The class names of each IPMN task, as `IPMNRiskLib.network.TASKS` has them (this library does
#: not import the module's): a result records its own, and its reviewer chooses among those.
IPMN_TASK_CLASSES = {"3-class": ("normal", "low-risk IPMN", "high-risk IPMN"),
                     "2-class": ("no or low-risk IPMN", "high-risk IPMN")}
IPMN_CLASSES = IPMN_TASK_CLASSES["3-class"]
REVIEW_COLUMNS = ["reviewer", "case", "task", "time", "model", "model_sha256", "model_class", "verdict",
                  "reviewer_class", "edited_file", "comment"]
REVIEW_FILE = "review.csv"
HISTORY_FILE = "review_history.csv"
LOCK_FILE = ".review.csv.lock"
# What each kind of result is called in the folder (the command lines' own names).
RESULT_SUFFIXES = {"segmentation": "_pancreas.json", "ipmn": "_ipmn_result.json"}
REVIEWED_SUFFIX = "_pancreas_reviewed"
# The inputs a result records (file kind: field of the result JSON).
INPUT_FIELDS = {"ct": "input", "t1": "t1", "t2": "t2"}
# Without these a case cannot be shown; the others are listed as missing but do not stop it.
ESSENTIAL_FILES = {"segmentation": ("ct", "labelmap"), "ipmn": ("t2", "heat_map")}
FILE_LABELS = {"ct": "the CT", "labelmap": "the pancreas label map", "segmentation": "the .seg.nrrd",
               "t1": "the T1 image", "t2": "the T2 image", "heat_map": "the heat map",
               "grid_png": "the grid picture", "scene": "the Slicer scene"}
# A lock older than this was left by a process that died; it is taken over.
STALE_LOCK_SECONDS = 60.0
LOCK_WAIT_SECONDS = 10.0


class ReviewError(PancreasAIError):
    """A review request that cannot be honoured: unknown case, bad verdict, unreadable review.csv."""


@dataclass(frozen=True)
class ReviewCase:
    """One case of a results folder, as the worklist shows it."""

    name: str
    task: str  # 'segmentation' or 'ipmn'
    result_file: Optional[Path]
    record: dict = field(default_factory=dict)  # the result JSON
    files: dict = field(default_factory=dict)  # what exists: 'ct', 'labelmap', 't2', 'heat_map', ...
    missing: tuple = ()  # sentences: what should be there and is not
    problem: Optional[str] = None  # why the case cannot be shown at all

    @property
    def model(self) -> str:
        return str(self.record.get("model", ""))

    @property
    def model_sha256(self) -> str:
        return str(self.record.get("model_sha256", ""))

    @property
    def class_name(self) -> str:
        return str(self.record.get("class_name", "")) if self.task == "ipmn" else ""

    @property
    def class_names(self) -> tuple:
        """The classes of the result's task (results without the list: the 3-class task's);
        empty for segmentations."""
        if self.task != "ipmn":
            return ()
        return tuple(self.record.get("class_names") or IPMN_CLASSES)

    @property
    def probabilities(self) -> list:
        return list(self.record.get("probabilities", []))

    @property
    def spread(self) -> list:
        return list(self.record.get("spread", []))

    @property
    def volume_ml(self) -> Optional[float]:
        return self.record.get("volume_ml")

    @property
    def warnings(self) -> list:
        return [str(w) for w in self.record.get("warnings", [])]

    @property
    def reviewable(self) -> bool:
        return self.problem is None

    @property
    def summary(self) -> str:
        """One line for a table: the result, or why there is none."""
        if self.problem is not None:
            return self.problem
        if self.task == "ipmn":
            parts = [f"{n} {p:.2f}" + (f"+-{s:.2f}" if s is not None else "")
                     for n, p, s in zip(self.class_names, self.probabilities,
                                        self.spread or [None] * len(self.class_names))]
            return f"{self.class_name} ({', '.join(parts)})"
        volume = self.volume_ml
        return f"pancreas {volume:.1f} ml" if volume is not None else "pancreas (no volume recorded)"


@dataclass(frozen=True)
class Worklist:
    """The cases of one results folder, in name order, and the files that could not be read."""

    folder: Path
    cases: tuple
    problems: tuple = ()

    @property
    def names(self) -> list:
        return [case.name for case in self.cases]

    def case(self, name: str, task: Optional[str] = None) -> ReviewCase:
        """The case called `name` (and of `task`, when given); anything else is refused."""
        found = [c for c in self.cases if c.name == name and (task is None or c.task == task)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise ReviewError(f"'{name}' is not a case of {self.folder}.")
        raise ReviewError(f"{self.folder} holds both a segmentation and an IPMN result called '{name}'; "
                          "say which (task='segmentation' or 'ipmn').")


@dataclass(frozen=True)
class Verdict:
    """One reviewer's conclusion on one case: a row of review.csv."""

    reviewer: str
    case: str
    task: str
    verdict: str
    reviewer_class: str = ""
    comment: str = ""
    edited_file: str = ""
    model: str = ""
    model_sha256: str = ""
    model_class: str = ""
    time: str = ""

    def row(self) -> dict:
        return {column: getattr(self, column) for column in REVIEW_COLUMNS}


# --- the worklist -----------------------------------------------------------------------------

def open_worklist(folder: Union[str, Path]) -> Worklist:
    """Every case of a results folder. A result file that cannot be read, or a case whose images
    are gone, is listed as such (never an exception); only a folder that is not there raises."""
    from .output_files import user_path

    folder = user_path(folder)
    if not folder.is_dir():
        raise ReviewError(f"{folder} is not a folder of results: give the folder that "
                          "`pancreas-seg segment` or `ipmn-risk batch` wrote (--output).")
    cases, problems = [], []
    for task, suffix in RESULT_SUFFIXES.items():
        for path in sorted(folder.glob(f"*{suffix}")):
            cases.append(_read_case(folder, task, path, suffix))
    cases.extend(_failed_batch_cases(folder, {c.name for c in cases}, problems))
    if not cases:
        problems.append(f"{folder} holds no results (no *_pancreas.json or *_ipmn_result.json).")
    cases.sort(key=lambda c: (c.name, c.task))
    return Worklist(folder, tuple(cases), tuple(problems))


def _read_case(folder: Path, task: str, path: Path, suffix: str) -> ReviewCase:
    name = path.name[:-len(suffix)]
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("it holds no JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return ReviewCase(name, task, path, problem=f"{path.name} could not be read ({_short(error)}).")
    files, missing = _case_files(folder, task, name, record)
    essential = [FILE_LABELS[key] for key in ESSENTIAL_FILES[task] if key not in files]
    problem = f"cannot be shown: {' and '.join(essential)} {'is' if len(essential) == 1 else 'are'} missing" \
        if essential else None
    if task == "ipmn" and problem is None:
        names = tuple(record.get("class_names") or IPMN_CLASSES)
        if names not in IPMN_TASK_CLASSES.values():
            problem = f"{path.name} lists classes of no known IPMN task ({', '.join(map(str, names))})"
        elif record.get("class_name") not in names:
            problem = f"{path.name} names no known class ({record.get('class_name')!r})"
    return ReviewCase(name, task, path, record, files, tuple(missing), problem)


def _case_files(folder: Path, task: str, name: str, record: dict) -> tuple[dict, list]:
    """The case's files that exist, and a sentence for each expected file that does not."""
    if task == "segmentation":
        expected = {"ct": _recorded(folder, record.get(INPUT_FIELDS["ct"])) + _named_volumes(folder, name),
                    "labelmap": [folder / f"{name}_pancreas.nii.gz"],
                    "segmentation": [folder / f"{name}_pancreas.seg.nrrd"]}
        optional = {"picture": folder / f"{name}_pancreas.png", "scene": folder / f"{name}_scene.mrb",
                    "dicom_seg": folder / f"{name}_pancreas.dcm"}
    else:
        expected = {"t1": _recorded(folder, record.get("t1")) + _named_volumes(folder, f"{name}_t1"),
                    "t2": _recorded(folder, record.get("t2")) + _named_volumes(folder, f"{name}_t2"),
                    "heat_map": [folder / f"{name}_ipmn_heatmap.nrrd", *_recorded(folder, record.get("heat_map"))],
                    "grid_png": [folder / f"{name}_ipmn_grid.png", *_recorded(folder, record.get("grid_png"))]}
        optional = {"scene": folder / f"{name}_ipmn_scene.mrb"}
    files, missing = {}, []
    for key, candidates in expected.items():
        found = next((p for p in candidates if p.exists()), None)
        if found is not None:
            files[key] = found
        else:
            missing.append(f"{FILE_LABELS[key]} is missing{_where(record, key)}")
    files.update({key: path for key, path in optional.items() if path.exists()})
    return files, missing


def _where(record: dict, key: str) -> str:
    """Where the result says an input file was (the outputs have fixed names in the folder)."""
    if key not in INPUT_FIELDS:
        return ""
    recorded = record.get(INPUT_FIELDS[key])
    return f" ({recorded})" if recorded else " (the result does not say where it is)"


def _recorded(folder: Path, value) -> list:
    """Where a result says an input is, then the same name in the results folder (a folder that
    was moved with its inputs, like the demo's)."""
    if not value:
        return []
    path = Path(os.path.expanduser(str(value)))
    path = path if path.is_absolute() else folder / path
    return [path, folder / path.name]


def _named_volumes(folder: Path, stem: str) -> list:
    """`<stem>.nii.gz`, `<stem>.nrrd`, ... in the folder: where results written before inputs
    were recorded (and the demo's) keep them."""
    from .volume_io import VOLUME_SUFFIXES

    return [folder / f"{stem}{suffix}" for suffix in sorted(VOLUME_SUFFIXES)]


def _failed_batch_cases(folder: Path, known: set, problems: list) -> Iterator[ReviewCase]:
    """Cases an `ipmn-risk batch` run lists as failed in results.csv (they have no result file)."""
    table = folder / "results.csv"
    if not table.is_file():
        return
    try:
        with open(table, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"results.csv could not be read ({_short(error)}).")
        return
    for row in rows:
        name = (row.get("case") or "").strip()
        if name and name not in known and (row.get("status") or "").strip() == "failed":
            known.add(name)
            yield ReviewCase(name, "ipmn", None,
                             problem=f"the assessment failed: {(row.get('message') or 'no reason recorded').strip()}")


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- verdicts ---------------------------------------------------------------------------------

def check_verdict(worklist: Worklist, verdict: Verdict) -> Verdict:
    """The verdict as it will be stored (model fields from the result, not from the caller), or
    ReviewError saying what is wrong with it."""
    reviewer = " ".join(str(verdict.reviewer).split())
    if not reviewer:
        raise ReviewError("Give the reviewer's name: each row of review.csv says who concluded it.")
    if len(reviewer) > 100:
        raise ReviewError("The reviewer's name is longer than 100 characters.")
    if verdict.task not in TASKS:
        raise ReviewError(f"Unknown task {verdict.task!r}: one of {', '.join(TASKS)}.")
    case = worklist.case(verdict.case, verdict.task)
    if not case.reviewable:
        raise ReviewError(f"'{case.name}' {case.problem}; there is nothing to give a verdict on.")
    allowed = VERDICTS[case.task]
    if verdict.verdict not in allowed:
        raise ReviewError(f"A {case.task} verdict is one of {', '.join(allowed)} (got {verdict.verdict!r}).")
    reviewer_class, edited_file = verdict.reviewer_class.strip(), verdict.edited_file.strip()
    if case.task == "ipmn":
        if verdict.verdict == "agree":
            reviewer_class = reviewer_class or case.class_name
        if reviewer_class and reviewer_class not in case.class_names:
            raise ReviewError(f"The reviewer's class is one of {', '.join(case.class_names)} (got {reviewer_class!r}).")
        if verdict.verdict == "agree" and reviewer_class != case.class_name:
            raise ReviewError(f"'agree' means the reviewer's class is the model's ({case.class_name}); "
                              f"choose 'disagree' for {reviewer_class}.")
        if verdict.verdict == "disagree" and (not reviewer_class or reviewer_class == case.class_name):
            raise ReviewError(f"'disagree' needs the reviewer's own class, other than the model's "
                              f"({case.class_name}).")
        if edited_file:
            raise ReviewError("An IPMN verdict has no edited file.")
    else:
        if reviewer_class:
            raise ReviewError("A segmentation verdict has no class.")
        if verdict.verdict == "edited":
            edited_file = edited_file or reviewed_segmentation_name(worklist, case.name, reviewer)
            if Path(edited_file).name != edited_file or not (worklist.folder / edited_file).is_file():
                raise ReviewError(f"'edited' needs the corrected segmentation saved in {worklist.folder} "
                                  f"first ({edited_file} is not there).")
        elif edited_file:
            raise ReviewError(f"Only an 'edited' verdict names an edited file (this one is '{verdict.verdict}').")
    return replace(verdict, reviewer=reviewer, reviewer_class=reviewer_class,
                   edited_file=edited_file, comment=str(verdict.comment).strip(), model=case.model,
                   model_sha256=case.model_sha256, model_class=case.class_name,
                   time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def record_verdict(worklist: Union[Worklist, str, Path], verdict: Verdict) -> Verdict:
    """Store `verdict` in review.csv (replacing only this reviewer's row for this case) and
    append it to review_history.csv; returns what was stored."""
    worklist = worklist if isinstance(worklist, Worklist) else open_worklist(worklist)
    stored = check_verdict(worklist, verdict)
    path = worklist.folder / REVIEW_FILE
    with _locked(worklist.folder):
        rows = [row for row in _read_rows(path)
                if (row["reviewer"], row["case"], row["task"]) != (stored.reviewer, stored.case, stored.task)]
        rows.append(stored.row())
        rows.sort(key=lambda row: (row["case"], row["task"], row["reviewer"]))
        _write_rows_atomically(path, rows)
        _append_history(worklist.folder / HISTORY_FILE, stored)
    return stored


def read_verdicts(folder: Union[str, Path]) -> list:
    """The verdicts in `folder`'s review.csv (none when there is no file)."""
    from .output_files import user_path

    return [Verdict(**row) for row in _read_rows(user_path(folder) / REVIEW_FILE)]


def verdicts_by_case(folder: Union[str, Path], reviewer: str) -> dict:
    """This reviewer's verdicts, keyed by (case, task)."""
    reviewer = " ".join(str(reviewer).split())
    return {(v.case, v.task): v for v in read_verdicts(folder) if v.reviewer == reviewer}


def reviewed_segmentation_name(worklist: Worklist, case: str, reviewer: str) -> str:
    """Where this reviewer's corrected segmentation goes: `<case>_pancreas_reviewed.seg.nrrd`,
    unless another reviewer's correction is already recorded there, then one named for this
    reviewer. The model's own file is never the answer."""
    plain = f"{case}{REVIEWED_SUFFIX}.seg.nrrd"
    owners = {v.reviewer for v in read_verdicts(worklist.folder) if v.edited_file == plain}
    if not owners or owners == {reviewer}:
        return plain
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", reviewer).strip("._") or "reviewer"
    return f"{case}{REVIEWED_SUFFIX}_{safe}.seg.nrrd"


def _read_rows(path: Path) -> list:
    if not path.exists():
        return []
    try:
        with open(path, encoding="utf-8-sig", newline="") as stream:  # as csv needs: a comment's CR LF kept
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ReviewError(f"{path} could not be read ({_short(error)}); nothing was changed.") from error
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        return []
    if list(reader.fieldnames) != REVIEW_COLUMNS:
        raise ReviewError(f"{path} does not have review.csv's columns ({', '.join(REVIEW_COLUMNS)}); "
                          "move it aside to start a new one. Nothing was changed.")
    return [{column: row.get(column) or "" for column in REVIEW_COLUMNS} for row in reader]


def _csv_text(rows: list, header: bool = True) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=REVIEW_COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def _write_rows_atomically(path: Path, rows: list) -> None:
    """Write beside `path`, flush to disk, then rename over it: readers see the old or the new
    file, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            stream.write(_csv_text(rows))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ReviewError(f"The verdict could not be saved in {path} ({_short(error)}); the earlier "
                          "verdicts are unchanged.") from error


def _append_history(path: Path, verdict: Verdict) -> None:
    new = not path.exists()
    try:
        with open(path, "a", encoding="utf-8", newline="") as stream:
            stream.write(_csv_text([verdict.row()], header=new))
    except OSError as error:
        raise ReviewError(f"The verdict was saved, but not added to {path} ({_short(error)}).") from error


class _locked:
    """A lock file beside review.csv, so two reviewers' saves never interleave (any OS: the file
    is created exclusively; one left by a crashed process is taken over after a minute)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_FILE

    def __enter__(self):
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(descriptor, str(os.getpid()).encode())
                os.close(descriptor)
                return self
            except FileExistsError:
                if self._stale():  # its process died: take it over (the next try creates it anew)
                    self.path.unlink(missing_ok=True)
                elif time.monotonic() > deadline:
                    raise ReviewError(f"review.csv is being saved by another reviewer ({self.path} exists); "
                                      "try again. If no one is saving, delete that file.") from None
                else:
                    time.sleep(0.05)
            except OSError as error:
                raise ReviewError(f"Cannot save verdicts in {self.path.parent} ({_short(error)}): "
                                  "the results folder must be writable.") from error

    def _stale(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime > STALE_LOCK_SECONDS
        except FileNotFoundError:
            return True

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False
