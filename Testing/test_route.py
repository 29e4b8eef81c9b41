"""The one route from the scene to a result (issue #10): a console call (in this process) and an
Apply click (a separate process) run the same command line and read back the same files, so they
give the same result, node attributes and files. Driven on real slicer-core scenes, with a real
subprocess for the background route.

The inputs are deliberately awkward: an oblique, anisotropic, flipped CT under a linear parent
transform, with values shifted out of the Hounsfield range so that the command line warns."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.runners import BackgroundRunner, InProcessRunner
from PancreasAILib.volume import Volume


def _oblique_flipped(ijk_to_ras: np.ndarray) -> np.ndarray:
    """The phantom's grid turned 25 degrees about the S axis, with its J axis reversed and
    anisotropic voxels."""
    angle = np.radians(25)
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    flip_j = np.diag([1.0, -1.0, 1.0, 1.0])
    stretch = np.diag([1.0, 1.0, 1.6, 1.0])
    return turn @ ijk_to_ras @ stretch @ flip_j


class SnapshotRunner:
    """A runner that keeps each task, how it ended, and a copy of what the command line wrote
    (the route removes its work folder afterwards) before the result is imported."""

    def __init__(self, runner, folder: Path) -> None:
        self.runner, self.folder = runner, folder
        self.tasks, self.endings = [], []  # each task, and its (ok, message)

    def new_task(self, package, arguments, python_paths=(), on_progress=None, on_finished=None):
        output = Path(arguments[arguments.index("--output") + 1])

        def finished(ok, message):
            self.endings.append((ok, message))
            if output.is_dir():
                shutil.copytree(output, self.folder)
            on_finished(ok, message)

        task = self.runner.new_task(package, arguments, python_paths, on_progress=on_progress,
                                    on_finished=finished)
        self.tasks.append(task)
        return task


@pytest.fixture
def ct_node(mrml_scene, small_ct_phantom):
    from PancreasAILib.scene import add_volume_node

    import vtk

    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.0)
    transform.SetMatrixTransformToParent(matrix)
    ct = Volume((small_ct_phantom.hu + 1500).astype(np.int16), _oblique_flipped(small_ct_phantom.ijk_to_ras))
    node = add_volume_node(mrml_scene, ct, "CT")
    node.SetAndObserveTransformNodeID(transform.GetID())
    return node


def _segment_voxels(outcome, volume_node) -> np.ndarray:
    import slicer

    node = outcome.segmentation_node
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("Pancreas")
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume_node)


def _attributes(node, prefix: str) -> dict:
    return {name: node.GetAttribute(name) for name in node.GetAttributeNames() if name.startswith(prefix)}


def _without_seconds(record: dict) -> dict:
    """A result record without the time it took, and with the names of the files it lists, inputs
    included (each route has its own work folder)."""
    return {key: Path(value).name if key in ("heat_map", "grid_png", "scene", "input", "t1", "t2") else value
            for key, value in record.items() if key != "seconds"}


@pytest.mark.slow
def test_a_click_and_a_console_call_segment_alike(ct_node, random_monet_card, tmp_path, work_folders):
    from PancreasAILib.volume_io import read_volume
    from PancreasSegMoNetLib import logic

    model = str(random_monet_card.card_path)
    console = logic.segment(ct_node, model=model, threshold=0.3, runner=SnapshotRunner(InProcessRunner(), tmp_path / "a"))
    click = logic.segment(ct_node, model=model, threshold=0.3, runner=SnapshotRunner(BackgroundRunner(), tmp_path / "b"))

    # The result object: everything but the time it took.
    assert console.warnings and "Hounsfield" in console.warnings[0]
    assert (console.model_sha256, console.threshold) == (random_monet_card.sha256, 0.3)
    assert {k: v for k, v in vars(click).items() if k not in ("segmentation_node", "seconds")} == \
        {k: v for k, v in vars(console).items() if k not in ("segmentation_node", "seconds")}
    # The nodes: the same voxels, the same attributes, both under the CT's transform.
    assert console.voxel_count > 0
    assert np.array_equal(_segment_voxels(click, ct_node), _segment_voxels(console, ct_node))
    attributes = _attributes(console.segmentation_node, "PancreasSegMoNet.")
    assert attributes == _attributes(click.segmentation_node, "PancreasSegMoNet.")
    assert attributes["PancreasSegMoNet.Warnings"].splitlines() == console.warnings
    assert attributes["PancreasSegMoNet.ModelSHA256"] == random_monet_card.sha256
    assert click.segmentation_node.GetTransformNodeID() == ct_node.GetTransformNodeID()
    # The files: the same names and contents.
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "b").iterdir()) == [
        "input_pancreas.json", "input_pancreas.nii.gz", "input_pancreas.seg.nrrd"]
    records = [json.loads((tmp_path / side / "input_pancreas.json").read_text(encoding="utf-8")) for side in "ab"]
    assert _without_seconds(records[0]) == _without_seconds(records[1])
    assert records[0]["warnings"] == console.warnings
    masks = [read_volume(tmp_path / side / "input_pancreas.nii.gz") for side in "ab"]
    assert np.array_equal(masks[0].array, masks[1].array)
    assert np.allclose(masks[0].ijk_to_ras, masks[1].ijk_to_ras)
    assert list(work_folders.iterdir()) == []


@pytest.mark.slow
def test_a_click_and_a_console_call_assess_alike(mrml_scene, small_mr_phantom, random_vit_card, tmp_path,
                                                 work_folders):
    import slicer

    from IPMNRiskLib import logic
    from PancreasAILib.scene import add_volume_node

    p = small_mr_phantom
    t1 = add_volume_node(mrml_scene, Volume(p.t1, _oblique_flipped(p.ijk_to_ras)), "T1")
    t2 = add_volume_node(mrml_scene, Volume(p.t2, _oblique_flipped(p.ijk_to_ras)), "T2")
    region = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "region")
    region.SetReferenceImageGeometryParameterFromVolumeNode(t2)
    box = np.zeros(p.t2.shape, np.uint8)
    box[4:12, 30:80, 30:80] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(box, region, region.GetSegmentation().AddEmptySegment("r"), t2)
    model = str(random_vit_card.card_path)

    console = logic.assess(t1, t2, region, model=model, tta=False,
                           runner=SnapshotRunner(InProcessRunner(), tmp_path / "a"))
    click = logic.assess(t1, t2, region, model=model, tta=False,
                         runner=SnapshotRunner(BackgroundRunner(), tmp_path / "b"))

    for field in ("risk_class", "class_name", "class_names", "grid_png", "model_name", "model_sha256", "warnings"):
        assert getattr(click, field) == getattr(console, field), field
    assert np.allclose(click.probabilities, console.probabilities) and np.allclose(click.spread, console.spread)
    assert console.model_sha256 == random_vit_card.sha256
    assert console.grid_png.startswith(b"\x89PNG")
    heat_maps = [slicer.util.arrayFromVolume(outcome.heat_map_node) for outcome in (console, click)]
    assert heat_maps[0].shape == p.t2.shape and np.array_equal(heat_maps[0], heat_maps[1])
    for node in ("heat_map_node", "table_node"):
        assert _attributes(getattr(console, node), "IPMNRisk.") == _attributes(getattr(click, node), "IPMNRisk.")
    assert _attributes(console.table_node, "IPMNRisk.")["IPMNRisk.ModelSHA256"] == random_vit_card.sha256
    tables = [[[outcome.table_node.GetCellText(row, column) for column in range(2)]
               for row in range(outcome.table_node.GetNumberOfRows())] for outcome in (console, click)]
    assert tables[0] == tables[1]
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "b").iterdir()) == [
        "assessment_ipmn_grid.png", "assessment_ipmn_heatmap.nrrd", "assessment_ipmn_result.json"]
    records = [json.loads((tmp_path / side / "assessment_ipmn_result.json").read_text(encoding="utf-8"))
               for side in "ab"]
    assert _without_seconds(records[0]) == _without_seconds(records[1])
    assert list(work_folders.iterdir()) == []


@pytest.mark.parametrize("runner", [InProcessRunner, BackgroundRunner])
def test_a_failure_says_the_same_on_both_routes_and_changes_nothing(runner, ct_node, tmp_path, work_folders):
    from PancreasAILib.errors import PancreasAIError
    from PancreasSegMoNetLib import logic

    scene = ct_node.GetScene()
    before = scene.GetNumberOfNodes()
    missing = tmp_path / "no-such-model.safetensors"

    with pytest.raises(PancreasAIError, match="no-such-model"):
        logic.segment(ct_node, model=str(missing), runner=runner())

    assert scene.GetNumberOfNodes() == before
    assert list(work_folders.iterdir()) == []


@pytest.mark.parametrize("runner", [InProcessRunner, BackgroundRunner])
def test_cancel_leaves_the_scene_and_no_work_folder(runner, ct_node, random_monet_card, work_folders):
    from PancreasAILib.errors import OperationCancelled
    from PancreasSegMoNetLib import logic

    scene = ct_node.GetScene()
    before = scene.GetNumberOfNodes()
    outcomes = []

    def cancel_on_first_progress(fraction, status):
        if not task_box[0].cancelled:
            task_box[0].cancel()

    class Capture:  # the task, so the progress callback can cancel it as the Cancel button does
        def __init__(self, inner):
            self.inner = inner

        def new_task(self, *args, **kwargs):
            task = self.inner.new_task(*args, **kwargs)
            task_box.append(task)
            return task

    task_box = []
    task = logic.start_segmentation(Capture(runner()), ct_node, model=str(random_monet_card.card_path),
                                    on_progress=cancel_on_first_progress,
                                    on_finished=lambda *outcome: outcomes.append(outcome))
    task.wait_for_finished(120000)

    assert outcomes == [(None, "")] and task.cancelled
    assert scene.GetNumberOfNodes() == before
    assert list(work_folders.iterdir()) == []
    with pytest.raises(OperationCancelled):
        from PancreasAILib.progress import CancelToken

        token = CancelToken()
        token.cancel()
        logic.segment(ct_node, model=str(random_monet_card.card_path), cancel=token)


def test_a_t1_covering_part_of_the_region_is_warned_of_on_every_route(mrml_scene, small_mr_phantom,
                                                                     random_vit_card, tmp_path):
    from IPMNRiskLib import logic
    from IPMNRiskLib.grids import RegionBox
    from PancreasAILib.scene import add_volume_node

    p = small_mr_phantom
    center, size = p.pancreas_box_ras
    corners = RegionBox(center, size).corners_ras()
    ijk = (np.linalg.inv(p.ijk_to_ras) @ np.c_[corners, np.ones(8)].T).T[:, 0]
    i_low, i_high = ijk.min(), ijk.max()
    keep = int(np.ceil(i_low + 0.85 * (i_high - i_low)))  # T1 ends at 85% of the region's width
    t1 = add_volume_node(mrml_scene, Volume(np.ascontiguousarray(p.t1[:, :, :keep]), p.ijk_to_ras), "T1")
    t2 = add_volume_node(mrml_scene, Volume(p.t2, p.ijk_to_ras), "T2")
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "region")
    roi.SetCenter(*[float(v) for v in center])
    roi.SetSize(*[float(v) for v in size])
    model = str(random_vit_card.card_path)

    outcomes = [logic.assess(t1, t2, roi, model=model, tta=False,
                             runner=SnapshotRunner(runner, tmp_path / side))
                for runner, side in ((InProcessRunner(), "a"), (BackgroundRunner(), "b"))]

    for outcome, side in zip(outcomes, "ab"):
        assert len(outcome.warnings) == 1 and "covers only" in outcome.warnings[0], outcome.warnings
        assert 75 <= int(outcome.warnings[0].split("covers only ")[1].split("%")[0]) < 100
        assert outcome.table_node.GetAttribute("IPMNRisk.Warnings") == outcome.warnings[0]
        assert outcome.heat_map_node.GetAttribute("IPMNRisk.Warnings") == outcome.warnings[0]
        record = json.loads((tmp_path / side / "assessment_ipmn_result.json").read_text(encoding="utf-8"))
        assert record["warnings"] == outcome.warnings
    assert outcomes[0].warnings == outcomes[1].warnings


@pytest.mark.parametrize("runner", [InProcessRunner, BackgroundRunner])
def test_a_cancel_token_stops_either_route_and_leaves_nothing(runner, ct_node, random_monet_card, work_folders):
    from PancreasAILib.errors import OperationCancelled
    from PancreasAILib.progress import CancelToken
    from PancreasSegMoNetLib import logic

    scene = ct_node.GetScene()
    before = scene.GetNumberOfNodes()
    token = CancelToken()
    started = []

    def progress(fraction, status):
        started.append(status)
        token.cancel()  # as a GUI's Cancel button would, between two steps

    with pytest.raises(OperationCancelled):
        logic.segment(ct_node, model=str(random_monet_card.card_path), progress=progress, cancel=token,
                      runner=runner())

    assert len(started) == 1
    assert scene.GetNumberOfNodes() == before
    assert list(work_folders.iterdir()) == []


@pytest.mark.parametrize("runner", [InProcessRunner, BackgroundRunner])
def test_a_fault_in_a_progress_callback_stops_the_work_and_reaches_the_caller(runner, ct_node, random_monet_card,
                                                                            work_folders):
    from PancreasSegMoNetLib import logic

    def faulty(fraction, status):
        raise ZeroDivisionError("the progress bar's own bug")

    with pytest.raises(ZeroDivisionError, match="progress bar"):
        logic.segment(ct_node, model=str(random_monet_card.card_path), progress=faulty, runner=runner())

    assert list(work_folders.iterdir()) == []


@pytest.mark.parametrize("runner", [InProcessRunner, BackgroundRunner])
def test_a_fault_while_reading_the_result_back_is_still_reported(runner, ct_node, random_monet_card, work_folders,
                                                                monkeypatch):
    from PancreasSegMoNetLib import logic, pancreas_segment

    def broken(*args, **kwargs):
        raise RuntimeError("Slicer could not write the pancreas voxels into the segmentation.")

    monkeypatch.setattr(pancreas_segment, "import_mask_file", broken)
    outcomes = []
    task = logic.start_segmentation(runner(), ct_node, model=str(random_monet_card.card_path),
                                    on_finished=lambda *outcome: outcomes.append(outcome))
    task.wait_for_finished(120000)

    assert outcomes == [(None, "Slicer could not write the pancreas voxels into the segmentation.")]
    assert list(work_folders.iterdir()) == []
    with pytest.raises(RuntimeError, match="could not write"):
        logic.segment(ct_node, model=str(random_monet_card.card_path), runner=runner())
