"""One process, one GPU, or several processes started by `torchrun` (DDP).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 the processes join one
group: nccl when they use GPUs (one per process, by LOCAL_RANK), gloo on the CPU. Only the
main process (rank 0) writes files and logs at INFO level. A batch is sharded over the
processes: each takes its own contiguous part, so together they see exactly the samples the
single-process run sees (DistributedSampler's idea, applied to every step's batch).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

from PancreasAILib.errors import PancreasAIError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Generous: the main process may spend a long time preparing data while the others wait.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)


class OtherProcessFailed(PancreasAIError):
    """Raised in the other processes when the main one failed (it reports the reason)."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run. `device` is a torch.device."""

    rank: int
    local_rank: int
    world_size: int
    device: object
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        if not self.is_distributed:
            return f"1 process on {self.device}"
        return f"{self.world_size} processes ({self.backend}), this one rank {self.rank} on {self.device}"

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of `values` over all processes (float64)."""
        if not self.is_distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def all_gather(self, tensor) -> "torch.Tensor":
        """(world_size, *tensor.shape): every process's `tensor` (same shape and dtype in all)."""
        import torch

        if not self.is_distributed:
            return tensor[None].clone()
        import torch.distributed as dist

        local = tensor.to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return torch.stack([g.cpu() for g in gathered])

    def broadcast_buffers(self, module) -> None:
        """Give every process the main process's buffers (e.g. BatchNorm running statistics,
        which each process updates from its own shard during training)."""
        if not self.is_distributed:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def shard(self, count: int) -> slice:
        """This process's contiguous part of a batch of `count` items (count % world_size == 0)."""
        per_process = count // self.world_size
        return slice(self.rank * per_process, (self.rank + 1) * per_process)

    def wrap(self, model):
        """`model` in DistributedDataParallel when there are several processes."""
        if not self.is_distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def run_on_main(self, work: Callable[[], T]) -> T | None:
        """Run `work` in the main process only while the others wait; if it fails, every
        process raises (the main one with the real error), so none is left waiting."""
        failure, result = None, None
        if self.is_main:
            try:
                result = work()
            except BaseException as error:  # re-raised below, after telling the others
                failure = error
        if self.is_distributed:
            failed = self.sum([1.0 if failure is not None else 0.0])[0] > 0
            if failed and failure is None:
                raise OtherProcessFailed("The main process (rank 0) failed; its message says why.")
        if failure is not None:
            raise failure
        return result


def resolve_training_device(request: str, local_rank: int):
    """'auto' -> this process's GPU if there is one, else the CPU; 'cuda' without a GPU is an error."""
    import torch

    from PancreasAILib.devices import resolve_device

    if resolve_device(request) == "cpu":
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise PancreasAIError(
            f"Process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); start "
            "torchrun with --nproc_per_node no larger than the number of GPUs.")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[Distributed]:
    """Join the torchrun process group if there is one; leave it on exit."""
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_training_device(device, local_rank)
    if world_size == 1:
        yield Distributed(0, 0, 1, torch_device)
        return
    import torch.distributed as dist

    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield Distributed(rank, local_rank, world_size, torch_device, backend)
    finally:
        dist.destroy_process_group()
