"""Pieces both command lines share: case names, progress output, outputs written all-or-nothing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Protocol

from .volume_io import VOLUME_SUFFIXES


def case_name(path: Path) -> str:
    """`/data/case_001.nii.gz` -> `case_001`; a DICOM folder -> its folder name."""
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class ProgressSink(Protocol):
    """Where a run in this process reports (`PancreasAIApp.tasks.InProcessTask`)."""

    def progress(self, fraction: float, status: str) -> None: ...

    def message(self, text: str) -> None: ...

    def case_failed(self, error: Exception) -> None:
        """The exception behind the last "FAILED" message, for a caller that wants its type."""


class ProgressPrinter:
    """Progress for a person (a bar on stderr), for a background process's reader (JSON lines
    on stdout), or for a `sink` in this process."""

    def __init__(self, total_cases: int, output_format: str = "bar", sink: Optional[ProgressSink] = None) -> None:
        self.total_cases = total_cases
        self.format = output_format
        self.sink = sink
        self.case_index = 0
        self._bar = None
        if output_format == "bar" and sink is None:
            from tqdm import tqdm

            self._bar = tqdm(total=100 * total_cases, unit="%", file=sys.stderr,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
                             disable=not sys.stderr.isatty() and os.environ.get("PANCREASAI_BAR") != "1")

    def start_case(self, index: int, name: str) -> None:
        self.case_index = index
        if self._bar is not None:
            self._bar.set_description(f"[{index + 1}/{self.total_cases}] {name}")

    def __call__(self, fraction: float, status: str) -> None:
        overall = (self.case_index + fraction) / self.total_cases
        if self.sink is not None:
            self.sink.progress(overall, status)
        elif self.format == "json":
            print(json.dumps({"progress": round(overall, 4), "status": status}), flush=True)
        elif self._bar is not None:
            self._bar.n = int(100 * self.total_cases * overall)
            self._bar.set_postfix_str(status, refresh=True)

    def message(self, text: str) -> None:
        """A line for the person (summary, warning), kept apart from the bar."""
        if self.sink is not None:
            self.sink.message(text)
        elif self.format == "json":
            print(json.dumps({"message": text}), flush=True)
        elif self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def case_failed(self, name: str, error: Exception) -> None:
        """Say that case `name` failed and why; the batch goes on."""
        self.message(f"{name}: FAILED: {error}")
        if self.sink is not None:
            self.sink.case_failed(error)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def print_models(registry) -> None:
    """The `models` command: each known model, whether it is here, and the download cache."""
    for name in registry.names:
        state = "available" if registry.is_available(name) else "downloads on first use"
        print(f"{name}\t{registry.entries[name].title}\t({state})")
    print(f"cache: {registry.cache_dir}")


def add_run_options(command) -> None:
    """The options every command that runs a model shares: model, device, engine, precision,
    overwrite, progress."""
    command.add_argument("--model", help="registry name or .safetensors path (default: first in registry)")
    command.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    command.add_argument("--engine", default="auto", choices=["auto", "openvino", "pytorch"],
                         help="inference engine (auto: OpenVINO on the CPU where installed, else PyTorch)")
    command.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                         help="auto: bf16 where the CPU computes it natively and the model card records "
                              "a passed agreement check, else fp32; fp32: always the exact float32 path")
    command.add_argument("--overwrite", action="store_true", help="replace existing result files")
    command.add_argument("--progress-format", choices=["bar", "json"], default="bar")


def engine_message(choice) -> str:
    """The line a run prints about its engine, with why a faster one was not chosen."""
    return " ".join([f"Engine: {choice.label}.", *choice.notes])


def main_with(parser, run, registry, argv: list[str] | None = None, sink: Optional[ProgressSink] = None) -> int:
    """Parse `argv` and run: the `models` command prints `registry()`, any other goes to
    `run(args, sink)`.

    Without `sink` (the shell) it ends as `run_command` does. With one, the run is in this process
    for a caller that follows it (`PancreasAILib.tasks.InProcessTask`): progress and messages go to
    `sink`, the exit code is returned and a problem the user can act on is raised
    (`PancreasAIError`), not printed.
    """
    import logging

    if sink is not None:
        from .errors import InputError

        try:
            args = parser.parse_args(argv)
        except SystemExit as error:  # argparse has printed why
            raise InputError(f"Invalid arguments for {parser.prog}: {' '.join(argv or [])}") from error
        return run(args, sink)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    if args.command == "models":
        return run_command(lambda: print_models(registry()) or 0)
    return run_command(lambda: run(args, None))


def run_command(command) -> int:
    """Run `command()` (returning an exit code) the way both command lines end, never with a
    traceback: a problem the user can act on prints `error: ...` and exits 2; a cancel or
    Ctrl-C exits 130 and SIGTERM 143, each with one line, after every partial file is removed
    (results finished before are complete and kept)."""
    import signal

    from .errors import OperationCancelled, PancreasAIError
    from .interrupts import SIGNALS, Terminated, interrupts_at_safe_points, on_main_thread

    if on_main_thread():
        # What the block leaves behind is the handler once it ends: ignoring. By then every
        # result is complete or removed, so a late Ctrl-C or SIGTERM (while Python shuts down,
        # say) has nothing left to stop, and must not kill the process without its one line.
        for number in SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    try:
        with interrupts_at_safe_points():
            return command()
    except (OperationCancelled, KeyboardInterrupt):
        _say("Cancelled: nothing partial was left; results finished before are kept.")
        return 130
    except Terminated:
        _say("Stopped (SIGTERM): nothing partial was left; results finished before are kept.")
        return 143
    except PancreasAIError as error:
        _say(f"error: {error}")
        return 2


def _say(line: str) -> None:
    """One line on stderr, on a line of its own even when a progress bar was drawing."""
    try:
        sys.stdout.flush()
        print(("\n" if sys.stderr.isatty() else "") + line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr closed: the exit code still says it
