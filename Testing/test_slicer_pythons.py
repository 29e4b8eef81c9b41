"""Both Slicer Pythons: Slicer 5.8.x ships Python 3.9, 5.10 ships 3.12. What the extension installs
on first use must exist for each, on Linux, Windows and macOS, and the code it ships must be
3.9 code (pinning timm 1.0.31 and safetensors 0.8.0, which need 3.10, broke every 5.8 install)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_slicer_extension_static import module_files  # noqa: F401  (the module files over app stand-ins)

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "PancreasAI" / "Resources" / "requirements.txt"
SLICER_PYTHONS = {"5.8": "3.9", "5.10": "3.12"}
PLATFORMS = ("manylinux2014_x86_64", "win_amd64", "macosx_11_0_arm64")
# What the PyTorch extension and Slicer itself provide: never installed by us.
PROVIDED = {"torch", "torchvision", "simpleitk", "numpy"}
SHIPPED_FOLDERS = ("PancreasAI", "PancreasSegMoNet", "IPMNRisk")


def shipped_python_files() -> list[Path]:
    files = [p for folder in SHIPPED_FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 20
    return files


def test_every_shipped_file_is_python_3_9_grammar():
    refused = []
    for path in shipped_python_files():
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
        except SyntaxError as error:
            refused.append(f"{path.relative_to(ROOT)}:{error.lineno}: {error.msg}")
    assert refused == []


def foreign_env() -> dict:
    """This process's environment without what would make another Python read our packages or
    our standard library (PYTHONPATH, PYTHONHOME; a test before may have set them)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def python_3_9() -> str | None:
    """A working Python 3.9 (a pyenv shim on PATH may name one that is not activated)."""
    candidates = [*sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3.9")), shutil.which("python3.9")]
    for candidate in filter(None, candidates):
        try:
            result = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2])"],
                                    env=foreign_env(), capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if result.stdout.strip() == "(3, 9)":
            return str(candidate)
    return None


PYTHON_3_9 = python_3_9()


@pytest.mark.skipif(PYTHON_3_9 is None, reason="no Python 3.9 on this machine")
def test_python_3_9_itself_compiles_every_shipped_file(tmp_path):
    probe = ("import sys\n"
             "for path in sys.argv[1:]:\n"
             "    compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
             "print(sys.version_info[:2])")
    result = subprocess.run([PYTHON_3_9, "-c", probe, *map(str, shipped_python_files())], env=foreign_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "(3, 9)", result.stderr


@pytest.mark.parametrize("python", sorted(SLICER_PYTHONS.values()))
def test_the_module_installs_the_pins_for_its_slicer_python(module_files, python):  # noqa: F811
    lines = module_files["dependencies"].requirementLines(environment={"python_version": python})
    names = [module_files["dependencies"].requirementName(line) for line in lines]
    assert sorted(names) == ["safetensors", "timm"], lines  # one pin each, markers evaluated
    assert all(";" not in line and "==" in line for line in lines)


@pytest.mark.parametrize("python, pin", [("3.9", "openvino==2025.3.0"), ("3.12", "openvino==2026.4.1")])
def test_the_openvino_offered_is_one_that_exists_for_the_slicer_python(module_files, python, pin):  # noqa: F811
    dependencies = module_files["dependencies"]
    lines = dependencies.requirementLines(dependencies.ENGINE_REQUIREMENTS_FILE, environment={"python_version": python})
    assert lines == [pin]


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
        return True
    except OSError:
        return False


def resolve(requirements: list[str], python: str, platform: str | list[str], folder: Path, deps: bool) -> list[dict]:
    """What pip would install for that Python and platform(s) (wheels only; metadata, no install)."""
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)  # this machine's local indexes and caps aside
    platforms = [platform] if isinstance(platform, str) else platform
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary", ":all:",
               "--python-version", python, *(f"--platform={name}" for name in platforms),
               "--target", str(folder), "--quiet",
               "--report", str(folder / "report.json"), *([] if deps else ["--no-deps"]), *requirements]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"Python {python} on {platform}: {result.stderr[-1500:]}"
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))["install"]


@pytest.mark.slow
@pytest.mark.skipif(not pypi_reachable(), reason="pypi.org cannot be reached")
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("slicer_version", sorted(SLICER_PYTHONS))
def test_requirements_resolve_for_each_slicer_python_and_platform(module_files, tmp_path, slicer_version,  # noqa: F811
                                                                  platform):
    from packaging.requirements import Requirement

    python = SLICER_PYTHONS[slicer_version]
    environment = {"python_version": python, "python_full_version": f"{python}.0",
                   "sys_platform": {"manylinux2014_x86_64": "linux", "win_amd64": "win32"}.get(platform, "darwin"),
                   "platform_system": {"manylinux2014_x86_64": "Linux", "win_amd64": "Windows"}.get(platform, "Darwin"),
                   "extra": ""}
    pins = module_files["dependencies"].requirementLines(environment={"python_version": python})
    ours = resolve(pins, python, platform, tmp_path, deps=False)
    assert sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in ours) == sorted(pins)
    engine_file = module_files["dependencies"].ENGINE_REQUIREMENTS_FILE
    engine_pins = module_files["dependencies"].requirementLines(engine_file, environment={"python_version": python})
    (tmp_path / "engine").mkdir()
    # OpenVINO 2026 ships manylinux_2_28 wheels (glibc 2.28: RHEL 8, Ubuntu 20.04 and later); where
    # pip cannot install it, the offer says so and PyTorch runs the networks.
    engine_platform = [platform, "manylinux_2_28_x86_64"] if platform.startswith("manylinux") else platform
    engine = resolve(engine_pins, python, engine_platform, tmp_path / "engine", deps=False)
    assert [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in engine] == engine_pins
    # ... and what they need, but for what Slicer and the PyTorch extension already provide.
    needed = set()
    for item in ours:
        for text in item["metadata"].get("requires_dist", []):
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                if requirement.name.lower() not in PROVIDED:
                    needed.add(str(requirement).split(";")[0])
    assert needed, "timm needs more than torch"
    (tmp_path / "deps").mkdir()
    resolve(sorted(needed), python, platform, tmp_path / "deps", deps=True)
