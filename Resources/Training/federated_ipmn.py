"""The IPMN risk ViT in a federated run: a site's cases, its local training steps and
validation, and, on the server, the starting weights and the model card.

A site reads its cases as train_ipmn.py does (phantoms, --cohort or --cyst-x), prepares them with
the module's own pre-processing and trains with `ipmn_training.TrainingRun`'s step (class
weights, flips and quarter turns, Adam). The optimiser starts afresh in every round; the
learning-rate schedule spans all rounds (round r's steps are steps (r - 1) x local steps + 1 ...).
Pre-processing that fits statistics on the training cases (--preprocessing paper or
standardisation) is refused: every site would fit its own landmarks, and the global model can
carry only one set.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from PancreasAILib.errors import InputError
from IPMNRiskLib.network import TASKS

import cyst_x
import train_ipmn
from ipmn_data import (card_preprocessing, central_samples, phantom_cases, prepare_cases, read_cohort_csv,
                       training_samples)
from ipmn_folds import holdout_split
from ipmn_networks import build_network, parameter_count
from ipmn_setup import (architecture_of, cache_of, pretrained_of, pretrained_record, steps_of, task_description,
                        task_labels, with_task_labels)
from ipmn_training import (IPMNProtocol, TrainingRun, check_protocol, fit_class_weights, full_protocol_record,
                           ipmn_protocol_from_arguments, validation_metrics)
from trainkit.distributed import Distributed, resolve_training_device
from trainkit.initial_weights import initial_weights_record, load_initial_weights
from trainkit.run_files import RunFiles
from trainkit.seeding import seed_everything, use_deterministic_kernels

from federated_site import (FEDERATED_OPTIMIZER, FEDERATED_SELECTION, SitePlan, frozen_parameters,
                            round_seed, site_cases, with_proximal_term)

logger = logging.getLogger("federated")

EXAMPLES = "training windows"
VALIDATION_METRIC = "val-accuracy"


def training_arguments(argv: Sequence[str], output: str | Path) -> argparse.Namespace:
    """train_ipmn.py's options (without a cohort or --cyst-x: phantoms)."""
    args = train_ipmn.build_parser().parse_args([*argv, "--output", str(output)])
    if args.resume:
        raise InputError("Federated training does not take --resume in the training options: give it to "
                         "federated.py, which resumes the rounds.")
    if args.cv_results:
        raise InputError("Federated training does not take --cv-results: the cross-validation is not federated.")
    steps = steps_of(args, not (args.cohort or args.cyst_x))
    if steps.get("standardisation"):
        raise InputError("Federated training takes --preprocessing none only: intensity standardisation fits "
                         "landmarks on the training cases, and each site would fit its own.")
    return args


def _protocol(args) -> IPMNProtocol:
    return ipmn_protocol_from_arguments(args)


# --- the server's side ---------------------------------------------------------------------------

def initial_network(args):
    """The global model of round 0: a site's starting ViT (same seed), from --pretrained-file or
    --initial-weights when given."""
    phantoms = not (args.cohort or args.cyst_x)
    architecture, params = architecture_of(args, phantoms)
    seed_everything(args.seed)
    network = build_network("early-fusion", architecture, params, pretrained_of(args, "early-fusion", architecture),
                            len(TASKS[_protocol(args).task]))
    if args.initial_weights:
        load_initial_weights(network, args.initial_weights, architecture)
    return network


def start_counts(args) -> tuple[str, ...]:
    """No counts are needed before round 1: every site starts from the server's weights."""
    return ()


def preprocessing_of(args) -> dict:
    protocol = _protocol(args)
    return card_preprocessing(steps_of(args, not (args.cohort or args.cyst_x)), protocol.normalisation)


def model_card(args, network, federated: dict, metrics: dict, history: list, training_extra: dict) -> dict:
    """The card of the global model: train_ipmn.py's fields that do not depend on one site's
    data, and `federated` (strategy, rounds, sites as counts, weights per round)."""
    phantoms = not (args.cohort or args.cyst_x)
    architecture, params = architecture_of(args, phantoms)
    protocol = _protocol(args)
    return {
        "name": RunFiles.for_output(args.output).weights.stem,
        "title": f"{args.title} (federated)",
        "architecture": architecture,
        "architecture_params": params,
        "parameters": parameter_count(network),
        "task": task_description(protocol.task),
        "classes": list(TASKS[protocol.task]),
        "preprocessing": preprocessing_of(args),
        "intended_use": args.intended_use,
        "training": {
            "federated": federated,
            "protocol": {**full_protocol_record(protocol), "checkpoint_selection": FEDERATED_SELECTION,
                         "optimizer_state": FEDERATED_OPTIMIZER},
            "class_weights": ("fitted on each site's training cases" if protocol.class_weights == "balanced"
                              else protocol.class_weights),
            "pretrained": pretrained_record(pretrained_of(args, "early-fusion", architecture)),
            "initial_weights": initial_weights_record(args.initial_weights),
            "seed": args.seed,
            **training_extra,
        },
        "metrics": metrics,
        "history": history,
        "licence": "Apache-2.0",
    }


# --- a site ----------------------------------------------------------------------------------------

@dataclass
class IPMNSite:
    args: argparse.Namespace
    protocol: IPMNProtocol
    network: object
    train: object  # WindowSamples
    val: object  # WindowSamples
    class_weights: list
    dist: Distributed
    checkpoints: Path
    case_counts: dict
    first_round_torch_state: object

    @property
    def training_examples(self) -> int:
        return len(self.train)

    @property
    def validation_examples(self) -> int:
        return len(self.val)

    def counts(self) -> dict:
        return {"training-cases": self.case_counts["training"], "validation-cases": self.case_counts["validation"],
                "training-examples": self.training_examples, "validation-examples": self.validation_examples}


def _site_part(cases: list, plan: SitePlan, seed: int, task: str) -> list:
    """The site's cases: whole patients dealt at random (IID), or for --non-iid the scans sorted
    by class (a phantom patient's three scans, one per risk class, then go to different sites)."""
    units = [case.case_id for case in cases] if plan.non_iid else [case.patient_id for case in cases]
    return [cases[i] for i in site_cases(plan, units, task_labels(cases, task), seed)]


def _site_cases(args, plan: SitePlan, task: str) -> tuple[list, list]:
    """(training cases, validation cases) of the site, not yet prepared (risk labels)."""
    if not (args.cohort or args.cyst_x):
        shape, spacing = args.phantom_shape, args.phantom_spacing
        train = phantom_cases(range(args.first_seed, args.first_seed + args.patients), shape, spacing)
        val = phantom_cases(range(args.val_first_seed, args.val_first_seed + args.val_patients), shape, spacing)
        return _site_part(train, plan, args.seed, task), _site_part(val, plan, args.seed, task)
    cases = cyst_x.read_cyst_x(args.cyst_x).cases if args.cyst_x else read_cohort_csv(args.cohort)
    cases = _site_part(cases, plan, args.seed, task)
    train_index, val_index = holdout_split(task_labels(cases, task), [c.patient_id for c in cases],
                                           args.inner_folds, args.seed, TASKS[task])
    return [cases[i] for i in train_index], [cases[i] for i in val_index]


def open_site(args, argv: Sequence[str], plan: SitePlan) -> IPMNSite:
    """The site's prepared cases, samples, class weights and ViT, as train_ipmn.py makes them."""
    import torch

    protocol = _protocol(args)
    dist = Distributed(0, 0, 1, resolve_training_device(args.device, 0))
    check_protocol(protocol, dist)
    phantoms = not (args.cohort or args.cyst_x)
    architecture, params = architecture_of(args, phantoms)
    seed_everything(args.seed)
    use_deterministic_kernels()
    files = RunFiles.for_output(args.output)
    train_cases, val_cases = _site_cases(args, plan, protocol.task)
    prepared, _ = prepare_cases([*train_cases, *val_cases], steps_of(args, phantoms),
                                cache_of(args, files.weights, phantoms), range(len(train_cases)),
                                protocol.normalisation, show_progress=False)
    prepared = with_task_labels(prepared, protocol.task)
    prepared_train, prepared_val = prepared[:len(train_cases)], prepared[len(train_cases):]
    network = build_network("early-fusion", architecture, params, None, len(TASKS[protocol.task])).to(dist.device)
    logger.info("Site (%s): %d training cases, %d validation cases", plan.describe(), len(prepared_train),
                len(prepared_val))
    return IPMNSite(args, protocol, network, training_samples(prepared_train, protocol.window_jitter),
                    central_samples(prepared_val),
                    fit_class_weights(protocol.class_weights, prepared_train, protocol.task), dist,
                    files.checkpoints, {"training": len(prepared_train), "validation": len(prepared_val)},
                    torch.get_rng_state())


def train_round(site: IPMNSite, global_state: dict, server_round: int, local_steps: int,
                proximal_mu: float, rounds: int) -> tuple[dict, float]:
    """`local_steps` of train_ipmn.py's training steps from the global weights; returns the
    site's weights (CPU tensors) and its mean training loss."""
    import torch

    site.network.load_state_dict(global_state)
    protocol = dataclasses.replace(site.protocol, steps=rounds * local_steps)
    run = TrainingRun(site.network, site.train, None, protocol, site.class_weights, site.args.seed, site.dist,
                      site.checkpoints, {}, name="site")
    seed = round_seed(site.args.seed, server_round)
    if seed is None:
        torch.set_rng_state(site.first_round_torch_state)
    else:
        torch.manual_seed(seed)
        run.sampler = np.random.default_rng(seed)
    run.loss_function = with_proximal_term(run.loss_function, site.network, frozen_parameters(site.network),
                                           proximal_mu)
    first = (server_round - 1) * local_steps
    losses = [run.train_step(first + step) for step in range(1, local_steps + 1)]
    return {key: value.detach().cpu() for key, value in site.network.state_dict().items()}, float(np.mean(losses))


def validate(site: IPMNSite, global_state: dict) -> dict:
    """The global weights on the central window of each of the site's validation cases."""
    site.network.load_state_dict(global_state)
    metrics = validation_metrics(site.network, site.val, site.dist, len(TASKS[site.protocol.task]))
    return {VALIDATION_METRIC: float(metrics["accuracy"]), "val-balanced-accuracy": float(metrics["balanced_accuracy"])}
