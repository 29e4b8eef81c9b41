"""Where a task runs: the one choice between a click's route and a console call's.

A runner makes the `Task` that runs the command line's work for a module's Lib package:

- `InProcessRunner`: in this process, blocking (the default of `logic.segment()`/`assess()`);
- `BackgroundRunner`: `python -m <package>` in a separate process with the module folders on
  PYTHONPATH (the default of the Apply buttons, with PythonSlicer and Qt's event loop:
  `PancreasAIApp.slicer_process.slicerBackgroundRunner`).

Both run the same command line with the same arguments, so both write the same files.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Optional, Protocol, Sequence

from .processes import Process, SubprocessProcess
from .tasks import FinishedHandler, InProcessTask, ProcessTask, ProgressHandler, Task

#: The folder holding PancreasAILib and PancreasAIApp (on PYTHONPATH of every background task).
SHARED_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Runner(Protocol):
    def new_task(self, package: str, arguments: Sequence[str], python_paths: Sequence[str] = (),
                on_progress: Optional[ProgressHandler] = None,
                on_finished: Optional[FinishedHandler] = None) -> Task: ...


class InProcessRunner:
    """Runs the work in this process: the task's `start()` returns when it has finished."""

    def new_task(self, package: str, arguments: Sequence[str], python_paths: Sequence[str] = (),
                on_progress: Optional[ProgressHandler] = None,
                on_finished: Optional[FinishedHandler] = None) -> InProcessTask:
        return InProcessTask(package, arguments, on_progress, on_finished)


class BackgroundRunner:
    """Runs the work as `<python> -m <package> <arguments>` in a new `Process`.

    python - the interpreter (PythonSlicer in the application).
    environment - the process's environment; SHARED_DIR and `python_paths` go before its PYTHONPATH.
    new_process - makes the `Process` (QtProcess in the application, SubprocessProcess elsewhere).
    """

    def __init__(self, python: str = sys.executable, environment: Optional[Mapping[str, str]] = None,
                 new_process: Callable[[], Process] = SubprocessProcess) -> None:
        self.python = python
        self.environment = dict(os.environ if environment is None else environment)
        self.new_process = new_process

    def task_environment(self, python_paths: Sequence[str]) -> dict[str, str]:
        environment = dict(self.environment)
        paths = list(dict.fromkeys([SHARED_DIR, *python_paths]))
        existing = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = os.pathsep.join(paths + ([existing] if existing else []))
        environment["PYTHONUNBUFFERED"] = "1"
        return environment

    def new_task(self, package: str, arguments: Sequence[str], python_paths: Sequence[str] = (),
                on_progress: Optional[ProgressHandler] = None,
                on_finished: Optional[FinishedHandler] = None) -> ProcessTask:
        return ProcessTask(package, arguments, self.new_process(), self.python, self.task_environment(python_paths),
                           on_progress, on_finished)
