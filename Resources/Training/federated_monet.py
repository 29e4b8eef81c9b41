"""MoNet (or one of the paper's baselines) in a federated run: a site's cases, its local
training steps and validation, and, on the server, the starting weights and the model card.

A site is a `monet_training.Run` of its own cases, opened as train_monet.py opens one (the same
data sources, pre-processing, split by patient, slices, network and loss), so `train_epoch` and
`validation_loss` are the local run's own. What differs: the optimiser starts afresh in every
round at a constant learning rate (its state never leaves the site and there is no global
validation loss to schedule on), and the global weights replace the local ones before each
round. With one site holding all cases, round 1 is exactly the first epoch of train_monet.py
with the same options and seed (Testing/test_federated.py checks this).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from PancreasAILib.errors import InputError
import train_monet
from monet_data import modality_of, pancreas_pixels, prepare_data, select_slices, split_by_patient, write_data_manifest
from monet_protocol import MoNetProtocol, check_settings
from monet_training import (Run, RunState, base_preprocessing, case_counts, prior_fraction, recorded_protocol,
                            set_output_prior, train_epoch)
from monet_losses import training_loss
from monet_validation import validation_loss
from segmentation_data import PANCREAS_RULE
from segmentation_networks import ARCHITECTURES, build_network, parameter_counts
from trainkit.distributed import Distributed, resolve_training_device
from trainkit.initial_weights import initial_weights_record, load_initial_weights
from trainkit.protocol import protocol_from_arguments
from trainkit.run_files import RunFiles
from trainkit.seeding import seed_everything, use_deterministic_kernels

from federated_site import (FEDERATED_OPTIMIZER, FEDERATED_SELECTION, SitePlan, frozen_parameters,
                            round_seed, site_cases, with_proximal_term)

logger = logging.getLogger("federated")

#: What the sites count as their training examples (the FedAvg weights) and validate with.
EXAMPLES = "training slices"
VALIDATION_METRIC = "val-dice"
DATA_SOURCES = ("--msd", "--images", "--phantoms", "--cyst-x")
#: Options of train_monet.py that a federated run cannot honour, and why.
REFUSED = {
    "crop": "--crop: the BatchNorm statistics of a network trained on crops are measured again on whole slices, "
            "which the server does not have",
    "resume": "--resume: give it to federated.py, which resumes the rounds",
}


def training_arguments(argv: Sequence[str], output: str | Path) -> argparse.Namespace:
    """train_monet.py's options; the server, which holds no data, parses them with an empty
    phantom source when they name none."""
    argv = list(argv)
    if not any(option in argv for option in DATA_SOURCES):
        argv += ["--phantoms", "0"]
    args = train_monet.build_parser().parse_args([*argv, "--output", str(output)])
    protocol = protocol_from_arguments(MoNetProtocol, args)
    for name, reason in REFUSED.items():
        if getattr(protocol, name, None) or getattr(args, name, None):
            raise InputError(f"Federated training does not take {reason}.")
    return args


#: The counts every site gives before round 1 for --prior-init: its training slices' pancreas
#: pixels and all their pixels (two numbers per site; their sums give the pooled fraction).
PRIOR_COUNTS = ("training-pancreas-pixels", "training-pixels")


# --- the server's side ---------------------------------------------------------------------------

def initial_network(args):
    """The global model of round 0: the network a local run starts from (same seed), or the
    --initial-weights."""
    spec = ARCHITECTURES[args.architecture]
    seed_everything(args.seed)
    network = build_network(spec)
    if args.initial_weights:
        load_initial_weights(network, args.initial_weights, spec.class_name)
    return network


def start_counts(args) -> tuple[str, ...]:
    """The counts the server asks every site for before round 1: PRIOR_COUNTS with --prior-init
    (unless --initial-weights, which a local run lets win too), else none."""
    protocol = protocol_from_arguments(MoNetProtocol, args)
    return PRIOR_COUNTS if protocol.prior_init and not args.initial_weights else ()


def start_from_counts(network, totals: dict) -> dict:
    """--prior-init from the sites' summed counts: the output starts at the pooled training
    slices' pancreas fraction, as train_monet.py starts it at its own training slices'.
    Returns the card's record of it."""
    fraction = prior_fraction(totals["training-pancreas-pixels"], totals["training-pixels"])
    set_output_prior(network, fraction)
    logger.info("Output bias set to the sites' pooled pancreas fraction %.4f", fraction)
    return {"output_prior": {"pancreas_fraction": fraction,
                             "from": "the sum of the sites' training-slice pancreas pixels over the sum of their "
                                     "pixels (two counts per site, before round 1)"}}


def preprocessing_of(args) -> dict:
    """The card's pre-processing, as train_monet.py makes it (CT window, or MR percentiles)."""
    return protocol_from_arguments(MoNetProtocol, args).preprocessing(base_preprocessing(args))


def model_card(args, network, federated: dict, metrics: dict, history: list, training_extra: dict) -> dict:
    """The card of the global model: the fields of train_monet.py's card that do not depend on
    one site's data, and `federated` (strategy, rounds, sites as counts, weights per round)."""
    spec = ARCHITECTURES[args.architecture]
    protocol = protocol_from_arguments(MoNetProtocol, args)
    preprocessing = preprocessing_of(args)
    return {
        "name": RunFiles.for_output(args.output).weights.stem,
        "title": args.title or f"{spec.title} (federated)",
        "architecture": spec.class_name,
        "architecture_params": spec.params,
        "parameters": parameter_counts(network),
        "task": f"pancreas segmentation on {'CT' if modality_of(args) == 'CT' else 'MRI'}",
        "classes": ["pancreas"],
        "preprocessing": preprocessing,
        "postprocessing": {"threshold": 0.5, "keep_largest_component": protocol.keep_largest_component},
        "intended_use": args.intended_use,
        "training": {
            "labels": PANCREAS_RULE,
            "federated": federated,
            "protocol": {**recorded_protocol(protocol, preprocessing),
                         "lr_schedule": f"constant; the optimiser is {FEDERATED_OPTIMIZER}",
                         "checkpoint": FEDERATED_SELECTION},
            "batch_size": protocol.batch_size,
            "seed": args.seed,
            "initial_weights": initial_weights_record(args.initial_weights),
            **training_extra,
        },
        "metrics": metrics,
        "history": history,
        "licence": "Apache-2.0",
    }


# --- a site ----------------------------------------------------------------------------------------

@dataclass
class MoNetSite:
    """One site's run; `first_round_torch_state` is the global torch random state right after
    the network was built, where a local run's first epoch starts."""

    run: Run
    first_round_torch_state: object

    @property
    def training_examples(self) -> int:
        return len(self.run.train)

    @property
    def validation_examples(self) -> int:
        return len(self.run.val)

    def counts(self) -> dict:
        """Cases and slices of each side of the site's split (counts only, no names)."""
        cases = case_counts(self.run.split)
        return {"training-cases": cases["training"], "validation-cases": cases["validation"],
                "test-cases": cases["test"], "training-examples": self.training_examples,
                "validation-examples": self.validation_examples}

    def start_statistics(self) -> dict:
        """The PRIOR_COUNTS of the site's training slices."""
        return dict(zip(PRIOR_COUNTS, pancreas_pixels(self.run.train)))


def open_site(args, argv: Sequence[str], plan: SitePlan) -> MoNetSite:
    """The site's run, made as train_monet.py's start_run makes one, on the site's cases (its
    share of the data source in a simulation). The random draws are a local run's."""
    import torch

    protocol = protocol_from_arguments(MoNetProtocol, args)
    spec = ARCHITECTURES[args.architecture]
    preprocessing = protocol.preprocessing(base_preprocessing(args))
    files = RunFiles.for_output(args.output)
    dist = Distributed(0, 0, 1, resolve_training_device(args.device, 0))
    check_settings(protocol, spec, preprocessing, dist)

    seed_everything(args.seed)
    use_deterministic_kernels()
    rng = np.random.default_rng(args.seed)
    description, source, data_sha256, prepared, cached, cache = prepare_data(args, dist, files, preprocessing)
    pancreas_pixels = [int(np.count_nonzero(slices.masks)) for slices in cached]
    mine = site_cases(plan, [case.patient_id for case in prepared], pancreas_pixels, args.seed)
    prepared, cached = [prepared[i] for i in mine], [cached[i] for i in mine]
    split = split_by_patient([case.patient_id for case in prepared], protocol.test_fraction,
                             protocol.validation_fraction, rng)
    train, val = select_slices(cached, split, protocol, args.max_val_slices, rng)
    write_data_manifest(files.data_manifest, prepared, data_sha256, f"{description}; this site: {plan.describe()}",
                        cache, split)
    if len(train) == 0 or len(val) == 0:
        raise InputError("This site has no slice left for training or for validation: its label maps hold (almost) "
                         "no pancreas, or it has too few patients.")
    network = build_network(spec).to(dist.device, memory_format=torch.channels_last)
    first_round_torch_state = torch.get_rng_state()
    optimizer = torch.optim.NAdam(network.parameters(), lr=protocol.learning_rate)
    run = Run(args, list(argv), protocol, spec, preprocessing, files, dist, description, source, data_sha256,
              prepared, split, train, val, network, network, optimizer, None,
              torch.Generator().manual_seed(args.seed), rng, training_loss(protocol), 0, RunState())
    logger.info("Site (%s): %d training slices from %d cases, %d validation slices", plan.describe(), len(train),
                case_counts(split)["training"], len(val))
    return MoNetSite(run, first_round_torch_state)


def train_round(site: MoNetSite, global_state: dict, server_round: int, local_steps: int,
                proximal_mu: float, rounds: int) -> tuple[dict, float]:
    """`local_steps` of the local run's training steps from the global weights; returns the
    site's weights (CPU tensors) and its mean training loss. (`rounds` is the IPMN schedule's;
    MoNet's learning rate is constant.)"""
    import torch

    run = site.run
    run.network.load_state_dict(global_state)
    seed = round_seed(run.args.seed, server_round)
    if seed is None:
        torch.set_rng_state(site.first_round_torch_state)
        run.sampler.manual_seed(run.args.seed)
    else:
        torch.manual_seed(seed)
        run.sampler.manual_seed(seed)
    run.optimizer = torch.optim.NAdam(run.network.parameters(), lr=run.protocol.learning_rate)
    run.loss_function = with_proximal_term(training_loss(run.protocol), run.network,
                                           frozen_parameters(run.network), proximal_mu)
    run.steps_per_epoch = local_steps
    mean_loss = train_epoch(run, server_round)
    return {key: value.detach().cpu() for key, value in run.network.state_dict().items()}, mean_loss


def validate(site: MoNetSite, global_state: dict) -> dict:
    """The global weights on the site's validation slices: soft Dice over all of them (the
    local run's validation), as one number per site."""
    run = site.run
    run.network.load_state_dict(global_state)
    loss, dice = validation_loss(run.network, run.val, run.protocol.dice_smooth, run.dist)
    return {"val-loss": float(loss), VALIDATION_METRIC: float(dice)}
