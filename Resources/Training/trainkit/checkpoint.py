"""Resumable checkpoints: tensors in `.safetensors`, everything else in JSON; nothing is pickled.

The checkpoint after epoch N is the pair `epoch-000N.safetensors` + `epoch-000N.json`. The JSON
is written last and records the SHA256 of the tensors file, so a run killed while writing
leaves the previous complete pair (older pairs are removed only after a new one is complete).
Tensor names: `model.<key>`, `optimizer.state.<index>.<name>`, `rng.<...>`; the JSON holds the
optimizer's parameter groups, the scheduler, counters and history.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from PancreasAILib.errors import PancreasAIError
from PancreasAILib.weights import sha256_of_file

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
_FLOAT_KEY = "__float__"  # JSON has no inf/nan: {"__float__": "inf"}


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    tensors: dict
    state: dict
    path: Path


def to_json_value(value: Any) -> Any:
    """Plain JSON (tuples as lists, inf/nan spelled out, numpy scalars as numbers)."""
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy / 0-d torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_KEY: repr(value)}
    if isinstance(value, Path):
        return str(value)
    return value


def from_json_value(value: Any) -> Any:
    """Inverse of `to_json_value` (lists stay lists)."""
    if isinstance(value, dict):
        if set(value) == {_FLOAT_KEY}:
            return float(value[_FLOAT_KEY])
        return {key: from_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    return value


def write_json_atomically(path: Path, document: Any) -> None:
    """`document` as indented JSON through `<name>.part`: readers see the old file or the new one."""
    text = json.dumps(to_json_value(document), indent=1) + "\n"  # pragma: no mutate (indent is layout only)
    temporary = path.with_name(path.name + ".part")  # pragma: no mutate (any name outside epoch-*.json)
    temporary.write_bytes(text.encode())  # json.dumps escapes non-ASCII: the text is plain ASCII
    os.replace(temporary, path)


def save_checkpoint(folder: Path, epoch: int, tensors: Mapping[str, Any], state: dict) -> Path:
    """Write the checkpoint of `epoch` and remove older ones; returns the JSON path."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    tensors_path = folder / f"{stem}.safetensors"
    temporary = folder / f"{stem}.safetensors.part"
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(temporary))
    os.replace(temporary, tensors_path)
    json_path = folder / f"{stem}.json"
    write_json_atomically(json_path, {
        "format": CHECKPOINT_FORMAT, "epoch": epoch, "tensors_file": tensors_path.name,
        "tensors_sha256": sha256_of_file(tensors_path), "state": state})
    for older in folder.glob("epoch-*.json"):
        if older != json_path:
            older.unlink(missing_ok=True)  # pragma: no mutate (just listed; guards only a concurrent remover)
            older.with_suffix(".safetensors").unlink(missing_ok=True)
    return json_path


def load_latest_checkpoint(folder: Path) -> Optional[Checkpoint]:
    """The newest complete checkpoint in `folder`, or None when there is none."""
    from safetensors.torch import load_file

    for json_path in sorted(folder.glob("epoch-*.json"), reverse=True):
        try:
            document = json.loads(json_path.read_bytes())  # json detects the UTF encoding itself
            tensors_path = folder / document["tensors_file"]
            if sha256_of_file(tensors_path) != document["tensors_sha256"]:
                raise ValueError("its tensors file does not match")
            tensors = load_file(str(tensors_path))
        except (OSError, ValueError, KeyError) as error:
            logger.warning("Skipping the damaged checkpoint %s (%s).", json_path, error)
            continue
        if document.get("format") != CHECKPOINT_FORMAT:
            raise PancreasAIError(f"The checkpoint {json_path} has format {document.get('format')}; "
                                  f"this script reads format {CHECKPOINT_FORMAT}. Start a new run.")
        return Checkpoint(int(document["epoch"]), tensors, from_json_value(document["state"]), json_path)
    return None


def load_checkpoint_of_run(folder: Path, fingerprint: dict) -> Optional[Checkpoint]:
    """The latest checkpoint in `folder` (None if there is none), refused with the settings that
    differ when it belongs to a run with another `fingerprint` (its state's "run" record)."""
    from PancreasAILib.errors import InputError

    from .protocol import changed_fields

    checkpoint = load_latest_checkpoint(folder)
    if checkpoint is None:
        return None
    differences = changed_fields(checkpoint.state["run"], fingerprint)
    if differences:
        raise InputError(f"The checkpoint in {folder} belongs to a run with other settings "
                         f"({'; '.join(differences)}). Resume with the original settings, or start a new "
                         "run without --resume.")
    return checkpoint


def optimizer_parts(optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """An optimizer's state as (tensors, JSON): per-parameter tensors by name, the rest as values."""
    import torch

    state_dict = optimizer.state_dict()
    tensors, other = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{index}.{name}"] = value
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def restore_optimizer(optimizer, tensors: Mapping[str, Any], document: dict, prefix: str = "optimizer") -> None:
    """Inverse of `optimizer_parts`; tuples in parameter groups (e.g. betas) come back as tuples."""
    state: dict[int, dict] = {}
    head = f"{prefix}.state."
    for key, value in tensors.items():
        if key.startswith(head):
            index, name = key[len(head):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in document["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for saved, current in zip(document["param_groups"], optimizer.param_groups):
        groups.append({key: tuple(value) if isinstance(current.get(key), tuple) else value
                       for key, value in saved.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
