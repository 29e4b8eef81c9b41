"""The Review section both modules show: a results folder's cases in a table, one shown at a
time in the slice views, the reviewer's verdict and comment saved to review.csv.

Thin over `PancreasAILib.review_session.ReviewSession` (Qt-free, tested in slicer-core): this
file only builds the widgets and passes clicks on. Keyboard: Alt+Right / Alt+Left (or Page Down /
Page Up inside the table) next / previous, Ctrl+Return saves the verdict.
"""

import ctk
import qt

import slicer
from slicer.i18n import tr as _

REVIEWER_SETTING = "PancreasAI/Reviewer"
FOLDER_SETTING = "PancreasAI/ReviewFolder"
COLUMNS = (_("Case"), _("Result"), _("Warnings"), _("Model"), _("Your verdict"))


class ReviewPanel:
    """`task` is 'segmentation' (PancreasSegMoNet) or 'ipmn' (IPMNRisk)."""

    def __init__(self, parentLayout, task: str) -> None:
        from PancreasAILib.review import IPMN_CLASSES, VERDICTS

        self.task = task
        self.session = None
        section = ctk.ctkCollapsibleButton()
        section.text = _("Review")
        section.collapsed = True
        parentLayout.addWidget(section)
        form = qt.QFormLayout(section)

        self.folderEdit = ctk.ctkPathLineEdit()
        self.folderEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.folderEdit.toolTip = _("A folder written by pancreas-seg segment or ipmn-risk batch.")
        self.folderEdit.currentPath = qt.QSettings().value(FOLDER_SETTING, "")
        form.addRow(_("Results folder:"), self.folderEdit)
        self.reviewerEdit = qt.QLineEdit(qt.QSettings().value(REVIEWER_SETTING, ""))
        self.reviewerEdit.placeholderText = _("your name, as it goes into review.csv")
        form.addRow(_("Reviewer:"), self.reviewerEdit)
        self.openButton = qt.QPushButton(_("Open worklist"))
        form.addRow(self.openButton)

        self.table = qt.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        form.addRow(self.table)

        navigation = qt.QHBoxLayout()
        self.previousButton = qt.QPushButton(_("< Previous"))
        self.previousButton.toolTip = _("Previous case (Alt+Left)")
        self.nextButton = qt.QPushButton(_("Next >"))
        self.nextButton.toolTip = _("Next case (Alt+Right)")
        navigation.addWidget(self.previousButton)
        navigation.addWidget(self.nextButton)
        form.addRow(navigation)

        self.caseLabel = qt.QLabel("")
        self.caseLabel.wordWrap = True
        form.addRow(self.caseLabel)
        if task == "ipmn":
            self.opacitySlider = ctk.ctkSliderWidget()
            self.opacitySlider.minimum, self.opacitySlider.maximum, self.opacitySlider.singleStep = 0.0, 1.0, 0.05
            self.opacitySlider.value = 0.5
            form.addRow(_("Heat-map opacity:"), self.opacitySlider)

        verdictRow = qt.QHBoxLayout()
        self.verdictButtons = {}
        self.verdictGroup = qt.QButtonGroup()
        for verdict in VERDICTS[task]:
            button = qt.QRadioButton(_(verdict))
            self.verdictGroup.addButton(button)
            verdictRow.addWidget(button)
            self.verdictButtons[verdict] = button
        form.addRow(_("Verdict:"), verdictRow)
        self.classCombo = None
        if task == "ipmn":
            self.classCombo = qt.QComboBox()
            self.classCombo.addItems(["", *IPMN_CLASSES])
            self.classCombo.toolTip = _("Your own class (needed to disagree).")
            form.addRow(_("Your class:"), self.classCombo)
        else:
            self.saveCorrectionButton = qt.QPushButton(_("Save corrected segmentation"))
            self.saveCorrectionButton.toolTip = _(
                "After correcting the pancreas with the Segment Editor: saves it as "
                "<case>_pancreas_reviewed.seg.nrrd beside the results (the model's file is kept).")
            form.addRow(self.saveCorrectionButton)
            self.saveCorrectionButton.connect("clicked(bool)", self.onSaveCorrection)
        self.commentEdit = qt.QPlainTextEdit()
        self.commentEdit.setMaximumHeight(60)
        form.addRow(_("Comment:"), self.commentEdit)
        self.saveButton = qt.QPushButton(_("Save verdict"))
        self.saveButton.toolTip = _("Write your verdict to review.csv in the results folder (Ctrl+Return).")
        form.addRow(self.saveButton)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.openButton.connect("clicked(bool)", self.onOpen)
        self.previousButton.connect("clicked(bool)", lambda: self._step(-1))
        self.nextButton.connect("clicked(bool)", lambda: self._step(+1))
        self.saveButton.connect("clicked(bool)", self.onSave)
        self.table.connect("cellClicked(int,int)", lambda row, column: self._show(row))
        if task == "ipmn":
            self.opacitySlider.connect("valueChanged(double)", self._onOpacity)
        self.shortcuts = []
        for keys, slot in (("Alt+Right", lambda: self._step(+1)), ("Alt+Left", lambda: self._step(-1)),
                           ("Ctrl+Return", self.onSave)):
            shortcut = qt.QShortcut(qt.QKeySequence(keys), section)
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
            shortcut.connect("activated()", slot)
            self.shortcuts.append(shortcut)
        self._updateButtons()

    # --- actions ---

    def onOpen(self) -> None:
        from PancreasAILib.errors import PancreasAIError
        from PancreasAILib.review_session import ReviewSession

        self.close()
        folder, reviewer = self.folderEdit.currentPath, self.reviewerEdit.text.strip()
        try:
            self.session = ReviewSession(folder, reviewer, slicer.mrmlScene, self.task)
        except PancreasAIError as error:
            self._say(str(error))
            return
        qt.QSettings().setValue(FOLDER_SETTING, folder)
        qt.QSettings().setValue(REVIEWER_SETTING, reviewer)
        problems = list(self.session.worklist.problems)
        self._say(_("{count} case(s).").format(count=len(self.session.cases)) + " " + " ".join(problems))
        self._fillTable()
        if self.session.cases:
            self._show(self.session.first_unreviewed())

    def onSave(self) -> None:
        from PancreasAILib.errors import PancreasAIError

        if self.session is None or self.session.current is None:
            return
        self.session.reviewer = " ".join(self.reviewerEdit.text.split())
        checked = [v for v, button in self.verdictButtons.items() if button.checked]
        if not checked:
            self._say(_("Choose a verdict first."))
            return
        try:
            stored = self.session.record(checked[0], self.classCombo.currentText if self.classCombo else "",
                                         self.commentEdit.toPlainText())
        except PancreasAIError as error:
            self._say(str(error))
            return
        qt.QSettings().setValue(REVIEWER_SETTING, stored.reviewer)
        self._fillTable()
        self._say(_("Saved: {case} {verdict} ({time}).").format(case=stored.case, verdict=stored.verdict,
                                                                 time=stored.time))

    def onSaveCorrection(self) -> None:
        from PancreasAILib.errors import PancreasAIError

        if self.session is None:
            return
        self.session.reviewer = " ".join(self.reviewerEdit.text.split())
        try:
            path = self.session.save_correction()
        except PancreasAIError as error:
            self._say(str(error))
            return
        self.verdictButtons["edited"].checked = True
        self._say(_("Saved {path}; choose Save verdict to record 'edited'.").format(path=path))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
        self.table.setRowCount(0)
        self._updateButtons()

    # --- display ---

    def _step(self, delta: int) -> None:
        if self.session is not None and self.session.cases:
            self._show(self.session.index + delta)

    def _show(self, index: int) -> None:
        from PancreasAILib.errors import PancreasAIError

        message = ""
        try:
            self.session.go_to(index, self._opacity())
        except PancreasAIError as error:
            message = str(error)
        case = self.session.current
        self.table.selectRow(self.session.index)
        verdict = self.session.verdict_of(case) if self.session.reviewer else None
        for name, button in self.verdictButtons.items():
            button.checked = verdict is not None and verdict.verdict == name
        if self.classCombo is not None:  # the shown case's own task's classes (2-class or 3-class)
            self.classCombo.clear()
            self.classCombo.addItems(["", *self.session.class_choices()])
            self.classCombo.currentText = verdict.reviewer_class if verdict else ""
        self.commentEdit.setPlainText(verdict.comment if verdict else "")
        lines = [f"{case.name}: {case.summary}", *case.warnings, *case.missing]
        if case.model:
            lines.append(_("Model: {name} (SHA256 {sha})").format(name=case.model, sha=case.model_sha256[:16]))
        self.caseLabel.text = "\n".join(lines)
        self._say(message)
        self._updateButtons()

    def _fillTable(self) -> None:
        rows = self.session.rows()
        self.table.setRowCount(len(rows))
        for row, (case, verdict) in enumerate(rows):
            verdictText = ""
            if verdict is not None:
                verdictText = verdict.verdict + (f" ({verdict.reviewer_class})" if verdict.reviewer_class else "")
            values = (case.name, case.summary, "; ".join(case.warnings), case.model, verdictText)
            for column, value in enumerate(values):
                self.table.setItem(row, column, qt.QTableWidgetItem(value))
        self.table.resizeColumnsToContents()

    def _opacity(self) -> float:
        return self.opacitySlider.value if self.task == "ipmn" else 0.5

    def _onOpacity(self, value: float) -> None:
        from PancreasAILib.review_scene import show_case

        if self.session is not None and self.session.loaded is not None:
            show_case(slicer.mrmlScene, self.session.loaded, value)

    def _updateButtons(self) -> None:
        active = self.session is not None and bool(self.session.cases)
        for widget in (self.previousButton, self.nextButton, self.saveButton):
            widget.enabled = active
        if active:
            self.previousButton.enabled = self.session.index > 0
            self.nextButton.enabled = self.session.index < len(self.session.cases) - 1

    def _say(self, text: str) -> None:
        self.statusLabel.text = text
