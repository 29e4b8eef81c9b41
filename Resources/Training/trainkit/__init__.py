"""What every training script here needs, whatever it trains (MoNet, its baselines, the IPMN ViT).

- protocol.py: a protocol as a dataclass of defaults, turned into command-line options and
  recorded in the model card (every default written once);
- run_files.py: where a run's log, curves, checkpoints and data manifest go;
- seeding.py: fixed seeds and random-number-generator states that survive a resume;
- distributed.py: one process, one GPU or several (torchrun / DDP; gloo on CPU, nccl on GPU);
- runlog.py: a readable log file, progress bars, CSV curves (TensorBoard when installed);
- checkpoint.py: resumable checkpoints as .safetensors + JSON, never pickle;
- hashing.py: SHA256 of data files, remembered between runs;
- model_card.py: the software and command line a card records.

Nothing here knows about pancreases: data and models come from the script that uses it.

Importing trainkit checks that the project's packages (PancreasAILib and the module Libs) are
installed in this Python, and says how to install them when they are not: every training
script imports trainkit before them.
"""

import importlib.util
import sys
from pathlib import Path

#: The packages of this repository that `pip install -e .` installs (pyproject.toml).
PROJECT_PACKAGES = ("PancreasAILib", "PancreasSegMoNetLib", "IPMNRiskLib", "PancreasAIPhantoms")


def _require_project_packages() -> None:
    missing = [name for name in PROJECT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in this Python "
            f"({sys.executable}). Run ./pancreasai.sh setup in {Path(__file__).resolve().parents[3]} "
            "(or there: pip install -e .) and start the script with that environment's Python "
            "(.venv/bin/python).", name=missing[0])


_require_project_packages()
