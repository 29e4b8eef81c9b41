"""PancreasAI: a hidden module that ships the shared `PancreasAILib` package, and the
GUI-layer helpers both visible modules (PancreasSegMoNet, IPMNRisk) use:

- `ensureDependencies`: installs torch (through the PyTorch extension), timm and safetensors
  when a button is first clicked, never at import;
- `BackgroundTask`: runs a model in a separate PythonSlicer process, reports its progress
  and can be cancelled, so Slicer never freezes during inference; `newWorkDir` and
  `startTaskThenImport` give a module's Logic the folder and the import step around it;
- `ModelChooser` and `BackgroundRunPanel`: the model list and the apply / progress / cancel
  widgets, which behave the same in both modules.
"""

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import qt

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

if TYPE_CHECKING:
    from PancreasAILib.weights import ModelRegistry

#: The folder holding this file and the PancreasAILib package (on PYTHONPATH of every task).
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS_FILE = Path(MODULE_DIR) / "Resources" / "requirements.txt"
#: Installed only through the PyTorch extension, which picks the CPU or CUDA build that fits
#: this computer; a plain pip install would fetch a build that may not.
TORCH_PACKAGES = ("torch", "torchvision")
#: Packages Slicer already has and that must never be replaced as a side effect of ours.
PROTECTED_PACKAGES = ("torch", "torchvision", "SimpleITK", "numpy")


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


#
# Dependencies
#


def requirementLines(path: Path = REQUIREMENTS_FILE, environment: Optional[dict] = None) -> list[str]:
    """The requirement lines of `requirements.txt` that apply to this Python (or to the marker
    `environment` given, e.g. {"python_version": "3.9"}), without comments or markers."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer always has pip, which carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            lines.append(line.split(";", 1)[0].strip())
    return lines


def requirementName(line: str) -> str:
    """`timm==1.0.31` -> `timm`. Our requirements import under their distribution name."""
    return re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]


def missingPackages() -> list[str]:
    """Names of the needed packages that are not installed (found without importing them)."""
    needed = [*TORCH_PACKAGES, *(requirementName(line) for line in requirementLines())]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def ensureDependencies(parentWidget=None) -> bool:
    """Make sure torch, torchvision, timm and safetensors can be imported, offering to install
    what is missing. Returns True when everything is available; False when the user declined
    or the installation failed (the user has then been told why)."""
    missing = missingPackages()
    if not missing:
        return True
    if any(name in TORCH_PACKAGES for name in missing) and not _installTorch(parentWidget):
        return False
    pipLines = [line for line in requirementLines() if requirementName(line) in missing]
    if pipLines and not _installWithPip(pipLines, parentWidget):
        return False
    importlib.invalidate_caches()
    stillMissing = missingPackages()
    if stillMissing:
        slicer.util.errorDisplay(
            _("These Python packages are still not available: {packages}. Restart Slicer and try "
              "again.").format(packages=", ".join(stillMissing)),
            windowTitle=_("PancreasAI"), parent=parentWidget)
        return False
    return True


def _installTorch(parentWidget) -> bool:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay(
            _("PancreasAI runs its models with PyTorch, which is installed by the 'PyTorch' "
              "extension. Install the PyTorch extension with the Extensions Manager, restart "
              "Slicer, then click the button again."),
            windowTitle=_("PyTorch extension needed"), parent=parentWidget)
        return False
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True)
    except Exception as error:
        logging.exception("Installing PyTorch failed")
        slicer.util.errorDisplay(
            _("Installing PyTorch failed. Check the internet connection, or install PyTorch from "
              "the PyTorch Utils module, then try again."),
            windowTitle=_("PancreasAI"), parent=parentWidget, detailedText=str(error))
        return False
    return torch is not None


def _installWithPip(lines: list[str], parentWidget) -> bool:
    if not slicer.util.confirmOkCancelDisplay(
            _("PancreasAI needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
              "Install them now? This needs an internet connection and takes a minute or two.")
            .format(packages="\n".join(lines)),
            windowTitle=_("Install Python packages"), parent=parentWidget):
        return False
    constraintsPath = _writeProtectedVersions()
    try:
        slicer.util.pip_install([*lines, "--constraint", constraintsPath])
    except Exception as error:
        logging.exception("Installing %s failed", lines)
        slicer.util.errorDisplay(
            _("Installing {packages} failed. Check the internet connection (or ask IT to allow "
              "access to pypi.org) and try again.").format(packages=", ".join(lines)),
            windowTitle=_("PancreasAI"), parent=parentWidget, detailedText=str(error))
        return False
    finally:
        os.remove(constraintsPath)
    return True


def _writeProtectedVersions() -> str:
    """A pip constraints file pinning the installed torch, SimpleITK, numpy...: pip then
    refuses (instead of silently replacing them) if a package asked for other versions."""
    pins = []
    for name in PROTECTED_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    handle, path = tempfile.mkstemp(prefix="PancreasAI-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(pins) + "\n")
    return path


#
# Parameter node and GUI
#

PARAMETER_NAME_PROPERTY = "SlicerParameterName"  # slicer.parameterNodeWrapper's widget property


def connectParameterNodeGui(parameterNode, ui) -> int:
    """Connect the widgets of `ui` that name a parameter (the SlicerParameterName property) and
    return the tag `parameterNode.disconnectGui` needs. This is what `connectGui(ui)` does, but
    Slicer 5.8's connectGui returns None instead of the tag (fixed in 5.10): disconnectGui(None)
    then left the old connectors in place, and they rewrote the parameters (Device, Region
    mode) each time the user came back to the module. connectParametersToGui returns the tag
    on both."""
    widgets = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY) if hasattr(widget, "property") else None
        if name:
            widgets[str(name)] = widget
    return parameterNode.connectParametersToGui(widgets)


#
# Background processing
#


def pythonSlicerExecutable() -> str:
    """Slicer's Python launcher; it sets up the environment, then runs the real interpreter
    as its child process."""
    path = shutil.which("PythonSlicer")
    if not path:
        raise RuntimeError(_("PythonSlicer was not found beside Slicer; reinstall Slicer."))
    return path


def exportVolume(volumeNode, path: str) -> str:
    """Write a volume node for a background process, in world coordinates (a linear parent
    transform applied), so the process sees what the user sees. Returns `path`."""
    from PancreasAILib.scene import volume_from_node

    volume_from_node(volumeNode)  # says in words what is wrong with an unusable node
    # A fresh properties dict: exportNode stores the file format it picks in its default
    # argument, which another caller may have set to a different format.
    if not slicer.util.exportNode(volumeNode, path, {}, world=True):
        raise RuntimeError(_("Could not write '{name}' to {path} for processing.").format(
            name=volumeNode.GetName(), path=path))
    return path


def parseProgressLine(line: str) -> Optional[dict]:
    """A JSON object printed by our command lines (`{"progress": 0.42, "status": "..."}` or
    `{"message": "..."}`), or None for any other output."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) else None


class BackgroundTask:
    """Runs `PythonSlicer -m <package> <arguments>` in a separate process, so Slicer stays
    responsive, with the module folders on PYTHONPATH.

    The command reports progress as JSON lines on stdout (see `parseProgressLine`), passed on
    as `onProgress(fraction, status)`; at the end `onFinished(ok, message)` is called exactly
    once, in the GUI thread: `message` is the command's last message on success, and on
    failure the reason it printed (`error: ...` on stderr, or `...FAILED: ...` messages).
    `cancel()` stops the whole process tree; `onFinished` then gets (False, "Cancelled.") and
    `cancelled` is True.
    """

    def __init__(self, package: str, arguments: Sequence[str], pythonPaths: Sequence[str] = (),
                 onProgress: Optional[Callable[[float, str], None]] = None,
                 onFinished: Optional[Callable[[bool, str], None]] = None) -> None:
        self.package = package
        self.arguments = [str(argument) for argument in arguments]
        self.pythonPaths = list(dict.fromkeys([MODULE_DIR, *pythonPaths]))
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.messages: list[str] = []
        self.cancelled = False
        self._process = None
        self._partialLines = {"stdout": b"", "stderr": b""}  # output after the last newline
        self._stderrLines: list[str] = []
        self._done = False

    def commandLine(self) -> list[str]:
        return [pythonSlicerExecutable(), "-m", self.package, *self.arguments]

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("A BackgroundTask runs only once; create a new one.")
        program, *arguments = self.commandLine()
        logging.info("Starting %s", " ".join([program, *arguments]))
        process = qt.QProcess()
        process.setProcessEnvironment(self._environment())
        process.connect("readyReadStandardOutput()", self._readStandardOutput)
        process.connect("readyReadStandardError()", self._readStandardError)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
        self._process = process
        process.start(program, arguments)

    def isRunning(self) -> bool:
        return self._process is not None and not self._done

    def processId(self) -> Optional[int]:
        """The launcher's process id (its child runs the Python code), None before start."""
        return int(self._process.processId()) if self._process is not None else None

    def cancel(self) -> None:
        """Stop the process and everything it started; nothing is imported afterwards."""
        if not self.isRunning():
            return
        self.cancelled = True
        processId = self.processId()
        if processId:
            killProcessTree(processId)
        self._process.kill()

    def waitForStarted(self, timeoutMs: int = 30000) -> bool:
        return bool(self._process is not None and self._process.waitForStarted(timeoutMs))

    def waitForFinished(self, timeoutMs: int = -1) -> bool:
        """Block until the process ends (for scripts and tests; the GUI uses `onFinished`)."""
        if self._process is not None and not self._done:
            self._process.waitForFinished(timeoutMs)
        return self._done

    def _environment(self):
        # Start from Slicer's startup environment, as slicer.util.launchConsoleProcess does:
        # the launcher then sets up its own paths cleanly.
        environment = qt.QProcessEnvironment()
        for key, value in slicer.util.startupEnvironment().items():
            environment.insert(key, value)
        existing = environment.value("PYTHONPATH")
        environment.insert("PYTHONPATH", os.pathsep.join(self.pythonPaths + ([existing] if existing else [])))
        environment.insert("PYTHONUNBUFFERED", "1")
        return environment

    def _readStandardOutput(self) -> None:
        for line in self._completeLines("stdout", self._process.readAllStandardOutput()):
            self._handleOutputLine(line)

    def _readStandardError(self) -> None:
        for line in self._completeLines("stderr", self._process.readAllStandardError()):
            self._handleErrorLine(line)

    def _completeLines(self, stream: str, data, final: bool = False) -> list[str]:
        """The lines of `stream` completed by `data` (all of it when `final`): the pipe
        delivers chunks that may end in the middle of a line."""
        text = self._partialLines[stream] + bytes(data.data())
        *lines, self._partialLines[stream] = text.split(b"\n")
        if final:
            lines.append(self._partialLines[stream])
            self._partialLines[stream] = b""
        return [line.decode("utf-8", errors="replace").rstrip() for line in lines]

    def _handleErrorLine(self, line: str) -> None:
        if line.strip():
            logging.info("%s: %s", self.package, line)
            self._stderrLines.append(line.strip())
            del self._stderrLines[:-200]  # enough to explain a failure

    def _handleOutputLine(self, line: str) -> None:
        item = parseProgressLine(line)
        if item is None:
            if line.strip():
                logging.info("%s: %s", self.package, line.rstrip())
        elif "progress" in item:
            if self.onProgress:
                self.onProgress(float(item["progress"]), str(item.get("status", "")))
        elif "message" in item:
            logging.info("%s: %s", self.package, item["message"])
            self.messages.append(str(item["message"]))

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        for line in self._completeLines("stdout", self._process.readAllStandardOutput(), final=True):
            self._handleOutputLine(line)
        for line in self._completeLines("stderr", self._process.readAllStandardError(), final=True):
            self._handleErrorLine(line)
        if self.cancelled:
            self._finish(False, _("Cancelled."))
        elif exitStatus == qt.QProcess.NormalExit and exitCode == 0:
            self._finish(True, self.messages[-1] if self.messages else "")
        else:
            self._finish(False, self._failureMessage(int(exitCode)))

    def _onProcessError(self, error) -> None:
        # Other errors (a crash, a kill) are followed by finished(); a failed start is not.
        if error == qt.QProcess.FailedToStart:
            self._finish(False, _("Could not start {program}: {reason}").format(
                program=self.commandLine()[0], reason=self._process.errorString()))

    def _failureMessage(self, exitCode: int) -> str:
        reasons = [line[len("error:"):].strip() for line in self._stderrLines if line.startswith("error:")]
        reasons += [message.split("FAILED:", 1)[1].strip() for message in self.messages if "FAILED:" in message]
        if reasons:
            return "\n".join(reasons)
        details = "\n".join(self._stderrLines[-15:])
        summary = _("The computation stopped unexpectedly (exit code {code}).").format(code=exitCode)
        return summary + ("\n\n" + details if details else "")

    def _finish(self, ok: bool, message: str) -> None:
        if self._done:
            return
        self._done = True
        if self.onFinished:
            self.onFinished(ok, message)


@contextlib.contextmanager
def newWorkDir(name: str) -> Iterator[str]:
    """A new temporary folder (named after `name`) for the files of a background task; it is
    removed if the block raises. Once the task has started, `startTaskThenImport` removes it."""
    workDir = slicer.util.tempDirectory(name)
    try:
        yield workDir
    except BaseException:
        shutil.rmtree(workDir, ignore_errors=True)
        raise


def startTaskThenImport(package: str, arguments: Sequence[str], pythonPaths: Sequence[str], workDir: str,
                        importResult: Callable[[], tuple],
                        onProgress: Optional[Callable[[float, str], None]] = None,
                        onFinished: Optional[Callable] = None) -> BackgroundTask:
    """Start a `BackgroundTask` that writes its result into `workDir`, and return it at once.

    At the end `onFinished(result, errorMessage)` is called once: on success with what
    `importResult()` returns ((result, "") or (None, reason)); with None and the reason when
    the command failed; with None and "" when cancelled. `workDir` is removed afterwards.
    """
    def finished(ok: bool, message: str) -> None:
        try:
            if task.cancelled:
                outcome = (None, "")
            elif not ok:
                outcome = (None, message)
            else:
                outcome = importResult()
            if onFinished:
                onFinished(*outcome)
        finally:
            shutil.rmtree(workDir, ignore_errors=True)

    task = BackgroundTask(package, arguments, pythonPaths, onProgress=onProgress, onFinished=finished)
    task.start()
    return task


def killProcessTree(processId: int) -> None:
    """Kill a process and all its descendants. PythonSlicer is a launcher whose child runs the
    Python code: killing the launcher alone would leave the computation running."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(processId), "/T", "/F"], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        return
    # Collect the tree first: once the launcher dies, its child is re-parented and lost.
    for pid in [*descendantProcessIds(processId), processId]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended by itself meanwhile


def descendantProcessIds(processId: int) -> list[int]:
    """Children, grandchildren... of a process (POSIX), deepest first."""
    children = _childrenByParent()
    found = []

    def visit(pid: int) -> None:
        for child in children.get(pid, []):
            visit(child)
            found.append(child)

    visit(processId)
    return found


def _childrenByParent() -> dict[int, list[int]]:
    """Parent pid -> child pids for every process: from /proc on Linux, from `ps` elsewhere
    (macOS has no /proc)."""
    pairs = []
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stream:
                    stat = stream.read()
            except OSError:
                continue  # the process ended while we looked
            # The command name (field 2) may contain spaces; the parent pid follows its ')'.
            pairs.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1])))
    else:
        output = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True,
                                text=True, check=True).stdout
        for line in output.splitlines():
            pid, ppid = line.split()
            pairs.append((int(pid), int(ppid)))
    children: dict[int, list[int]] = {}
    for pid, ppid in pairs:
        children.setdefault(ppid, []).append(pid)
    return children


#
# Widgets both modules share
#

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


class BackgroundRunPanel:
    """The apply button, progress bar, status label and cancel button of a module whose work
    runs as a `BackgroundTask`: starts the task, shows its progress, cancels it, and keeps the
    buttons' state and tool tips in step with it.

    missingInput() - what the user still has to choose, "" when the work can start.
    applyToolTip, runningToolTip - the apply button's tool tip when it can start / while running.
    startFailedMessage - shown with the error when the task cannot start.
    failedMessage - shown when the task failed; "{reason}" is replaced by what it said.
    """

    def __init__(self, applyButton, cancelButton, progressBar, statusLabel, missingInput: Callable[[], str],
                 applyToolTip: str, runningToolTip: str, startFailedMessage: str, failedMessage: str) -> None:
        self.applyButton = applyButton
        self.cancelButton = cancelButton
        self.progressBar = progressBar
        self.statusLabel = statusLabel
        self.missingInput = missingInput
        self.applyToolTip = applyToolTip
        self.runningToolTip = runningToolTip
        self.startFailedMessage = startFailedMessage
        self.failedMessage = failedMessage
        self.task: Optional[BackgroundTask] = None  # the running task, if any
        self.preparing = False  # installing packages before the task (pip lets clicks through)
        self._cancelledWhilePreparing = False
        cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.showProgress(0.0, _("Ready."))

    def isRunning(self) -> bool:
        return self.task is not None

    def showProgress(self, fraction: float, status: str) -> None:
        """Show `fraction` (0 to 1) of the work done and what is being done."""
        self.progressBar.value = round(100 * fraction)
        self.statusLabel.text = status

    def updateButtons(self) -> None:
        """Enable cancel while running, apply when nothing runs or installs and no input is
        missing; the apply button's tool tip says why it is disabled."""
        self.cancelButton.enabled = self.isRunning()
        busy = self.isRunning() or self.preparing
        reason = self.runningToolTip if busy else self.missingInput()
        self.applyButton.enabled = not reason
        self.applyButton.toolTip = reason or self.applyToolTip

    def run(self, startTask: Callable[[], BackgroundTask]) -> None:
        """Offer to install missing packages, then follow the task `startTask()` starts. The
        task's onFinished must call `taskFinished`. An error while starting is shown to the
        user, then raised on (as `slicer.util.tryWithErrorDisplay` does).

        pip's progress lets Qt events through: a second click while installing is ignored, and
        a scene closed meanwhile (`cancel()`) means the task is not started at all."""
        if self.isRunning() or self.preparing:
            return
        self.preparing, self._cancelledWhilePreparing = True, False
        self.updateButtons()
        try:
            ready = ensureDependencies(slicer.util.mainWindow())
        finally:
            self.preparing = False
            self.updateButtons()
        if not ready:
            return
        if self._cancelledWhilePreparing:
            self.showProgress(0.0, _("Cancelled; the scene was not changed."))
            return
        with slicer.util.tryWithErrorDisplay(self.startFailedMessage, waitCursor=True):
            task = startTask()
            # A process that cannot start (on Windows) has already ended, and taskFinished
            # has shown why: only a task still running is followed.
            if task.isRunning():
                self.task = task
                self.showProgress(0.0, _("Starting..."))
        self.updateButtons()

    def cancel(self) -> None:
        """Stop the running task, if any, without a word (for closing scenes and modules); while
        packages install, the task will not start."""
        if self.preparing:
            self._cancelledWhilePreparing = True
        if self.task is not None:
            self.task.cancel()

    def onCancelButton(self) -> None:
        if self.task is not None:
            self.showProgress(self.progressBar.value / 100.0, _("Cancelling..."))
            self.task.cancel()

    def taskFinished(self, succeeded: bool, errorMessage: str) -> None:
        """Forget the ended task and show a failure (status and message box) or a cancellation
        (no `errorMessage`); on success the caller shows its result."""
        self.task = None
        self.updateButtons()
        if succeeded:
            return
        if errorMessage:
            self.showProgress(0.0, _("Failed."))
            slicer.util.errorDisplay(self.failedMessage.format(reason=errorMessage))
        else:
            self.showProgress(0.0, _("Cancelled; the scene was not changed."))


def runSelfTests(testCase, tests: Sequence[Callable[[], None]]) -> None:
    """What a module's `runTest` does (Slicer's "Reload and Test" calls it directly, outside a
    test runner): each test after `setUp`. A test that skips itself (unittest.SkipTest: a
    platform it cannot run on, PyTorch not installed) is logged and the others still run; if
    every test skipped, the skip is raised for a test runner (ctest) to report."""
    skipped = []
    for test in tests:
        testCase.setUp()
        try:
            test()
        except unittest.SkipTest as reason:
            logging.warning("Skipped %s: %s", test.__name__, reason)
            skipped.append(f"{test.__name__}: {reason}")
    if skipped and len(skipped) == len(tests):
        raise unittest.SkipTest("; ".join(skipped))


#
# PancreasAITest
#


class PancreasAITest(ScriptedLoadableModuleTest):
    """Checks the background-process machinery both modules rely on."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        runSelfTests(self, [self.test_background_task_reports_success, self.test_background_task_explains_failure,
                            self.test_cancel_stops_the_whole_process_tree])

    def test_background_task_reports_success(self):
        finished = []
        task = BackgroundTask("json.tool", ["--help"], onFinished=lambda ok, message: finished.append(ok))
        task.start()
        self.assertTrue(task.waitForFinished(120000))
        self.assertEqual(finished, [True])

    def test_background_task_explains_failure(self):
        finished = []
        task = BackgroundTask("PancreasAINoSuchPackage", [],
                              onFinished=lambda ok, message: finished.append((ok, message)))
        task.start()
        self.assertTrue(task.waitForFinished(120000))
        self.assertEqual(len(finished), 1)
        ok, message = finished[0]
        self.assertFalse(ok)
        self.assertIn("PancreasAINoSuchPackage", message)

    @unittest.skipIf(os.name == "nt", "process liveness is checked with POSIX signals")
    def test_cancel_stops_the_whole_process_tree(self):
        finished = []
        # A standard-library module that just sleeps: a stand-in for a long inference.
        task = BackgroundTask("timeit", ["-n", "1", "-r", "1", "-s", "import time", "time.sleep(300)"],
                              onFinished=lambda ok, message: finished.append(ok))
        task.start()
        self.assertTrue(task.waitForStarted())
        tree = self._waitFor(lambda: descendantProcessIds(task.processId()))
        self.assertTrue(tree, "the PythonSlicer launcher did not start its Python child")

        task.cancel()
        task.waitForFinished(30000)

        self.assertEqual(finished, [False])
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
