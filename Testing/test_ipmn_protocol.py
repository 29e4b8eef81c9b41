"""The IPMN training protocol's fidelity: every setting says whose value it is (the paper's or
ours, and why), nothing fitted on data sees a test or validation case (standardisation
landmarks, balanced class weights), the nested cross-validation chooses the learning rate and
the number of steps on the inner folds alone and refits on the whole outer training part, and
the normalisation a model was trained with is the one IPMNRisk rebuilds from its card.

The cross-validations here run on tiny phantoms (12 x 64 x 64, a one-block ViT, a few steps)
with spies on the fits and on every training run, recording the cases each one receives."""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

import crossvalidate_ipmn
import ipmn_data
import train_ipmn
from ipmn_data import (PhantomCase, PreparedCase, StackCache, card_preprocessing, phantom_cases, prepare_cases,
                       preprocessing_steps)
from ipmn_folds import nested_folds
from ipmn_metrics import chosen_setting, selection_table
from ipmn_training import (ARTICLE, AUTHORS_CODE, IPMNProtocol, class_weights_setting, fit_class_weights,
                           ipmn_protocol_from_arguments)
from IPMNRiskLib.grids import INPUT_FORMAT, NORMALISATIONS
from IPMNRiskLib.inference import model_input
from IPMNRiskLib.network import CLASS_NAMES
from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from PancreasAILib.weights import ModelCard
from trainkit.distributed import Distributed
from trainkit.protocol import NOT_IN_THE_PAPER, origin, protocol_preset, protocol_table

PHANTOM_SHAPE, PHANTOM_SPACING = (12, 64, 64), (3.5, 3.5, 5.0)
TINY_PHANTOMS = ["--phantom-shape", *map(str, PHANTOM_SHAPE), "--phantom-spacing", *map(str, PHANTOM_SPACING)]
TINY_VIT = ["--architecture", "vit_tiny_patch16_224", "--architecture-params",
            json.dumps({"depth": 1, "embed_dim": 48, "num_heads": 3})]
TINY_RUN = [*TINY_VIT, "--batch-size", "2", "--eval-every", "2", "--device", "cpu"]
PHANTOM_PATIENTS, FOLDS, INNER_FOLDS = 4, 2, 2
CV_DATA = ["--phantoms", str(PHANTOM_PATIENTS), "--folds", str(FOLDS), "--inner-folds", str(INNER_FOLDS),
           *TINY_PHANTOMS]
# Two learning rates, neither the protocol's 0.003, and steps validated at 2 and 4: a refit that
# ignored the chosen learning rate or number of steps shows.
LR_GRID = (0.002, 0.001)
GRID_CV = [*CV_DATA, *TINY_RUN, "--steps", "4", "--lr-grid", *map(str, LR_GRID),
           "--preprocessing", "standardisation", "--class-weights", "balanced"]


# --- spies -----------------------------------------------------------------------------------------

@dataclass
class SpiedRun:
    """What one training run received: the case ids it trains and validates on."""

    name: str
    train: list
    validation: Optional[list]
    learning_rate: float
    final_step: int
    class_weights: list

    @property
    def outer_fold(self) -> int:
        return int(self.name.split(" fold ")[1].split()[0])


def case_ids(cases) -> list:
    return sorted(case.case_id for case in cases)


def spy_on_fits_and_runs(patch: pytest.MonkeyPatch, module) -> list:
    """Record, in order, every landmark fit, class-weight fit and training run of `module`
    (crossvalidate_ipmn or train_ipmn) as ("landmarks" | "class_weights" | "run", ...)."""
    events = []
    fit_landmarks, fit_weights, run_class = ipmn_data.fit_landmarks, module.fit_class_weights, module.TrainingRun

    def spied_fit_landmarks(cases, *arguments, **keywords):
        events.append(("landmarks", case_ids(cases)))
        return fit_landmarks(cases, *arguments, **keywords)

    def spied_fit_class_weights(setting, cases, *task):
        weights = fit_weights(setting, cases, *task)
        events.append(("class_weights", case_ids(cases), weights))
        return weights

    class Run(run_class):
        def __post_init__(self) -> None:
            super().__post_init__()
            events.append(("run", SpiedRun(self.name, case_ids(self.train.cases),
                                           None if self.val is None else case_ids(self.val.cases),
                                           self.protocol.learning_rate, self.final_step, list(self.class_weights))))

    patch.setattr(ipmn_data, "fit_landmarks", spied_fit_landmarks)
    patch.setattr(module, "fit_class_weights", spied_fit_class_weights)
    patch.setattr(module, "TrainingRun", Run)
    return events


def runs_of(events) -> list[SpiedRun]:
    return [event[1] for event in events if event[0] == "run"]


def expected_folds():
    """The folds of the phantom cohort, made here from the labels and patients alone, and the
    ids of its cases."""
    cases = phantom_cases(range(PHANTOM_PATIENTS), PHANTOM_SHAPE, PHANTOM_SPACING)
    folds = nested_folds([c.label for c in cases], [c.patient_id for c in cases], FOLDS, INNER_FOLDS, seed=0)
    return folds, [c.case_id for c in cases]


def ids(names, positions) -> list:
    return sorted(names[int(i)] for i in positions)


def result_of(output: Path, fold: int, method: str = "early-fusion") -> dict:
    return json.loads((output / method / f"fold-{fold:02d}" / "result.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def grid_cv(tmp_path_factory):
    """A grid-selected cross-validation with standardisation and balanced class weights;
    returns (output folder, events)."""
    output = tmp_path_factory.mktemp("grid-cv") / "cv"
    with pytest.MonkeyPatch.context() as patch:
        events = spy_on_fits_and_runs(patch, crossvalidate_ipmn)
        assert crossvalidate_ipmn.main([*GRID_CV, "--output", str(output)]) == 0
    return output, events


# --- no fitted statistic sees a test case ------------------------------------------------------------

def test_landmarks_of_each_outer_fold_are_fitted_on_its_training_part_alone(grid_cv):
    _, events = grid_cv
    folds, names = expected_folds()
    fits = [event[1] for event in events if event[0] == "landmarks"]
    assert fits == [ids(names, fold.training_part) for fold in folds]


def test_balanced_class_weights_are_fitted_on_the_cases_each_network_trains_on(grid_cv):
    output, events = grid_cv
    folds, names = expected_folds()
    pairs = [(events[n], events[n + 1]) for n in range(len(events) - 1) if events[n + 1][0] == "run"]
    assert len(pairs) == len(runs_of(events)) == FOLDS * (len(LR_GRID) * INNER_FOLDS + 1)
    for fit, (_, run) in pairs:
        assert fit[0] == "class_weights" and fit[1] == run.train, run.name
        assert fit[2] == run.class_weights
        assert not set(fit[1]) & set(ids(names, folds[run.outer_fold - 1].test)), run.name
    refit = [run for run in runs_of(events) if run.validation is None and run.outer_fold == 1][0]
    assert result_of(output, 1)["class_weights_used"] == refit.class_weights


def fold_landmarks(tmp_path: Path, distorted: set) -> dict:
    """{outer fold: T2 landmarks its cases are standardised with}, the T2 of the `distorted`
    cases multiplied by 100 and squared (squared: the landmarks are mapped per volume onto a
    fixed scale, so a rescaling alone leaves them as they are)."""
    load = PhantomCase.load

    def extreme_load(case):
        t1, t2, region = load(case)
        if case.case_id in distorted:
            t2 = Volume(np.square(np.asarray(t2.array, np.float64) * 100).astype(np.float32), t2.ijk_to_ras)
        return t1, t2, region

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PhantomCase, "load", extreme_load)
        args = crossvalidate_ipmn.build_parser().parse_args(
            [*CV_DATA, "--preprocessing", "standardisation", "--output", str(tmp_path / f"cv-{len(distorted)}")])
        cv = crossvalidate_ipmn.CrossValidation(args, [], Distributed(0, 0, 1, torch.device("cpu")))
        return {fold.number: cv.fold_data(fold).steps["standardisation"]["t2_landmarks"] for fold in cv.folds}


def test_landmarks_of_a_fold_do_not_change_when_its_test_images_do(tmp_path):
    folds, names = expected_folds()
    plain = fold_landmarks(tmp_path, set())
    extreme = fold_landmarks(tmp_path, set(ids(names, folds[0].test)))
    assert extreme[1] == plain[1]
    assert extreme[2] != plain[2]  # where those cases train, the distortion shows


@pytest.fixture(scope="module")
def spied_training(tmp_path_factory):
    """train_ipmn.py on phantoms with --protocol ours and standardisation; (output, events)."""
    output = tmp_path_factory.mktemp("train") / "ipmn"
    with pytest.MonkeyPatch.context() as patch:
        events = spy_on_fits_and_runs(patch, train_ipmn)
        assert train_ipmn.main(["--patients", "2", "--val-patients", "1", *TINY_PHANTOMS, *TINY_RUN, "--steps", "2",
                                "--protocol", "ours", "--preprocessing", "standardisation",
                                "--output", str(output)]) == 0
    return output, events


def test_final_training_fits_landmarks_and_class_weights_on_its_training_cases_alone(spied_training):
    output, events = spied_training
    manifest = json.loads((output.with_suffix(".run") / "data.json").read_text(encoding="utf-8"))
    training = sorted(c["case_id"] for c in manifest["cases"] if c["split"] == "training")
    assert [event[1] for event in events if event[0] in ("landmarks", "class_weights")] == [training, training]
    assert runs_of(events)[0].train == training


def test_card_records_the_normalisation_and_the_class_weights_it_used(spied_training):
    output, _ = spied_training
    card = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    protocol = card["training"]["protocol"]
    assert card["preprocessing"]["normalisation"] == "crop_stack_min_max"
    assert protocol["preset"] == "ours" and protocol["class_weights"] == "balanced"
    assert protocol["class_weights_used"] == [1.0, 1.0, 1.0]  # every phantom patient has one scan per class
    assert protocol["origins"]["normalisation"].startswith("ours (independent of the field of view")
    assert len(card["preprocessing"]["standardisation"]["t2_landmarks"]) == 11


# --- the nested cross-validation ----------------------------------------------------------------------

def test_inner_runs_train_and_validate_inside_the_outer_training_part(grid_cv):
    _, events = grid_cv
    folds, names = expected_folds()
    for fold in folds:
        inner = sorted((run.learning_rate, run.train, run.validation) for run in runs_of(events)
                       if run.outer_fold == fold.number and run.validation is not None)
        expected = sorted((lr, ids(names, train), ids(names, validation))
                          for lr in LR_GRID for train, validation in fold.inner)
        assert inner == expected
        assert not {case for _, train, validation in inner for case in train + validation} & \
            set(ids(names, fold.test))


def test_refit_trains_on_the_whole_outer_training_part_with_the_chosen_learning_rate_and_steps(grid_cv):
    output, events = grid_cv
    folds, names = expected_folds()
    for fold in folds:
        refits = [run for run in runs_of(events) if run.outer_fold == fold.number and run.validation is None]
        chosen = result_of(output, fold.number)["selection"]["chosen"]
        assert len(refits) == 1
        assert refits[0].train == ids(names, fold.training_part)
        assert (refits[0].learning_rate, refits[0].final_step) == (chosen["learning_rate"], chosen["step"])


def test_fold_result_records_the_selection_table_and_its_choice(grid_cv):
    output, _ = grid_cv
    result = result_of(output, 2)
    table = result["selection"]["table"]
    assert [(row["learning_rate"], row["step"]) for row in table] == [(lr, s) for lr in LR_GRID for s in (2, 4)]
    for row in table:
        assert sorted(row["inner_balanced_accuracy"]) == ["1", "2"]
        assert row["mean_balanced_accuracy"] == pytest.approx(np.mean(list(row["inner_balanced_accuracy"].values())))
    assert result["selection"]["chosen"] == chosen_setting(table)
    assert (result["row"]["learning_rate"], result["row"]["steps"]) == (result["selection"]["chosen"]["learning_rate"],
                                                                       result["selection"]["chosen"]["step"])
    log = (output / "cv.log").read_text(encoding="utf-8")
    assert "10 trainings per method = 2 outer folds x (2 learning rates x 2 inner folds + 1)" in log


def curve(*values) -> list:
    """Validation balanced accuracies at steps 100, 200, ..."""
    return [{"step": 100 * (n + 1), "balanced_accuracy": value} for n, value in enumerate(values)]


def test_selection_takes_the_best_mean_over_the_inner_folds_not_the_best_single_fold():
    table = selection_table({(0.003, 1): curve(0.9, 0.2), (0.003, 2): curve(0.3, 0.2),
                             (0.001, 1): curve(0.5, 0.7), (0.001, 2): curve(0.5, 0.6)})
    assert {(row["learning_rate"], row["step"]): round(row["mean_balanced_accuracy"], 3) for row in table} == \
        {(0.003, 100): 0.6, (0.003, 200): 0.2, (0.001, 100): 0.5, (0.001, 200): 0.65}
    chosen = chosen_setting(table)
    assert (chosen["learning_rate"], chosen["step"]) == (0.001, 200)


def test_selection_breaks_ties_by_fewer_steps_then_the_larger_learning_rate():
    tied_steps = selection_table({(0.001, 1): curve(0.5, 0.6, 0.6), (0.003, 1): curve(0.4, 0.5, 0.6)})
    assert (chosen_setting(tied_steps)["learning_rate"], chosen_setting(tied_steps)["step"]) == (0.001, 200)
    tied_rates = selection_table({(0.001, 1): curve(0.6, 0.5), (0.003, 1): curve(0.6, 0.5), (0.002, 1): curve(0.6)})
    assert (chosen_setting(tied_rates)["learning_rate"], chosen_setting(tied_rates)["step"]) == (0.003, 100)


def test_checkpoint_selection_trains_on_inner_fold_1s_training_part_and_validates_on_it(tmp_path):
    output = tmp_path / "cv"
    with pytest.MonkeyPatch.context() as patch:
        events = spy_on_fits_and_runs(patch, crossvalidate_ipmn)
        assert crossvalidate_ipmn.main([*CV_DATA, *TINY_RUN, "--steps", "2", "--inner-selection", "checkpoint",
                                        "--lr", "0.002", "--output", str(output)]) == 0
    folds, names = expected_folds()
    runs = runs_of(events)
    assert [(run.train, run.validation, run.learning_rate) for run in runs] == \
        [(ids(names, fold.train), ids(names, fold.validation), 0.002) for fold in folds]
    assert result_of(output, 1)["row"]["steps"] == result_of(output, 1)["best_row"]["step"]
    assert json.loads((output / "cv.json").read_text(encoding="utf-8"))["protocol"]["learning_rate"] == 0.002


@pytest.mark.parametrize("arguments, message", [
    (["--lr", "0.001"], "With --inner-selection grid the inner folds choose the learning rate"),
    (["--inner-selection", "checkpoint", "--lr-grid", "0.001"], "--lr-grid is for --inner-selection grid"),
    (["--lr-grid", "0.001", "0.001"], "--lr-grid needs distinct positive learning rates"),
])
def test_learning_rate_options_that_contradict_the_inner_selection_are_refused(tmp_path, arguments, message):
    output = tmp_path / "cv"
    # --steps 2: a run that should have been refused ends quickly, with 0
    assert crossvalidate_ipmn.main([*CV_DATA, *TINY_RUN, "--steps", "2", *arguments, "--output", str(output)]) == 2
    assert message in (output / "cv.log").read_text(encoding="utf-8")
    assert not (output / "split.json").exists()


def test_resumed_grid_search_reuses_finished_inner_runs(tmp_path):
    output = tmp_path / "cv"
    arguments = [*CV_DATA, *TINY_RUN, "--steps", "2", "--lr-grid", "0.003", "--output", str(output)]
    assert crossvalidate_ipmn.main(arguments) == 0
    before = result_of(output, 2)
    (output / "early-fusion" / "fold-02" / "result.json").unlink()
    with pytest.MonkeyPatch.context() as patch:
        events = spy_on_fits_and_runs(patch, crossvalidate_ipmn)
        assert crossvalidate_ipmn.main([*arguments, "--resume"]) == 0
    assert [run.name for run in runs_of(events)] == ["early-fusion fold 2 refit"]
    assert "early-fusion fold 2, learning rate 0.003, inner fold 1: done earlier" in \
        (output / "cv.log").read_text(encoding="utf-8")
    assert result_of(output, 2)["row"] == before["row"]


# --- the protocol's presets ---------------------------------------------------------------------------

def test_paper_preset_is_the_default_and_ours_differs_only_where_it_says_why():
    paper, ours = IPMNProtocol(), protocol_preset(IPMNProtocol, "ours")
    assert [f.name for f in fields(IPMNProtocol)][0] == "preset"
    assert paper == protocol_preset(IPMNProtocol, "paper") and paper.preset == "paper"
    assert (paper.normalisation, paper.class_weights) == ("volume_min_max", "1 0.65 0.45")
    assert (ours.normalisation, ours.class_weights) == ("crop_stack_min_max", "balanced")
    differing = {row["setting"]: row["why"] for row in protocol_table(IPMNProtocol) if row["paper"] != row["ours"]}
    assert sorted(differing) == ["class_weights", "normalisation"] and all(differing.values())


def test_every_setting_the_paper_gives_names_its_source():
    sources = {row["setting"]: row["source"] for row in protocol_table(IPMNProtocol)}
    assert sorted(name for name, source in sources.items() if source == NOT_IN_THE_PAPER) == ["eval_every", "precision"]
    assert all(source.startswith((ARTICLE, AUTHORS_CODE)) for source in sources.values() if source != NOT_IN_THE_PAPER)
    assert sources["class_weights"].startswith(AUTHORS_CODE) and "[1, 0.65, 0.45]" in sources["class_weights"]
    assert f"{AUTHORS_CODE} (z-score, then min-max of each volume)" in sources["normalisation"]
    assert f"{AUTHORS_CODE} (counted as optimiser steps)" in sources["steps"]


def test_class_weights_option_takes_three_numbers_or_balanced():
    parser = train_ipmn.build_parser()

    def setting(*words):
        return ipmn_protocol_from_arguments(parser.parse_args(["--output", "x", "--class-weights", *words]))

    assert setting("1", "1", "1").class_weights == "1 1 1"
    assert setting("balanced").class_weights == "balanced"
    paper_numbers = setting("1.0", "0.65", "0.45")
    assert paper_numbers.class_weights == "1 0.65 0.45"
    assert origin(paper_numbers, "class_weights").startswith("paper (authors' code")


@pytest.mark.parametrize("words", [["1", "1"], ["1", "1", "heavy"], ["balance"]])
def test_class_weights_that_are_neither_three_numbers_nor_balanced_are_refused(words):
    with pytest.raises(InputError, match=r"--class-weights takes three numbers .* or the word balanced; got"):
        class_weights_setting(words)


def scans(*labels_and_slices) -> list:
    """Prepared cases of (label, slice count)."""
    return [PreparedCase(f"c{n}", f"p{n}", label, np.zeros((k, 64, 64), np.float32), np.zeros((k, 64, 64), np.float32),
                         "0" * 64) for n, (label, k) in enumerate(labels_and_slices)]


def test_balanced_class_weights_follow_scikit_learns_rule_over_cases_not_windows():
    # 6 cases: 3 normal, 1 low-risk, 2 high-risk; the low-risk scan has many more windows
    cases = scans((0, 9), (0, 9), (0, 9), (1, 40), (2, 9), (2, 9))
    assert fit_class_weights("balanced", cases) == pytest.approx([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)])
    assert fit_class_weights("1 0.65 0.45", cases) == [1.0, 0.65, 0.45]


def test_balanced_class_weights_without_a_class_are_refused_naming_it():
    with pytest.raises(InputError, match="no case of low-risk IPMN"):
        fit_class_weights("balanced", scans((0, 9), (2, 9)))


# --- the normalisation, from training to the card to IPMNRisk ---------------------------------------

@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_training_stacks_are_the_input_ipmnrisk_builds_from_the_cards_normalisation(normalisation):
    case = PhantomCase(7, 2, PHANTOM_SHAPE, PHANTOM_SPACING)
    (prepared,), steps = prepare_cases([case], preprocessing_steps("standardisation"), StackCache(None), fit_on=[0],
                                       normalisation=normalisation, show_progress=False)
    card = ModelCard(Path("card.json"), {"classes": list(CLASS_NAMES),
                                         "preprocessing": card_preprocessing(steps, normalisation)})
    assert card.preprocessing["normalisation"] == normalisation
    inference = model_input(*case.load(), card)
    np.testing.assert_array_equal(prepared.window_input(prepared.central_start), inference.x)


def test_stack_cache_keeps_each_normalisation_apart_and_earlier_stacks_valid(tmp_path):
    cache, steps = StackCache(tmp_path), preprocessing_steps("none")
    paths = {n: cache.stacks_path("a" * 64, steps, n) for n in NORMALISATIONS}
    assert len(set(paths.values())) == len(NORMALISATIONS)
    # the key of stacks cached before the normalisation was a choice (INPUT_FORMAT) is unchanged
    earlier = ipmn_data._key({"format": ipmn_data.CACHE_FORMAT, "input": INPUT_FORMAT, "steps": steps})
    assert paths["crop_stack_min_max"].parent.name == f"stacks-{earlier[:16]}"


def test_preprocessing_choice_standardisation_is_that_step_alone():
    steps = preprocessing_steps("standardisation")
    assert (steps["n4_bias_correction"], steps["smoothing"]) == (False, False)
    assert steps["standardisation"]["percentiles"] == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
