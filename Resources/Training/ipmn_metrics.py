"""Classification metrics of the IPMN paper (scikit-learn) and its tables: per fold, and
mean +- standard deviation over folds, as CSV and Markdown.

Accuracy; precision and recall macro-averaged over the three classes (a class never predicted
has precision 0); balanced accuracy (= macro recall when every class is present), which
selects checkpoints.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

METRICS = ("accuracy", "macro_precision", "macro_recall", "balanced_accuracy")
#: Column titles as in the paper's Table I.
TITLES = {"accuracy": "accuracy", "macro_precision": "precision", "macro_recall": "recall",
          "balanced_accuracy": "balanced accuracy"}
LABELS = (0, 1, 2)


def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """The four metrics of (N,) true and predicted classes."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    with warnings.catch_warnings():
        # A predicted class absent from the truth is ignored by balanced accuracy, as intended.
        warnings.simplefilter("ignore", UserWarning)
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_precision": float(precision_score(truth, predicted, labels=LABELS, average="macro",
                                                     zero_division=0)),
            "macro_recall": float(recall_score(truth, predicted, labels=LABELS, average="macro", zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        }


def mean_and_sd(rows: Sequence[dict]) -> dict:
    """{metric: {"mean", "sd"}} over folds; sd with ddof = 1 (None for one fold)."""
    summary = {}
    for metric in METRICS:
        values = np.array([row[metric] for row in rows], float)
        summary[metric] = {"mean": float(values.mean()),
                           "sd": float(values.std(ddof=1)) if len(values) > 1 else None}
    return summary


def _plus_minus(entry: dict) -> str:
    return f"{entry['mean']:.2f}" + ("" if entry["sd"] is None else f" +- {entry['sd']:.2f}")


def write_fold_table(folder: Path, title: str, fold_rows: Sequence[dict]) -> dict:
    """`folds.csv` and `folds.md` of one method (one row per fold, then mean and sd); returns
    the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = mean_and_sd(fold_rows)
    with open(folder / "folds.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["fold", *METRICS, "test_cases", "best_step"])
        for row in fold_rows:
            writer.writerow([row["fold"], *(f"{row[m]:.4f}" for m in METRICS), row["test_cases"], row["best_step"]])
        writer.writerow(["mean", *(f"{summary[m]['mean']:.4f}" for m in METRICS), "", ""])
        writer.writerow(["sd", *("" if summary[m]["sd"] is None else f"{summary[m]['sd']:.4f}" for m in METRICS), "", ""])
    lines = [f"### {title}", "", "| fold | " + " | ".join(TITLES[m] for m in METRICS) + " | test cases |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for row in fold_rows:
        lines.append(f"| {row['fold']} | " + " | ".join(f"{row[m]:.2f}" for m in METRICS) + f" | {row['test_cases']} |")
    lines.append("| mean +- sd | " + " | ".join(_plus_minus(summary[m]) for m in METRICS) + " | |")
    (folder / "folds.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


def write_results_table(folder: Path, results: Sequence[dict]) -> None:
    """`results.csv` and `results.md`: one line per method, mean +- sd over folds, like the
    paper's Tables I and II. results: [{"method", "title", "folds", "summary"}]."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["method", "title", "folds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "sd"))])
        for result in results:
            values = []
            for metric in METRICS:
                entry = result["summary"][metric]
                values += [f"{entry['mean']:.4f}", "" if entry["sd"] is None else f"{entry['sd']:.4f}"]
            writer.writerow([result["method"], result["title"], result["folds"], *values])
    lines = ["| method | " + " | ".join(TITLES[m] for m in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for result in results:
        lines.append(f"| {result['title']} | " + " | ".join(_plus_minus(result["summary"][m]) for m in METRICS) + " |")
    lines += ["", f"Mean +- standard deviation over {results[0]['folds'] if results else 0} outer folds "
                  "(nested cross-validation); precision and recall macro-averaged over the three classes."]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
