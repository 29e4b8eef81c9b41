"""`pancreas-seg segment` end to end: files in, .seg.nrrd, label maps and a result record out, on
the input grid."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from PancreasSegMoNetLib import cli
from test_segmentation_pipeline import card_variant, ct_with_a_stray_pancreas, pieces

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ct_file(tmp_path, small_ct_phantom):
    return write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), tmp_path / "in" / "case_001.nii.gz")


def run_cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in ("PancreasAI", "PancreasSegMoNet")))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "PancreasSegMoNetLib", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_writes_segmentation_and_labelmap_on_the_input_grid(tmp_path, ct_file, random_monet_card):
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "--output", out, "--model", random_monet_card.weights_path)
    assert result.returncode == 0, result.stderr
    assert "case_001: pancreas" in result.stdout
    label = read_volume(out / "case_001_pancreas.nii.gz")
    source = read_volume(ct_file)
    assert label.shape == source.shape
    np.testing.assert_allclose(label.ijk_to_ras, source.ijk_to_ras, atol=1e-5)
    assert set(np.unique(label.array)) <= {0, 1} and label.array.any()
    segmentation = read_volume(out / "case_001_pancreas.seg.nrrd")
    np.testing.assert_array_equal(segmentation.array, label.array)


def test_output_paths_name_the_three_files_of_a_case(tmp_path):
    assert cli.output_paths(tmp_path, "case_001") == {
        "segmentation": tmp_path / "case_001_pancreas.seg.nrrd",
        "labelmap": tmp_path / "case_001_pancreas.nii.gz",
        "result": tmp_path / "case_001_pancreas.json"}


def test_the_result_record_names_the_model_its_sha256_and_the_result(tmp_path, ct_file, random_monet_card):
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "-o", out, "--model", random_monet_card.weights_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "case_001_pancreas.json").read_text(encoding="utf-8"))
    label = read_volume(out / "case_001_pancreas.nii.gz")
    voxel_ml = abs(np.linalg.det(label.ijk_to_ras[:3, :3])) / 1000
    assert set(record) == {"case", "input", "model", "model_sha256", "engine", "precision", "threshold", "warnings",
                           "voxel_count", "volume_ml", "seconds"}
    assert record["input"] == str(Path(ct_file).resolve())  # the review shows the CT under the result
    assert (record["case"], record["model"], record["model_sha256"]) == (
        "case_001", random_monet_card.name, random_monet_card.sha256)
    # OpenVINO is installed here, and the card records no bf16 check: the exact float32 path
    assert record["engine"].startswith("openvino ") and record["precision"] == "fp32"
    assert f"Engine: {record['engine']}." in result.stdout
    assert record["threshold"] == 0.5 and record["warnings"] == []  # the card's threshold; a plausible CT
    assert record["voxel_count"] == int(label.array.sum()) > 0
    assert record["volume_ml"] == pytest.approx(record["voxel_count"] * voxel_ml, abs=1e-3)
    assert record["seconds"] > 0


def test_a_ct_outside_the_hounsfield_range_warns_in_the_record_and_on_the_node(tmp_path, small_ct_phantom,
                                                                              random_monet_card, mrml_scene):
    from PancreasAILib.scene import add_volume_node
    from PancreasSegMoNetLib.logic import WARNINGS_ATTRIBUTE, import_segmentation

    rescaled = Volume((small_ct_phantom.hu + 1500).astype(np.int16), small_ct_phantom.ijk_to_ras)
    ct_file = write_volume(rescaled, tmp_path / "in" / "rescaled.nii.gz")
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "-o", out, "--model", random_monet_card.weights_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "rescaled_pancreas.json").read_text(encoding="utf-8"))
    (warning,) = record["warnings"]
    assert "Hounsfield" in warning and f"from {rescaled.array.min():g} to {rescaled.array.max():g}" in warning
    assert f"rescaled: warning: {warning}" in result.stdout
    # The Slicer route reads the same record back onto the segmentation node.
    outcome = import_segmentation(add_volume_node(mrml_scene, rescaled, "CT"), out, "rescaled")
    assert outcome.warnings == [warning]
    assert outcome.segmentation_node.GetAttribute(WARNINGS_ATTRIBUTE) == warning
    assert outcome.model_sha256 == random_monet_card.sha256


def test_seg_nrrd_opens_in_slicer_with_name_colour_and_terminology(tmp_path, ct_file, random_monet_card, mrml_scene):
    out = tmp_path / "out"
    assert run_cli("segment", ct_file, "-o", out, "--model", random_monet_card.weights_path).returncode == 0
    node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out / "case_001_pancreas.seg.nrrd"))
    assert storage.ReadData(node)
    segment = node.GetSegmentation().GetSegment("PancreasSegMoNet_pancreas")
    assert segment is not None and segment.GetName() == "Pancreas"
    np.testing.assert_allclose(segment.GetColor(), (249 / 255, 180 / 255, 111 / 255), atol=1e-5)
    assert "SCT^15776009^Pancreas" in segment.GetTerminology()


def test_json_progress_lines_for_the_slicer_gui(tmp_path, ct_file, random_monet_card):
    result = run_cli("segment", ct_file, "-o", tmp_path / "out", "--model", random_monet_card.weights_path,
                     "--progress-format", "json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    fractions = [line["progress"] for line in lines if "progress" in line]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("pancreas" in line.get("message", "") for line in lines)


def test_several_inputs_and_a_folder_each_give_a_case(tmp_path, small_ct_phantom, random_monet_card):
    folder = tmp_path / "cases"
    for name in ("a", "b"):
        write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), folder / f"{name}.nrrd")
    failures = cli.segment_files(cli.expand_inputs([str(folder)]), tmp_path / "out", random_monet_card.weights_path)
    assert failures == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["a_pancreas.nii.gz", "b_pancreas.nii.gz"]


def test_a_bad_case_fails_alone_and_leaves_no_partial_output(tmp_path, ct_file, random_monet_card):
    bad = tmp_path / "in" / "flat.nii.gz"
    write_volume(Volume(np.zeros((4, 64, 64), np.int16), np.eye(4)), bad)
    out = tmp_path / "out"
    result = run_cli("segment", bad, ct_file, "-o", out, "--model", random_monet_card.weights_path)
    assert result.returncode == 1
    assert "flat: FAILED" in result.stdout and "same value" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "case_001_pancreas.json", "case_001_pancreas.nii.gz", "case_001_pancreas.seg.nrrd"]


def test_existing_results_are_not_overwritten_without_asking(tmp_path, ct_file, random_monet_card):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "case_001_pancreas.nii.gz"
    mine.write_bytes(b"a radiologist's own file")
    failures = cli.segment_files([ct_file], out, random_monet_card.weights_path)
    assert failures == 1 and mine.read_bytes() == b"a radiologist's own file"
    assert cli.segment_files([ct_file], out, random_monet_card.weights_path, overwrite=True) == 0
    assert read_volume(mine).shape == read_volume(ct_file).shape


def test_dicom_series_folder_is_one_case(tmp_path, small_ct_phantom, random_monet_card):
    import SimpleITK as sitk

    from PancreasAILib.volume_io import sitk_from_volume

    image = sitk_from_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras))
    folder = tmp_path / "dicom_case"
    folder.mkdir()
    direction = image.GetDirection()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        origin = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            # row (i axis) then column (j axis) direction cosines, LPS
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                          direction[1], direction[4], direction[7])),
            "0028|1052": "0", "0028|1053": "1",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # keep our series UID: one series, not one per file
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_image)
    failures = cli.segment_files(cli.expand_inputs([str(folder)]), tmp_path / "out", random_monet_card.weights_path)
    assert failures == 0
    label = read_volume(tmp_path / "out" / "dicom_case_pancreas.nii.gz")
    assert label.shape == small_ct_phantom.hu.shape
    np.testing.assert_allclose(label.ijk_to_ras, small_ct_phantom.ijk_to_ras, atol=1e-3)


def test_missing_model_file_is_a_clear_error(tmp_path, ct_file):
    result = run_cli("segment", ct_file, "-o", tmp_path / "out", "--model", tmp_path / "nothing.safetensors")
    assert result.returncode == 2
    assert "No model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_command_lists_the_bundled_demo():
    result = run_cli("models")
    assert result.returncode == 0
    assert "monet-demo-phantom-v3" in result.stdout


def test_the_engine_asked_for_is_the_engine_recorded(tmp_path, ct_file, random_monet_card):
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "-o", out, "--model", random_monet_card.weights_path,
                     "--engine", "pytorch", "--precision", "fp32", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "case_001_pancreas.json").read_text(encoding="utf-8"))
    assert record["engine"].startswith("pytorch ") and record["precision"] == "fp32"


def test_bf16_without_a_passed_check_is_refused_before_any_file_is_written(tmp_path, ct_file, random_monet_card):
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "-o", out, "--model", random_monet_card.weights_path, "--precision", "bf16")
    assert result.returncode == 2
    assert "error:" in result.stderr and "bf16" in result.stderr and "fp32" in result.stderr
    assert list(out.glob("*")) == []


def copy_model(card, folder: Path):
    folder.mkdir()
    for path in (card.weights_path, card.card_path):
        shutil.copy(path, folder / path.name)
    return folder / card.weights_path.name


def test_check_precision_records_the_agreement_in_the_card(tmp_path, small_ct_phantom, random_monet_card):
    """On this CPU (no native bf16) PyTorch emulates bf16; on one with it OpenVINO computes it.
    Either way each case's Dice goes into the card, and the gate reads it."""
    from PancreasAILib.engines import passed_precision_check
    from PancreasAILib.volume_io import write_volume
    from PancreasAILib.weights import read_model_card

    ct = tmp_path / "calibration.nii.gz"
    write_volume(Volume(small_ct_phantom.hu[4:10], small_ct_phantom.ijk_to_ras), ct)
    weights = copy_model(random_monet_card, tmp_path / "model")
    result = run_cli("check-precision", ct, "--model", weights)
    assert result.returncode == 0, result.stderr
    card = read_model_card(weights)
    record = card.data["precision_checks"]["bf16"]
    assert record["passed"] is True and passed_precision_check(card, "bf16")
    [case] = record["cases"]
    assert case["case"] == "calibration" and record["worst_dice"] == case["dice"] >= 0.99
    assert case["fp32_voxels"] > 0 and record["weights_sha256"] == random_monet_card.sha256
    assert record["native"] == record["engine"].startswith("openvino ")
    assert card.sha256 == random_monet_card.sha256  # the weights are untouched
    assert "recorded in" in result.stdout

    strict = run_cli("check-precision", ct, "--model", weights, "--min-dice", "1.0")
    failed = read_model_card(weights).data["precision_checks"]["bf16"]
    exact = failed["worst_dice"] == 1.0  # whether bf16 changed no voxel of this random network's mask
    assert failed["passed"] is exact and strict.returncode == (0 if exact else 1)
    assert passed_precision_check(read_model_card(weights), "bf16") is exact
    assert ("FAILED" in strict.stdout) is not exact


def test_check_precision_refuses_an_impossible_criterion(tmp_path, ct_file, random_monet_card):
    result = run_cli("check-precision", ct_file, "--model", random_monet_card.weights_path, "--min-dice", "1.5")
    assert result.returncode == 2 and "between 0 and 1" in result.stderr


# --- the card's post-processing and pre-processing, and the flags that override them -----------------

@pytest.mark.parametrize("flags, keep", [([], None), (["--largest-component"], True),
                                         (["--no-largest-component"], False)])
def test_largest_component_flags_say_keep_it_keep_every_piece_or_as_the_card_says(flags, keep):
    args = cli.build_parser().parse_args(["segment", "ct.nii.gz", "-o", "out", *flags])
    assert cli.largest_component_choice(args) is keep


def test_largest_component_and_no_largest_component_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["segment", "ct.nii.gz", "-o", "out", "--largest-component",
                                       "--no-largest-component"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.fixture
def stray_ct_file(tmp_path, small_ct_phantom):
    """A CT with a second, smaller pancreas piece apart from the first."""
    return write_volume(ct_with_a_stray_pancreas(small_ct_phantom), tmp_path / "in" / "stray.nii.gz")


@pytest.fixture
def all_pieces_card(tmp_path, demo_monet_card):
    """The demo weights with a card whose post-processing keeps every piece."""
    return card_variant(demo_monet_card, tmp_path / "model", "demo-all-pieces",
                        postprocessing={"keep_largest_component": False})


def segmented_pieces(out: Path, case: str) -> int:
    return pieces(read_volume(out / f"{case}_pancreas.nii.gz").array)


def test_without_a_flag_the_command_line_keeps_every_piece_when_the_card_says_so(tmp_path, stray_ct_file,
                                                                                 all_pieces_card):
    out = tmp_path / "out"
    assert cli.main(["segment", str(stray_ct_file), "-o", str(out), "--model", str(all_pieces_card.weights_path)]) == 0
    assert segmented_pieces(out, "stray") == 2


def test_largest_component_flag_overrides_a_card_keeping_every_piece(tmp_path, stray_ct_file, all_pieces_card):
    out = tmp_path / "out"
    assert cli.main(["segment", str(stray_ct_file), "-o", str(out), "--model", str(all_pieces_card.weights_path),
                     "--largest-component"]) == 0
    assert segmented_pieces(out, "stray") == 1


def test_no_largest_component_flag_overrides_a_card_keeping_the_largest(tmp_path, stray_ct_file, demo_monet_card):
    out = tmp_path / "out"
    assert demo_monet_card.data["postprocessing"]["keep_largest_component"] is True
    assert cli.main(["segment", str(stray_ct_file), "-o", str(out), "--model", str(demo_monet_card.weights_path),
                     "--no-largest-component"]) == 0
    assert segmented_pieces(out, "stray") == 2


def test_a_card_with_an_unknown_intensity_scaling_stops_the_run_before_any_file_is_written(tmp_path, ct_file,
                                                                                          demo_monet_card):
    card = card_variant(demo_monet_card, tmp_path / "model", "demo-typo", preprocessing={"intensity_scaling": "minmax"})
    out = tmp_path / "out"
    result = run_cli("segment", ct_file, "-o", out, "--model", card.weights_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "intensity_scaling 'minmax'" in result.stderr and "'window' and 'volume_min_max'" in result.stderr
    assert list(out.glob("*")) == []
