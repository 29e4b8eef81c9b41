"""The Slicer Review section (PancreasAIApp.review_panel) wired to a real slicer-core scene and
a real results folder. Qt and CTK are not installable here, so their widgets are stand-ins that
keep what the panel sets (text, checked, enabled, table cells) and fire the slots it connects;
everything below the widgets is real. Only the Slicer application shows the real widgets."""

import csv
import importlib
import json
import sys
import types

import pytest

from test_review import node_ids, results  # noqa: F401  (the results-folder fixture)


class Widget:
    """Any Qt/CTK widget: keeps attributes, records connected slots, answers other calls."""

    def __init__(self, *args, **kwargs):
        self.text = args[0] if args and isinstance(args[0], str) else ""
        self.enabled, self.checked, self.collapsed = True, False, False
        self.toolTip = self.placeholderText = self.currentPath = self.currentText = ""
        self.value, self.slots, self.cells, self.row_count, self.items, self.plain = 0.0, {}, {}, 0, [], ""

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def fire(self, signal, *args):
        self.slots[signal](*args)

    def setRowCount(self, count):
        self.row_count = count
        self.cells = {k: v for k, v in self.cells.items() if k[0] < count}

    def setItem(self, row, column, item):
        self.cells[(row, column)] = item.text

    def selectRow(self, row):
        self.selected = row

    def addItems(self, items):
        self.items = list(items)

    def toPlainText(self):
        return self.plain

    def setPlainText(self, text):
        self.plain = text

    def __getattr__(self, name):  # every other method: does nothing, returns a widget
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: Widget()


class Settings:
    store = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


def fake_qt() -> dict:
    names = types.SimpleNamespace
    qt = types.ModuleType("qt")
    for name in ("QPushButton", "QLabel", "QLineEdit", "QTableWidget", "QTableWidgetItem", "QFormLayout",
                 "QHBoxLayout", "QRadioButton", "QButtonGroup", "QComboBox", "QPlainTextEdit", "QShortcut",
                 "QKeySequence"):
        setattr(qt, name, Widget)
    qt.QSettings = Settings
    qt.QAbstractItemView = names(SelectRows=1, SingleSelection=1, NoEditTriggers=0)
    qt.Qt = names(WidgetWithChildrenShortcut=3)
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton = ctk.ctkSliderWidget = Widget
    ctk.ctkPathLineEdit = type("ctkPathLineEdit", (Widget,), {"Dirs": 1})
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    return {"qt": qt, "ctk": ctk, "slicer.i18n": i18n}


@pytest.fixture
def panel_module(monkeypatch, mrml_scene):
    import slicer

    for name, module in fake_qt().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(slicer, "i18n", sys.modules["slicer.i18n"], raising=False)
    monkeypatch.delitem(sys.modules, "PancreasAIApp.review_panel", raising=False)
    Settings.store = {}
    module = importlib.import_module("PancreasAIApp.review_panel")
    yield module
    sys.modules.pop("PancreasAIApp.review_panel", None)


def open_panel(module, folder, task, reviewer="Dr A"):
    panel = module.ReviewPanel(Widget(), task)
    panel.folderEdit.currentPath = str(folder)
    panel.reviewerEdit.text = reviewer
    panel.openButton.fire("clicked(bool)")
    return panel


def review_rows(folder):
    with open(folder / "review.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_the_ipmn_review_section_steps_through_cases_and_saves_verdicts(panel_module, results, mrml_scene):
    panel = open_panel(panel_module, results, "ipmn")
    table = panel.table
    assert table.row_count == 2 and table.cells[(0, 0)] == "mr_a" and table.cells[(1, 0)] == "mr_b"
    assert "high-risk IPMN" in table.cells[(0, 1)] and table.cells[(0, 4)] == ""
    assert panel.caseLabel.text.startswith("mr_a: high-risk IPMN")
    assert not panel.previousButton.enabled and panel.nextButton.enabled

    panel.saveButton.fire("clicked(bool)")
    assert "Choose a verdict" in panel.statusLabel.text and not (results / "review.csv").exists()
    panel.verdictButtons["disagree"].checked = True
    panel.saveButton.fire("clicked(bool)")  # no class: the core's reason is shown
    assert "own class" in panel.statusLabel.text and not (results / "review.csv").exists()
    panel.classCombo.currentText = "normal"
    panel.commentEdit.plain = "simple cyst"
    panel.shortcuts[2].fire("activated()")  # Ctrl+Return
    [row] = review_rows(results)
    assert (row["reviewer"], row["case"], row["verdict"], row["reviewer_class"], row["comment"]) == \
        ("Dr A", "mr_a", "disagree", "normal", "simple cyst")
    assert table.cells[(0, 4)] == "disagree (normal)"

    panel.shortcuts[0].fire("activated()")  # Alt+Right
    assert panel.session.current.name == "mr_b" and table.selected == 1
    assert not any(b.checked for b in panel.verdictButtons.values()) and panel.commentEdit.plain == ""
    panel.opacitySlider.fire("valueChanged(double)", 0.8)
    composite = mrml_scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    panel.shortcuts[1].fire("activated()")  # Alt+Left: the saved verdict comes back
    assert panel.verdictButtons["disagree"].checked and panel.classCombo.currentText == "normal"
    assert panel.commentEdit.plain == "simple cyst"
    assert Settings.store["PancreasAI/Reviewer"] == "Dr A"


def test_the_segmentation_review_section_saves_a_correction_as_edited(panel_module, results, mrml_scene):
    before = node_ids(mrml_scene)
    panel = open_panel(panel_module, results, "segmentation")
    assert panel.session.current.name == "ct_a"
    panel.saveCorrectionButton.fire("clicked(bool)")
    assert (results / "ct_a_pancreas_reviewed.seg.nrrd").is_file()
    assert panel.verdictButtons["edited"].checked
    panel.saveButton.fire("clicked(bool)")
    [row] = review_rows(results)
    assert (row["case"], row["verdict"], row["edited_file"]) == ("ct_a", "edited", "ct_a_pancreas_reviewed.seg.nrrd")
    panel.table.fire("cellClicked(int,int)", 1, 0)
    assert panel.session.current.name == "ct_b"
    panel.close()  # the module's cleanup / scene close
    assert all("Slice" in n or "Color" in n for n in node_ids(mrml_scene) - before)


def test_a_folder_that_is_not_results_is_said_in_the_panel(panel_module, tmp_path):
    panel = open_panel(panel_module, tmp_path / "absent", "ipmn")
    assert "not a folder of results" in panel.statusLabel.text and panel.session is None
    assert not panel.saveButton.enabled


def test_a_two_class_case_offers_its_own_two_classes_to_disagree_with(panel_module, results, mrml_scene):
    """A 2-class result (Cyst-X's task) lists its two classes, not the three; a 3-class case next
    to it keeps the three."""
    path = results / "mr_b_ipmn_result.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record.update(class_names=["no or low-risk IPMN", "high-risk IPMN"], class_name="high-risk IPMN", risk_class=1,
                  probabilities=[0.3, 0.7], spread=[0.05, 0.05])
    path.write_text(json.dumps(record), encoding="utf-8")
    panel = open_panel(panel_module, results, "ipmn")
    assert panel.classCombo.items == ["", "normal", "low-risk IPMN", "high-risk IPMN"]  # mr_a, 3-class
    panel.nextButton.fire("clicked(bool)")
    assert panel.session.current.name == "mr_b"
    assert panel.classCombo.items == ["", "no or low-risk IPMN", "high-risk IPMN"]
    panel.verdictButtons["disagree"].checked = True
    panel.classCombo.currentText = "no or low-risk IPMN"
    panel.saveButton.fire("clicked(bool)")
    [row] = review_rows(results)
    assert (row["case"], row["verdict"], row["reviewer_class"]) == ("mr_b", "disagree", "no or low-risk IPMN")
