"""The frame every training script's main() runs in: its log file, the torchrun session, the
command line logged first, and the exit codes (0 done, 2 refused with a message, 130 interrupted)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from PancreasAILib.errors import PancreasAIError
from PancreasAILib.interrupts import Terminated, interrupts_at_safe_points

from .distributed import Distributed, distributed_session
from .model_card import command_line
from .runlog import run_logging


def run_script(script: str, argv: Optional[Sequence[str]], *, log_file: Path, device: str,
               body: Callable[[Distributed], None], logger: logging.Logger, on_interrupt: str) -> int:
    """Run `body(dist)` in the process group, logging to `log_file` on the main process only.
    A PancreasAIError is logged as one line (no traceback) and gives 2; Ctrl-C logs
    `on_interrupt` (what is kept and how to continue) and gives 130, SIGTERM the same and 143.
    Either lands between PyTorch calls, never inside one (see PancreasAILib.interrupts)."""
    rank = int(os.environ.get("RANK", "0"))
    with run_logging(log_file if rank == 0 else None, rank == 0, rank):
        try:
            with interrupts_at_safe_points(), distributed_session(device) as dist:
                if dist.is_main:
                    logger.info("=== %s", command_line(script, argv))
                body(dist)
                dist.barrier()
        except PancreasAIError as error:
            logger.error("error: %s", error)
            return 2
        except KeyboardInterrupt:
            logger.error("Interrupted. %s", on_interrupt)
            return 130
        except Terminated:
            logger.error("Stopped (SIGTERM). %s", on_interrupt)
            return 143
    return 0
