"""The one route from the scene to a result, for both modules and every caller: the inputs are
written into a new work folder, the command line's work runs there (a runner decides where: in
this process, or in a separate one so that Slicer stays responsive), its files are read back
into the scene, and the folder is removed.

A runner is anything with `new_task(package, arguments, python_paths, on_progress, on_finished)`
returning a task to `start()` (`runners.py`: InProcessRunner, BackgroundRunner). Nothing here
imports Qt or MRML.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .errors import OperationCancelled, PancreasAIError
from .progress import CancelToken, ProgressCallback


class TaskFailed(PancreasAIError):
    """The work ended without a result; the message is what it said."""


@contextlib.contextmanager
def new_work_folder(name: str) -> Iterator[Path]:
    """A new temporary folder for one run's files; removed if the block raises (once the task
    has started, `start_then_import` removes it)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def start_then_import(runner, package: str, arguments: Sequence[str], python_paths: Sequence[str],
                      work_folder: Path, import_result: Callable[[], object],
                      on_progress: Optional[ProgressCallback] = None,
                      on_finished: Optional[Callable] = None):
    """Start the work and return its task. At the end `on_finished(result, error_message)` is
    called once: (what `import_result()` returns, "") on success; (None, reason) when the work
    or the import failed; (None, "") when cancelled. `work_folder` is removed afterwards."""
    def finished(ok: bool, message: str) -> None:
        try:
            if task.cancelled:
                outcome = (None, "")
            elif not ok:
                outcome = (None, message)
            else:
                try:
                    outcome = (import_result(), "")
                except Exception as error:  # the caller is told in any case
                    if not isinstance(error, PancreasAIError):
                        logging.exception("Reading the result of %s into the scene failed", package)
                    task.error, outcome = error, (None, str(error) or type(error).__name__)
            if on_finished:
                on_finished(*outcome)
        finally:
            shutil.rmtree(work_folder, ignore_errors=True)

    task = runner.new_task(package, list(arguments), python_paths, on_progress=on_progress, on_finished=finished)
    task.start()  # an in-process task has finished when this returns
    return task


def run_to_end(start: Callable[[Callable], object]):
    """Run `start(on_finished)` (a module's start function with its runner) to its end and
    return the result. Raise `OperationCancelled`; the exception the work raised when it ran in
    this process (an `InputError`...); or `TaskFailed` with the reason it gave."""
    outcomes: list = []
    task = start(lambda result, message: outcomes.append((result, message)))
    task.wait_for_finished(-1)
    if not outcomes:
        raise TaskFailed("The work ended without reporting a result.")
    result, message = outcomes[0]
    if result is not None:
        return result
    error = getattr(task, "error", None)
    if error is not None and not isinstance(error, (OperationCancelled, PancreasAIError)):
        raise error  # a fault of the code (or of a progress callback): its own exception
    if task.cancelled:
        raise OperationCancelled("Cancelled; the scene was not changed.") from error
    if isinstance(error, PancreasAIError) and str(error) == message:
        raise error
    raise TaskFailed(message) from error


def cancellable(progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> ProgressCallback:
    """A progress callback that first stops the work (OperationCancelled) once `cancel` is set:
    how a blocking call in this process is cancelled between steps."""
    def report(fraction: float, status: str) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if progress is not None:
            progress(fraction, status)

    return report
