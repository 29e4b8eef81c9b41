"""IPMN Risk: classify an intraductal papillary mucinous neoplasm (IPMN) of the pancreas as
normal, low-risk or high-risk from a paired T1/T2 MRI, with an attention heat map.

The method is the early-fusion Vision Transformer of Proietto Salanitri et al. (EMBC 2022).
The work is done by `IPMNRiskLib` (which never imports Qt; `logic.py` is the one route from the
T1/T2 nodes to the result's nodes); this file is the Slicer GUI and a thin Logic over it. torch
and timm are imported only when an assessment runs.
"""

from typing import Annotated, Callable, Optional

import qt

import vtk

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
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
EXPLANATIONS = ("rollout", "gradient-rollout")  # IPMNRiskLib.explanations.EXPLANATIONS (it needs numpy)
REGION_ROI = "ROI box"
REGION_SEGMENTATION = "Segmentation"
REGION_POINT = "Point"
REGION_AUTOMATIC = "Automatic"
REGION_MODES = (REGION_ROI, REGION_SEGMENTATION, REGION_POINT, REGION_AUTOMATIC)
AUTOMATIC_REGION = "automatic"  # IPMNRiskLib.automatic_region.AUTOMATIC (not imported: it needs numpy)


#
# IPMNRisk
#


class IPMNRisk(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("IPMN Risk")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["PancreasAI"]
        self.parent.contributors = ["PancreasAI team"]
        self.parent.helpText = _("""
<p><b>For research use only.</b> Not a medical device; the result must not guide patient care.</p>
<p>Estimates whether the pancreas shows no IPMN, a low-risk IPMN (low-grade dysplasia) or a
high-risk IPMN (high-grade dysplasia), from a T1-weighted and a T2-weighted MRI of the same
study. Give the region around the pancreas as a box (markups ROI), as a segmentation, as a
point with a box size, or let it be found automatically (a pancreas segmentation of T2 by an MR
MoNet; the bundled one is a demo trained on phantoms). Nine axial slices through the region, from both sequences, are shown to
a Vision Transformer; the result is the class with its probabilities (and their spread over
flipped and rotated copies of the input when test-time augmentation is on) and a heat map of
where the network looked, overlaid on the T2 volume.</p>
<p><b>About the bundled model:</b> the demo model was trained only on synthetic MRI phantoms. It
shows the workflow and runs the self-test; its output on real patients means nothing. Use
<b>Local file...</b> for a model trained on real data.</p>
<p>From the Python console:
<code>slicer.util.getModuleLogic("IPMNRisk").assess(t1Node, t2Node, roiNode)</code>.</p>
""")
        self.parent.acknowledgementText = _("""
Method: Proietto Salanitri F, Bellitto G, Palazzo S, et al. Neural Transformers for Intraductal
Papillary Mucosal Neoplasms (IPMN) Classification in MRI images. 44th Annual International
Conference of the IEEE Engineering in Medicine and Biology Society (EMBC), 2022
(<a href="https://arxiv.org/abs/2206.10531">arXiv:2206.10531</a>). This is an independent
implementation by the PancreasAI team.
""")


#
# IPMNRiskParameterNode
#


@parameterNodeWrapper
class IPMNRiskParameterNode:
    """The module's settings, saved with the scene.

    t1Volume, t2Volume - the two sequences of one study; the heat map is made on T2's grid.
    regionMode - which of the next three nodes gives the region around the pancreas, or
      "Automatic": an MR MoNet segments the pancreas on T2 and the box around it is the region.
    roiNode - a box (markups ROI) around the pancreas.
    regionSegmentation - a segmentation whose segments' extent is the region.
    regionPoint - the first point of this list is the centre of a cube of pointBoxSizeMm.
    model - a model registry name, or the path of a .safetensors model file.
    device - "auto" uses a CUDA GPU when PyTorch finds one, else the CPU.
    precision - "auto": bf16 where the CPU computes it natively and the model card records a
      passed agreement check, else float32; "fp32" always the exact float32 path.
    testTimeAugmentation - average over flipped and rotated copies; gives the spread.
    explanation - how the heat map is made: "rollout" (attention rollout, the paper's) or
      "gradient-rollout" (gradient-weighted attention rollout of the assessed class, Chefer et
      al. 2021; computed by PyTorch whatever the engine).
    overlayOpacity - opacity of the heat map over the MRI in the slice views.
    """

    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    regionMode: Annotated[str, Choice(REGION_MODES)] = REGION_ROI
    roiNode: vtkMRMLMarkupsROINode
    regionSegmentation: vtkMRMLSegmentationNode
    regionPoint: vtkMRMLMarkupsFiducialNode
    pointBoxSizeMm: Annotated[float, WithinRange(10.0, 300.0)] = 60.0
    model: str
    device: Annotated[str, Choice(DEVICES)] = "auto"
    precision: Annotated[str, Choice(PRECISIONS)] = "auto"
    testTimeAugmentation: bool = True
    explanation: Annotated[str, Choice(EXPLANATIONS)] = "rollout"
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# IPMNRiskWidget
#


class IPMNRiskWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelChooser = None
        self._reviewPanel = None  # the Review section
        self._runPanel = None  # runs the assessment in the background
        self._heatMapNode = None  # the heat map shown in the slice views

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IPMNRisk.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = IPMNRiskLogic()
        self._modelChooser = ModelChooser(
            self.ui.modelComboBox, self.logic.modelRegistry, lambda: self._parameterNode,
            _("Choose an IPMN risk model file"), self.parent)
        self._runPanel = BackgroundRunPanel(
            self.ui.applyButton, self.ui.cancelButton, self.ui.progressBar, self.ui.statusLabel,
            self._missingInput,
            applyToolTip=_("Assess the IPMN risk in the selected region."),
            runningToolTip=_("An assessment is running; cancel it or wait for it to end."),
            startFailedMessage=_("Could not start the IPMN risk assessment."),
            failedMessage=_("The IPMN risk assessment failed.\n\n{reason}"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoiButton)
        self.ui.placePointButton.connect("clicked(bool)", self.onPlacePointButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.ui.resultLabel.text = _("No assessment yet.")
        self.initializeParameterNode()
        # Review: a results folder's cases, one at a time, verdicts to review.csv
        self._reviewPanel = ReviewPanel(self.layout, "ipmn")

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
        # The nodes the running assessment would write into are about to disappear.
        self._runPanel.cancel()
        self._reviewPanel.close()  # its case's nodes go with the scene
        self._heatMapNode = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.model:
            self._parameterNode.model = self.logic.modelRegistry().default_name

    def setParameterNode(self, inputParameterNode: Optional[IPMNRiskParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = connectParameterNodeGui(self._parameterNode, self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._showRegionMode()
        self._modelChooser.showModel()
        self.logic.setOverlayOpacity(self._heatMapNode, self._parameterNode.overlayOpacity)
        self._runPanel.updateButtons()

    def _missingInput(self) -> str:
        """What the user still has to choose, or "" when the assessment can start."""
        parameters = self._parameterNode
        if not parameters or not parameters.t1Volume or not parameters.t2Volume:
            return _("Select the T1 and the T2 volume.")
        if self._regionNode() is None:
            return _("Give the region around the pancreas (a box, a segmentation or a point).")
        return ""

    # --- region -------------------------------------------------------------------------------

    def _regionNode(self):
        return self.logic.regionNode(self._parameterNode) if self._parameterNode else None

    def _showRegionMode(self) -> None:
        mode = self._parameterNode.regionMode
        self.ui.roiRegionWidget.visible = mode == REGION_ROI
        self.ui.segmentationRegionWidget.visible = mode == REGION_SEGMENTATION
        self.ui.pointRegionWidget.visible = mode == REGION_POINT
        self.ui.automaticRegionLabel.visible = mode == REGION_AUTOMATIC

    def onPlaceRoiButton(self) -> None:
        """Draw a new box in a slice view: click its centre, then a corner."""
        roiNode = self._parameterNode.roiNode
        if roiNode is None or roiNode.GetNumberOfControlPoints() > 0:
            roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("Pancreas region"))
            roiNode.CreateDefaultDisplayNodes()
            self._parameterNode.roiNode = roiNode
        self._startPlacing(roiNode)

    def onPlacePointButton(self) -> None:
        """Click the centre of the region in a slice view."""
        pointNode = self._parameterNode.regionPoint
        if pointNode is None:
            pointNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", _("Pancreas centre"))
            pointNode.CreateDefaultDisplayNodes()
            self._parameterNode.regionPoint = pointNode
        pointNode.RemoveAllControlPoints()  # only the first point counts
        self._startPlacing(pointNode)

    @staticmethod
    def _startPlacing(markupsNode) -> None:
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(markupsNode.GetClassName())
        selectionNode.SetActivePlaceNodeID(markupsNode.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    # --- running ------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        self._runPanel.run(self._startAssessment)

    def _startAssessment(self):
        parameters = self._parameterNode
        return self.logic.startAssessment(
            parameters.t1Volume, parameters.t2Volume, self._regionNode(), model=parameters.model,
            device=parameters.device, precision=parameters.precision, explanation=parameters.explanation,
            testTimeAugmentation=parameters.testTimeAugmentation, pointBoxSizeMm=parameters.pointBoxSizeMm,
            onProgress=self._runPanel.showProgress, onFinished=self._onAssessmentFinished)

    def _onAssessmentFinished(self, result, errorMessage: str) -> None:
        self._runPanel.taskFinished(result is not None, errorMessage)
        if result is None:
            return
        self._runPanel.showDone(_("Done ({engine}).").format(engine=result.engine), result.warnings)
        self.ui.resultLabel.text = resultText(result)
        self._showGridImage(result.grid_png)
        self._heatMapNode = result.heat_map_node
        if self._parameterNode:
            self.logic.showResult(result, self._parameterNode.t2Volume, self._parameterNode.overlayOpacity)


    def _showGridImage(self, png: Optional[bytes]) -> None:
        """The 3 x 3 grid the network saw, with the heat map, under the result."""
        pixmap = qt.QPixmap()
        if png:
            pixmap.loadFromData(qt.QByteArray(png))
        self.ui.gridImageLabel.setPixmap(pixmap)


def resultText(result) -> str:
    """The result as rich text: the class in large letters, then each class's probability
    (with its spread over the test-time augmentations when there is one), under the class
    names of the model's card."""
    parts = []
    for name, probability, spread in zip(result.class_names, result.probabilities, result.spread):
        text = f"{name} {100 * probability:.0f}%"
        if spread > 0:
            text += f" \u00b1 {100 * spread:.0f}"
        parts.append(text)
    return (f'<p style="font-size: 16pt; font-weight: bold;">{result.class_name}</p>'
            f'<p>{" &middot; ".join(parts)}</p>')


#
# IPMNRiskLogic
#


class IPMNRiskLogic(ScriptedLoadableModuleLogic):
    """Assesses IPMN risk; usable from the Python console without the GUI:

        logic = slicer.util.getModuleLogic("IPMNRisk")
        result = logic.assess(getNode("T1"), getNode("T2"), getNode("R"))
        logic.showResult(result, getNode("T2"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return IPMNRiskParameterNode(super().getParameterNode())

    @staticmethod
    def modelRegistry():
        """The known models (`PancreasAILib.weights.ModelRegistry`)."""
        from IPMNRiskLib.registry import model_registry

        return model_registry()

    @staticmethod
    def regionNode(parameterNode):
        """The node that gives the region in the parameter node's region mode (None if unset;
        "automatic" in automatic mode)."""
        if parameterNode.regionMode == REGION_AUTOMATIC:
            return AUTOMATIC_REGION
        return {
            REGION_ROI: parameterNode.roiNode,
            REGION_SEGMENTATION: parameterNode.regionSegmentation,
            REGION_POINT: parameterNode.regionPoint,
        }[parameterNode.regionMode]

    def assess(self, t1Node, t2Node, roiNode, model: Optional[str] = None, device: str = "auto",
               testTimeAugmentation: bool = True, pointBoxSizeMm: float = 60.0,
               progressCallback: Optional[Callable[[float, str], None]] = None, runner=None,
               engine: str = "auto", precision: str = "auto", explanation: str = "rollout"):
        """Assess the IPMN risk from a T1 and a T2 volume node of one study; blocks until done.

        roiNode - the region around the pancreas: a markups ROI, a segmentation (the extent of
          its segments), a markups point list (its first point centres a cube of
          `pointBoxSizeMm` mm), or "automatic": an MR MoNet segments the pancreas on T2 (the
          outcome's region_node and pancreas_node show the box and the segmentation).
        model - registry name or .safetensors path; None for the default model.
        progressCallback(fraction, status) - called as the work advances.
        runner - where the work runs; None: in this process (PancreasAILib.runners).
        engine, precision - "auto" (the fastest allowed), or "openvino"/"pytorch" and "fp32"/"bf16".
        explanation - the heat map's method: "rollout" (the paper's) or "gradient-rollout".

        Returns the `AssessmentOutcome` (risk_class, class_name, class_names, probabilities,
        spread, heat_map_node, table_node, grid_png, model_name, model_sha256, engine, precision,
        warnings, seconds, region_node, pancreas_node); the heat map and the table (and an
        automatic region's box and segmentation) are added to the scene beside T2.
        """
        from IPMNRiskLib.logic import assess

        return assess(t1Node, t2Node, roiNode, model, device, testTimeAugmentation, pointBoxSizeMm,
                      progress=progressCallback, runner=runner, engine=engine, precision=precision,
                      explanation=explanation)

    def startAssessment(self, t1Node, t2Node, roiNode, model: Optional[str] = None, device: str = "auto",
                        testTimeAugmentation: bool = True, pointBoxSizeMm: float = 60.0,
                        onProgress: Optional[Callable[[float, str], None]] = None,
                        onFinished: Optional[Callable] = None, runner=None, engine: str = "auto",
                        precision: str = "auto", explanation: str = "rollout"):
        """Like `assess`, but returns the running task at once (`task.cancel()` stops it); by
        default in a PythonSlicer process, so Slicer stays responsive.

        onFinished(outcome, errorMessage) is called once at the end: with the outcome and "" on
        success; with None and the reason on failure; with None and "" when cancelled. The
        scene changes only on success.
        """
        from IPMNRiskLib.logic import start_assessment
        from PancreasAIApp.slicer_process import slicerBackgroundRunner

        return start_assessment(runner or slicerBackgroundRunner(), t1Node, t2Node, roiNode, model, device,
                                testTimeAugmentation, pointBoxSizeMm, on_progress=onProgress,
                                on_finished=onFinished, engine=engine, precision=precision,
                                explanation=explanation)

    def showResult(self, result, backgroundNode=None, opacity: float = 0.5) -> None:
        """Overlay the heat map on `backgroundNode` (None keeps the current background) in every
        slice view, and centre the views on the assessed region."""
        heatMapNode = result.heat_map_node
        if heatMapNode is None:
            return
        # Voxels outside the assessed region (zero) stay transparent over the MRI.
        displayNode = heatMapNode.GetDisplayNode()
        displayNode.SetAutoThreshold(False)
        displayNode.SetLowerThreshold(1e-3)
        displayNode.SetUpperThreshold(max(1.0, heatMapNode.GetImageData().GetScalarRange()[1]))
        displayNode.SetApplyThreshold(True)
        background = backgroundNode if backgroundNode is not None else "keep-current"
        slicer.util.setSliceViewerLayers(background=background, foreground=heatMapNode, foregroundOpacity=opacity)
        center = heatMapCenter(heatMapNode)
        if center is not None:
            for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
                sliceNode.JumpSliceByCentering(*center)

    @staticmethod
    def setOverlayOpacity(heatMapNode, opacity: float) -> None:
        """Set the opacity of `heatMapNode` in the slice views that show it as foreground."""
        if heatMapNode is None or heatMapNode.GetScene() is None:
            return
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if compositeNode.GetForegroundVolumeID() == heatMapNode.GetID():
                compositeNode.SetForegroundOpacity(opacity)


def heatMapCenter(heatMapNode) -> Optional[tuple[float, float, float]]:
    """RAS centre (mm) of the box of non-zero heat-map voxels: the assessed region."""
    import numpy as np

    from PancreasAILib.scene import world_ijk_to_ras

    voxels = np.argwhere(slicer.util.arrayFromVolume(heatMapNode) > 0)
    if voxels.size == 0:
        return None
    center_kji = (voxels.min(0) + voxels.max(0)) / 2.0
    ras = world_ijk_to_ras(heatMapNode) @ np.append(center_kji[::-1], 1.0)
    return tuple(float(value) for value in ras[:3])


#
# IPMNRiskTest
#


class IPMNRiskTest(ScriptedLoadableModuleTest):
    """Real (small) inference with the bundled demo model on the bundled T1/T2 sample (a
    high-risk phantom), by both runners."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        runSelfTests(self, [self.test_assess_rates_the_high_risk_sample_above_normal,
                            self.test_background_assessment_shows_the_heat_map_over_t2,
                            self.test_automatic_region_boxes_the_sample_pancreas])

    def test_assess_rates_the_high_risk_sample_above_normal(self):
        import numpy as np

        requireDependencies(self)
        t1Node, t2Node, roiNode = self._sampleScene()

        result = IPMNRiskLogic().assess(t1Node, t2Node, roiNode)

        self.assertAlmostEqual(float(np.sum(result.probabilities)), 1.0, places=3)
        self.assertEqual(result.risk_class, int(np.argmax(result.probabilities)))
        self.assertGreater(result.probabilities[2], result.probabilities[0])
        heatMap = slicer.util.arrayFromVolume(result.heat_map_node)
        self.assertEqual(heatMap.shape, slicer.util.arrayFromVolume(t2Node).shape)
        self.assertAlmostEqual(float(heatMap.max()), 1.0, places=3)
        self.assertIsNotNone(result.table_node)

    def test_background_assessment_shows_the_heat_map_over_t2(self):
        requireDependencies(self)
        t1Node, t2Node, roiNode = self._sampleScene()
        logic = IPMNRiskLogic()
        outcomes = []
        task = logic.startAssessment(t1Node, t2Node, roiNode, testTimeAugmentation=False,
                                     onFinished=lambda outcome, message: outcomes.append((outcome, message)))
        task.wait_for_finished(600000)
        self.assertEqual(len(outcomes), 1)
        result, message = outcomes[0]
        self.assertIsNotNone(result, message)

        logic.showResult(result, t2Node, opacity=0.3)

        compositeNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(compositeNode.GetBackgroundVolumeID(), t2Node.GetID())
        self.assertEqual(compositeNode.GetForegroundVolumeID(), result.heat_map_node.GetID())
        self.assertAlmostEqual(compositeNode.GetForegroundOpacity(), 0.3)

    def test_automatic_region_boxes_the_sample_pancreas(self):
        import numpy as np

        requireDependencies(self)
        t1Node, t2Node, roiNode = self._sampleScene()

        result = IPMNRiskLogic().assess(t1Node, t2Node, AUTOMATIC_REGION, testTimeAugmentation=False)

        self.assertIsNotNone(result.pancreas_node)
        found = np.zeros(6)
        result.region_node.GetRASBounds(found)
        drawn = np.zeros(6)
        roiNode.GetRASBounds(drawn)
        # the found box's centre lies inside the drawn one (which has a 4-12 mm margin)
        center = (found[0::2] + found[1::2]) / 2
        self.assertTrue(np.all(center >= drawn[0::2]) and np.all(center <= drawn[1::2]), (found, drawn))

    @staticmethod
    def _sampleScene():
        """The bundled T1/T2 sample (SHA256-checked) and its region."""
        from PancreasAILib.sample_data import MR_REGION_FILE, MR_T1_FILE, MR_T2_FILE, sample_path

        t1Node = slicer.util.loadVolume(str(sample_path(MR_T1_FILE)))
        t2Node = slicer.util.loadVolume(str(sample_path(MR_T2_FILE)))
        roiNode = slicer.util.loadMarkups(str(sample_path(MR_REGION_FILE)))
        return t1Node, t2Node, roiNode
