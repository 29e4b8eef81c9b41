"""A running piece of work, followed the same way wherever it runs.

Our command lines report progress as JSON lines (`{"progress": 0.42, "status": "..."}`,
`{"message": "..."}`, see `PancreasAILib.cli_support.ProgressPrinter`) and problems as
`error: ...` on stderr or `<case>: FAILED: ...` messages. A `Task` turns those into
`on_progress(fraction, status)` and, exactly once at the end, `on_finished(ok, message)`:

- `InProcessTask` runs the command line's work in this process (blocking; for the Python
  console and batch scripts);
- `ProcessTask` runs it as `python -m <package> ...` in a separate process (a `Process`, see
  processes.py), so Slicer stays responsive and Cancel can stop it.

Nothing here imports Qt.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import Callable, Mapping, Optional, Sequence

from .processes import Process, kill_process_tree

ProgressHandler = Callable[[float, str], None]
FinishedHandler = Callable[[bool, str], None]

CANCELLED_MESSAGE = "Cancelled."


def parse_progress_line(line: str) -> Optional[dict]:
    """A JSON object printed by our command lines, or None for any other output."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) else None  # pragma: no mutate (JSON text that starts with { is a dict)


class Task:
    """What every task shares: progress and messages in, one `on_finished(ok, message)` out.

    `message` is the command's last message on success; on failure the reasons it gave
    (`error: ...` lines, `...FAILED: ...` messages), or its last output; "Cancelled." after
    `cancel()` (`cancelled` is then True).
    """

    def __init__(self, package: str, arguments: Sequence[str], on_progress: Optional[ProgressHandler] = None,
                 on_finished: Optional[FinishedHandler] = None) -> None:
        self.package = package
        self.arguments = [str(argument) for argument in arguments]
        self.on_progress = on_progress
        self.on_finished = on_finished
        self.messages: list[str] = []  # the command's messages (summaries, warnings), in order
        self.cancelled = False
        self.error: Optional[BaseException] = None  # what ended the work, where it is known
        self._error_lines: list[str] = []
        self._started = False
        self._done = False

    def start(self) -> None:
        raise NotImplementedError

    def is_running(self) -> bool:
        return self._started and not self._done

    def cancel(self) -> None:
        raise NotImplementedError

    def wait_for_finished(self, timeout_ms: int = -1) -> bool:
        """True once the task has ended (it has then called on_finished)."""
        return self._done

    # --- what the command reports -------------------------------------------------------------

    def _handle_item(self, item: dict) -> None:
        if "progress" in item:
            if self.on_progress and not self.cancelled:
                self._report_progress(float(item["progress"]), str(item.get("status", "")))
        elif "message" in item:
            logging.info("%s: %s", self.package, item["message"])
            self.messages.append(str(item["message"]))

    def _report_progress(self, fraction: float, status: str) -> None:
        """Pass progress on; a callback that raises stops the work: OperationCancelled is how a
        caller cancels between steps, anything else is kept in `error` for the caller."""
        from .errors import OperationCancelled

        try:
            self.on_progress(fraction, status)
        except Exception as error:
            if not isinstance(error, OperationCancelled):
                logging.exception("The progress callback of %s failed; stopping it", self.package)
                self.error = error
            self.cancel()

    def _handle_error_line(self, line: str) -> None:
        if line.strip():
            logging.info("%s: %s", self.package, line)
            self._error_lines.append(line.strip())
            del self._error_lines[:-200]  # enough to explain a failure

    def _finish_with_exit_code(self, exit_code: int) -> None:
        if self.cancelled:
            self._finish(False, CANCELLED_MESSAGE)
        elif exit_code == 0:
            self._finish(True, self.messages[-1] if self.messages else "")
        else:
            self._finish(False, self._failure_message(exit_code))

    def _failure_message(self, exit_code: int) -> str:
        reasons = [line[len("error:"):].strip() for line in self._error_lines if line.startswith("error:")]
        reasons += [message.split("FAILED:", 1)[1].strip() for message in self.messages if "FAILED:" in message]
        if reasons:
            return "\n".join(reasons)
        details = "\n".join(self._error_lines[-15:])
        summary = f"The computation stopped unexpectedly (exit code {exit_code})."
        return summary + ("\n\n" + details if details else "")

    def _finish(self, ok: bool, message: str) -> None:
        if self._done:
            return
        self._done = True
        if self.on_finished:
            self.on_finished(ok, message)


class InProcessTask(Task):
    """Runs `<package>.cli.main(arguments, sink)` in this process; `start()` returns
    when it has ended. `cancel()` from a progress callback stops it at the next step.

    `error` keeps the exception that ended the work (or the last case's failure), so that a
    console caller gets the very exception the work raised."""

    def start(self) -> None:
        from .errors import OperationCancelled, PancreasAIError

        if self._started:
            raise RuntimeError("A task runs only once; create a new one.")
        self._started = True
        cli = importlib.import_module(f"{self.package}.cli")
        try:
            exit_code = cli.main(self.arguments, self)
        except OperationCancelled as error:
            self.cancelled, self.error = True, self.error or error
            exit_code = 130
        except Exception as error:  # kept for the caller, who gets this very exception
            if not isinstance(error, PancreasAIError):
                logging.exception("%s failed", self.package)
            self.error = error
            self._handle_error_line(f"error: {error}")
            exit_code = 2  # pragma: no mutate (any failure code: the reason is the error line)
        self._finish_with_exit_code(exit_code)

    def cancel(self) -> None:
        if self.is_running():
            self.cancelled = True

    # The sink the command line reports to (PancreasAILib.cli_support.ProgressSink).
    def progress(self, fraction: float, status: str) -> None:
        from .errors import OperationCancelled

        self._handle_item({"progress": fraction, "status": status})
        if self.cancelled:  # by `cancel()`, or by the progress callback just now
            raise OperationCancelled("Cancelled.")

    def message(self, text: str) -> None:
        self._handle_item({"message": text})

    def case_failed(self, error: Exception) -> None:
        self.error = error


class ProcessTask(Task):
    """Runs `<python> -m <package> <arguments>` as a `Process`, reading its output as it
    comes; `on_finished` is called from the process's events (Qt's event loop in Slicer,
    `wait_for_finished` or `poll` with a `SubprocessProcess`). `cancel()` stops the whole
    process tree; nothing is imported afterwards."""

    def __init__(self, package: str, arguments: Sequence[str], process: Process, python: str,
                 environment: Mapping[str, str], on_progress: Optional[ProgressHandler] = None,
                 on_finished: Optional[FinishedHandler] = None) -> None:
        super().__init__(package, arguments, on_progress, on_finished)
        self.process = process
        self.python = python
        self.environment = dict(environment)
        self._partial_lines = {"stdout": b"", "stderr": b""}  # output after the last newline

    def command_line(self) -> list[str]:
        return [self.python, "-m", self.package, *self.arguments]

    def start(self) -> None:
        if self._started:
            raise RuntimeError("A task runs only once; create a new one.")
        self._started = True
        program, *arguments = self.command_line()
        logging.info("Starting %s", " ".join([program, *arguments]))
        self.process.start(program, arguments, self.environment, self)

    def process_id(self) -> Optional[int]:
        """The started process's id (with PythonSlicer: the launcher's; its child runs the code)."""
        return self.process.process_id() if self._started else None

    def cancel(self) -> None:
        """Stop the process and everything it started."""
        if not self.is_running():
            return
        self.cancelled = True
        process_id = self.process_id()
        if process_id:
            kill_process_tree(process_id)
        self.process.kill()

    def wait_for_started(self, timeout_ms: int = 30000) -> bool:
        return self._started and self.process.wait_for_started(timeout_ms)

    def wait_for_finished(self, timeout_ms: int = -1) -> bool:
        """Block until the process ends (for scripts and tests; the GUI uses `on_finished`)."""
        if self._started and not self._done:
            self.process.wait_for_finished(timeout_ms)
        return self._done

    # --- ProcessListener ------------------------------------------------------------------------

    def on_standard_output(self, data: bytes) -> None:
        for line in self._complete_lines("stdout", data):
            self._handle_output_line(line)

    def on_standard_error(self, data: bytes) -> None:
        for line in self._complete_lines("stderr", data):
            self._handle_error_line(line)

    def on_process_finished(self, exit_code: int, crashed: bool) -> None:
        for line in self._complete_lines("stdout", b"", final=True):
            self._handle_output_line(line)
        for line in self._complete_lines("stderr", b"", final=True):
            self._handle_error_line(line)
        # A crash (killed by a signal) may report exit code 0: it is never a success.
        self._finish_with_exit_code(exit_code or -1 if crashed else exit_code)

    def on_failed_to_start(self, reason: str) -> None:
        self._finish(False, f"Could not start {self.python}: {reason}")

    def _complete_lines(self, stream: str, data: bytes, final: bool = False) -> list[str]:
        """The lines of `stream` completed by `data` (all of it when `final`): a pipe delivers
        chunks that may end in the middle of a line."""
        text = self._partial_lines[stream] + bytes(data)
        *lines, self._partial_lines[stream] = text.split(b"\n")
        if final:
            lines.append(self._partial_lines[stream])
            self._partial_lines[stream] = b""  # pragma: no mutate (nothing follows the final read)
        return [line.decode("utf-8", errors="replace").rstrip() for line in lines]  # pragma: no mutate (the default)

    def _handle_output_line(self, line: str) -> None:
        item = parse_progress_line(line)
        if item is None:
            if line.strip():
                logging.info("%s: %s", self.package, line.rstrip())
        else:
            self._handle_item(item)
