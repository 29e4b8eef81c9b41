"""The training kit shared by the MoNet and IPMN scripts: protocol options, checkpoints without
pickle, random states, file hashes, curves."""

import argparse
import dataclasses
import json
import math
import random
from typing import ClassVar

import numpy as np
import pytest
import torch

from trainkit.checkpoint import (from_json_value, load_latest_checkpoint, optimizer_parts, restore_optimizer,
                                 save_checkpoint, to_json_value)
from trainkit.distributed import Distributed
from trainkit.hashing import FileHashes
from trainkit.protocol import (add_protocol_arguments, changed_fields, option, preset_field, protocol_from_arguments,
                               protocol_record, protocol_table)
from trainkit.runlog import Curves
from trainkit.seeding import (checkpoint_rng_states, generator_states, restore_checkpoint_rng_states,
                              restore_generator_states)


@dataclasses.dataclass(frozen=True)
class ExampleProtocol:
    FIXED: ClassVar[dict] = {"optimizer": "Adam"}
    learning_rate: float = option(0.003, "Adam learning rate", flags=("--learning-rate", "--lr"))
    batch_size: int = option(8, "samples per step")
    flips: bool = option(True, "random flips")


def parse(*arguments) -> ExampleProtocol:
    parser = argparse.ArgumentParser()
    add_protocol_arguments(parser, ExampleProtocol)
    return protocol_from_arguments(ExampleProtocol, parser.parse_args(list(arguments)))


def test_protocol_defaults_are_the_options_defaults():
    assert parse() == ExampleProtocol()


def test_protocol_fields_are_overridden_by_their_options():
    assert parse("--lr", "0.01", "--batch-size", "4", "--no-flips") == ExampleProtocol(0.01, 4, False)


def test_protocol_record_holds_fixed_choices_and_every_field():
    assert protocol_record(ExampleProtocol()) == {"optimizer": "Adam", "learning_rate": 0.003,
                                                  "batch_size": 8, "flips": True}


@dataclasses.dataclass(frozen=True)
class PresetProtocol:
    preset: str = preset_field()
    learning_rate: float = option(0.003, "Adam learning rate", flags=("--lr",), source="article")
    batch_size: int = option(16, "samples per step", source="authors' code", ours=8, why="CPU memory")
    jitter: int = option(0, "window jitter")


def parse_preset(*arguments) -> PresetProtocol:
    parser = argparse.ArgumentParser()
    add_protocol_arguments(parser, PresetProtocol)
    return protocol_from_arguments(PresetProtocol, parser.parse_args(list(arguments)))


def test_paper_preset_is_the_default_and_ours_takes_our_values():
    assert parse_preset() == PresetProtocol() == PresetProtocol("paper", 0.003, 16, 0)
    assert parse_preset("--protocol", "ours") == PresetProtocol("ours", 0.003, 8, 0)


def test_an_option_given_wins_over_either_preset():
    assert parse_preset("--protocol", "ours", "--batch-size", "16").batch_size == 16
    assert parse_preset("--batch-size", "8").batch_size == 8


def test_record_says_whose_value_each_setting_has():
    origins = protocol_record(parse_preset("--protocol", "ours", "--lr", "0.01"))["origins"]
    assert origins == {"learning_rate": "command line", "batch_size": "ours (CPU memory)",
                       "jitter": "ours (not in the paper)"}
    origins = protocol_record(parse_preset())["origins"]
    assert origins["learning_rate"] == "paper and ours (article)"
    assert origins["batch_size"] == "paper (authors' code)"


def test_a_setting_that_differs_between_presets_must_say_why():
    with pytest.raises(ValueError, match="why"):
        option(16, "samples per step", ours=8)


def test_protocol_table_lists_each_setting_with_both_values_and_sources():
    rows = {row["setting"]: row for row in protocol_table(PresetProtocol)}
    assert set(rows) == {"learning_rate", "batch_size", "jitter"}
    assert (rows["batch_size"]["paper"], rows["batch_size"]["ours"], rows["batch_size"]["option"]) == \
        (16, 8, "--batch-size")
    assert rows["learning_rate"]["option"] == "--lr"


def test_changed_fields_name_what_differs():
    assert changed_fields({"a": 1, "b": 2}, {"a": 1, "b": 3}) == ["b: 2 -> 3"]


def test_non_finite_numbers_survive_plain_json():
    document = json.loads(json.dumps(to_json_value({"best": math.inf, "betas": (0.9, 0.99)})))
    restored = from_json_value(document)
    assert restored["best"] == math.inf and restored["betas"] == [0.9, 0.99]


def _stepped_model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.NAdam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def test_optimizer_continues_identically_after_a_checkpoint_round_trip(tmp_path):
    model, optimizer = _stepped_model_and_optimizer()
    tensors, document = optimizer_parts(optimizer)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    save_checkpoint(tmp_path, 3, tensors, {"optimizer": document})
    checkpoint = load_latest_checkpoint(tmp_path)

    copy = torch.nn.Linear(4, 2)
    copy.load_state_dict({k[6:]: v for k, v in checkpoint.tensors.items() if k.startswith("model.")})
    copy_optimizer = torch.optim.NAdam(copy.parameters(), lr=1e-2)
    restore_optimizer(copy_optimizer, checkpoint.tensors, checkpoint.state["optimizer"])
    batch = torch.randn(5, 4)
    for net, opt in ((model, optimizer), (copy, copy_optimizer)):
        opt.zero_grad()
        net(batch).pow(2).sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters()))
    assert copy_optimizer.param_groups[0]["betas"] == optimizer.param_groups[0]["betas"]


def test_only_the_newest_checkpoint_is_kept(tmp_path):
    for epoch in (1, 2):
        save_checkpoint(tmp_path, epoch, {"x": torch.zeros(2)}, {"epoch": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.json", "epoch-0002.safetensors"]
    assert load_latest_checkpoint(tmp_path).state == {"epoch": 2}


def test_checkpoint_with_damaged_tensors_is_not_used(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(2)}, {})
    (tmp_path / "epoch-0001.safetensors").write_bytes(b"damaged")
    assert load_latest_checkpoint(tmp_path) is None


def two_complete_checkpoints(folder, epochs=(9, 10)):
    """What a crash between completing the newer pair and removing the older one leaves."""
    older, newer = epochs
    save_checkpoint(folder, older, {"x": torch.full((2,), float(older))}, {"epoch": older})
    kept = {path.name: path.read_bytes() for path in folder.iterdir()}
    save_checkpoint(folder, newer, {"x": torch.full((2,), float(newer))}, {"epoch": newer})
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    assert len(list(folder.glob("epoch-*.json"))) == 2


def test_resuming_after_a_crash_takes_the_newest_of_two_complete_checkpoints(tmp_path):
    two_complete_checkpoints(tmp_path)  # epochs 9 and 10: the number, not the text, is newest
    checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.epoch == 10 and checkpoint.state == {"epoch": 10}
    assert torch.equal(checkpoint.tensors["x"], torch.full((2,), 10.0))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    two_complete_checkpoints(tmp_path)
    (tmp_path / "epoch-0010.safetensors").write_bytes(b"cut short")
    checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.epoch == 9 and torch.equal(checkpoint.tensors["x"], torch.full((2,), 9.0))


def test_checkpoint_files_hold_no_pickle(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(2)}, {"note": "plain"})
    json.loads((tmp_path / "epoch-0001.json").read_text(encoding="utf-8"))
    assert (tmp_path / "epoch-0001.safetensors").read_bytes()[8:9] == b"{"  # safetensors JSON header


def test_generators_draw_the_same_numbers_after_restoring_their_states():
    sampler, rng = torch.Generator().manual_seed(3), np.random.default_rng(3)
    random.seed(3)
    np.random.seed(3)
    tensors, document = generator_states({"sampler": sampler}, {"rng": rng})
    document = from_json_value(json.loads(json.dumps(to_json_value(document))))
    expected = (torch.rand(3, generator=sampler), rng.random(3), random.random(), np.random.random())
    restore_generator_states(tensors, document, {"sampler": sampler}, {"rng": rng})
    drawn = (torch.rand(3, generator=sampler), rng.random(3), random.random(), np.random.random())
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1])
    assert drawn[2:] == expected[2:]


def test_a_resumed_run_draws_the_numbers_of_the_uninterrupted_one_dropout_included():
    dist = Distributed(0, 0, 1, torch.device("cpu"))
    sampler, rng = torch.Generator().manual_seed(5), np.random.default_rng(5)
    torch.manual_seed(5)
    tensors, document = checkpoint_rng_states(dist, {"sampler": sampler}, {"rng": rng})
    document = from_json_value(json.loads(json.dumps(to_json_value(document))))
    expected = (torch.rand(3, generator=sampler), rng.random(3), torch.rand(3))  # the last: dropout's stream
    restore_checkpoint_rng_states(tensors, document, dist, {"sampler": sampler}, {"rng": rng}, seed=5, position=1)
    drawn = (torch.rand(3, generator=sampler), rng.random(3), torch.rand(3))
    assert torch.equal(drawn[0], expected[0]) and np.array_equal(drawn[1], expected[1])
    assert torch.equal(drawn[2], expected[2])


def test_a_checkpoint_of_another_process_count_reseeds_each_process_with_a_warning(caplog):
    dist = Distributed(0, 0, 1, torch.device("cpu"))
    tensors, document = checkpoint_rng_states(dist, {}, {})
    tensors["rng.process"] = torch.cat([tensors["rng.process"]] * 2)  # as if written by 2 processes
    restore_checkpoint_rng_states(tensors, document, dist, {}, {}, seed=5, position=3)
    first = torch.rand(3)
    restore_checkpoint_rng_states(tensors, document, dist, {}, {}, seed=5, position=3)
    assert torch.equal(torch.rand(3), first)
    assert "written by 2 processes, this run has 1" in caplog.text


def test_file_hash_is_remembered_until_the_file_changes(tmp_path):
    data = tmp_path / "ct.nii.gz"
    data.write_bytes(b"first")
    hashes = FileHashes(tmp_path / "hashes.json")
    first = hashes.sha256(data)
    hashes.save()
    data.write_bytes(b"second, longer")
    assert FileHashes(tmp_path / "hashes.json").sha256(data) != first


def test_curves_csv_has_one_row_per_epoch(tmp_path):
    curves = Curves(tmp_path / "curves.csv", None)
    history = []
    for epoch in (1, 2):
        history.append({"epoch": epoch, "loss": 1.0 / epoch})
        curves.write(history)
    assert (tmp_path / "curves.csv").read_text(encoding="utf-8").splitlines() == ["epoch,loss", "1,1.0", "2,0.5"]


def test_one_process_shards_nothing_away_and_sums_to_itself():
    single = Distributed(0, 0, 1, torch.device("cpu"))
    assert single.shard(8) == slice(0, 8)
    assert single.sum([1.5, 2]) == [1.5, 2.0]
    assert single.run_on_main(lambda: 7) == 7


def test_shards_of_a_batch_cover_it_once():
    shards = [Distributed(rank, rank, 4, torch.device("cpu")).shard(8) for rank in range(4)]
    covered = sorted(i for shard in shards for i in range(8)[shard])
    assert covered == list(range(8))


def run_example_script(tmp_path, body):
    import logging

    from trainkit.script import run_script

    log_file = tmp_path / "train.log"
    code = run_script("train_example.py", [], log_file=log_file, device="cpu", body=body,
                      logger=logging.getLogger("train_example"), on_interrupt="Run it again with --resume.")
    return code, log_file.read_text(encoding="utf-8")


def test_a_training_script_stopped_by_sigterm_says_how_to_continue(tmp_path):
    import signal
    import time

    steps = []

    def body(dist):
        signal.raise_signal(signal.SIGTERM)
        for _ in range(200):
            steps.append(1)
            time.sleep(0.005)

    code, log = run_example_script(tmp_path, body)
    assert code == 143
    assert "Stopped (SIGTERM). Run it again with --resume." in log
    assert len(steps) < 200


def test_ctrl_c_inside_a_pytorch_call_lands_after_it(tmp_path):
    import signal
    import time

    layers = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    visited = []

    def body(dist):
        layers.apply(lambda module: visited.append(module) or (len(visited) == 1 and signal.raise_signal(signal.SIGINT)))
        visited.append("ours")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pass

    code, log = run_example_script(tmp_path, body)
    assert code == 130 and "Interrupted. Run it again with --resume." in log
    assert len(visited) == 6


def test_checkpoint_state_keeps_numpy_and_torch_scalars_as_plain_numbers(tmp_path):
    from pathlib import Path

    state = {"history": [{"epoch": np.int64(1), "loss": np.float32(0.25), "lr": torch.tensor(0.5)}],
             "best": {"value": np.float64("-inf"), "at": (np.int32(2), 3)}, "output": Path("/runs/ipmn"),
             "note": "plain"}
    save_checkpoint(tmp_path / "run" / "fold-3" / "checkpoints", 1, {"x": torch.zeros(2)}, state)
    restored = load_latest_checkpoint(tmp_path / "run" / "fold-3" / "checkpoints").state
    assert restored == {"history": [{"epoch": 1, "loss": 0.25, "lr": 0.5}],
                        "best": {"value": -math.inf, "at": [2, 3]}, "output": "/runs/ipmn", "note": "plain"}
    assert type(restored["history"][0]["epoch"]) is int and type(restored["history"][0]["loss"]) is float


def test_skipped_checkpoint_is_logged_naming_the_file_and_the_reason(tmp_path, caplog):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(2)}, {})
    (tmp_path / "epoch-0001.safetensors").write_bytes(b"damaged")
    with caplog.at_level("WARNING", logger="trainkit.checkpoint"):
        assert load_latest_checkpoint(tmp_path) is None
    assert [record.getMessage() for record in caplog.records] == [
        f"Skipping the damaged checkpoint {tmp_path / 'epoch-0001.json'} (its tensors file does not match)."]


def test_loaded_checkpoint_names_its_file(tmp_path):
    path = save_checkpoint(tmp_path, 4, {"x": torch.zeros(2)}, {})
    assert load_latest_checkpoint(tmp_path).path == path == tmp_path / "epoch-0004.json"


def test_saving_clears_an_older_checkpoint_that_lost_its_tensors_file(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": torch.zeros(2)}, {})
    (tmp_path / "epoch-0001.safetensors").unlink()
    save_checkpoint(tmp_path, 2, {"x": torch.ones(2)}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0002.json", "epoch-0002.safetensors"]


class CountingMomentum(torch.optim.Optimizer):
    """An optimizer like some third-party ones: a plain-int counter and a tensor whose name has a
    dot; parameters of a group without momentum keep only the counter."""

    def __init__(self, params, lr=0.1, betas=(0.9, 0.5), momentum=True):
        super().__init__(params, {"lr": lr, "betas": betas, "momentum": momentum})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                state["count"] = state.get("count", 0) + 1
                update = param.grad
                if group["momentum"]:
                    update = state.setdefault("velocity.slow", torch.zeros_like(param))
                    update.mul_(group["betas"][0]).add_(param.grad)
                param.add_(update, alpha=-group["lr"] / state["count"])


def test_optimizer_state_with_plain_numbers_and_dotted_names_round_trips(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    groups = lambda net: [{"params": [net.weight]}, {"params": [net.bias], "momentum": False}]  # noqa: E731
    optimizer = CountingMomentum(groups(model))
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    tensors, document = optimizer_parts(optimizer)
    save_checkpoint(tmp_path, 2, tensors, {"optimizer": document})
    checkpoint = load_latest_checkpoint(tmp_path)

    copy = CountingMomentum(groups(torch.nn.Linear(3, 2)))
    restore_optimizer(copy, checkpoint.tensors, checkpoint.state["optimizer"])
    saved, restored = optimizer.state_dict()["state"], copy.state_dict()["state"]
    assert sorted(restored) == sorted(saved) == [0, 1]
    assert restored[0]["count"] == restored[1]["count"] == 2 and type(restored[1]["count"]) is int
    assert torch.equal(restored[0]["velocity.slow"], saved[0]["velocity.slow"]) and "velocity.slow" not in restored[1]
    assert copy.param_groups[0]["betas"] == (0.9, 0.5)
