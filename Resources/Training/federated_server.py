"""The server's side of a federated run on Flower: the settings, the rounds, what a site's reply
may hold, the checkpoint after every round, and the global model's card.

Each round: the strategy (Flower's FedAvg or FedProx, optionally inside Flower's client-side
DP wrapper) samples the sites, sends them the global weights, averages their weights
weighted by their number of training examples, and every site validates the new global
weights; the server logs each site's validation and writes a checkpoint (the weights and
the history), so that `--resume` after a server restart goes on from the last finished round.
The card records the strategy, the rounds, the sites as counts and the SHA256 of each round's
global weights (`federated_site.weights_sha256`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shlex
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from PancreasAILib.errors import InputError, PancreasAIError
from PancreasAILib.weights import ModelCard, save_model

from trainkit.checkpoint import load_checkpoint_of_run, save_checkpoint
from trainkit.model_card import DEFAULT_PACKAGES, software_versions
from trainkit.run_files import RunFiles
from trainkit.seeding import derived_seed

import federated_ipmn
import federated_monet
from federated_site import weights_sha256

logger = logging.getLogger("federated")

MODELS = {"monet": federated_monet, "ipmn": federated_ipmn}
STRATEGIES = ("fedavg", "fedprox")
#: The records a site's reply may hold, and the numbers in them: weights and counts, a mean
#: loss and one validation figure per site; never a case name, an image or a per-case number.
TRAIN_REPLY_METRICS = {"num-examples", "train-loss"}
EVALUATE_REPLY_METRICS = {"num-examples", "val-loss", "val-dice", "val-accuracy", "val-balanced-accuracy",
                          "training-cases", "validation-cases", "test-cases", "training-examples",
                          "validation-examples"}
WEIGHTING = "num-examples"
#: Before round 1, a model may ask each site for counts it needs to start (MoNet's --prior-init).
QUERY_REPLY_METRICS = {"num-examples", *federated_monet.PRIOR_COUNTS}
ALLOWED_METRICS = {"train": TRAIN_REPLY_METRICS, "evaluate": EVALUATE_REPLY_METRICS, "query": QUERY_REPLY_METRICS}


class FederatedError(PancreasAIError):
    """A site failed, or sent what a site must not send."""


@dataclass(frozen=True)
class FederatedSettings:
    """Everything the server decides; `training_args` are train_monet.py's or train_ipmn.py's
    options (in a simulation with the data source the sites share)."""

    model: str
    output: str
    training_args: tuple = ()
    rounds: int = 3
    local_steps: int = 10
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    fraction_sites: float = 1.0
    min_sites: int = 2
    non_iid: bool = False
    resume: bool = False
    dp_noise_multiplier: float = 0.0
    dp_clipping_norm: float = 0.0
    round_timeout_s: float = 3600.0
    #: Simulation only: where the simulated sites keep their files.
    site_root: str = ""

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"--model must be one of {', '.join(MODELS)}; got {self.model}.")
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy must be fedavg or fedprox; got {self.strategy}.")
        if self.strategy == "fedavg" and self.proximal_mu:
            raise InputError("--proximal-mu belongs to --strategy fedprox.")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise InputError("FedProx needs --proximal-mu above 0 (0 is FedAvg).")
        if self.rounds < 1 or self.local_steps < 1 or self.min_sites < 1:
            raise InputError("--rounds, --local-steps and --min-sites must be at least 1.")
        if not 0 < self.fraction_sites <= 1:
            raise InputError(f"--fraction-sites must lie in (0, 1]; got {self.fraction_sites}.")
        if (self.dp_noise_multiplier > 0) != (self.dp_clipping_norm > 0) or self.dp_noise_multiplier < 0:
            raise InputError("Differential privacy needs both --dp-noise-multiplier and --dp-clipping-norm above 0.")

    @property
    def uses_dp(self) -> bool:
        return self.dp_noise_multiplier > 0

    def to_config(self) -> dict:
        """Flat, Flower run-config form (dashed keys; the training options as one string)."""
        values = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        values["training-args"] = shlex.join(self.training_args)
        return values

    @classmethod
    def from_config(cls, config: dict) -> "FederatedSettings":
        """From a Flower run config (pyproject.toml's [tool.flwr.app.config] and --run-config)."""
        names = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise InputError(f"Unknown federated setting(s): {', '.join(unknown)}.")
        values = {}
        for key, value in config.items():
            field = names[key]
            if field.name == "training_args":
                values[field.name] = tuple(shlex.split(str(value)))
            else:
                kind = type(field.default) if field.default is not dataclasses.MISSING else str
                values[field.name] = kind(value)
        return cls(**values)

    def fingerprint(self) -> dict:
        """What must not change when a run is resumed (it may run more rounds)."""
        return {key: value for key, value in self.to_config().items()
                if key not in ("rounds", "resume", "round-timeout-s")}

    def site_config(self) -> dict:
        """What every site is told with each message: the model, its options and the split."""
        config = {"model": self.model, "training-args": shlex.join(self.training_args), "rounds": self.rounds,
                  "local-steps": self.local_steps, "non-iid": self.non_iid}
        if self.site_root:
            config["site-root"] = self.site_root
        return config


# --- the strategy ------------------------------------------------------------------------------------

def make_strategy(settings: FederatedSettings, site_count: Optional[int] = None):
    """Flower's FedAvg or FedProx, weighted by the sites' "num-examples", every site validating
    every round; inside Flower's client-side fixed-clipping DP wrapper when asked."""
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx

    common = dict(fraction_train=settings.fraction_sites, fraction_evaluate=1.0, min_train_nodes=1,
                  min_evaluate_nodes=settings.min_sites, min_available_nodes=settings.min_sites,
                  weighted_by_key=WEIGHTING)
    strategy = (FedProx(**common, proximal_mu=settings.proximal_mu) if settings.strategy == "fedprox"
                else FedAvg(**common))
    if settings.uses_dp:
        sampled = max(1, int((site_count or settings.min_sites) * settings.fraction_sites))
        strategy = DifferentialPrivacyClientSideFixedClipping(strategy, settings.dp_noise_multiplier,
                                                              settings.dp_clipping_norm, sampled)
    return strategy


def strategy_record(settings: FederatedSettings) -> dict:
    record = {"name": "FedProx" if settings.strategy == "fedprox" else "FedAvg",
              "weighting": "each site's number of training examples",
              "fraction_of_sites_per_round": settings.fraction_sites}
    if settings.strategy == "fedprox":
        record["proximal_mu"] = settings.proximal_mu
    if settings.uses_dp:
        record["differential_privacy"] = {
            "wrapper": "flwr DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod",
            "noise_multiplier": settings.dp_noise_multiplier, "clipping_norm": settings.dp_clipping_norm,
            "how": "each site clips its update (local minus global weights) to the clipping norm; the server adds "
                   "Gaussian noise of standard deviation noise_multiplier x clipping_norm / sampled sites to the "
                   "average, on every array (BatchNorm statistics included); no privacy budget (epsilon) is accounted"}
    return record


# --- replies ---------------------------------------------------------------------------------------

def check_replies(replies: Iterable, server_round: int, kind: str, expected_arrays: Optional[dict],
                  site_labels: dict) -> list:
    """The replies, each checked: no error, and nothing but the weights (named and shaped as
    the model's) and the allowed numbers. FederatedError otherwise, naming the site."""
    replies = list(replies)
    allowed = ALLOWED_METRICS[kind]
    for reply in replies:
        site = site_labels.setdefault(reply.metadata.src_node_id, f"site {len(site_labels) + 1}")
        if reply.has_error():
            raise FederatedError(f"Round {server_round}: {site} could not {kind}: {reply.error.reason}")
        content = reply.content
        extra = [f"config record '{key}'" for key in content.config_records]
        arrays = dict(content.array_records)
        if kind == "train":
            if list(arrays) != ["arrays"]:
                extra += [f"array record '{key}'" for key in arrays if key != "arrays"]
            record = arrays.get("arrays")
            if record is None or {k: tuple(v.shape) for k, v in record.items()} != expected_arrays:
                raise FederatedError(f"Round {server_round}: {site} sent weights that are not the model's.")
        else:
            extra += [f"array record '{key}'" for key in arrays]
        metrics = dict(content.metric_records)
        extra += [f"metric record '{key}'" for key in metrics if key != "metrics"]
        extra += [f"metric '{key}'" for key in metrics.get("metrics", {}) if key not in allowed]
        if extra:
            raise FederatedError(f"Round {server_round}: {site} sent {', '.join(extra)}; a site sends only its "
                                 "weights and counts. Check that every site runs this version of federated.py.")
        if "metrics" not in metrics or WEIGHTING not in metrics["metrics"]:
            raise FederatedError(f"Round {server_round}: {site} did not say how many examples it has.")
    return replies


def _site_rows(replies: list, site_labels: dict) -> list:
    rows = [{"site": site_labels[r.metadata.src_node_id], **dict(r.content["metrics"])} for r in replies]
    return sorted(rows, key=lambda row: int(row["site"].split()[-1]))


def _per_site(trained: list, validated: list) -> list:
    """One row per site of the round: its training loss (when it trained) and validation."""
    losses = {row["site"]: row["train-loss"] for row in trained}
    return [{"site": row["site"], "train_loss": losses.get(row["site"]),
             **{key.replace("-", "_"): value for key, value in row.items() if key.startswith("val-")},
             "validation_examples": int(row[WEIGHTING])} for row in validated]


def _weighted(rows: list, key: str) -> Optional[float]:
    rows = [row for row in rows if key in row]
    total = sum(row[WEIGHTING] for row in rows)
    return sum(row[key] * row[WEIGHTING] for row in rows) / total if total else None


# --- the rounds -----------------------------------------------------------------------------------

def _restore_dtypes(arrays, reference: dict) -> dict:
    """The aggregated arrays as tensors of the model's own dtypes (FedAvg averages integer
    counters such as BatchNorm's num_batches_tracked in floating point)."""
    import numpy as np
    import torch

    state = {}
    for key, value in reference.items():
        array = arrays[key].numpy()
        if not np.issubdtype(np.dtype(str(value.dtype).replace("torch.", "")), np.floating):
            array = np.rint(array)
        state[key] = torch.from_numpy(np.array(array, order="C")).to(value.dtype)  # 0-d stays 0-d
    return state


def _send(grid, messages, timeout: float) -> list:
    messages = list(messages)
    return list(grid.send_and_receive(messages, timeout=timeout)) if messages else []


def query_start_counts(grid, settings: FederatedSettings, names: tuple, site_labels: dict) -> dict:
    """The sums over the sites of the counts `names`, asked of every site connected once
    `min_sites` are (a site that joins later is not counted)."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    _, nodes = sample_nodes(grid, settings.min_sites, settings.min_sites)
    config = ConfigRecord({**settings.site_config(), "server-round": 0, "counts": list(names)})
    messages = [Message(RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=node)
                for node in nodes]
    replies = check_replies(_send(grid, messages, settings.round_timeout_s), 0, "query", None, site_labels)
    totals = {name: 0 for name in names}
    for reply in replies:
        counts = reply.content["metrics"]
        missing = [name for name in names if name not in counts]
        if missing:
            raise FederatedError(f"Before round 1: {site_labels[reply.metadata.src_node_id]} did not send "
                                 f"{', '.join(missing)}.")
        for name in names:
            totals[name] += int(counts[name])
    logger.info("Before round 1: %s summed over %d site(s)", ", ".join(f"{k} {v}" for k, v in totals.items()),
                len(replies))
    return totals


@dataclass
class RoundResult:
    """One finished round: the new global weights and the history row (per-site rows inside)."""

    state: dict
    row: dict
    site_counts: dict


def run_round(grid, strategy, settings: FederatedSettings, model, server_round: int, state: dict,
              reference: dict, site_labels: dict) -> RoundResult:
    """Train at the sampled sites, average, and have every site validate the new weights."""
    from flwr.app import ArrayRecord, ConfigRecord

    started = time.perf_counter()
    shapes = {key: tuple(value.shape) for key, value in reference.items()}
    config = {**settings.site_config(), "server-round": server_round}
    replies = check_replies(_send(grid, strategy.configure_train(server_round, ArrayRecord(state),
                                                                 ConfigRecord(config), grid), settings.round_timeout_s),
                            server_round, "train", shapes, site_labels)
    if not replies:
        raise FederatedError(f"Round {server_round}: no site trained.")
    aggregated, _ = strategy.aggregate_train(server_round, replies)
    state = _restore_dtypes(aggregated, reference)
    trained = _site_rows(replies, site_labels)
    evaluations = check_replies(_send(grid, strategy.configure_evaluate(server_round, ArrayRecord(state),
                                                                        ConfigRecord(config), grid),
                                      settings.round_timeout_s), server_round, "evaluate", None, site_labels)
    validated = _site_rows(evaluations, site_labels)
    metric = model.VALIDATION_METRIC
    row = {"round": server_round, "sites_trained": [r["site"] for r in trained],
           "train_loss": _weighted(trained, "train-loss"), metric.replace("-", "_"): _weighted(validated, metric),
           "per_site": _per_site(trained, validated), "weights_sha256": weights_sha256(state),
           "seconds": round(time.perf_counter() - started, 1)}
    for site in validated:
        logger.info("round %d: %s validation %s %.4f (%d examples)%s", server_round, site["site"], metric,
                    site[metric], site[WEIGHTING], "" if site["site"] in row["sites_trained"] else
                    ", not trained this round")
    logger.info("round %d: %d site(s) trained, train loss %.4f, weighted %s %.4f (%.0f s)", server_round,
                len(trained), row["train_loss"], metric, row[metric.replace("-", "_")], row["seconds"])
    counts = {site["site"]: {key.replace("-", "_"): int(value) for key, value in site.items()
                             if key.endswith(("-cases", "-examples")) and key != WEIGHTING} for site in validated}
    return RoundResult(state, row, counts)


def cpu_state(network) -> dict:
    """A copy of the network's weights as CPU tensors."""
    return {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}


def serve(grid, settings: FederatedSettings, command: str = "") -> ModelCard:
    """Run the rounds with the sites on `grid` (a Flower Grid), a checkpoint after each; returns
    the global model's card."""
    model = MODELS[settings.model]
    files = RunFiles.for_output(settings.output)
    args = model.training_arguments(settings.training_args, settings.output)
    network = model.initial_network(args)
    reference = cpu_state(network)
    state, history, sites, first, start = reference, [], {}, 1, {}
    fingerprint = settings.fingerprint()
    site_labels: dict = {}
    if settings.resume:
        checkpoint = load_checkpoint_of_run(files.checkpoints, fingerprint)
        if checkpoint is None:
            raise InputError(f"--resume: there is no finished round in {files.checkpoints}; start without --resume.")
        state = {key[len("model."):]: value for key, value in checkpoint.tensors.items()}
        history, sites, first = checkpoint.state["history"], checkpoint.state["sites"], checkpoint.epoch + 1
        start = checkpoint.state.get("start", {})
        logger.info("Resuming after round %d (global weights %s...).", checkpoint.epoch,
                    history[-1]["weights_sha256"][:12])
    elif model.start_counts(args):
        start = model.start_from_counts(network, query_start_counts(grid, settings, model.start_counts(args),
                                                                    site_labels))
        state = cpu_state(network)
    strategy = make_strategy(settings)
    for server_round in range(first, settings.rounds + 1):
        random.seed(derived_seed(args.seed, server_round))  # which sites Flower samples
        result = run_round(grid, strategy, settings, model, server_round, state, reference, site_labels)
        state = result.state
        history.append(result.row)
        sites.update(result.site_counts)
        save_checkpoint(files.checkpoints, server_round, {f"model.{k}": v for k, v in state.items()},
                        {"run": fingerprint, "history": history, "sites": sites, "start": start})
    network.load_state_dict(state)
    last = history[-1]
    metrics = {"validation": {key: value for key, value in last.items() if key not in ("per_site", "sites_trained")},
               "validation_per_site": last["per_site"]}
    extra = {"data": f"federated over {len(sites)} site(s); the data stayed at the sites",
             "software": software_versions((*DEFAULT_PACKAGES, "flwr")), "command": command}
    return save_model(state, files.weights, model.model_card(
        args, network, federated_record(settings, model, sites, history, start), metrics, history, extra))


def federated_record(settings: FederatedSettings, model, sites: dict, history: list, start: dict) -> dict:
    by_number = sorted(sites.items(), key=lambda item: int(item[0].split()[-1]))
    site_list = [{"site": name, **counts} for name, counts in by_number]
    return {
        "engine": "Flower",
        "strategy": strategy_record(settings),
        "rounds": len(history),
        "local_steps_per_round": settings.local_steps,
        "examples": model.EXAMPLES,
        "sites": site_list,
        "simulated_split": ({"non_iid": settings.non_iid} if settings.site_root else None),
        **({"start": start} if start else {}),
        "round_weights_sha256": [row["weights_sha256"] for row in history],
        "weights_sha256_how": "federated_site.weights_sha256: every tensor's name, dtype, shape and bytes, "
                              "in name order",
    }
