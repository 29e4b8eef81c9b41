"""evaluate_segmentation.py end to end: folders of predictions and model cards (MoNet and a
baseline, through the module's pipeline) give per-case CSV rows, a Table-1-style summary and
box plots; problems name the case."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate_segmentation
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
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


def test_prediction_folder_gives_the_known_metrics_per_case(labelled_folders, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", f"reader={labelled_folders / 'predictions'}") == 0
    rows = {row["case"]: row for row in read_rows(tmp_path)}
    assert float(rows["case_a"]["dice"]) == 1.0 and float(rows["case_a"]["hd95_mm"]) == 0.0
    assert 0 < float(rows["case_b"]["dice"]) < 1
    assert float(rows["case_b"]["hd95_mm"]) > 0
    assert rows["case_a"]["model"] == "reader"


def test_summary_table_and_box_plots_are_written(labelled_folders, tmp_path):
    assert evaluate(labelled_folders, tmp_path, "--predictions", labelled_folders / "predictions") == 0
    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| model | parameters | weights (MB) | Dice | HD95 (mm) | cases |" in table
    assert "| predictions |" in table and " ± " in table
    for name in ("dice_boxplot.png", "hd95_boxplot.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_cases_of_a_run_are_its_validation_cases(labelled_folders, tmp_path):
    run_folder = tmp_path / "monet.run"
    run_folder.mkdir()
    (run_folder / "data.json").write_text(json.dumps({"cases": [
        {"case_id": "case_a", "split": "training"}, {"case_id": "case_b", "split": "validation"}]}))
    assert evaluate(labelled_folders, tmp_path / "out", "--predictions", labelled_folders / "predictions",
                    "--cases-of", tmp_path / "monet.safetensors") == 0
    assert [row["case"] for row in read_rows(tmp_path / "out")] == ["case_b"]
