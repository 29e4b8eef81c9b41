"""Background processes in the Slicer application: `QtProcess` (a `PancreasAILib.processes.Process`
on Qt's QProcess, so that a task's output and end arrive through Qt's event loop, in the GUI
thread) and `slicerBackgroundRunner`, which runs tasks with PythonSlicer."""

from __future__ import annotations

import shutil
from typing import Mapping, Optional, Sequence

import qt

from PancreasAILib.processes import ProcessListener
from PancreasAILib.runners import BackgroundRunner


class QtProcess:
    def __init__(self) -> None:
        self._process = None
        self._listener: Optional[ProcessListener] = None

    def start(self, program: str, arguments: Sequence[str], environment: Mapping[str, str],
              listener: ProcessListener) -> None:
        self._listener = listener
        qt_environment = qt.QProcessEnvironment()
        for key, value in environment.items():
            qt_environment.insert(key, value)
        process = qt.QProcess()
        process.setProcessEnvironment(qt_environment)
        process.connect("readyReadStandardOutput()", self._readStandardOutput)
        process.connect("readyReadStandardError()", self._readStandardError)
        process.connect("finished(int,QProcess::ExitStatus)", self._onFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onError)
        self._process = process
        process.start(program, list(arguments))

    def process_id(self) -> Optional[int]:
        return int(self._process.processId()) if self._process is not None else None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def wait_for_started(self, timeout_ms: int = 30000) -> bool:
        return bool(self._process is not None and self._process.waitForStarted(timeout_ms))

    def wait_for_finished(self, timeout_ms: int = -1) -> bool:
        return bool(self._process is not None and self._process.waitForFinished(timeout_ms))

    def _readStandardOutput(self) -> None:
        self._listener.on_standard_output(bytes(self._process.readAllStandardOutput().data()))

    def _readStandardError(self) -> None:
        self._listener.on_standard_error(bytes(self._process.readAllStandardError().data()))

    def _onFinished(self, exit_code, exit_status) -> None:
        self._readStandardOutput()
        self._readStandardError()
        self._listener.on_process_finished(int(exit_code), exit_status != qt.QProcess.NormalExit)

    def _onError(self, error) -> None:
        # Other errors (a crash, a kill) are followed by finished(); a failed start is not.
        if error == qt.QProcess.FailedToStart:
            self._listener.on_failed_to_start(self._process.errorString())


def slicerBackgroundRunner() -> BackgroundRunner:
    """The runner of the Apply buttons: PythonSlicer, started from Slicer's startup environment
    (as slicer.util.launchConsoleProcess does, so the launcher sets up its own paths cleanly),
    followed through Qt's event loop."""
    import slicer

    return BackgroundRunner(pythonSlicerExecutable(), slicer.util.startupEnvironment(), QtProcess)


def pythonSlicerExecutable() -> str:
    """Slicer's Python launcher; it sets up the environment, then runs the real interpreter
    as its child process."""
    path = shutil.which("PythonSlicer")
    if not path:
        raise RuntimeError("PythonSlicer was not found beside Slicer; reinstall Slicer.")
    return path
