"""Progress reporting and cooperative cancellation shared by the logic, the CLI and the GUI."""

from __future__ import annotations

import threading
from typing import Callable

from .errors import OperationCancelled

#: Called with the fraction done (0 to 1) and a short status text.
ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, status: str) -> None:
    """A progress callback that ignores everything."""


class CancelToken:
    """Set from any thread; long loops call `raise_if_cancelled()` between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise OperationCancelled("Cancelled by the user.")
