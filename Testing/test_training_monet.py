"""train_monet.py end to end on tiny synthetic data: the card it writes is one the module loads
and runs, MSD folders and bad data are handled, a resumed run is the uninterrupted run, and
torchrun with two CPU processes writes a card with the same fields."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import key_structure, run_torchrun

import monet_augmentation
import monet_data
import monet_losses
import monet_protocol
import monet_training
import monet_validation
import train_monet
from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
from PancreasAILib.weights import read_model_card
from PancreasAIPhantoms.ct import make_ct_phantom
from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING
from trainkit.protocol import protocol_from_arguments
from segmentation_data import FileCase, folder_cases, msd_cases, slices_on_model_grid

SCRIPT = Path(train_monet.__file__)
# 3 phantoms of 12 slices of 64 x 64, slices of 64 x 64 for the network, 2 steps of 2 slices.
TINY = ["--phantoms", "3", "--phantom-shape", "12", "64", "64", "--input-size", "64",
        "--batch-size", "2", "--steps-per-epoch", "2", "--device", "cpu"]
TINY_FILES = ["--input-size", "64", "--batch-size", "2", "--steps-per-epoch", "1", "--epochs", "1",
              "--device", "cpu"]


def run_training(*arguments) -> int:
    return train_monet.main([str(a) for a in arguments])


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """An uninterrupted run of two epochs; returns its output path (without suffix)."""
    output = tmp_path_factory.mktemp("uninterrupted") / "monet"
    assert run_training(*TINY, "--epochs", "2", "--output", output) == 0
    return output


def card_of(output: Path) -> dict:
    return json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))


def checkpoint_tensors(output: Path, epoch: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output.with_suffix(".run") / "checkpoints" / f"epoch-{epoch:04d}.safetensors"))


def log_of(output: Path) -> str:
    return (output.with_suffix(".run") / "train.log").read_text(encoding="utf-8")


# --- the model card -------------------------------------------------------------------------------

def test_card_is_loaded_and_run_by_the_segmentation_module(two_epoch_run):
    from PancreasSegMoNetLib.registry import build_monet
    from PancreasSegMoNetLib.segmentation import segment_ct

    card = read_model_card(two_epoch_run.with_suffix(".safetensors"))
    assert build_monet(card, "cpu") is not None
    phantom = make_ct_phantom(50, shape=(12, 64, 64))
    result = segment_ct(Volume(phantom.hu, phantom.ijk_to_ras), card, device="cpu")
    assert result.mask.shape == phantom.hu.shape


def test_card_records_protocol_data_hash_and_metrics(two_epoch_run):
    card = card_of(two_epoch_run)
    training = card["training"]
    assert training["protocol"]["learning_rate"] == 5e-4
    assert training["protocol"]["optimizer"] == "NAdam"
    assert training["protocol"]["rotation_degrees"] == 10.0
    assert len(training["data_sha256"]) == 64
    assert training["cases"] == {"training": 1, "validation": 1, "test": 1}
    assert training["split"]["test_fraction"] == 0.3
    assert "val_slice_dice" in card["metrics"]["validation"]
    assert card["metrics"]["validation_patients"]["cases"] == 1
    assert card["metrics"]["test_patients"]["cases"] == 1
    assert [row["epoch"] for row in card["history"]] == [1, 2]
    assert "--phantoms 3" in training["command"]
    assert card["preprocessing"]["input_size"] == 64


def test_run_writes_a_readable_log_curves_and_a_checkpoint(two_epoch_run):
    assert "epoch 2: train loss" in log_of(two_epoch_run)
    curves = (two_epoch_run.with_suffix(".run") / "curves.csv").read_text(encoding="utf-8").splitlines()
    assert curves[0].startswith("epoch,train_loss,val_loss")
    assert len(curves) == 3
    assert (two_epoch_run.with_suffix(".run") / "checkpoints" / "epoch-0002.json").exists()


def test_data_manifest_keeps_the_split_out_of_the_card(two_epoch_run):
    manifest = json.loads((two_epoch_run.with_suffix(".run") / "data.json").read_text(encoding="utf-8"))
    splits = [case["split"] for case in manifest["cases"]]
    assert sorted(splits) == ["test", "training", "validation"]
    assert "phantom-0000" not in two_epoch_run.with_suffix(".json").read_text(encoding="utf-8")


# --- resume ---------------------------------------------------------------------------------------

def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(two_epoch_run, tmp_path):
    output = tmp_path / "monet"
    assert run_training(*TINY, "--epochs", "1", "--output", output) == 0
    assert run_training(*TINY, "--epochs", "2", "--output", output, "--resume") == 0
    assert "Resuming after epoch 1" in log_of(output)
    resumed, uninterrupted = checkpoint_tensors(output, 2), checkpoint_tensors(two_epoch_run, 2)
    assert resumed.keys() == uninterrupted.keys()
    different = [key for key in resumed if not torch.equal(resumed[key], uninterrupted[key])]
    assert different == []
    assert [row["epoch"] for row in card_of(output)["history"]] == [1, 2]


def test_resume_refuses_a_checkpoint_made_with_other_settings(two_epoch_run):
    assert run_training(*TINY, "--epochs", "3", "--lr", "0.001", "--output", two_epoch_run, "--resume") == 2
    assert "learning_rate: 0.0005 -> 0.001" in log_of(two_epoch_run)


def test_training_can_start_from_an_earlier_model(two_epoch_run, tmp_path):
    """--initial-weights: the first step starts from the given model, and the card says so."""
    from safetensors.torch import load_file

    start = card_of(two_epoch_run)
    output = tmp_path / "continued"
    assert run_training(*TINY, "--epochs", "1", "--lr", "1e-12", "--output", output,
                        "--initial-weights", two_epoch_run.with_suffix(".safetensors")) == 0
    assert card_of(output)["training"]["initial_weights"] == {"name": start["name"], "sha256": start["sha256"]}
    before = load_file(str(two_epoch_run.with_suffix(".safetensors")))
    after = load_file(str(output.with_suffix(".safetensors")))
    # with a vanishing learning rate only BatchNorm statistics can move
    conv = next(key for key in before if key.endswith("conv.weight"))
    assert np.allclose(before[conv].numpy(), after[conv].numpy(), atol=1e-6)


def test_bf16_mixed_precision_trains_close_to_fp32_and_is_recorded(tmp_path):
    """--precision bf16: the same run with convolutions in bfloat16 moves the weights as fp32
    does, not identically (so bfloat16 was really used), and the card says which it was."""
    from safetensors.torch import load_file

    runs = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / precision
        assert run_training(*TINY, "--epochs", "1", "--precision", precision, "--output", output) == 0
        assert card_of(output)["training"]["protocol"]["precision"] == precision
        runs[precision] = load_file(str(output.with_suffix(".safetensors")))
    conv = [key for key in runs["fp32"] if key.endswith("conv.weight")]
    moved = [float((runs["bf16"][key] - runs["fp32"][key]).norm() / runs["fp32"][key].norm()) for key in conv]
    assert max(moved) > 0
    assert np.median(moved) < 0.05


@pytest.mark.parametrize("recalibration", [0, 8])
def test_crop_runs_save_the_batch_norm_statistics_they_validated_with(tmp_path, recalibration):
    """--crop with --recalibration-slices 0 saves the network exactly as trained (its
    BatchNorm statistics gathered on the crops); with N > 0 the saved statistics are
    measured again on N whole slices, the weights unchanged."""
    from safetensors.torch import load_file

    output = tmp_path / "cropped"
    assert run_training(*TINY, "--epochs", "1", "--crop", "32", "--recalibration-slices", recalibration,
                        "--output", output) == 0
    saved = load_file(str(output.with_suffix(".safetensors")))
    trained = checkpoint_tensors(output, 1)
    means = [key for key in saved if key.endswith("running_mean")]
    conv = next(key for key in saved if key.endswith("conv.weight"))
    assert torch.equal(saved[conv], trained[f"model.{conv}"])
    same = all(torch.equal(saved[key], trained[f"model.{key}"]) for key in means)
    assert same == (recalibration == 0)


def test_negative_recalibration_count_is_refused_before_training(tmp_path):
    output = tmp_path / "negative"
    assert run_training(*TINY, "--epochs", "1", "--crop", "32", "--recalibration-slices", "-1",
                        "--output", output) == 2
    assert "--recalibration-slices must be 0" in log_of(output)
    assert not output.with_suffix(".safetensors").exists()
    assert not (output.with_suffix(".run") / "checkpoints").exists()


def test_initial_weights_of_another_architecture_are_refused(tmp_path, two_epoch_run):
    output = tmp_path / "unet"
    assert run_training(*TINY, "--epochs", "1", "--architecture", "unet16", "--output", output,
                        "--initial-weights", two_epoch_run.with_suffix(".safetensors")) == 2


def test_resume_without_a_checkpoint_says_so(tmp_path):
    output = tmp_path / "monet"
    assert run_training(*TINY, "--epochs", "1", "--output", output, "--resume") == 2
    assert "no checkpoint" in log_of(output)


# --- data sources -----------------------------------------------------------------------------

def write_msd_folder(root: Path, count: int = 3) -> Path:
    """Task07_Pancreas layout from tiny phantoms (label 2, tumour, in the upper half of each
    pancreas; dataset.json; macOS '._' companions that must be ignored), as the README tests make it."""
    from readme_examples import write_msd_folder as write_task_folder

    return write_task_folder(root / "Task07_Pancreas", count, shape=(12, 64, 64))


def test_msd_folder_trains_end_to_end(tmp_path):
    task = write_msd_folder(tmp_path)
    output = tmp_path / "runs" / "monet-msd"
    assert run_training("--msd", task, *TINY_FILES, "--crop", "32", "--loss", "dice+bce", "--prior-init",
                        "--output", output) == 0
    card = card_of(output)
    assert card["training"]["data_source"]["kind"] == "msd"
    assert card["training"]["cases"] == {"training": 1, "validation": 1, "test": 1}
    assert (card["training"]["protocol"]["crop"], card["training"]["protocol"]["loss"]) == (32, "dice+bce")


def test_msd_cases_come_from_dataset_json_without_macos_files(tmp_path):
    task = write_msd_folder(tmp_path)
    cases = msd_cases(task)
    assert [case.case_id for case in cases] == ["pancreas_001", "pancreas_002", "pancreas_003"]


def test_tumour_label_counts_as_pancreas(tmp_path):
    task = write_msd_folder(tmp_path, count=1)
    ct, labels = msd_cases(task)[0].load()
    assert (labels.array == 2).any()
    _, merged = slices_on_model_grid(ct, labels, DEFAULT_PREPROCESSING)
    _, binary = slices_on_model_grid(ct, labels.with_array(labels.array > 0), DEFAULT_PREPROCESSING)
    assert np.array_equal(merged, binary) and merged.any()


def test_folder_pairs_are_matched_by_file_name(tmp_path):
    task = write_msd_folder(tmp_path, count=2)
    output = tmp_path / "monet-folders"
    assert run_training("--images", task / "imagesTr", "--labels", task / "labelsTr", "--test-fraction", "0",
                        *TINY_FILES, "--output", output) == 0
    assert card_of(output)["training"]["data_source"]["kind"] == "folders"


def test_baseline_card_names_its_class_and_constructor_arguments(tmp_path):
    output = tmp_path / "unet16"
    assert run_training(*TINY, "--epochs", "1", "--architecture", "unet16", "--output", output) == 0
    card = card_of(output)
    assert card["architecture"] == "UNet"
    assert card["architecture_params"]["base_filters"] == 16
    assert card["parameters"]["with_bn_running_stats"] == 1_946_705


# --- bad data: the message names the case ------------------------------------------------------------

def test_unreadable_ct_is_reported_with_its_case(tmp_path):
    task = write_msd_folder(tmp_path)
    (task / "imagesTr" / "pancreas_002.nii.gz").write_bytes(b"not a NIfTI file")
    output = tmp_path / "monet"
    assert run_training("--msd", task, *TINY_FILES, "--output", output) == 2
    assert "Case pancreas_002" in log_of(output)


def test_label_map_on_another_grid_is_refused_naming_the_case(tmp_path):
    task = write_msd_folder(tmp_path, count=1)
    label_path = task / "labelsTr" / "pancreas_001.nii.gz"
    phantom = make_ct_phantom(1, shape=(12, 64, 64))
    shifted = phantom.ijk_to_ras.copy()
    shifted[:3, 3] += 5.0
    write_volume(Volume(phantom.pancreas.astype(np.uint8), shifted), label_path)
    with pytest.raises(InputError, match="pancreas_001.*voxel grid"):
        msd_cases(task)[0].load()


def test_missing_label_file_is_reported_with_its_case(tmp_path):
    task = write_msd_folder(tmp_path)
    (task / "labelsTr" / "pancreas_003.nii.gz").unlink()
    with pytest.raises(InputError, match="pancreas_003"):
        msd_cases(task)


def test_ct_without_label_in_a_folder_pair_is_reported_with_its_case(tmp_path):
    task = write_msd_folder(tmp_path, count=2)
    (task / "labelsTr" / "pancreas_002.nii.gz").unlink()
    with pytest.raises(InputError, match="No label map.*pancreas_002"):
        folder_cases(task / "imagesTr", task / "labelsTr")


def test_fractional_label_map_is_refused_naming_the_case(tmp_path):
    phantom = make_ct_phantom(1, shape=(12, 64, 64))
    write_volume(Volume(phantom.hu, phantom.ijk_to_ras), tmp_path / "ct.nii.gz")
    write_volume(Volume(phantom.pancreas * np.float32(0.7), phantom.ijk_to_ras), tmp_path / "labels.nii.gz")
    case = FileCase("case_7", tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", "case_7")
    with pytest.raises(InputError, match="case_7.*fractional"):
        case.load()


# --- protocol pieces -------------------------------------------------------------------------------

def test_split_without_a_test_set_is_the_seeded_permutation_of_the_first_version():
    ids = [f"phantom-{n:04d}" for n in range(40)]
    rng, reference = np.random.default_rng(0), np.random.default_rng(0)
    split = monet_data.split_by_patient(ids, 0.0, 0.3, rng)
    assert set(np.flatnonzero(split == "validation")) == set(reference.permutation(40)[:12].tolist())
    assert "test" not in split
    assert rng.random() == reference.random()  # later draws (slice selection) unchanged too


def test_split_keeps_all_cases_of_a_patient_on_one_side():
    patients = [f"p{n // 3}" for n in range(30)]  # 10 patients, 3 scans each
    split = monet_data.split_by_patient(patients, 0.3, 0.3, np.random.default_rng(1))
    for patient in set(patients):
        sides = {str(v) for p, v in zip(patients, split) if p == patient}
        assert len(sides) == 1
    assert (split == "test").sum() == 9 and (split == "validation").sum() == 9


def test_papers_281_cases_split_into_85_test_20_validation_and_176_training():
    """The authors' two train_test_split calls: 30 % test (281 -> 85, rounded up as
    scikit-learn does), then 10 % of the rest validates."""
    split = monet_data.split_by_patient([f"pancreas_{n:03d}" for n in range(281)], 0.3, 0.1,
                                        np.random.default_rng(0))
    assert {side: int((split == side).sum()) for side in ("training", "validation", "test")} == \
        {"training": 176, "validation": 20, "test": 85}


def test_split_refuses_fractions_that_leave_no_training_patient():
    with pytest.raises(InputError, match="at least 3 patients"):
        monet_data.split_by_patient(["a", "b", "c"], 0.5, 0.5, np.random.default_rng(0))


def test_test_cases_give_no_training_or_validation_slice():
    cases = [monet_data.CachedSlices(np.zeros((6, 4, 4), np.float16), np.ones((6, 4, 4), np.uint8),
                                     np.ones(6, bool)) for _ in range(3)]
    split = np.array(["training", "test", "validation"])
    protocol = monet_protocol.MoNetProtocol(slices="pancreas-and-fraction")
    train, val = monet_data.select_slices(cases, split, protocol, 10**9, np.random.default_rng(0))
    assert set(train.index[:, 0]) == {0} and set(val.index[:, 0]) == {2}


def test_no_slice_of_a_test_case_is_read_while_training_or_validating(tmp_path, monkeypatch):
    """End to end: every slice the training steps and the validations read belongs to a
    training or validation case; the test case is only scored at the end."""
    read = []
    original = monet_data.SliceSet.batch

    def spying_batch(self, positions):
        read.extend(int(self.index[p][0]) for p in positions)
        return original(self, positions)

    monkeypatch.setattr(monet_data.SliceSet, "batch", spying_batch)
    output = tmp_path / "monet"
    assert run_training(*TINY, "--epochs", "1", "--output", output) == 0
    manifest = json.loads((output.with_suffix(".run") / "data.json").read_text(encoding="utf-8"))
    test_cases = {i for i, case in enumerate(manifest["cases"]) if case["split"] == "test"}
    assert test_cases and read
    assert not test_cases & set(read)


def test_pancreas_range_keeps_the_pancreas_slices_and_the_margin_on_each_side():
    pancreas = np.zeros(40, bool)
    pancreas[[12, 15, 20]] = True  # a gap inside the range is kept too
    case = monet_data.CachedSlices(np.zeros((40, 2, 2), np.float16), np.zeros((40, 2, 2), np.uint8), pancreas)
    protocol = monet_protocol.MoNetProtocol(slices="pancreas-range", z_margin=16)
    assert monet_data.used_slices(case, protocol, np.random.default_rng(0)).tolist() == list(range(0, 37))
    narrow = monet_protocol.MoNetProtocol(slices="pancreas-range", z_margin=2)
    assert monet_data.used_slices(case, narrow, np.random.default_rng(0)).tolist() == list(range(10, 23))


def test_soft_dice_loss_is_the_papers_formula_on_the_sigmoid_of_the_logits():
    torch.manual_seed(0)
    logits, masks = 4 * torch.randn(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.7).float()
    probabilities = torch.sigmoid(logits)
    expected = 1 - (2 * (probabilities * masks).sum() + 1) / (probabilities.sum() + masks.sum() + 1)
    assert torch.allclose(monet_losses.soft_dice_loss(1.0)(logits, masks), expected)


def test_dice_plus_bce_adds_binary_cross_entropy_to_the_soft_dice():
    torch.manual_seed(0)
    logits, masks = 4 * torch.randn(4, 1, 16, 16), (torch.rand(4, 1, 16, 16) > 0.7).float()
    protocol = monet_protocol.MoNetProtocol(loss="dice+bce")
    expected = monet_losses.soft_dice_loss(1.0)(logits, masks) + \
        torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits.double()), masks.double()).float()
    assert torch.allclose(monet_losses.training_loss(protocol)(logits, masks), expected)


def test_binary_cross_entropy_stays_finite_for_confident_wrong_logits():
    """No clipping of probabilities is needed: BCE is computed from the logits themselves."""
    logits, masks = torch.tensor([[[[-200.0, 200.0]]]]), torch.tensor([[[[1.0, 0.0]]]])
    protocol = monet_protocol.MoNetProtocol(loss="dice+bce")
    loss = monet_losses.training_loss(protocol)(logits.requires_grad_(), masks)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 100
    assert torch.isfinite(logits.grad).all()


def test_validation_loss_is_the_loss_over_all_slices_at_once():
    from segmentation_data import CachedSlices
    from trainkit.distributed import Distributed

    rng = np.random.default_rng(0)
    images = rng.random((40, 8, 8)).astype(np.float16)
    masks = (rng.random((40, 8, 8)) > 0.6).astype(np.uint8)
    slices = monet_data.SliceSet([CachedSlices(images, masks, masks.any(axis=(1, 2)))],
                                  np.stack([np.zeros(40, int), np.arange(40)], axis=1))
    network = torch.nn.Conv2d(1, 1, 3, padding=1)  # returns logits, as the segmentation networks do
    loss, _ = monet_validation.validation_loss(network, slices, 1.0, Distributed(0, 0, 1, torch.device("cpu")))
    all_images, all_masks = slices.batch(np.arange(40))
    with torch.no_grad():
        expected = monet_losses.soft_dice_loss(1.0)(network(all_images), all_masks)
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_prior_init_makes_the_untrained_output_the_pancreas_fraction():
    from segmentation_networks import ARCHITECTURES, build_network

    for name in ("monet", "unet16"):
        network = build_network(ARCHITECTURES[name]).eval()
        monet_training.set_output_prior(network, 0.01)
        for module in network.modules():  # the head's input to zero: the output is the bias alone
            if isinstance(module, torch.nn.Conv2d) and module.out_channels == 1:
                torch.nn.init.zeros_(module.weight)
        with torch.no_grad():
            output = torch.sigmoid(network(torch.rand(1, 1, 32, 32)))
        assert torch.allclose(output, torch.full_like(output, 0.01), atol=1e-4), name


def test_recalibration_measures_batch_norm_on_whole_slices_and_keeps_weights():
    from segmentation_data import CachedSlices

    rng = np.random.default_rng(0)
    images = rng.random((16, 16, 16)).astype(np.float16)
    masks = np.zeros((16, 16, 16), np.uint8)
    slices = monet_data.SliceSet([CachedSlices(images, masks, masks.any(axis=(1, 2)))],
                                  np.stack([np.zeros(16, int), np.arange(16)], axis=1))
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    calibrated = monet_validation.recalibrated_batch_norm(network, slices, np.random.default_rng(1), 16, torch.device("cpu"))
    all_images, _ = slices.batch(np.arange(16))  # one batch: its statistics
    with torch.no_grad():
        features = network[0](all_images)
    assert torch.allclose(calibrated[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(calibrated[0].weight, network[0].weight)
    assert torch.equal(network[1].running_mean, torch.zeros(2))  # the original is untouched


def test_augmented_masks_keep_their_edges_on_the_image_edges():
    """A mask moved by a sub-pixel rotation, zoom and shift stays where its image moved: the
    image of a disc cut at half its height gives back the transformed mask, pixel for pixel."""
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 30.3) ** 2 + (xx - 33.7) ** 2 <= 14.2 ** 2).astype(np.float32)
    images = torch.from_numpy(np.repeat(disc[None, None], 4, axis=0))
    protocol = monet_protocol.MoNetProtocol(rotation_degrees=10, zoom=0.25, shift=0.2)
    theta = monet_augmentation.random_affine(4, torch.Generator().manual_seed(3), protocol)
    moved_images, moved_masks = monet_augmentation.apply_affine(images, images.clone(), theta)
    assert set(torch.unique(moved_masks).tolist()) == {0.0, 1.0}
    assert torch.equal(moved_masks, (moved_images >= 0.5).float())


def test_isotropic_zoom_draws_the_numbers_of_the_first_version():
    protocol = monet_protocol.MoNetProtocol(zoom_axes="isotropic")
    theta = monet_augmentation.random_affine(5, torch.Generator().manual_seed(4), protocol)
    generator = torch.Generator().manual_seed(4)
    angle = (torch.rand(5, generator=generator) * 2 - 1) * np.radians(10.0)
    scale = 1 + (torch.rand(5, generator=generator) * 2 - 1) * 0.25
    assert torch.allclose(theta[:, 0, 0], torch.cos(angle) * scale)
    assert torch.allclose(theta[:, 0, 1], -torch.sin(angle) * scale)


def test_independent_zoom_scales_the_two_axes_apart_and_isotropic_alike():
    def axis_scales(zoom_axes):
        protocol = monet_protocol.MoNetProtocol(zoom_axes=zoom_axes)
        theta = monet_augmentation.random_affine(64, torch.Generator().manual_seed(0), protocol)
        return theta[:, :, 0].norm(dim=1), theta[:, :, 1].norm(dim=1)  # the columns: rotation x scale

    x, y = axis_scales("independent")
    assert (x - y).abs().max() > 0.1
    x, y = axis_scales("isotropic")
    assert torch.allclose(x, y)


def test_nearest_fill_repeats_the_edge_where_zeros_fill_leaves_air():
    image = torch.linspace(0.2, 1.0, 16).repeat(16, 1)[None, None]  # brighter to the right
    theta = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])  # look a quarter slice to the right
    nearest, _ = monet_augmentation.apply_affine(image, torch.zeros_like(image), theta, "nearest")
    zeros, _ = monet_augmentation.apply_affine(image, torch.zeros_like(image), theta, "zeros")
    assert torch.allclose(nearest[0, 0, :, -1], torch.ones(16))
    assert torch.equal(zeros[0, 0, :, -1], torch.zeros(16))


def test_paper_preset_is_the_default_and_ours_differs_where_recorded():
    paper = train_monet.build_parser().parse_args(["--phantoms", "3", "--output", "x"])
    ours = train_monet.build_parser().parse_args(["--phantoms", "3", "--output", "x", "--protocol", "ours"])
    paper, ours = (protocol_from_arguments(monet_protocol.MoNetProtocol, a) for a in (paper, ours))
    assert paper == monet_protocol.MoNetProtocol()
    assert (paper.batch_size, paper.window_low, paper.intensity_scaling, paper.keep_largest_component) == \
        (16, -150.0, "volume_min_max", False)
    assert (ours.batch_size, ours.window_low, ours.intensity_scaling, ours.keep_largest_component) == \
        (8, -160.0, "window", True)
    assert ours.learning_rate == paper.learning_rate  # where the paper speaks and we agree


def test_an_option_given_wins_over_the_preset_and_the_card_says_whose_value_it_is(two_epoch_run):
    arguments = train_monet.build_parser().parse_args(["--phantoms", "3", "--output", "x", "--protocol", "ours",
                                                       "--batch-size", "4"])
    protocol = protocol_from_arguments(monet_protocol.MoNetProtocol, arguments)
    assert protocol.batch_size == 4 and protocol.preset == "ours"
    origins = card_of(two_epoch_run)["training"]["protocol"]["origins"]
    assert origins["batch_size"] == "command line"  # TINY gives --batch-size 2
    assert origins["learning_rate"] == "paper and ours (article)"
    assert origins["window_low"].startswith("paper (authors' code")


def test_paper_card_records_the_authors_intensities_and_raw_masks(two_epoch_run):
    card = card_of(two_epoch_run)
    assert card["preprocessing"]["window_hu"] == [-150.0, 200.0]
    assert card["preprocessing"]["intensity_scaling"] == "volume_min_max"
    assert card["postprocessing"]["keep_largest_component"] is False


def test_crops_hold_the_pancreas_when_the_slice_shows_it():
    masks = torch.zeros(3, 1, 64, 64)
    masks[:, :, 40:46, 50:56] = 1
    corners = monet_augmentation.random_crop_corners(masks, 32, torch.Generator().manual_seed(0))
    _, cropped = monet_augmentation.crop_batch(masks, masks, corners, 32)
    assert cropped.shape == (3, 1, 32, 32)
    assert all(crop.sum() > 0 for crop in cropped)


# --- several processes -----------------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_writes_a_card_with_the_same_fields(two_epoch_run, tmp_path):
    output = tmp_path / "monet-ddp"
    completed = run_torchrun(SCRIPT, *TINY, "--epochs", "1", "--output", str(output))
    assert completed.returncode == 0, completed.stderr[-3000:]
    card = card_of(output)
    assert key_structure(card) == key_structure(card_of(two_epoch_run))
    assert card["training"]["hardware"]["processes"] == 2
    assert card["training"]["hardware"]["backend"] == "gloo"
