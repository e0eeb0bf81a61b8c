"""Data-parallel training and evaluation under ``torchrun``, with PyTorch's own ``torch.distributed``.

``python -m train ...`` runs in one process. The same command under ``torchrun`` (``torchrun --nproc-per-node N
[--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] -m train ...``) starts N processes per machine; each finds
its rank in the environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...) and this module joins
them into one process group: NCCL when the ranks train on CUDA (rank ``LOCAL_RANK`` of a machine on its GPU
``cuda:LOCAL_RANK``), gloo on the CPU. The engine (``engine.py``) then wraps every network it trains in
``DistributedDataParallel`` (both GAN players, the fusion auto-encoder, the classifier branch with its
generator), cuts each global batch into one slice per rank (``InMemoryBatches``), and lets rank 0 alone write.

BatchNorm: **synchronised** (SyncBatchNorm). Every network here normalises with BatchNorm, and each rank's
statistics are taken over the whole global batch, not over its own slice. Reasons: (1) a data-parallel run is
then the same computation as one process at the global batch, only faster, up to float rounding: its gradients
do not depend on how the global batch is split over GPUs (the tests check a step against one process);
(2) every rank's running statistics stay identical, so rank 0's checkpoint *is* the model (per-rank BatchNorm
would ship rank 0's statistics of 1/N of the data); (3) the networks train at 256 x 256, where a GPU's share of
the batch can be small, and BatchNorm over a few images is noisy. The price is one small all-gather per
BatchNorm layer in the forward pass and one all-reduce in the backward pass (2C + 1 and 2C numbers for C
channels), which the convolutions' compute hides on GPUs. On CUDA the layers become ``torch.nn.SyncBatchNorm``;
PyTorch's has no CPU kernels, so on the CPU (gloo) they become :class:`SyncBatchNorm` below, which does the same
arithmetic with gloo collectives (it is what the CPU tests run).

Control messages (the vote to stop, the losses to log, the checkpoint rank 0 read) travel on a second, gloo,
group: on CPU tensors, so they never wait on a GPU stream, and apart from the gradient all-reduces
DistributedDataParallel keeps running in the background on the main group.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process is one of a ``torchrun`` launch (the variables it sets for every worker)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` launch, and the collectives the engine needs."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control: dist.ProcessGroup  # gloo, for CPU tensors: stop votes, logged losses, objects from rank 0
    owns_group: bool            # this object started the default group (and ends it in ``close``)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device_name: str) -> "Distributed | None":
        """Join the launch's process group, or ``None`` outside ``torchrun`` (one process, nothing changes).

        ``device_name`` as the CLI's ``--device``: ``auto`` and ``cuda`` put rank ``LOCAL_RANK`` of each machine on
        ``cuda:LOCAL_RANK`` (NCCL); ``cpu`` trains every rank on the CPU (gloo). A fixed ``cuda:N`` is refused with
        more than one process per machine, since they would all share one GPU.
        """
        if not launched_by_torchrun():
            return None
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_name == "auto":
            device_name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device_name)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
            if device.index is None:
                device = torch.device("cuda", local_rank)
            elif int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
                raise ValueError(f"--device {device_name}: under torchrun with several processes per machine each "
                                 "takes the GPU of its local rank; pass --device cuda (or auto)")
            if device.index >= torch.cuda.device_count():
                raise RuntimeError(f"local rank {local_rank} needs {device}, but this machine has "
                                   f"{torch.cuda.device_count()} GPU(s): --nproc-per-node must not exceed them")
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise ValueError(f"data-parallel training runs on cuda (NCCL) or cpu (gloo), not {device_name}")
        owns_group = not dist.is_initialized()  # (a caller may have started it: then it is the caller's to end)
        if owns_group:
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        elif device.type == "cpu" and dist.get_backend() != "gloo":
            raise ValueError(f"training on the CPU needs a gloo process group, not {dist.get_backend()}")
        control = dist.new_group(backend="gloo")
        return cls(rank, world_size, local_rank, device, control, owns_group)

    def close(self) -> None:
        """Leave the process group (if this object started it)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is true on any rank (the same answer on every rank): the ranks' vote to stop,
        so that all stop after the same step."""
        votes = torch.tensor([1 if flag else 0 for flag in flags], dtype=torch.int32)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self.control)
        return [bool(v) for v in votes.tolist()]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the ranks (every rank passes the same keys)."""
        keys = sorted(values)
        total = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(total, group=self.control)
        return {key: float(v) / self.world_size for key, v in zip(keys, total)}

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (a CPU copy)."""
        total = tensor.detach().to("cpu", torch.float64).clone()
        dist.all_reduce(total, group=self.control)
        return total

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; ``None`` elsewhere."""
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0, group=self.control)
        return gathered

    def from_main(self, read: Callable[[], T]) -> T:
        """``read()`` on rank 0, its value sent to every rank (an error it raises is raised on every rank): what rank
        0 wrote (a checkpoint) reaches ranks on other machines without a shared file system."""
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("value", read())
            except Exception as err:  # re-raised below on every rank, so none waits for the others
                box[0] = ("error", err)
        dist.broadcast_object_list(box, src=0, group=self.control)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    @contextmanager
    def local_main_first(self):
        """Local rank 0 of each machine runs the block first (e.g. decoding the images into the cache), the other
        ranks after it (mapping the cache it wrote)."""
        if self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.local_rank == 0:
                self.barrier()

    # -- the networks ------------------------------------------------------------------------------------------

    def sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """``module`` with every BatchNorm layer synchronised over the ranks (module docstring), in place:
        parameters, buffers and state-dict keys stay the same."""
        if self.device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return SyncBatchNorm.convert(module, self.control)

    def wrap(self, module: nn.Module) -> DistributedDataParallel:
        """``DistributedDataParallel`` over ``module``'s trainable parameters (those with ``requires_grad``; a
        change of that set needs a new wrapper). Gradients are averaged over the ranks in buckets as the backward
        pass produces them. The buffers (BatchNorm statistics) are not broadcast at every forward pass: the
        synchronised BatchNorm keeps them identical on every rank."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # (``forward_sync_buffers`` is the newer name of ``broadcast_buffers``)
        buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel).parameters else {"broadcast_buffers": False})
        return DistributedDataParallel(module, device_ids=device_ids, **buffers)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch, on the CPU (gloo): what
    ``torch.nn.SyncBatchNorm`` does on CUDA. In eval mode, outside a process group, or alone in it, it is plain
    BatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: dist.ProcessGroup | None = None,
                 device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world_size = dist.get_world_size(self.process_group) if dist.is_initialized() else 1
        if not self.training or world_size == 1:
            return super().forward(input)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None, self.eps, momentum, self.process_group,
            world_size)

    @classmethod
    def convert(cls, module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
        """Every ``BatchNorm*d`` of ``module`` replaced by this class, sharing its parameters and buffers."""
        converted = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
            if module.affine:
                converted.weight, converted.bias = module.weight, module.bias
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.train(module.training)
        for name, child in module.named_children():
            converted.add_module(name, cls.convert(child, process_group))
        return converted


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation over the union of the ranks' batches.

    Forward: each rank's per-channel mean, variance and count are gathered and combined (Chan et al.'s parallel
    variance, in float64); backward: the two per-channel sums the input gradient needs (of dy and of dy * x_hat)
    are all-reduced, as ``torch.nn.SyncBatchNorm`` does. The weight and bias gradients stay local:
    DistributedDataParallel averages them with the other parameters' gradients.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum, group, world_size):
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        x = input.float()
        count = x.numel() // channels
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        local = torch.cat([mean.double(), var.double(), torch.tensor([count], dtype=torch.float64)])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)
        means, variances, counts = stats[:, :channels], stats[:, channels:2 * channels], stats[:, 2 * channels:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        if running_mean is not None:  # as BatchNorm: the running variance is the unbiased one
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
            running_var.mul_(1 - momentum).add_(momentum * (var * total / max(float(total) - 1, 1.0)).to(running_var.dtype))
        invstd = torch.rsqrt(var + eps).float()
        x_hat = (x - mean.float().view(shape)) * invstd.view(shape)
        output = x_hat if weight is None else x_hat * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.group, ctx.total, ctx.dims, ctx.shape = group, float(total), dims, shape
        return output.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x_hat, weight, invstd = ctx.saved_tensors
        dims, shape, channels = ctx.dims, ctx.shape, x_hat.shape[1]
        dy = grad_output.float()
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * x_hat).sum(dims)
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums, group=ctx.group)
        mean_dy, mean_dy_xhat = sums[:channels] / ctx.total, sums[channels:] / ctx.total
        scale = invstd if weight is None else invstd * weight.float()
        grad_input = (dy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape)) * scale.view(shape)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_input = grad_input.to(grad_output.dtype) if ctx.needs_input_grad[0] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None
