"""Where a training run writes: the model beside its card, everything else in one folder.

    out/monet.safetensors + out/monet.json     the model and its card (what the module loads)
    out/monet.run/train.log                   the log a person reads
    out/monet.run/curves.csv                  one row per epoch
    out/monet.run/tensorboard/                only when the tensorboard package is installed
    out/monet.run/checkpoints/                the last epoch's checkpoint (for --resume)
    out/monet.run/data.json                   the cases, their split and the data's SHA256
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFiles:
    weights: Path

    @classmethod
    def for_output(cls, output: str | Path) -> "RunFiles":
        """`out/monet` or `out/monet.safetensors` -> the files of that run."""
        return cls(Path(output).with_suffix(".safetensors"))

    @property
    def card(self) -> Path:
        return self.weights.with_suffix(".json")

    @property
    def folder(self) -> Path:
        return self.weights.with_suffix(".run")

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    @property
    def curves(self) -> Path:
        return self.folder / "curves.csv"

    @property
    def tensorboard(self) -> Path:
        return self.folder / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def data_manifest(self) -> Path:
        return self.folder / "data.json"
