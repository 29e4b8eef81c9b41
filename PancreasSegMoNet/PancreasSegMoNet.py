"""Pancreas Segmentation (MoNet): segment the pancreas on abdominal CT.

MoNet is the 2D multi-scale network of Knolle, Kaissis et al. (PLOS ONE 2021). The work is
done by `PancreasSegMoNetLib` (which never imports Qt); this file is the Slicer GUI and a
thin Logic over it. torch is imported only when a segmentation runs.
"""

import logging
import os
from typing import Annotated, Callable, Optional

import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from PancreasAI import (
    BackgroundRunPanel,
    BackgroundTask,
    ModelChooser,
    connectParameterNodeGui,
    exportVolume,
    missingPackages,
    newWorkDir,
    runSelfTests,
    startTaskThenImport,
)

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
DEVICES = ("auto", "cpu", "cuda")
THRESHOLD_RANGE = (0.01, 0.99)  # the core refuses 0 and 1 (every voxel, or none)


#
# PancreasSegMoNet
#


class PancreasSegMoNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Pancreas Segmentation (MoNet)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["PancreasAI"]
        self.parent.contributors = ["PancreasAI team"]
        self.parent.helpText = _("""
Segments the pancreas on an abdominal CT (best on contrast-enhanced, portal-venous phase) with
MoNet, a compact 2D network that segments each axial slice. Choose the CT, click
<b>Segment pancreas</b>; the result is a "Pancreas" segment (standard terminology and colour) in
the chosen segmentation, or in a new one placed beside the CT. Slicer stays usable during the
computation, which can be cancelled.
<p><b>About the bundled model:</b> "MoNet demo" was trained only on synthetic CT phantoms. It
shows the workflow and runs the self-test, but it does <b>not</b> segment the pancreas reliably on
real patient CT and must not be used for any clinical purpose. For real images choose
<b>Local file...</b> and pick a MoNet model trained on real data (a .safetensors file with its .json
model card beside it).</p>
<p>From the Python console:
<code>slicer.util.getModuleLogic("PancreasSegMoNet").segment(volumeNode)</code>; from a shell,
for folders of cases:
<code>PythonSlicer -m PancreasSegMoNetLib segment INPUT --output DIR</code>.</p>
""")
        self.parent.acknowledgementText = _("""
MoNet: Knolle M, Kaissis G, et al. Efficient, high-performance semantic segmentation using
multi-scale feature extraction. PLOS ONE 16(8): e0255397, 2021
(<a href="https://doi.org/10.1371/journal.pone.0255397">doi:10.1371/journal.pone.0255397</a>).
This is an independent PyTorch implementation by the PancreasAI team.
""")


#
# PancreasSegMoNetParameterNode
#


@parameterNodeWrapper
class PancreasSegMoNetParameterNode:
    """The module's settings, saved with the scene.

    inputVolume - the CT to segment.
    outputSegmentation - receives the "Pancreas" segment; a new segmentation when empty.
    model - a model registry name, or the path of a .safetensors model file.
    device - "auto" uses a CUDA GPU when PyTorch finds one, else the CPU.
    useModelThreshold - use the threshold of the model's card (its post-processing setting).
    threshold - otherwise, the probability above which a voxel counts as pancreas (strictly
      between 0 and 1, as the core requires).
    keepLargestComponent - drop small pieces disconnected from the main pancreas.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str
    device: Annotated[str, Choice(DEVICES)] = "auto"
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(THRESHOLD_RANGE[0], THRESHOLD_RANGE[1])] = 0.5
    keepLargestComponent: bool = True


#
# PancreasSegMoNetWidget
#


class PancreasSegMoNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelChooser = None
        self._runPanel = None  # runs the segmentation in the background

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PancreasSegMoNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PancreasSegMoNetLogic()
        self._modelChooser = ModelChooser(
            self.ui.modelComboBox, self.logic.modelRegistry, lambda: self._parameterNode,
            _("Choose a MoNet model file"), self.parent, folderButton=self.ui.modelFolderButton)
        self._runPanel = BackgroundRunPanel(
            self.ui.applyButton, self.ui.cancelButton, self.ui.progressBar, self.ui.statusLabel,
            self._missingInput,
            applyToolTip=_("Segment the pancreas in the selected CT volume."),
            runningToolTip=_("A segmentation is running; cancel it or wait for it to end."),
            startFailedMessage=_("Could not start the pancreas segmentation."),
            failedMessage=_("The pancreas segmentation failed.\n\n{reason}"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._runPanel is not None:
            self._runPanel.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        # The nodes the running segmentation would write into are about to disappear.
        self._runPanel.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.model:
            self._parameterNode.model = self.logic.modelRegistry().default_name

    def setParameterNode(self, inputParameterNode: Optional[PancreasSegMoNetParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParameterNodeGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._modelChooser.showModel()
        self.ui.thresholdSliderWidget.enabled = not self._parameterNode.useModelThreshold
        self._runPanel.updateButtons()

    def _missingInput(self) -> str:
        """What the user still has to choose, or "" when the segmentation can start."""
        if not self._parameterNode or not self._parameterNode.inputVolume:
            return _("Select a CT volume first.")
        return ""

    # --- running ------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        self._runPanel.run(self._startSegmentation)

    def _startSegmentation(self) -> BackgroundTask:
        parameters = self._parameterNode
        return self.logic.startSegmentation(
            parameters.inputVolume, parameters.outputSegmentation, model=parameters.model,
            device=parameters.device,
            threshold=chosenThreshold(parameters.useModelThreshold, parameters.threshold),
            keepLargestComponent=parameters.keepLargestComponent,
            onProgress=self._runPanel.showProgress, onFinished=self._onSegmentationFinished)

    def _onSegmentationFinished(self, segmentationNode, errorMessage: str) -> None:
        self._runPanel.taskFinished(segmentationNode is not None, errorMessage)
        if segmentationNode is None:
            return
        self._runPanel.showProgress(
            1.0, _("Done: the pancreas is in '{name}'.").format(name=segmentationNode.GetName()))
        if self._parameterNode:
            self._parameterNode.outputSegmentation = segmentationNode


#
# PancreasSegMoNetLogic
#


class PancreasSegMoNetLogic(ScriptedLoadableModuleLogic):
    """Segments the pancreas; usable from the Python console without the GUI:

        logic = slicer.util.getModuleLogic("PancreasSegMoNet")
        segmentationNode = logic.segment(getNode("CT"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return PancreasSegMoNetParameterNode(super().getParameterNode())

    @staticmethod
    def modelRegistry():
        """The known models (`PancreasAILib.weights.ModelRegistry`)."""
        from PancreasSegMoNetLib.registry import model_registry

        return model_registry()

    def segment(self, volumeNode, segmentationNode=None, model: Optional[str] = None, device: str = "auto",
                threshold: Optional[float] = None, keepLargestComponent: bool = True,
                progressCallback: Optional[Callable[[float, str], None]] = None):
        """Segment the pancreas in `volumeNode` (CT, Hounsfield units) and return the
        segmentation node holding the "Pancreas" segment. Blocks until done.

        segmentationNode - receives the segment (replacing this module's earlier one); None
          creates a new segmentation beside the volume.
        model - registry name or .safetensors path; None for the default model.
        threshold - probability threshold; None uses the model card's.
        progressCallback(fraction, status) - called as the work advances.
        """
        from PancreasAILib.progress import no_progress
        from PancreasSegMoNetLib.pancreas_segment import segment_volume_node

        return segment_volume_node(
            volumeNode, segmentationNode, model=model, device=device, threshold=threshold,
            keep_largest_component=keepLargestComponent, progress=progressCallback or no_progress)

    def startSegmentation(self, volumeNode, segmentationNode=None, model: Optional[str] = None,
                          device: str = "auto", threshold: Optional[float] = None,
                          keepLargestComponent: bool = True,
                          onProgress: Optional[Callable[[float, str], None]] = None,
                          onFinished: Optional[Callable] = None) -> BackgroundTask:
        """Like `segment`, but in a separate process so Slicer stays responsive; returns the
        running task at once (`task.cancel()` stops it).

        onFinished(segmentationNode, errorMessage) is called once at the end: with the
        segmentation node and "" on success; with None and the reason on failure; with None
        and "" when cancelled. The scene changes only on success.
        """
        with newWorkDir("PancreasSegMoNet") as workDir:
            inputPath = exportVolume(volumeNode, os.path.join(workDir, "input.nrrd"))
            outputDir = os.path.join(workDir, "output")
            arguments = segmentationArguments(inputPath, outputDir, model, device, threshold,
                                              keepLargestComponent)
            return startTaskThenImport(
                "PancreasSegMoNetLib", arguments, [MODULE_DIR], workDir,
                lambda: self._importFinishedResult(volumeNode, resultPath(inputPath, outputDir), segmentationNode),
                onProgress=onProgress, onFinished=onFinished)

    def _importFinishedResult(self, volumeNode, labelmapPath: str, segmentationNode) -> tuple:
        """(segmentation node, "") or (None, reason)."""
        if volumeNode.GetScene() is None:
            return None, _("The CT volume was removed from the scene during the segmentation.")
        if segmentationNode is not None and segmentationNode.GetScene() is None:
            return None, _("The output segmentation was removed from the scene during the segmentation.")
        try:
            return self.importResult(volumeNode, labelmapPath, segmentationNode), ""
        except Exception as error:
            logging.exception("Importing %s failed", labelmapPath)
            return None, str(error)

    def importResult(self, volumeNode, labelmapPath: str, segmentationNode=None):
        """Put a pancreas mask written by the command line (a label map on `volumeNode`'s grid)
        into `segmentationNode` (None creates one); returns the segmentation node."""
        from PancreasSegMoNetLib.pancreas_segment import import_mask_file

        return import_mask_file(volumeNode, labelmapPath, segmentationNode)


def chosenThreshold(useModelThreshold: bool, threshold: float) -> Optional[float]:
    """The threshold to ask for: None lets the model card's apply."""
    return None if useModelThreshold else float(threshold)


def segmentationArguments(inputPath: str, outputDir: str, model: Optional[str], device: str,
                          threshold: Optional[float], keepLargestComponent: bool) -> list[str]:
    """Command-line arguments of `python -m PancreasSegMoNetLib` for one CT file."""
    arguments = ["segment", inputPath, "--output", outputDir, "--device", device,
                 "--progress-format", "json"]
    if model:
        arguments += ["--model", model]
    if threshold is not None:
        arguments += ["--threshold", repr(float(threshold))]
    if not keepLargestComponent:
        arguments.append("--no-largest-component")
    return arguments


def resultPath(inputPath: str, outputDir: str) -> str:
    """Where the command line writes the label map for `inputPath`."""
    from pathlib import Path

    from PancreasSegMoNetLib.cli import output_paths

    return str(output_paths(Path(inputPath), Path(outputDir))[1])


#
# PancreasSegMoNetTest
#


class PancreasSegMoNetTest(ScriptedLoadableModuleTest):
    """Real (small) inference with the bundled demo model on a synthetic CT phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        runSelfTests(self, [self.test_segment_finds_the_pancreas_of_a_ct_phantom,
                            self.test_background_segmentation_finds_the_pancreas_of_a_ct_phantom])

    def test_segment_finds_the_pancreas_of_a_ct_phantom(self):
        self._requireDependencies()
        phantom, volumeNode = self._phantomVolume()

        segmentationNode = PancreasSegMoNetLogic().segment(volumeNode)

        self.assertGreater(self._dice(segmentationNode, volumeNode, phantom.pancreas), 0.5)

    def test_background_segmentation_finds_the_pancreas_of_a_ct_phantom(self):
        self._requireDependencies()
        phantom, volumeNode = self._phantomVolume()
        outcomes = []

        task = PancreasSegMoNetLogic().startSegmentation(
            volumeNode, onFinished=lambda node, message: outcomes.append((node, message)))
        task.waitForFinished(600000)

        self.assertEqual(len(outcomes), 1)
        segmentationNode, message = outcomes[0]
        self.assertIsNotNone(segmentationNode, message)
        self.assertGreater(self._dice(segmentationNode, volumeNode, phantom.pancreas), 0.5)

    def _requireDependencies(self):
        """Skip (not fail) where PyTorch or timm is not installed, as on extension build servers."""
        missing = missingPackages()
        if missing:
            self.skipTest(f"needs {', '.join(missing)} (install the PyTorch extension, then click Apply once)")

    @staticmethod
    def _phantomVolume():
        from PancreasAIPhantoms.ct import make_ct_phantom

        phantom = make_ct_phantom(seed=1000, shape=(16, 128, 128))
        volumeNode = slicer.util.addVolumeFromArray(phantom.hu, ijkToRAS=phantom.ijk_to_ras, name="CT phantom")
        return phantom, volumeNode

    def _dice(self, segmentationNode, volumeNode, expected) -> float:
        import numpy as np

        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Pancreas")
        self.assertTrue(segmentId, "no 'Pancreas' segment was created")
        found = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        return float(2 * np.logical_and(found, expected).sum() / (found.sum() + expected.sum()))
