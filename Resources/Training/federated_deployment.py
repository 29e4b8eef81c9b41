"""The Flower app folder that `flwr run` deploys to a SuperLink and its SuperNodes: a
pyproject.toml naming federated.py's apps, with the run's settings as the app's run config,
and a small module that finds Resources/Training.

Every machine (the SuperLink's and each hospital's SuperNode) runs the apps from its own
checkout of this repository and its own Python environment: the app folder carries no code
of ours, so that what runs at a site is what the site installed. PANCREASAI_TRAINING names
the checkout's Resources/Training where it differs from the folder the app was written from.
"""

from __future__ import annotations

from pathlib import Path

from federated_server import FederatedSettings

APP_MODULE = "pancreasai_federated"

_MODULE_TEXT = '''"""Flower's entry points for PancreasAI federated training (written by federated.py app)."""

import os
import sys

sys.path.insert(0, os.environ.get("PANCREASAI_TRAINING", {training!r}))

import federated  # noqa: E402

server_app = federated.server_app
client_app = federated.client_app
'''


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_flower_app(folder: Path, settings: FederatedSettings) -> Path:
    """Write pyproject.toml and the entry-point module into `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{key} = {_toml_value(value)}" for key, value in settings.to_config().items())
    (folder / "pyproject.toml").write_text(f"""[project]
name = "pancreasai-federated"
version = "1.0.0"
description = "PancreasAI federated training ({settings.model}); the code is each machine's own checkout"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "pancreasai"

[tool.flwr.app.components]
serverapp = "{APP_MODULE}:server_app"
clientapp = "{APP_MODULE}:client_app"

[tool.flwr.app.config]
{config}
""", encoding="utf-8")
    training = str(Path(__file__).resolve().parent)
    (folder / f"{APP_MODULE}.py").write_text(_MODULE_TEXT.format(training=training), encoding="utf-8")
    return folder
