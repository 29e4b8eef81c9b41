"""Patient-grouped, class-stratified folds for nested cross-validation (scikit-learn
StratifiedGroupKFold).

Outer level: `folds` folds; each in turn is the test set, and the other cases are its training
part. Inner level: that training part is split again into `inner_folds` folds, each in turn
validating while the others train (`OuterFold.inner`). crossvalidate_ipmn.py uses every inner
fold to choose the learning rate and the number of steps, then refits on the whole training
part (--inner-selection grid), or only inner fold 1 to pick a checkpoint of a network trained
on the other inner folds (--inner-selection checkpoint). With the paper's 10 outer and 9 inner
folds an inner run trains on 8/10 of the patients and validates on 1/10; the refit trains on
9/10; every test is on the remaining 1/10.

All scans of a patient stay in one fold at each level, and every fold must hold every class of
the task (the metrics are macro averages over its classes; `class_names`, default the 3-class
task's; the labels are the task's classes): otherwise the run stops naming the fold and the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError
from IPMNRiskLib.network import CLASS_NAMES


@dataclass(frozen=True)
class OuterFold:
    """One outer fold: indices into the cohort (sorted int64 arrays).

    test: the fold's cases; inner: (train, validation) pairs over the other cases.
    """

    number: int
    test: np.ndarray
    inner: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def training_part(self) -> np.ndarray:
        """Every case outside the test fold: what the refit trains on, and where fitted
        statistics (standardisation landmarks) come from."""
        return np.union1d(*self.inner[0])

    @property
    def train(self) -> np.ndarray:
        """The cases a checkpoint-selected model trains on (inner fold 1 is its validation set)."""
        return self.inner[0][0]

    @property
    def validation(self) -> np.ndarray:
        return self.inner[0][1]


def group_folds(labels: np.ndarray, patients: Sequence[str], n_folds: int, seed: int) -> list[np.ndarray]:
    """`n_folds` sorted index arrays that partition the cases: patients kept together, classes
    in about the proportions of the whole (StratifiedGroupKFold, shuffled with `seed`)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels)
    n_patients = len(set(patients))
    if n_folds < 2:
        raise InputError(f"Cross-validation needs at least 2 folds (got {n_folds}).")
    if n_patients < n_folds:
        raise InputError(f"{n_folds} folds need at least {n_folds} patients; there are {n_patients}.")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class with fewer members than folds is reported below, naming the fold.
        warnings.simplefilter("ignore", UserWarning)  # pragma: no mutate (sklearn warns nothing else here)
        return [np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels, groups=list(patients))]


def nested_folds(labels: Sequence[int], patients: Sequence[str], folds: int, inner_folds: int,
                 seed: int = 0, class_names: Sequence[str] = CLASS_NAMES) -> list[OuterFold]:
    """The nested split of a cohort (labels and patient of each case); checked (see module)."""
    labels = np.asarray(labels, dtype=np.int64)  # pragma: no mutate (labels are ints already)
    patients = list(patients)
    _check_class_sizes(labels, patients, folds, "outer", class_names)
    return nested_folds_from_tests(group_folds(labels, patients, folds, seed), labels, patients, inner_folds, seed,
                                   class_names=class_names)


def nested_folds_from_tests(outer_tests: Sequence[np.ndarray], labels: Sequence[int], patients: Sequence[str],
                            inner_folds: int, seed: int = 0, names: Optional[Sequence[str]] = None,
                            class_names: Sequence[str] = CLASS_NAMES) -> list[OuterFold]:
    """The nested split with given outer test folds (a published split, or one centre each):
    the rest of each is split into `inner_folds` patient-grouped, class-stratified inner folds.
    names: what each outer fold is, for messages (e.g. its centre)."""
    labels = np.asarray(labels, dtype=np.int64)  # pragma: no mutate (labels are ints already)
    patients = list(patients)
    outer = []
    for number, test in enumerate(outer_tests, start=1):
        test = np.sort(np.asarray(test, dtype=np.int64))
        title = f"Outer fold {number}" + (f" ({names[number - 1]})" if names else "")
        _check_has_every_class(labels[test], f"{title} (test set)", len(outer_tests), class_names)
        rest = np.setdiff1d(np.arange(len(labels)), test)
        rest_patients = [patients[i] for i in rest]
        _check_class_sizes(labels[rest], rest_patients, inner_folds, f"outer fold {number}'s inner", class_names)
        inner = []
        for inner_number, validation in enumerate(
                group_folds(labels[rest], rest_patients, inner_folds, seed + number), start=1):
            validation = rest[validation]
            train = np.setdiff1d(rest, validation)
            where = f"{title}, inner fold {inner_number}"
            _check_has_every_class(labels[validation], f"{where} (validation set)", inner_folds, class_names)
            _check_has_every_class(labels[train], f"{where} (training set)", inner_folds, class_names)
            inner.append((train, validation))
        outer.append(OuterFold(number, test, tuple(inner)))
    return outer


def patients_in_several_folds(outer_tests: Sequence[np.ndarray], patients: Sequence[str]) -> list[str]:
    """Patients whose cases are tested in more than one outer fold (a given split may do that)."""
    fold_of: dict[str, set] = {}
    for number, test in enumerate(outer_tests):
        for i in test:
            fold_of.setdefault(patients[int(i)], set()).add(number)
    return sorted(p for p, folds in fold_of.items() if len(folds) > 1)


def holdout_split(labels: Sequence[int], patients: Sequence[str], inner_folds: int,
                  seed: int = 0, class_names: Sequence[str] = CLASS_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices for a final model: the first of `inner_folds` folds
    validates, as inside the cross-validation."""
    labels = np.asarray(labels, dtype=np.int64)  # pragma: no mutate (labels are ints already)
    _check_class_sizes(labels, list(patients), inner_folds, "validation", class_names)
    validation = group_folds(labels, list(patients), inner_folds, seed)[0]
    train = np.setdiff1d(np.arange(len(labels)), validation)
    _check_has_every_class(labels[validation], "The validation set", inner_folds, class_names)
    _check_has_every_class(labels[train], "The training set", inner_folds, class_names)
    return train, validation


def _check_class_sizes(labels: np.ndarray, patients: list[str], n_folds: int, level: str,
                       class_names: Sequence[str]) -> None:
    for label, name in enumerate(class_names):
        count = len({p for p, y in zip(patients, labels) if y == label})
        if count < n_folds:
            raise InputError(
                f"The {level} split into {n_folds} folds needs at least {n_folds} patients with "
                f"{name}, one per fold; there are {count}. Use fewer folds (--folds / --inner-folds) "
                "or add patients of this class.")


def _check_has_every_class(labels: np.ndarray, where: str, n_folds: int, class_names: Sequence[str]) -> None:
    absent = [name for label, name in enumerate(class_names) if not np.any(labels == label)]
    if absent:
        raise InputError(
            f"{where} has no case of {' or '.join(absent)}: patients with several scans or few patients "
            f"of a class keep the {n_folds} folds from all holding every class. Use fewer folds "
            "(--folds / --inner-folds) or another --seed.")
