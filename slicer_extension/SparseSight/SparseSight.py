"""SparseSight: review the interpretable outputs of SparseSight models in Slicer, annotate, retrain.

Slicer's scripted-module template split: SparseSight (module), SparseSightParameterNode (parameterNodeWrapper),
SparseSightWidget (thin: loads Resources/UI/SparseSight.ui and wires it), SparseSightLogic (no Qt; the work is in
SparseSightLib.logic so it also runs on slicer-core), SparseSightTest (runs the logic on sample data).
The module talks to the SparseSight MONAI Label server only; it never imports the sparsesight library.
"""
import logging
import os
import tempfile
from typing import Annotated

import qt
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

from SparseSightLib import scene as S
from SparseSightLib import selftest
from SparseSightLib.logic import SparseSightLogicCore, message

#: attribution methods of the library (explain/attribution.py), sent as the infer option "attribution"
ATTRIBUTION_METHODS = ["integrated_gradients", "guided_ig", "blur_ig", "smoothgrad", "gradient", "xrai"]


#
# SparseSight
#
class SparseSight(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SparseSight")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SparseSight developers"]
        self.parent.helpText = _(
            "Run interpretable sparse-coding models (ML-CSC, SUM, CDL, microstructure) on a SparseSight MONAI Label "
            "server and review every output: segmentation, morphological components, reconstructions, attribution "
            "maps, learned parameters. Edit the segmentation and submit it as a label; retrain the model."
        )
        self.parent.acknowledgementText = _("Built on 3D Slicer and MONAI Label.")


#
# SparseSightParameterNode
#
@parameterNodeWrapper
class SparseSightParameterNode:
    """What the module panel edits; kept in the scene, so it is saved with it. Fields whose choices come from the
    server (model, strategy, attributionClass) are set by the widget; the others are bound in the .ui through the
    SlicerParameterName property."""

    serverUrl: str = "http://127.0.0.1:8000"
    model: str = ""
    strategy: str = "random"
    imageId: str = ""
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    wantSegmentation: bool = True
    wantProbabilities: bool = False
    wantComponents: bool = True
    componentModality: Annotated[str, Choice(["T1ce", "FLAIR", "T1", "T2", "all"])] = "T1ce"
    wantReconstruction: bool = False
    wantParameters: bool = True
    wantAttributions: bool = False
    attributionMethod: Annotated[str, Choice(ATTRIBUTION_METHODS)] = "integrated_gradients"
    attributionClass: str = "enhancing"
    attributionAtCrosshair: bool = False
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    epochs: Annotated[int, WithinRange(1, 1000)] = 2


#
# SparseSightWidget
#
class SparseSightWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._trainTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseSight.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SparseSightLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        # combo boxes whose items come from the server, kept in the parameter node by hand
        self.ui.modelComboBox.connect("currentTextChanged(QString)", lambda t: self._set("model", t))
        self.ui.strategyComboBox.connect("currentTextChanged(QString)", lambda t: self._set("strategy", t))
        self.ui.attributionClassComboBox.connect("currentTextChanged(QString)",
                                                 lambda t: self._set("attributionClass", t))
        self.ui.nextSampleButton.connect("clicked(bool)", self.onNextSample)
        self.ui.uploadButton.connect("clicked(bool)", self.onUpload)
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.outputsTreeView.connect("currentItemChanged(vtkIdType)", self.onOutputSelected)
        self.ui.opacitySlider.connect("valueChanged(double)", self.onOpacity)
        self.ui.submitLabelButton.connect("clicked(bool)", self.onSubmitLabel)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.stopTrainButton.connect("clicked(bool)", self.onStopTrain)

        self._trainTimer = qt.QTimer()
        self._trainTimer.setInterval(2000)
        self._trainTimer.connect("timeout()", self.onTrainTimer)

        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._trainTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with the dynamic property SlicerParameterName follow the parameter node and back
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _set(self, field, value) -> None:
        if self._parameterNode and value:
            setattr(self._parameterNode, field, value)

    # ------------------------------------------------------------------ actions (each reports errors as text)
    def _run(self, what, action):
        try:
            with slicer.util.WaitCursor():
                self.ui.statusLabel.text = what + "..."
                slicer.app.processEvents()
                result = action()
            self.ui.statusLabel.text = what + ": done"
            return result
        except Exception as e:  # shown to the user as the server's reason, logged with the trace
            logging.exception(what)
            self.ui.statusLabel.text = what + ": failed"
            slicer.util.errorDisplay(f"{what} failed: {message(e)}")
            return None

    def onConnect(self) -> None:
        p = self._parameterNode

        def connect():
            info = self.logic.connect(p.serverUrl)
            self._fill(self.ui.modelComboBox, self.logic.models(), p.model)
            self._fill(self.ui.strategyComboBox, self.logic.strategies(), p.strategy)
            model = self.ui.modelComboBox.currentText
            self._fill(self.ui.attributionClassComboBox, self.logic.attribution_targets(model), p.attributionClass)
            return info

        info = self._run(_("Connect"), connect)
        if info:
            self.ui.serverInfoLabel.text = f"{info.get('name', '')} {info.get('version', '')}: " \
                                           f"{len(info.get('models', {}))} model(s)"

    @staticmethod
    def _fill(combo, items, current):
        combo.clear()
        combo.addItems(items)
        if current in items:
            combo.setCurrentText(current)

    def onNextSample(self) -> None:
        p = self._parameterNode
        res = self._run(_("Next sample"), lambda: self.logic.next_sample(p.strategy))
        if not res:
            return
        image_id, channels = res
        if image_id is None:
            slicer.util.infoDisplay(_("The strategy has no image left to annotate."))
            return
        p.imageId = image_id
        p.inputVolume = channels[min(2, len(channels) - 1)]  # T1ce, where the enhancing tumour shows
        slicer.util.setSliceViewerLayers(background=p.inputVolume, fit=True)

    def onUpload(self) -> None:
        p = self._parameterNode
        if not p.inputVolume:
            slicer.util.errorDisplay(_("Select the volume to upload first."))
            return
        channels = self.logic.channelsOf(p.inputVolume)
        image_id = p.imageId or p.inputVolume.GetName().split(" ")[0]
        if self._run(_("Upload image"), lambda: self.logic.upload_image(channels, image_id)) is not None:
            p.imageId = image_id

    def onRun(self) -> None:
        p = self._parameterNode
        outputs = self.logic.output_names(
            segmentation=p.wantSegmentation, probabilities=p.wantProbabilities, components=p.wantComponents,
            reconstruction=p.wantReconstruction, parameters=p.wantParameters,
            component_modalities=[p.componentModality] if p.componentModality != "all" else ())
        options = {}
        if p.wantAttributions:
            # attribution maps are asked for by infer options (explain/served.py), not by output name; at the
            # crosshair: its world point (Shift + mouse move sets it), placed by the server on the model's grid
            point = None
            if p.attributionAtCrosshair:
                crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
                point = list(crosshair.GetCrosshairRAS()) if crosshair is not None else None
            options = self.logic.attribution_options(p.attributionMethod, p.attributionClass, point)
        if not self.logic.is_segmentation(p.model):
            outputs = None  # reconstruction / parameter-map models: every output they have
        progress = slicer.util.createProgressDialog(labelText=_("Loading outputs"), maximum=100)

        def on_progress(i, n, name):
            progress.labelText = name
            progress.value = int(100 * i / max(n, 1))
            slicer.app.processEvents()

        try:
            inference = self._run(_("Run model"), lambda: self.logic.infer(
                p.model, p.imageId, outputs=outputs, progress=on_progress, **options))
        finally:
            progress.close()
        if inference is None:
            return
        self.ui.outputsTreeView.setCurrentItem(inference.folder)
        label = inference.nodes.get("label")
        if label is not None:
            p.segmentation = label
            self.ui.segmentEditorWidget.setSegmentationNode(label)
            if p.inputVolume:
                self.ui.segmentEditorWidget.setSourceVolumeNode(p.inputVolume)
        tables = [n for n in inference.nodes.values() if n.IsA("vtkMRMLTableNode")]
        if tables:
            self.ui.paramsTableView.setMRMLTableNode(tables[0])

    def onOutputSelected(self, item) -> None:
        node = slicer.mrmlScene.GetSubjectHierarchyNode().GetItemDataNode(item)
        if node is None or not node.GetAttribute(S.ATTR + "output"):
            return
        if node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
            slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=self._parameterNode.opacity)
        elif node.IsA("vtkMRMLTableNode"):
            self.ui.paramsTableView.setMRMLTableNode(node)
        elif node.IsA("vtkMRMLVectorVolumeNode"):  # a plot: show it alone in the Red view
            self.logic.showPlot(node)

    def onOpacity(self, value) -> None:
        item = self.ui.outputsTreeView.currentItem()
        node = slicer.mrmlScene.GetSubjectHierarchyNode().GetItemDataNode(item) if item else None
        if node is not None and node.IsA("vtkMRMLSegmentationNode"):
            S.set_visible(node, True, value)
        else:
            slicer.util.setSliceViewerLayers(foregroundOpacity=value)

    def onSubmitLabel(self) -> None:
        p = self._parameterNode
        if not p.segmentation or not p.imageId:
            slicer.util.errorDisplay(_("Run a model (or pick a segmentation) on a datastore image first."))
            return
        self._run(_("Submit label"), lambda: self.logic.submit_label(p.segmentation, p.imageId))

    def onTrain(self) -> None:
        p = self._parameterNode
        if self._run(_("Start training"), lambda: self.logic.train(p.model, epochs=p.epochs)) is not None:
            self.ui.trainProgressBar.value = 0
            self._trainTimer.start()

    def onStopTrain(self) -> None:
        self._run(_("Stop training"), self.logic.stop_training)

    def onTrainTimer(self) -> None:
        try:
            state = self.logic.training()
        except Exception as e:
            self._trainTimer.stop()
            self.ui.trainStatusLabel.text = message(e)
            return
        self.ui.trainProgressBar.value = int(100 * state.fraction)
        last = state.details[-1] if state.details else ""
        self.ui.trainStatusLabel.text = f"{state.state} {state.done}/{state.total or '?'} {last}"[:200]
        if not state.running:
            self._trainTimer.stop()
            if state.state == "DONE":
                self.ui.trainProgressBar.value = 100
                self.onConnect()  # new model version in /info


#
# SparseSightLogic
#
class SparseSightLogic(ScriptedLoadableModuleLogic, SparseSightLogicCore):
    """Everything the module does, without Qt (see SparseSightLib/logic.py for the methods)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SparseSightLogicCore.__init__(self, slicer.mrmlScene)

    def getParameterNode(self):
        return SparseSightParameterNode(super().getParameterNode())

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("SparseSight", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("SparseSight")
            node = slicer.mrmlScene.AddNode(node)
        return node

    @staticmethod
    def channelsOf(volume) -> list:
        """The channel volumes that belong with `volume` (same SparseSight image), in channel order."""
        image = volume.GetAttribute(S.ATTR + "image")
        if not image:
            return [volume]
        nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                 if n.GetAttribute(S.ATTR + "image") == image and n.GetAttribute(S.ATTR + "channel") is not None]
        return sorted(nodes, key=lambda n: int(n.GetAttribute(S.ATTR + "channel")))

    @staticmethod
    def showPlot(node) -> None:
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
        slicer.util.setSliceViewerLayers(background=node, foreground=None, label=None, fit=True)


#
# SparseSightTest
#
class SparseSightTest(ScriptedLoadableModuleTest):
    """Runs the logic on sample data written by Slicer itself (no server needed)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SparseSight_bundle_to_scene()

    def test_SparseSight_bundle_to_scene(self):
        self.delayDisplay("Loading a sample result bundle")
        workdir = tempfile.mkdtemp(prefix="sparsesight-test-")
        result = selftest.run(slicer.mrmlScene, workdir)
        self.assertEqual(len(result["nodes"]), 5)
        self.assertTrue(os.path.isfile(result["mrb"]))
        self.delayDisplay("Test passed")
