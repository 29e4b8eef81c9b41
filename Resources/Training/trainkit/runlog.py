"""What a person watches and reads: progress bars, a log file, curves per epoch.

The main process logs INFO to the console (through tqdm, so bars stay intact) and to the log
file; the others log warnings only, prefixed with their rank. Bars show only on a terminal,
so a redirected console (`> train.out`) stays readable.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Console output that does not tear progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never stop training
            self.handleError(record)


@contextlib.contextmanager
def run_logging(log_file: Optional[Path], is_main: bool, rank: int = 0) -> Iterator[None]:
    """Route the root logger to the console (and `log_file`, appended to) for one run;
    the handlers are removed again on exit, so runs in one Python process do not pile up."""
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s" if is_main else f"[rank {rank}] %(message)s"))
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    handlers.append(console)
    if is_main and log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler.setLevel(logging.INFO)
        handlers.append(file_handler)
    previous_level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)


def progress_bar(items: Iterable | None = None, *, total: int | None = None, description: str = "",
                 enabled: bool = True):
    """A tqdm bar on stderr, shown only on a terminal and only when `enabled` (main process)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, file=sys.stderr, leave=False,
                dynamic_ncols=True, disable=None if enabled else True)


class Curves:
    """Per-epoch values as CSV (rewritten whole each epoch, so a resumed run's file is complete)
    and as TensorBoard scalars when the tensorboard package is installed."""

    def __init__(self, csv_path: Path, tensorboard_dir: Optional[Path], enabled: bool = True) -> None:
        self.csv_path = csv_path
        self.enabled = enabled
        self._writer = _tensorboard_writer(tensorboard_dir) if enabled and tensorboard_dir else None

    @property
    def has_tensorboard(self) -> bool:
        return self._writer is not None

    def write(self, history: list[dict], step_key: str = "epoch") -> None:
        """Write all rows of `history` to CSV; send the numbers of its last row to TensorBoard."""
        if not self.enabled or not history:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for row in history for key in row))
        temporary = self.csv_path.with_suffix(".csv.part")
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        temporary.replace(self.csv_path)
        if self._writer is not None:
            last = history[-1]
            for key, value in last.items():
                if key != step_key and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, int(last[step_key]))
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the CSV has the same numbers
        return None
    return SummaryWriter(log_dir=str(folder))
