"""The 2-class IPMN task (Cyst-X's high-risk IPMN vs no or low-risk IPMN, reported as AUC) end to
end: the labels it learns, its class weights, the published 2-class split, training and
cross-validation on a Cyst-X-shaped phantom folder, and the model it makes run through IPMNRisk
(the assessment, results.csv, the review tools)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import crossvalidate_ipmn
import cyst_x
import train_ipmn
from ipmn_training import fit_class_weights, full_protocol_record, ipmn_protocol_from_arguments
from IPMNRiskLib import cli
from IPMNRiskLib.network import TASKS, task_label
from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
from PancreasAILib.weights import ModelCard
from test_cyst_x import PATIENTS, TINY_RUN, published_two_class_fold, study_name, write_cyst_x_folder

TWO_CLASSES = ["no or low-risk IPMN", "high-risk IPMN"]


@pytest.fixture(scope="module")
def cyst_x_folder(tmp_path_factory) -> Path:
    """18 phantom studies (patient s of risk class s % 3: 6 high-risk) with both published splits."""
    return write_cyst_x_folder(tmp_path_factory.mktemp("cyst-x"))


@pytest.fixture(scope="module")
def two_class_model(cyst_x_folder, tmp_path_factory) -> Path:
    """A 2-class ViT trained for 2 steps on the Cyst-X-shaped folder (its .safetensors)."""
    output = tmp_path_factory.mktemp("two-class") / "ipmn-2-class.safetensors"
    assert train_ipmn.main(["--cyst-x", str(cyst_x_folder), "--task", "2-class", "--inner-folds", "3", *TINY_RUN,
                            "--output", str(output)]) == 0
    return output


def card_of(model: Path) -> dict:
    return json.loads(model.with_suffix(".json").read_text(encoding="utf-8"))


# --- the task's labels and class weights ------------------------------------------------------------

def test_two_class_task_calls_only_high_risk_class_1():
    assert [task_label("2-class", risk) for risk in (0, 1, 2)] == [0, 0, 1]
    assert [task_label("3-class", risk) for risk in (0, 1, 2)] == [0, 1, 2]


def protocol_of(*arguments: str):
    return ipmn_protocol_from_arguments(train_ipmn.build_parser().parse_args([*arguments, "--output", "m"]))


def test_two_class_run_without_class_weights_has_balanced_ones_and_says_why():
    protocol = protocol_of("--task", "2-class")
    assert protocol.class_weights == "balanced"
    assert full_protocol_record(protocol)["origins"]["class_weights"].startswith("balanced for the 2-class task")
    assert protocol_of().class_weights == "1 0.65 0.45"  # the 3-class default is the paper's


def test_three_class_weights_for_the_two_class_task_are_refused_naming_its_classes():
    with pytest.raises(InputError, match="takes two numbers for the 2-class task, one per class "
                                         r"\(no or low-risk IPMN, high-risk IPMN\)"):
        protocol_of("--task", "2-class", "--class-weights", "1", "0.65", "0.45")
    assert protocol_of("--task", "2-class", "--class-weights", "1", "3").class_weights == "1 3"


def test_balanced_weights_of_the_two_class_task_weigh_its_two_classes():
    cases = [type("Case", (), {"label": label})() for label in (0, 0, 0, 1)]
    assert fit_class_weights("balanced", cases, "2-class") == pytest.approx([4 / 6, 2.0])


# --- the published 2-class split -----------------------------------------------------------------------

def test_two_class_task_reads_the_published_two_input_split_by_its_t2_column(cyst_x_folder):
    path = cyst_x.published_split_file(cyst_x_folder, "2-class")
    assert path == cyst_x_folder / "data splits" / "classification" / "2-class" / "two_inputs.csv"
    folds = cyst_x.read_published_folds(path)
    assert folds == {f"{study_name(s)}_t2": str(published_two_class_fold(s)) for s in range(PATIENTS)}
    assert cyst_x.published_split_file(cyst_x_folder).parent.name == "3-class"


def test_folds_of_the_two_class_task_follow_its_published_split_and_classes(cyst_x_folder, tmp_path):
    args = crossvalidate_ipmn.build_parser().parse_args(
        ["--cyst-x", str(cyst_x_folder), "--task", "2-class", "--inner-folds", "2", "--output", str(tmp_path)])
    cases = cyst_x.read_cyst_x(cyst_x_folder).cases
    folds, record = crossvalidate_ipmn.outer_folds(args, cases)
    assert record["file"] == "data splits/classification/2-class/two_inputs.csv"
    fold_of = {cases[int(i)].case_id: fold.number for fold in folds for i in fold.test}
    assert fold_of == {f"{study_name(s)}_t2": published_two_class_fold(s) for s in range(PATIENTS)}


# --- training and cross-validation ------------------------------------------------------------------

@pytest.mark.slow
def test_two_class_training_card_names_the_task_its_classes_and_the_auc(two_class_model):
    card = card_of(two_class_model)
    assert card["classes"] == TWO_CLASSES and "2-class" in card["task"]
    assert card["training"]["protocol"]["task"] == "2-class"
    assert len(card["training"]["protocol"]["class_weights_used"]) == 2
    counts = card["training"]["classes"]
    assert {name: counts["training"][name] + counts["validation"][name] for name in TWO_CLASSES} == \
        {"no or low-risk IPMN": 12, "high-risk IPMN": 6}
    assert 0.0 <= card["metrics"]["validation"]["auc"] <= 1.0


@pytest.mark.slow
def test_two_class_cross_validation_tests_the_published_folds_and_reports_the_binary_auc(cyst_x_folder, tmp_path):
    output = tmp_path / "cv"
    assert crossvalidate_ipmn.main(["--cyst-x", str(cyst_x_folder), "--task", "2-class", "--inner-folds", "2",
                                    "--lr-grid", "0.001", "--bootstrap", "20", *TINY_RUN,
                                    "--output", str(output)]) == 0
    record = json.loads((output / "cv.json").read_text(encoding="utf-8"))
    assert record["task"] == "2-class" and record["protocol"]["task"] == "2-class"
    assert record["outer_folds"]["file"] == "data splits/classification/2-class/two_inputs.csv"
    split = json.loads((output / "split.json").read_text(encoding="utf-8"))["cases"]
    assert {case["case_id"]: case["test_in_outer_fold"] for case in split} == \
        {f"{study_name(s)}_t2": published_two_class_fold(s) for s in range(PATIENTS)}
    predictions = list(csv.DictReader(open(output / "predictions.csv", encoding="utf-8")))
    truth = {f"{study_name(s)}_t2": int(s % 3 == 2) for s in range(PATIENTS)}
    assert {row["case"]: int(row["truth"]) for row in predictions} == truth
    benchmark = json.loads((output / "early-fusion" / "benchmark.json").read_text(encoding="utf-8"))
    assert benchmark["task"] == "2-class" and benchmark["auc"] == "binary, of high-risk IPMN"
    probabilities = np.array([[float(row["p_no or low-risk IPMN"]), float(row["p_high-risk IPMN"])]
                              for row in predictions])
    from sklearn.metrics import roc_auc_score

    labels = [truth[row["case"]] for row in predictions]
    assert benchmark["overall"]["auc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]))


# --- the model in IPMNRisk --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_class_results(two_class_model, small_mr_phantom, tmp_path_factory) -> Path:
    """`ipmn-risk batch` with the 2-class model on one MR phantom case (no TTA): its output folder."""
    folder = tmp_path_factory.mktemp("two-class-batch")
    p = small_mr_phantom
    t1 = write_volume(Volume(p.t1, p.ijk_to_ras), folder / "in" / "p1_t1.nii.gz")
    t2 = write_volume(Volume(p.t2, p.ijk_to_ras), folder / "in" / "p1_t2.nii.gz")
    center, size = (",".join(f"{v:.3f}" for v in values) for values in p.pancreas_box_ras)
    table = folder / "cases.csv"
    with open(table, "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([["case", "t1", "t2", "roi_center", "roi_size"], ["p1", t1, t2, center, size]])
    output = folder / "out"
    assert cli.main(["batch", str(table), "-o", str(output), "--model", str(two_class_model), "--no-tta",
                     "--no-scene", "--device", "cpu"]) == 0
    return output


@pytest.mark.slow
def test_a_two_class_model_gives_two_probabilities_and_a_readable_results_table(two_class_results):
    result = json.loads((two_class_results / "p1_ipmn_result.json").read_text(encoding="utf-8"))
    assert result["task"] == "2-class" and result["class_names"] == TWO_CLASSES
    assert len(result["probabilities"]) == 2 and sum(result["probabilities"]) == pytest.approx(1.0)
    assert result["class_name"] == TWO_CLASSES[int(np.argmax(result["probabilities"]))]
    (row,) = csv.DictReader(open(two_class_results / "results.csv", encoding="utf-8"))
    assert row["task"] == "2-class" and (row["p_normal"], row["p_low_risk"], row["spread_normal"]) == ("", "", "")
    assert float(row["p_high_risk"]) == pytest.approx(result["probabilities"][1], abs=1e-4)
    assert float(row["p_no_or_low_risk"]) == pytest.approx(result["probabilities"][0], abs=1e-4)


@pytest.mark.slow
def test_a_two_class_result_opens_for_review_with_its_two_probabilities(two_class_results, mrml_scene):
    from PancreasAILib import review_scene
    from PancreasAILib.review import open_worklist

    loaded = review_scene.load_case(open_worklist(two_class_results).case("p1"), mrml_scene)
    table = loaded.table.GetTable()
    quantities = [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())]
    assert "P(no or low-risk IPMN)" in quantities and "P(high-risk IPMN)" in quantities
    assert "P(normal)" not in quantities


def test_a_three_class_result_fills_the_three_class_columns_only():
    cells = cli.probability_cells(TASKS["3-class"], [0.2, 0.3, 0.5], [0.01, 0.02, 0.03])
    assert cells == {"task": "3-class", "p_normal": "0.2000", "p_low_risk": "0.3000", "p_high_risk": "0.5000",
                     "spread_normal": "0.0100", "spread_low_risk": "0.0200", "spread_high_risk": "0.0300"}
    assert set(cells) <= set(cli.RESULT_COLUMNS)


def test_a_card_of_unknown_classes_is_refused_before_the_images_are_looked_at(random_vit_card, small_mr_phantom):
    from IPMNRiskLib.inference import RegionBox, assess

    card = ModelCard(random_vit_card.card_path, {**random_vit_card.data, "classes": ["benign", "malignant"]})
    p = small_mr_phantom
    same = Volume(p.t2, p.ijk_to_ras)  # would be refused as T1 = T2, were the card looked at later
    with pytest.raises(ModelFileError, match=r"lists the classes benign, malignant, which are not those of an "
                                             r"IPMN risk task \(3-class: .*; 2-class: no or low-risk IPMN"):
        assess(same, same, RegionBox(*p.pancreas_box_ras), card, tta=False)


# --- review ----------------------------------------------------------------------------------------

def write_two_class_result(folder: Path, tmp_path: Path) -> None:
    """A result as ipmn-risk writes it for a 2-class model (files faked but present)."""
    for name in ("p1_t2.nii.gz", "p1_ipmn_heatmap.nrrd"):
        (folder / name).write_bytes(b"")
    record = {"case": "p1", "task": "2-class", "risk_class": 0, "class_name": "no or low-risk IPMN",
              "class_names": TWO_CLASSES, "probabilities": [0.7, 0.3], "spread": [0.05, 0.05], "model": "m",
              "model_sha256": "0" * 64, "t2": str(folder / "p1_t2.nii.gz"),
              "heat_map": str(folder / "p1_ipmn_heatmap.nrrd")}
    (folder / "p1_ipmn_result.json").write_text(json.dumps(record), encoding="utf-8")


def test_a_two_class_result_is_reviewed_with_the_classes_of_its_task(tmp_path):
    from PancreasAILib.review import ReviewError, Verdict, open_worklist, record_verdict

    write_two_class_result(tmp_path, tmp_path)
    worklist = open_worklist(tmp_path)
    (case,) = worklist.cases
    assert case.reviewable and case.class_names == tuple(TWO_CLASSES)
    assert case.summary == "no or low-risk IPMN (no or low-risk IPMN 0.70+-0.05, high-risk IPMN 0.30+-0.05)"
    stored = record_verdict(worklist, Verdict("Dr A", "p1", "ipmn", "disagree", reviewer_class="high-risk IPMN"))
    assert (stored.model_class, stored.reviewer_class) == ("no or low-risk IPMN", "high-risk IPMN")
    with pytest.raises(ReviewError, match="one of no or low-risk IPMN, high-risk IPMN"):
        record_verdict(worklist, Verdict("Dr A", "p1", "ipmn", "disagree", reviewer_class="normal"))


def test_the_review_agreement_of_a_two_class_model_has_two_by_two_matrices(tmp_path):
    import evaluate_review
    from PancreasAILib.review import Verdict, open_worklist, record_verdict

    write_two_class_result(tmp_path, tmp_path)
    record_verdict(open_worklist(tmp_path), Verdict("Dr A", "p1", "ipmn", "disagree", reviewer_class="high-risk IPMN"))
    review = evaluate_review.review_agreement([tmp_path / "review.csv"], resamples=10, seed=0)
    assert review.classes == tuple(TWO_CLASSES) and review.with_model[0].confusion.tolist() == [[0, 0], [1, 0]]
    assert "| **high-risk IPMN** | 1 | 0 |" in evaluate_review.markdown_report(review, 10, 0)


# --- converting a checkpoint -------------------------------------------------------------------------

def test_a_converted_two_output_checkpoint_gets_the_two_class_card_and_the_same_logits(tmp_path, capsys):
    import torch

    import convert_checkpoint
    from IPMNRiskLib.network import create_vit, load_vit
    from IPMNRiskLib.registry import model_registry

    params = {"depth": 1, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(0)
    original = create_vit("vit_tiny_patch16_224", params, num_classes=2).eval()
    checkpoint = tmp_path / "ipmn.pt"
    torch.save(original.state_dict(), checkpoint)
    arguments = [str(checkpoint), "--architecture", "vit_tiny_patch16_224", "--architecture-params", json.dumps(params)]
    assert convert_checkpoint.main([*arguments, "--task", "3-class", "--output", str(tmp_path / "wrong")]) == 2
    assert "--task 3-class has 3 classes, but the checkpoint's classifier has 2 outputs" in capsys.readouterr().err
    assert convert_checkpoint.main([*arguments, "--output", str(tmp_path / "ipmn.safetensors")]) == 0
    card = model_registry().resolve(tmp_path / "ipmn.safetensors")
    assert card.classes == TWO_CLASSES and "2-class" in card.data["task"]
    grids = torch.rand(2, 2, 192, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_vit(card)(grids), original(grids))
