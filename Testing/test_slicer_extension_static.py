"""Checks of the Slicer-application layer, which cannot run here (there is no Slicer
application): the module files against their .ui files and parameter nodes, the CMake lists
against the files on disk, that every module file imports without torch or timm, and the
module files' helpers that need no application (over slicer-core and small stand-ins)."""

import ast
import importlib
import importlib.abc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("PancreasAI", "PancreasSegMoNet", "IPMNRisk")
GUI_MODULES = ("PancreasSegMoNet", "IPMNRisk")
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


# --- reading the files ----------------------------------------------------------------------------

def module_source(module: str) -> str:
    return (ROOT / module / f"{module}.py").read_text(encoding="utf-8")


def ui_root(module: str) -> ElementTree.Element:
    return ElementTree.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def ui_widgets(module: str) -> dict[str, str]:
    """Widget name -> widget class, for every widget of the module's .ui file."""
    return {widget.get("name"): widget.get("class") for widget in ui_root(module).iter("widget")}


def ui_parameter_bindings(module: str) -> dict[str, str]:
    """Widget name -> the parameter it is bound to (its SlicerParameterName property)."""
    bindings = {}
    for widget in ui_root(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == PARAMETER_NAME_PROPERTY:
                bindings[widget.get("name")] = prop.findtext("string")
    return bindings


def parameter_node_fields(module: str) -> dict[str, str]:
    """Field name -> annotation source, of the class decorated with @parameterNodeWrapper."""
    for node in ast.walk(ast.parse(module_source(module))):
        decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
        if isinstance(node, ast.ClassDef) and "parameterNodeWrapper" in decorators:
            return {item.target.id: ast.unparse(item.annotation)
                    for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


def cmake_list(module: str, variable: str) -> list[str]:
    """Entries of `set(<variable> ...)` in the module's CMakeLists.txt, ${MODULE_NAME} expanded."""
    text = (ROOT / module / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf"set\(\s*{variable}\b(.*?)\)", text, re.DOTALL)
    assert match, f"{module}/CMakeLists.txt does not set {variable}"
    return [entry.replace("${MODULE_NAME}", module) for entry in match.group(1).split()]


def lib_scripts_on_disk(module: str) -> set[str]:
    """Every Python file in the module's packages (its Lib, and PancreasAI's App)."""
    return {path.relative_to(ROOT / module).as_posix() for path in (ROOT / module).glob("*/**/*.py")
            if "__pycache__" not in path.parts and "Resources" not in path.parts}


# --- (1) and (2): module files, .ui files and parameter nodes agree ---------------------------------

@pytest.mark.parametrize("module", GUI_MODULES)
def test_every_ui_attribute_the_module_uses_is_a_widget_of_its_ui_file(module):
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", module_source(module)))
    assert used, f"{module}.py uses no self.ui widgets"
    assert sorted(used - set(ui_widgets(module))) == []


@pytest.mark.parametrize("module", GUI_MODULES)
def test_every_bound_widget_names_a_parameter_node_field(module):
    fields = parameter_node_fields(module)
    unknown = {widget: name for widget, name in ui_parameter_bindings(module).items() if name not in fields}
    assert unknown == {}


# What slicer.parameterNodeWrapper can connect (its guiConnectors): a widget class, and a test
# on the field's annotation. A QComboBox bound to a str needs the Choice annotation, a slider
# needs a bounded float; otherwise connectGui fails when the module opens.
CONNECTABLE = {
    "qMRMLNodeComboBox": lambda annotation: annotation.startswith("vtkMRML"),
    "QCheckBox": lambda annotation: annotation == "bool",
    "QComboBox": lambda annotation: "Choice(" in annotation,
    "ctkSliderWidget": lambda annotation: annotation.startswith("Annotated[float") and "WithinRange(" in annotation,
    "QDoubleSpinBox": lambda annotation: "float" in annotation,
    "QSpinBox": lambda annotation: "int" in annotation,
    "QLineEdit": lambda annotation: annotation == "str",
}


@pytest.mark.parametrize("module", GUI_MODULES)
def test_every_bound_widget_can_show_the_type_of_its_field(module):
    fields, widgets = parameter_node_fields(module), ui_widgets(module)
    mismatched = {
        widget: (widgets[widget], fields.get(name))
        for widget, name in ui_parameter_bindings(module).items()
        if name in fields and not CONNECTABLE.get(widgets[widget], lambda _: False)(fields[name])}
    assert mismatched == {}


@pytest.mark.parametrize("module", GUI_MODULES)
def test_every_node_selector_receives_the_scene(module):
    root = ui_root(module)
    top = root.find("widget").get("name")
    selectors = {name for name, cls in ui_widgets(module).items() if cls == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert sorted(selectors - connected) == []


# --- (5) the .ui files ----------------------------------------------------------------------------

@pytest.mark.parametrize("module", GUI_MODULES)
def test_ui_file_is_a_qmrmlwidget_form(module):
    root = ui_root(module)  # raises if the XML is not well formed
    top = root.find("widget")
    assert (root.tag, top.get("class"), top.get("name")) == ("ui", "qMRMLWidget", module)


# --- (3) CMake lists ------------------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_python_file_of_the_lib(module):
    listed = set(cmake_list(module, "MODULE_PYTHON_SCRIPTS"))
    assert sorted(lib_scripts_on_disk(module) - listed) == []


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_only_python_files_that_exist(module):
    listed = cmake_list(module, "MODULE_PYTHON_SCRIPTS")
    assert f"{module}.py" in listed
    assert sorted(path for path in listed if not (ROOT / module / path).is_file()) == []


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_only_resources_that_exist(module):
    listed = [entry for entry in cmake_list(module, "MODULE_PYTHON_RESOURCES") if "${" not in entry]
    assert listed
    assert sorted(path for path in listed if not (ROOT / module / path).is_file()) == []


def test_top_level_cmake_adds_every_module():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert sorted(re.findall(r"add_subdirectory\(\s*(\w+)\s*\)", text)) == sorted(MODULES)


def test_no_two_modules_ship_a_resource_at_the_same_path():
    # Slicer installs the resources of all modules of an extension into one folder.
    owners: dict[str, list[str]] = {}
    for module in MODULES:
        for path in (ROOT / module / "Resources").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                owners.setdefault(path.relative_to(ROOT / module).as_posix(), []).append(module)
    assert {path: names for path, names in owners.items() if len(names) > 1} == {}


def test_requirements_are_pinned_and_leave_torch_and_simpleitk_alone():
    lines = [line.split("#", 1)[0].strip()
             for line in (ROOT / "PancreasAI" / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    requirements = [line for line in lines if line]
    names = {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in requirements}
    assert {"timm", "safetensors"} <= names
    assert not names & {"torch", "torchvision", "simpleitk"}
    assert all("==" in line for line in requirements)


# --- stand-ins for the Slicer application ------------------------------------------------------

BLOCKED_PACKAGES = ("torch", "torchvision", "timm", "openvino")


class _BlockHeavyPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED_PACKAGES:
            raise ImportError(f"{name} is blocked: Slicer must load the module without it")
        return None


def block_heavy_packages() -> None:
    sys.meta_path.insert(0, _BlockHeavyPackages())


class _Base:
    def __init__(self, *args, **kwargs):
        pass


class _Validator(_Base):
    pass


def slicer_app_stubs() -> dict[str, types.ModuleType]:
    """Minimal modules for the names only the Slicer application provides (slicer-core has the
    MRML classes and slicer.util, not these)."""
    def module(name: str, **attributes) -> types.ModuleType:
        stub = types.ModuleType(name)
        stub.__dict__.update(attributes)
        return stub

    return {
        "qt": module("qt"),
        "ctk": module("ctk"),
        "slicer.ScriptedLoadableModule": module(
            "slicer.ScriptedLoadableModule",
            ScriptedLoadableModule=type("ScriptedLoadableModule", (_Base,), {}),
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (_Base,), {}),
            ScriptedLoadableModuleLogic=type("ScriptedLoadableModuleLogic", (_Base,), {}),
            ScriptedLoadableModuleTest=type("ScriptedLoadableModuleTest", (unittest.TestCase,), {})),
        "slicer.parameterNodeWrapper": module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
            WithinRange=type("WithinRange", (_Validator,), {}), Choice=type("Choice", (_Validator,), {})),
        "slicer.i18n": module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
    }


def install_slicer_app_stubs(patch: pytest.MonkeyPatch) -> None:
    import slicer  # noqa: F401  (the real slicer-core package the stubs extend)

    for name, stub in slicer_app_stubs().items():
        patch.setitem(sys.modules, name, stub)
        parent, _, child = name.rpartition(".")
        if parent:
            patch.setattr(sys.modules[parent], child, stub, raising=False)


# --- (4) the module files import without torch or timm --------------------------------------------

IMPORT_PROBE = textwrap.dedent(f"""
    import importlib, json, sys
    import pytest
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from {Path(__file__).stem} import BLOCKED_PACKAGES, block_heavy_packages, install_slicer_app_stubs

    block_heavy_packages()
    install_slicer_app_stubs(pytest.MonkeyPatch())
    report = {{"modules": {{name: sorted(vars(importlib.import_module(name))) for name in sys.argv[1:]}}}}
    report["heavy"] = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED_PACKAGES)
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def import_report(tmp_path_factory):
    """Import every module file in one fresh interpreter with torch and timm blocked."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / module) for module in MODULES))
    completed = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *MODULES], capture_output=True, text=True,
                               cwd=tmp_path_factory.mktemp("import_probe"), env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


EXPECTED_NAMES = {
    "PancreasAI": ("PancreasAI", "PancreasAITest", "registerSampleData"),
    "PancreasSegMoNet": ("PancreasSegMoNet", "PancreasSegMoNetParameterNode", "PancreasSegMoNetWidget",
                         "PancreasSegMoNetLogic", "PancreasSegMoNetTest"),
    "IPMNRisk": ("IPMNRisk", "IPMNRiskParameterNode", "IPMNRiskWidget", "IPMNRiskLogic", "IPMNRiskTest"),
}


@pytest.mark.parametrize("module", MODULES)
def test_module_file_imports_without_torch_or_timm(module, import_report):
    assert sorted(set(EXPECTED_NAMES[module]) - set(import_report["modules"][module])) == []


def test_importing_the_module_files_loads_no_torch_or_timm(import_report):
    assert import_report["heavy"] == []


# --- the helpers of the module files that run without the application ------------------------------

APP_MODULES = ("dependencies", "model_chooser", "parameter_gui", "review_panel", "run_panel", "self_tests",
               "slicer_process")


@pytest.fixture(scope="module")
def module_files():
    """The three module files, and the PancreasAIApp modules by their short names, imported in
    this process over the stand-ins."""
    app_names = [f"PancreasAIApp.{name}" for name in APP_MODULES]
    with pytest.MonkeyPatch.context() as patch:
        install_slicer_app_stubs(patch)
        for name in (*MODULES, *app_names):
            patch.delitem(sys.modules, name, raising=False)
        files = {name: importlib.import_module(name) for name in MODULES}
        files.update({name: importlib.import_module(f"PancreasAIApp.{name}") for name in APP_MODULES})
        yield files
        for name in (*MODULES, *app_names):
            sys.modules.pop(name, None)


def test_gui_reads_the_progress_lines_the_command_line_prints(module_files, capsys):
    from PancreasAILib.cli_support import ProgressPrinter

    printer = ProgressPrinter(total_cases=2, output_format="json")
    printer.start_case(1, "case_b")
    printer(0.5, "Segmenting")
    printer.message("case_b: done")
    lines = capsys.readouterr().out.splitlines()

    from PancreasAILib.tasks import parse_progress_line

    parsed = [parse_progress_line(line) for line in lines]
    assert parsed == [{"progress": 0.75, "status": "Segmenting"}, {"message": "case_b: done"}]


def test_segmentation_arguments_are_accepted_by_the_command_line():
    from PancreasSegMoNetLib.cli import build_parser
    from PancreasSegMoNetLib.logic import segmentation_arguments

    arguments = segmentation_arguments(
        "/work/input.nrrd", "/work/output", "/models/monet.safetensors", "cuda", 0.35, False)
    parsed = build_parser().parse_args(arguments)

    assert (parsed.command, parsed.inputs, parsed.output, parsed.model, parsed.device, parsed.threshold,
            parsed.no_largest_component, parsed.progress_format) == (
        "segment", ["/work/input.nrrd"], Path("/work/output"), "/models/monet.safetensors", "cuda", 0.35,
        True, "json")


@pytest.mark.parametrize("keep, expected", [(True, True), (False, False), (None, None)])
def test_the_largest_component_choice_reaches_the_command_line_even_against_the_card(keep, expected):
    """A ticked box must win over a card whose post-processing keeps every piece (the paper's)."""
    from PancreasSegMoNetLib.cli import build_parser, largest_component_choice
    from PancreasSegMoNetLib.logic import segmentation_arguments

    arguments = segmentation_arguments("/work/input.nrrd", "/work/output", None, "cpu", None, keep)
    assert largest_component_choice(build_parser().parse_args(arguments)) is expected


def test_assessment_arguments_with_negative_coordinates_are_accepted_by_the_command_line():
    from IPMNRiskLib import cli
    from IPMNRiskLib.logic import CASE, assessment_arguments

    arguments = assessment_arguments(
        "/work/t1.nrrd", "/work/t2.nrrd", (-12.5, -40.0, -7.25), (60.0, 50.0, 40.0), "/work/output",
        "ipmn-demo", "cpu", False)

    parsed = cli.build_parser().parse_args(arguments)

    assert (parsed.progress_format, parsed.roi_center, parsed.case, parsed.no_scene, parsed.no_tta) == (
        "json", "-12.500,-40.000,-7.250", CASE, True, True)


@pytest.mark.parametrize("explanation", ["rollout", "gradient-rollout"])
def test_the_heat_map_method_chosen_in_the_gui_reaches_the_command_line(explanation):
    from IPMNRiskLib import cli
    from IPMNRiskLib.logic import assessment_arguments

    arguments = assessment_arguments("/work/t1.nrrd", "/work/t2.nrrd", (0, 0, 0), (60, 60, 40), "/work/output",
                                     None, "cpu", True, explanation=explanation)
    assert cli.build_parser().parse_args(arguments).explanation == explanation


def test_the_module_offers_every_explanation_the_command_line_knows():
    from IPMNRiskLib.explanations import EXPLANATIONS

    import ast

    offered = re.search(r"^EXPLANATIONS = (\(.*?\))", module_source("IPMNRisk"), re.MULTILINE).group(1)
    assert ast.literal_eval(offered) == EXPLANATIONS
    assert "explanation=parameters.explanation" in module_source("IPMNRisk")


LAUNCHER = ("import subprocess, sys; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "print(child.pid, flush=True); child.wait()")


def _process_is_running(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_killing_the_process_tree_also_stops_the_child_of_a_launcher():
    from PancreasAILib.processes import kill_process_tree

    # PythonSlicer is such a launcher: the Python code runs in its child.
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    child_pid = int(launcher.stdout.readline())
    try:
        kill_process_tree(launcher.pid)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _process_is_running(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_is_running(child_pid)
    finally:
        if _process_is_running(child_pid):
            os.kill(child_pid, signal.SIGKILL)
        launcher.kill()
        launcher.stdout.close()


def _heat_map_node(scene, centre_kji: tuple[int, int, int]):
    """A (20, 30, 40) heat map, 2 mm voxels at the origin, hot in a 5-voxel cube at centre_kji."""
    import numpy as np

    from PancreasAILib.scene import add_volume_node
    from PancreasAILib.volume import Volume

    array = np.zeros((20, 30, 40), np.float32)
    k, j, i = centre_kji
    array[k - 2:k + 3, j - 2:j + 3, i - 2:i + 3] = 1.0
    return add_volume_node(scene, Volume(array, np.diag([2.0, 2.0, 2.0, 1.0])), "heat map")


def test_heat_map_centre_is_the_middle_of_its_nonzero_voxels(module_files, mrml_scene):
    heat_map = _heat_map_node(mrml_scene, (10, 12, 30))

    assert module_files["IPMNRisk"].heatMapCenter(heat_map) == pytest.approx((60.0, 24.0, 20.0))


def test_show_result_overlays_the_heat_map_and_centres_the_views(module_files, mrml_scene):
    heat_map = _heat_map_node(mrml_scene, (10, 12, 30))
    background = _heat_map_node(mrml_scene, (10, 10, 10))
    composite = mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    slice_node = mrml_scene.AddNewNodeByClass("vtkMRMLSliceNode")

    module_files["IPMNRisk"].IPMNRiskLogic.showResult(None, types.SimpleNamespace(heat_map_node=heat_map),
                                                      background, opacity=0.3)

    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (
        background.GetID(), heat_map.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    slice_to_ras = slice_node.GetSliceToRAS()
    assert [slice_to_ras.GetElement(row, 3) for row in range(3)] == pytest.approx([60.0, 24.0, 20.0])


def test_overlay_opacity_changes_only_the_views_showing_the_heat_map(module_files, mrml_scene):
    heat_map = _heat_map_node(mrml_scene, (10, 12, 30))
    showing, other = (mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2))
    showing.SetForegroundVolumeID(heat_map.GetID())
    other.SetForegroundOpacity(0.8)

    module_files["IPMNRisk"].IPMNRiskLogic.setOverlayOpacity(heat_map, 0.25)

    assert (showing.GetForegroundOpacity(), other.GetForegroundOpacity()) == pytest.approx((0.25, 0.8))


# --- parameter-node GUI connections on Slicer 5.8 and 5.10 -----------------------------------------

class _Widget:
    def __init__(self, parameter=None):
        self._parameter = parameter

    def property(self, name):
        return self._parameter if name == "SlicerParameterName" else None


class _ParameterNodeWrapperStandIn:
    """slicer.parameterNodeWrapper's GUI bookkeeping (Base/Python/slicer/parameterNodeWrapper/
    wrapper.py): every connection is kept under a tag until disconnectGui(tag). On 5.8
    connectGui returns None; 5.10 returns the tag. connectParametersToGui returns it on both."""

    def __init__(self, connect_gui_returns_tag: bool):
        self._parameterGUIs = {}
        self._nextParameterGUIsTag = 0
        self.returns_tag = connect_gui_returns_tag

    def connectParametersToGui(self, mapping):
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = dict(mapping)
        return tag

    def connectGui(self, gui):
        mapping = {w.property("SlicerParameterName"): w for w in vars(gui).values()
                   if w.property("SlicerParameterName")}
        tag = self.connectParametersToGui(mapping)
        return tag if self.returns_tag else None

    def disconnectGui(self, tag):
        self._parameterGUIs.pop(tag, None)


@pytest.mark.parametrize("slicer_version, returns_tag", [("5.8", False), ("5.10", True)])
def test_leaving_and_entering_the_module_keeps_one_connection_on_each_slicer(module_files, slicer_version,
                                                                            returns_tag):
    connect = module_files["parameter_gui"].connectParameterNodeGui
    ui = types.SimpleNamespace(deviceComboBox=_Widget("device"), regionModeComboBox=_Widget("regionMode"),
                               applyButton=_Widget())
    node = _ParameterNodeWrapperStandIn(returns_tag)
    for _ in range(3):  # enter, exit, enter, exit, ...
        tag = connect(node, ui)
        assert list(node._parameterGUIs.values()) == [{"device": ui.deviceComboBox,
                                                       "regionMode": ui.regionModeComboBox}]
        node.disconnectGui(tag)
        assert node._parameterGUIs == {}


def test_the_58_stand_in_shows_why_connect_gui_cannot_be_used(module_files):
    ui = types.SimpleNamespace(deviceComboBox=_Widget("device"))
    node = _ParameterNodeWrapperStandIn(connect_gui_returns_tag=False)
    node.disconnectGui(node.connectGui(ui))
    assert len(node._parameterGUIs) == 1  # the stale connector a 5.8 user suffered from


def test_both_modules_connect_their_gui_through_the_version_proof_helper():
    for module in ("PancreasSegMoNet", "IPMNRisk"):
        source = module_source(module)
        assert ".connectGui(" not in source
        assert "connectParameterNodeGui(self._parameterNode, self.ui)" in source


# --- the segmentation threshold ----------------------------------------------------------------------

def test_the_threshold_slider_offers_only_what_the_core_accepts(module_files):
    low, high = module_files["PancreasSegMoNet"].THRESHOLD_RANGE
    slider = next(w for w in ui_root("PancreasSegMoNet").iter("widget") if w.get("name") == "thresholdSliderWidget")
    bounds = {p.get("name"): float(p.findtext("double")) for p in slider.findall("property")
              if p.get("name") in ("minimum", "maximum")}
    assert bounds == {"minimum": low, "maximum": high}
    assert 0.0 < low < high < 1.0  # segment_ct refuses 0 and 1
    assert "WithinRange(THRESHOLD_RANGE[0], THRESHOLD_RANGE[1])" in parameter_node_fields("PancreasSegMoNet")["threshold"]


def test_the_model_cards_threshold_is_used_unless_the_user_sets_one(module_files):
    gui = module_files["PancreasSegMoNet"]
    fields = parameter_node_fields("PancreasSegMoNet")
    assert fields["useModelThreshold"] == "bool" and "useModelThreshold: bool = True" in module_source("PancreasSegMoNet")
    assert "useModelThreshold" in ui_parameter_bindings("PancreasSegMoNet").values()

    from PancreasSegMoNetLib.logic import segmentation_arguments

    def arguments(use_model, value):
        return segmentation_arguments("in.nrrd", "out", None, "cpu", gui.chosenThreshold(use_model, value), True)

    assert "--threshold" not in arguments(True, 0.35)  # the command line then reads the card's
    chosen = arguments(False, 0.35)
    assert chosen[chosen.index("--threshold") + 1] == "0.35"
    assert "threshold=chosenThreshold(parameters.useModelThreshold, parameters.threshold)" in module_source(
        "PancreasSegMoNet")


# --- the run panel: installs, second clicks, processes that never start ------------------------------

class _Button:
    def __init__(self):
        self.enabled, self.toolTip, self.value, self.text = True, "", 0, ""

    def connect(self, signal, slot):
        self.slot = slot


class _Task:
    def __init__(self, running: bool):
        self.running, self.cancelled = running, False

    def is_running(self):
        return self.running

    def cancel(self):
        self.cancelled = True


@pytest.fixture
def run_panel(module_files, monkeypatch):
    import slicer.util

    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda *args, **kwargs: None, raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay",
                        lambda *args, **kwargs: __import__("contextlib").nullcontext(), raising=False)
    gui = module_files["run_panel"]
    panel = gui.BackgroundRunPanel(_Button(), _Button(), _Button(), _Button(), missingInput=lambda: "",
                                   applyToolTip="Segment", runningToolTip="Running",
                                   startFailedMessage="Could not start", failedMessage="Failed: {reason}")
    return gui, panel


def test_a_second_click_while_packages_install_starts_nothing_more(run_panel, monkeypatch):
    gui, panel = run_panel
    started, states = [], []

    def start():
        started.append(1)
        return _Task(running=True)

    def installing(parent):  # pip's output loop lets the user click Apply again
        states.append((panel.applyButton.enabled, panel.applyButton.toolTip))
        panel.run(start)
        return True

    monkeypatch.setattr(gui, "ensureDependencies", installing)
    panel.run(start)
    assert started == [1] and panel.isRunning()
    assert states == [(False, "Running")]  # Apply was disabled during the install


def test_a_scene_closed_while_packages_install_starts_no_task(run_panel, monkeypatch):
    gui, panel = run_panel
    started = []

    def installing(parent):
        panel.cancel()  # onSceneStartClose
        return True

    monkeypatch.setattr(gui, "ensureDependencies", installing)
    panel.run(lambda: started.append(1) or _Task(running=True))
    assert started == [] and not panel.isRunning() and panel.applyButton.enabled
    assert "Cancelled" in panel.statusLabel.text


class _Settings(dict):
    """Stands in for qt.QSettings: value(key, default) and setValue(key, value)."""

    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value):
        self[key] = value


@pytest.fixture
def without_openvino(module_files, monkeypatch):
    """The dependencies module on a Slicer where OpenVINO is not installed (until `installed`)."""
    import importlib.util

    import slicer.util

    dependencies = module_files["dependencies"]
    real_find_spec = importlib.util.find_spec
    state = {"installed": False, "questions": [], "answer": False, "installs": [], "install_works": True}

    def find_spec(name, *args):
        if name == "openvino":
            return object() if state["installed"] else None
        return real_find_spec(name, *args)

    def install(lines, parent, confirm=True):
        state["installs"].append((lines, confirm))
        state["installed"] = state["install_works"]
        return state["install_works"]

    monkeypatch.setattr(dependencies.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, **kwargs: state["questions"].append(text) or state["answer"], raising=False)
    monkeypatch.setattr(dependencies, "_installWithPip", install)
    return dependencies, state


def test_openvino_is_offered_once_and_a_no_is_remembered(without_openvino):
    dependencies, state = without_openvino
    settings = _Settings()
    assert dependencies.offerEngine(None, settings) is False
    assert len(state["questions"]) == 1 and "OpenVINO" in state["questions"][0]
    assert settings[dependencies.ENGINE_OFFER_SETTING] == "declined" and state["installs"] == []
    assert dependencies.offerEngine(None, settings) is False
    assert len(state["questions"]) == 1  # not asked again


def test_a_yes_installs_the_pinned_openvino_of_this_python_without_asking_twice(without_openvino):
    dependencies, state = without_openvino
    state["answer"] = True
    assert dependencies.offerEngine(None, _Settings()) is True
    [(lines, confirm)] = state["installs"]
    assert lines == dependencies.requirementLines(dependencies.ENGINE_REQUIREMENTS_FILE)
    assert [dependencies.requirementName(line) for line in lines] == ["openvino"] and confirm is False
    assert dependencies.offerEngine(None, _Settings()) is True and len(state["questions"]) == 1


def test_a_failed_openvino_install_is_offered_again_next_time(without_openvino):
    dependencies, state = without_openvino
    state["answer"], state["install_works"] = True, False
    settings = _Settings()
    assert dependencies.offerEngine(None, settings) is False
    assert dependencies.ENGINE_OFFER_SETTING not in settings
    dependencies.offerEngine(None, settings)
    assert len(state["questions"]) == 2


def test_the_run_goes_on_when_openvino_is_declined(run_panel, without_openvino, monkeypatch):
    gui, panel = run_panel
    monkeypatch.setattr(gui, "ensureDependencies", lambda parent: True)
    monkeypatch.setattr(gui, "offerEngine", lambda parent: False)
    started = []
    panel.run(lambda: started.append(1) or _Task(running=True))
    assert started == [1]


def test_a_process_that_fails_to_start_does_not_leave_the_panel_running(run_panel, monkeypatch):
    """On Windows QProcess reports FailedToStart inside start(): the task has ended, and
    taskFinished was called, before startTask() returns."""
    gui, panel = run_panel
    monkeypatch.setattr(gui, "ensureDependencies", lambda parent: True)

    def start_and_fail():
        task = _Task(running=False)
        panel.taskFinished(False, "Could not start PythonSlicer")
        return task

    panel.run(start_and_fail)
    assert not panel.isRunning() and panel.applyButton.enabled and not panel.cancelButton.enabled
    assert panel.statusLabel.text == "Failed."
    panel.run(lambda: _Task(running=True))  # and the user can try again
    assert panel.isRunning()


def test_the_panel_shows_each_warning_after_the_result(run_panel):
    gui, panel = run_panel
    warnings = ["The image values run from 500 to 3000, which does not look like a CT.",
                "The volume is tilted 25 degrees from the patient axes."]

    panel.showDone("Done: the pancreas is in 'CT pancreas' (61.0 ml).", warnings)

    assert panel.statusLabel.text.splitlines() == [
        "Done: the pancreas is in 'CT pancreas' (61.0 ml).", *(f"Warning: {w}" for w in warnings)]
    assert panel.progressBar.value == 100 and panel.statusLabel.toolTip == "\n\n".join(warnings)


def test_both_modules_show_the_warnings_of_their_result():
    for module, call in (("PancreasSegMoNet", "outcome.warnings"), ("IPMNRisk", "result.warnings")):
        assert "self._runPanel.showDone(" in module_source(module) and call in module_source(module), module


def test_the_result_names_the_classes_of_the_models_card(module_files):
    result = types.SimpleNamespace(class_name="IPMN, high-grade", class_names=["none", "IPMN LGD", "IPMN HGD"],
                                   probabilities=[0.1, 0.2, 0.7], spread=[0.0, 0.0, 0.05])

    text = module_files["IPMNRisk"].resultText(result)

    assert "IPMN, high-grade" in text and "none 10%" in text and "IPMN HGD 70% \u00b1 5" in text
    assert "normal" not in text


# --- the modules' self-tests ("Reload and Test", ctest) -------------------------------------------------

def test_a_self_test_that_skips_itself_lets_the_others_run(module_files):
    run_self_tests = module_files["self_tests"].runSelfTests
    ran = []

    class Case(unittest.TestCase):
        def setUp(self):
            ran.append("setUp")

        @unittest.skipIf(True, "not on this platform")
        def test_posix_only(self):
            ran.append("posix")

        def test_everywhere(self):
            ran.append("everywhere")

    case = Case()
    run_self_tests(case, [case.test_posix_only, case.test_everywhere])  # "Reload and Test" calls it directly
    assert ran == ["setUp", "setUp", "everywhere"]
    with pytest.raises(unittest.SkipTest, match="not on this platform"):
        run_self_tests(case, [case.test_posix_only])  # all skipped: a runner reports a skip


@pytest.mark.parametrize("module, test_class", [("PancreasSegMoNet", "PancreasSegMoNetTest"), ("IPMNRisk", "IPMNRiskTest")])
def test_self_tests_skip_without_pytorch_instead_of_failing(module_files, monkeypatch, module, test_class):
    gui = module_files[module]
    monkeypatch.setattr(module_files["self_tests"], "missingPackages", lambda: ["torch", "timm"])
    case = getattr(gui, test_class)()
    assert "requireDependencies" in vars(gui)  # the module's tests call the shared check
    with pytest.raises(unittest.SkipTest, match="torch, timm"):
        gui.requireDependencies(case)


@pytest.mark.parametrize("module", MODULES)
def test_every_run_test_goes_through_run_self_tests(module):
    tree = ast.parse(module_source(module))
    run_tests = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "runTest"]
    assert len(run_tests) == 1
    calls = [ast.unparse(call.func) for call in ast.walk(run_tests[0]) if isinstance(call, ast.Call)]
    assert calls == ["runSelfTests"]


def test_the_extension_pictures_are_files_of_this_repository():
    """The Extensions Manager shows the icon and screenshots from these URLs on the main branch."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    prefix = "https://raw.githubusercontent.com/PancreasAI/PancreasAI/main/"
    urls = [url for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS")
            for url in re.search(rf'set\({variable} "([^"]*)"\)', text).group(1).split()]
    assert len(urls) >= 2 and all(url.startswith(prefix) for url in urls)
    assert [url for url in urls if not (ROOT / url[len(prefix):]).is_file()] == []
