"""Pancreas Segmentation (MoNet): segment the pancreas on abdominal CT.

MoNet is the 2D multi-scale network of Knolle, Kaissis et al. (PLOS ONE 2021). The work is
done by `PancreasSegMoNetLib` (which never imports Qt; `logic.py` is the one route from a volume
node to its segment); this file is the Slicer GUI and a thin Logic over it. torch is imported
only when a segmentation runs.
"""

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

from PancreasAIApp.model_chooser import ModelChooser
from PancreasAIApp.parameter_gui import connectParameterNodeGui
from PancreasAIApp.review_panel import ReviewPanel
from PancreasAIApp.run_panel import BackgroundRunPanel
from PancreasAIApp.self_tests import requireDependencies, runSelfTests

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  # PancreasAILib.engines.PRECISIONS (not imported: it needs numpy)
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
    precision - "auto": bf16 where the CPU computes it natively and the model card records a
      passed agreement check, else float32; "fp32" always the exact float32 path.
    useModelThreshold - use the threshold of the model's card (its post-processing setting).
    threshold - otherwise, the probability above which a voxel counts as pancreas (strictly
      between 0 and 1, as the core requires).
    keepLargestComponent - drop small pieces disconnected from the main pancreas.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str
    device: Annotated[str, Choice(DEVICES)] = "auto"
    precision: Annotated[str, Choice(PRECISIONS)] = "auto"
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
        self._reviewPanel = None  # the Review section
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
        # Review: a results folder's cases, one at a time, verdicts to review.csv
        self._reviewPanel = ReviewPanel(self.layout, "segmentation")

    def cleanup(self) -> None:
        if self._runPanel is not None:
            self._runPanel.cancel()
        if self._reviewPanel is not None:
            self._reviewPanel.close()
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
        self._reviewPanel.close()  # its case's nodes go with the scene
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

    def _startSegmentation(self):
        parameters = self._parameterNode
        return self.logic.startSegmentation(
            parameters.inputVolume, parameters.outputSegmentation, model=parameters.model,
            device=parameters.device, precision=parameters.precision,
            threshold=chosenThreshold(parameters.useModelThreshold, parameters.threshold),
            keepLargestComponent=parameters.keepLargestComponent,
            onProgress=self._runPanel.showProgress, onFinished=self._onSegmentationFinished)

    def _onSegmentationFinished(self, outcome, errorMessage: str) -> None:
        self._runPanel.taskFinished(outcome is not None, errorMessage)
        if outcome is None:
            return
        segmentationNode = outcome.segmentation_node
        self._runPanel.showDone(
            _("Done: the pancreas is in '{name}' ({volume:.1f} ml; {engine}).").format(
                name=segmentationNode.GetName(), volume=outcome.volume_ml, engine=outcome.engine),
            outcome.warnings)
        if self._parameterNode:
            self._parameterNode.outputSegmentation = segmentationNode


#
# PancreasSegMoNetLogic
#


class PancreasSegMoNetLogic(ScriptedLoadableModuleLogic):
    """Segments the pancreas; usable from the Python console without the GUI:

        logic = slicer.util.getModuleLogic("PancreasSegMoNet")
        outcome = logic.segment(getNode("CT"))
        outcome.segmentation_node, outcome.volume_ml, outcome.warnings

    Both methods take the one route of `PancreasSegMoNetLib.logic`; `runner` says where the
    work runs (`segment`: in this process; `startSegmentation`: in a PythonSlicer process).
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
                progressCallback: Optional[Callable[[float, str], None]] = None, runner=None,
                precision: str = "auto"):
        """Segment the pancreas in `volumeNode` (CT, Hounsfield units); blocks until done and
        returns the `SegmentationOutcome` (segmentation_node holding the "Pancreas" segment,
        model_name, model_sha256, threshold, warnings, voxel_count, volume_ml, seconds, engine,
        precision).

        segmentationNode - receives the segment (replacing this module's earlier one); None
          creates a new segmentation beside the volume.
        model - registry name or .safetensors path; None for the default model.
        threshold - probability threshold; None uses the model card's.
        precision - "auto" (bf16 where the CPU and the model card allow it), "fp32" (always the
          exact float32 path) or "bf16" (refused where not allowed).
        progressCallback(fraction, status) - called as the work advances.
        runner - where the work runs; None: in this process (PancreasAILib.runners).
        """
        from PancreasSegMoNetLib.logic import segment

        return segment(volumeNode, segmentationNode, model, device, threshold, keepLargestComponent,
                       progress=progressCallback, runner=runner, precision=precision)

    def startSegmentation(self, volumeNode, segmentationNode=None, model: Optional[str] = None,
                          device: str = "auto", threshold: Optional[float] = None,
                          keepLargestComponent: bool = True,
                          onProgress: Optional[Callable[[float, str], None]] = None,
                          onFinished: Optional[Callable] = None, runner=None, precision: str = "auto"):
        """Like `segment`, but returns the running task at once (`task.cancel()` stops it); by
        default in a PythonSlicer process, so Slicer stays responsive.

        onFinished(outcome, errorMessage) is called once at the end: with the outcome and "" on
        success; with None and the reason on failure; with None and "" when cancelled. The
        scene changes only on success.
        """
        from PancreasAIApp.slicer_process import slicerBackgroundRunner
        from PancreasSegMoNetLib.logic import start_segmentation

        return start_segmentation(runner or slicerBackgroundRunner(), volumeNode, segmentationNode, model, device,
                                  threshold, keepLargestComponent, on_progress=onProgress, on_finished=onFinished,
                                  precision=precision)


def chosenThreshold(useModelThreshold: bool, threshold: float) -> Optional[float]:
    """The threshold to ask for: None lets the model card's apply."""
    return None if useModelThreshold else float(threshold)


#
# PancreasSegMoNetTest
#


class PancreasSegMoNetTest(ScriptedLoadableModuleTest):
    """Real (small) inference with the bundled demo model on the bundled CT sample, by both
    runners."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        runSelfTests(self, [self.test_segment_finds_the_pancreas_of_the_sample_ct,
                            self.test_background_segmentation_finds_the_pancreas_of_the_sample_ct])

    def test_segment_finds_the_pancreas_of_the_sample_ct(self):
        requireDependencies(self)
        volumeNode, expected = self._sampleVolume()

        outcome = PancreasSegMoNetLogic().segment(volumeNode)

        self.assertGreater(self._dice(outcome.segmentation_node, volumeNode, expected), 0.5)
        self.assertEqual(outcome.segmentation_node.GetAttribute("PancreasSegMoNet.Model"), outcome.model_name)

    def test_background_segmentation_finds_the_pancreas_of_the_sample_ct(self):
        requireDependencies(self)
        volumeNode, expected = self._sampleVolume()
        outcomes = []

        task = PancreasSegMoNetLogic().startSegmentation(
            volumeNode, onFinished=lambda outcome, message: outcomes.append((outcome, message)))
        task.wait_for_finished(600000)

        self.assertEqual(len(outcomes), 1)
        outcome, message = outcomes[0]
        self.assertIsNotNone(outcome, message)
        self.assertGreater(self._dice(outcome.segmentation_node, volumeNode, expected), 0.5)

    @staticmethod
    def _sampleVolume():
        """The bundled CT sample (SHA256-checked) and its expected pancreas mask."""
        from PancreasAILib.sample_data import CT_PANCREAS_FILE, CT_VOLUME_FILE, sample_path
        from PancreasAILib.volume_io import read_volume

        volumeNode = slicer.util.loadVolume(str(sample_path(CT_VOLUME_FILE)))
        expected = read_volume(sample_path(CT_PANCREAS_FILE)).array > 0
        return volumeNode, expected

    def _dice(self, segmentationNode, volumeNode, expected) -> float:
        import numpy as np

        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("Pancreas")
        self.assertTrue(segmentId, "no 'Pancreas' segment was created")
        found = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        return float(2 * np.logical_and(found, expected).sum() / (found.sum() + expected.sum()))
