"""Data-parallel training over processes: ``torchrun --nproc_per_node N -m dgmeta run ...`` or
``dgmeta run ... --nproc N`` (which re-launches itself through ``torch.distributed.run``).

What each process (rank) does, and why the ranks stay identical:

* **same start**: every rank seeds the same way, and :func:`attach` broadcasts rank 0's
  parameters and buffers of the learner *and* of any module the stepper owns (a Feature-Critic)
  anyway; after that each rank re-seeds torch's global generator with ``seed + rank`` so dropout
  and JiGen's jigsaw draws differ between ranks (episodes use the stepper's own generator and
  stay the same on every rank).
* **its shard of every domain**: :class:`ShardedBatches` draws the *global* batch
  (``batch_size x world_size`` per domain) from the same seeded permutation on every rank and
  keeps the rank's slice, so the union over ranks is exactly the batch a single process with
  ``--batch-size batch_size x world_size`` would draw. **Global batch = per-rank batch x world
  size** (per domain); ``--batch-size`` stays per rank and per domain.
* **averaged gradients**: :meth:`StageStepper.sync_gradients` all-reduces (averages) ``.grad``
  of each stage's parameters right before clipping and the optimizer step, i.e. after
  ``add_gradients`` has added any meta-gradient. Optimizers the stepper does not step itself
  (Feature-Critic's Adam, MetaDA's offline meta-optimizer) get a step pre-hook that does the same.
  For ERM/DANN/MCD with a per-sample-normalised backbone and no dropout the update equals the
  single-process update on the global batch; batch norm normalises with per-rank statistics (as
  ``DistributedDataParallel`` does), JiGen's jigsaw draws are per rank, and a meta-gradient is
  the mean of per-rank episode meta-gradients, so those match in distribution only.
* **evaluation** is sharded: each rank predicts every ``world_size``-th image (after averaging
  batch-norm running statistics) and the correct counts are summed, so all ranks select the same
  checkpoint. Only rank 0 logs to MLflow, shows progress and writes artifacts
  (:class:`NullTracking` on the others).

Backends: ``gloo`` for CPU tensors, ``nccl`` for CUDA ones when available
(``cpu:gloo,cuda:nccl``); ``DGMETA_DIST_BACKEND`` overrides. Multi-node launch: docs/distributed.md.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from dgmeta.data.batches import InfiniteBatches
from dgmeta.data.streaming import row_subset, with_readahead
from dgmeta.errors import ConfigError

#: what torchrun (torch.distributed.run) sets in every worker's environment
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (``world_size == 1``: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a plain run) ------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The first rank of every machine runs the block first (building that machine's
        decoded-image cache), the other ranks after it (reading the cache)."""
        first = self.local_rank == 0
        if not first:
            self.barrier()
        yield
        if first:
            self.barrier()

    def attach(self, stepper) -> None:
        attach(stepper, self)

    def evaluate(self, learner, data, precision: str):
        return evaluate_sharded(learner, data, precision, self)

    def tracking(self, make: Callable[[], object]):
        """``make()`` (the real MLflow tracking) on rank 0, :class:`NullTracking` elsewhere."""
        return make() if self.is_main else NullTracking()


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def default_backend(device: torch.device | None = None) -> str:
    """NCCL for the CUDA tensors of a run on CUDA (gradients reduced on the GPU), gloo for CPU
    tensors (a CPU run's gradients, the evaluation counts)."""
    if os.environ.get("DGMETA_DIST_BACKEND"):
        return os.environ["DGMETA_DIST_BACKEND"]
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda and torch.distributed.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def current() -> DistContext:
    """The context of an initialised process group, else :data:`SINGLE`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistContext(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return SINGLE


def setup(backend: str | None = None, device: torch.device | None = None) -> DistContext:
    """Join the process group torchrun described in the environment (idempotent); a plain run
    (no torchrun variables, or ``WORLD_SIZE=1``) gets :data:`SINGLE`. ``device``: the run's
    (``dgmeta.device.resolve_device``), which picks the backend."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return current()
    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed", "install a torch build with distributed support, or run without --nproc")
    if not torch.distributed.is_initialized():
        if device is not None and device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL starts: each rank's communicator on its own GPU
        torch.distributed.init_process_group(backend=backend or default_backend(device))
        atexit.register(teardown)
    return current()


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -- moving many tensors in one collective --------------------------------------------------------
def _by_kind(tensors: Iterable[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return groups


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place) with rank ``src``'s values, one collective per dtype."""
    for group in _by_kind(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        torch.distributed.broadcast(flat, src)
        _scatter_back(flat, group)


def average_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Replace floating ``tensors`` (in place) by their mean over ranks; others are left alone."""
    world = torch.distributed.get_world_size()
    for (_, dtype), group in _by_kind(tensors).items():
        if not dtype.is_floating_point:
            continue
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        torch.distributed.all_reduce(flat)
        _scatter_back(flat.div_(world), group)


def _scatter_back(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


class GradientAverager:
    """``averager(params)``: ``.grad`` of every parameter becomes its mean over ranks.

    One all-reduce per (device, dtype): the gradients are flattened into one buffer, followed by a
    presence flag per parameter, so a gradient that is ``None`` on some ranks counts as zero there
    (as ``DistributedDataParallel`` does) and one that is ``None`` on every rank stays ``None``.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.calls = 0

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        self.calls += 1
        unique = list({id(p): p for p in params}.values())
        for group in _by_kind(unique).values():
            self._reduce(group)

    def _reduce(self, params: list[torch.Tensor]) -> None:
        pieces = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
        present = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
        flat = torch.cat(pieces + [present])
        torch.distributed.all_reduce(flat)
        counts = flat[-len(params):]
        flat = flat[: -len(params)].div_(self.world_size)
        offset = 0
        for param, count in zip(params, counts.tolist()):
            piece = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            if count == 0:
                continue
            if param.grad is None:
                param.grad = piece.clone()
            else:
                param.grad.copy_(piece)


def _owned_objects(root, depth: int = 4) -> tuple[list[nn.Module], list[torch.optim.Optimizer]]:
    """Modules and optimizers reachable from ``root``'s attributes (through dicts, lists and dgmeta
    objects, never into a module), so meta wrappers' critics and optimizers are found without
    the stepper listing them."""
    modules: list[nn.Module] = []
    optimizers: list[torch.optim.Optimizer] = []
    seen: set[int] = set()

    def visit(obj, level: int) -> None:
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            modules.append(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            optimizers.append(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value, level + 1)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value, level + 1)
        elif type(obj).__module__.startswith("dgmeta.") and hasattr(obj, "__dict__"):
            for value in vars(obj).values():
                visit(value, level + 1)

    visit(root, 0)
    return modules, optimizers


def attach(stepper, ctx: DistContext | None = None) -> None:
    """Make ``stepper`` data-parallel: same start on every rank, averaged gradients before every
    optimizer step. A no-op in a plain run."""
    ctx = ctx or current()
    if not ctx.enabled:
        return
    modules, optimizers = _owned_objects(stepper)
    with torch.no_grad():
        broadcast_tensors([t for m in modules for t in (*m.parameters(), *m.buffers())])
    averager = GradientAverager(ctx.world_size)
    stepper.gradient_sync = averager
    own = {id(opt) for opt in stepper.optimizers.values()}
    for opt in optimizers:
        if id(opt) not in own:
            opt.register_step_pre_hook(lambda o, args, kwargs: averager([p for g in o.param_groups for p in g["params"]]))
    torch.manual_seed(torch.initial_seed() + ctx.rank)


class ShardedBatches(InfiniteBatches):
    """This rank's slice of the global batch: every rank draws ``batch_size x world_size`` indices
    from the same seeded permutation and keeps rows ``[rank * batch_size, (rank + 1) * batch_size)``.

    ``state_dict`` is the global sampler's, the same on every rank.
    """

    def __init__(self, images, labels, batch_size: int, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}", "pass e.g. --batch-size 32")
        super().__init__(images, labels, batch_size * world_size, seed)
        self.rank = rank
        self.world_size = world_size
        self.shard_size = batch_size

    def next_indices(self) -> np.ndarray:
        indices = super().next_indices()
        return indices[self.rank * self.shard_size : (self.rank + 1) * self.shard_size]


def make_batches(images, labels, batch_size: int, seed: int, ctx: DistContext | None = None):
    """The batch sampler of one domain: sharded under DDP, reading ahead when images are streamed."""
    ctx = ctx or SINGLE
    if ctx.enabled:
        sampler = ShardedBatches(images, labels, batch_size, seed, ctx.rank, ctx.world_size)
    else:
        sampler = InfiniteBatches(images, labels, batch_size, seed)
    return with_readahead(sampler)


def evaluate_sharded(learner, data, precision: str, ctx: DistContext | None = None):
    """:func:`dgmeta.training.trainer.evaluate` with every rank predicting its share of each split."""
    from dgmeta.evaluation.accuracy import predict_array
    from dgmeta.evaluation.selection import Checkpoint

    ctx = ctx or current()
    if ctx.enabled:
        average_tensors(list(learner.buffers()))  # batch-norm running statistics drift apart per rank
    arrays = list(data.val) + [data.test]
    counts = []
    for split in arrays:
        rows = np.arange(ctx.rank, len(split.labels), ctx.world_size)
        pred, _ = predict_array(learner, row_subset(split.images, rows), precision=precision)
        counts += [float((pred == np.asarray(split.labels)[rows]).sum()), float(len(rows))]
    totals = torch.tensor(counts, dtype=torch.float64)
    if ctx.enabled:
        torch.distributed.all_reduce(totals)
    correct, seen = totals[0::2].tolist(), totals[1::2].tolist()
    accs = [c / n if n else float("nan") for c, n in zip(correct, seen)]
    return Checkpoint(step=0, val=dict(zip(data.sources, accs[:-1])), test={data.target: accs[-1]})


class NullRun:
    """The MLflow run of a non-zero rank: accepts every call, writes nothing."""

    run_id = ""
    finished = False

    def log_params(self, params) -> None: ...
    def set_tags(self, tags) -> None: ...
    def log_metrics(self, metrics, step: int) -> None: ...
    def flush(self) -> None: ...
    def log_artifact(self, path, artifact_path=None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED") -> None:
        self.finished = True


class NullTracking:
    """Tracking for ranks other than 0: only rank 0 talks to MLflow."""

    uri = ""
    experiment_id = ""

    def start_run(self, name: str, tags: dict, parent=None) -> NullRun:
        return NullRun()


# -- launching ------------------------------------------------------------------------------------
def launch_command(nproc: int, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m dgmeta ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "dgmeta", *args]


def relaunch(nproc: int, argv: Sequence[str] | None = None, device: torch.device | None = None) -> int:
    """Run this ``dgmeta`` command line (``argv``, default ``sys.argv[1:]``) in ``nproc`` processes
    on this machine through ``torch.distributed.run``; returns its exit code. The workers get the
    same command line without ``--nproc`` (their world size comes from torchrun's variables)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}", "pass e.g. --nproc 2")
    args = list(sys.argv[1:] if argv is None else argv)
    forwarded = _without_nproc(args)
    if forwarded == args:
        raise ConfigError(
            "--nproc can only re-launch a `dgmeta` command line",
            "run `dgmeta run ... --nproc N`, or launch with `torchrun --nproc_per_node N -m dgmeta run ...`",
        )
    env = dict(os.environ)
    if device is not None and device.type == "cuda":
        # one process per GPU; the thread caps below were measured for CPU training only
        check_gpu_count(nproc, args)
    else:
        # each rank gets an equal share of the cores instead of all of them, and idle OpenMP threads
        # sleep instead of spinning: spinning threads on shared cores slowed meta-learning steps
        # up to 13x (benchmarks/README.md)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.call(launch_command(nproc, forwarded), env=env)


def check_gpu_count(nproc: int, args: Sequence[str]) -> None:
    """``--nproc`` on a CUDA run means GPUs: one rank per GPU, ``cuda:LOCAL_RANK``."""
    count = torch.cuda.device_count()
    if nproc > count:
        raise ConfigError(f"--nproc {nproc} on CUDA needs {nproc} GPUs, this machine has {count}", f"pass --nproc {count} or fewer, or --device cpu")
    if any(a.startswith("cuda:") or a.startswith("--device=cuda:") for a in args):
        raise ConfigError("--device cuda:N with --nproc: every rank would use the same GPU", "pass --device cuda (rank r takes cuda:r)")


def _without_nproc(args: Sequence[str]) -> list[str]:
    """``args`` minus ``--nproc N`` / ``--nproc=N``: torchrun's argument parser would take
    ``--nproc`` for an abbreviation of its own ``--nproc-per-node``, and the workers need none."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
