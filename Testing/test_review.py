"""The review core: a results folder becomes a worklist, a case goes into a real slicer-core
scene, verdicts land in review.csv without ever losing one, and a corrected pancreas is saved
beside the model's file, never over it."""

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib import review
from PancreasAILib.review import ReviewError, Verdict
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume

HERE = Path(__file__).resolve().parent


def tilted_flipped(ijk_to_ras: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    """The phantom's geometry turned about S and mirrored in R: an oblique, flipped scan."""
    angle = np.radians(degrees)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    return flip @ turn @ ijk_to_ras


def write_segmentation_case(folder: Path, inputs: Path, name: str, ct_phantom, model="monet-test",
                            record_input: bool = True) -> dict:
    from PancreasSegMoNetLib.cli import PANCREAS_SEGMENT
    from PancreasAILib.segmentation_file import write_segmentation

    geometry = tilted_flipped(ct_phantom.ijk_to_ras)
    ct = write_volume(Volume(ct_phantom.hu, geometry), inputs / f"{name}.nrrd")
    mask = Volume(ct_phantom.pancreas.astype(np.uint8), geometry)
    write_segmentation(mask, folder / f"{name}_pancreas.seg.nrrd", [PANCREAS_SEGMENT])
    write_volume(mask, folder / f"{name}_pancreas.nii.gz")
    record = {"case": name, "model": model, "model_sha256": "ab" * 32, "engine": "openvino fp32 cpu",
              "precision": "fp32", "threshold": 0.5, "warnings": ["a test warning"],
              "voxel_count": int(mask.array.sum()), "volume_ml": 12.345, "seconds": 1.0}
    if record_input:
        record["input"] = str(ct)
    (folder / f"{name}_pancreas.json").write_text(json.dumps(record), encoding="utf-8")
    return record


def write_ipmn_case(folder: Path, inputs: Path, name: str, mr_phantom, class_name="high-risk IPMN") -> dict:
    geometry = mr_phantom.ijk_to_ras
    t1 = write_volume(Volume(mr_phantom.t1, geometry), inputs / f"{name}_t1.nii.gz")
    t2 = write_volume(Volume(mr_phantom.t2, geometry), inputs / f"{name}_t2.nii.gz")
    heat = np.zeros(mr_phantom.t2.shape, np.float32)
    heat[mr_phantom.lesion > 0] = 1.0
    write_volume(Volume(heat, geometry), folder / f"{name}_ipmn_heatmap.nrrd")
    center, size = mr_phantom.pancreas_box_ras
    index = review.IPMN_CLASSES.index(class_name)
    probabilities = [0.1, 0.1, 0.1]
    probabilities[index] = 0.8
    record = {"case": name, "risk_class": index, "class_name": class_name,
              "class_names": list(review.IPMN_CLASSES), "probabilities": probabilities,
              "spread": [0.01, 0.02, 0.03], "test_time_views": 8, "model": "ipmn-test",
              "region": {"center_ras": [float(v) for v in center], "size_mm": [float(v) for v in size]},
              "model_sha256": "cd" * 32, "engine": "openvino fp32 cpu", "precision": "fp32", "warnings": [],
              "seconds": 2.0, "research_use_notice": "For research use only.", "t1": str(t1), "t2": str(t2)}
    (folder / f"{name}_ipmn_result.json").write_text(json.dumps(record), encoding="utf-8")
    return record


@pytest.fixture
def results(tmp_path, small_ct_phantom, small_mr_phantom):
    """A results folder with two segmentation and two IPMN cases; inputs in a folder beside it."""
    folder, inputs = tmp_path / "results", tmp_path / "inputs"
    folder.mkdir()
    inputs.mkdir()
    write_segmentation_case(folder, inputs, "ct_a", small_ct_phantom)
    write_segmentation_case(folder, inputs, "ct_b", small_ct_phantom)
    write_ipmn_case(folder, inputs, "mr_a", small_mr_phantom, "high-risk IPMN")
    write_ipmn_case(folder, inputs, "mr_b", small_mr_phantom, "normal")
    return folder


def ipmn_verdict(case="mr_a", verdict="agree", reviewer="Dr A", **fields) -> Verdict:
    return Verdict(reviewer=reviewer, case=case, task="ipmn", verdict=verdict, **fields)


def rows(folder: Path) -> list:
    with open(folder / "review.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# --- the worklist -----------------------------------------------------------------------------

def test_worklist_lists_every_case_with_its_result(results):
    worklist = review.open_worklist(results)
    assert [(c.name, c.task) for c in worklist.cases] == [
        ("ct_a", "segmentation"), ("ct_b", "segmentation"), ("mr_a", "ipmn"), ("mr_b", "ipmn")]
    ct, mr = worklist.case("ct_a"), worklist.case("mr_a")
    assert ct.reviewable and mr.reviewable and worklist.problems == ()
    assert ct.volume_ml == pytest.approx(12.345) and ct.warnings == ["a test warning"]
    assert ct.model == "monet-test" and ct.model_sha256 == "ab" * 32
    assert set(ct.files) >= {"ct", "labelmap", "segmentation"}
    assert mr.class_name == "high-risk IPMN" and mr.probabilities == [0.1, 0.1, 0.8]
    assert set(mr.files) >= {"t1", "t2", "heat_map"}
    assert "high-risk IPMN 0.80+-0.03" in mr.summary and "12.3 ml" in ct.summary


def test_worklist_refuses_names_not_in_it(results):
    worklist = review.open_worklist(results)
    for name in ("nope", "../ct_a", "ct_a_pancreas", "/etc/passwd", ""):
        with pytest.raises(ReviewError, match="not a case"):
            worklist.case(name)
    with pytest.raises(ReviewError, match="not a case"):
        worklist.case("ct_a", "ipmn")


def test_a_name_with_both_results_needs_its_task(results, small_mr_phantom):
    write_ipmn_case(results, results.parent / "inputs", "ct_a", small_mr_phantom)
    worklist = review.open_worklist(results)
    with pytest.raises(ReviewError, match="both"):
        worklist.case("ct_a")
    assert worklist.case("ct_a", "ipmn").task == "ipmn"


def test_a_malformed_folder_is_listed_not_raised(results):
    (results / "broken_pancreas.json").write_text("{not json", encoding="utf-8")
    (results / "list_ipmn_result.json").write_text("[1, 2]", encoding="utf-8")
    (results / "ct_b_pancreas.nii.gz").unlink()  # the model's mask gone
    (results.parent / "inputs" / "mr_b_t1.nii.gz").unlink()  # only T1 gone: still shown
    record = json.loads((results / "mr_a_ipmn_result.json").read_text(encoding="utf-8"))
    (results / "odd_ipmn_heatmap.nrrd").write_bytes((results / "mr_a_ipmn_heatmap.nrrd").read_bytes())
    (results / "odd_ipmn_result.json").write_text(json.dumps({**record, "class_name": "cancer"}), encoding="utf-8")
    (results / "results.csv").write_text("case,status,message\nmr_c,failed,T2 has NaNs\nmr_a,ok,\n",
                                         encoding="utf-8")
    worklist = review.open_worklist(results)
    by_name = {c.name: c for c in worklist.cases}
    assert "could not be read" in by_name["broken"].problem
    assert "could not be read" in by_name["list"].problem
    assert "label map is missing" in by_name["ct_b"].problem and not by_name["ct_b"].reviewable
    assert by_name["mr_b"].reviewable and any("T1" in m for m in by_name["mr_b"].missing)
    assert "T2 has NaNs" in by_name["mr_c"].problem
    assert "names no known class ('cancer')" in by_name["odd"].problem
    assert by_name["ct_a"].reviewable and by_name["mr_a"].reviewable


def test_an_input_moved_with_the_results_is_found_there(results, small_ct_phantom):
    """A folder written before inputs were recorded (or moved with them, as the demo's)."""
    write_segmentation_case(results, results, "ct_local", small_ct_phantom, record_input=False)
    case = review.open_worklist(results).case("ct_local")
    assert case.reviewable and case.files["ct"] == results / "ct_local.nrrd"
    (results / "ct_local.nrrd").unlink()
    case = review.open_worklist(results).case("ct_local")
    assert not case.reviewable and "does not say where" in case.missing[0]


def test_a_folder_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(ReviewError, match="not a folder"):
        review.open_worklist(tmp_path / "absent")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ReviewError, match="not a folder"):
        review.open_worklist(tmp_path / "file")
    assert review.open_worklist(tmp_path).problems  # empty: said, not raised


# --- verdicts ---------------------------------------------------------------------------------

def test_a_verdict_is_stored_with_the_models_identity(results):
    stored = review.record_verdict(results, ipmn_verdict(comment=" cyst, 3 cm; \"mural\" nodule\nsecond line é "))
    [row] = rows(results)
    assert row["reviewer"] == "Dr A" and row["case"] == "mr_a" and row["task"] == "ipmn"
    assert row["model"] == "ipmn-test" and row["model_sha256"] == "cd" * 32
    assert row["model_class"] == row["reviewer_class"] == "high-risk IPMN"
    assert row["comment"] == "cyst, 3 cm; \"mural\" nodule\nsecond line é"
    assert row["time"] == stored.time and len(row["time"]) == 20 and row["time"].endswith("Z")
    assert review.read_verdicts(results) == [stored]


def test_the_caller_cannot_claim_another_model(results):
    stored = review.record_verdict(results, ipmn_verdict(model="other", model_sha256="0" * 64,
                                                         model_class="normal"))
    assert (stored.model, stored.model_sha256, stored.model_class) == ("ipmn-test", "cd" * 32, "high-risk IPMN")


@pytest.mark.parametrize("verdict, message", [
    (ipmn_verdict(verdict="agree", reviewer_class="normal"), "choose 'disagree'"),
    (ipmn_verdict(verdict="disagree"), "own class"),
    (ipmn_verdict(verdict="disagree", reviewer_class="high-risk IPMN"), "own class"),
    (ipmn_verdict(verdict="maybe"), "one of agree, disagree, uncertain"),
    (ipmn_verdict(verdict="disagree", reviewer_class="cancer"), "one of normal"),
    (ipmn_verdict(reviewer="  "), "reviewer's name"),
    (ipmn_verdict(case="ct_a"), "not a case"),
    (Verdict("Dr A", "ct_a", "segmentation", "agree"), "one of accept, edited, reject"),
    (Verdict("Dr A", "ct_a", "segmentation", "accept", reviewer_class="normal"), "no class"),
    (Verdict("Dr A", "ct_a", "segmentation", "edited"), "corrected segmentation saved"),
    (Verdict("Dr A", "ct_a", "segmentation", "edited", edited_file="../ct_a_pancreas.seg.nrrd"),
     "corrected segmentation saved"),
    (Verdict("Dr A", "ct_a", "segmentation", "accept", edited_file="ct_a_pancreas.seg.nrrd"), "Only an 'edited'"),
    (Verdict("Dr A", "ct_a", "radiology", "accept"), "Unknown task"),
])
def test_a_wrong_verdict_is_refused_and_nothing_written(results, verdict, message):
    with pytest.raises(ReviewError, match=message):
        review.record_verdict(results, verdict)
    assert not (results / "review.csv").exists() and not (results / "review_history.csv").exists()


def test_uncertain_may_leave_the_class_open(results):
    stored = review.record_verdict(results, ipmn_verdict(verdict="uncertain"))
    assert stored.reviewer_class == ""
    stored = review.record_verdict(results, ipmn_verdict(verdict="uncertain", reviewer_class="low-risk IPMN"))
    assert stored.reviewer_class == "low-risk IPMN"


def test_a_case_that_cannot_be_shown_gets_no_verdict(results):
    (results / "ct_b_pancreas.nii.gz").unlink()
    with pytest.raises(ReviewError, match="nothing to give a verdict on"):
        review.record_verdict(results, Verdict("Dr A", "ct_b", "segmentation", "reject"))


def test_one_row_per_reviewer_and_case_and_history_keeps_every_verdict(results):
    review.record_verdict(results, ipmn_verdict(verdict="agree"))
    review.record_verdict(results, ipmn_verdict(verdict="disagree", reviewer_class="normal", reviewer="Dr B"))
    review.record_verdict(results, Verdict("Dr A", "ct_a", "segmentation", "accept"))
    review.record_verdict(results, ipmn_verdict(verdict="disagree", reviewer_class="low-risk IPMN"))  # A changes
    table = {(r["reviewer"], r["case"]): r for r in rows(results)}
    assert len(rows(results)) == 3
    assert table[("Dr A", "mr_a")]["verdict"] == "disagree"
    assert table[("Dr A", "mr_a")]["reviewer_class"] == "low-risk IPMN"
    assert table[("Dr B", "mr_a")]["reviewer_class"] == "normal"
    assert table[("Dr A", "ct_a")]["verdict"] == "accept"
    with open(results / "review_history.csv", newline="", encoding="utf-8") as stream:
        history = list(csv.DictReader(stream))
    assert [h["verdict"] for h in history] == ["agree", "disagree", "accept", "disagree"]
    assert set(review.verdicts_by_case(results, "Dr A")) == {("mr_a", "ipmn"), ("ct_a", "segmentation")}
    assert set(review.verdicts_by_case(results, " Dr  B ")) == {("mr_a", "ipmn")}


def test_a_failed_write_keeps_the_earlier_verdicts(results, monkeypatch):
    review.record_verdict(results, ipmn_verdict())
    before = (results / "review.csv").read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(review.os, "replace", full_disk)
    with pytest.raises(ReviewError, match="earlier verdicts are unchanged"):
        review.record_verdict(results, ipmn_verdict(case="mr_b", verdict="agree"))
    assert (results / "review.csv").read_bytes() == before
    assert sorted(p.name for p in results.iterdir() if p.name.startswith(".")) == []  # no temp, no lock


def test_a_foreign_review_csv_is_never_overwritten(results):
    (results / "review.csv").write_text("who,what\nme,that\n", encoding="utf-8")
    with pytest.raises(ReviewError, match="move it aside"):
        review.record_verdict(results, ipmn_verdict())
    assert (results / "review.csv").read_text(encoding="utf-8") == "who,what\nme,that\n"


def test_a_held_lock_is_waited_for_and_a_stale_one_taken_over(results, monkeypatch):
    lock = results / review.LOCK_FILE
    lock.write_text("12345", encoding="utf-8")
    monkeypatch.setattr(review, "LOCK_WAIT_SECONDS", 0.2)
    with pytest.raises(ReviewError, match="being saved by another reviewer"):
        review.record_verdict(results, ipmn_verdict())
    assert not (results / "review.csv").exists()
    old = os.stat(lock).st_mtime - 2 * review.STALE_LOCK_SECONDS
    os.utime(lock, (old, old))
    review.record_verdict(results, ipmn_verdict())
    assert len(rows(results)) == 1 and not lock.exists()


def test_two_reviewers_saving_at_once_lose_nothing(results):
    """Two processes record 15 verdicts each into the same folder at the same time."""
    script = (
        "import sys\n"
        "from PancreasAILib import review\n"
        "name = sys.argv[1]\n"
        "worklist = review.open_worklist(sys.argv[2])\n"
        "for round in range(15):\n"
        "    case = ('mr_a', 'mr_b')[round % 2]\n"
        "    verdict = review.Verdict(name, case, 'ipmn', 'uncertain', comment=f'{name} {round}')\n"
        "    review.record_verdict(worklist, verdict)\n"
        "    review.record_verdict(worklist, review.Verdict(name, ('ct_a', 'ct_b')[round % 2], "
        "'segmentation', 'reject', comment=str(round)))\n")
    processes = [subprocess.Popen([sys.executable, "-c", script, name, str(results)])
                 for name in ("Dr A", "Dr B", "Dr C")]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    table = rows(results)
    assert len(table) == 12  # 3 reviewers x 4 cases
    assert {r["comment"] for r in table if r["case"] == "mr_a"} == {"Dr A 14", "Dr B 14", "Dr C 14"}
    with open(results / "review_history.csv", newline="", encoding="utf-8") as stream:
        assert len(list(csv.DictReader(stream))) == 90


# --- the scene --------------------------------------------------------------------------------

def node_ids(scene) -> set:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def world_matrix(node) -> np.ndarray:
    from PancreasAILib.scene import world_ijk_to_ras

    return world_ijk_to_ras(node)


def test_a_segmentation_case_loads_on_its_oblique_flipped_ct(results, mrml_scene, small_ct_phantom):
    from PancreasAILib import review_scene
    from PancreasAILib.scene import volume_from_node

    case = review.open_worklist(results).case("ct_a")
    loaded = review_scene.load_case(case, mrml_scene)
    review_scene.show_case(mrml_scene, loaded)
    ct = volume_from_node(loaded.background)
    np.testing.assert_allclose(ct.ijk_to_ras, tilted_flipped(small_ct_phantom.ijk_to_ras), atol=1e-5)
    np.testing.assert_array_equal(ct.array, small_ct_phantom.hu)
    labelmap = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    import slicer

    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(loaded.segmentation, labelmap)
    mask = volume_from_node(labelmap)
    exported = np.zeros(small_ct_phantom.hu.shape, bool)
    # the export covers the segment's extent; place it on the CT's grid through world space
    ijk = np.linalg.inv(ct.ijk_to_ras) @ mask.ijk_to_ras
    offset = np.round(ijk[:3, 3]).astype(int)[::-1]
    np.testing.assert_allclose(ijk[:3, :3], np.eye(3), atol=1e-5)
    k, j, i = mask.shape
    exported[offset[0]:offset[0] + k, offset[1]:offset[1] + j, offset[2]:offset[2] + i] = mask.array > 0
    np.testing.assert_array_equal(exported, small_ct_phantom.pancreas > 0)
    composite = mrml_scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == loaded.background.GetID()
    center = np.mean([np.argwhere(small_ct_phantom.pancreas).min(0), np.argwhere(small_ct_phantom.pancreas).max(0)], 0)
    centre_ras = (ct.ijk_to_ras @ np.r_[center[::-1], 1])[:3]
    np.testing.assert_allclose(loaded.center_ras, centre_ras, atol=max(small_ct_phantom.spacing))
    display = loaded.background.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == review_scene.CT_PRESETS["abdomen"]


def test_an_ipmn_case_shows_the_heat_map_over_t2_centred_on_the_region(results, mrml_scene, small_mr_phantom):
    from PancreasAILib import review_scene
    from PancreasAILib.scene import volume_from_node

    case = review.open_worklist(results).case("mr_a")
    loaded = review_scene.load_case(case, mrml_scene)
    review_scene.show_case(mrml_scene, loaded, opacity=0.7)
    heat = volume_from_node(loaded.foreground)
    np.testing.assert_allclose(heat.ijk_to_ras, small_mr_phantom.ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(heat.array > 0.5, small_mr_phantom.lesion > 0)
    for layout in ("Red", "Green", "Yellow"):
        slice_node = mrml_scene.GetSingletonNode(layout, "vtkMRMLSliceNode")
        assert slice_node.GetOrientationMarkerType() == slice_node.OrientationMarkerTypeAxes
        assert slice_node.GetRulerType() == slice_node.RulerTypeThin
        composite = mrml_scene.GetSingletonNode(layout, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == loaded.background.GetID()
        assert composite.GetForegroundVolumeID() == loaded.foreground.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    # the slices go through the heat map's peak (here the lesion), the region outlined and locked
    peak = np.unravel_index(np.argmax(heat.array), heat.shape)
    np.testing.assert_allclose(loaded.center_ras, (heat.ijk_to_ras @ np.r_[peak[::-1], 1])[:3], atol=1e-4)
    assert small_mr_phantom.lesion[peak] > 0
    assert loaded.roi.GetLocked() and not loaded.roi.GetDisplayNode().GetFillVisibility()
    legends = [loaded.foreground.GetNthDisplayNode(n) for n in range(loaded.foreground.GetNumberOfDisplayNodes())
               if loaded.foreground.GetNthDisplayNode(n).IsA("vtkMRMLColorLegendDisplayNode")]
    assert len(legends) == 1 and "not a probability" in legends[0].GetTitleText() and legends[0].GetVisibility()
    assert legends[0] in loaded.nodes  # removed with the case
    display = loaded.foreground.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(review_scene.HEAT_MAP_FLOOR)
    center = [0.0] * 3
    loaded.roi.GetCenter(center)
    np.testing.assert_allclose(center, small_mr_phantom.pancreas_box_ras[0], atol=1e-6)
    assert loaded.foreground.GetAttribute("IPMNRisk.Model") == "ipmn-test"
    review_scene.show_case(mrml_scene, loaded, background="t1")
    composite = mrml_scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == loaded.alternate_background.GetID()


def test_unload_leaves_the_scene_as_it_was(results, mrml_scene):
    from PancreasAILib import review_scene

    before = node_ids(mrml_scene)
    worklist = review.open_worklist(results)
    for name in ("ct_a", "mr_a"):
        loaded = review_scene.load_case(worklist.case(name), mrml_scene)
        assert node_ids(mrml_scene) - before
        review_scene.unload_case(mrml_scene, loaded)
    view_nodes = {n for n in node_ids(mrml_scene) - before}
    assert all("Slice" in n or "Color" in n for n in view_nodes), view_nodes


def test_a_damaged_file_adds_nothing_to_the_scene(results, mrml_scene):
    from PancreasAILib import review_scene

    (results / "mr_a_ipmn_heatmap.nrrd").write_bytes(b"NRRD0004\ngarbage")
    case = review.open_worklist(results).case("mr_a")
    before = node_ids(mrml_scene)
    with pytest.raises(Exception) as raised:
        review_scene.load_case(case, mrml_scene)
    assert isinstance(raised.value, review.PancreasAIError)
    assert node_ids(mrml_scene) == before


def test_a_heat_map_off_the_t2_grid_is_refused(results, mrml_scene, small_mr_phantom):
    from PancreasAILib import review_scene

    heat = read_volume(results / "mr_a_ipmn_heatmap.nrrd")
    shifted = heat.ijk_to_ras.copy()
    shifted[0, 3] += 5.0
    write_volume(Volume(heat.array, shifted), results / "mr_a_ipmn_heatmap.nrrd")
    with pytest.raises(review.PancreasAIError, match="not on its T2's grid"):
        review_scene.load_case(review.open_worklist(results).case("mr_a"), mrml_scene)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrected_pancreas_is_saved_beside_the_models_never_over_it(results, mrml_scene, small_ct_phantom):
    import slicer

    from PancreasAILib import review_scene
    from PancreasAILib.scene import oriented_image, world_ijk_to_ras

    worklist = review.open_worklist(results)
    case = worklist.case("ct_a")
    model_files = {p: file_sha256(p) for p in results.glob("ct_a_pancreas*")}
    loaded = review_scene.load_case(case, mrml_scene)
    # The radiologist erases the pancreas in the lower half of the slices.
    corrected = (small_ct_phantom.pancreas > 0).astype(np.uint8)
    corrected[: corrected.shape[0] // 2] = 0
    segmentation = loaded.segmentation
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    image = oriented_image(corrected, world_ijk_to_ras(loaded.background))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, segmentation, segment_id, logic.MODE_REPLACE, image.GetExtent())

    path = review_scene.save_reviewed_segmentation(worklist, case, segmentation, loaded.background, "Dr A")
    assert path == results / "ct_a_pancreas_reviewed.seg.nrrd"
    saved = read_volume(path)
    np.testing.assert_allclose(saved.ijk_to_ras, tilted_flipped(small_ct_phantom.ijk_to_ras), atol=1e-5)
    np.testing.assert_array_equal(saved.array, corrected)
    assert {p: file_sha256(p) for p in model_files} == model_files
    stored = review.record_verdict(worklist, Verdict("Dr A", "ct_a", "segmentation", "edited"))
    assert stored.edited_file == path.name

    # A second reviewer's correction goes to a file of their own; the first is kept.
    other = review_scene.save_reviewed_segmentation(worklist, case, segmentation, loaded.background, "Dr B/2")
    assert other.name == "ct_a_pancreas_reviewed_Dr_B_2.seg.nrrd" and path.exists()
    assert review.record_verdict(worklist, Verdict("Dr B/2", "ct_a", "segmentation", "edited")).edited_file == other.name

    # Reopened, the reviewer's correction is shown (the model's is kept, hidden).
    review_scene.unload_case(mrml_scene, loaded)
    again = review_scene.load_case(case, mrml_scene, reviewed_file=path)
    assert again.reviewed_segmentation is not None
    assert not again.segmentation.GetDisplayNode().GetVisibility()


# --- one reviewer's session (what the Slicer Review sections run) --------------------------------

def test_a_session_shows_one_case_at_a_time_and_records_verdicts(results, mrml_scene):
    from PancreasAILib.review_session import ReviewSession

    before = node_ids(mrml_scene)
    session = ReviewSession(results, "Dr A", mrml_scene, task="ipmn")
    assert [c.name for c in session.cases] == ["mr_a", "mr_b"]
    session.go_to(session.first_unreviewed())
    assert session.current.name == "mr_a" and session.loaded.foreground is not None
    shown_first = set(n.GetID() for n in session.loaded.nodes)
    assert session.record("disagree", "low-risk IPMN", "nodule not seen").reviewer_class == "low-risk IPMN"
    assert session.first_unreviewed() == 1
    session.next()
    assert session.current.name == "mr_b"
    assert not shown_first & node_ids(mrml_scene)  # the first case's nodes are gone
    session.next()  # past the end: stays on the last
    assert session.current.name == "mr_b"
    session.record("agree")
    assert [(c.name, v.verdict if v else None) for c, v in session.rows()] == [("mr_a", "disagree"), ("mr_b", "agree")]
    session.previous()
    assert session.current.name == "mr_a"
    session.close()
    assert all("Slice" in n or "Color" in n for n in node_ids(mrml_scene) - before)


def test_a_session_corrects_a_pancreas_and_records_it_edited(results, mrml_scene):
    from PancreasAILib.review_session import ReviewSession

    session = ReviewSession(results, "Dr A", mrml_scene, task="segmentation")
    session.go_to(0)
    with pytest.raises(ReviewError, match="saved"):
        session.record("edited")
    path = session.save_correction()
    stored = session.record("edited", comment="tail trimmed")
    assert stored.edited_file == path.name == "ct_a_pancreas_reviewed.seg.nrrd"
    session.go_to(1)
    session.go_to(0)  # back: the reviewer's correction is shown
    assert session.loaded.reviewed_segmentation is not None


def test_a_session_says_why_a_case_cannot_be_shown(results, mrml_scene):
    from PancreasAILib.review_session import ReviewSession

    (results / "ct_a_pancreas.nii.gz").unlink()
    session = ReviewSession(results, "", mrml_scene, task="segmentation")
    with pytest.raises(ReviewError, match="label map is missing"):
        session.go_to(0)
    assert session.current.name == "ct_a" and session.loaded is None
    with pytest.raises(ReviewError, match="reviewer's name"):
        session.record("reject")


# --- what the mutation run of review.py found untested --------------------------------------------

def test_the_files_a_case_has_are_named_and_what_is_missing_says_where_it_was(results, small_ct_phantom):
    inputs = results.parent / "inputs"
    for name in ("ct_a_pancreas.png", "ct_a_scene.mrb", "ct_a_pancreas.dcm", "mr_a_ipmn_scene.mrb",
                 "mr_a_ipmn_grid.png"):
        (results / name).write_bytes(b"x")
    worklist = review.open_worklist(results)
    ct, mr = worklist.case("ct_a"), worklist.case("mr_a")
    assert {k: p.name for k, p in ct.files.items()} == {
        "ct": "ct_a.nrrd", "labelmap": "ct_a_pancreas.nii.gz", "segmentation": "ct_a_pancreas.seg.nrrd",
        "picture": "ct_a_pancreas.png", "scene": "ct_a_scene.mrb", "dicom_seg": "ct_a_pancreas.dcm"}
    assert {k: p.name for k, p in mr.files.items()} == {
        "t1": "mr_a_t1.nii.gz", "t2": "mr_a_t2.nii.gz", "heat_map": "mr_a_ipmn_heatmap.nrrd",
        "grid_png": "mr_a_ipmn_grid.png", "scene": "mr_a_ipmn_scene.mrb"}
    (inputs / "ct_a.nrrd").unlink()
    (results / "ct_a_pancreas.nii.gz").unlink()
    (results / "mr_b_ipmn_heatmap.nrrd").unlink()
    worklist = review.open_worklist(results)
    ct_a, mr_b = worklist.case("ct_a"), worklist.case("mr_b")
    assert ct_a.missing == (f"the CT is missing ({inputs / 'ct_a.nrrd'})", "the pancreas label map is missing")
    assert ct_a.problem == "cannot be shown: the CT and the pancreas label map are missing"
    assert mr_b.problem == "cannot be shown: the heat map is missing"
    assert mr_b.missing == ("the heat map is missing", "the grid picture is missing")


def test_outputs_and_inputs_are_found_where_the_result_says(results, small_mr_phantom):
    """A heat map and grid kept elsewhere (the result's own paths), inputs given relative to the folder."""
    elsewhere = results.parent / "elsewhere"
    elsewhere.mkdir()
    record = json.loads((results / "mr_a_ipmn_result.json").read_text(encoding="utf-8"))
    (results / "mr_a_ipmn_heatmap.nrrd").rename(elsewhere / "heat.nrrd")
    (elsewhere / "grid.png").write_bytes(b"x")
    (results / "sub").mkdir()
    for key in ("t1", "t2"):
        Path(record[key]).rename(results / "sub" / Path(record[key]).name)
        record[key] = f"sub/{Path(record[key]).name}"
    record.update(heat_map=str(elsewhere / "heat.nrrd"), grid_png=str(elsewhere / "grid.png"))
    (results / "mr_a_ipmn_result.json").write_text(json.dumps(record), encoding="utf-8")
    case = review.open_worklist(results).case("mr_a")
    assert case.reviewable
    assert (case.files["heat_map"], case.files["grid_png"]) == (elsewhere / "heat.nrrd", elsewhere / "grid.png")
    assert case.files["t2"] == results / "sub" / "mr_a_t2.nii.gz"


def test_failed_batch_rows_and_an_unreadable_table(results):
    table = results / "results.csv"
    table.write_text("\ufeffcase,status,message\nmr_c,failed,\nmr_a,failed,stale row\nmr_d,ok,\n,failed,x\n"
                     "mr_c,failed,again\n", encoding="utf-8")
    worklist = review.open_worklist(results)
    failed = [c for c in worklist.cases if c.result_file is None]
    assert [(c.name, c.task, c.problem) for c in failed] == [("mr_c", "ipmn", "the assessment failed: no reason recorded")]
    assert worklist.case("mr_a").reviewable  # its result file wins over a stale row
    table.write_bytes(b"case,status\n\xff\xfe,failed\n")
    assert review.open_worklist(results).problems == ("results.csv could not be read "
                                                      "('utf-8' codec can't decode byte 0xff in position 12: "
                                                      "invalid start byte).",)


def test_an_empty_folder_says_it_holds_no_results(tmp_path):
    assert review.open_worklist(tmp_path).problems == (
        f"{tmp_path} holds no results (no *_pancreas.json or *_ipmn_result.json).",)


@pytest.fixture
def windows_code_page(monkeypatch):
    """Files opened without an encoding decode as cp1252, as on a Western-European Windows."""
    import io

    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "cp1252")


def test_names_and_comments_round_trip_in_utf8_under_a_windows_code_page(results, windows_code_page):
    record = json.loads((results / "mr_a_ipmn_result.json").read_text(encoding="utf-8"))
    record["warnings"] = ["T2 für die Prüfung"]
    (results / "mr_a_ipmn_result.json").write_bytes(json.dumps(record, ensure_ascii=False).encode("utf-8"))
    (results / "results.csv").write_bytes("case,status,message\nmr_ü,failed,Größe\n".encode("utf-8"))
    worklist = review.open_worklist(results)
    assert worklist.case("mr_a").warnings == ["T2 für die Prüfung"]
    assert worklist.case("mr_ü").problem == "the assessment failed: Größe"
    comment = "Zyste im Kopf, Größe 3 cm\r\nzweite Zeile"
    review.record_verdict(worklist, ipmn_verdict(reviewer="Dr Müller", comment=comment))
    [stored] = review.read_verdicts(results)
    assert (stored.reviewer, stored.comment) == ("Dr Müller", comment)
    assert "Dr Müller".encode("utf-8") in (results / "review.csv").read_bytes()
    assert "Dr Müller".encode("utf-8") in (results / "review_history.csv").read_bytes()
    assert (results / "review.csv").read_bytes().count(b"\r\n") == 1  # only the one in the comment


def test_the_reviewer_is_normalised_and_the_time_is_utc(results, monkeypatch):
    import time as clock
    from datetime import datetime, timezone

    monkeypatch.setenv("TZ", "America/New_York")
    clock.tzset()
    try:
        stored = review.record_verdict(results, ipmn_verdict(reviewer="  Dr \t A  "))
    finally:
        monkeypatch.delenv("TZ")
        clock.tzset()
    assert stored.reviewer == "Dr A" and review.read_verdicts(results)[0].reviewer == "Dr A"
    recorded = datetime.strptime(stored.time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - recorded).total_seconds()) < 60
    review.record_verdict(results, ipmn_verdict(reviewer="x" * 100))
    with pytest.raises(ReviewError, match="longer than 100"):
        review.record_verdict(results, ipmn_verdict(reviewer="x" * 101))


def test_a_lock_released_while_waiting_is_taken(results, monkeypatch):
    import threading

    lock = results / review.LOCK_FILE
    lock.write_text("12345", encoding="utf-8")
    monkeypatch.setattr(review, "LOCK_WAIT_SECONDS", 5.0)
    threading.Timer(0.5, lock.unlink).start()
    review.record_verdict(results, ipmn_verdict())
    assert len(rows(results)) == 1 and not lock.exists()


@pytest.mark.parametrize("reviewer, expected", [("Dr B/2", "ct_a_pancreas_reviewed_Dr_B_2.seg.nrrd"),
                                                ("..Dr. B.", "ct_a_pancreas_reviewed_Dr._B.seg.nrrd"),
                                                ("?!", "ct_a_pancreas_reviewed_reviewer.seg.nrrd")])
def test_a_second_reviewers_correction_gets_a_file_name_of_its_own(results, reviewer, expected):
    worklist = review.open_worklist(results)
    assert review.reviewed_segmentation_name(worklist, "ct_a", "Dr A") == "ct_a_pancreas_reviewed.seg.nrrd"
    (results / "ct_a_pancreas_reviewed.seg.nrrd").write_bytes(b"x")
    review.record_verdict(worklist, Verdict("Dr A", "ct_a", "segmentation", "edited"))
    assert review.reviewed_segmentation_name(worklist, "ct_a", "Dr A") == "ct_a_pancreas_reviewed.seg.nrrd"
    assert review.reviewed_segmentation_name(worklist, "ct_a", reviewer) == expected
