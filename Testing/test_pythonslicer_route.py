"""The routes that run in PythonSlicer, run under a stand-in of it (`Testing/PythonSlicer/slicer`):
the modules' background processes, with the arguments the GUI builds, and the README's
`PythonSlicer -m ...` commands. PythonSlicer has MRML but no module logics, so it cannot write a
scene file; slicer-core (used by the other tests) has everything, which hid that every IPMN
assessment from the GUI failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from test_slicer_extension_static import module_files  # noqa: F401  (the module files over app stand-ins)

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
    """T1 and T2 exported as the GUI exports them (.nrrd in its work folder)."""
    p = small_mr_phantom
    write_volume(Volume(p.t1, p.ijk_to_ras), tmp_path / "t1.nrrd")
    write_volume(Volume(p.t2, p.ijk_to_ras), tmp_path / "t2.nrrd")
    return tmp_path, p.pancreas_box_ras


def test_the_ipmn_gui_route_runs_in_python_slicer(module_files, mr_files, random_vit_card,  # noqa: F811
                                                   mrml_scene):
    from IPMNRiskLib.result_nodes import import_assessment_files
    from PancreasAILib.scene import add_volume_node

    folder, (center, size) = mr_files
    output = folder / "output"
    arguments = module_files["IPMNRisk"].assessmentArguments(
        str(folder / "t1.nrrd"), str(folder / "t2.nrrd"), center, size, str(output),
        str(random_vit_card.weights_path), "cpu", False)

    result = python_slicer("IPMNRiskLib", *arguments, cwd=folder)

    assert result.returncode == 0, result.stderr
    assert not list(output.glob("*.mrb")) and "No review scenes" not in result.stdout + result.stderr
    # ... and the application's half of the route takes the files in.
    t2 = read_volume(folder / "t2.nrrd")
    t2_node = add_volume_node(mrml_scene, t2, "T2")
    imported = import_assessment_files(t2_node, output)
    assert imported.heat_map_node.GetScene() is mrml_scene
    picture = (output / "t2_ipmn_grid.png").read_bytes()
    shutil.rmtree(folder)  # the GUI's work folder goes once the result is in the scene; the grid stays
    assert Path(imported.grid_png_path).read_bytes() == picture
    assert imported.table_node.GetAttribute("IPMNRisk.GridPNG") == str(imported.grid_png_path)


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


def test_the_segmentation_gui_route_runs_in_python_slicer(module_files, tmp_path, small_ct_phantom,  # noqa: F811
                                                          random_monet_card):
    ct = small_ct_phantom
    write_volume(Volume(ct.hu, ct.ijk_to_ras), tmp_path / "input.nrrd")
    gui = module_files["PancreasSegMoNet"]
    arguments = gui.segmentationArguments(str(tmp_path / "input.nrrd"), str(tmp_path / "output"),
                                          str(random_monet_card.weights_path), "cpu", None, True)

    result = python_slicer("PancreasSegMoNetLib", *arguments, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    labels = read_volume(gui.resultPath(str(tmp_path / "input.nrrd"), str(tmp_path / "output")))
    assert labels.shape == ct.hu.shape
