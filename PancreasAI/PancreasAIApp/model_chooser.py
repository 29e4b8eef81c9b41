"""The model list both modules show: registry models, local files, "Local file..."."""

import os
from typing import TYPE_CHECKING, Callable, Optional

import qt

from slicer.i18n import tr as _

if TYPE_CHECKING:
    from PancreasAILib.weights import ModelRegistry

#: Item data of the model list entry that opens a file dialog.
LOCAL_FILE_ITEM = "<local file>"


class ModelChooser:
    """Keeps a model combo box and the `model` field of a module's parameter node in step.

    The list holds the registry's models (by title), then the local model files chosen so far
    (by file name, the path as tool tip), then "Local file...", which opens a file dialog.
    Only the user's choices write the parameter node; `showModel` makes the list follow it.

    modelRegistry() - the module's `ModelRegistry`.
    parameterNode() - the module's parameter node, or None while there is none.
    folderButton - optional button that opens the folder of downloaded models.
    """

    def __init__(self, comboBox, modelRegistry: Callable[[], "ModelRegistry"],
                 parameterNode: Callable[[], Optional[object]], dialogTitle: str, dialogParent=None,
                 folderButton=None) -> None:
        self.comboBox = comboBox
        self.modelRegistry = modelRegistry
        self.parameterNode = parameterNode
        self.dialogTitle = dialogTitle
        self.dialogParent = dialogParent
        self.fill()
        # "activated" fires only for the user's choices, not when the list follows the parameter node.
        comboBox.connect("activated(int)", self.onActivated)
        if folderButton is not None:
            folderButton.connect("clicked(bool)", self.openModelFolder)

    def fill(self) -> None:
        """List the registry's models and the "Local file..." entry (and nothing else)."""
        comboBox = self.comboBox
        comboBox.clear()
        registry = self.modelRegistry()
        for name in registry.names:
            comboBox.addItem(registry.entries[name].title, name)
            comboBox.setItemData(comboBox.count - 1, registry.entries[name].title, qt.Qt.ToolTipRole)
        comboBox.addItem(_("Local file..."), LOCAL_FILE_ITEM)

    def showModel(self) -> None:
        """Select the parameter node's model in the list, adding it if it is a local file."""
        parameterNode = self.parameterNode()
        if not parameterNode or not parameterNode.model:
            return
        model = parameterNode.model
        comboBox = self.comboBox
        index = comboBox.findData(model)
        if index < 0:
            index = comboBox.count - 1  # local files go just before "Local file..."
            comboBox.insertItem(index, os.path.basename(model), model)
            comboBox.setItemData(index, model, qt.Qt.ToolTipRole)
        comboBox.currentIndex = index

    def onActivated(self, index: int) -> None:
        choice = self.comboBox.itemData(index)
        if choice != LOCAL_FILE_ITEM:
            self.parameterNode().model = choice
            return
        path = qt.QFileDialog.getOpenFileName(
            self.dialogParent, self.dialogTitle, "", _("Model files (*.safetensors *.json)"))
        if path:
            self.parameterNode().model = path
        self.showModel()  # back to the current model when the dialog was cancelled

    def openModelFolder(self) -> None:
        """Open the folder of downloaded models: to see them, delete them, or copy model files
        there by hand on computers without internet access."""
        folder = self.modelRegistry().cache_dir
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))
