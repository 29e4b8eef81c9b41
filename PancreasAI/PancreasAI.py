"""PancreasAI: a hidden module that ships what PancreasSegMoNet and IPMNRisk share: the Qt-free
core `PancreasAILib` (volumes, geometry, files, model weights, scenes, the route from the scene to
a result and the runners of the work) and `PancreasAIApp`, the application's side of it
(dependency installation, background processes, shared widgets, self-test helpers).
"""

import os
import time
import unittest

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

#
# PancreasAI
#


class PancreasAI(ScriptedLoadableModule):
    """Hidden: it carries shared code; the user works with the modules that depend on it."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PancreasAI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PancreasAI team"]
        self.parent.helpText = _(
            "Shared code of the PancreasAI extension (volume handling, model files, dependency "
            "installation, background processing). Use the 'Pancreas Segmentation (MoNet)' and "
            "'IPMN Risk' modules.")
        self.parent.acknowledgementText = _("Developed by the PancreasAI team.")
        self.parent.hidden = True
        # The sample volumes of both modules, in the Sample Data module, once it has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from PancreasAILib.sample_data import register_sample_data

    register_sample_data()


#
# PancreasAITest
#


class PancreasAITest(ScriptedLoadableModuleTest):
    """Checks the background-process machinery both modules rely on, with PythonSlicer."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from PancreasAIApp.self_tests import runSelfTests

        runSelfTests(self, [self.test_background_task_reports_success, self.test_background_task_explains_failure,
                            self.test_cancel_stops_the_whole_process_tree])

    @staticmethod
    def _task(package, arguments, finished):
        from PancreasAIApp.slicer_process import slicerBackgroundRunner

        task = slicerBackgroundRunner().new_task(package, arguments, on_finished=lambda *outcome: finished.append(outcome))
        task.start()
        return task

    def test_background_task_reports_success(self):
        finished = []
        task = self._task("json.tool", ["--help"], finished)
        self.assertTrue(task.wait_for_finished(120000))
        self.assertEqual([ok for ok, message in finished], [True])

    def test_background_task_explains_failure(self):
        finished = []
        task = self._task("PancreasAINoSuchPackage", [], finished)
        self.assertTrue(task.wait_for_finished(120000))
        self.assertEqual(len(finished), 1)
        ok, message = finished[0]
        self.assertFalse(ok)
        self.assertIn("PancreasAINoSuchPackage", message)

    @unittest.skipIf(os.name == "nt", "process liveness is checked with POSIX signals")
    def test_cancel_stops_the_whole_process_tree(self):
        from PancreasAILib.processes import descendant_process_ids

        finished = []
        # A standard-library module that just sleeps: a stand-in for a long inference.
        task = self._task("timeit", ["-n", "1", "-r", "1", "-s", "import time", "time.sleep(300)"], finished)
        self.assertTrue(task.wait_for_started())
        tree = self._waitFor(lambda: descendant_process_ids(task.process_id()))
        self.assertTrue(tree, "the PythonSlicer launcher did not start its Python child")

        task.cancel()
        task.wait_for_finished(30000)

        self.assertEqual([ok for ok, message in finished], [False])
        self.assertTrue(task.cancelled)
        for pid in tree:
            self.assertTrue(self._waitFor(lambda: not _processExists(pid)), f"process {pid} survived the cancel")

    @staticmethod
    def _waitFor(condition, seconds: float = 60.0):
        """The condition's value once it is true, or its last (false) value after `seconds`."""
        deadline = time.monotonic() + seconds
        value = condition()
        while not value and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
            value = condition()
        return value


def _processExists(pid: int) -> bool:
    # A killed process may linger a moment as a zombie until it is reaped.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
