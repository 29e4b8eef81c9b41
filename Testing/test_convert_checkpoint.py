"""PyTorch pickle checkpoints: refused as --model without being unpickled, and converted into
.safetensors + model card by Resources/Training/convert_checkpoint.py without running their code."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import convert_checkpoint
from IPMNRiskLib import cli as ipmn_cli
from IPMNRiskLib.network import create_vit, load_vit
from IPMNRiskLib.registry import model_registry as ipmn_registry
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
from PancreasAILib.weights import load_into, load_state_dict, read_model_card, verify_weights_file
from PancreasSegMoNetLib import cli as monet_cli
from PancreasSegMoNetLib.network import MoNet
from PancreasSegMoNetLib.registry import build_monet
from PancreasSegMoNetLib.registry import model_registry as monet_registry
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING
from PancreasSegMoNetLib.segmentation import segment_ct

SCRIPT = Path(convert_checkpoint.__file__)


class CreatesFileWhenUnpickled:
    """What an attacker puts in a checkpoint: unpickling it calls open(path, "w")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_in(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def convert(*arguments) -> int:
    return convert_checkpoint.main([str(argument) for argument in arguments])


def run_script(*arguments, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """The converter as a user runs it: its own process, no PYTHONPATH, in `cwd`."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def monet_module(random_monet_card) -> MoNet:
    """A MoNet with random weights and calibrated BatchNorm statistics, in eval mode."""
    model = MoNet(**random_monet_card.architecture_params)
    load_into(model, load_state_dict(random_monet_card, "MoNet"), random_monet_card)
    return model.eval()


@pytest.fixture
def monet_checkpoint(tmp_path, monet_module) -> Path:
    path = tmp_path / "monet.pth"
    torch.save(monet_module.state_dict(), path)
    return path


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    """(a .pth whose unpickling would create a marker file, that marker's path)."""
    marker = tmp_path / "code-ran.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "payload": CreatesFileWhenUnpickled(marker)}, path)
    return path, marker


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory, small_ct_phantom) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    return write_volume(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras), folder / "case_001.nii.gz")


@pytest.fixture(scope="module")
def mr_files(tmp_path_factory, small_mr_phantom) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mr")
    p = small_mr_phantom
    return (write_volume(Volume(p.t1, p.ijk_to_ras), folder / "p1_t1.nii.gz"),
            write_volume(Volume(p.t2, p.ijk_to_ras), folder / "p1_t2.nii.gz"))


@pytest.fixture(params=["pancreas-seg", "ipmn-risk"])
def run_module_cli(request, ct_file, mr_files):
    """One of the two command lines, called as `run(model, output_folder)` -> exit code."""
    if request.param == "pancreas-seg":
        return lambda model, out: monet_cli.main(["segment", str(ct_file), "-o", str(out), "--model", str(model)])
    t1, t2 = mr_files
    return lambda model, out: ipmn_cli.main(["assess", "--t1", str(t1), "--t2", str(t2), "--roi-center=0,0,0",
                                             "--roi-size=60,60,40", "-o", str(out), "--model", str(model)])


# --- given as --model -------------------------------------------------------------------------


def test_pytorch_checkpoint_as_model_is_refused_naming_the_converter_and_the_file(
        run_module_cli, monet_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_module_cli(monet_checkpoint, out) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert "pickle can run any code" in error
    assert (f"python Resources/Training/convert_checkpoint.py {monet_checkpoint} --architecture monet "
            f"--output {tmp_path / 'monet.safetensors'}") in error
    assert "Traceback" not in error
    assert files_in(out) == []


def test_malicious_checkpoint_as_model_is_never_unpickled(run_module_cli, malicious_checkpoint, tmp_path, capsys):
    checkpoint, marker = malicious_checkpoint
    out = tmp_path / "out"
    assert run_module_cli(checkpoint, out) == 2
    assert not marker.exists()
    assert "convert_checkpoint.py" in capsys.readouterr().err
    assert files_in(out) == []


# --- the converter refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_converter_refuses_a_malicious_pickle_in_one_line_without_running_it(malicious_checkpoint, tmp_path, writer):
    checkpoint, marker = malicious_checkpoint
    if writer == "pickle.dump":  # the older plain-pickle format torch.load also reads
        with open(checkpoint, "wb") as stream:
            pickle.dump(CreatesFileWhenUnpickled(marker), stream, protocol=2)
    # torch.load's default before PyTorch 2.6 (weights_only=False): only an explicit weights_only=True is safe
    result = run_script(checkpoint, "--architecture", "monet", "--output", tmp_path / "out" / "evil.safetensors",
                        cwd=tmp_path, env_extra={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert not marker.exists()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: evil.pth holds more than tensors")
    assert "would run code" in result.stderr and "Traceback" not in result.stderr
    assert files_in(tmp_path / "out") == []


def test_state_dict_of_another_architecture_is_refused_naming_the_problem(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit.pth"
    torch.save(create_vit("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 48, "num_heads": 3}).state_dict(),
               checkpoint)
    assert convert(checkpoint, "--architecture", "monet", "--output", tmp_path / "out" / "m.safetensors") == 2
    error = capsys.readouterr().err
    assert "vit.pth does not hold monet weights (missing 180 tensors, e.g. encoder0.entry.conv.weight; " in error
    assert "unexpected, e.g. cls_token" in error
    assert files_in(tmp_path / "out") == []


def test_state_dict_with_wrong_shapes_is_refused_naming_the_tensor(tmp_path, capsys):
    checkpoint = tmp_path / "two-classes.pth"
    torch.save(MoNet(n_classes=2).state_dict(), checkpoint)
    assert convert(checkpoint, "--architecture", "monet", "--output", tmp_path / "out" / "m.safetensors") == 2
    error = capsys.readouterr().err
    assert "does not hold monet weights (wrong shapes, e.g. head.conv.weight (2, 16, 1, 1) vs (1, 16, 1, 1))" in error
    assert files_in(tmp_path / "out") == []


def test_checkpoint_without_a_state_dict_names_what_it_holds(tmp_path, capsys):
    checkpoint = tmp_path / "optimizer-only.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, checkpoint)
    assert convert(checkpoint, "--architecture", "monet", "--output", tmp_path / "m.safetensors") == 2
    error = capsys.readouterr().err
    assert "optimizer-only.pth holds no state_dict" in error and "its top-level keys are epoch, optimizer" in error


def test_existing_model_file_is_kept_unless_overwrite(monet_checkpoint, tmp_path, capsys):
    output = tmp_path / "monet.safetensors"
    output.write_bytes(b"someone's model")
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output) == 2
    assert "already exists; use --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"someone's model"
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output, "--overwrite") == 0
    verify_weights_file(read_model_card(output))


# --- the converter converts ----------------------------------------------------------------------


def test_converted_monet_gives_exactly_the_outputs_of_the_original_module(monet_module, monet_checkpoint, tmp_path):
    output = tmp_path / "models" / "converted.safetensors"
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output) == 0
    card = monet_registry().resolve(output)  # the path a user gives as --model
    loaded = MoNet(**card.architecture_params)
    load_into(loaded, load_state_dict(card, "MoNet"), card)
    slices = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(slices), monet_module(slices))


def test_converted_monet_segments_exactly_as_the_original_weights(random_monet_card, monet_checkpoint, tmp_path,
                                                                   small_ct_phantom):
    output = tmp_path / "converted.safetensors"
    # --protocol ours: the pre- and post-processing of the original card (window, largest component)
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output, "--protocol", "ours") == 0
    card = monet_registry().resolve(output)
    slices = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(build_monet(card)(slices), build_monet(random_monet_card)(slices))
    ct = Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras)
    converted = segment_ct(ct, card, device="cpu").mask.array
    assert converted.any()
    np.testing.assert_array_equal(converted, segment_ct(ct, random_monet_card, device="cpu").mask.array)


def test_card_records_architecture_preprocessing_source_and_unknown_metrics(monet_checkpoint, tmp_path):
    output = tmp_path / "site-monet.safetensors"
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output, "--title", "Site MoNet",
                   "--intended-use", "research on site data") == 0
    card = read_model_card(output)
    assert card.data["sha256"] == sha256(output)
    verify_weights_file(card)
    assert (card.name, card.data["title"], card.intended_use) == ("site-monet", "Site MoNet", "research on site data")
    assert (card.architecture, card.architecture_params) == ("MoNet", {"in_channels": 1, "n_classes": 1})
    # train_monet.py's default protocol, the paper's: the authors' CT intensities, raw masks
    assert card.preprocessing == {**DEFAULT_PREPROCESSING, "window_hu": [-150.0, 200.0],
                                  "intensity_scaling": "volume_min_max"}
    assert card.classes == ["pancreas"]
    assert card.data["postprocessing"] == {"threshold": 0.5, "keep_largest_component": False}
    assert card.data["source"] == {"converted_from": "monet.pth", "sha256": sha256(monet_checkpoint)}
    assert "unknown" in card.data["metrics"]["note"]


def test_ours_protocol_records_our_window_and_clean_up(monet_checkpoint, tmp_path):
    output = tmp_path / "ours.safetensors"
    assert convert(monet_checkpoint, "--architecture", "monet", "--output", output, "--protocol", "ours") == 0
    card = read_model_card(output)
    assert card.preprocessing == {**DEFAULT_PREPROCESSING, "intensity_scaling": "window"}
    assert card.data["postprocessing"]["keep_largest_component"] is True


@pytest.mark.parametrize("protocol, normalisation", [("paper", "volume_min_max"), ("ours", "crop_stack_min_max")])
def test_ipmn_vit_card_records_the_normalisation_of_the_protocol(tmp_path, protocol, normalisation):
    params = {"depth": 1, "embed_dim": 48, "num_heads": 3}
    checkpoint = tmp_path / "ipmn.pt"
    torch.save(create_vit("vit_tiny_patch16_224", params).state_dict(), checkpoint)
    output = tmp_path / "ipmn.safetensors"
    assert convert(checkpoint, "--architecture", "vit_tiny_patch16_224", "--architecture-params",
                   json.dumps(params), "--output", output, "--protocol", protocol) == 0
    assert ipmn_registry().resolve(output).preprocessing["normalisation"] == normalisation


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_nested_checkpoint_with_ddp_prefixes_converts_to_the_same_tensors(monet_module, tmp_path, key):
    nested = tmp_path / "ddp.ckpt"
    torch.save({key: {f"module.{name}": tensor for name, tensor in monet_module.state_dict().items()},
                "epoch": 3}, nested)
    assert convert(nested, "--architecture", "monet", "--output", tmp_path / "ddp.safetensors") == 0
    tensors = load_file(str(tmp_path / "ddp.safetensors"))
    expected = monet_module.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[name], expected[name]) for name in expected)


def test_ipmn_vit_converts_and_loads_in_the_module_with_the_same_logits(tmp_path):
    params = {"depth": 2, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(0)
    original = create_vit("vit_tiny_patch16_224", params).eval()
    checkpoint = tmp_path / "ipmn.pt"
    torch.save({"model_state_dict": original.state_dict(), "step": 3000}, checkpoint)
    output = tmp_path / "ipmn.safetensors"
    assert convert(checkpoint, "--architecture", "vit_tiny_patch16_224", "--architecture-params",
                   json.dumps(params), "--output", output) == 0
    card = ipmn_registry().resolve(output)
    assert card.classes == ["normal", "low-risk IPMN", "high-risk IPMN"]
    assert card.preprocessing["n4_bias_correction"] is False and card.preprocessing["tile_size"] == 64
    grids = torch.rand(2, 2, 192, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(load_vit(card)(grids), original(grids))


def test_converter_runs_from_another_folder_with_relative_paths(monet_module, tmp_path):
    work = tmp_path / "site"
    (work / "checkpoints").mkdir(parents=True)
    torch.save(monet_module.state_dict(), work / "checkpoints" / "best.pth")
    result = run_script("checkpoints/best.pth", "--architecture", "monet", "--output", "models/site.safetensors",
                        cwd=work)
    assert result.returncode == 0, result.stderr
    assert "models/site.safetensors" in result.stdout
    card = read_model_card(work / "models" / "site.json")
    verify_weights_file(card)
    assert card.data["source"]["converted_from"] == "best.pth"
