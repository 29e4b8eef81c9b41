"""The extension ships only what it runs: its Python files import no training, demo, phantom
or test code; every Python file in the module folders is listed in CMake; and the bundled
sample volumes are the ones the SHA256 table names, load with the expected geometry and make
the demo models do what the module self-tests assert."""

import ast
import hashlib
import json
import shutil
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from test_slicer_extension_static import MODULES, ROOT, cmake_list

from PancreasAILib import sample_data
from PancreasAILib.errors import InputError
from PancreasAILib.volume_io import read_volume

# --- (a) shipped files import nothing that is not shipped -----------------------------------------

# Names of code that is not shipped, in case a module is renamed or added later; the folders
# below add every module that exists now.
FORBIDDEN_NAMES = {"trainkit", "demo", "demo_render", "PancreasAIPhantoms", "conftest", "pytest",
                   "make_sample_data"}
FORBIDDEN_PREFIXES = ("ipmn_", "segmentation_", "train_", "monet_", "test_")
UNSHIPPED_FOLDERS = (ROOT / "Resources", ROOT / "Resources" / "Training", ROOT / "Testing")


def read_region(path: str | Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(centre, size) of the box ROI in a Slicer `.mrk.json` file, both RAS mm: our own reading of
    the bundled region file, against which Slicer's reader is checked.

    Slicer writes markups in LPS by default; the centre is returned in RAS. The box must be
    aligned with the patient axes, as the IPMN region is.
    """
    path = Path(path)
    try:
        markups = json.loads(path.read_text(encoding="utf-8"))["markups"]
        roi = next(markup for markup in markups if markup.get("type") == "ROI")
        center = [float(v) for v in roi["center"]]
        size = [float(v) for v in roi["size"]]
        orientation = [float(v) for v in roi.get("orientation", (1, 0, 0, 0, 1, 0, 0, 0, 1))]
        system = roi.get("coordinateSystem", "LPS")
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as error:
        raise InputError(f"{path} holds no box ROI that could be read ({error!r}).") from error
    flip = (-1.0, -1.0, 1.0) if system == "LPS" else (1.0, 1.0, 1.0)
    axes_ras = [[flip[row] * orientation[3 * row + column] for column in range(3)] for row in range(3)]
    identity = [[1.0 if row == column else 0.0 for column in range(3)] for row in range(3)]
    if any(abs(axes_ras[r][c] - identity[r][c]) > 1e-6 for r in range(3) for c in range(3)):
        raise InputError(f"The ROI in {path} is rotated; the pancreas region is an axis-aligned box.")
    center_ras = tuple(f * c for f, c in zip(flip, center))
    return (center_ras[0], center_ras[1], center_ras[2]), (size[0], size[1], size[2])

def unshipped_module_names() -> set[str]:
    """Top-level module names of the training, demo, phantom and test code."""
    names = set(FORBIDDEN_NAMES)
    for folder in UNSHIPPED_FOLDERS:
        names |= {path.stem for path in folder.glob("*.py")}
        names |= {path.parent.name for path in folder.glob("*/__init__.py")}
    return names


def is_unshipped(module_name: str, unshipped: set[str]) -> bool:
    top = module_name.split(".")[0]
    return top in unshipped or top.startswith(FORBIDDEN_PREFIXES)


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any depth (inside functions
    and classes too), and of import_module("...") / __import__("...") with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))
    return found


def shipped_scripts() -> list[Path]:
    return [ROOT / module / entry for module in MODULES for entry in cmake_list(module, "MODULE_PYTHON_SCRIPTS")]


def unshipped_imports(paths: list[Path]) -> list[str]:
    unshipped = unshipped_module_names()
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in paths for line, name in imported_modules(path.read_text(encoding="utf-8"))
            if is_unshipped(name, unshipped)]


def test_unshipped_names_cover_training_demo_phantom_and_test_code():
    unshipped = unshipped_module_names()
    for name in ("trainkit", "ipmn_training", "segmentation_baselines", "train_monet", "demo", "demo_render",
                 "PancreasAIPhantoms", "conftest", "test_shipped_files"):
        assert is_unshipped(name, unshipped), name
    for name in ("PancreasAILib.volume", "IPMNRiskLib.inference", "numpy", "slicer", "SampleData"):
        assert not is_unshipped(name, unshipped), name


def test_import_scan_finds_imports_inside_functions_and_by_name():
    source = ("import os\n"
              "def f():\n"
              "    from PancreasAIPhantoms.ct import make_ct_phantom\n"
              "    import importlib\n"
              "    importlib.import_module('trainkit.hashing')\n"
              "class T:\n"
              "    def g(self):\n"
              "        import demo_render as render\n"
              "from . import sibling\n")
    assert sorted(imported_modules(source)) == [(1, "os"), (3, "PancreasAIPhantoms.ct"), (4, "importlib"),
                                                (5, "trainkit.hashing"), (8, "demo_render")]


def test_shipped_python_files_import_no_training_demo_phantom_or_test_code():
    assert unshipped_imports(shipped_scripts()) == []


# --- (b) the module folders hold only shipped Python files -----------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_every_python_file_in_a_module_folder_is_listed_in_its_cmake(module):
    on_disk = {path.relative_to(ROOT / module).as_posix() for path in (ROOT / module).rglob("*.py")
               if "__pycache__" not in path.parts}
    assert sorted(on_disk - set(cmake_list(module, "MODULE_PYTHON_SCRIPTS"))) == []


@pytest.mark.parametrize("module", MODULES)
def test_every_python_file_listed_in_cmake_exists(module):
    listed = cmake_list(module, "MODULE_PYTHON_SCRIPTS")
    assert sorted(entry for entry in listed if not (ROOT / module / entry).is_file()) == []


# --- (c) the sample files are the ones the table names, and are shipped ---------------------------

SAMPLE_FILES = [(sample.module, entry) for sample in sample_data.SAMPLES for entry in sample.files]
SAMPLE_IDS = [entry.file_name for _, entry in SAMPLE_FILES]


def bundled(module: str, file_name: str) -> Path:
    return ROOT / module / "Resources" / "SampleData" / file_name


@pytest.mark.parametrize("module, entry", SAMPLE_FILES, ids=SAMPLE_IDS)
def test_sample_file_matches_its_sha256(module, entry):
    assert hashlib.sha256(bundled(module, entry.file_name).read_bytes()).hexdigest() == entry.sha256


@pytest.mark.parametrize("module, entry", SAMPLE_FILES, ids=SAMPLE_IDS)
def test_sample_file_is_a_cmake_resource_of_its_module(module, entry):
    assert f"Resources/SampleData/{entry.file_name}" in cmake_list(module, "MODULE_PYTHON_RESOURCES")


@pytest.mark.parametrize("module", MODULES)
def test_every_file_in_a_sample_folder_is_in_the_table(module):
    folder = ROOT / module / "Resources" / "SampleData"
    on_disk = {path.name for path in folder.glob("*")} if folder.is_dir() else set()
    assert sorted(on_disk - {entry.file_name for owner, entry in SAMPLE_FILES if owner == module}) == []


@pytest.mark.parametrize("module, entry", [(m, e) for m, e in SAMPLE_FILES if e.file_name.endswith(".nrrd")],
                         ids=[name for name in SAMPLE_IDS if name.endswith(".nrrd")])
def test_sample_volumes_are_gzip_compressed(module, entry):
    header = bundled(module, entry.file_name).read_bytes()[:4096].split(b"\n\n")[0]
    assert b"encoding: gzip" in header


def test_samples_are_small():
    # 2 MB: the MR pair is the phantom's whole field of view (0.8 MB each as gzip-compressed int16),
    # which the automatic region needs to find the pancreas in; the CT is 0.3 MB.
    assert sum(bundled(module, entry.file_name).stat().st_size for module, entry in SAMPLE_FILES) < 2_000_000


def test_sample_file_names_are_unique():
    # Sample Data copies every file into one cache folder, by file name.
    assert len(set(SAMPLE_IDS)) == len(SAMPLE_IDS)


def test_generator_writes_the_bundled_files_again(tmp_path):
    import make_sample_data

    written = make_sample_data.write_ct_sample(tmp_path) + make_sample_data.write_mr_sample(tmp_path)

    digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in written}
    assert digests == {entry.file_name: entry.sha256 for _, entry in SAMPLE_FILES}


# --- (d) sample_path checks what it returns --------------------------------------------------------

def test_sample_path_returns_the_bundled_file():
    assert sample_data.sample_path(sample_data.CT_VOLUME_FILE) == bundled(
        "PancreasSegMoNet", sample_data.CT_VOLUME_FILE).resolve()


@pytest.fixture
def installed_copy(tmp_path, monkeypatch):
    """The sample files copied into the layout of an installed extension (one Resources folder
    beside the Lib packages), with sample_data looking there."""
    folder = tmp_path / "qt-scripted-modules" / "Resources" / "SampleData"
    folder.mkdir(parents=True)
    for module, entry in SAMPLE_FILES:
        shutil.copyfile(bundled(module, entry.file_name), folder / entry.file_name)
    monkeypatch.setattr(sample_data, "_SCRIPTED_MODULES", tmp_path / "qt-scripted-modules")
    return folder


def test_sample_path_finds_the_files_of_an_installed_extension(installed_copy):
    assert sample_data.sample_path(sample_data.MR_T2_FILE) == installed_copy / sample_data.MR_T2_FILE


def test_sample_path_refuses_a_changed_file_and_says_to_reinstall(installed_copy):
    path = installed_copy / sample_data.MR_T1_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(InputError, match="reinstall the extension") as raised:
        sample_data.sample_path(sample_data.MR_T1_FILE)
    assert str(path) in str(raised.value)


def test_sample_path_refuses_a_missing_file_and_says_to_reinstall(installed_copy, monkeypatch):
    (installed_copy / sample_data.CT_PANCREAS_FILE).unlink()
    monkeypatch.setattr(sample_data, "_candidate_paths", lambda module, relative: (
        sample_data._SCRIPTED_MODULES / "Resources" / relative,))

    with pytest.raises(InputError, match="missing .*reinstall the extension") as raised:
        sample_data.sample_path(sample_data.CT_PANCREAS_FILE)
    assert sample_data.CT_PANCREAS_FILE in str(raised.value)


def test_sample_path_names_the_bundled_files_when_asked_for_another():
    with pytest.raises(KeyError, match=sample_data.CT_VOLUME_FILE):
        sample_data.sample_path("patient.nrrd")


# --- registration with Slicer's Sample Data module -------------------------------------------------

def fake_sample_data_module(calls: list[dict]) -> types.ModuleType:
    module = types.ModuleType("SampleData")
    module.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: calls.append(kw))
    return module


def test_register_sample_data_registers_every_sample_under_pancreasai(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "SampleData", fake_sample_data_module(calls))

    assert sample_data.register_sample_data()

    assert [call["sampleName"] for call in calls] == [sample.name for sample in sample_data.SAMPLES]
    for call, sample in zip(calls, sample_data.SAMPLES):
        assert call["category"] == "PancreasAI"
        assert call["fileNames"] == [entry.file_name for entry in sample.files]
        assert call["nodeNames"] == [entry.node_name for entry in sample.files]
        assert call["checksums"] == [f"SHA256:{entry.sha256}" for entry in sample.files]
        assert call["loadFileType"] == [entry.load_file_type for entry in sample.files]
        assert Path(call["thumbnailFileName"]).is_file()


def test_registered_uris_are_file_urls_that_urllib_copies_as_sample_data_does(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "SampleData", fake_sample_data_module(calls))
    sample_data.register_sample_data()

    for call in calls:
        for uri, file_name, checksum in zip(call["uris"], call["fileNames"], call["checksums"]):
            assert uri.startswith("file:")
            copy, _ = urllib.request.urlretrieve(uri, tmp_path / file_name)  # what SampleDataLogic.downloadFile runs
            assert f"SHA256:{hashlib.sha256(Path(copy).read_bytes()).hexdigest()}" == checksum


def test_register_sample_data_does_nothing_outside_slicer(monkeypatch):
    monkeypatch.setitem(sys.modules, "SampleData", None)  # import SampleData raises ImportError

    assert sample_data.register_sample_data() is False


# --- (e) the samples: geometry, and what the demo models do on them --------------------------------

def test_ct_sample_and_its_pancreas_share_one_grid():
    ct = read_volume(sample_data.sample_path(sample_data.CT_VOLUME_FILE))
    pancreas = read_volume(sample_data.sample_path(sample_data.CT_PANCREAS_FILE))

    assert (ct.array.shape, ct.array.dtype) == ((16, 128, 128), np.int16)
    assert np.allclose(pancreas.ijk_to_ras, ct.ijk_to_ras)
    assert pancreas.array.shape == ct.array.shape
    assert set(np.unique(pancreas.array)) == {0, 1}
    assert -1024 <= ct.array.min() and ct.array.max() < 3000


def test_mr_samples_share_one_grid_that_holds_the_region():
    t1 = read_volume(sample_data.sample_path(sample_data.MR_T1_FILE))
    t2 = read_volume(sample_data.sample_path(sample_data.MR_T2_FILE))
    center, size = read_region(sample_data.sample_path(sample_data.MR_REGION_FILE))

    assert t1.array.shape == t2.array.shape and np.allclose(t1.ijk_to_ras, t2.ijk_to_ras)
    assert t2.array.dtype == np.int16 and t2.array.min() >= 0
    signs = np.array(list(np.ndindex(2, 2, 2))) * 2 - 1
    corners_ras = np.column_stack([np.asarray(center) + signs * np.asarray(size) / 2, np.ones(8)])
    corners_ijk = (np.linalg.inv(t2.ijk_to_ras) @ corners_ras.T).T[:, :3]
    extent_ijk = np.array(t2.array.shape[::-1]) - 1
    in_plane = corners_ijk[:, :2]
    assert np.all(in_plane >= -0.5) and np.all(in_plane <= extent_ijk[:2] + 0.5)


def test_region_file_reads_in_slicer_as_read_region_reads_it():
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(sample_data.sample_path(sample_data.MR_REGION_FILE)))

    assert storage.ReadData(roi)
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    expected_center, expected_size = read_region(sample_data.sample_path(sample_data.MR_REGION_FILE))
    assert center == pytest.approx(expected_center, abs=1e-4)
    assert roi.GetSize() == pytest.approx(expected_size, abs=1e-4)


def test_read_region_refuses_a_file_without_a_box(tmp_path):
    path = tmp_path / "points.mrk.json"
    path.write_text('{"markups": [{"type": "Fiducial", "controlPoints": []}]}')

    with pytest.raises(InputError, match="no box ROI"):
        read_region(path)


def test_demo_monet_finds_the_pancreas_of_the_ct_sample(demo_monet_card):
    """What PancreasSegMoNetTest asserts: Dice > 0.5 against the bundled pancreas."""
    from PancreasSegMoNetLib.segmentation import segment_ct

    ct = read_volume(sample_data.sample_path(sample_data.CT_VOLUME_FILE))
    expected = read_volume(sample_data.sample_path(sample_data.CT_PANCREAS_FILE)).array > 0

    found = segment_ct(ct, demo_monet_card, device="cpu").mask.array > 0

    assert 2 * np.logical_and(found, expected).sum() / (found.sum() + expected.sum()) > 0.5


def test_demo_vit_rates_the_mr_sample_high_risk_above_normal():
    """What IPMNRiskTest asserts: probabilities sum to 1, high > normal, a heat map on T2's
    grid that peaks at 1."""
    from IPMNRiskLib.grids import RegionBox
    from IPMNRiskLib.inference import assess
    from IPMNRiskLib.registry import model_registry

    t1 = read_volume(sample_data.sample_path(sample_data.MR_T1_FILE))
    t2 = read_volume(sample_data.sample_path(sample_data.MR_T2_FILE))
    region = RegionBox(*read_region(sample_data.sample_path(sample_data.MR_REGION_FILE)))

    assessment = assess(t1, t2, region, model_registry().resolve(None))

    probabilities = np.asarray(assessment.probabilities)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)
    assert assessment.risk_class == int(np.argmax(probabilities))
    assert probabilities[2] > probabilities[0]
    assert assessment.heat_map.array.shape == t2.array.shape
    assert float(assessment.heat_map.array.max()) == pytest.approx(1.0, abs=1e-3)
