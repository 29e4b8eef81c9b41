"""What every federated site does, whichever network it trains: which cases of a shared data
source a simulated site holds, the random streams of each round, the FedProx term, and the
fingerprint of a set of weights.

A simulated site takes whole patients of one data source (a real site simply has its own
data); `--non-iid` gives each site a contiguous range of patients sorted by a key (pancreas
size for MoNet, risk class for the IPMN ViT) instead of a random share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from PancreasAILib.errors import InputError

from trainkit.seeding import derived_seed

#: Salt of the random stream that deals patients to simulated sites (apart from the run's own
#: draws, so that one site holding every case draws exactly what a local run draws).
PARTITION_STREAM = 7_919


#: What a federated run does instead of the local protocol's fixed choices (model cards).
FEDERATED_SELECTION = "the global weights after the last round (no selection among rounds)"
FEDERATED_OPTIMIZER = "started afresh at every site in every round; its state never leaves the site"


@dataclass(frozen=True)
class SitePlan:
    """Which part of a data source a site holds: site `index` of `count` (simulation), or all
    of it (count 1: a real site with its own data). `non_iid`: sorted by a key, not at random."""

    index: int = 0
    count: int = 1
    non_iid: bool = False

    def describe(self) -> str:
        if self.count == 1:
            return "all cases of the data source"
        how = "sorted by the non-IID key" if self.non_iid else "at random"
        return f"share {self.index + 1} of {self.count} of the patients, dealt {how}"


def site_cases(plan: SitePlan, patient_ids: Sequence[str], keys: Optional[Sequence[float]], seed: int) -> list[int]:
    """Positions (ascending) of the cases of the site's patients. IID: the patients in a seeded
    random order, dealt in turn; non-IID: the patients sorted by the mean `keys` of their cases,
    cut into `plan.count` contiguous ranges (site 1 the smallest). Every case of a patient stays
    on one site."""
    patients = list(dict.fromkeys(patient_ids))
    if plan.count > len(patients):
        raise InputError(f"{plan.count} sites need at least {plan.count} patients; the data source has "
                         f"{len(patients)}.")
    if plan.count == 1:
        return list(range(len(patient_ids)))
    if plan.non_iid:
        if keys is None:
            raise InputError("--non-iid needs a key to sort the patients by.")
        mean_key = {p: float(np.mean([k for q, k in zip(patient_ids, keys) if q == p])) for p in patients}
        order = sorted(patients, key=lambda p: (mean_key[p], p))
        mine = set(np.array_split(np.array(order, dtype=object), plan.count)[plan.index])
    else:
        order = np.random.default_rng(derived_seed(seed, PARTITION_STREAM)).permutation(len(patients))
        mine = {patients[i] for position, i in enumerate(order) if position % plan.count == plan.index}
    return [position for position, patient in enumerate(patient_ids) if patient in mine]


def round_seed(seed: int, server_round: int) -> Optional[int]:
    """The seed of a round's local random streams (batches, augmentation, dropout): None in
    round 1, which goes on from the streams of the site's set-up exactly as a local run would;
    a seed derived from (seed, round) afterwards, so that a resumed run draws what an
    uninterrupted one draws."""
    return None if server_round <= 1 else derived_seed(seed, server_round)


def with_proximal_term(loss_function, network, global_parameters: Sequence, mu: float):
    """FedProx (Li et al. 2020): loss + mu / 2 * ||w - w_global||^2 over the trainable
    parameters; `loss_function` itself when mu is 0."""
    if mu == 0:
        return loss_function
    parameters = [p for p in network.parameters() if p.requires_grad]

    def proximal_loss(*arguments):
        squared = sum(((p - g) ** 2).sum() for p, g in zip(parameters, global_parameters))
        return loss_function(*arguments) + 0.5 * mu * squared

    return proximal_loss


def frozen_parameters(network) -> list:
    """Detached copies of the trainable parameters: w_global of the FedProx term."""
    return [p.detach().clone() for p in network.parameters() if p.requires_grad]


def weights_sha256(state_dict: dict) -> str:
    """SHA256 of a set of weights, independent of the file that holds them: every tensor's
    name, dtype, shape and bytes (C order, little-endian), in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        array = np.ascontiguousarray(state_dict[name].detach().cpu().numpy())
        digest.update(f"{name}\t{array.dtype.str}\t{list(array.shape)}\n".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()
