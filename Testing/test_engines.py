"""The inference engine layer: which engine and precision are chosen on which CPU and card,
the OpenVINO conversion cache, batch sizes by measurement, and that the faster pipeline gives
today's masks on awkward geometry."""

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from PancreasAILib import engines
from PancreasAILib.cpu import CpuFeatures, parse_cpuinfo
from PancreasAILib.engines import (BatchSizes, EngineChoice, build_engine, choose_engine,
                                   passed_precision_check, record_precision_check)
from PancreasAILib.errors import InputError, ModelFileError
from PancreasAILib.resample import resample
from PancreasAILib.volume import Volume
from PancreasAILib.weights import read_model_card
from PancreasSegMoNetLib.registry import monet_recipe
from PancreasSegMoNetLib.segmentation import segment_ct

AVX2_EPYC = CpuFeatures("AMD EPYC 7B13", frozenset({"avx", "avx2", "fma"}), "test")
BF16_EPYC = CpuFeatures("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_bf16"}), "test")
AMX_XEON = CpuFeatures("Intel Xeon Platinum 8481C", frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"}), "test")
AVX512_NO_BF16 = CpuFeatures("Intel Xeon Gold 6248", frozenset({"avx2", "avx512f", "avx512_vnni"}), "test")


@pytest.fixture
def card_copy(tmp_path, random_monet_card):
    """A private copy of the random MoNet model file, free to be written."""
    for path in (random_monet_card.weights_path, random_monet_card.card_path):
        shutil.copy(path, tmp_path / path.name)
    return read_model_card(tmp_path / random_monet_card.card_path.name)


def passed_bf16(card):
    return record_precision_check(card, "bf16", {"passed": True, "criterion": "test"})


# --- CPU features ------------------------------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu avx2 AVX512F avx512_bf16 fma

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""


def test_cpuinfo_gives_the_first_processor_s_name_and_flags_in_lower_case():
    name, flags = parse_cpuinfo(CPUINFO)
    assert name == "AMD EPYC 9B14"
    assert flags == {"fpu", "avx2", "avx512f", "avx512_bf16", "fma"}


@pytest.mark.parametrize("cpu, avx512, bf16, amx", [
    (AVX2_EPYC, False, False, False), (BF16_EPYC, True, True, False),
    (AMX_XEON, True, True, True), (AVX512_NO_BF16, True, False, False)])
def test_native_bf16_is_read_from_the_flags_not_the_vendor(cpu, avx512, bf16, amx):
    assert (cpu.avx512, cpu.native_bf16, cpu.amx) == (avx512, bf16, amx)
    assert ("BF16 yes" in cpu.describe()) == bf16


def test_a_cpu_describes_itself_by_its_flags():
    assert AVX2_EPYC.describe() == "AMD EPYC 7B13 (AVX2; AVX-512 no, BF16 no, AMX no; flags from test)"
    assert AMX_XEON.describe() == ("Intel Xeon Platinum 8481C (AVX-512; AVX-512 yes, BF16 yes, AMX yes; "
                                   "flags from test)")
    assert CpuFeatures("Old", frozenset({"sse4_2"}), "test").describe().startswith("Old (no AVX2; ")


# --- the choice ------------------------------------------------------------------------------

@pytest.mark.parametrize("cpu", [BF16_EPYC, AMX_XEON])
def test_auto_takes_bf16_only_with_native_bf16_and_a_passed_card(card_copy, cpu):
    unchecked = choose_engine(card_copy, cpu=cpu, have_openvino=True)
    assert (unchecked.engine, unchecked.precision) == ("openvino", "fp32")
    assert any("check-precision" in note for note in unchecked.notes)
    checked = passed_bf16(card_copy)
    assert choose_engine(checked, cpu=cpu, have_openvino=True).precision == "bf16"
    assert choose_engine(checked, precision="fp32", cpu=cpu, have_openvino=True).precision == "fp32"


@pytest.mark.parametrize("cpu", [AVX2_EPYC, AVX512_NO_BF16])
def test_a_cpu_without_native_bf16_stays_in_float32_even_with_a_passed_card(card_copy, cpu):
    checked = passed_bf16(card_copy)
    choice = choose_engine(checked, cpu=cpu, have_openvino=True)
    assert (choice.engine, choice.precision, choice.device) == ("openvino", "fp32", "cpu")
    assert choice.notes == ()
    with pytest.raises(InputError, match="does not compute bf16 natively.*AVX512_BF16 or AMX"):
        choose_engine(checked, precision="bf16", cpu=cpu, have_openvino=True)


def test_explicit_bf16_without_a_passed_check_is_refused(card_copy):
    with pytest.raises(InputError, match="no passed bf16 agreement check.*check-precision"):
        choose_engine(card_copy, precision="bf16", cpu=AMX_XEON, have_openvino=True)
    failed = record_precision_check(card_copy, "bf16", {"passed": False})
    with pytest.raises(InputError, match="no passed bf16"):
        choose_engine(failed, precision="bf16", cpu=AMX_XEON, have_openvino=True)


def test_a_check_recorded_for_other_weights_does_not_count(card_copy):
    checked = passed_bf16(card_copy)
    assert passed_precision_check(checked, "bf16")
    data = json.loads(checked.card_path.read_text(encoding="utf-8"))
    data["precision_checks"]["bf16"]["weights_sha256"] = "0" * 64
    checked.card_path.write_text(json.dumps(data), encoding="utf-8")
    assert not passed_precision_check(read_model_card(checked.card_path), "bf16")
    assert choose_engine(read_model_card(checked.card_path), cpu=AMX_XEON, have_openvino=True).precision == "fp32"


def test_without_openvino_pytorch_runs_and_says_why(card_copy):
    choice = choose_engine(card_copy, cpu=AVX2_EPYC, have_openvino=False)
    assert choice.engine == "pytorch"
    assert any("pip install openvino" in note for note in choice.notes)
    with pytest.raises(InputError, match="OpenVINO is not installed"):
        choose_engine(card_copy, engine="openvino", cpu=AVX2_EPYC, have_openvino=False)


def test_a_gpu_runs_pytorch_in_float32(card_copy, monkeypatch):
    monkeypatch.setattr(engines, "_resolve_device", lambda device: "cuda")
    checked = passed_bf16(card_copy)
    choice = choose_engine(checked, cpu=AMX_XEON, have_openvino=True)
    assert (choice.engine, choice.precision, choice.device) == ("pytorch", "fp32", "cuda")
    with pytest.raises(InputError, match="OpenVINO runs on the CPU"):
        choose_engine(checked, engine="openvino", cpu=AMX_XEON, have_openvino=True)
    with pytest.raises(InputError, match="on a GPU use fp32"):
        choose_engine(checked, precision="bf16", cpu=AMX_XEON, have_openvino=True)


@pytest.mark.parametrize("engine, precision", [("tensorrt", "auto"), ("auto", "int4")])
def test_unknown_engines_and_precisions_are_refused_by_name(card_copy, engine, precision):
    with pytest.raises(InputError, match="Unknown"):
        choose_engine(card_copy, engine, precision, cpu=AVX2_EPYC, have_openvino=True)


def test_recording_a_check_keeps_the_card_and_its_weights(card_copy):
    before = json.loads(card_copy.card_path.read_text(encoding="utf-8"))
    updated = record_precision_check(card_copy, "bf16", {"passed": True, "worst_dice": 0.995})
    after = json.loads(card_copy.card_path.read_text(encoding="utf-8"))
    assert {key: value for key, value in after.items() if key != "precision_checks"} == before
    record = after["precision_checks"]["bf16"]
    assert record["worst_dice"] == 0.995 and record["weights_sha256"] == card_copy.sha256
    assert updated.data == after
    assert [p.name for p in card_copy.card_path.parent.iterdir() if p.suffix == ".part"] == []


def test_the_recorded_check_says_when_it_ran_in_utc(card_copy):
    import datetime

    record = record_precision_check(card_copy, "bf16", {"passed": True}).data["precision_checks"]["bf16"]
    checked = datetime.datetime.fromisoformat(record["checked"])
    now = datetime.datetime.now(datetime.timezone.utc)
    assert checked.utcoffset() == datetime.timedelta(0) and abs((now - checked).total_seconds()) < 60


def test_a_card_whose_check_cannot_be_written_is_left_as_it_was(card_copy, monkeypatch):
    before = card_copy.card_path.read_bytes()

    def no_rename(source, destination):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(engines.os, "replace", no_rename)
    with pytest.raises(OSError, match="No space"):
        record_precision_check(card_copy, "bf16", {"passed": True})
    assert card_copy.card_path.read_bytes() == before
    assert sorted(p.name for p in card_copy.card_path.parent.iterdir()) == sorted(
        [card_copy.card_path.name, card_copy.weights_path.name])


@pytest.mark.parametrize("record", ["passed", ["passed"], None])
def test_a_check_that_is_not_a_record_does_not_pass(card_copy, record):
    data = json.loads(card_copy.card_path.read_text(encoding="utf-8"))
    data["precision_checks"] = {"bf16": record}
    card_copy.card_path.write_text(json.dumps(data), encoding="utf-8")
    card = read_model_card(card_copy.card_path)
    assert engines.precision_check(card, "bf16") is None and not passed_precision_check(card, "bf16")


# --- simulated CPUs, end to end ----------------------------------------------------------------

def test_a_simulated_bf16_cpu_segments_in_bf16_and_says_so(card_copy, small_ct_phantom, monkeypatch):
    """PyTorch's CPU autocast computes bf16 on any CPU (emulated), so the whole automatic path
    of a bf16 machine runs here; the result records the precision."""
    monkeypatch.setattr(engines, "detect_cpu_features", lambda: AMX_XEON)
    checked = passed_bf16(card_copy)
    ct = Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras).slab(6, 10)
    reduced = segment_ct(ct, checked, engine="pytorch", keep_largest_component=False)
    exact = segment_ct(ct, checked, engine="pytorch", precision="fp32", keep_largest_component=False)
    assert (reduced.precision, exact.precision) == ("bf16", "fp32")
    assert reduced.engine.startswith("pytorch ") and " bf16 " in reduced.engine
    assert not np.array_equal(reduced.mask.array, exact.mask.array)  # bf16 really ran


# --- engines and their cache -------------------------------------------------------------------

@pytest.fixture
def fresh_engines(monkeypatch, tmp_path):
    """No engine kept from other tests, and an empty conversion cache."""
    monkeypatch.setattr(engines, "_ENGINES", {})
    cache = tmp_path / "engines"
    monkeypatch.setenv("PANCREASAI_ENGINE_CACHE", str(cache))
    return cache


def slices_of(phantom, count: int = 4) -> np.ndarray:
    from PancreasAILib.orientation import axial_reorientation
    from PancreasSegMoNetLib.preprocessing import DEFAULT_PREPROCESSING, model_slices

    volume = Volume(phantom.hu, phantom.ijk_to_ras)
    slices, _ = model_slices(axial_reorientation(volume).apply_volume(volume), DEFAULT_PREPROCESSING)
    return slices[:count, None]


def test_openvino_float32_matches_pytorch_float32(random_monet_card, small_ct_phantom, fresh_engines):
    recipe = monet_recipe(random_monet_card)
    batch = slices_of(small_ct_phantom)
    openvino_out = build_engine(random_monet_card, recipe, EngineChoice("openvino", "fp32", "cpu"))(batch)[0]
    torch_out = build_engine(random_monet_card, recipe, EngineChoice("pytorch", "fp32", "cpu"))(batch)[0]
    assert openvino_out.shape == torch_out.shape == (4, 1, 256, 256)
    assert openvino_out.dtype == np.float32
    assert 0.1 < float((torch_out > 0.5).mean()) < 0.9  # outputs straddle the threshold
    np.testing.assert_allclose(openvino_out, torch_out, atol=1e-5)


def first_conversion(card, phantom, cache):
    """`card`'s MoNet converted for OpenVINO float32 into the empty `cache`: its recipe, engine
    choice, a batch of two slices, the output on it, and the one cache folder it made."""
    recipe = monet_recipe(card)
    choice = EngineChoice("openvino", "fp32", "cpu")
    batch = slices_of(phantom, 2)
    first = build_engine(card, recipe, choice)(batch)[0]
    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    return recipe, choice, batch, first, folder


def test_the_conversion_is_cached_by_the_weights_and_reused(random_monet_card, small_ct_phantom,
                                                            fresh_engines, monkeypatch):
    import openvino

    recipe, choice, batch, first, folder = first_conversion(random_monet_card, small_ct_phantom, fresh_engines)
    assert random_monet_card.sha256[:16] in folder.name and openvino.__version__.split("-")[0] in folder.name
    source = json.loads((folder / "source.json").read_text(encoding="utf-8"))
    assert source["weights_sha256"] == random_monet_card.sha256
    assert (folder / "model.bin").stat().st_size > 4 * 400_000 * 0.9  # float32 weights, not fp16

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")
    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    monkeypatch.setattr(engines, "_ENGINES", {})
    np.testing.assert_array_equal(build_engine(random_monet_card, recipe, choice)(batch)[0], first)


def test_a_damaged_cached_conversion_is_converted_again(random_monet_card, small_ct_phantom, fresh_engines,
                                                        monkeypatch):
    recipe, choice, batch, first, folder = first_conversion(random_monet_card, small_ct_phantom, fresh_engines)
    (folder / "model.xml").write_text("<not a network", encoding="utf-8")
    monkeypatch.setattr(engines, "_ENGINES", {})
    np.testing.assert_array_equal(build_engine(random_monet_card, recipe, choice)(batch)[0], first)
    assert (folder / "model.xml").read_text(encoding="utf-8").startswith("<?xml")


def test_an_unwritable_cache_costs_time_not_the_result(random_monet_card, small_ct_phantom, tmp_path,
                                                       monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    monkeypatch.setattr(engines, "_ENGINES", {})
    monkeypatch.setenv("PANCREASAI_ENGINE_CACHE", str(not_a_folder / "engines"))
    engine = build_engine(random_monet_card, monet_recipe(random_monet_card), EngineChoice("openvino", "fp32", "cpu"))
    assert engine(slices_of(small_ct_phantom, 1))[0].shape == (1, 1, 256, 256)


def test_other_weights_get_their_own_conversion(random_monet_card, demo_monet_card, small_ct_phantom, fresh_engines):
    choice = EngineChoice("openvino", "fp32", "cpu")
    batch = slices_of(small_ct_phantom, 1)
    outputs = [build_engine(card, monet_recipe(card), choice)(batch)[0] for card in (random_monet_card, demo_monet_card)]
    assert len([p for p in fresh_engines.iterdir() if p.is_dir()]) == 2
    assert not np.allclose(outputs[0], outputs[1])


def test_a_missing_weights_file_is_said_even_with_a_cached_conversion(card_copy, fresh_engines, monkeypatch):
    recipe = monet_recipe(card_copy)
    choice = EngineChoice("openvino", "fp32", "cpu")
    build_engine(card_copy, recipe, choice)
    monkeypatch.setattr(engines, "_ENGINES", {})
    card_copy.weights_path.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        build_engine(card_copy, recipe, choice)


def test_a_cached_conversion_whose_files_changed_is_converted_again(random_monet_card, small_ct_phantom,
                                                                   fresh_engines, monkeypatch):
    recipe, choice, batch, first, folder = first_conversion(random_monet_card, small_ct_phantom, fresh_engines)
    weights = bytearray((folder / "model.bin").read_bytes())
    weights[len(weights) // 2] ^= 0xFF  # one flipped byte in a weight: the network still loads
    (folder / "model.bin").write_bytes(bytes(weights))
    monkeypatch.setattr(engines, "_ENGINES", {})
    np.testing.assert_array_equal(build_engine(random_monet_card, recipe, choice)(batch)[0], first)
    recorded = json.loads((folder / "source.json").read_text(encoding="utf-8"))["files_sha256"]
    assert recorded["model.bin"] == hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()


def test_without_openvino_the_pipeline_runs_on_pytorch_and_says_why(random_monet_card, small_ct_phantom,
                                                                    monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails, as where it is not installed
    choice = choose_engine(random_monet_card, precision="fp32")
    assert choice.engine == "pytorch" and any("pip install openvino" in note for note in choice.notes)
    result = segment_ct(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras).slab(6, 8), random_monet_card,
                        keep_largest_component=False)
    assert result.engine.startswith("pytorch ") and result.precision == "fp32"


def test_bf16_that_openvino_cannot_compile_here_runs_in_float32_and_says_so(card_copy, small_ct_phantom,
                                                                            fresh_engines, monkeypatch):
    """A CPU whose flags promise bf16 that OpenVINO then does not compile (simulated: this CPU
    has none): the engine falls back to float32, and its own choice, which the results record,
    says so."""
    import openvino

    monkeypatch.setattr(engines, "detect_cpu_features", lambda: AMX_XEON)
    if openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES").count("BF16"):
        pytest.skip("this CPU compiles bf16: nothing falls back")
    checked = passed_bf16(card_copy)
    choice = choose_engine(checked, have_openvino=True)
    assert (choice.engine, choice.precision) == ("openvino", "bf16")
    engine = build_engine(checked, monet_recipe(checked), choice)
    assert engine.choice.precision == "fp32" and "float32 was used" in engine.choice.notes[-1]
    result = segment_ct(Volume(small_ct_phantom.hu, small_ct_phantom.ijk_to_ras).slab(6, 8), checked)
    assert result.precision == "fp32" and " fp32 " in result.engine


def test_a_precision_check_that_cannot_compute_bf16_records_nothing(card_copy, small_ct_phantom,
                                                                    fresh_engines, monkeypatch):
    import openvino

    from PancreasAILib.volume_io import write_volume
    from PancreasSegMoNetLib.precision_check import check_precision

    if openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES").count("BF16"):
        pytest.skip("this CPU compiles bf16")
    monkeypatch.setattr("PancreasSegMoNetLib.precision_check.detect_cpu_features", lambda: AMX_XEON)
    card = card_copy
    before = card.card_path.read_bytes()
    ct = write_volume(Volume(small_ct_phantom.hu[6:8], small_ct_phantom.ijk_to_ras), fresh_engines.parent / "ct.nii.gz")
    with pytest.raises(InputError, match="could not compute bf16.*nothing was recorded"):
        check_precision([ct], card.weights_path, progress_format="json")
    assert card.card_path.read_bytes() == before


# --- batch sizes -------------------------------------------------------------------------------

class FakeClock:
    """Time that advances by a set cost per item of each batch size, as a network would."""

    def __init__(self, seconds_per_item: dict[int, float]) -> None:
        self.seconds_per_item = seconds_per_item
        self.now = 0.0
        self.sizes: list[int] = []

    def __call__(self) -> float:
        return self.now

    def network(self, batch: np.ndarray) -> list[np.ndarray]:
        self.sizes.append(len(batch))
        self.now += self.seconds_per_item[len(batch)] * len(batch) + (5.0 if self.sizes.count(len(batch)) == 1 else 0)
        return [batch * 2.0, batch[:, :1] + 1.0]


def test_the_fastest_batch_size_is_measured_kept_and_reused(tmp_path):
    store = tmp_path / "batch_sizes.json"
    clock = FakeClock({1: 0.10, 2: 0.06, 4: 0.05, 8: 0.07, 3: 1.0, 5: 1.0, 6: 1.0, 7: 1.0})
    items = np.arange(64, dtype=np.float32).reshape(32, 2)
    sizes = BatchSizes("net A", store, clock=clock)
    doubled, first_column = sizes.run(items, clock.network)
    np.testing.assert_array_equal(doubled, items * 2.0)  # every item once, in order
    np.testing.assert_array_equal(first_column, items[:, :1] + 1.0)
    assert clock.sizes[:8] == [1, 1, 2, 2, 4, 4, 8, 8]
    assert sizes.chosen == 4  # the first batch of each size (set-up, +5 s) is not what counts
    assert clock.sizes[8:] == [2]  # the 2 items left after 30 measured ones
    assert json.loads(store.read_text(encoding="utf-8")) == {"net A": 4}

    again = FakeClock(clock.seconds_per_item)
    BatchSizes("net A", store, clock=again).run(items[:14], again.network)
    assert again.sizes == [4, 4, 4, 2]
    other = FakeClock(clock.seconds_per_item)
    BatchSizes("net B", store, clock=other).run(items[:4], other.network)
    assert other.sizes[:3] == [1, 1, 2]  # another network is measured for itself


def measured(store, key: str = "net") -> BatchSizes:
    clock = FakeClock({1: 0.3, 2: 0.1, 4: 0.2, 8: 0.4})
    sizes = BatchSizes(key, store, clock=clock)
    sizes.run(np.zeros((30, 1), np.float32), clock.network)
    return sizes


def test_a_measured_batch_size_joins_those_of_other_networks(tmp_path):
    store = tmp_path / "cache" / "batch_sizes.json"  # the folder is made when first needed
    store.parent.mkdir()
    store.write_text(json.dumps({"other net": 8}), encoding="utf-8")
    assert measured(store).chosen == 2
    assert json.loads(store.read_text(encoding="utf-8")) == {"other net": 8, "net": 2}
    store.write_text(json.dumps(["not", "a", "table"]), encoding="utf-8")
    measured(store)
    assert json.loads(store.read_text(encoding="utf-8")) == {"net": 2}
    store.write_text("{damaged", encoding="utf-8")
    measured(store)
    assert json.loads(store.read_text(encoding="utf-8")) == {"net": 2}
    fresh = tmp_path / "new" / "folder" / "batch_sizes.json"
    measured(fresh)
    assert json.loads(fresh.read_text(encoding="utf-8")) == {"net": 2}


def test_a_batch_size_that_cannot_be_kept_is_still_used(tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    with caplog.at_level("WARNING"):
        sizes = measured(not_a_folder / "batch_sizes.json")
    assert sizes.chosen == 2 and "could not be kept" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_fixed_batch_size_is_used_as_given(tmp_path):
    clock = FakeClock({3: 1.0, 1: 1.0})
    BatchSizes("net", tmp_path / "store.json", fixed=3, clock=clock).run(np.zeros((7, 1), np.float32), clock.network)
    assert clock.sizes == [3, 3, 1]
    assert not (tmp_path / "store.json").exists()
    with pytest.raises(InputError, match="at least 1"):
        BatchSizes("net", None, fixed=0)


def test_measurement_unfinished_at_the_end_of_the_items_goes_on_with_the_next(tmp_path):
    store = tmp_path / "store.json"
    clock = FakeClock({1: 0.2, 2: 0.1, 4: 0.3, 8: 0.4})
    sizes = BatchSizes("net", store, clock=clock)
    sizes.run(np.zeros((5, 1), np.float32), clock.network)  # 1, 1, 2, 1 (a partial batch of 2)
    assert sizes.chosen is None and not store.exists()
    sizes.run(np.zeros((30, 1), np.float32), clock.network)
    assert sizes.chosen == 2 and json.loads(store.read_text(encoding="utf-8")) == {"net": 2}


def test_a_damaged_store_is_measured_again(tmp_path):
    store = tmp_path / "store.json"
    store.write_text("{not json", encoding="utf-8")
    assert BatchSizes("net", store).chosen is None
    store.write_text(json.dumps({"net": 0}), encoding="utf-8")
    assert BatchSizes("net", store).chosen is None
    store.write_text(json.dumps({"net": 2}), encoding="utf-8")
    assert BatchSizes("net", store).chosen == 2


# --- the pipeline on the fast engine -----------------------------------------------------------

def test_the_fast_engine_gives_pytorch_s_mask_on_a_tilted_flipped_ct(demo_monet_card, small_ct_phantom):
    """The shipped float32 path (OpenVINO, measured batches, thresholding only where
    reachable) against PyTorch float32 with the full back-resampling, on an oblique,
    anisotropic, flipped storage of the phantom: the same voxels. (precision is given: on a
    CPU with native bf16, 'auto' would take bf16 for the demo weights, whose card passed.)"""
    from PancreasSegMoNetLib import segmentation

    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("z", 25, degrees=True).as_matrix() @ np.diag([-1.0, 1.0, 1.0])
    ct = Volume(np.flip(small_ct_phantom.hu, 2).copy(), turn @ small_ct_phantom.ijk_to_ras)
    fast = segment_ct(ct, demo_monet_card, precision="fp32")
    assert fast.engine.startswith("openvino ") and fast.precision == "fp32"

    def full_resampling(source, shape, ijk_to_ras, threshold):
        return resample(source, shape, ijk_to_ras, order=1) >= threshold
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segmentation, "resampled_at_least", full_resampling)
        reference = segment_ct(ct, demo_monet_card, engine="pytorch", precision="fp32", batch_size=8)
    assert reference.engine.startswith("pytorch ")
    assert fast.voxel_count > 100
    np.testing.assert_array_equal(fast.mask.array, reference.mask.array)
