"""The routes that run in PythonSlicer, run under a stand-in of it (`Testing/PythonSlicer/slicer`):
the modules' background processes, with the arguments the GUI builds, and the README's
`PythonSlicer -m ...` commands. PythonSlicer has MRML but no module logics, so it cannot write a
scene file; slicer-core (used by the other tests) has everything, which hid that every IPMN
assessment from the GUI failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from PancreasAILib.runners import BackgroundRunner
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from test_route import SnapshotRunner

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = Path(__file__).parent / "PythonSlicer"
MODULE_DIRS = ("PancreasAI", "PancreasSegMoNet", "IPMNRisk")


def python_slicer(*arguments, cwd: Path) -> subprocess.CompletedProcess:
    """`PythonSlicer -m ...` as the stand-in gives it: its `slicer` first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STAND_IN), *(str(ROOT / d) for d in MODULE_DIRS)]))
    return subprocess.run([sys.executable, "-m", *map(str, arguments)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_stand_in_has_what_python_slicer_has_and_no_module_logic():
    probe = ("import slicer; print(slicer.__file__); "
             "print(all(hasattr(slicer, n) for n in ('vtkMRMLScene', 'vtkMRMLScalarVolumeNode', "
             "'vtkMRMLSegmentationNode', 'vtkSegmentation', 'vtkSlicerApplicationLogic'))); "
             "print(any(hasattr(slicer, n) for n in ('vtkSlicerVolumesLogic', "
             "'vtkSlicerSegmentationsModuleLogic', 'vtkSlicerMarkupsLogic'))); "
             "print(callable(slicer.util.arrayFromVolume))")
    env = dict(os.environ, PYTHONPATH=str(STAND_IN))
    lines = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert lines == [str(STAND_IN / "slicer" / "__init__.py"), "True", "False", "True"]


@pytest.fixture
def mr_files(tmp_path, small_mr_phantom):
    """T1 and T2 files, as the README's command takes them."""
    p = small_mr_phantom
    write_volume(Volume(p.t1, p.ijk_to_ras), tmp_path / "t1.nrrd")
    write_volume(Volume(p.t2, p.ijk_to_ras), tmp_path / "t2.nrrd")
    return tmp_path, p.pancreas_box_ras


def stand_in_runner(folder: Path) -> SnapshotRunner:
    """The Apply buttons' runner (`PancreasAIApp.slicer_process.slicerBackgroundRunner`: a
    process of its own) with the stand-in's `slicer` first on the path, keeping its tasks, how
    they ended and what they wrote."""
    return SnapshotRunner(BackgroundRunner(environment=dict(os.environ, PYTHONPATH=str(STAND_IN))), folder)


def test_the_ipmn_gui_route_runs_in_python_slicer(mrml_scene, mr_nodes, random_vit_card, tmp_path,
                                                   work_folders):
    from IPMNRiskLib import logic

    t1, t2, roi = mr_nodes
    runner = stand_in_runner(tmp_path / "written")

    outcome = logic.assess(t1, t2, roi, model=str(random_vit_card.weights_path), device="cpu", tta=False,
                           runner=runner)

    # The command line ran in the stand-in, and neither wrote nor tried to write a scene ...
    (task,) = runner.tasks
    assert runner.endings[0][0], runner.endings
    assert not list((tmp_path / "written").glob("*.mrb"))
    assert not any("No review scenes" in message for message in task.messages)
    # ... and the application's half of the route took the files in, then removed its work folder.
    assert outcome.heat_map_node.GetScene() is mrml_scene
    assert outcome.grid_png == (tmp_path / "written" / f"{logic.CASE}_ipmn_grid.png").read_bytes()
    assert outcome.table_node.GetAttribute("IPMNRisk.GridPNG") is None  # the picture is outcome.grid_png
    assert list(work_folders.iterdir()) == []


def test_the_readme_ipmn_command_in_python_slicer_writes_everything_but_the_scene(mr_files, random_vit_card):
    folder, (center, size) = mr_files
    triple = lambda values: ",".join(f"{v:.2f}" for v in values)  # noqa: E731
    result = python_slicer("IPMNRiskLib", "assess", "--t1", "t1.nrrd", "--t2", "t2.nrrd",
                           f"--roi-center={triple(center)}", f"--roi-size={triple(size)}", "-o", "results",
                           "--model", random_vit_card.weights_path, "--no-tta", cwd=folder)

    assert result.returncode == 0, result.stderr
    assert "No review scenes (.mrb): this Python's 'slicer' has no vtkSlicerVolumesLogic" in result.stdout + result.stderr
    written = sorted(p.name for p in (folder / "results").iterdir())
    assert written == ["t2_ipmn_grid.png", "t2_ipmn_heatmap.nrrd", "t2_ipmn_result.json"]


def test_the_segmentation_gui_route_runs_in_python_slicer(mrml_scene, small_ct_phantom, random_monet_card,
                                                          tmp_path, work_folders):
    import slicer

    from PancreasAILib.scene import add_volume_node
    from PancreasSegMoNetLib import logic

    ct = small_ct_phantom
    ct_node = add_volume_node(mrml_scene, Volume(ct.hu, ct.ijk_to_ras), "CT")
    runner = stand_in_runner(tmp_path / "written")

    outcome = logic.segment(ct_node, model=str(random_monet_card.weights_path), device="cpu", runner=runner)

    assert runner.endings[0][0], runner.endings
    labels = read_volume(tmp_path / "written" / f"{logic.CASE}_pancreas.nii.gz")
    assert labels.shape == ct.hu.shape
    node = outcome.segmentation_node
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("Pancreas")
    assert (slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, ct_node) == labels.array).all()
    assert list(work_folders.iterdir()) == []
