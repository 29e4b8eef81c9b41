"""The IPMN risk ViT through the inference engines: OpenVINO agrees with PyTorch (attention
rollout included), the choice is visible in every result, and `ipmn-risk check-precision`
records in the model card whether bf16 agrees with float32, which the bf16 gate then reads."""

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import use_model_for_default
from PancreasAILib import engines
from PancreasAILib.cpu import CpuFeatures
from PancreasAILib.engines import EngineChoice, choose_engine, passed_precision_check
from PancreasAILib.volume import Volume
from PancreasAILib.volume_io import write_volume
from PancreasAILib.weights import read_model_card
from IPMNRiskLib import cli
from IPMNRiskLib.inference import RegionBox, assess, vit_engine
from IPMNRiskLib.network import load_vit
from IPMNRiskLib.rollout import logits_and_rollout_maps
from IPMNRiskLib.tta import predict

OPENVINO_FP32 = EngineChoice("openvino", "fp32", "cpu")
PYTORCH_FP32 = EngineChoice("pytorch", "fp32", "cpu")
BF16_XEON = CpuFeatures("Intel Xeon Platinum 8481C", frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"}), "test")


class Sink:
    """Collects what a run in this process reports."""

    def __init__(self):
        self.messages = []

    def progress(self, fraction, status):
        pass

    def message(self, text):
        self.messages.append(text)

    def case_failed(self, error):
        pass


@pytest.fixture(scope="module")
def mr_case(small_mr_phantom):
    p = small_mr_phantom
    return Volume(p.t1, p.ijk_to_ras), Volume(p.t2, p.ijk_to_ras), RegionBox(*p.pancreas_box_ras)


@pytest.fixture
def grid_input():
    return np.random.default_rng(7).random((2, 192, 192)).astype(np.float32)


# --- OpenVINO against PyTorch -------------------------------------------------------------------

def test_openvino_fp32_gives_pytorch_s_class_probabilities_and_heat_map(mr_case, random_vit_card):
    t1, t2, region = mr_case
    ov = assess(t1, t2, region, random_vit_card, engine="openvino", precision="fp32")
    pt = assess(t1, t2, region, random_vit_card, engine="pytorch", precision="fp32")
    assert ov.engine.startswith("openvino ") and pt.engine.startswith("pytorch ")
    assert ov.risk_class == pt.risk_class
    np.testing.assert_allclose(ov.probabilities, pt.probabilities, atol=1e-4)
    np.testing.assert_allclose(ov.spread, pt.spread, atol=1e-4)
    assert ov.heat_map.array.max() == pytest.approx(1.0)
    np.testing.assert_allclose(ov.heat_map.array, pt.heat_map.array, atol=1e-4)
    np.testing.assert_allclose(ov.grid_heat, pt.grid_heat, atol=1e-4)


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_heads_fused_in_the_converted_graph_roll_out_as_the_model_s_own_attention_does(
        random_vit_card, grid_input, head_fusion):
    # the reference: every head captured from the PyTorch model, fused and rolled out in numpy
    import torch

    batch = torch.from_numpy(grid_input[None])
    logits, maps = logits_and_rollout_maps(load_vit(random_vit_card), batch, head_fusion, 0.3)
    prediction = predict(vit_engine(random_vit_card, OPENVINO_FP32, True, head_fusion), grid_input, tta=False,
                         head_fusion=head_fusion, discard_ratio=0.3)
    np.testing.assert_allclose(prediction.patch_map, maps[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(prediction.probabilities, torch.softmax(logits.double(), 1)[0].numpy(), atol=1e-5)


def test_without_rollout_the_engine_gives_the_logits_alone_and_the_same_probabilities(random_vit_card, grid_input):
    logits_only = vit_engine(random_vit_card, OPENVINO_FP32, rollout=False)
    assert len(logits_only(grid_input[None])) == 1
    with_rollout = predict(vit_engine(random_vit_card, OPENVINO_FP32), grid_input)
    without = predict(logits_only, grid_input, rollout=False)
    np.testing.assert_allclose(without.probabilities, with_rollout.probabilities, atol=1e-5)
    with pytest.raises(ValueError, match="logits only"):
        predict(logits_only, grid_input)


def test_the_eight_views_go_to_the_engine_as_one_batch(random_vit_card, grid_input):
    engine = vit_engine(random_vit_card, PYTORCH_FP32)
    batches = []

    class Watched(engines.Engine):
        def __call__(self, batch):
            batches.append(batch.shape)
            return engine(batch)

    predict(Watched(PYTORCH_FP32), grid_input)
    assert batches == [(8, 2, 192, 192)]


# --- the choice, visible ------------------------------------------------------------------------

@pytest.fixture
def case_files(tmp_path, small_mr_phantom):
    p = small_mr_phantom
    write_volume(Volume(p.t1, p.ijk_to_ras), tmp_path / "in" / "p1_t1.nii.gz")
    write_volume(Volume(p.t2, p.ijk_to_ras), tmp_path / "in" / "p1_t2.nii.gz")
    center, size = (",".join(f"{v:.3f}" for v in values) for values in p.pancreas_box_ras)
    cases = tmp_path / "in" / "cases.csv"
    cases.write_text(f'case,t1,t2,roi_center,roi_size\np1,p1_t1.nii.gz,p1_t2.nii.gz,"{center}","{size}"\n',
                     encoding="utf-8")
    return cases


@pytest.mark.parametrize("requested, engine", [("auto", "openvino"), ("pytorch", "pytorch")])
def test_the_result_files_and_the_run_say_which_engine_and_precision(tmp_path, case_files, random_vit_card,
                                                                     requested, engine):
    sink = Sink()
    out = tmp_path / "out"
    code = cli.main(["batch", str(case_files), "-o", str(out), "--model", str(random_vit_card.weights_path),
                     "--engine", requested, "--precision", "fp32", "--no-scene"], sink=sink)
    assert code == 0
    label = f"{engine} {engines.engine_version(engine)} fp32 cpu"
    summary = json.loads((out / "p1_ipmn_result.json").read_text(encoding="utf-8"))
    assert (summary["engine"], summary["precision"]) == (label, "fp32")
    with open(out / "results.csv", newline="", encoding="utf-8") as stream:
        (row,) = list(csv.DictReader(stream))
    assert (row["engine"], row["precision"]) == (label, "fp32")
    assert [m for m in sink.messages if m.startswith("Engine:")] == [f"Engine: {label}."]


def test_an_engine_that_cannot_be_had_is_refused_before_any_case(tmp_path, case_files, random_vit_card,
                                                                monkeypatch):
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    from PancreasAILib.errors import InputError

    with pytest.raises(InputError, match="OpenVINO is not installed"):
        cli.main(["batch", str(case_files), "-o", str(tmp_path / "out"), "--model",
                  str(random_vit_card.weights_path), "--engine", "openvino"], sink=Sink())
    assert not (tmp_path / "out" / "p1_ipmn_result.json").exists()


def test_the_slicer_route_passes_engine_and_precision_and_marks_the_nodes(mr_nodes, random_vit_card, monkeypatch):
    from IPMNRiskLib import logic, registry
    from IPMNRiskLib import result_nodes as adapter

    arguments = logic.assessment_arguments("t1.nrrd", "t2.nrrd", (0, 0, 0), (1, 1, 1), "out", None, "cpu", True,
                                           "pytorch", "fp32")
    parsed = cli.build_parser().parse_args(arguments)
    assert (parsed.engine, parsed.precision) == ("pytorch", "fp32")

    use_model_for_default(monkeypatch, registry, random_vit_card)
    outcome = logic.assess(*mr_nodes, tta=False, engine="pytorch", precision="fp32")
    assert outcome.engine == f"pytorch {engines.engine_version('pytorch')} fp32 cpu" and outcome.precision == "fp32"
    for node in (outcome.heat_map_node, outcome.table_node):
        assert node.GetAttribute(adapter.ENGINE_ATTRIBUTE) == outcome.engine
        assert node.GetAttribute(adapter.PRECISION_ATTRIBUTE) == "fp32"


# --- check-precision ------------------------------------------------------------------------------

@pytest.fixture
def card_copy(tmp_path, random_vit_card):
    """The random ViT's card and weights copied, so the check writes into the copy only."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in (random_vit_card.card_path, random_vit_card.weights_path):
        shutil.copy2(path, folder / path.name)
    return read_model_card(folder / random_vit_card.card_path.name)


def check_precision(card, cases, sink=None):
    return cli.main(["check-precision", "--model", str(card.weights_path), "--cases", str(cases)], sink=sink or Sink())


def test_check_precision_records_a_pass_that_the_bf16_gate_then_reads(card_copy, case_files):
    assert not passed_precision_check(card_copy, "bf16")
    with pytest.raises(Exception, match="no passed bf16"):
        choose_engine(card_copy, precision="bf16", device="cpu", cpu=BF16_XEON)
    sink = Sink()
    assert check_precision(card_copy, case_files, sink) == 0
    card = read_model_card(card_copy.card_path)
    record = card.data["precision_checks"]["bf16"]
    native = engines.detect_cpu_features().native_bf16
    assert record["passed"] is True and record["native"] is native
    assert "0.02" in record["criterion"] and record["weights_sha256"] == card.sha256
    (case,) = record["cases"]
    assert case["case"] == "p1" and case["fp32_class"] == case["bf16_class"]
    assert 0 < case["max_probability_difference"] == record["worst_difference"] <= 0.02
    assert record["engine"].endswith(" bf16 cpu")
    assert record["engine"].startswith("openvino" if native else "pytorch")
    assert passed_precision_check(card, "bf16")
    assert choose_engine(card, precision="auto", device="cpu", cpu=BF16_XEON, have_openvino=True).precision == "bf16"
    emulated = [m for m in sink.messages if "emulates" in m]
    assert bool(emulated) is not native
    assert any("check passed" in m for m in sink.messages)


@pytest.mark.parametrize("shift", [[0.0, 0.0, 0.3], [0.0, 0.0, 6.0]], ids=["probabilities", "class"])
def test_a_bf16_that_disagrees_is_recorded_as_failed_and_bf16_stays_off(card_copy, case_files, monkeypatch,
                                                                       shift):
    def disagreeing(run):
        def call(self, batch):
            outputs = run(self, batch)
            if self.choice.precision == "bf16":
                outputs[0] = outputs[0] + np.float32(shift)
            return outputs
        return call

    for engine_class in (engines.TorchEngine, engines.OpenVINOEngine):
        monkeypatch.setattr(engine_class, "__call__", disagreeing(engine_class.__call__))
    assert check_precision(card_copy, case_files) == 1
    card = read_model_card(card_copy.card_path)
    record = card.data["precision_checks"]["bf16"]
    assert record["passed"] is False and record["worst_difference"] > 0.02
    assert not passed_precision_check(card, "bf16")
    assert choose_engine(card, precision="auto", device="cpu", cpu=BF16_XEON, have_openvino=True).precision == "fp32"


@pytest.mark.parametrize("fp32_class, bf16_class, difference, passed", [
    (2, 2, 0.0, True), (2, 2, 0.02, True), (2, 2, 0.0201, False), (1, 2, 0.001, False)])
def test_the_criterion_is_the_same_class_and_probabilities_within_0_02(fp32_class, bf16_class, difference, passed):
    rows = [{"case": "a", "fp32_class": 0, "bf16_class": 0, "max_probability_difference": 0.001},
            {"case": "b", "fp32_class": fp32_class, "bf16_class": bf16_class,
             "max_probability_difference": difference}]
    record = cli.precision_record(rows, EngineChoice("pytorch", "bf16", "cpu"), False)
    assert record["passed"] is passed and record["worst_difference"] == max(0.001, difference)
    assert (record["native"], record["cases"]) == (False, rows)


def test_bf16_is_computed_by_openvino_where_the_cpu_has_it_natively(monkeypatch):
    from PancreasAILib import cpu

    monkeypatch.setattr(cpu, "detect_cpu_features", lambda: BF16_XEON)
    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    assert cli.low_precision_choice() == (EngineChoice("openvino", "bf16", "cpu"), True)
    monkeypatch.setattr(cpu, "detect_cpu_features",
                        lambda: CpuFeatures("AMD EPYC", frozenset({"avx2", "fma"}), "test"))
    assert cli.low_precision_choice() == (EngineChoice("pytorch", "bf16", "cpu"), False)
