"""Classification metrics of the IPMN paper (scikit-learn) and its tables: per fold, and
mean +- standard deviation over folds, as CSV and Markdown; and the inner selection table of
the nested cross-validation (mean inner-validation balanced accuracy per learning rate and
number of steps, and the setting it chooses).

Accuracy; precision and recall macro-averaged over the task's classes (a class never predicted
has precision 0); balanced accuracy (= macro recall when every class is present), which
selects checkpoints and settings.

Pooled out-of-fold predictions (the Cyst-X benchmark's figures): accuracy, balanced accuracy,
macro F1 and AUC, overall and per group (centre), with seeded bootstrap 95 % intervals, and the
points and PNG of a reliability diagram.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

METRICS = ("accuracy", "macro_precision", "macro_recall", "balanced_accuracy")
#: Column titles as in the paper's Table I.
TITLES = {"accuracy": "accuracy", "macro_precision": "precision", "macro_recall": "recall",
          "balanced_accuracy": "balanced accuracy"}
LABELS = (0, 1, 2)
#: How the inner selection chooses among equal mean balanced accuracies.
SELECTION_RULE = ("the highest mean inner-validation balanced accuracy over the inner folds; ties: fewer steps, "
                  "then the larger learning rate")


def classification_metrics(truth: np.ndarray, predicted: np.ndarray, classes: int = len(LABELS)) -> dict:
    """The four metrics of (N,) true and predicted classes of a task with `classes` classes
    (the macro averages are over those: 3, or 2 for the 2-class task)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score

    truth, predicted = np.asarray(truth), np.asarray(predicted)
    labels = list(range(classes))
    with warnings.catch_warnings():
        # A predicted class absent from the truth is ignored by balanced accuracy, as intended.
        warnings.simplefilter("ignore", UserWarning)
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_precision": float(precision_score(truth, predicted, labels=labels, average="macro",
                                                     zero_division=0)),
            "macro_recall": float(recall_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
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


def selection_table(curves: Mapping[tuple[float, int], Sequence[dict]]) -> list[dict]:
    """The inner selection table of one outer fold.

    curves: {(learning rate, inner fold number): [{"step", "balanced_accuracy"}, ...]}, the
    validation curve of every inner run (all validated at the same steps). Returns one row per
    (learning rate, step): {"learning_rate", "step", "mean_balanced_accuracy",
    "inner_balanced_accuracy": {inner fold number: value}}, by learning rate (as given) then step.
    """
    learning_rates = list(dict.fromkeys(lr for lr, _ in curves))
    inner_folds = sorted({inner for _, inner in curves})
    rows = []
    for learning_rate in learning_rates:
        by_step = [{row["step"]: row["balanced_accuracy"] for row in curves[learning_rate, inner]}
                   for inner in inner_folds]
        steps = sorted(set.intersection(*(set(values) for values in by_step)))
        for step in steps:
            inner_values = {inner: float(values[step]) for inner, values in zip(inner_folds, by_step)}
            rows.append({"learning_rate": float(learning_rate), "step": int(step),
                         "mean_balanced_accuracy": float(np.mean(list(inner_values.values()))),
                         "inner_balanced_accuracy": inner_values})
    return rows


def chosen_setting(table: Sequence[dict]) -> dict:
    """The row of `selection_table` that SELECTION_RULE picks."""
    if not table:
        raise ValueError("the selection table is empty")
    # Means of the same values in the same order are equal to the bit; rounding keeps sums of
    # equal sets in other orders tied too.
    return min(table, key=lambda row: (-round(row["mean_balanced_accuracy"], 12), row["step"], -row["learning_rate"]))


def write_fold_table(folder: Path, title: str, fold_rows: Sequence[dict]) -> dict:
    """`folds.csv` and `folds.md` of one method (one row per fold with the learning rate and
    the number of steps of the tested model, then mean and sd); returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = mean_and_sd(fold_rows)
    with open(folder / "folds.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["fold", *METRICS, "test_cases", "learning_rate", "steps"])
        for row in fold_rows:
            writer.writerow([row["fold"], *(f"{row[m]:.4f}" for m in METRICS), row["test_cases"],
                             f"{row['learning_rate']:g}", row["steps"]])
        writer.writerow(["mean", *(f"{summary[m]['mean']:.4f}" for m in METRICS), "", "", ""])
        writer.writerow(["sd", *("" if summary[m]["sd"] is None else f"{summary[m]['sd']:.4f}" for m in METRICS),
                         "", "", ""])
    lines = [f"### {title}", "", "| fold | " + " | ".join(TITLES[m] for m in METRICS)
             + " | test cases | learning rate | steps |", "|---|" + "---|" * (len(METRICS) + 3)]
    for row in fold_rows:
        lines.append(f"| {row['fold']} | " + " | ".join(f"{row[m]:.2f}" for m in METRICS)
                     + f" | {row['test_cases']} | {row['learning_rate']:g} | {row['steps']} |")
    lines.append("| mean +- sd | " + " | ".join(_plus_minus(summary[m]) for m in METRICS) + " | | | |")
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
                  "(nested cross-validation); precision and recall macro-averaged over the classes."]
    (folder / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- pooled out-of-fold predictions: benchmark metrics with bootstrap intervals, calibration --------

#: Metrics of pooled predictions, as the Cyst-X benchmark reports them.
POOLED_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
DEFAULT_BOOTSTRAP = 1000


def pooled_metrics(truth: np.ndarray, probabilities: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, macro F1 and AUC of (N,) true classes and (N, C) class
    probabilities (C = 3: AUC one-vs-rest, macro over classes; C = 2: binary AUC of class 1).
    AUC is None when a class is absent from `truth`."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    truth, probabilities = np.asarray(truth), np.asarray(probabilities, float)
    labels = list(range(probabilities.shape[1]))
    predicted = probabilities.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = {"accuracy": float(accuracy_score(truth, predicted)),
                  "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
                  "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
                  "auc": None}
        if set(labels) <= set(truth.tolist()):
            if len(labels) == 2:
                result["auc"] = float(roc_auc_score(truth, probabilities[:, 1]))
            else:
                result["auc"] = float(roc_auc_score(truth, probabilities, multi_class="ovr", average="macro",
                                                    labels=labels))
    return result


def bootstrap_intervals(truth: np.ndarray, probabilities: np.ndarray, seed: int,
                        resamples: int = DEFAULT_BOOTSTRAP) -> dict:
    """{metric: [low, high]} 95 % percentile intervals over `resamples` resamplings of the cases
    with replacement (numpy default_rng(seed)); a resample without every class is skipped for
    AUC. [None, None] when no resample defines the metric."""
    truth, probabilities = np.asarray(truth), np.asarray(probabilities, float)
    rng = np.random.default_rng(seed)
    values: dict[str, list] = {metric: [] for metric in POOLED_METRICS}
    for _ in range(resamples):
        chosen = rng.integers(0, len(truth), len(truth))
        for metric, value in pooled_metrics(truth[chosen], probabilities[chosen]).items():
            if value is not None:
                values[metric].append(value)
    return {metric: ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [None, None])
            for metric, v in values.items()}


def grouped_metrics(truth: np.ndarray, probabilities: np.ndarray, groups: Optional[Sequence[str]], seed: int,
                    resamples: int = DEFAULT_BOOTSTRAP) -> dict:
    """{"overall": {...}, "per_group": {group: {...}}}, each {"cases", metric: value,
    "intervals": {metric: [low, high]}}; groups (e.g. centres) in order of appearance; without
    groups, "per_group" is empty."""
    truth, probabilities = np.asarray(truth), np.asarray(probabilities, float)

    def summary(mask: np.ndarray) -> dict:
        return {"cases": int(mask.sum()), **pooled_metrics(truth[mask], probabilities[mask]),
                "intervals": bootstrap_intervals(truth[mask], probabilities[mask], seed, resamples)}

    per_group = {}
    if groups is not None:
        groups = np.asarray(groups)
        per_group = {str(g): summary(groups == g) for g in dict.fromkeys(groups.tolist())}
    return {"overall": summary(np.ones(len(truth), bool)), "per_group": per_group}


def write_benchmark_table(path: Path, benchmark: dict, group_title: str = "centre") -> None:
    """CSV: one line for all cases, then one per group: cases, each metric with its interval."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow([group_title, "cases", *(f"{m}{s}" for m in POOLED_METRICS for s in ("", "_low", "_high"))])
        for name, entry in [("all", benchmark["overall"]), *benchmark["per_group"].items()]:
            cells = []
            for metric in POOLED_METRICS:
                cells += ["" if v is None else f"{v:.4f}" for v in (entry[metric], *entry["intervals"][metric])]
            writer.writerow([name, entry["cases"], *cells])


def reliability_curve(truth: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> list[dict]:
    """The reliability diagram's points: per equal-width bin of the probability the model gives
    (C = 2: of class 1; C > 2: of its predicted class), {"low", "high", "cases",
    "mean_probability", "observed"} (observed: fraction of class 1, or of correct predictions)."""
    truth, probabilities = np.asarray(truth), np.asarray(probabilities, float)
    if probabilities.shape[1] == 2:
        confidence, hit = probabilities[:, 1], truth == 1
    else:
        confidence, hit = probabilities.max(1), probabilities.argmax(1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "cases": int((which == b).sum()),
             "mean_probability": float(confidence[which == b].mean()), "observed": float(hit[which == b].mean())}
            for b in range(bins) if np.any(which == b)]


def write_calibration_png(path: Path, curve: Sequence[dict], title: str, binary: bool) -> None:
    """A reliability diagram (observed vs predicted, the diagonal = perfect calibration) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot([p["mean_probability"] for p in curve], [p["observed"] for p in curve], marker="o",
              label="model")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("predicted probability of high risk" if binary else "predicted probability of the predicted class")
    axes.set_ylabel("observed fraction of high risk" if binary else "observed fraction correct")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
