"""train_ipmn.py and crossvalidate_ipmn.py on tiny synthetic data: the exported card is one
IPMNRisk loads and runs, nested folds keep patients together and classes stratified, the
ablations and CNN baselines train, Grad-CAM maps are written, bad cohort rows are named, a
resumed run is the uninterrupted run, and torchrun with two CPU processes writes the same card."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import key_structure, run_torchrun

import crossvalidate_ipmn
import train_ipmn
from ipmn_data import PreparedCase, central_samples, parse_label, read_cohort_csv, training_samples
from ipmn_folds import holdout_split, nested_folds
from ipmn_networks import BASELINES, Pretrained, build_network, gradcam_maps
from IPMNRiskLib.grids import central_window
from IPMNRiskLib.inference import RegionBox, assess
from IPMNRiskLib.registry import model_registry
from PancreasAIPhantoms.mr import make_mr_phantom
from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume

TRAIN_SCRIPT = Path(train_ipmn.__file__)
TINY_VIT_PARAMS = {"depth": 1, "embed_dim": 48, "num_heads": 3}
TINY_VIT = ["--architecture", "vit_tiny_patch16_224", "--architecture-params", json.dumps(TINY_VIT_PARAMS)]
PHANTOM_SHAPE, PHANTOM_SPACING = (12, 64, 64), (3.5, 3.5, 5.0)
TINY_PHANTOMS = ["--phantom-shape", *map(str, PHANTOM_SHAPE), "--phantom-spacing", *map(str, PHANTOM_SPACING)]
TINY_RUN = [*TINY_VIT, "--batch-size", "2", "--eval-every", "2", "--device", "cpu"]
# 2 phantom patients for training and 1 for validation, each with all three classes.
TINY_TRAIN = ["--patients", "2", "--val-patients", "1", *TINY_PHANTOMS, *TINY_RUN]
# One learning rate in the grid: 2 inner runs and a refit per fold (test_ipmn_protocol.py tries more).
TINY_CV = ["--phantoms", "4", "--folds", "2", "--inner-folds", "2", *TINY_PHANTOMS, *TINY_RUN, "--steps", "2",
           "--lr-grid", "0.003"]


def train(*arguments) -> int:
    return train_ipmn.main([str(a) for a in arguments])


def crossvalidate(*arguments) -> int:
    return crossvalidate_ipmn.main([str(a) for a in arguments])


def card_of(output: Path) -> dict:
    return json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))


def log_of(output: Path) -> str:
    return (output.with_suffix(".run") / "train.log").read_text(encoding="utf-8")


def phantom_volumes(seed: int, risk_class: int):
    phantom = make_mr_phantom(seed, risk_class, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING)
    return (Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras),
            RegionBox(*phantom.pancreas_box_ras), phantom)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    """A 2-step training on phantoms; returns its output path (without suffix)."""
    output = tmp_path_factory.mktemp("phantom_run") / "ipmn"
    assert train(*TINY_TRAIN, "--steps", "2", "--output", output) == 0
    return output


def write_cohort(folder: Path, patients: int = 2) -> Path:
    """A cohort CSV of phantom NIfTI files: every patient with the three classes; the scans of
    the first patient give their region as a mask, the others as centre and size."""
    rows = []
    for seed in range(patients):
        for risk_class in range(3):
            t1, t2, region, phantom = phantom_volumes(seed, risk_class)
            name = f"p{seed}-c{risk_class}"
            write_volume(t1, folder / "images" / f"{name}_t1.nii.gz")
            write_volume(t2, folder / "images" / f"{name}_t2.nii.gz")
            row = {"patient": f"P{seed}", "case": name, "t1": f"images/{name}_t1.nii.gz",
                   "t2": f"images/{name}_t2.nii.gz", "label": ["normal", "1", "high-risk IPMN"][risk_class],
                   "roi_center": "", "roi_size": "", "roi_mask": ""}
            if seed == 0:
                write_volume(Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras),
                             folder / "images" / f"{name}_pancreas.nii.gz")
                row["roi_mask"] = f"images/{name}_pancreas.nii.gz"
            else:
                row["roi_center"] = ",".join(f"{v:.2f}" for v in region.center_ras)
                row["roi_size"] = ",".join(f"{v:.2f}" for v in region.size_mm)
            rows.append(row)
    return write_rows(folder / "cohort.csv", rows)


def write_rows(path: Path, rows: list) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """Nested cross-validation of early fusion and ResNet18 on phantoms; returns the output folder."""
    output = tmp_path_factory.mktemp("cv") / "cv"
    assert crossvalidate(*TINY_CV, "--methods", "early-fusion", "resnet18", "--gradcam-cases", "2",
                         "--output", output) == 0
    return output


# --- the exported model ---------------------------------------------------------------------------

def test_exported_card_is_loaded_by_ipmnrisk_and_assess_runs(phantom_run):
    card = model_registry().resolve(phantom_run.with_suffix(".safetensors"))
    t1, t2, region, _ = phantom_volumes(500, 2)
    assessment = assess(t1, t2, region, card, tta=False)
    assert assessment.risk_class in (0, 1, 2)
    assert assessment.probabilities.sum() == pytest.approx(1.0)
    assert assessment.heat_map.shape == t2.shape


def test_card_records_protocol_data_hash_and_metrics(phantom_run):
    card = card_of(phantom_run)
    protocol = card["training"]["protocol"]
    assert protocol["learning_rate"] == 0.003 and protocol["optimizer"] == "Adam"
    assert protocol["preset"] == "paper" and protocol["class_weights"] == "1 0.65 0.45"
    assert protocol["class_weights_used"] == [1.0, 0.65, 0.45]
    assert protocol["checkpoint_selection"] == "best validation balanced accuracy"
    assert card["preprocessing"]["normalisation"] == "volume_min_max"
    assert len(card["training"]["data_sha256"]) == 64
    assert card["training"]["cases"] == {"training": 6, "validation": 3}
    assert set(card["metrics"]["validation"]) >= {"accuracy", "macro_precision", "macro_recall", "balanced_accuracy"}
    assert card["architecture_params"] == TINY_VIT_PARAMS
    assert card["preprocessing"]["n4_bias_correction"] is False
    assert "--patients 2" in card["training"]["command"]


def test_run_writes_a_readable_log_curves_and_a_checkpoint(phantom_run):
    assert "IPMN ViT step 2: train loss" in log_of(phantom_run)
    curves = (phantom_run.with_suffix(".run") / "curves.csv").read_text(encoding="utf-8").splitlines()
    assert curves[0].startswith("step,train_loss,val_accuracy")
    assert len(curves) == 2
    assert (phantom_run.with_suffix(".run") / "checkpoints" / "epoch-0002.json").exists()


def test_documented_demo_command_keeps_its_meaning():
    from ipmn_training import ipmn_protocol_from_arguments

    args = train_ipmn.build_parser().parse_args(
        "--patients 60 --val-patients 20 --steps 2500 --eval-every 100 --lr 0.0003 --class-weights 1 1 1 "
        "--window-jitter 2 --lr-schedule warmup-cosine --output demo".split())
    protocol = ipmn_protocol_from_arguments(args)
    assert (args.patients, args.val_patients, protocol.steps, protocol.eval_every) == (60, 20, 2500, 100)
    assert (protocol.learning_rate, protocol.class_weights, protocol.window_jitter) == (0.0003, "1 1 1", 2)
    assert protocol.lr_schedule == "warmup-cosine"
    assert args.cohort is None and args.architecture is None and protocol.batch_size == 8
    # the paper's preset, whose normalisation is not the shipped demo ViT's (crop_stack_min_max)
    assert protocol.preset == "paper" and protocol.normalisation == "volume_min_max"


def test_cohort_csv_trains_with_the_papers_preprocessing_that_assess_repeats(cohort_csv, tmp_path):
    output = tmp_path / "ipmn-cohort"
    assert train("--cohort", cohort_csv, "--inner-folds", "2", *TINY_RUN, "--steps", "2", "--output", output) == 0
    card = card_of(output)
    preprocessing = card["preprocessing"]
    assert preprocessing["n4_bias_correction"]["shrink_factor"] == 4
    assert len(preprocessing["standardisation"]["t2_landmarks"]) == len(preprocessing["standardisation"]["percentiles"])
    assert card["training"]["cases"] == {"training": 3, "validation": 3}
    assert (tmp_path / "ipmn-cache").is_dir()
    row = read_rows(cohort_csv)[4]
    t1, t2, region, _ = phantom_volumes(1, 1)
    assert row["case"] == "p1-c1"
    assessment = assess(t1, t2, region, model_registry().resolve(output.with_suffix(".json")), tta=False, rollout=False)
    assert assessment.probabilities.shape == (3,)


def test_card_carries_the_cross_validation_estimate(cv_run, tmp_path):
    output = tmp_path / "ipmn"
    assert train(*TINY_TRAIN, "--steps", "2", "--cv-results", cv_run, "--output", output) == 0
    estimate = card_of(output)["metrics"]["cross_validation"]
    assert estimate["outer_folds"] == 2 and len(estimate["per_fold"]) == 2
    assert set(estimate["summary"]["accuracy"]) == {"mean", "sd"}


def test_pretrained_file_starts_every_vit_from_its_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    natural = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT_PARAMS)
    path = tmp_path / "natural.safetensors"
    save_file({k: v.contiguous() for k, v in natural.state_dict().items()}, str(path))
    expected = natural.state_dict()["blocks.0.attn.qkv.weight"]
    early = build_network("early-fusion", "vit_tiny_patch16_224", TINY_VIT_PARAMS, Pretrained(file=path))
    late = build_network("late-fusion", "vit_tiny_patch16_224", TINY_VIT_PARAMS, Pretrained(file=path))
    assert torch.equal(early.state_dict()["blocks.0.attn.qkv.weight"], expected)
    assert torch.equal(late.state_dict()["t1_encoder.blocks.0.attn.qkv.weight"], expected)
    assert torch.equal(late.state_dict()["t2_encoder.blocks.0.attn.qkv.weight"], expected)


# --- resume ------------------------------------------------------------------------------------------

def checkpoint_tensors(output: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output.with_suffix(".run") / "checkpoints" / f"epoch-{step:04d}.safetensors"))


def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(tmp_path):
    uninterrupted, resumed = tmp_path / "whole" / "ipmn", tmp_path / "parts" / "ipmn"
    assert train(*TINY_TRAIN, "--steps", "4", "--output", uninterrupted) == 0
    assert train(*TINY_TRAIN, "--steps", "2", "--output", resumed) == 0
    assert train(*TINY_TRAIN, "--steps", "4", "--output", resumed, "--resume") == 0
    assert "resuming after step 2" in log_of(resumed)
    whole, parts = checkpoint_tensors(uninterrupted, 4), checkpoint_tensors(resumed, 4)
    assert whole.keys() == parts.keys()
    assert [key for key in whole if not torch.equal(whole[key], parts[key])] == []
    assert [row["step"] for row in card_of(resumed)["history"]] == [2, 4]


def test_resume_refuses_a_checkpoint_made_with_other_settings(phantom_run, tmp_path):
    output = tmp_path / "ipmn"
    assert train(*TINY_TRAIN, "--steps", "2", "--output", output) == 0
    assert train(*TINY_TRAIN, "--steps", "4", "--lr", "0.001", "--output", output, "--resume") == 2
    assert "protocol.learning_rate: 0.003 -> 0.001" in log_of(output)


def test_resumed_cross_validation_keeps_finished_folds(cv_run):
    result = cv_run / "early-fusion" / "fold-01" / "result.json"
    before = result.read_text(encoding="utf-8")
    assert crossvalidate(*TINY_CV, "--methods", "early-fusion", "resnet18", "--gradcam-cases", "2",
                         "--output", cv_run, "--resume") == 0
    assert result.read_text(encoding="utf-8") == before
    assert "early-fusion fold 1: done earlier" in (cv_run / "cv.log").read_text(encoding="utf-8")


# --- nested cross-validation -------------------------------------------------------------------------

def random_cohort(rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """30-80 patients with 1-3 scans each, most scans of a patient in one class."""
    n_patients = int(rng.integers(30, 80))
    scans = rng.integers(1, 4, n_patients)
    patient_class = rng.choice(3, n_patients, p=[0.4, 0.35, 0.25])
    labels, patients = [], []
    for patient, (count, label) in enumerate(zip(scans, patient_class)):
        for _ in range(count):
            labels.append(int(label) if rng.random() < 0.8 else int(rng.integers(3)))
            patients.append(f"patient-{patient}")
    return labels, patients


def assert_partition_by_patient(folds: list[np.ndarray], cases: np.ndarray, patients: list[str]) -> None:
    """The folds hold every case of `cases` once, and no patient is in two folds."""
    assert np.array_equal(np.sort(np.concatenate(folds)), np.sort(cases))
    owners = {}
    for number, fold in enumerate(folds):
        for index in fold:
            assert owners.setdefault(patients[index], number) == number


def assert_stratified(folds: list[np.ndarray], labels: np.ndarray, max_scans: int) -> None:
    """Each fold's count of each class is within one patient's scans of its share."""
    total = np.concatenate(folds)
    for fold in folds:
        for label in range(3):
            share = np.sum(labels[total] == label) / len(folds)
            assert abs(np.sum(labels[fold] == label) - share) <= max_scans


@pytest.mark.parametrize("trial", range(6))
def test_nested_folds_keep_patients_together_and_classes_stratified(trial):
    rng = np.random.default_rng(trial)
    labels, patients = random_cohort(rng)
    folds, inner = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    try:
        outer = nested_folds(labels, patients, folds, inner, seed=trial)
    except InputError:  # a cohort too small for these folds is refused, not split badly
        pytest.skip("cohort refused")
    labels = np.asarray(labels)
    max_scans = max(patients.count(p) for p in set(patients))
    assert_partition_by_patient([fold.test for fold in outer], np.arange(len(labels)), patients)
    assert_stratified([fold.test for fold in outer], labels, max_scans)
    for fold in outer:
        rest = np.setdiff1d(np.arange(len(labels)), fold.test)
        validations = [validation for _, validation in fold.inner]
        assert_partition_by_patient(validations, rest, patients)
        assert_stratified(validations, labels, max_scans)
        for train, validation in fold.inner:
            assert np.array_equal(np.sort(np.concatenate([train, validation])), rest)
            assert not {patients[i] for i in train} & {patients[i] for i in validation}
        assert set(np.unique(labels[fold.test])) == {0, 1, 2}


def test_nested_folds_are_fixed_by_the_seed():
    labels, patients = random_cohort(np.random.default_rng(7))
    first, again = nested_folds(labels, patients, 3, 2, seed=1), nested_folds(labels, patients, 3, 2, seed=1)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.validation, b.validation)
               for a, b in zip(first, again))


def test_too_few_patients_of_a_class_for_the_folds_is_refused_naming_the_class():
    labels = [0] * 6 + [1] * 6 + [2] * 2
    patients = [f"p{i}" for i in range(14)]
    with pytest.raises(InputError, match="3 patients with high-risk IPMN.*there are 2"):
        nested_folds(labels, patients, 3, 2)


def test_class_sizes_count_patients_not_their_scans():
    # 2 high-risk patients with 2 scans each: 4 scans, but only 2 patients for 3 folds
    labels = [0] * 6 + [1] * 6 + [2] * 4
    patients = [f"p{i}" for i in range(12)] + ["h1", "h1", "h2", "h2"]
    with pytest.raises(InputError, match="3 patients with high-risk IPMN.*there are 2"):
        nested_folds(labels, patients, 3, 2)
    with pytest.raises(InputError, match="3 patients with high-risk IPMN.*there are 2"):
        holdout_split(labels, patients, 3)


def test_a_class_missing_inside_an_outer_fold_is_refused_naming_the_fold():
    patients = ["A"] * 5 + ["B"] * 5 + ["C", "D", "E", "E"]
    labels = [0, 0, 0, 0, 2, 1, 1, 1, 1, 2, 0, 1, 0, 1]
    with pytest.raises(InputError, match="outer fold 1"):
        nested_folds(labels, patients, 2, 2)


def test_holdout_split_keeps_patients_on_one_side():
    labels, patients = random_cohort(np.random.default_rng(3))
    train, validation = holdout_split(labels, patients, 5, seed=0)
    assert not {patients[i] for i in train} & {patients[i] for i in validation}
    assert len(train) + len(validation) == len(labels)


def test_cross_validation_writes_per_fold_and_summary_tables(cv_run):
    folds = read_rows(cv_run / "early-fusion" / "folds.csv")
    assert [row["fold"] for row in folds] == ["1", "2", "mean", "sd"]
    table = (cv_run / "results.md").read_text(encoding="utf-8")
    assert "| ViT, early fusion" in table and "| ResNet18 |" in table and " +- " in table
    summary = json.loads((cv_run / "cv.json").read_text(encoding="utf-8"))
    assert summary["protocol"]["learning_rate_grid"] == [0.003] and summary["folds"] == 2
    assert summary["inner_selection"] == "grid" and summary["trainings_per_method"] == 2 * (1 * 2 + 1)
    assert list(folds[0])[-2:] == ["learning_rate", "steps"] and folds[0]["steps"] == "2"
    predictions = read_rows(cv_run / "predictions.csv")
    assert len(predictions) == 2 * 12  # two methods, every case tested once


def test_every_case_is_tested_exactly_once(cv_run):
    split = json.loads((cv_run / "split.json").read_text(encoding="utf-8"))["cases"]
    tested = [row["case"] for row in read_rows(cv_run / "predictions.csv") if row["method"] == "early-fusion"]
    assert sorted(tested) == sorted(case["case_id"] for case in split)


def test_cnn_baseline_writes_gradcam_maps_of_test_cases(cv_run):
    from PIL import Image

    maps = sorted((cv_run / "resnet18" / "gradcam").glob("fold-*/*.png"))
    assert len(maps) == 4  # two test cases in each of two folds
    assert Image.open(maps[0]).size == (2 * 2 * 192, 2 * 192 + 22)
    assert not (cv_run / "early-fusion" / "gradcam").exists()


def test_finished_folds_drop_their_checkpoints(cv_run):
    assert not (cv_run / "early-fusion" / "fold-01" / "checkpoints").exists()


# --- networks -----------------------------------------------------------------------------------------

def one_training_step(network) -> tuple:
    """(logits shape, names of the parameters one Adam step left unchanged)."""
    torch.manual_seed(0)
    grids = torch.rand(2, 2, 192, 192)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    logits = network(grids)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    optimizer.step()
    unchanged = [name for name, p in network.named_parameters() if torch.equal(before[name], p)]
    return logits.shape, unchanged


@pytest.mark.parametrize("method", ["t1-only", "t2-only", "late-fusion"])
def test_ablation_builds_and_trains_every_parameter_in_a_step(method):
    # Adam moves every parameter that has a gradient by about lr: one left unchanged is a part
    # of the network (e.g. late fusion's T2 encoder) that the loss never reaches
    network = build_network(method, "vit_tiny_patch16_224", TINY_VIT_PARAMS)
    shape, unchanged = one_training_step(network)
    assert shape == (2, 3) and unchanged == []


@pytest.mark.parametrize("method, ignored_channel", [("t1-only", 1), ("t2-only", 0)])
def test_one_channel_vit_sees_only_its_sequence(method, ignored_channel):
    network = build_network(method, "vit_tiny_patch16_224", TINY_VIT_PARAMS).eval()
    grids = torch.rand(1, 2, 192, 192)
    other = grids.clone()
    other[:, ignored_channel] = torch.rand(192, 192)
    with torch.no_grad():
        assert torch.equal(network(grids), network(other))


def test_late_fusion_joins_both_class_tokens_in_one_linear_head():
    network = build_network("late-fusion", "vit_tiny_patch16_224", TINY_VIT_PARAMS)
    assert network.head.in_features == 2 * TINY_VIT_PARAMS["embed_dim"]
    assert network.t1_encoder.patch_embed.proj.in_channels == 1


@pytest.mark.parametrize("method", BASELINES)
def test_cnn_baseline_takes_two_channels_and_gives_three_classes(method):
    network = build_network(method).eval()
    torch.manual_seed(0)
    grids = torch.rand(1, 2, 192, 192).repeat(3, 1, 1, 1)
    grids[1, 0] = torch.rand(192, 192)  # another T1
    grids[2, 1] = torch.rand(192, 192)  # another T2
    with torch.no_grad():
        logits = network(grids)
    assert logits.shape == (3, 3)
    # both sequences reach the decision
    assert not torch.allclose(logits[1], logits[0]) and not torch.allclose(logits[2], logits[0])


def resnet18_explaining_class_0_by_its_evidence():
    """ResNet18 whose class 0 logit is the mean of all its last-layer features, class 1 their
    negative, class 2 zero. On a zero background (no biases before the head, BatchNorm at its
    initial identity statistics) the features are non-zero only near bright input."""
    torch.manual_seed(1)
    network = build_network("resnet18")
    head = network.get_classifier()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0] = 1.0
        head.weight[1] = -1.0
    return network


def test_gradcam_peaks_where_the_evidence_for_the_class_is():
    network = resnet18_explaining_class_0_by_its_evidence()
    grids = np.zeros((2, 2, 192, 192), np.float32)
    centres = [(144, 48), (48, 112)]  # (row, column) of a bright 32 x 32 square, away from the diagonal
    for grid, (row, column) in zip(grids, centres):
        grid[:, row - 16:row + 16, column - 16:column + 16] = 1.0
    maps = gradcam_maps(network, "resnet18", grids)  # the predicted class: 0
    for cam, centre in zip(maps, centres):
        peak = np.unravel_index(np.argmax(cam), cam.shape)
        # layer4 has one feature per 32 x 32 pixels: the peak is on the square's cell or next to it
        assert np.max(np.abs(np.subtract(peak, centre))) <= 32, f"peak {peak}, evidence at {centre}"
        near = cam[centre[0] - 32:centre[0] + 32, centre[1] - 32:centre[1] + 32].sum() / cam.sum()
        assert near > 0.3  # a ninth of the grid holds well over a ninth of the map
    # class 1 counts these features against itself: no evidence for it anywhere
    assert np.all(gradcam_maps(network, "resnet18", grids, classes=[1, 1]) == 0)


def test_gradcam_maps_cover_the_grid_in_unit_range():
    network = build_network("alexnet")
    maps = gradcam_maps(network, "alexnet", np.random.default_rng(0).random((2, 2, 192, 192), dtype=np.float32))
    assert maps.shape == (2, 192, 192) and maps.min() >= 0 and maps.max() <= 1


# --- data ---------------------------------------------------------------------------------------------

def stack_case(n_slices: int) -> PreparedCase:
    stack = np.zeros((n_slices, 64, 64), np.float32)
    return PreparedCase("c", "p", 1, stack, stack, "0" * 64)


def test_training_uses_every_sliding_window_and_validation_the_inference_window():
    case = stack_case(14)
    assert training_samples([case], -1).index[:, 1].tolist() == [0, 1, 2, 3, 4, 5]
    assert central_samples([case]).index[0, 1] == central_window(14)[0]


@pytest.mark.parametrize("text, label", [("0", 0), ("normal", 0), ("Low-risk IPMN", 1), ("low_risk", 1),
                                         ("2", 2), ("HIGH-RISK IPMN", 2), ("1.0", 1)])
def test_labels_are_numbers_or_class_names(text, label):
    assert parse_label(text) == label


def test_cohort_csv_paths_are_relative_to_the_csv(cohort_csv):
    cases = read_cohort_csv(cohort_csv)
    assert len(cases) == 6
    assert cases[0].t1 == cohort_csv.parent / "images" / "p0-c0_t1.nii.gz"
    assert cases[0].roi_mask is not None and cases[3].region is not None
    assert [c.label for c in cases[:3]] == [0, 1, 2]


def broken_cohort(cohort_csv: Path, tmp_path: Path, change) -> Path:
    rows = read_rows(cohort_csv)
    for row in rows:
        for key in ("t1", "t2", "roi_mask"):
            if row[key]:
                row[key] = str(cohort_csv.parent / row[key])
    change(rows)
    return write_rows(tmp_path / "broken.csv", rows)


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[4].update(label=""), r"Row 6 \(case p1-c1\): no label"),
    (lambda rows: rows[4].update(label="cancer"), r"Row 6 \(case p1-c1\): the label 'cancer'"),
    (lambda rows: rows[4].update(t2="missing.nii.gz"), r"Row 6 \(case p1-c1\): the T2 file .*does not exist"),
    (lambda rows: rows[4].update(roi_mask=rows[0]["roi_mask"]), r"Row 6 \(case p1-c1\): give the region either"),
    (lambda rows: rows[4].update(roi_size="30,30"), r"Row 6 \(case p1-c1\): roi_size '30,30'"),
])
def test_bad_cohort_row_is_refused_naming_it(cohort_csv, tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        read_cohort_csv(broken_cohort(cohort_csv, tmp_path, change))


def test_unreadable_image_stops_training_naming_the_case(cohort_csv, tmp_path):
    broken = tmp_path / "garbage_t1.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    csv_path = broken_cohort(cohort_csv, tmp_path, lambda rows: rows[5].update(t1=str(broken)))
    output = tmp_path / "ipmn"
    assert train("--cohort", csv_path, "--inner-folds", "2", "--preprocessing", "none", *TINY_RUN,
                 "--steps", "2", "--output", output) == 2
    assert "Case p1-c2 (CSV row 7): the T1 file could not be read" in log_of(output)


def test_t1_and_t2_that_do_not_overlap_are_refused_naming_the_case(cohort_csv, tmp_path):
    from ipmn_data import StackCache, prepare_cases

    t1, _, _, _ = phantom_volumes(1, 0)
    shifted = t1.ijk_to_ras.copy()
    shifted[:3, 3] += 1000.0
    write_volume(Volume(t1.array, shifted), tmp_path / "far_t1.nii.gz")
    csv_path = broken_cohort(cohort_csv, tmp_path, lambda rows: rows[3].update(t1=str(tmp_path / "far_t1.nii.gz")))
    with pytest.raises(InputError, match="Case p1-c0: the T1 and T2 volumes do not overlap"):
        prepare_cases(read_cohort_csv(csv_path), {}, StackCache(None), show_progress=False)


# --- several processes --------------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_writes_a_card_with_the_same_fields(phantom_run, tmp_path):
    output = tmp_path / "ipmn-ddp"
    completed = run_torchrun(TRAIN_SCRIPT, *TINY_TRAIN, "--steps", "2", "--output", str(output))
    assert completed.returncode == 0, completed.stderr[-3000:]
    card = card_of(output)
    assert key_structure(card) == key_structure(card_of(phantom_run))
    assert card["training"]["hardware"]["processes"] == 2
    assert card["training"]["hardware"]["backend"] == "gloo"


def test_training_can_start_from_an_earlier_model(phantom_run, tmp_path):
    """--initial-weights: the run starts from the given model, and the card says which."""
    from safetensors.torch import load_file

    start = card_of(phantom_run)
    output = tmp_path / "continued"
    assert train(*TINY_TRAIN, "--steps", "1", "--lr", "1e-12", "--output", output,
                 "--initial-weights", phantom_run.with_suffix(".safetensors")) == 0
    assert card_of(output)["training"]["initial_weights"] == {"name": start["name"], "sha256": start["sha256"]}
    before = load_file(str(phantom_run.with_suffix(".safetensors")))
    after = load_file(str(output.with_suffix(".safetensors")))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[key], after[key], atol=1e-6) for key in before)


def test_initial_weights_of_another_size_or_with_pretrained_weights_are_refused(phantom_run, tmp_path, caplog):
    other_size = ["--architecture-params", json.dumps({**TINY_VIT_PARAMS, "depth": 2})]
    weights = str(phantom_run.with_suffix(".safetensors"))
    assert train(*TINY_TRAIN, *other_size, "--steps", "1", "--output", tmp_path / "a", "--initial-weights", weights) == 2
    assert "do not fit" in caplog.text, caplog.text
    assert train(*TINY_TRAIN, "--steps", "1", "--output", tmp_path / "b", "--initial-weights", weights,
                 "--pretrained-file", weights) == 2
    assert "not both" in caplog.text


def test_missing_initial_weights_file_is_refused_before_any_output(tmp_path, caplog):
    output = tmp_path / "ipmn"
    assert train(*TINY_TRAIN, "--steps", "1", "--output", output,
                 "--initial-weights", tmp_path / "absent.safetensors") == 2
    assert "absent" in caplog.text
    assert not output.with_suffix(".safetensors").exists()
    assert not (tmp_path / "ipmn.run" / "data.json").exists()


def test_bf16_mixed_precision_trains_close_to_fp32_and_is_recorded(tmp_path):
    """--precision bf16 moves the ViT's weights as fp32 does, not identically, and the card says so."""
    from safetensors.torch import load_file

    runs = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / precision
        assert train(*TINY_TRAIN, "--steps", "3", "--precision", precision, "--output", output) == 0
        assert card_of(output)["training"]["protocol"]["precision"] == precision
        runs[precision] = load_file(str(output.with_suffix(".safetensors")))
    weights = [key for key in runs["fp32"] if key.endswith("qkv.weight")]
    moved = [float((runs["bf16"][key] - runs["fp32"][key]).norm() / runs["fp32"][key].norm()) for key in weights]
    assert max(moved) > 0
    assert np.median(moved) < 0.05


def test_warmup_cosine_schedule_rises_then_decays_to_zero():
    from ipmn_training import learning_rate_factor

    steps = 1000
    factors = [learning_rate_factor("warmup-cosine", step, steps) for step in range(1, steps + 1)]
    warmup = steps // 20
    assert factors[0] == pytest.approx(1 / warmup)
    assert factors[warmup - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert factors[-1] < 1e-4
    assert all(learning_rate_factor("constant", step, steps) == 1.0 for step in (1, 500, 1000))


def test_nested_folds_default_to_seed_0_and_another_seed_gives_other_folds():
    labels, patients = random_cohort(np.random.default_rng(7))
    default, seed_0, seed_1 = (nested_folds(labels, patients, 3, 2, **seed) for seed in ({}, {"seed": 0}, {"seed": 1}))
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.validation, b.validation)
               for a, b in zip(default, seed_0))
    assert not all(np.array_equal(a.test, b.test) for a, b in zip(seed_0, seed_1))


def test_holdout_split_is_the_cross_validations_inner_split_and_fixed_by_the_seed():
    """A final model is selected as inside the cross-validation: the holdout split of the cases
    outside outer fold n, with the seed that fold's inner level uses, is that fold's inner fold 1."""
    labels, patients = random_cohort(np.random.default_rng(3))
    labels = np.asarray(labels)
    for fold in nested_folds(labels, patients, 3, 3, seed=4):
        rest = np.setdiff1d(np.arange(len(labels)), fold.test)
        train, validation = holdout_split(labels[rest], [patients[i] for i in rest], 3, seed=4 + fold.number)
        assert np.array_equal(rest[train], fold.train) and np.array_equal(rest[validation], fold.validation)
    default, seed_0 = holdout_split(labels, patients, 3), holdout_split(labels, patients, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(default, seed_0))


def test_group_folds_keep_sklearns_small_class_warning_to_themselves():
    from ipmn_folds import group_folds

    labels = [0] * 6 + [1] * 6 + [2]  # one high-risk scan for 3 folds: the callers name the fold instead
    patients = [f"p{i}" for i in range(13)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = group_folds(np.asarray(labels), patients, 3, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(13))


def test_refusals_say_which_split_needs_more_patients_of_a_class():
    labels, patients = [0] * 6 + [1] * 6 + [2] * 2, [f"p{i}" for i in range(14)]
    needs = "split into 3 folds needs at least 3 patients with high-risk IPMN, one per fold; there are 2"
    with pytest.raises(InputError, match=f"^The outer {needs}"):
        nested_folds(labels, patients, 3, 2)
    with pytest.raises(InputError, match=f"^The validation {needs}"):
        holdout_split(labels, patients, 3)


ADVICE = ("patients with several scans or few patients of a class keep the 2 folds from all holding every "
          "class. Use fewer folds (--folds / --inner-folds) or another --seed.")


@pytest.mark.parametrize("split, labels, patients, message", [
    (nested_folds, [2, 2, 2, 1, 0, 0, 1, 0, 2, 2], "AAABCCDDEF", "Outer fold 1 (test set) has no case of normal"),
    (nested_folds, [2, 1, 0, 2, 1, 1, 2, 0, 0, 0], "ABCCCDDEEF",
     "Outer fold 1, inner fold 1 (validation set) has no case of high-risk IPMN"),
    (nested_folds, [0, 0, 1, 1, 2, 2, 0, 2, 0, 2, 1], "ABBCCCDEEFF",
     "Outer fold 1, inner fold 1 (training set) has no case of normal"),
    (holdout_split, [2, 2, 2, 1, 0, 0, 1, 0, 2, 2], "AAABCCDDEF", "The validation set has no case of normal"),
    (holdout_split, [0, 1, 2, 2, 2, 1, 0, 1], "ABBCDEEF", "The training set has no case of low-risk IPMN"),
])
def test_a_split_without_every_class_is_refused_naming_the_set_and_the_class(split, labels, patients, message):
    """Two patients per class pass the class-size check for 2 folds, but patients with scans of
    several classes leave one set without a class (found by trying small cohorts, seed 0)."""
    args = (2, 2) if split is nested_folds else (2,)
    with pytest.raises(InputError) as refusal:
        split(labels, list(patients), *args)
    assert str(refusal.value) == f"{message}: {ADVICE}"
