"""Fixed seeds, and random-number-generator states saved with a checkpoint so that a resumed
run draws exactly the numbers the uninterrupted run would have drawn.

States are split into tensors (for the .safetensors file) and JSON-able values; nothing is
pickled. The per-process torch state (dropout masks) differs between DDP processes and is
handled by `process_rng_state` / `restore_process_rng_state` with distributed.all_gather;
`checkpoint_rng_states` / `restore_checkpoint_rng_states` do all of it for a training loop.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy's legacy global generator and Python's `random`."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def use_deterministic_kernels() -> None:
    """cuDNN: no benchmark-driven algorithm choice, deterministic convolutions where it has them."""
    import torch

    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def derived_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for (seed, keys...), e.g. one stream per DDP process."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def process_rng_state(device) -> "torch.Tensor":
    """This process's global torch state (CPU, plus the current GPU's when `device` is CUDA)
    as one uint8 tensor of a size that is the same in every process of a run."""
    import torch

    parts = [torch.get_rng_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def restore_process_rng_state(state: "torch.Tensor", device) -> None:
    import torch

    cpu_size = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu_size].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[cpu_size:].clone(), device)


def generator_states(torch_generators: Mapping[str, "torch.Generator"],
                     numpy_generators: Mapping[str, np.random.Generator]) -> tuple[dict, dict]:
    """(tensors, JSON) of named generators and of Python's and numpy's global ones."""
    tensors = {f"rng.torch.{name}": generator.get_state() for name, generator in torch_generators.items()}
    legacy = np.random.get_state()
    document = {
        "numpy": {name: generator.bit_generator.state for name, generator in numpy_generators.items()},
        "numpy_global": [legacy[0], legacy[1].tolist(), *legacy[2:]],
        "python_random": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    return tensors, document


def restore_generator_states(tensors: Mapping[str, "torch.Tensor"], document: dict,
                             torch_generators: Mapping[str, "torch.Generator"],
                             numpy_generators: Mapping[str, np.random.Generator]) -> None:
    """Put back what `generator_states` saved into the same named generators."""
    for name, generator in torch_generators.items():
        generator.set_state(tensors[f"rng.torch.{name}"].clone())
    for name, generator in numpy_generators.items():
        generator.bit_generator.state = document["numpy"][name]
    name, keys, *rest = document["numpy_global"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = document["python_random"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_rng_states(dist, torch_generators: Mapping[str, "torch.Generator"],
                          numpy_generators: Mapping[str, np.random.Generator]) -> tuple[dict, dict]:
    """(tensors, JSON) of every random state a resumed run needs: the named generators, the
    global ones and, as tensor `rng.process`, each process's torch state.

    Collective: every process of `dist` (a `distributed.Distributed`) must call it."""
    processes = dist.all_gather(process_rng_state(dist.device))
    tensors, document = generator_states(torch_generators, numpy_generators)
    tensors["rng.process"] = processes
    return tensors, document


def restore_checkpoint_rng_states(tensors: Mapping[str, "torch.Tensor"], document: dict, dist,
                                  torch_generators: Mapping[str, "torch.Generator"],
                                  numpy_generators: Mapping[str, np.random.Generator], *,
                                  seed: int, position: int) -> None:
    """Put back what `checkpoint_rng_states` saved. When the checkpoint was written by another
    number of processes, each process's torch state is seeded from (seed, rank, position)
    instead, with a warning: its dropout masks then differ from an uninterrupted run's."""
    import torch

    restore_generator_states(tensors, document, torch_generators, numpy_generators)
    processes = tensors["rng.process"]
    if processes.shape[0] == dist.world_size:
        restore_process_rng_state(processes[dist.rank], dist.device)
        return
    logger.warning("The checkpoint was written by %d processes, this run has %d: the random numbers of each "
                   "process (dropout masks) differ from those of an uninterrupted run.",
                   processes.shape[0], dist.world_size)
    torch.manual_seed(derived_seed(seed, dist.rank, position))
