"""Data-parallel training in several processes with torch.distributed (DistributedDataParallel).

`launch(fn, processes, *args)` starts `processes` workers with torch.multiprocessing (as MONAI Label's multi-GPU
training does), each in a process group: NCCL with one GPU per rank when `gpus` are given, else gloo on the CPU.
Every worker runs `fn(rank, world_size, *args)`; the skeleton (loop.py) then wraps the model in DDP and shards the
data with a DistributedSampler, so the gradients of each step are averaged over the processes, and the epoch
losses it reports are averaged over them too. Rank 0's return value (tensors and plain containers, e.g. a state_dict and
statistics) comes back through a file read weights-only.

On a multi-GPU node: POST /train/<model> with {"multi_gpu": true, "gpus": "all"} (or "0,1"), or
{"processes": N} for N CPU processes; from Python, `launch(worker, 4, gpus=[0, 1, 2, 3])`.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..memory import keep_freed_memory

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, gpus: list | None, result: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    keep_freed_memory()  # as the server process (memory.py)
    backend = "nccl" if gpus else "gloo"
    if gpus:
        torch.cuda.set_device(int(gpus[rank]))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        out = fn(rank, world, *args)
        if rank == 0:
            torch.save(out, result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], processes: int, *args, gpus: list | None = None) -> Any:
    """Run fn(rank, world_size, *args) in `processes` processes of one process group; rank 0's result.

    `fn` and `args` must be picklable (a module-level function). `gpus`: one device index per process (NCCL)."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if gpus is not None and len(gpus) != processes:
        raise ValueError(f"{processes} processes need {processes} GPUs, got {gpus}")
    with tempfile.TemporaryDirectory(prefix="sparsesight-ddp-") as tmp:
        result = str(Path(tmp) / "rank0.pt")
        logger.info("starting %d training processes (%s)", processes, "nccl" if gpus else "gloo")
        mp.spawn(_worker, args=(processes, free_port(), gpus, result, fn, args), nprocs=processes, join=True)
        return torch.load(result, map_location="cpu", weights_only=True)


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def mean_over_processes(value: float) -> float:
    """`value` averaged over the process group (itself without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
