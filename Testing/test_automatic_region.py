"""The region found automatically: MoNet on MRI (percentile intensities recorded in the card,
`train_monet.py --modality mr`), the bundled MR demo model, and the automatic region from the
console (`IPMNRiskLib.automatic_region`, `logic.assess(..., "automatic")`), the command line
(`--roi-auto`, a batch row "automatic") and a slicer-core scene, with its overlap figure."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import read_volume, write_volume
from PancreasSegMoNetLib import preprocessing as pre
from IPMNRiskLib.automatic_region import AUTOMATIC, MARGIN_MM, find_region, segmentation_card
from IPMNRiskLib.grids import RegionBox

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MONET = ROOT / "Resources" / "Training" / "train_monet.py"
EVALUATE = ROOT / "Resources" / "Training" / "evaluate_automatic_region.py"
MR_DEMO = "monet-mr-demo-phantom-v1"


def mr_card_preprocessing(size: int = 64, percentiles=(1.0, 99.0)) -> dict:
    return pre.mr_preprocessing(size, percentiles)


# --- MR intensities -----------------------------------------------------------------------------

def test_an_mr_volume_is_scaled_by_its_own_percentiles_whatever_its_units():
    rng = np.random.default_rng(0)
    array = rng.gamma(2.0, 100.0, size=(4, 40, 40)).astype(np.float32)
    volume = Volume(array, np.diag([1.5, 1.5, 4.0, 1.0]))
    preprocessing = mr_card_preprocessing(32)
    slices, _ = pre.model_slices(volume, preprocessing)
    low, high = np.percentile(array, [1, 99])
    assert pre.intensity_range(volume, preprocessing) == pytest.approx((low, high))
    assert 0.0 <= slices.min() and slices.max() <= 1.0 + 1e-6
    # an MR scanner's arbitrary gain changes nothing the network sees
    scaled, _ = pre.model_slices(Volume(array * 7.0 + 3.0, volume.ijk_to_ras), preprocessing)
    np.testing.assert_allclose(scaled, slices, atol=1e-5)


def test_the_percentiles_come_from_the_card():
    array = np.linspace(0, 1000, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    volume = Volume(array, np.eye(4))
    assert pre.intensity_range(volume, mr_card_preprocessing(32, (10, 90))) == pytest.approx((100, 900))


def test_a_large_volume_s_percentiles_are_taken_on_an_even_subsample(monkeypatch):
    monkeypatch.setattr(pre, "PERCENTILE_VOXELS", 1000)
    array = np.random.default_rng(1).normal(500, 100, size=(10, 50, 50)).astype(np.float32)
    low, high = pre.volume_percentiles(array, (1, 99))
    exact = np.percentile(array, [1, 99])
    assert abs(low - exact[0]) < 40 and abs(high - exact[1]) < 40


def test_pixels_outside_a_non_square_mr_slice_are_black():
    array = np.full((2, 20, 60), 500.0, np.float32)
    array[:, :, :30] = 100.0
    slices, _ = pre.model_slices(Volume(array, np.eye(4)), mr_card_preprocessing(60))
    assert slices[0, 0, 40] == 0.0  # above the 20-row slice, padded to 60 x 60
    assert slices[0, 30, 45] == pytest.approx(1.0)


@pytest.mark.parametrize("change, words", [
    ({"intensity_scaling": "window", "window_hu": [-160, 240], "fill_hu": -1024}, "Hounsfield"),
    ({"percentiles": [99, 1]}, "must rise"),
    ({"percentiles": [1, 101]}, "must rise"),
    ({"percentiles": "1-99"}, "two numbers"),
    ({"modality": "PET"}, "PET"),
])
def test_an_mr_card_that_cannot_be_reproduced_is_refused(change, words):
    with pytest.raises(ModelFileError, match=words):
        pre.check_preprocessing({**mr_card_preprocessing(), **change})


def test_an_mr_card_without_percentiles_is_refused_naming_them():
    preprocessing = mr_card_preprocessing()
    del preprocessing["percentiles"]
    with pytest.raises(ModelFileError, match="lacks percentiles"):
        pre.check_preprocessing(preprocessing)


def test_cards_without_a_modality_stay_ct_models():
    assert pre.modality(dict(pre.DEFAULT_PREPROCESSING)) == "CT"
    pre.check_preprocessing(dict(pre.DEFAULT_PREPROCESSING))


def test_an_mr_model_warns_about_a_ct_and_not_about_an_mri():
    from PancreasSegMoNetLib.segmentation import check_ct

    ramp = np.linspace(0, 1, 4 * 40 * 40, dtype=np.float32).reshape(4, 40, 40)
    ct = Volume(ramp * 1400 - 1000, np.eye(4))
    mri = Volume(ramp * 900 + 10, np.eye(4))
    assert any("looks like a CT" in w or "look like a CT" in w for w in check_ct(ct, "MR"))
    assert check_ct(mri, "MR") == []
    assert any("does not look like a CT" in w for w in check_ct(mri, "CT"))


# --- training on MRI --------------------------------------------------------------------------------

def train_monet(tmp_path, *arguments):
    return subprocess.run([sys.executable, str(TRAIN_MONET), *map(str, arguments)], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)


@pytest.mark.slow
def test_an_mr_image_folder_is_spoken_of_as_mr_images_not_cts(tmp_path):
    from segmentation_data import folder_cases

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    with pytest.raises(InputError, match="holds no MR image files"):
        folder_cases(images, labels, modality="MR")
    write_volume(Volume(np.zeros((4, 8, 8), np.int16), np.eye(4)), images / "mr_001.nii.gz")
    with pytest.raises(InputError, match=r"No label map for 1 MR image\(s\).*Each MR image needs"):
        folder_cases(images, labels, modality="MR")


def test_train_monet_on_mr_phantoms_writes_an_mr_card_that_segments_an_mri(tmp_path):
    from PancreasAILib.weights import read_model_card
    from PancreasSegMoNetLib.segmentation import segment_ct
    from PancreasAIPhantoms.mr import make_mr_phantom

    result = train_monet(tmp_path, "--modality", "mr", "--phantoms", "3", "--phantom-shape", "8", "64", "64",
                         "--input-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                         "--test-fraction", "0", "--validation-fraction", "0.34", "--mr-percentiles", "2", "98",
                         "--output", "mr.safetensors")
    assert result.returncode == 0, result.stderr[-3000:]
    card = read_model_card(tmp_path / "mr.safetensors")
    assert card.preprocessing["modality"] == "MR"
    assert card.preprocessing["intensity_scaling"] == "volume_percentiles"
    assert card.preprocessing["percentiles"] == [2.0, 98.0]
    assert "window_hu" not in card.preprocessing
    assert "MRI" in card.data["task"]
    training = card.data["training"]
    assert training["data_source"]["kind"] == "mr_phantoms"
    assert training["protocol"]["origins"]["window_low"].startswith("not used")
    phantom = make_mr_phantom(3, 1, shape=(8, 64, 64))
    result = segment_ct(Volume(phantom.t2, phantom.ijk_to_ras), card, engine="pytorch")
    assert result.mask.shape == phantom.t2.shape
    assert not any("CT" in w for w in result.warnings)


@pytest.mark.parametrize("arguments, words", [
    (["--modality", "mr", "--window-low", "-100"], "Hounsfield units"),
    (["--modality", "mr", "--intensity-scaling", "window"], "Hounsfield units"),
    (["--modality", "mr", "--mr-percentiles", "50", "10"], "--mr-percentiles"),
])
def test_ct_settings_on_an_mr_run_are_refused_before_any_work(tmp_path, arguments, words):
    result = train_monet(tmp_path, "--phantoms", "2", *arguments, "--output", "mr.safetensors")
    assert result.returncode == 2
    assert words in result.stderr
    assert not (tmp_path / "mr.safetensors").exists()


def test_cyst_x_segmentation_data_needs_mr_and_its_folders(tmp_path):
    result = train_monet(tmp_path, "--cyst-x", tmp_path, "--output", "mr.safetensors")
    assert result.returncode == 2 and "--modality mr" in result.stderr
    result = train_monet(tmp_path, "--cyst-x", tmp_path, "--modality", "mr", "--output", "mr.safetensors")
    assert result.returncode == 2 and "IPMN_images_masks/t2/images" in result.stderr


@pytest.mark.slow
def test_train_monet_reads_cyst_x_images_and_masks_of_the_chosen_sequence(tmp_path):
    from PancreasAILib.weights import read_model_card
    from PancreasAIPhantoms.mr import make_mr_phantom

    for seed in range(3):
        phantom = make_mr_phantom(seed, seed % 3, shape=(6, 48, 48))
        for sequence, image in (("t2", phantom.t2), ("t1", phantom.t1)):
            base = tmp_path / "CystX" / "IPMN_images_masks" / sequence
            write_volume(Volume(image, phantom.ijk_to_ras), base / "images" / f"nyu_{seed:03d}.nii.gz")
            write_volume(Volume(phantom.pancreas.astype(np.uint8), phantom.ijk_to_ras),
                         base / "masks" / f"nyu_{seed:03d}.nii.gz")
    result = train_monet(tmp_path, "--cyst-x", "CystX", "--modality", "mr", "--sequence", "t1",
                         "--input-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
                         "--test-fraction", "0", "--validation-fraction", "0.34", "--output", "mr.safetensors")
    assert result.returncode == 0, result.stderr[-3000:]
    card = read_model_card(tmp_path / "mr.safetensors")
    assert card.data["training"]["data_source"] == {"kind": "cyst_x", "folder": "CystX", "sequence": "t1"}
    assert card.data["training"]["cases"]["training"] + card.data["training"]["cases"]["validation"] == 3
    assert "T1" in card.data["task"]


# --- the bundled MR demo model and the region it gives ------------------------------------------------

@pytest.fixture(scope="module")
def sample():
    """(T1, T2, the drawn region) of the bundled demo MR."""
    from PancreasAILib import sample_data

    from test_shipped_files import read_region

    t1 = read_volume(sample_data.sample_path(sample_data.MR_T1_FILE))
    t2 = read_volume(sample_data.sample_path(sample_data.MR_T2_FILE))
    return t1, t2, RegionBox(*read_region(sample_data.sample_path(sample_data.MR_REGION_FILE)))


@pytest.fixture(scope="module")
def sample_found(sample):
    return find_region(sample[1], device="cpu", engine="pytorch")


def inside(point, box: RegionBox) -> bool:
    half = np.divide(box.size_mm, 2)
    return bool(np.all(np.abs(np.subtract(point, box.center_ras)) <= half))


def test_the_first_installed_mr_model_is_the_bundled_demo():
    card = segmentation_card()
    assert card.name == MR_DEMO
    assert card.preprocessing["modality"] == "MR"
    assert "NOT for diagnosis" in card.data["intended_use"]


def test_the_ct_demo_stays_pancreas_segmentation_s_default():
    from PancreasSegMoNetLib.registry import model_registry

    assert model_registry().resolve(None).preprocessing.get("modality", "CT") == "CT"


def test_the_automatic_region_of_the_demo_mr_lies_on_its_pancreas(sample, sample_found):
    _, t2, drawn = sample
    found = sample_found
    assert inside(found.region.center_ras, drawn)
    assert found.mask.shape == t2.shape
    np.testing.assert_allclose(found.mask.ijk_to_ras, t2.ijk_to_ras)
    assert 5 < found.volume_ml < 200
    tight = RegionBox.from_mask(found.mask)
    np.testing.assert_allclose(found.region.size_mm, np.add(tight.size_mm, 2 * MARGIN_MM))
    np.testing.assert_allclose(found.region.center_ras, tight.center_ras)
    record = found.record()
    assert record["source"] == AUTOMATIC and record["segmentation_model"] == MR_DEMO
    assert record["segmentation_model_sha256"] == segmentation_card().sha256


def test_the_automatic_region_follows_the_anatomy_not_the_storage_order(sample, sample_found):
    """The same T2 stored with its axes reversed and swapped gives the same box in mm."""
    _, t2, _ = sample
    array = np.ascontiguousarray(t2.array[::-1, :, ::-1].transpose(0, 2, 1))
    k, j, i = t2.shape
    # new voxel (i', j', k') = old voxel (i = I-1-j', j = i', k = K-1-k')
    new_to_old = np.array([[0, -1, 0, i - 1], [1, 0, 0, 0], [0, 0, -1, k - 1], [0, 0, 0, 1]], float)
    stored = Volume(array, t2.ijk_to_ras @ new_to_old)
    found = find_region(stored, device="cpu", engine="pytorch")
    np.testing.assert_allclose(found.region.center_ras, sample_found.region.center_ras, atol=1e-3)
    np.testing.assert_allclose(found.region.size_mm, sample_found.region.size_mm, atol=1e-3)


def test_a_ct_model_is_refused_as_segmentation_model(sample):
    with pytest.raises(ModelFileError, match="trained on CT, not on MRI"):
        find_region(sample[1], "monet-demo-phantom-v3")


def test_no_mr_model_installed_says_how_to_get_one(monkeypatch, sample):
    from PancreasSegMoNetLib import registry

    known = registry.model_registry()
    only_ct = type(known)([known.entries["monet-demo-phantom-v3"]], known.cache_dir)
    monkeypatch.setattr(registry, "model_registry", lambda *a, **k: only_ct)
    with pytest.raises(ModelFileError, match="--modality mr"):
        find_region(sample[1])


@pytest.fixture(scope="module")
def blind_mr_model(tmp_path_factory):
    """The demo MR MoNet with its output bias at -40: it finds nothing anywhere."""
    import torch

    from PancreasAILib.weights import load_state_dict, save_model

    card = segmentation_card()
    state = load_state_dict(card, "MoNet")
    bias = [name for name in state if name.endswith("bias")][-1]
    state[bias] = torch.full_like(state[bias], -40.0)
    path = tmp_path_factory.mktemp("blind") / "monet-mr-blind.safetensors"
    return save_model(state, path, {**card.data, "name": "monet-mr-blind"})


def test_a_t2_where_nothing_is_found_is_refused_saying_what_to_do(sample, blind_mr_model):
    with pytest.raises(InputError, match="found no pancreas on the T2 image.*place a box"):
        find_region(sample[1], str(blind_mr_model.weights_path))


# --- the overlap figure ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_automatic_box_holds_the_true_pancreas_of_held_out_phantoms(tmp_path):
    """evaluate_automatic_region.py on held-out MR phantoms (one of each risk class): the found
    box holds (nearly) the whole true pancreas and overlaps the box an expert draws."""
    result = subprocess.run([sys.executable, str(EVALUATE), "--output", "figure", "--phantoms", "3"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "figure" / "automatic_region.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["seed"] for row in rows] == ["7000", "7001", "7002"]
    assert [row["risk_class"] for row in rows] == ["0", "1", "2"]
    inside_share = np.array([float(row["pancreas_inside"]) for row in rows])
    iou = np.array([float(row["box_iou"]) for row in rows])
    print(result.stdout)
    assert inside_share.mean() >= 0.9, result.stdout
    assert iou.mean() >= 0.45, result.stdout
    table = (tmp_path / "figure" / "automatic_region.md").read_text(encoding="utf-8")
    assert MR_DEMO in table and "| pancreas_inside |" in table
    from PIL import Image

    with Image.open(tmp_path / "figure" / "automatic_region.png") as figure:
        assert figure.size[0] >= 3 * 300  # one panel per case, side by side


def test_box_overlap_and_share_inside_are_measured_in_mm():
    import evaluate_automatic_region as evaluate

    a = RegionBox((0, 0, 0), (10, 10, 10))
    assert evaluate.box_iou(a, RegionBox((5, 0, 0), (10, 10, 10))) == pytest.approx(500 / 1500)
    assert evaluate.box_iou(a, RegionBox((50, 0, 0), (10, 10, 10))) == 0.0
    mask = Volume(np.ones((1, 1, 4), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))  # voxel centres x = 0, 2, 4, 6
    assert evaluate.share_inside(mask, RegionBox((1, 0, 0), (4.5, 4, 4))) == pytest.approx(0.5)


# --- the command line ---------------------------------------------------------------------------------

def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in ("PancreasAI", "IPMNRisk")))
    return subprocess.run([sys.executable, "-m", "IPMNRiskLib", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=cwd)


@pytest.fixture
def sample_files(tmp_path):
    from PancreasAILib import sample_data

    return (sample_data.sample_path(sample_data.MR_T1_FILE), sample_data.sample_path(sample_data.MR_T2_FILE))


@pytest.fixture(scope="module")
def automatic_run(tmp_path_factory):
    """`ipmn-risk assess --roi-auto` on the demo MR, run once for the tests below: its folder."""
    from PancreasAILib import sample_data

    folder = tmp_path_factory.mktemp("automatic-cli")
    result = run_cli("assess", "--t1", sample_data.sample_path(sample_data.MR_T1_FILE), "--t2",
                     sample_data.sample_path(sample_data.MR_T2_FILE), "--roi-auto", "--no-tta", "--engine", "pytorch",
                     "--output", "out", "--case", "demo", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "out"


def test_roi_auto_writes_the_pancreas_it_found_and_says_so_in_the_result(automatic_run, sample, sample_found):
    summary = json.loads((automatic_run / "demo_ipmn_result.json").read_text(encoding="utf-8"))
    region = summary["region"]
    assert region["source"] == AUTOMATIC and region["segmentation_model"] == MR_DEMO
    np.testing.assert_allclose(region["center_ras"], sample_found.region.center_ras, atol=1e-3)
    np.testing.assert_allclose(region["size_mm"], sample_found.region.size_mm, atol=1e-3)
    pancreas = read_volume(automatic_run / "demo_ipmn_pancreas.nrrd")
    np.testing.assert_array_equal(pancreas.array > 0, sample_found.mask.array > 0)
    np.testing.assert_allclose(pancreas.ijk_to_ras, sample[1].ijk_to_ras, atol=1e-6)
    # the volume found (ml, 2 decimals: the mask's voxels times the voxel volume) and the margin
    voxel_ml = abs(np.linalg.det(pancreas.ijk_to_ras[:3, :3])) / 1000
    assert region["pancreas_ml"] == round(float(np.count_nonzero(pancreas.array)) * voxel_ml, 2) > 0
    assert region["margin_mm"] == MARGIN_MM


def test_a_drawn_region_writes_no_pancreas_file(tmp_path, sample_files, sample):
    t1, t2 = sample_files
    box = sample[2]
    result = run_cli("assess", "--t1", t1, "--t2", t2, "--roi-center=" + ",".join(map(str, box.center_ras)),
                     "--roi-size=" + ",".join(map(str, box.size_mm)), "--no-tta", "--no-scene",
                     "--output", "out", "--case", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "out" / "demo_ipmn_pancreas.nrrd").exists()
    assert "source" not in json.loads((tmp_path / "out" / "demo_ipmn_result.json").read_text())["region"]


@pytest.mark.parametrize("region", [["--roi-auto", "--roi-mask", "m.nrrd"],
                                    ["--roi-auto", "--roi-center=1,2,3", "--roi-size=4,5,6"], []])
def test_the_region_is_given_one_way(tmp_path, sample_files, region):
    t1, t2 = sample_files
    result = run_cli("assess", "--t1", t1, "--t2", t2, *region, "--output", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "one way" in result.stderr and "--roi-auto" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_batch_row_can_ask_for_the_automatic_region(tmp_path, sample_files, sample):
    t1, t2 = sample_files
    box = sample[2]
    with open(tmp_path / "cases.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "t1", "t2", "roi_center", "roi_size", "roi_mask"])
        writer.writerow(["auto", t1, t2, "", "", "automatic"])
        writer.writerow(["drawn", t1, t2, ",".join(map(str, box.center_ras)), ",".join(map(str, box.size_mm)), ""])
    result = run_cli("batch", "cases.csv", "--output", "out", "--no-tta", "--no-scene", "--engine", "pytorch",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "auto_ipmn_pancreas.nrrd").exists()
    assert not (tmp_path / "out" / "drawn_ipmn_pancreas.nrrd").exists()


def test_a_failed_automatic_region_fails_its_case_and_writes_nothing(tmp_path, sample_files, blind_mr_model):
    t1, t2 = sample_files
    result = run_cli("assess", "--t1", t1, "--t2", t2, "--roi-auto", "--segmentation-model",
                     blind_mr_model.weights_path, "--no-tta", "--output", "out", "--case", "demo", cwd=tmp_path)
    assert result.returncode == 1
    assert "found no pancreas" in result.stdout + result.stderr
    assert not list((tmp_path / "out").glob("demo_*"))


# --- the Slicer route (slicer-core scene) ---------------------------------------------------------

@pytest.fixture
def sample_nodes(mrml_scene, sample):
    from PancreasAILib.scene import add_volume_node

    t1, t2, _ = sample
    return add_volume_node(mrml_scene, t1, "T1"), add_volume_node(mrml_scene, t2, "T2")


def left_behind(work_folders: Path) -> list:
    """The route's work folders left in the temporary folder (torch's own cache folder aside)."""
    return [p.name for p in work_folders.iterdir() if not p.name.startswith("torchinductor")]


def node_ids(scene) -> set:
    return {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}


def test_the_console_s_automatic_region_shows_its_box_and_pancreas_in_the_scene(sample_nodes, sample_found,
                                                                                work_folders):
    import slicer

    from IPMNRiskLib import logic
    from IPMNRiskLib.region_nodes import SEGMENTATION_MODEL_ATTRIBUTE

    t1_node, t2_node = sample_nodes
    outcome = logic.assess(t1_node, t2_node, AUTOMATIC, tta=False, engine="pytorch")
    center, size = np.zeros(3), np.zeros(3)
    outcome.region_node.GetCenter(center)
    size = np.asarray(outcome.region_node.GetSize())
    np.testing.assert_allclose(center, sample_found.region.center_ras, atol=1e-3)
    np.testing.assert_allclose(size, sample_found.region.size_mm, atol=1e-3)
    labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(outcome.pancreas_node, "PancreasSegMoNet_pancreas",
                                                          t2_node)
    assert int(labelmap.sum()) == int(np.count_nonzero(sample_found.mask.array))
    assert outcome.pancreas_node.GetAttribute(SEGMENTATION_MODEL_ATTRIBUTE) == MR_DEMO
    assert outcome.summary["region"]["source"] == AUTOMATIC
    assert left_behind(work_folders) == []


def test_a_failed_automatic_region_leaves_the_scene_as_it_was(mrml_scene, sample_nodes, blind_mr_model,
                                                              work_folders):
    from IPMNRiskLib import logic

    t1_node, t2_node = sample_nodes
    before = node_ids(mrml_scene)
    with pytest.raises(Exception, match="found no pancreas"):
        logic.assess(t1_node, t2_node, AUTOMATIC, tta=False, segmentation_model=str(blind_mr_model.weights_path))
    assert node_ids(mrml_scene) == before
    assert left_behind(work_folders) == []


def test_the_review_scene_of_an_automatic_region_holds_the_pancreas(tmp_path, automatic_run, mrml_scene):
    import zipfile

    zipfile.ZipFile(automatic_run / "demo_ipmn_scene.mrb").extractall(tmp_path / "unpacked")
    mrml_scene.SetURL(str(next((tmp_path / "unpacked").rglob("*.mrml"))))
    assert mrml_scene.Import()
    segmentations = [mrml_scene.GetNthNodeByClass(n, "vtkMRMLSegmentationNode")
                     for n in range(mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    assert [s.GetSegmentation().GetSegment("PancreasSegMoNet_pancreas").GetName() for s in segmentations] == \
        ["Pancreas"]
