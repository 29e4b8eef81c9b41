"""Bytes a federated round moves per site, measured on Flower's own messages: the server's
train message (global weights and the round's settings) and the site's reply (its weights and
counts), serialised as Flower sends them (every object of the message, deflated), for MoNet and
the paper's baselines. The MoNet paper's argument for federated training in numbers.

    python Resources/Training/federated_bytes.py [--architectures monet unet64 ...]

Prints a Markdown table; an evaluate round adds one more copy of the global weights down and a
few numbers up.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from segmentation_networks import ARCHITECTURES, build_network, parameter_counts

from federated_server import FederatedSettings


def serialized_bytes(flower_object) -> int:
    """Bytes of a Flower message or record as sent: the object and all its children, deflated."""
    children = flower_object.children or {}
    return len(flower_object.deflate()) + sum(serialized_bytes(child) for child in children.values())


def round_bytes(architecture: str) -> dict:
    """{parameters, download, upload} for one site and one training round of `architecture`."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    network = build_network(ARCHITECTURES[architecture])
    settings = FederatedSettings(model="monet", output="model.safetensors", training_args=("--input-size", "256"))
    request = Message(RecordDict({"arrays": ArrayRecord(network.state_dict()),
                                  "config": ConfigRecord({**settings.site_config(), "server-round": 1})}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({"arrays": ArrayRecord(network.state_dict()),
                                "metrics": MetricRecord({"num-examples": 1000, "train-loss": 0.5})}), reply_to=request)
    return {"parameters": parameter_counts(network)["with_bn_running_stats"],
            "download": serialized_bytes(request), "upload": serialized_bytes(reply)}


def markdown_table(rows: dict) -> str:
    lines = ["| network | parameters | server to site per round | site to server per round |",
             "|---|---:|---:|---:|"]
    for architecture, row in rows.items():
        lines.append(f"| {ARCHITECTURES[architecture].title} | {row['parameters']:,} | "
                     f"{row['download'] / 1e6:.2f} MB | {row['upload'] / 1e6:.2f} MB |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", choices=sorted(ARCHITECTURES), default=["monet", "unet64"])
    args = parser.parse_args(argv)
    print(markdown_table({architecture: round_bytes(architecture) for architecture in args.architectures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
