"""The process a `ProcessTask` runs in, behind a small seam (`Process`): Qt's QProcess in the
Slicer application (PancreasAIApp/slicer_process.py), `SubprocessProcess` anywhere else (PythonSlicer scripts, a
web app, the tests), or a scripted stand-in in unit tests. And stopping a whole process tree:
PythonSlicer is a launcher whose child runs the Python code.

Nothing here imports Qt.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from typing import Mapping, Optional, Protocol, Sequence


class ProcessListener(Protocol):
    """What a process reports, always in the thread that drives it (Qt's event loop, or the
    caller of `wait_for_finished` / `poll`)."""

    def on_standard_output(self, data: bytes) -> None: ...

    def on_standard_error(self, data: bytes) -> None: ...

    def on_process_finished(self, exit_code: int, crashed: bool) -> None: ...

    def on_failed_to_start(self, reason: str) -> None: ...


class Process(Protocol):
    def start(self, program: str, arguments: Sequence[str], environment: Mapping[str, str],
              listener: ProcessListener) -> None: ...

    def process_id(self) -> Optional[int]: ...

    def kill(self) -> None: ...

    def wait_for_started(self, timeout_ms: int) -> bool: ...

    def wait_for_finished(self, timeout_ms: int) -> bool: ...


class SubprocessProcess:
    """A `Process` on `subprocess.Popen`. Two threads read stdout and stderr into a queue; the
    listener hears of it only in `poll()` or `wait_for_finished()`, in the caller's thread."""

    def __init__(self) -> None:
        self._popen: Optional[subprocess.Popen] = None
        self._listener: Optional[ProcessListener] = None
        self._events: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._finished = False

    def start(self, program: str, arguments: Sequence[str], environment: Mapping[str, str],
              listener: ProcessListener) -> None:
        self._listener = listener
        try:
            self._popen = subprocess.Popen([program, *arguments], env=dict(environment), stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:
            self._finished = True
            listener.on_failed_to_start(str(error))
            return
        for stream, kind in ((self._popen.stdout, "stdout"), (self._popen.stderr, "stderr")):
            reader = threading.Thread(target=self._read, args=(stream, kind), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, stream, kind: str) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            self._events.put((kind, chunk))
        self._events.put((kind, None))

    def process_id(self) -> Optional[int]:
        return self._popen.pid if self._popen is not None else None

    def kill(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()

    def wait_for_started(self, timeout_ms: int = 30000) -> bool:
        return self._popen is not None

    def poll(self, timeout_seconds: float = 0.0) -> bool:
        """Pass what the process wrote to the listener; True once it has finished (and the
        listener has heard so). Waits up to `timeout_seconds` for the first event."""
        if self._finished or self._popen is None:
            return self._finished
        block = timeout_seconds > 0
        while True:
            try:
                kind, chunk = self._events.get(block=block, timeout=timeout_seconds if block else None)
            except queue.Empty:
                break
            block = False
            if chunk is None:
                continue
            if kind == "stdout":
                self._listener.on_standard_output(chunk)
            else:
                self._listener.on_standard_error(chunk)
        if self._popen.poll() is not None and not any(reader.is_alive() for reader in self._readers) \
                and self._events.empty():
            self._finished = True
            code = self._popen.returncode
            self._listener.on_process_finished(code if code >= 0 else 128 - code, code < 0)
        return self._finished

    def wait_for_finished(self, timeout_ms: int = -1) -> bool:
        import time

        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        while not self.poll(0.05):
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True


def kill_process_tree(process_id: int) -> None:
    """Kill a process and all its descendants. PythonSlicer is a launcher whose child runs the
    Python code: killing the launcher alone would leave the computation running."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(process_id), "/T", "/F"], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW)
        return
    # Collect the tree first: once the launcher dies, its child is re-parented and lost.
    for pid in [*descendant_process_ids(process_id), process_id]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended by itself meanwhile


def descendant_process_ids(process_id: int) -> list[int]:
    """Children, grandchildren... of a process (POSIX), deepest first."""
    children = _children_by_parent()
    found = []

    def visit(pid: int) -> None:
        for child in children.get(pid, []):
            visit(child)
            found.append(child)

    visit(process_id)
    return found


def _children_by_parent() -> dict[int, list[int]]:
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
