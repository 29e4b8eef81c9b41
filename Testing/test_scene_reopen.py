"""The Slicer scenes the modules write (.mrb) reopen as they were saved: every node with its
properties, and the slice views showing what the scene was made to show, both in a fresh scene
and in one that already has Slicer's own views, as the application opens them."""

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.scene import add_volume_node, create_scene, numpy_matrix, save_scene_bundle
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume

ROOT = Path(__file__).resolve().parents[1]
VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}


def reopen(path: Path, scene=None, clear: bool = True):
    """Open a .mrb as Slicer 5 does (its scene bundle reader calls vtkMRMLScene::ReadFromMRB):
    `clear` as File > Open, without as drag-and-drop / Add Data into `scene`."""
    import slicer

    scene = scene if scene is not None else create_scene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(tempfile.mkdtemp(prefix="mrb-unpack-"))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    assert scene.ReadFromMRB(str(path), clear), f"slicer-core could not open {path}"
    return scene


def scene_with_slicer_views():
    """A scene as Slicer's main window has it before a file is opened: the conventional
    layout's slice nodes (made by the layout logic) and a slice logic per view (which adds
    the view's composite node and turns its settings into the images shown)."""
    import slicer

    scene = create_scene()
    application_logic = scene._pancreasai_logics[0]
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)
    layout_logic.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    slice_logics = {}
    for name in VIEWS:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(application_logic)
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(scene.GetSingletonNode(name, "vtkMRMLSliceNode"))
        slice_logics[name] = logic
    assert all(logic.GetSliceCompositeNode() is not None for logic in slice_logics.values())
    scene._test_view_logics = (layout_logic, slice_logics)
    return scene, slice_logics


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def slice_center(slice_node) -> np.ndarray:
    return numpy_matrix(slice_node.GetSliceToRAS())[:3, 3]


def assert_views_show(scene, background, foreground, opacity: float, center_ras) -> None:
    """Each standard view: Slicer's layout name and singleton tag, its orientation, these
    volumes, centred on `center_ras`."""
    for name, orientation in VIEWS.items():
        slice_node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        composite = scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert slice_node is not None and composite is not None, f"the scene has no {name} view"
        assert (slice_node.GetID(), slice_node.GetLayoutName()) == (f"vtkMRMLSliceNode{name}", name)
        assert (composite.GetID(), composite.GetLayoutName()) == (f"vtkMRMLSliceCompositeNode{name}", name)
        assert slice_node.GetOrientation() == orientation
        assert composite.GetBackgroundVolumeID() == background.GetID()
        assert composite.GetForegroundVolumeID() == (foreground.GetID() if foreground is not None else None)
        assert composite.GetForegroundOpacity() == pytest.approx(opacity)
        np.testing.assert_allclose(slice_center(slice_node), center_ras, atol=1e-3)


# --- IPMNRisk: what `ipmn-risk assess` writes ---------------------------------------------------


@pytest.fixture(scope="module")
def ipmn_case(tmp_path_factory, small_mr_phantom, random_vit_card):
    """One case through the command line on an oblique T1/T2 pair: its files and the summary."""
    from scipy.spatial.transform import Rotation

    from IPMNRiskLib import cli

    folder = tmp_path_factory.mktemp("ipmn_scene")
    p = small_mr_phantom
    tilt = np.eye(4)
    tilt[:3, :3] = Rotation.from_euler("zx", [10, 5], degrees=True).as_matrix()
    t1 = write_volume(Volume(p.t1, tilt @ p.ijk_to_ras), folder / "p1_t1.nrrd")
    t2 = write_volume(Volume(p.t2, tilt @ p.ijk_to_ras), folder / "p1_t2.nrrd")
    center, size = p.pancreas_box_ras
    rows = cli.run_cases([cli.Case("p1", t1, t2, tuple(center), tuple(size))], folder / "out",
                         random_vit_card.weights_path, device="cpu", tta=False)
    assert rows[0]["status"] == "ok", rows[0]
    paths = cli.output_paths(folder / "out", "p1")
    return {"t1": t1, "t2": t2, **paths, "summary": json.loads(paths["result"].read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def ipmn_reopened(ipmn_case):
    return reopen(ipmn_case["scene"])


def test_roi_reopens_with_its_size_centre_and_orientation(ipmn_case, ipmn_reopened):
    roi = ipmn_reopened.GetFirstNodeByName("IPMN region")
    region = ipmn_case["summary"]["region"]
    np.testing.assert_allclose(roi.GetSize(), region["size_mm"], atol=1e-4)
    np.testing.assert_allclose(roi.GetCenter(), region["center_ras"], atol=1e-4)
    # The region is a box aligned with the RAS axes.
    np.testing.assert_allclose(numpy_matrix(roi.GetObjectToNodeMatrix())[:3, :3], np.eye(3), atol=1e-9)


def test_heat_map_reopens_with_its_inferno_colour_table_and_window(ipmn_case, ipmn_reopened):
    from IPMNRiskLib.colormap import colormap_table
    from IPMNRiskLib.result_nodes import COLOR_TABLE_NAME

    heat_node = ipmn_reopened.GetFirstNodeByName("T2 IPMN attention")
    display = heat_node.GetDisplayNode()
    color_node = ipmn_reopened.GetNodeByID(display.GetColorNodeID())
    assert color_node is not None and color_node.IsA("vtkMRMLColorTableNode")
    assert color_node.GetName() == COLOR_TABLE_NAME
    assert color_node.GetNumberOfColors() == 256
    colors = []
    for index in range(256):
        rgba = [0.0] * 4
        color_node.GetColor(index, rgba)
        colors.append(rgba[:3])
    np.testing.assert_allclose(colors, colormap_table(256), atol=1 / 255)  # stored as 8-bit values
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    saved = read_volume(ipmn_case["heat_map"])
    np.testing.assert_allclose(ijk_to_ras(heat_node), saved.ijk_to_ras, atol=1e-9)


def test_result_table_reopens_with_its_rows_and_says_research_use_once(ipmn_case, ipmn_reopened):
    summary = ipmn_case["summary"]
    table = ipmn_reopened.GetFirstNodeByName("T2 IPMN risk")
    rows = {table.GetCellText(row, 0): table.GetCellText(row, 1) for row in range(table.GetNumberOfRows())}
    assert rows["Risk class"] == summary["class_name"]
    for name, p, spread in zip(summary["class_names"], summary["probabilities"], summary["spread"]):
        assert rows[f"P({name})"] == f"{p:.3f} +- {spread:.3f}"
    assert rows["Model"] == summary["model"]
    assert rows["Region size (mm)"] == " ".join(f"{v:.1f}" for v in summary["region"]["size_mm"])
    assert rows["Note"] == summary["research_use_notice"]
    assert rows["Note"].lower().count("research use only") == 1


def test_t1_and_t2_reopen_with_their_exact_geometry(ipmn_case, ipmn_reopened):
    import slicer

    for name in ("T1", "T2"):
        node = ipmn_reopened.GetFirstNodeByName(name)
        saved = read_volume(ipmn_case[name.lower()])
        np.testing.assert_allclose(ijk_to_ras(node), saved.ijk_to_ras, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), saved.array)


def test_ipmn_scene_opens_with_the_heat_map_over_t2_in_every_view(ipmn_case, ipmn_reopened):
    from IPMNRiskLib.result_nodes import HEAT_MAP_OPACITY

    assert_views_show(ipmn_reopened, ipmn_reopened.GetFirstNodeByName("T2"),
                      ipmn_reopened.GetFirstNodeByName("T2 IPMN attention"), HEAT_MAP_OPACITY,
                      ipmn_case["summary"]["region"]["center_ras"])
    assert ipmn_reopened.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 3


@pytest.mark.parametrize("clear", [True, False], ids=["open", "add-data"])
def test_ipmn_scene_takes_over_slicers_own_views(ipmn_case, clear):
    scene, slice_logics = scene_with_slicer_views()
    # Something already loaded, so that imported node IDs clash and must be remapped.
    add_volume_node(scene, read_volume(ipmn_case["t1"]), "earlier study")
    reopen(ipmn_case["scene"], scene, clear=clear)
    t2, heat = scene.GetFirstNodeByName("T2"), scene.GetFirstNodeByName("T2 IPMN attention")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 3
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 3
    for name, logic in slice_logics.items():
        assert logic.GetBackgroundLayer().GetVolumeNode() is t2, name
        assert logic.GetForegroundLayer().GetVolumeNode() is heat, name
        assert logic.GetSliceCompositeNode().GetForegroundOpacity() == pytest.approx(0.5)
        assert logic.GetSliceNode().GetOrientation() == VIEWS[name]
        np.testing.assert_allclose(slice_center(logic.GetSliceNode()),
                                   ipmn_case["summary"]["region"]["center_ras"], atol=1e-3)


# --- PancreasSegMoNet: the demo's CT scene --------------------------------------------------------


def load_demo():
    spec = importlib.util.spec_from_file_location("pancreasai_demo", ROOT / "Resources" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory, small_ct_phantom):
    """The demo's CT scene, with the command line's segmentation replaced by the phantom's own
    pancreas (the scene is what is tested here, not the model)."""
    import PancreasSegMoNetLib.cli as monet_cli
    from PancreasAILib.cli_support import case_name

    folder = tmp_path_factory.mktemp("ct_scene")
    p = small_ct_phantom
    ct_path = write_volume(Volume(p.hu, p.ijk_to_ras), folder / "ct_phantom.nii.gz")

    def segment_files(inputs, output_dir, **options):
        paths = monet_cli.output_paths(output_dir, case_name(inputs[0]))
        write_volume(Volume(p.pancreas.astype(np.uint8), p.ijk_to_ras), paths["labelmap"])
        paths["segmentation"].write_bytes(b"")
        paths["result"].write_text("{}")
        return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(monet_cli, "segment_files", segment_files)
        written = load_demo().demo_segmentation(ct_path, folder)
    return {"ct": ct_path, "scene": written[-1], "phantom": p}


def test_segmentation_reopens_with_its_segment_name_terminology_colour_and_voxels(ct_case):
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    from PancreasSegMoNetLib import pancreas_segment as adapter

    scene = reopen(ct_case["scene"])
    segmentation_node = scene.GetFirstNodeByName("sample CT pancreas")
    segment = segmentation_node.GetSegmentation().GetSegment(adapter.SEGMENT_ID)
    assert segment.GetName() == adapter.SEGMENT_NAME
    np.testing.assert_allclose(segment.GetColor(), adapter.SEGMENT_COLOR, atol=1e-6)
    assert segment.GetTerminology() == adapter.PANCREAS_TERMINOLOGY
    # The stored labelmap lies on the CT's grid, cropped to an extent: put it back on the grid.
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, adapter.SEGMENT_ID, image)
    image_to_world = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(image_to_world)
    np.testing.assert_allclose(numpy_matrix(image_to_world), ct_case["phantom"].ijk_to_ras, atol=1e-6)
    expected = ct_case["phantom"].pancreas
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    voxels = np.zeros(expected.shape, bool)
    voxels[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)) > 0
    np.testing.assert_array_equal(voxels, expected)


def test_ct_scene_opens_with_the_ct_in_every_view_centred_on_the_pancreas(ct_case):
    scene = reopen(ct_case["scene"])
    p = ct_case["phantom"]
    ct_node = scene.GetFirstNodeByName("sample CT")
    np.testing.assert_allclose(ijk_to_ras(ct_node), read_volume(ct_case["ct"]).ijk_to_ras, atol=1e-9)
    ijk = np.argwhere(p.pancreas)[:, ::-1]  # (K, J, I) indices -> (i, j, k)
    ras = (p.ijk_to_ras @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    assert_views_show(scene, ct_node, None, 0.0, (ras.min(0) + ras.max(0)) / 2)


def test_ct_scene_without_a_pancreas_shows_the_whole_ct(tmp_path, small_ct_phantom):
    from PancreasSegMoNetLib.pancreas_segment import build_review_scene

    p = small_ct_phantom
    ct = Volume(p.hu, p.ijk_to_ras)
    empty = write_volume(Volume(np.zeros(p.hu.shape, np.uint8), p.ijk_to_ras), tmp_path / "empty.nii.gz")
    scene = reopen(save_scene_bundle(build_review_scene(ct, empty, "CT"), tmp_path / "empty.mrb"))
    ct_node = scene.GetFirstNodeByName("CT")
    bounds = np.zeros(6)
    ct_node.GetRASBounds(bounds)
    assert_views_show(scene, ct_node, None, 0.0, (bounds[0::2] + bounds[1::2]) / 2)
    fov = scene.GetSingletonNode("Red", "vtkMRMLSliceNode").GetFieldOfView()
    assert fov[0] >= np.max(bounds[1::2] - bounds[0::2])


# --- Paths as users type them ----------------------------------------------------------------------


@pytest.fixture
def tiny_scene():
    scene = create_scene()
    add_volume_node(scene, Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([2.0, 2.0, 3.0, 1.0])),
                    "T2")
    return scene


def assert_reopens(path: Path) -> None:
    assert path.is_absolute() and path.is_file()
    assert reopen(path).GetFirstNodeByName("T2").GetImageData().GetDimensions() == (5, 4, 3)


def test_scene_bundle_accepts_a_relative_path(tmp_path, monkeypatch, tiny_scene):
    monkeypatch.chdir(tmp_path)
    written = save_scene_bundle(tiny_scene, Path("results") / "case.mrb")
    assert written == tmp_path / "results" / "case.mrb"
    assert_reopens(written)


def test_scene_bundle_accepts_a_path_in_the_home_folder(tmp_path, monkeypatch, tiny_scene):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)  # where a "~" taken literally would land
    written = save_scene_bundle(tiny_scene, "~/case.mrb")
    assert written == tmp_path / "case.mrb"
    assert_reopens(written)


@pytest.mark.parametrize("relative", ["with spaces/case one.mrb", "résultats ü/scène é.mrb"],
                         ids=["spaces", "non-ascii"])
def test_scene_bundle_accepts_spaces_and_any_script(tmp_path, tiny_scene, relative):
    written = save_scene_bundle(tiny_scene, tmp_path / relative)
    assert written == tmp_path / relative
    assert_reopens(written)
