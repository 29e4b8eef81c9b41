"""Ctrl-C and SIGTERM that end a command cleanly, whenever they come.

Python raises KeyboardInterrupt at whatever line runs when the signal arrives. Two places
make that unsafe, and both were hit by Ctrl-C while `import torch` ran:

- Python code that C++ called back (PyTorch's pybind11): the exception cannot cross the
  C++ frame, and the process aborts ("terminate called after throwing ... KeyboardInterrupt").
- Code run by `exec` of a string (every `@dataclass` does this): CPython then remembers an
  "unhandled" KeyboardInterrupt even after we catch it, and kills itself with SIGINT on exit
  instead of returning our exit code.

So, inside `interrupts_at_safe_points()`, a signal is noted and turned into an exception
only where the running Python stack is neither importing, nor exec'd code, nor inside PyTorch
(or another library that C++ calls back into); until then it is tried again every 20 ms. A
PyTorch call in progress finishes first (a batch, a fraction of a second).
`signals_deferred()` holds the signal for a whole block (giving a result its final names).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from types import FrameType
from typing import Iterator, Optional

RETRY_S = 0.02
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Packages whose Python code native code calls back into: an exception must not start there.
CALLED_BACK_PACKAGES = frozenset({"torch", "torchvision", "openvino", "onnxruntime", "numba"})


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so no handler swallows it)."""


class _State:
    installed = False
    # The frames under the `with` statement, by id (held, so that no id is reused): an
    # exception raised above them is caught by the block before it reaches them.
    outer: dict[int, FrameType] = {}
    held = 0  # depth of signals_deferred()
    pending: Optional[int] = None  # the first signal not raised yet


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    if _State.pending is None:
        _State.pending = signum
    _deliver_if_safe(frame)


def _on_retry(signum: int, frame: Optional[FrameType]) -> None:
    _deliver_if_safe(frame)


def _deliver_if_safe(frame: Optional[FrameType]) -> None:
    if _State.pending is None or _State.held:
        return  # the end of signals_deferred() delivers it
    if fragile(frame, _State.outer):
        signal.setitimer(signal.ITIMER_REAL, RETRY_S)
        return
    _raise_pending()


def _raise_pending() -> None:
    signum, _State.pending = _State.pending, None
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def fragile(frame: Optional[FrameType], outer=()) -> bool:
    """Whether an exception raised at `frame` would pass, before it reaches a frame whose id
    is in `outer`, through a module being imported, exec'd source, or a package that native
    code calls back into."""
    while frame is not None and id(frame) not in outer:
        code = frame.f_code.co_filename
        if code.startswith("<frozen importlib") or code == "<string>":
            return True
        package = str(frame.f_globals.get("__name__")).partition(".")[0]
        if package in CALLED_BACK_PACKAGES:
            return True
        frame = frame.f_back
    return False


def _stack(frame: Optional[FrameType]) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class interrupts_at_safe_points:  # noqa: N801 (used like a function: `with interrupts_at_safe_points():`)
    """SIGINT raises KeyboardInterrupt and SIGTERM raises `Terminated`, at the first safe point
    of the block (see the module's text). Re-entrant; elsewhere than the main thread it does
    nothing."""

    def __enter__(self) -> None:
        self.installs = on_main_thread() and not _State.installed
        if not self.installs:
            return
        self.previous = {number: signal.signal(number, _on_signal) for number in SIGNALS}
        self.previous_retry = signal.signal(signal.SIGALRM, _on_retry)
        _State.installed, _State.pending = True, None
        _State.outer = {id(frame): frame for frame in _stack(sys._getframe())}

    def __exit__(self, kind, error, trace) -> None:
        if not self.installs:
            return
        pending, _State.pending = _State.pending, None
        _State.installed, _State.outer = False, {}
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous_retry)
        for number, handler in self.previous.items():
            # None: a handler not set from Python (an embedding application's); pragma: no mutate
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # pragma: no mutate
        if pending is not None:  # it came during the block's last fragile step, or as it failed
            raise KeyboardInterrupt() if pending == signal.SIGINT else Terminated()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done (even if it fails); they are raised
    after it. Python handlers, not a signal mask: torch's and tqdm's threads would take a
    masked signal and Python would still interrupt the main thread."""
    if not on_main_thread():
        yield
        return
    with interrupts_at_safe_points():
        _State.held += 1
        try:
            yield
        finally:
            _State.held -= 1
            if not _State.held and _State.pending is not None:
                _raise_pending()
