"""Training on N processes (DDP) through accelerate: who this process is, and the few collectives the loop needs.

`ProcessGroup.single()` is the ordinary one-process run and costs nothing: every collective is the identity.
`ProcessGroup.from_launcher()` is built when `accelerate launch` / `torchrun` started several processes: it sets
up the process group through accelerate's `Accelerator` (NCCL on CUDA, gloo on the CPU) with a timeout, so a
rank that dies makes the others fail on their next collective instead of waiting forever.

How the work is split (see `webui.training.loop`): every rank plans the same global batches (per-process batch
x N, from the seed), takes its own rows of each, and draws the noise and timesteps of the whole global batch
from the same seeded generator before keeping its rows. The gradient is summed over ranks and divided by the
global batch size, so N processes at an equal effective batch compute the step a single process would: the
loss curve matches the one-process run up to float rounding, and resume needs only rank 0's state.

The trainer reduces gradients itself (one flat all-reduce per optimizer step, through `Accelerator.reduce`)
instead of wrapping the denoiser in `DistributedDataParallel`: the methods reach into the modules they train
(PEFT adapters on the UNet and text encoders, new token rows of an embedding table), which a DDP wrapper hides,
and the one-process path stays exactly what it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import torch

DEFAULT_TIMEOUT_S = 1800  # a collective waits this long for a rank that stopped answering


class RankFailure(RuntimeError):
    """Another training process stopped (crashed, killed, timed out) while this one waited for it."""


def launched_processes(environment: Mapping[str, str]) -> int:
    """How many processes the launcher (torchrun / accelerate launch) started; 1 when run directly."""
    try:
        return max(1, int(environment.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class ProcessGroup:
    """This process's place in the run; the identity for a single process."""

    rank: int = 0
    size: int = 1
    accelerator: Any = None          # accelerate.Accelerator when size > 1
    device: torch.device | None = None  # the device accelerate gave this rank (cuda:<local rank> or cpu)

    @classmethod
    def single(cls) -> ProcessGroup:
        return cls()

    @classmethod
    def from_launcher(cls, device_type: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> ProcessGroup:
        """Join the process group the launcher described in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        accelerator = Accelerator(cpu=device_type == "cpu",
                                  kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])
        device = accelerator.device
        if device.type == "cpu":
            device = torch.device("cpu")
        return cls(rank=accelerator.process_index, size=accelerator.num_processes, accelerator=accelerator,
                   device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, count: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch of `count` samples (contiguous, sizes differ by at
        most one; every rank gets at least one because batches smaller than the group are never planned)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _collective(self, action):
        try:
            return action()
        except (RuntimeError, TimeoutError) as error:
            raise RankFailure(f"training process {self.rank} of {self.size} lost contact with the others "
                              f"(a process crashed, was killed or stopped answering): {error}") from error

    def sum_gradients(self, parameters: list[torch.nn.Parameter], divide_by: float) -> None:
        """Sum every trained parameter's gradient over all ranks, then divide (one flat all-reduce)."""
        if not self.distributed:
            if divide_by != 1.0:
                for parameter in parameters:
                    if parameter.grad is not None:
                        parameter.grad.div_(divide_by)
            return
        grads = [parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                 for parameter in parameters]
        flat = torch.cat([grad.reshape(-1).float() for grad in grads])
        flat = self._collective(lambda: self.accelerator.reduce(flat, reduction="sum")) / divide_by
        offset = 0
        for parameter, grad in zip(parameters, grads):
            size = grad.numel()
            parameter.grad = flat[offset:offset + size].view_as(parameter).to(parameter.dtype)
            offset += size

    def sum_value(self, value: float) -> float:
        """A number summed over ranks (the step's loss)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self._collective(lambda: self.accelerator.reduce(tensor, reduction="sum"))[0])

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on any (a stop request seen by one process stops all)."""
        return self.sum_value(1.0 if flag else 0.0) > 0 if self.distributed else flag

    def gather_objects(self, items: list) -> list:
        """Every rank's list, concatenated in rank order, on every rank."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return self._collective(lambda: gather_object(items))

    def wait_for_everyone(self) -> None:
        if self.distributed:
            self._collective(self.accelerator.wait_for_everyone)

    def close(self) -> None:
        """Leave the process group (so the launcher sees a clean exit)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
