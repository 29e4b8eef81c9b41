"""evaluate_segmentation.py end to end: folders of predictions and model cards (MoNet and a
baseline, through the module's pipeline) give per-case CSV rows, a Table-1-style summary and
box plots; problems name the case. Models run once per case and are scored raw (as the paper)
and through the pipeline's largest-component clean-up; a case with nothing predicted counts as
the worst case; a training run's cases are its held-out test cases unless the user asks, loudly,
for the optimistic ones."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_segmentation
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from PancreasAILib.weights import save_model
from PancreasAIPhantoms.ct import make_ct_phantom
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING

SHAPE = (12, 64, 64)


@pytest.fixture(scope="module")
def labelled_folders(tmp_path_factory):
    """images/, labels/ with two phantom cases, and predictions/: case_a exact, case_b shifted
    by two slices (2 x its slice spacing)."""
    root = tmp_path_factory.mktemp("evaluation")
    for name, seed in (("case_a", 21), ("case_b", 22)):
        phantom = make_ct_phantom(seed, shape=SHAPE)
        labels = phantom.pancreas.astype(np.uint8)
        write_volume(Volume(phantom.hu, phantom.ijk_to_ras), root / "images" / f"{name}.nii.gz")
        write_volume(Volume(labels, phantom.ijk_to_ras), root / "labels" / f"{name}.nii.gz")
        predicted = labels if name == "case_a" else np.roll(labels, 2, axis=0)
        write_volume(Volume(predicted, phantom.ijk_to_ras), root / "predictions" / f"{name}_pancreas.nii.gz")
    return root


def evaluate(root: Path, output: Path, *arguments) -> int:
    return evaluate_segmentation.main(["--images", str(root / "images"), "--labels", str(root / "labels"),
                                       "--output", str(output), "--device", "cpu", *map(str, arguments)])


def read_rows(output: Path) -> list[dict]:
    with open(output / "per_case_metrics.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def summary_lines(output: Path) -> list[str]:
    return (output / "summary.md").read_text(encoding="utf-8").splitlines()


def table_cells(output: Path, model: str) -> dict:
    """The summary table's line of `model`, by column header."""
    lines = [line for line in summary_lines(output) if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    line = next(line for line in lines if line.startswith(f"| {model} |"))
    return dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))


def test_prediction_folder_gives_the_known_metrics_per_case(labelled_folders, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", f"reader={labelled_folders / 'predictions'}") == 0
    rows = {row["case"]: row for row in read_rows(tmp_path)}
    assert float(rows["case_a"]["dice"]) == 1.0 and float(rows["case_a"]["hd95_mm"]) == 0.0
    assert float(rows["case_a"]["hd_mm"]) == 0.0
    assert 0 < float(rows["case_b"]["dice"]) < 1
    assert float(rows["case_b"]["hd_mm"]) >= float(rows["case_b"]["hd95_mm"]) > 0
    assert rows["case_a"]["model"] == "reader"
    assert rows["case_a"]["split"] == ""  # not the cases of a run


def test_label_maps_are_scored_as_given_with_empty_raw_columns(labelled_folders, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", f"reader={labelled_folders / 'predictions'}") == 0
    for row in read_rows(tmp_path):
        assert (row["dice_raw"], row["hd_raw_mm"], row["hd95_raw_mm"], row["predicted_raw_ml"]) == ("", "", "", "")
        assert row["dice"] != ""
    cells = table_cells(tmp_path, "reader")
    assert cells["Dice (raw, as the paper)"] == "-" and cells["HD (mm, max, as the paper)"] == "-"
    assert any(line.startswith("- reader: label maps, scored as given") for line in summary_lines(tmp_path))


def test_summary_table_and_box_plots_are_written(labelled_folders, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", labelled_folders / "predictions") == 0
    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert ("| model | parameters | weights (MB) | Dice (raw, as the paper) | Dice (pipeline: largest component) "
            "| HD (mm, max, as the paper) | HD95 (mm) | cases |") in table
    assert "| predictions |" in table and " ± " in table
    for name in ("dice_boxplot.png", "hd_boxplot.png", "hd95_boxplot.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def reference_diagonal_mm(label_file: Path) -> float:
    """The largest distance in the label map's voxel grid: between two opposite corner voxels."""
    labels = read_volume(label_file)
    corner = labels.ijk_to_ras @ np.array([*(n - 1 for n in labels.array.shape[::-1]), 1.0])
    return float(np.linalg.norm(corner[:3] - labels.ijk_to_ras[:3, 3]))


@pytest.fixture(scope="module")
def one_empty_prediction(labelled_folders, tmp_path_factory):
    """A prediction folder: case_a exact, case_b with no pancreas at all."""
    folder = tmp_path_factory.mktemp("one-empty")
    for name in ("case_a", "case_b"):
        labels = read_volume(labelled_folders / "labels" / f"{name}.nii.gz")
        predicted = labels.array if name == "case_a" else np.zeros_like(labels.array)
        write_volume(Volume(predicted, labels.ijk_to_ras), folder / f"{name}.nii.gz")
    return folder


def test_case_without_predicted_pancreas_gets_the_scan_diagonal_as_hd_and_hd95(labelled_folders,
                                                                                one_empty_prediction, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", f"empty={one_empty_prediction}") == 0
    rows = {row["case"]: row for row in read_rows(tmp_path)}
    diagonal = reference_diagonal_mm(labelled_folders / "labels" / "case_b.nii.gz")
    assert float(rows["case_b"]["hd_mm"]) == pytest.approx(diagonal, abs=0.005)
    assert float(rows["case_b"]["hd95_mm"]) == pytest.approx(diagonal, abs=0.005)
    assert (rows["case_b"]["empty_prediction"], rows["case_a"]["empty_prediction"]) == ("True", "False")


def test_case_without_predicted_pancreas_counts_in_the_means_and_is_named(labelled_folders,
                                                                           one_empty_prediction, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", f"empty={one_empty_prediction}") == 0
    hd95 = [float(row["hd95_mm"]) for row in read_rows(tmp_path)]
    assert table_cells(tmp_path, "empty")["HD95 (mm)"] == f"{np.mean(hd95):.1f} ± {np.std(hd95, ddof=1):.1f}"
    assert "- empty: no pancreas predicted in 1 case(s) (case_b): Dice 0, HD and HD95 the scan's diagonal, " \
           "counted in the means." in summary_lines(tmp_path)


def baseline_card(folder: Path):
    """A randomly initialised U-Net-16 card on 64 x 64 slices."""
    from segmentation_baselines import UNet

    torch.manual_seed(0)
    return save_model(UNet(base_filters=16).state_dict(), folder / "unet16-random.safetensors", {
        "name": "unet16-random", "architecture": "UNet",
        "architecture_params": {"base_filters": 16, "in_channels": 1, "n_classes": 1},
        "preprocessing": {**DEFAULT_PREPROCESSING, "input_size": 64}, "postprocessing": {"threshold": 0.5}})


def test_monet_and_baseline_cards_run_through_the_module_pipeline(labelled_folders, random_monet_card, tmp_path):
    baseline = baseline_card(tmp_path)
    assert evaluate(labelled_folders, tmp_path / "out", "--model", random_monet_card.weights_path,
                    "--model", baseline.weights_path, "--save-predictions") == 0
    rows = read_rows(tmp_path / "out")
    assert sorted({row["model"] for row in rows}) == ["monet-random", "unet16-random"]
    assert len(rows) == 4
    table = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "| unet16-random | - | 7.8 |" in table  # a card without parameter counts, 7.8 MB of weights
    saved = tmp_path / "out" / "predictions" / "unet16-random" / "case_a.nii.gz"
    assert saved.exists()


def test_missing_prediction_names_the_case(labelled_folders, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "case_a.nii.gz").write_bytes((labelled_folders / "predictions" / "case_a_pancreas.nii.gz").read_bytes())
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", partial) == 2
    assert "Case case_b" in (tmp_path / "out" / "evaluate.log").read_text(encoding="utf-8")


def test_prediction_on_another_grid_is_refused_naming_the_case(labelled_folders, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    for name in ("case_a", "case_b"):
        write_volume(Volume(np.zeros((6, 32, 32), np.uint8), np.eye(4)), elsewhere / f"{name}.nii.gz")
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", elsewhere) == 2
    assert "Case case_a: the prediction of elsewhere is not on the ground truth's voxel grid" in \
        (tmp_path / "out" / "evaluate.log").read_text(encoding="utf-8")


def write_run(folder: Path, splits: dict) -> Path:
    """A training run's data.json as train_monet.py writes it (case -> split); returns the run's
    .safetensors path (the weights themselves are not needed to find the cases)."""
    (folder / "monet.run").mkdir(parents=True)
    (folder / "monet.run" / "data.json").write_text(json.dumps({
        "data": "test folders", "data_sha256": "0" * 64,
        "cases": [{"case_id": case, "patient_id": case, "split": split} for case, split in splits.items()]}))
    return folder / "monet.safetensors"


def log_text(output: Path) -> str:
    return (output / "evaluate.log").read_text(encoding="utf-8")


def test_cases_of_a_run_are_its_test_cases_by_default(labelled_folders, tmp_path):
    run = write_run(tmp_path, {"case_a": "validation", "case_b": "test", "case_c": "training"})
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", labelled_folders / "predictions",
                    "--cases-of", run) == 0
    assert [(row["case"], row["split"]) for row in read_rows(tmp_path / "out")] == [("case_b", "test")]
    assert summary_lines(tmp_path / "out")[0].startswith("# Segmentation evaluation: ")
    assert "WARNING" not in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("split, role", [("validation", "selected the model"), ("training", "trained the model")])
def test_cases_that_made_the_model_are_refused_saying_why(labelled_folders, tmp_path, split, role):
    run = write_run(tmp_path, {"case_a": split, "case_b": "test"})
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", labelled_folders / "predictions",
                    "--cases-of", run, "--split", split) == 2
    log = log_text(tmp_path / "out")
    assert f"The run's {split} cases are refused: they {role}" in log
    assert "optimistic" in log and "--allow-selection-cases" in log
    assert not (tmp_path / "out" / "per_case_metrics.csv").exists()


def test_validation_cases_scored_on_request_are_marked_optimistic(labelled_folders, tmp_path):
    run = write_run(tmp_path, {"case_a": "validation", "case_b": "test"})
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", labelled_folders / "predictions",
                    "--cases-of", run, "--split", "validation", "--allow-selection-cases") == 0
    assert [(row["case"], row["split"]) for row in read_rows(tmp_path / "out")] == [("case_a", "validation")]
    title, _, first_line = summary_lines(tmp_path / "out")[:3]
    assert title.startswith("# OPTIMISTIC SCORES: ")
    assert first_line == ("**WARNING: these cases were used to select the model (validation split): the scores are "
                          "optimistic and not comparable with a held-out test set.**")


def test_a_run_without_test_cases_is_refused_with_how_to_proceed(labelled_folders, tmp_path):
    """A run made before train_monet.py held out a test set (or with --test-fraction 0)."""
    run = write_run(tmp_path, {"case_a": "training", "case_b": "validation"})
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", labelled_folders / "predictions",
                    "--cases-of", run) == 2
    log = log_text(tmp_path / "out")
    assert "has no held-out test cases" in log
    assert "made before train_monet.py held out a test set, or with --test-fraction 0" in log
    assert "Its validation cases selected the checkpoint" in log
    assert "Retrain with a test split" in log and "--split validation --allow-selection-cases" in log


@pytest.mark.parametrize("option", [["--split", "validation"], ["--allow-selection-cases"]])
def test_run_split_options_without_a_run_are_refused(labelled_folders, tmp_path, option):
    assert evaluate(labelled_folders, tmp_path, "--predictions", labelled_folders / "predictions", *option) == 2
    assert "give the run with --cases-of RUN" in log_text(tmp_path)


# --- the bundled demo MoNet, raw and through the pipeline ----------------------------------------

DEMO_SHAPE = (16, 128, 128)  # the demo MoNet finds the pancreas, far larger than a stray blob, in phantoms 0 and 1
DEMO_PHANTOMS = ["--phantoms", "2", "--phantom-shape", *map(str, DEMO_SHAPE), "--device", "cpu"]


def with_stray_blob(mask: np.ndarray) -> np.ndarray:
    """`mask` plus a 2 x 3 x 3 false positive in a corner, far from the pancreas (a copy)."""
    blobbed = mask.copy()
    blobbed[:2, :3, :3] = 1
    return blobbed


def evaluate_demo_monet_with_stray_blobs(output: Path, *arguments, model: str = "") -> list[dict]:
    """Runs the bundled demo MoNet (or `model`) on two phantoms; segment_ct is spied on: every call is
    recorded (its keyword arguments and the mask it returned) and its mask gets a stray blob."""
    from PancreasSegMoNetLib import segmentation
    from PancreasSegMoNetLib.registry import model_registry

    real_segment_ct = segmentation.segment_ct
    calls = []

    def spy(ct, card=None, **options):
        result = real_segment_ct(ct, card, **options)
        mask = with_stray_blob(result.mask.array)
        calls.append({"options": options, "mask": mask})
        return dataclasses.replace(result, mask=Volume(mask, result.mask.ijk_to_ras))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segmentation, "segment_ct", spy)
        assert evaluate_segmentation.main([*DEMO_PHANTOMS, "--model", f"demo={model or model_registry().default_name}",
                                           "--output", str(output), *arguments]) == 0
    return calls


@pytest.fixture(scope="module")
def demo_evaluation(tmp_path_factory):
    """The spied demo MoNet's evaluation with the pipeline's clean-up: (output folder, calls)."""
    output = tmp_path_factory.mktemp("demo")
    return output, evaluate_demo_monet_with_stray_blobs(output)


def test_each_model_runs_once_per_case_without_the_clean_up(demo_evaluation):
    output, calls = demo_evaluation
    assert len(calls) == len(read_rows(output)) == 2
    assert all(call["options"]["keep_largest_component"] is False for call in calls)


def test_a_stray_blob_lowers_the_raw_dice_and_the_pipeline_drops_it(demo_evaluation):
    from PancreasSegMoNetLib.segmentation import largest_component
    from segmentation_data import phantom_cases
    from segmentation_metrics import dice_coefficient

    output, calls = demo_evaluation
    rows = read_rows(output)
    for row, call, case in zip(rows, calls, phantom_cases(2, 0, DEMO_SHAPE)):
        reference = case.load()[1].array
        assert float(row["dice_raw"]) == pytest.approx(dice_coefficient(call["mask"], reference), abs=5e-5)
        assert float(row["dice"]) == pytest.approx(dice_coefficient(largest_component(call["mask"]), reference),
                                                   abs=5e-5)
        assert float(row["dice_raw"]) < float(row["dice"])
        assert float(row["hd_raw_mm"]) > float(row["hd_mm"])  # the blob is far from the pancreas


def test_no_largest_component_makes_the_pipeline_columns_the_raw_ones(tmp_path):
    evaluate_demo_monet_with_stray_blobs(tmp_path, "--no-largest-component", "--phantoms", "1")
    for row in read_rows(tmp_path):
        assert (row["dice"], row["hd_mm"], row["hd95_mm"]) == (row["dice_raw"], row["hd_raw_mm"], row["hd95_raw_mm"])
    assert "- demo: --no-largest-component: the pipeline keeps every connected piece too, so its columns equal the " \
           "raw ones." in summary_lines(tmp_path)


def test_a_card_without_the_clean_up_makes_the_pipeline_columns_the_raw_ones(demo_monet_card, tmp_path):
    from PancreasAILib.weights import load_state_dict

    fields = {key: value for key, value in demo_monet_card.data.items() if key not in ("weights_file", "sha256")}
    fields["postprocessing"] = {**fields.get("postprocessing", {}), "keep_largest_component": False}
    card = save_model(load_state_dict(demo_monet_card, "MoNet"), tmp_path / "no-clean-up.safetensors", fields)
    evaluate_demo_monet_with_stray_blobs(tmp_path / "out", "--phantoms", "1", model=str(card.weights_path))
    for row in read_rows(tmp_path / "out"):
        assert (row["dice"], row["hd_mm"], row["hd95_mm"]) == (row["dice_raw"], row["hd_raw_mm"], row["hd95_raw_mm"])
    assert "- demo: its model card's post-processing has keep_largest_component false: the pipeline keeps every " \
           "connected piece too, so its columns equal the raw ones." in summary_lines(tmp_path / "out")
