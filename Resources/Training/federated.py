"""Federated training of MoNet (or the paper's baselines) and of the IPMN risk ViT on Flower
(flwr, Message API): the data stay at the sites, only weights and counts travel.

The same training steps, data sources, pre-processing and model cards as train_monet.py and
train_ipmn.py; the result is a .safetensors + card that PancreasSegMoNet or IPMNRisk loads like
any other. Options after the federated ones are the training script's own (protocol, input
size, architecture, and in a simulation the data source the sites share).

  simulation, N sites on this machine (Flower's simulation engine; the sites split one data
  source by patient, --non-iid by pancreas size or risk class):
    python Resources/Training/federated.py simulate --model monet --sites 3 --rounds 10 \\
        --local-steps 50 --output runs/fed-monet --phantoms 9 --input-size 128
  deployment (one SuperLink, one SuperNode per hospital): see README, "Federated training".
    `server_app` and `client_app` below are the Flower apps; `federated.py app DIR` writes the
    Flower app folder `flwr run` takes.
  continue after a server restart:  the same command with --resume (from the last finished round)

A site's node config (deployment): data = the site's own data options, e.g.
"--msd /data/Task07_Pancreas" or "--cohort /data/ipmn.csv"; work-dir = where the site keeps its
slice cache and manifest (default: federated-site).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

# trainkit first: importing it says how to install the project's packages when they are missing.
from trainkit.model_card import command_line
from trainkit.run_files import RunFiles
from trainkit.runlog import run_logging

from PancreasAILib.errors import PancreasAIError

from federated_server import MODELS, STRATEGIES, FederatedSettings, serve
from federated_site import SitePlan

logger = logging.getLogger("federated")

SCRIPT = "Resources/Training/federated.py"
#: Sites opened in this process, oldest first (a simulation engine's worker serves several sites,
#: round after round).
_OPEN_SITES: dict = {}
_MAX_OPEN_SITES = 8


# --- the client app: one site --------------------------------------------------------------------

def site_plan(config, node_config) -> SitePlan:
    """A simulated site's share (Flower gives it partition-id and num-partitions), else all."""
    if "partition-id" in node_config:
        return SitePlan(int(node_config["partition-id"]), int(node_config["num-partitions"]), bool(config["non-iid"]))
    return SitePlan()


def site_work_dir(config, node_config, plan: SitePlan) -> Path:
    if "work-dir" in node_config:
        return Path(str(node_config["work-dir"]))
    if "site-root" in config:
        return Path(str(config["site-root"])) / f"site-{plan.index + 1}"
    return Path("federated-site")


def open_site(config, node_config):
    """(the model's module, the site) for a message's config and this node's config; opened
    once per process."""
    model = MODELS[str(config["model"])]
    plan = site_plan(config, node_config)
    argv = [*shlex.split(str(config["training-args"])), *shlex.split(str(node_config.get("data", "")))]
    key = (str(config["model"]), tuple(argv), plan, str(site_work_dir(config, node_config, plan)))
    if key not in _OPEN_SITES:
        if len(_OPEN_SITES) >= _MAX_OPEN_SITES:
            del _OPEN_SITES[next(iter(_OPEN_SITES))]
        output = site_work_dir(config, node_config, plan) / str(config["model"])
        args = model.training_arguments(argv, output)
        _OPEN_SITES[key] = (model, model.open_site(args, argv, plan))
    return _OPEN_SITES[key]


def train_on_site(message, context):
    """Flower ClientApp `train`: local steps from the global weights; the reply holds the
    site's weights, its number of training examples and its mean training loss."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    config = message.content["config"]
    model, site = open_site(config, context.node_config)
    global_state = message.content["arrays"].to_torch_state_dict()
    state, mean_loss = model.train_round(site, global_state, int(config["server-round"]), int(config["local-steps"]),
                                         float(config.get("proximal-mu", 0.0)), int(config["rounds"]))
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(
        {"num-examples": site.training_examples, "train-loss": float(mean_loss)})}), reply_to=message)


def evaluate_on_site(message, context):
    """Flower ClientApp `evaluate`: the global weights on the site's validation cases; the
    reply holds one figure per metric and the site's counts."""
    from flwr.app import Message, MetricRecord, RecordDict

    model, site = open_site(message.content["config"], context.node_config)
    metrics = model.validate(site, message.content["arrays"].to_torch_state_dict())
    return Message(RecordDict({"metrics": MetricRecord(
        {"num-examples": site.validation_examples, **metrics, **site.counts()})}), reply_to=message)


def counts_of_site(message, context):
    """Flower ClientApp `query`, before round 1: the counts the server names (MoNet's
    --prior-init: the site's training pixels and pancreas pixels) and the site's number of
    training examples; nothing else."""
    from flwr.app import Message, MetricRecord, RecordDict

    config = message.content["config"]
    _, site = open_site(config, context.node_config)
    statistics = site.start_statistics()
    wanted = {name: statistics[name] for name in config["counts"] if name in statistics}
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": site.training_examples, **wanted})}),
                   reply_to=message)


def clip_when_asked(message, context, call_next):
    """Flower's fixedclipping_mod (differential privacy) when the server's DP wrapper asks for
    it (its clipping norm in the config), the reply unchanged otherwise."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = message.content.config_records.get("config", {})
    if KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


def build_client_app():
    from flwr.clientapp import ClientApp

    app = ClientApp(mods=[clip_when_asked])
    app.train()(train_on_site)
    app.evaluate()(evaluate_on_site)
    app.query()(counts_of_site)
    return app


# --- the server app ---------------------------------------------------------------------------------

def build_server_app(settings: Optional[FederatedSettings] = None, command: str = ""):
    """The ServerApp: with `settings` (a simulation started here), or reading them from the
    Flower run config (`flwr run`)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        if settings is not None:  # the simulation's caller has set up the log
            serve(grid, settings, command)
            return
        chosen = FederatedSettings.from_config(dict(context.run_config))
        with run_logging(RunFiles.for_output(chosen.output).folder / "federated.log", True):
            card = serve(grid, chosen, f"flwr run, run config {chosen.to_config()}")
            logger.info("Global model: %s", card.weights_path)

    return app


def _flower_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flwr") is not None


server_app = build_server_app() if _flower_installed() else None
client_app = build_client_app() if _flower_installed() else None


# --- the simulation ----------------------------------------------------------------------------------

def simulate(settings: FederatedSettings, sites: int, command: str = "") -> Path:
    """Run `settings` with `sites` simulated sites (Flower's simulation engine, one worker per
    CPU, or a share of the GPU per site); returns the model file."""
    import torch
    from flwr.simulation import run_simulation

    gpus = 1.0 / sites if torch.cuda.is_available() else 0.0
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus},
               "init_args": {"num_cpus": max(1, min(sites, os.cpu_count() or 1)), "include_dashboard": False}}
    # The engine's workers are new processes: they find these scripts through PYTHONPATH. The
    # engine (Ray) changes the environment too (the Python path among others); the caller's is
    # put back afterwards, so a console session or a test process starts other programs as before.
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                             os.environ.get("PYTHONPATH")]))
    try:
        run_simulation(build_server_app(settings, command), build_client_app(), num_supernodes=sites,
                       backend_config=backend)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return RunFiles.for_output(settings.output).weights


# --- command line ----------------------------------------------------------------------------------

def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(MODELS), required=True,
                        help="monet: train_monet.py's networks; ipmn: train_ipmn.py's ViT")
    parser.add_argument("--output", required=True, help="path of the .safetensors to write (its card goes beside it)")
    parser.add_argument("--rounds", type=int, default=3, help="federated rounds (default %(default)s)")
    parser.add_argument("--local-steps", type=int, default=10,
                        help="optimiser steps each site takes per round (default %(default)s)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="fedavg", help="default %(default)s")
    parser.add_argument("--proximal-mu", type=float, default=0.0,
                        help="FedProx: weight of the proximal term mu / 2 ||w - w_global||^2")
    parser.add_argument("--fraction-sites", type=float, default=1.0,
                        help="fraction of the sites that train in each round (all validate; default %(default)s)")
    parser.add_argument("--min-sites", type=int, help="sites to wait for before a round starts "
                                                      "(simulation: --sites; deployment default 2)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=0.0,
                        help="differential privacy (Flower's client-side fixed clipping): noise multiplier")
    parser.add_argument("--dp-clipping-norm", type=float, default=0.0,
                        help="differential privacy: the norm each site's update is clipped to")
    parser.add_argument("--resume", action="store_true", help="continue from the last finished round")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    simulation = commands.add_parser("simulate", help="N simulated sites on this machine",
                                     description="Options not listed here go to train_monet.py / train_ipmn.py.")
    add_settings_arguments(simulation)
    simulation.add_argument("--sites", type=int, required=True, help="number of simulated sites")
    simulation.add_argument("--non-iid", action="store_true",
                            help="deal the patients to the sites sorted by pancreas size (monet) or risk class "
                                 "(ipmn) instead of at random")
    app = commands.add_parser("app", help="write the Flower app folder that `flwr run` deploys")
    app.add_argument("folder", help="folder to write (pyproject.toml and the app module)")
    add_settings_arguments(app)
    return parser


def settings_from_arguments(args, training_args: Sequence[str], **extra) -> FederatedSettings:
    return FederatedSettings(
        model=args.model, output=str(RunFiles.for_output(args.output).weights), training_args=tuple(training_args),
        rounds=args.rounds, local_steps=args.local_steps, strategy=args.strategy, proximal_mu=args.proximal_mu,
        fraction_sites=args.fraction_sites, resume=args.resume, dp_noise_multiplier=args.dp_noise_multiplier,
        dp_clipping_norm=args.dp_clipping_norm, **extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, training_args = build_parser().parse_known_args(argv)
    try:
        if args.command == "simulate":
            output = RunFiles.for_output(args.output)
            settings = settings_from_arguments(args, training_args, min_sites=args.min_sites or args.sites,
                                               non_iid=args.non_iid, site_root=str(output.folder / "sites"))
            MODELS[args.model].training_arguments(training_args, output.weights)  # refused before the engine starts
            with run_logging(output.folder / "federated.log", True):
                logger.info("=== %s", command_line(SCRIPT, argv))
                simulate(settings, args.sites, command_line(SCRIPT, argv))
            return 0
        from federated_deployment import write_flower_app

        write_flower_app(Path(args.folder), settings_from_arguments(args, training_args, min_sites=args.min_sites or 2))
        return 0
    except PancreasAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # the simulation engine wraps the server's own errors
        cause = error.__cause__ or error.__context__
        if isinstance(cause, PancreasAIError):
            print(f"error: {cause}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
