"""`ipmn-risk` end to end: one case, a CSV batch, files a radiologist can open in Slicer."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from IPMNRiskLib import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def case_files(tmp_path, small_mr_phantom):
    p = small_mr_phantom
    t1 = write_volume(Volume(p.t1, p.ijk_to_ras), tmp_path / "in" / "p1_t1.nii.gz")
    t2 = write_volume(Volume(p.t2, p.ijk_to_ras), tmp_path / "in" / "p1_t2.nii.gz")
    center, size = p.pancreas_box_ras
    return t1, t2, ",".join(f"{v:.3f}" for v in center), ",".join(f"{v:.3f}" for v in size)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in ("PancreasAI", "IPMNRisk")))
    return subprocess.run([sys.executable, "-m", "IPMNRiskLib", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_assess_writes_result_heat_map_png_and_scene(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    out = tmp_path / "out"
    result = run_cli("assess", "--t1", t1, "--t2", t2, f"--roi-center={center}", f"--roi-size={size}",
                     "--output", out, "--model", random_vit_card.weights_path, "--case", "p1")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "p1_ipmn_result.json").read_text(encoding="utf-8"))
    assert summary["class_name"] in ("normal", "low-risk IPMN", "high-risk IPMN")
    assert sum(summary["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert (summary["model"], summary["model_sha256"]) == (random_vit_card.name, random_vit_card.sha256)
    assert summary["warnings"] == [] and summary["seconds"] > 0
    heat = read_volume(out / "p1_ipmn_heatmap.nrrd")
    source = read_volume(t2)
    assert heat.shape == source.shape
    np.testing.assert_allclose(heat.ijk_to_ras, source.ijk_to_ras, atol=1e-5)
    assert (out / "p1_ipmn_grid.png").stat().st_size > 1000
    assert "research use only" in result.stdout.lower()


def test_review_scene_opens_with_the_heat_map_over_t2(tmp_path, case_files, random_vit_card, mrml_scene):
    t1, t2, center, size = case_files
    out = tmp_path / "out"
    assert run_cli("assess", "--t1", t1, "--t2", t2, f"--roi-center={center}", f"--roi-size={size}",
                   "-o", out, "--model", random_vit_card.weights_path, "--case", "p1").returncode == 0
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(out / "p1_ipmn_scene.mrb").extractall(unpacked)
    mrml = next(unpacked.rglob("*.mrml"))
    mrml_scene.SetURL(str(mrml))
    assert mrml_scene.Import()
    names = {mrml_scene.GetNthNode(n).GetName() for n in range(mrml_scene.GetNumberOfNodes())}
    assert {"T1", "T2", "T2 IPMN attention", "T2 IPMN risk", "IPMN region"} <= names
    heat = mrml_scene.GetFirstNodeByName("T2 IPMN attention")
    import slicer
    assert slicer.util.arrayFromVolume(heat).max() == pytest.approx(1.0)
    assert heat.GetDisplayNode().GetColorNode().GetName() == "PancreasAI Inferno"


def test_cli_outputs_import_into_a_scene_as_the_gui_does(tmp_path, case_files, random_vit_card, mrml_scene):
    from PancreasAILib.cli_support import case_name
    from PancreasAILib.scene import add_volume_node
    from IPMNRiskLib.logic import import_assessment

    t1, t2, center, size = case_files
    out = tmp_path / "out"
    assert run_cli("assess", "--t1", t1, "--t2", t2, f"--roi-center={center}", f"--roi-size={size}",
                   "-o", out, "--model", random_vit_card.weights_path, "--no-scene",
                   "--progress-format", "json").returncode == 0
    assert not list(out.glob("*.mrb"))
    t2_node = add_volume_node(mrml_scene, read_volume(t2), "T2")
    result = import_assessment(t2_node, out, case_name(t2))  # without --case: named after the T2 file
    summary = json.loads((out / "p1_t2_ipmn_result.json").read_text(encoding="utf-8"))
    np.testing.assert_allclose(result.probabilities, summary["probabilities"])
    assert result.heat_map_node is not None and result.table_node is not None
    assert (result.model_sha256, result.summary) == (random_vit_card.sha256, summary)
    assert result.grid_png == (out / "p1_t2_ipmn_grid.png").read_bytes()


def test_region_from_a_mask_file(tmp_path, case_files, small_mr_phantom, random_vit_card):
    t1, t2, _, _ = case_files
    mask = write_volume(Volume(small_mr_phantom.pancreas.astype(np.uint8), small_mr_phantom.ijk_to_ras),
                        tmp_path / "pancreas.nii.gz")
    rows = cli.run_cases([cli.Case("m", t1, t2, roi_mask=mask)], tmp_path / "out", random_vit_card.weights_path,
                         device="cpu", tta=False, write_scene=False)
    assert rows[0]["status"] == "ok"
    summary = json.loads((tmp_path / "out" / "m_ipmn_result.json").read_text(encoding="utf-8"))
    assert summary["test_time_views"] == 1


def test_batch_csv_writes_a_results_table_and_reports_a_bad_case(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "t1", "t2", "roi_center", "roi_size"])
        writer.writerow(["good", t1, t2, center, size])
        writer.writerow(["twice", t2, t2, center, size])
    out = tmp_path / "out"
    result = run_cli("batch", table, "-o", out, "--model", random_vit_card.weights_path, "--no-tta")
    assert result.returncode == 1
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "same image" in rows[1]["message"]
    assert Path(rows[0]["scene"]).exists() and Path(rows[0]["heat_map"]).exists()
    assert not list(out.glob("twice_*"))


def test_a_card_of_no_known_task_stops_the_batch_once_before_any_case(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(random_vit_card.weights_path, models / "edited.safetensors")
    card = json.loads(random_vit_card.card_path.read_text(encoding="utf-8"))
    (models / "edited.json").write_text(json.dumps({**card, "classes": ["benign", "malignant"]}), encoding="utf-8")
    table = tmp_path / "cases.csv"
    table.write_text("case,t1,t2,roi_center,roi_size\n" + "".join(f"c{i},{t1},{t2},\"{center}\",\"{size}\"\n"
                                                                 for i in range(3)), encoding="utf-8")
    result = run_cli("batch", table, "-o", tmp_path / "out", "--model", models / "edited.safetensors", "--no-tta")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("benign, malignant, which are not those of an IPMN risk task") == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.csv").exists() and not list((tmp_path / "out").glob("c*_*"))


def test_missing_region_is_a_clear_error(tmp_path, case_files):
    t1, t2, _, _ = case_files
    result = run_cli("assess", "--t1", t1, "--t2", t2, "-o", tmp_path / "out")
    assert result.returncode == 2 and "--roi-center" in result.stderr and "Traceback" not in result.stderr


def test_existing_results_are_kept_without_overwrite(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "p1_ipmn_result.json"
    mine.write_text("mine")
    rows = cli.run_cases([cli.Case("p1", t1, t2, cli.parse_triple(center), cli.parse_triple(size))], out,
                         random_vit_card.weights_path, device="cpu", tta=False)
    assert rows[0]["status"] == "failed" and mine.read_text(encoding="utf-8") == "mine"


def test_the_result_records_the_gradient_explanation_and_what_computed_it(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    out = tmp_path / "out"
    result = run_cli("assess", "--t1", t1, "--t2", t2, f"--roi-center={center}", f"--roi-size={size}", "-o", out,
                     "--model", random_vit_card.weights_path, "--case", "p1", "--no-tta", "--no-scene",
                     "--engine", "openvino", "--explanation", "gradient-rollout")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "p1_ipmn_result.json").read_text(encoding="utf-8"))
    assert summary["explanation"] == "gradient-rollout"
    assert summary["engine"].startswith("openvino ") and summary["explanation_engine"].startswith("pytorch ")
    assert "PyTorch computes them" in result.stdout


@pytest.mark.parametrize("command", [["assess", "--t1", "a", "--t2", "b"], ["batch", "cases.csv"]])
def test_the_explanation_is_the_paper_s_rollout_unless_asked(command):
    parser = cli.build_parser()
    assert parser.parse_args([*command, "-o", "out"]).explanation == "rollout"
    assert parser.parse_args([*command, "-o", "out", "--explanation", "gradient-rollout"]).explanation == \
        "gradient-rollout"


def test_an_unknown_explanation_is_refused_by_the_command_line(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["batch", "cases.csv", "-o", "out", "--explanation", "grad-cam"])
    assert "gradient-rollout" in capsys.readouterr().err


def test_the_batch_table_says_which_method_made_each_heat_map(tmp_path, case_files, random_vit_card):
    t1, t2, center, size = case_files
    rows = cli.run_cases([cli.Case("p1", t1, t2, cli.parse_triple(center), cli.parse_triple(size))], tmp_path / "out",
                         str(random_vit_card.weights_path), "cpu", tta=False, write_scene=False,
                         engine="pytorch", explanation="gradient-rollout", progress_format="json")
    path = cli.write_results_csv(rows, tmp_path / "results.csv")
    (row,) = csv.DictReader(open(path, encoding="utf-8"))
    assert row["status"] == "ok" and row["explanation"] == "gradient-rollout"
