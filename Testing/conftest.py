"""Shared pytest set-up: the module folders on sys.path (as Slicer puts them), and fixtures
for small phantoms, randomly initialised model files and a real slicer-core scene."""

import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for module_dir in ("PancreasAI", "PancreasSegMoNet", "IPMNRisk", "Resources", "Resources/Training"):
    path = str(ROOT / module_dir)
    if path not in sys.path:
        sys.path.insert(0, path)

SHARED_DATA = ROOT.parent / "shared" / "data"

# One engine cache per test session (OpenVINO conversions, measured batch sizes), shared with
# the processes tests start, and never the user's own.
if "PANCREASAI_ENGINE_CACHE" not in os.environ:
    _ENGINE_CACHE = tempfile.TemporaryDirectory(prefix="pancreasai-engines-")
    os.environ["PANCREASAI_ENGINE_CACHE"] = _ENGINE_CACHE.name


@pytest.fixture(scope="session")
def random_monet_card(tmp_path_factory):
    """A MoNet model file with random (seeded) weights and a complete card."""
    import torch

    from PancreasSegMoNetLib.network import MoNet
    from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING
    from PancreasAILib.weights import save_model

    torch.manual_seed(0)
    model = MoNet()
    _calibrate_batch_norm(model)
    path = tmp_path_factory.mktemp("models") / "monet-random.safetensors"
    return save_model(model.state_dict(), path, {
        "name": "monet-random", "architecture": "MoNet",
        "architecture_params": {"in_channels": 1, "n_classes": 1},
        "preprocessing": DEFAULT_PREPROCESSING, "postprocessing": {"threshold": 0.5},
        "intended_use": "tests only"})


def _calibrate_batch_norm(model) -> None:
    """Give a random MoNet the BatchNorm statistics of real-looking slices, so that its
    output straddles 0.5 (a rich, geometry-sensitive pattern) instead of saturating."""
    import torch

    from PancreasAILib.orientation import axial_reorientation
    from PancreasAILib.volume import Volume
    from PancreasAIPhantoms.ct import make_ct_phantom
    from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING, model_slices

    phantom = make_ct_phantom(seed=999, shape=(6, 96, 96))
    volume = Volume(phantom.hu, phantom.ijk_to_ras)
    slices, _ = model_slices(axial_reorientation(volume).apply_volume(volume), DEFAULT_PREPROCESSING)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = None  # cumulative average over this one pass
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout2d):
                module.p = 0.0
        model(torch.from_numpy(slices[:, None]))
    for bn in batch_norms:
        bn.momentum = 0.01
    model.eval()


@pytest.fixture(scope="session")
def demo_monet_card():
    """The bundled demo weights (trained on phantoms)."""
    from PancreasSegMoNetLib.registry import model_registry

    registry = model_registry()
    if not registry.is_available(registry.default_name):
        pytest.fail("The bundled demo MoNet weights are missing from PancreasSegMoNet/Resources/Models.")
    return registry.resolve(None)


@pytest.fixture(scope="session")
def small_ct_phantom():
    """(16, 128, 128) synthetic CT with a pancreas, LPS storage."""
    from PancreasAIPhantoms.ct import make_ct_phantom

    return make_ct_phantom(seed=1000, shape=(16, 128, 128))


@pytest.fixture
def mrml_scene():
    """A real MRML scene with the volumes and segmentations logics (slicer-core)."""
    import slicer

    from PancreasAILib.scene import create_scene

    scene = create_scene()
    application_logic, volumes_logic, segmentations_logic = scene._pancreasai_logics
    # What the Slicer application provides and some slicer.util helpers use.
    modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: volumes_logic),
        segmentations=types.SimpleNamespace(logic=lambda: segmentations_logic))
    previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene, slicer.modules = scene, modules
    yield scene
    for name, value in previous.items():
        setattr(slicer, name, value)
    scene.Clear(True)


@pytest.fixture
def work_folders(tmp_path, monkeypatch):
    """Temporary folders (the route's work folders) go to a folder of the test's own, to see
    that none is left behind."""
    import tempfile

    temporary = tmp_path / "temporary"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    return temporary


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def save_random_vit(folder: Path, name: str, preprocessing: dict | None = None):
    """A randomly initialised (seed 0) depth-2 IPMN ViT saved in `folder` with a complete card;
    `preprocessing` adds to the card's input format (e.g. the paper's MRI options)."""
    import torch

    from IPMNRiskLib.grids import INPUT_FORMAT
    from IPMNRiskLib.network import CLASS_NAMES, create_vit
    from PancreasAILib.weights import save_model

    params = {"depth": 2, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", params)
    return save_model(model.state_dict(), folder / f"{name}.safetensors", {
        "name": name, "architecture": "vit_tiny_patch16_224", "architecture_params": params,
        "classes": list(CLASS_NAMES), "preprocessing": {**INPUT_FORMAT, **(preprocessing or {})},
        "intended_use": "tests only"})


def sharpened_small_vit():
    """Depth-2 ViT on 2 x 192 x 192 with sharpened (scaled) query/key weights, so attention is
    far from uniform and head fusions differ (seeded: the same weights at every call)."""
    import torch

    from IPMNRiskLib.network import create_vit

    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 48, "num_heads": 3}).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(12.0)
    return model


@pytest.fixture(scope="session")
def random_vit_card(tmp_path_factory):
    """A randomly initialised depth-2 IPMN ViT saved with a complete card."""
    return save_random_vit(tmp_path_factory.mktemp("ipmn_models"), "ipmn-random")


@pytest.fixture(scope="session")
def small_mr_phantom():
    """(16, 112, 112) paired T1/T2 with a high-risk IPMN."""
    from PancreasAIPhantoms.mr import make_mr_phantom

    return make_mr_phantom(seed=5, risk_class=2, shape=(16, 112, 112), spacing=(2.0, 2.0, 4.0))


@pytest.fixture
def mr_nodes(mrml_scene, small_mr_phantom):
    """(T1, T2, ROI) nodes of the small MR phantom in a slicer-core scene, the ROI its pancreas box."""
    from PancreasAILib.scene import add_volume_node
    from PancreasAILib.volume import Volume

    p = small_mr_phantom
    t1 = add_volume_node(mrml_scene, Volume(p.t1, p.ijk_to_ras), "T1")
    t2 = add_volume_node(mrml_scene, Volume(p.t2, p.ijk_to_ras), "T2")
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "pancreas box")
    roi.SetCenter(*p.pancreas_box_ras[0])
    roi.SetSize(*p.pancreas_box_ras[1])
    return t1, t2, roi


def use_model_for_default(monkeypatch, models_module, card) -> None:
    """Make a module's registry resolve every name (and the default) to `card`."""

    class Registry:
        def resolve(self, name=None, **kwargs):
            return card

    monkeypatch.setattr(models_module, "model_registry", lambda *args, **kwargs: Registry())


def key_structure(value):
    """The nested field names of a model card (values and list lengths left out)."""
    if isinstance(value, dict):
        return {key: key_structure(item) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [key_structure(value[0])]
    return None


def run_torchrun(script: Path, *arguments: str, processes: int = 2):
    """`script` under torchrun with `processes` CPU processes of one thread each; its CompletedProcess."""
    import os
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(script), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
