"""Federated training on Flower (Resources/Training/federated.py) with tiny phantoms: the global
model loads and runs in both modules like a centrally trained one, FedAvg weighs the sites by
their training examples, a site sends only weights and counts, a resumed server ends where an
uninterrupted one does, and on Flower's simulation engine one site and one round is the local
training run itself.

Most tests drive the real ServerApp logic (`federated_server.serve`) and the real ClientApp
(mods included) through `InProcessGrid`, a Flower Grid that hands each message to the ClientApp
in this process: the simulation engine costs about 15 s to start, so only the engine test pays it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

import federated
import federated_monet
from federated_bytes import round_bytes
import train_monet
from federated_server import FederatedError, FederatedSettings, check_replies, serve
from federated_site import SitePlan, site_cases, weights_sha256
from IPMNRiskLib.inference import RegionBox, assess
from IPMNRiskLib.registry import model_registry
from PancreasAILib.errors import InputError
from PancreasAILib.volume import Volume
from PancreasAILib.weights import read_model_card
from PancreasAIPhantoms.ct import make_ct_phantom
from PancreasAIPhantoms.mr import make_mr_phantom
from PancreasSegMoNetLib.segmentation import segment_ct

# 5 phantoms of 12 slices of 64 x 64 dealt to 2 sites (3 and 2 patients: unequal training slices),
# no test patients, batches of 2, 4 validation slices per site.
MONET_TINY = ["--phantoms", "5", "--phantom-shape", "12", "64", "64", "--input-size", "64", "--batch-size", "2",
              "--test-fraction", "0", "--max-val-slices", "4", "--device", "cpu"]
IPMN_TINY = ["--patients", "2", "--val-patients", "2", "--phantom-shape", "12", "64", "64", "--phantom-spacing",
             "3.5", "3.5", "5.0", "--architecture", "vit_tiny_patch16_224", "--architecture-params",
             json.dumps({"depth": 1, "embed_dim": 48, "num_heads": 3}), "--batch-size", "2", "--device", "cpu"]
#: The MoNet runs start at the sites' pooled pancreas fraction (counts asked before round 1).
MONET_PRIOR = [*MONET_TINY, "--prior-init"]
CASE_NAME = "phantom-0001"
DP_CLIPPING = 0.05


class InProcessGrid:
    """A Flower Grid whose nodes are ClientApp calls in this process, one Context per node
    (as a SuperNode keeps one); every message sent and every reply is kept for inspection."""

    def __init__(self, client_app, node_configs: list[dict]) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # the server's identity
        self.client_app = client_app
        self.contexts = {node_id: Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(),
                                          run_config={})
                         for node_id, config in enumerate(node_configs, start=101)}
        self.sent: list = []
        self.replies: list = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list:
        replies = [self.client_app(message, self.contexts[message.metadata.dst_node_id]) for message in messages]
        self.sent += list(messages)
        self.replies += replies
        return replies


def simulated_sites(count: int) -> list[dict]:
    """Node configs as Flower's simulation engine gives them."""
    return [{"partition-id": index, "num-partitions": count} for index in range(count)]


def run_federated(tmp_path, model: str, training_args: list, sites: int = 2, **settings) -> tuple:
    """(model file, grid) of a federated run of simulated sites in this process."""
    output = tmp_path / f"{model}.safetensors"
    chosen = FederatedSettings(model=model, output=str(output), training_args=tuple(training_args),
                               min_sites=sites, site_root=str(tmp_path / "sites"), **settings)
    grid = InProcessGrid(federated.build_client_app(), simulated_sites(sites))
    serve(grid, chosen, "test")
    return output, grid


def of_type(messages: list, kind: str) -> list:
    return [message for message in messages if message.metadata.message_type == kind]


@pytest.fixture(scope="module")
def monet_run(tmp_path_factory):
    """Two simulated MoNet sites, --prior-init, two rounds of one local step (FedAvg)."""
    return run_federated(tmp_path_factory.mktemp("monet"), "monet", MONET_PRIOR, rounds=2, local_steps=1)


@pytest.fixture(scope="module")
def interrupted_monet_run(tmp_path_factory):
    """The first round of `monet_run`, as a server stopped after it leaves it; returns its folder."""
    folder = tmp_path_factory.mktemp("interrupted")
    run_federated(folder, "monet", MONET_PRIOR, rounds=1, local_steps=1)
    return folder


@pytest.fixture(scope="module")
def ipmn_run(tmp_path_factory):
    """Two simulated IPMN sites, one round of two local steps at one of them (FedProx, half the
    sites per round, with Flower's DP wrapper)."""
    return run_federated(tmp_path_factory.mktemp("ipmn"), "ipmn", IPMN_TINY, rounds=1, local_steps=2,
                         strategy="fedprox", proximal_mu=0.1, fraction_sites=0.5, dp_noise_multiplier=0.5,
                         dp_clipping_norm=DP_CLIPPING)


def card_of(path) -> dict:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


# --- the global model is used like any other ------------------------------------------------------

def test_federated_monet_model_segments_a_phantom_in_the_segmentation_module(monet_run):
    output, _ = monet_run
    phantom = make_ct_phantom(50, shape=(12, 64, 64))
    result = segment_ct(Volume(phantom.hu, phantom.ijk_to_ras), read_model_card(output), device="cpu",
                        engine="pytorch")
    assert result.mask.shape == phantom.hu.shape


def test_federated_ipmn_model_assesses_a_phantom_in_ipmnrisk(ipmn_run):
    output, _ = ipmn_run
    phantom = make_mr_phantom(500, 2, shape=(12, 64, 64), spacing=(3.5, 3.5, 5.0))
    assessment = assess(Volume(phantom.t1, phantom.ijk_to_ras), Volume(phantom.t2, phantom.ijk_to_ras),
                        RegionBox(*phantom.pancreas_box_ras), model_registry().resolve(output), tta=False,
                        engine="pytorch")
    assert assessment.probabilities.sum() == pytest.approx(1.0)
    strategy = card_of(output)["training"]["federated"]["strategy"]
    assert {key: strategy[key] for key in ("name", "proximal_mu")} == {"name": "FedProx", "proximal_mu": 0.1}


def test_card_records_rounds_strategy_site_counts_and_each_rounds_weights(monet_run):
    output, _ = monet_run
    federated_record = card_of(output)["training"]["federated"]
    assert federated_record["rounds"] == 2
    assert federated_record["strategy"]["name"] == "FedAvg"
    assert [site["training_cases"] for site in federated_record["sites"]] == [2, 1]
    assert len(federated_record["round_weights_sha256"]) == 2
    assert federated_record["round_weights_sha256"][-1] == weights_sha256(load_file(str(output)))
    assert "phantom-" not in output.with_suffix(".json").read_text(encoding="utf-8")


def test_card_history_holds_each_sites_validation_in_every_round(monet_run):
    output, _ = monet_run
    history = card_of(output)["history"]
    assert [[site["site"] for site in row["per_site"]] for row in history] == [["site 1", "site 2"]] * 2
    assert all(0 <= site["val_dice"] <= 1 for row in history for site in row["per_site"])


def test_each_rounds_figures_are_the_sites_weighted_by_their_examples(monet_run):
    """A round's validation Dice weighs each site by its validation slices, its training loss by
    its training slices (the FedAvg weights)."""
    output, _ = monet_run
    card = card_of(output)
    training_examples = {site["site"]: site["training_examples"] for site in card["training"]["federated"]["sites"]}
    assert len(set(training_examples.values())) == 2  # unequal sites, else any weighting would pass
    for row in card["history"]:
        sites = row["per_site"]
        dice = sum(s["val_dice"] * s["validation_examples"] for s in sites) / sum(s["validation_examples"] for s in sites)
        assert row["val_dice"] == pytest.approx(dice, rel=1e-12)
        loss = (sum(s["train_loss"] * training_examples[s["site"]] for s in sites)
                / sum(training_examples[s["site"]] for s in sites))
        assert row["train_loss"] == pytest.approx(loss, rel=1e-12)


# --- the strategy ------------------------------------------------------------------------------------

def test_fedavg_weighs_each_site_by_its_training_examples(monet_run):
    _, grid = monet_run
    first_round = of_type(grid.replies, MessageType.TRAIN)[:2]
    counts = [reply.content["metrics"]["num-examples"] for reply in first_round]
    assert counts[0] != counts[1]  # else any weighting would pass
    second_round_global = of_type(grid.sent, MessageType.TRAIN)[2].content["arrays"]
    for key in ("head.conv.weight", "encoder0.entry.conv.weight"):
        sites = [reply.content["arrays"][key].numpy().astype(np.float64) for reply in first_round]
        expected = sum(n * weights for n, weights in zip(counts, sites)) / sum(counts)
        np.testing.assert_allclose(second_round_global[key].numpy(), expected, rtol=0, atol=1e-6)


def test_fedprox_pulls_a_sites_weights_towards_the_global_model(tmp_path):
    two_phantoms = [*MONET_TINY, "--phantoms", "2"]
    args = federated_monet.training_arguments(two_phantoms, tmp_path / "site" / "monet")
    site = federated_monet.open_site(args, two_phantoms, SitePlan())
    start = {key: value.clone() for key, value in site.run.network.state_dict().items()}

    def distance(mu: float) -> float:
        # two steps: at the first, w is w_global and the proximal term has no gradient
        state, _ = federated_monet.train_round(site, start, 1, 2, mu, rounds=1)
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k, _ in site.run.network.named_parameters())

    assert distance(1e4) < 0.5 * distance(0.0)


def test_with_a_fraction_of_the_sites_some_train_and_all_validate(ipmn_run):
    output, _ = ipmn_run
    (row,) = card_of(output)["history"]
    assert len(row["sites_trained"]) == 1
    assert [site["site"] for site in row["per_site"]] == ["site 1", "site 2"]


def test_with_differential_privacy_each_site_clips_its_update_and_the_card_says_so(ipmn_run):
    output, grid = ipmn_run
    global_arrays = of_type(grid.sent, MessageType.TRAIN)[0].content["arrays"]
    for reply in of_type(grid.replies, MessageType.TRAIN):
        arrays = reply.content["arrays"]
        update = np.sqrt(sum(float(((arrays[k].numpy() - global_arrays[k].numpy()) ** 2).sum()) for k in arrays))
        assert update <= DP_CLIPPING * (1 + 1e-4)
    privacy = card_of(output)["training"]["federated"]["strategy"]["differential_privacy"]
    assert (privacy["noise_multiplier"], privacy["clipping_norm"]) == (0.5, DP_CLIPPING)


def test_a_monet_round_moves_under_2_mb_each_way_per_site_over_70_times_less_than_unet64():
    monet, unet64 = round_bytes("monet"), round_bytes("unet64")
    assert monet["upload"] < 2e6 and monet["download"] < 2e6
    assert unet64["upload"] > 70 * monet["upload"]
    assert monet["upload"] > 4 * monet["parameters"]  # float32 weights, and not compressed away


# --- what leaves a site ----------------------------------------------------------------------------

def _numbers_only(record) -> bool:
    return all(isinstance(value, (int, float)) for value in record.values())


def serialized(flower_object) -> bytes:
    """The bytes Flower sends for a message or record: the object and all its children."""
    children = flower_object.children or {}
    return flower_object.deflate() + b"".join(serialized(child) for child in children.values())


def test_a_site_sends_only_weights_and_counts(monet_run):
    _, grid = monet_run
    for reply in of_type(grid.replies, MessageType.TRAIN):
        assert set(reply.content.keys()) == {"arrays", "metrics"}
        assert set(reply.content["metrics"]) == {"num-examples", "train-loss"}
    for reply in of_type(grid.replies, MessageType.EVALUATE):
        assert set(reply.content.keys()) == {"metrics"}
        assert set(reply.content["metrics"]) <= {"num-examples", "val-loss", "val-dice", "training-cases",
                                                 "validation-cases", "test-cases", "training-examples",
                                                 "validation-examples"}
    queries = of_type(grid.replies, MessageType.QUERY)
    assert len(queries) == 2
    for reply in queries:
        assert set(reply.content.keys()) == {"metrics"}
        assert set(reply.content["metrics"]) == {"num-examples", "training-pancreas-pixels", "training-pixels"}
    for reply in grid.replies:
        assert all(_numbers_only(record) for record in reply.content.metric_records.values())
        assert b"phantom" not in serialized(reply)


def test_server_refuses_a_reply_that_names_a_case():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7,
                      message_type=MessageType.EVALUATE)
    leaky = Message(RecordDict({"metrics": MetricRecord({"num-examples": 3, "val-dice": 0.5}),
                                "cases": ConfigRecord({"worst": CASE_NAME})}), reply_to=request)
    with pytest.raises(FederatedError, match="config record 'cases'"):
        check_replies([leaky], 1, "evaluate", None, {})
    per_case = Message(RecordDict({"metrics": MetricRecord({"num-examples": 3, "val-dice-case-1": 0.5})}),
                       reply_to=request)
    with pytest.raises(FederatedError, match="metric 'val-dice-case-1'"):
        check_replies([per_case], 1, "evaluate", None, {})


# --- resume --------------------------------------------------------------------------------------------

def test_server_restarted_after_a_round_ends_with_the_uninterrupted_runs_weights(monet_run, interrupted_monet_run):
    uninterrupted, _ = monet_run
    output, grid = run_federated(interrupted_monet_run, "monet", MONET_PRIOR, rounds=2, local_steps=1, resume=True)
    assert [row["round"] for row in card_of(output)["history"]] == [1, 2]
    assert (card_of(output)["training"]["federated"]["round_weights_sha256"]
            == card_of(uninterrupted)["training"]["federated"]["round_weights_sha256"])
    # the starting prior is the first run's, kept in the checkpoint, not asked again
    assert of_type(grid.sent, MessageType.QUERY) == []
    assert card_of(output)["training"]["federated"]["start"] == card_of(uninterrupted)["training"]["federated"]["start"]


def test_resume_refuses_a_run_with_other_settings(interrupted_monet_run):
    with pytest.raises(InputError, match="local-steps: 1 -> 2"):
        run_federated(interrupted_monet_run, "monet", MONET_PRIOR, rounds=2, local_steps=2, resume=True)


# --- simulated sites ------------------------------------------------------------------------------

def test_simulated_sites_hold_every_patient_once_with_all_its_cases():
    patients = ["a", "a", "b", "c", "c", "d", "e"]
    shares = [site_cases(SitePlan(index, 3), patients, None, seed=0) for index in range(3)]
    assert sorted(sum(shares, [])) == list(range(len(patients)))
    assert all({patients[i] for i in share}.isdisjoint({patients[i] for i in other})
               for share in shares for other in shares if share is not other)


def test_non_iid_sites_hold_patients_sorted_by_the_key():
    patients, sizes = ["a", "b", "c", "d"], [40.0, 10.0, 30.0, 20.0]
    shares = [[patients[i] for i in site_cases(SitePlan(index, 2, non_iid=True), patients, sizes, seed=0)]
              for index in range(2)]
    assert shares == [["b", "d"], ["a", "c"]]


def test_a_setting_the_federated_run_cannot_honour_is_refused_before_the_engine_starts(tmp_path, capsys):
    assert federated.main(["simulate", "--model", "monet", "--sites", "2", "--output", str(tmp_path / "monet"),
                           *MONET_TINY, "--crop", "32"]) == 2
    assert "does not take --crop" in capsys.readouterr().err
    assert not (tmp_path / "monet.run").exists()


def test_settings_travel_through_a_flower_run_config():
    settings = FederatedSettings(model="monet", output="out/monet.safetensors", training_args=("--phantoms", "3"),
                                 rounds=4, strategy="fedprox", proximal_mu=0.01, non_iid=True)
    assert FederatedSettings.from_config(settings.to_config()) == settings


def test_with_prior_init_the_global_model_starts_at_the_sites_pooled_pancreas_fraction(monet_run):
    output, grid = monet_run
    counts = [reply.content["metrics"] for reply in of_type(grid.replies, MessageType.QUERY)]
    pooled = sum(c["training-pancreas-pixels"] for c in counts) / sum(c["training-pixels"] for c in counts)
    assert 0 < pooled < 0.5  # else the clipping, not the counts, would set it
    start = card_of(output)["training"]["federated"]["start"]["output_prior"]
    assert start["pancreas_fraction"] == pytest.approx(pooled, rel=1e-12)
    first_global = of_type(grid.sent, MessageType.TRAIN)[0].content["arrays"]
    bias = first_global["head.bn.bias"].numpy()
    np.testing.assert_allclose(bias, np.log(pooled / (1 - pooled)), rtol=1e-6)


def test_one_site_with_prior_init_trains_its_first_round_as_train_monet_does(tmp_path):
    """The pooled fraction of one site is its own: round 1 is train_monet.py --prior-init's first
    epoch, bit for bit (in this process, so the same threads)."""
    tiny = ["--phantoms", "3", "--phantom-shape", "12", "64", "64", "--input-size", "64", "--batch-size", "2",
            "--device", "cpu", "--prior-init"]
    output, _ = run_federated(tmp_path / "federated", "monet", tiny, sites=1, rounds=1, local_steps=2)
    assert train_monet.main([*tiny, "--epochs", "1", "--steps-per-epoch", "2",
                             "--output", str(tmp_path / "local" / "monet")]) == 0
    local = load_file(str(tmp_path / "local" / "monet.run" / "checkpoints" / "epoch-0001.safetensors"))
    global_model = load_file(str(output.with_suffix(".run") / "checkpoints" / "epoch-0001.safetensors"))
    assert set(global_model) <= set(local)
    assert [key for key in global_model if not torch.equal(global_model[key], local[key])] == []


# --- the engine ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_site_one_fedavg_round_on_the_simulation_engine_is_the_local_training_run(tmp_path):
    tiny = ["--phantoms", "3", "--phantom-shape", "12", "64", "64", "--input-size", "64", "--batch-size", "2",
            "--device", "cpu"]
    paths = {name: os.environ.get(name) for name in ("PYTHONPATH", "PYTHONHOME")}
    assert federated.main(["simulate", "--model", "monet", "--sites", "1", "--rounds", "1", "--local-steps", "2",
                           "--output", str(tmp_path / "federated" / "monet"), *tiny]) == 0
    # the engine changes the Python paths of the environment: the caller gets its own back
    assert {name: os.environ.get(name) for name in paths} == paths
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the engine's worker (one CPU each): the same order of float sums
    try:
        assert train_monet.main([*tiny, "--epochs", "1", "--steps-per-epoch", "2",
                                 "--output", str(tmp_path / "local" / "monet")]) == 0
    finally:
        torch.set_num_threads(threads)
    local = load_file(str(tmp_path / "local" / "monet.run" / "checkpoints" / "epoch-0001.safetensors"))
    global_model = load_file(str(tmp_path / "federated" / "monet.run" / "checkpoints" / "epoch-0001.safetensors"))
    assert set(global_model) <= set(local)
    assert [key for key in global_model if not torch.equal(global_model[key], local[key])] == []


# --- deployment over the loopback address ------------------------------------------------------------

def write_tls_and_node_keys(folder: Path) -> None:
    """A test CA, the SuperLink's certificate for 127.0.0.1 signed by it, and one EC key pair per
    site (OpenSSH format, as Flower's node authentication reads them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = dict(not_valid_before=now - datetime.timedelta(minutes=5), not_valid_after=now + datetime.timedelta(days=1))

    def certificate(subject: str, key, issuer: str, issuer_key, *extensions):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"]))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    (folder / "ca.pem").write_bytes(certificate("test CA", ca_key, "test CA", ca_key,
                                                (x509.BasicConstraints(ca=True, path_length=None), True)))
    (folder / "server.pem").write_bytes(certificate(
        "127.0.0.1", server_key, "test CA", ca_key,
        (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for site in ("a", "b", "c"):
        key = ec.generate_private_key(ec.SECP384R1())
        (folder / f"site-{site}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        (folder / f"site-{site}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.mark.slow
def test_a_real_superlink_and_two_supernodes_train_a_round_over_loopback_with_tls_and_node_auth(tmp_path):
    keys = tmp_path / "keys"
    write_tls_and_node_keys(keys)
    bin_folder = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": os.pathsep.join([bin_folder, os.environ.get("PATH", "")])}
    link_port = free_port()
    started = []

    def start(name: str, *command: str) -> None:
        home = tmp_path / f"flwr-home-{name}"
        home.mkdir()
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        started.append(subprocess.Popen(command, env={**environment, "FLWR_HOME": str(home)}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True))

    def flwr(*arguments: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(bin_folder) / "flwr"), *arguments], env={**environment, "FLWR_HOME": str(cli)},
                              capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

    cli = tmp_path / "flwr-home-cli"
    cli.mkdir()
    (cli / "config.toml").write_text(f"""[superlink]
default = "loopback"

[superlink.loopback]
address = "127.0.0.1:{link_port}"
root-certificates = "{keys / 'ca.pem'}"
""")
    output = tmp_path / "server" / "monet"
    try:
        start("superlink", str(Path(bin_folder) / "flower-superlink"), "--port", str(link_port),
              "--ssl-ca-certfile", str(keys / "ca.pem"), "--ssl-certfile", str(keys / "server.pem"),
              "--ssl-keyfile", str(keys / "server.key"), "--enable-supernode-auth",
              "--disable-runtime-dependency-installation")
        wait_for_port(link_port)
        for site, first_seed in (("c", 20), ("a", 0), ("b", 10)):  # site c's key is never registered
            if site != "c":
                assert flwr("supernode", "register", str(keys / f"site-{site}.pub"), "loopback",
                            timeout=60).returncode == 0
            start(f"site-{site}", str(Path(bin_folder) / "flower-supernode"), "--superlink", f"127.0.0.1:{link_port}",
                  "--root-certificates", str(keys / "ca.pem"), "--auth-supernode-private-key",
                  str(keys / f"site-{site}.key"), "--port", str(free_port()), "--node-config",
                  f"data='--phantoms 3 --first-seed {first_seed}' work-dir='{tmp_path / ('site-' + site)}'")
        assert federated.main(["app", str(tmp_path / "app"), "--model", "monet", "--rounds", "1", "--local-steps", "1",
                               "--output", str(output), *MONET_TINY[2:]]) == 0
        run = flwr("run", str(tmp_path / "app"), "loopback", "--stream", timeout=540)
        assert "Global model" in run.stdout + run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
        unregistered_exit = started[1].poll()  # site c, while a and b still serve
    finally:
        for process in started:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # the process and what it started (its own session)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
    card = read_model_card(output.with_suffix(".json"))
    # every connected node validates every round: the unregistered site c never joined, and gave up
    assert [site["training_cases"] for site in card.data["training"]["federated"]["sites"]] == [2, 2]
    assert unregistered_exit is not None
    log = (tmp_path / "site-c.log").read_text(encoding="utf-8")
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log  # refused at the SuperLink
    phantom = make_ct_phantom(50, shape=(12, 64, 64))
    result = segment_ct(Volume(phantom.hu, phantom.ijk_to_ras), card, device="cpu", engine="pytorch")
    assert result.mask.shape == phantom.hu.shape

