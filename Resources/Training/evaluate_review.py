"""Agreement of the IPMN risk model with radiologists, and of radiologists with one another,
from the review.csv files the review tool writes (issue 12), compared the way the Cyst-X
benchmark (Pan et al. 2025) compares models with radiologists.

  python Resources/Training/evaluate_review.py results/ more_results/review.csv --output report/

Arguments are review.csv files or the results folders that hold one; several are read as one
list. For the model against each reviewer, against all reviewers pooled, and for every pair of
reviewers on the cases both reviewed: the 3 x 3 confusion matrix, accuracy (= agreement),
Cohen's kappa and linearly weighted kappa (the classes are ordered: normal < low-risk IPMN <
high-risk IPMN), each with a 95 % percentile bootstrap interval over cases. Results of a 2-class
model (no or low-risk IPMN < high-risk IPMN) give 2 x 2 matrices; one review holds the verdicts
of one task (the classes its rows name say which). For segmentation:
each reviewer's accept / edited / reject counts and shares.

Writes to --output review_agreement.md (also printed) and review_agreement.png (the confusion
matrices). An IPMN verdict "uncertain" without the reviewer's own class is counted and left
out; when one reviewer recorded the same case and task more than once (several files), the
latest time wins. Both are said in the report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from PancreasAILib.errors import OutputError, PancreasAIError
from PancreasAILib.review import (IPMN_CLASSES, IPMN_TASK_CLASSES, REVIEW_FILE, TASKS, VERDICTS, ReviewError,
                                  read_verdicts)

REPORT_FILE = "review_agreement.md"
FIGURE_FILE = "review_agreement.png"
MODEL = "model"
CONFIDENCE = 0.95


# --- reading review.csv -------------------------------------------------------------------------

@dataclass(frozen=True)
class ReviewRow:
    """One recorded verdict, checked; `source` is the review.csv it came from."""

    reviewer: str
    case: str
    task: str
    time: datetime
    verdict: str
    model: str
    model_sha256: str
    model_class: str
    reviewer_class: str
    source: Path

    @property
    def where(self) -> str:
        return f"{self.source} ({self.reviewer}, case {self.case}, {self.task})"


def review_files(arguments: Sequence[str]) -> list[Path]:
    """The review.csv of each argument: the file itself, or the one in a results folder."""
    files = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            path = path / REVIEW_FILE
            if not path.is_file():
                raise ReviewError(f"{argument} has no {REVIEW_FILE}: nobody has recorded a verdict in that results "
                                  "folder yet, or it is not the folder the review tool wrote to.")
        elif not path.is_file():
            raise ReviewError(f"{argument} does not exist: give a {REVIEW_FILE} or the results folder that holds one.")
        elif path.name != REVIEW_FILE:
            raise ReviewError(f"{argument} is not a {REVIEW_FILE}: give the {REVIEW_FILE} the review tool wrote, "
                              "or the results folder that holds it.")
        files.append(path)
    return files


def read_review_file(path: Path) -> list[ReviewRow]:
    """The verdicts of one review.csv (PancreasAILib.review reads it), each checked against the
    contract; the first problem raises ReviewError naming the file, reviewer and case."""
    return [_checked(verdict, path) for verdict in read_verdicts(path.parent)]


def _checked(verdict, source: Path) -> ReviewRow:
    row = ReviewRow(verdict.reviewer.strip(), verdict.case.strip(), verdict.task.strip(), datetime.min,
                    verdict.verdict.strip(), verdict.model, verdict.model_sha256, verdict.model_class.strip(),
                    verdict.reviewer_class.strip(), source)
    if not row.reviewer or not row.case:
        raise ReviewError(f"{source}: a row without reviewer or case; every verdict says who concluded it on what.")
    if row.task not in TASKS:
        raise ReviewError(f"{row.where}: unknown task {row.task!r} (expected {' or '.join(TASKS)}).")
    if row.verdict not in VERDICTS[row.task]:
        raise ReviewError(f"{row.where}: unknown {row.task} verdict {row.verdict!r} "
                          f"(expected {', '.join(VERDICTS[row.task])}).")
    if row.task == "ipmn":
        _check_ipmn_classes(row)
    return replace(row, time=_utc_time(verdict.time, row))


def _check_ipmn_classes(row: ReviewRow) -> None:
    known = tuple(dict.fromkeys(name for names in IPMN_TASK_CLASSES.values() for name in names))
    names = ", ".join(known)
    if row.model_class not in known:
        raise ReviewError(f"{row.where}: unknown model class {row.model_class!r} (expected one of {names}).")
    if row.reviewer_class and row.reviewer_class not in known:
        raise ReviewError(f"{row.where}: unknown reviewer class {row.reviewer_class!r} (expected one of {names}).")
    same = row.reviewer_class == row.model_class
    if row.verdict in ("agree", "disagree") and not row.reviewer_class:
        raise ReviewError(f"{row.where}: the verdict {row.verdict!r} has no reviewer class; "
                          "record the reviewer's own class.")
    if (row.verdict == "agree" and not same) or (row.verdict == "disagree" and same):
        raise ReviewError(f"{row.where}: the verdict {row.verdict!r} contradicts the classes (model "
                          f"{row.model_class}, reviewer {row.reviewer_class}); record the verdict again.")


def _utc_time(text: str, row: ReviewRow) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReviewError(f"{row.where}: the time {text!r} is not ISO 8601 (e.g. 2026-11-30T12:01:02Z).") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def latest_verdicts(rows: Sequence[ReviewRow]) -> tuple[list[ReviewRow], list[str]]:
    """One row per (reviewer, case, task): the latest time wins (at equal times, the one read
    last). Returns the rows kept and one sentence per row replaced."""
    kept: dict[tuple, ReviewRow] = {}
    replaced = []
    for row in rows:
        key = (row.reviewer, row.case, row.task)
        earlier = kept.get(key)
        if earlier is None:
            kept[key] = row
            continue
        newer, older = (row, earlier) if row.time >= earlier.time else (earlier, row)
        kept[key] = newer
        replaced.append(f"{row.reviewer}, case {row.case}, {row.task}: recorded twice ({older.source}, "
                        f"{older.time:%Y-%m-%dT%H:%M:%SZ}; {newer.source}, {newer.time:%Y-%m-%dT%H:%M:%SZ}); "
                        "the later one is used.")
    return list(kept.values()), replaced


# --- agreement figures --------------------------------------------------------------------------

def disagreement_weights(n_classes: int, weighting: str) -> np.ndarray:
    """(K, K) cost of each pair of classes: 0 on the diagonal; 1 off it (unweighted) or the
    distance between the ordered classes (linear)."""
    rows, columns = np.indices((n_classes, n_classes))
    if weighting == "unweighted":
        return (rows != columns).astype(float)
    if weighting == "linear":
        return np.abs(rows - columns).astype(float)
    raise ValueError(f"unknown weighting {weighting!r}")


def cohen_kappa(confusion: np.ndarray, weighting: str = "unweighted") -> np.ndarray:
    """Cohen's kappa of (..., K, K) confusion matrices: 1 - observed / chance-expected
    (weighted) disagreement. NaN where chance disagreement is 0 (both raters gave every case
    one and the same class), where kappa is undefined."""
    confusion = np.asarray(confusion, float)
    total = confusion.sum(axis=(-2, -1))
    expected = confusion.sum(axis=-1)[..., :, None] * confusion.sum(axis=-2)[..., None, :]
    weights = disagreement_weights(confusion.shape[-1], weighting)
    observed_disagreement = (weights * confusion).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        chance_disagreement = (weights * expected).sum(axis=(-2, -1)) / total
        return np.where(chance_disagreement > 0, 1 - observed_disagreement / chance_disagreement, np.nan)


def accuracy(confusion: np.ndarray) -> np.ndarray:
    """Share of cases on the diagonal of (..., K, K) confusion matrices (= agreement)."""
    confusion = np.asarray(confusion, float)
    return np.trace(confusion, axis1=-2, axis2=-1) / confusion.sum(axis=(-2, -1))


#: Figure name -> function of (..., K, K) confusion matrices, in the report's column order.
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "accuracy": accuracy,
    "kappa": lambda confusion: cohen_kappa(confusion, "unweighted"),
    "linear kappa": lambda confusion: cohen_kappa(confusion, "linear"),
}


def bootstrap_confusions(per_case: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(B, K, K) confusion matrices of `resamples` bootstrap samples of the cases: each draws
    as many cases as there are, with replacement, and keeps all of a case's ratings together.
    per_case: (C, K, K), one matrix per case (one count, or one per reviewer when pooled)."""
    n_cases, n_classes = per_case.shape[0], per_case.shape[-1]
    picks = np.random.default_rng(seed).integers(0, n_cases, size=(resamples, n_cases))
    times_drawn = np.bincount((picks + n_cases * np.arange(resamples)[:, None]).ravel(),
                              minlength=resamples * n_cases).reshape(resamples, n_cases)
    return (times_drawn @ per_case.reshape(n_cases, -1)).reshape(resamples, n_classes, n_classes)


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> Optional[tuple[float, float]]:
    """(low, high) percentiles of the defined (finite) bootstrap values; None when none is."""
    defined = values[np.isfinite(values)]
    if defined.size == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A figure and its bootstrap interval; value None with `reason` when undefined."""

    value: Optional[float]
    interval: Optional[tuple[float, float]] = None
    reason: str = ""
    undefined_resamples: int = 0


@dataclass(frozen=True)
class Agreement:
    """Two raters on the cases both rated: rows of `confusion` are `row_rater`'s classes.
    Pooled over reviewers, a case counts once per reviewer in `confusion` (its ratings)."""

    row_rater: str
    column_rater: str
    cases: int
    confusion: np.ndarray
    estimates: dict[str, Estimate]
    classes: tuple = IPMN_CLASSES  # the rows' and columns' class names, in order

    @property
    def ratings(self) -> int:
        return int(self.confusion.sum())

    @property
    def count_text(self) -> str:
        return str(self.cases) if self.ratings == self.cases else f"{self.cases} ({self.ratings} ratings)"

    @property
    def title(self) -> str:
        return f"{self.row_rater} vs {self.column_rater}"


def agreement(row_rater: str, column_rater: str, per_case: np.ndarray, resamples: int, seed: int,
              classes: Sequence[str] = IPMN_CLASSES) -> Agreement:
    """Accuracy and both kappas of (C, K, K) per-case confusion matrices of the K `classes`, with
    bootstrap intervals over the C cases (the same resamples for every figure)."""
    confusion = per_case.sum(axis=0)
    resampled = bootstrap_confusions(per_case, resamples, seed)
    estimates = {}
    for name, statistic in STATISTICS.items():
        value = float(statistic(confusion))
        if not np.isfinite(value):
            estimates[name] = Estimate(None, reason=_undefined_reason(confusion, classes))
            continue
        values = statistic(resampled)
        estimates[name] = Estimate(value, percentile_interval(values),
                                   undefined_resamples=int(np.count_nonzero(~np.isfinite(values))))
    return Agreement(row_rater, column_rater, len(per_case), confusion, estimates, tuple(classes))


def _undefined_reason(confusion: np.ndarray, classes: Sequence[str] = IPMN_CLASSES) -> str:
    """Why kappa is undefined: chance disagreement is 0 only when both gave one class throughout."""
    only = classes[int(np.argmax(confusion.sum(axis=0)))]
    return f"every case {only} by both"


def case_confusions(pairs: Sequence[tuple[str, str, str]], classes: Sequence[str] = IPMN_CLASSES) -> np.ndarray:
    """(C, K, K): one confusion matrix per case of (case, row class, column class) ratings over
    the K `classes`, in the order cases first appear."""
    classes = list(classes)
    cases = list(dict.fromkeys(case for case, _, _ in pairs))
    index = {case: i for i, case in enumerate(cases)}
    matrices = np.zeros((len(cases), len(classes), len(classes)), int)
    for case, row_class, column_class in pairs:
        matrices[index[case], classes.index(row_class), classes.index(column_class)] += 1
    return matrices


def review_classes(rows: Sequence[ReviewRow]) -> tuple[str, ...]:
    """The classes of the task the IPMN verdicts are about (3-class whenever its classes cover
    them all, as before there were two tasks: review.csv does not record the task, so verdicts
    that name high-risk IPMN alone count as 3-class, with an empty row and column more);
    ReviewError when they mix the two tasks."""
    used = {name for row in rows for name in (row.model_class, row.reviewer_class) if name}
    for names in IPMN_TASK_CLASSES.values():
        if used <= set(names):
            return tuple(names)
    raise ReviewError("The IPMN verdicts mix the classes of the 3-class and the 2-class task ("
                      + ", ".join(sorted(used)) + "): evaluate the review of each model on its own.")


# --- the whole review -------------------------------------------------------------------------

@dataclass
class ReviewAgreement:
    """Everything the report says."""

    sources: list[tuple[Path, int]]
    ipmn_cases: int
    segmentation_cases: int
    reviewers: list[str]
    models: list[str]
    with_model: list[Agreement]
    between_reviewers: list[Agreement]
    segmentation: dict[str, dict[str, int]]
    left_out: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    classes: tuple = IPMN_CLASSES  # the IPMN task's classes, in their order of risk


def review_agreement(files: Sequence[Path], resamples: int, seed: int) -> ReviewAgreement:
    """Read the review files and compute every figure of the report."""
    sources, rows = [], []
    for path in files:
        file_rows = read_review_file(path)
        sources.append((path, len(file_rows)))
        rows += file_rows
    rows, replaced = latest_verdicts(rows)
    ipmn = [row for row in rows if row.task == "ipmn"]
    if not ipmn:
        raise ReviewError(f"{', '.join(str(p) for p in files)} holds no IPMN verdicts, so there is no agreement "
                         "to report: record IPMN verdicts in the review tool first.")
    rated = [row for row in ipmn if row.reviewer_class]
    if not rated:
        raise ReviewError(f"None of the {len(ipmn)} IPMN verdicts gives the reviewer's own class (all are "
                         "'uncertain' without one), so there is nothing to compare the model with.")
    reviewers = sorted({row.reviewer for row in rated})
    left_out = _unclassified(ipmn)
    names = review_classes(ipmn)

    with_model = [agreement(reviewer, MODEL, case_confusions(
        [(r.case, r.reviewer_class, r.model_class) for r in rated if r.reviewer == reviewer], names), resamples,
        seed, names) for reviewer in reviewers]
    if len(reviewers) > 1:
        with_model.append(agreement("all reviewers", MODEL, case_confusions(
            [(r.case, r.reviewer_class, r.model_class) for r in rated], names), resamples, seed, names))

    between_reviewers = []
    classes = {(row.reviewer, row.case): row.reviewer_class for row in rated}
    for first, second in combinations(reviewers, 2):
        shared = [(case, cls, classes[(second, case)]) for (reviewer, case), cls in classes.items()
                  if reviewer == first and (second, case) in classes]
        if shared:
            between_reviewers.append(agreement(first, second, case_confusions(shared, names), resamples, seed,
                                               names))
        else:
            left_out.append(f"{first} and {second}: no case rated by both, so no agreement between them.")

    segmentation = {}
    for row in rows:
        if row.task == "segmentation":
            segmentation.setdefault(row.reviewer, dict.fromkeys(VERDICTS["segmentation"], 0))[row.verdict] += 1
    models = sorted({f"{row.model or '(unnamed)'} ({row.model_sha256[:12] or 'no SHA256'})" for row in ipmn})
    return ReviewAgreement(
        sources, len({row.case for row in rated}), len({row.case for row in rows if row.task == "segmentation"}),
        reviewers, models, with_model, between_reviewers, dict(sorted(segmentation.items())), left_out, replaced,
        names)


def _unclassified(ipmn: Sequence[ReviewRow]) -> list[str]:
    notes = []
    for reviewer in sorted({row.reviewer for row in ipmn}):
        cases = [row.case for row in ipmn if row.reviewer == reviewer and not row.reviewer_class]
        if cases:
            shown = ", ".join(cases[:10]) + (", ..." if len(cases) > 10 else "")
            notes.append(f"{reviewer}: {len(cases)} IPMN verdict(s) 'uncertain' without the reviewer's class "
                         f"({shown}): not used.")
    return notes


# --- report -------------------------------------------------------------------------------------

def _estimate_cell(estimate: Estimate) -> str:
    if estimate.value is None:
        return f"n/a ({estimate.reason})"
    if estimate.interval is None:
        return f"{estimate.value:.2f}"
    return f"{estimate.value:.2f} [{estimate.interval[0]:.2f}, {estimate.interval[1]:.2f}]"


def agreement_table(agreements: Sequence[Agreement], first_title: str) -> list[str]:
    lines = [f"| {first_title} | cases | " + " | ".join(f"{name} [95 % CI]" for name in STATISTICS) + " |",
             "|---|---|" + "---|" * len(STATISTICS)]
    for item in agreements:
        lines.append(f"| {item.title} | {item.count_text} | "
                     + " | ".join(_estimate_cell(item.estimates[name]) for name in STATISTICS) + " |")
    return lines


def confusion_table(item: Agreement) -> list[str]:
    lines = [f"{item.title} (rows: {item.row_rater}; columns: {item.column_rater})", "",
             "| | " + " | ".join(item.classes) + " |", "|---|" + "---|" * len(item.classes)]
    for name, counts in zip(item.classes, item.confusion):
        lines.append(f"| **{name}** | " + " | ".join(str(int(count)) for count in counts) + " |")
    return lines + [""]


def segmentation_table(counts: dict[str, dict[str, int]]) -> list[str]:
    if not counts:
        return ["No segmentation verdicts."]
    verdicts = VERDICTS["segmentation"]
    rows = dict(counts)
    if len(counts) > 1:
        rows["all reviewers"] = {v: sum(c[v] for c in counts.values()) for v in verdicts}
    lines = ["| reviewer | cases | " + " | ".join(verdicts) + " |", "|---|---|" + "---|" * len(verdicts)]
    for reviewer, mine in rows.items():
        total = sum(mine.values())
        lines.append(f"| {reviewer} | {total} | "
                     + " | ".join(f"{mine[v]} ({100 * mine[v] / total:.0f} %)" for v in verdicts) + " |")
    return lines


def markdown_report(review: ReviewAgreement, resamples: int, seed: int) -> str:
    """The report as Markdown: counts, the agreement tables, the confusion matrices, the
    segmentation verdicts, and what was left out and why."""
    lines = ["# Review agreement", "",
             f"{review.ipmn_cases} IPMN case(s) rated by {len(review.reviewers)} reviewer(s) "
             f"({', '.join(review.reviewers)}); {review.segmentation_cases} segmentation case(s) reviewed.", "",
             "Read: " + "; ".join(f"{path} ({count} row(s))" for path, count in review.sources) + ".",
             f"IPMN model(s) reviewed: {', '.join(review.models)}."
             + (" Their verdicts are pooled." if len(review.models) > 1 else ""), "",
             "## IPMN: model vs reviewers", ""]
    lines += agreement_table(review.with_model, "reviewer vs model") + [""]
    lines += ["## IPMN: reviewer vs reviewer", ""]
    if review.between_reviewers:
        lines += agreement_table(review.between_reviewers, "reviewers") + [""]
    else:
        lines += ["Fewer than two reviewers rated a case in common: no reviewer pairs.", ""]
    lines += ["## IPMN confusion matrices", ""]
    for item in [*review.with_model, *review.between_reviewers]:
        lines += confusion_table(item)
    lines += ["## Segmentation verdicts", ""] + segmentation_table(review.segmentation) + [""]
    lines += ["## Left out", ""]
    notes = [*review.left_out, *review.replaced, *_resample_notes(review, resamples)]
    lines += [f"- {note}" for note in notes] if notes else ["Nothing."]
    lines += ["", f"Accuracy = share of cases with the same class. Kappa: Cohen's, unweighted and linearly "
                  f"weighted over the ordered classes ({' < '.join(review.classes)}); n/a where both raters "
                  f"gave one and the same class throughout (agreement by chance is then complete). "
                  f"95 % CI: percentile bootstrap over cases, {resamples} resamples, seed {seed}; the pooled "
                  "line resamples cases with all their reviewers."]
    return "\n".join(lines) + "\n"


def _resample_notes(review: ReviewAgreement, resamples: int) -> list[str]:
    """Both kappas are undefined on the same resamples (those whose cases are all one class by both)."""
    notes = []
    for item in [*review.with_model, *review.between_reviewers]:
        undefined = item.estimates["kappa"].undefined_resamples
        if undefined:
            notes.append(f"{item.title}: kappa undefined in {undefined} of {resamples} bootstrap resamples "
                         "(every case drawn one class by both); the kappa intervals are over the others.")
    return notes


def confusion_figure(agreements: Sequence[Agreement], path: Path) -> Path:
    """The confusion matrices as heat maps with their counts, one panel each, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(3, len(agreements))
    rows = -(-len(agreements) // columns)
    figure = Figure(figsize=(4.2 * columns, 4.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, item in enumerate(agreements):
        ticks = [name.replace(" IPMN", "") for name in item.classes]
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(item.confusion, cmap="Blues", vmin=0, vmax=max(1, int(item.confusion.max())))
        for (i, j), count in np.ndenumerate(item.confusion):
            axes.text(j, i, str(int(count)), ha="center", va="center",
                      color="white" if count > item.confusion.max() / 2 else "black")
        axes.set_xticks(range(len(ticks)), ticks)
        axes.set_yticks(range(len(ticks)), ticks)
        axes.set_xlabel(item.column_rater)
        axes.set_ylabel(item.row_rater)
        kappa = item.estimates["kappa"].value
        axes.set_title(f"{item.title}\nn = {item.count_text}, kappa "
                       + ("n/a" if kappa is None else f"{kappa:.2f}"), fontsize=10)
    figure.savefig(path, dpi=120)
    return path


# --- command line -------------------------------------------------------------------------------

def run(args) -> int:
    try:
        review = review_agreement(review_files(args.review), args.bootstrap, args.seed)
        report = markdown_report(review, args.bootstrap, args.seed)
        output = Path(args.output)
        try:
            output.mkdir(parents=True, exist_ok=True)
            (output / REPORT_FILE).write_text(report, encoding="utf-8")
            confusion_figure([*review.with_model, *review.between_reviewers], output / FIGURE_FILE)
        except OSError as error:
            raise OutputError(f"The report could not be written to {output}: {error.strerror or error}.") from error
    except PancreasAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("review", nargs="+", metavar="REVIEW",
                        help="review.csv file, or a results folder with one; several are read together")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help=f"folder for {REPORT_FILE} and {FIGURE_FILE}")
    parser.add_argument("--bootstrap", type=_positive, default=2000, metavar="N",
                        help="bootstrap resamples for the 95 %% intervals (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give at least 1 resample")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
