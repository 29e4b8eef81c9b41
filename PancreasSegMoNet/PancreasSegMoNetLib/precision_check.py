"""May these MoNet weights run in bf16? The agreement check that the model card records.

Each calibration CT is segmented twice, in float32 and in bf16, through the whole pipeline a
user gets; the check passes when every case's bf16 mask has a Dice of at least `min_dice`
(0.99) against the float32 mask (two empty masks agree). The result, with every case, goes
into the card (`engines.record_precision_check`), where `engines.choose_engine` reads it.

bf16 is computed as it will be used: by OpenVINO where the CPU has AVX512_BF16 or AMX. On a
CPU without them, PyTorch's CPU autocast emulates bf16 rounding (slowly) and the record says
`"native": false`: the check then tells how the weights bear bf16 rounding, and the fast bf16
engine still runs only on CPUs that compute it natively.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from PancreasAILib.cli_support import ProgressPrinter, ProgressSink, case_name
from PancreasAILib.cpu import detect_cpu_features
from PancreasAILib.engines import EngineChoice, openvino_available, record_precision_check


def mask_dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (they agree)."""
    first, second = first > 0, second > 0
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(first, second).sum()) / total


def check_engines() -> tuple[EngineChoice, EngineChoice]:
    """(float32 reference, bf16 under test) on this machine's CPU."""
    have_openvino = openvino_available()
    exact = EngineChoice("openvino" if have_openvino else "pytorch", "fp32", "cpu")
    native = have_openvino and detect_cpu_features().native_bf16
    return exact, EngineChoice("openvino" if native else "pytorch", "bf16", "cpu")


def check_precision(inputs: list[Path], model=None, precision: str = "bf16", min_dice: float = 0.99,
                    sink: Optional[ProgressSink] = None, progress_format: str = "bar") -> dict:
    """Run the check on `inputs`, write it into the card of `model`, return the record."""
    from PancreasAILib.errors import InputError
    from PancreasAILib.volume_io import read_volume

    from .registry import model_registry
    from .segmentation import segment_ct

    if precision != "bf16":
        raise InputError(f"Only bf16 can be checked (got {precision}).")
    if not inputs:
        raise InputError("Give at least one calibration CT.")
    if not 0.0 < min_dice <= 1.0:
        raise InputError(f"The minimum Dice must lie between 0 and 1 (got {min_dice}).")
    printer = ProgressPrinter(len(inputs), progress_format, sink)
    card = model_registry().resolve(model, progress=printer)
    exact, reduced = check_engines()
    native = reduced.engine == "openvino"
    printer.message(f"Checking {card.name} in bf16 ({reduced.label}) against float32 ({exact.label}) "
                    f"on {len(inputs)} calibration CT(s).")
    if not native:
        printer.message("This CPU has no native bf16 (AVX512_BF16 or AMX): bf16 is emulated by PyTorch, "
                        "which is slow; the record says native: false.")
    cases = []
    for index, path in enumerate(inputs):
        name = case_name(path)
        printer.start_case(index, name)
        ct = read_volume(path)
        results = [segment_ct(ct, card, choice=choice, progress=printer) for choice in (exact, reduced)]
        if results[1].precision != precision:
            raise InputError(f"{results[1].engine} could not compute {precision} on this CPU, so there is "
                             "nothing to check; nothing was recorded in the card.")
        masks = [result.mask.array for result in results]
        dice = mask_dice(*masks)
        cases.append({"case": name, "dice": round(dice, 6), "fp32_voxels": int(np.count_nonzero(masks[0])),
                      "bf16_voxels": int(np.count_nonzero(masks[1]))})
        printer.message(f"{name}: Dice {dice:.4f} ({cases[-1]['fp32_voxels']} vs {cases[-1]['bf16_voxels']} voxels)")
    printer.close()
    worst = min(case["dice"] for case in cases)
    record = {"passed": bool(worst >= min_dice),
              "criterion": f"mask Dice >= {min_dice} against float32 on every calibration case",
              "engine": reduced.label, "reference": exact.label, "native": native,
              "cpu": detect_cpu_features().describe(), "worst_dice": worst, "cases": cases}
    updated = record_precision_check(card, precision, record)
    verdict = "passed" if record["passed"] else "FAILED"
    printer.message(f"bf16 check {verdict} (worst Dice {worst:.4f}); recorded in {updated.card_path}.")
    return record
