"""The training loop shared by the codec, STT and TTS trainers.

bf16 autocast over float32 master weights, gradient accumulation, AdamW with linear warm-up and cosine
decay, gradient clipping, periodic evaluation on held-out data, a tqdm progress bar, a JSONL + CSV log and
a PNG loss curve (when matplotlib is installed), and atomic checkpoints (temporary file + ``os.replace``)
holding the model, optimizer, scheduler, every rank's RNG states, the task's data order and the log. A run
killed at any point and restarted with ``resume=True`` continues from its last checkpoint and reproduces
the uninterrupted run's weights exactly (same machine, same thread count).

Multi-GPU / multi-node: launched by ``torchrun`` (WORLD_SIZE > 1), the process group is initialised from
the environment (NCCL on CUDA, gloo on CPU) and the train module is wrapped in DDP, or FSDP with
``[run] distributed = "fsdp"``; each rank draws its own slice of every global batch. Rank 0 writes the
checkpoints, logs and exports.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dsm.errors import CheckpointError, InputError
from dsm.train.config import TrainConfig

log = logging.getLogger("dsm.train")

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


# -- distributed ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (CUDA: one GPU per local rank, NCCL; else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"[run].device {device}: CUDA is not available on this machine")
    if world <= 1:
        return DistInfo(device=dev)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.distributed or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


# -- the task interface -----------------------------------------------------------------------------------


class TrainTask(ABC):
    """What a trainer plugs into the loop.

    ``module`` is the `nn.Module` the loop wraps (DDP/FSDP) and whose ``forward(batch)`` returns
    ``(loss, metrics)`` (metrics: name -> scalar tensor, logged as means). Parameters with
    ``requires_grad`` are optimised; the others stay frozen.
    """

    module: nn.Module

    @abstractmethod
    def next_batch(self) -> Any:
        """The next training (micro-)batch of this rank, on the training device."""

    @abstractmethod
    def evaluate(self, module: nn.Module, rank: int, world: int) -> dict[str, tuple[float, float]]:
        """Held-out metrics as name -> (weighted sum, weight) over this rank's share (reduced by the loop)."""

    def state_dict(self) -> dict[str, Any]:
        """Resumable task state (data order, private RNGs)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def after_step(self) -> dict[str, float]:
        """Called after each optimizer step (e.g. a discriminator update); returns extra metrics."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Extra modules / optimizers to checkpoint (e.g. a discriminator)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        del state

    def export(self, out_dir: Path) -> None:
        """Write the trained model in its release format (rank 0, at the end)."""
        del out_dir

    def num_weight_decay_exempt(self, name: str, param: nn.Parameter) -> bool:
        """No weight decay for vectors (norms, biases, scales); decay for matrices and embeddings."""
        return param.dim() < 2


# -- schedule, RNG, files ---------------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then os.replace: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_logs(history: list[dict[str, Any]], out_dir: Path) -> None:
    """metrics.jsonl and metrics.csv (one row per logged step or evaluation)."""
    jsonl = "".join(json.dumps(rec) + "\n" for rec in history)
    _atomic_text(out_dir / "metrics.jsonl", jsonl)
    keys: list[str] = []
    for rec in history:
        keys.extend(k for k in rec if k not in keys)
    tmp = out_dir / ".metrics.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, out_dir / "metrics.csv")


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def plot_losses(history: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """Training (and evaluation) loss against step, as a PNG. False (with a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return False
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True


# -- the loop ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    step: int
    history: list[dict[str, Any]]
    interrupted: bool


class Trainer:
    """Runs a `TrainTask` as its `TrainConfig` says (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, task: TrainTask, info: DistInfo):
        self.cfg = cfg
        self.task = task
        self.info = info
        self.out_dir = cfg.out_dir
        self.checkpoint_path = self.out_dir / CHECKPOINT_NAME
        module = task.module
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise InputError("nothing to train: every parameter is frozen")
        self.fsdp = info.distributed and cfg.run.distributed == "fsdp"
        if self.fsdp and info.device.type != "cuda":
            raise InputError("[run].distributed = 'fsdp' needs CUDA devices; use 'ddp' on CPUs")
        self.wrapped = self._wrap(module)
        opt = cfg.optim
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if task.num_weight_decay_exempt(name, p) else decay).append(p)
        train_params = self.wrapped.parameters() if self.fsdp else None
        groups = (
            [{"params": [p for p in train_params if p.requires_grad], "weight_decay": opt.weight_decay}]
            if self.fsdp
            else [
                {"params": decay, "weight_decay": opt.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ]
        )
        fused_ok = info.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, foreach=fused_ok or None
        )
        run = cfg.run
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, opt.warmup_steps, run.max_steps, opt.min_lr_ratio),
        )
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.autocast_dtype = torch.bfloat16 if run.precision == "bf16" else None

    # -- wrapping -----------------------------------------------------------------------------------------
    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.info.distributed:
            return module
        if self.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            device_id = self.info.device if self.info.device.type == "cuda" else None
            return FSDP(module, use_orig_params=True, device_id=device_id)
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.info.local_rank] if self.info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.autocast_dtype)

    # -- checkpoints --------------------------------------------------------------------------------------
    def _model_optim_state(self) -> tuple[dict, dict]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_state_dict(self.wrapped, self.optimizer, options=options)
        return self.task.module.state_dict(), self.optimizer.state_dict()

    def _gather(self, obj: Any) -> list[Any]:
        if not self.info.distributed:
            return [obj]
        out: list[Any] = [None] * self.info.world
        dist.all_gather_object(out, obj)
        return out

    def save_checkpoint(self) -> None:
        """Atomically write everything needed to resume (rank 0 writes; all ranks take part)."""
        model_state, optim_state = self._model_optim_state()
        per_rank = self._gather({"rng": rng_state(), "task": self.task.state_dict()})
        if self.info.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "kind": self.cfg.kind,
                "step": self.step,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "ranks": per_rank,
                "extra": self.task.extra_state(),
                "history": self.history,
            }
            atomic_torch_save(state, self.checkpoint_path)
            write_logs(self.history, self.out_dir)
            if self.cfg.run.plot:
                plot_losses(self.history, self.out_dir / "loss.png", f"dsm train {self.cfg.kind}")
        if self.info.distributed:
            dist.barrier()

    def load_checkpoint(self) -> bool:
        """Restore from ``checkpoint.pt`` if there is one; False when starting fresh."""
        if not self.checkpoint_path.is_file():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise CheckpointError(f"{self.checkpoint_path}: cannot read the checkpoint ({e})") from e
        if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != self.cfg.kind:
            raise CheckpointError(
                f"{self.checkpoint_path}: not a dsm '{self.cfg.kind}' training checkpoint "
                f"(kind {state.get('kind')!r}); use another [run].out_dir"
            )
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_state_dict(
                self.wrapped,
                self.optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
                options=options,
            )
        else:
            self.task.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ranks = state["ranks"]
        if len(ranks) != self.info.world:
            log.warning(
                "checkpoint was written by %d ranks, resuming with %d: data order and RNG continue from "
                "rank 0's state, so the run will not replay exactly",
                len(ranks),
                self.info.world,
            )
        mine = ranks[self.info.rank] if self.info.rank < len(ranks) else ranks[0]
        set_rng_state(mine["rng"])
        self.task.load_state_dict(mine["task"])
        self.task.load_extra_state(state.get("extra", {}))
        self.step = int(state["step"])
        self.history = list(state["history"])
        return True

    # -- steps --------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        accum = self.cfg.optim.grad_accum
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(accum):
            batch = self.task.next_batch()
            no_sync = self.info.distributed and not self.fsdp and micro < accum - 1
            ctx = self.wrapped.no_sync() if no_sync else contextlib.nullcontext()
            with ctx:
                with self.autocast():
                    loss, metrics = self.wrapped(batch)
                (loss / accum).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) / accum
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) / accum
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            if self.fsdp:
                norm = self.wrapped.clip_grad_norm_(clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            sums["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        sums.update(self.task.after_step())
        return sums

    def evaluate(self) -> dict[str, float]:
        module = self.wrapped if self.fsdp else self.task.module
        rank, world = (0, 1) if self.fsdp else (self.info.rank, self.info.world)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), self.autocast():
                raw = self.task.evaluate(module, rank, world)
        finally:
            module.train(was_training)
        names = sorted(raw)
        flat = [v for n in names for v in raw[n]]
        if not self.fsdp:
            flat = all_reduce_sum(flat, self.info)
        return {n: flat[2 * i] / max(flat[2 * i + 1], 1e-12) for i, n in enumerate(names)}

    # -- run ----------------------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> RunResult:
        """Train to ``[run].max_steps``. ``stop_after`` ends the run right after that step without a final
        checkpoint or export (what a kill does; used by tests)."""
        from tqdm import tqdm

        run = self.cfg.run
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.load_checkpoint():
            log.info("resumed from %s at step %d", self.checkpoint_path, self.step)
        elif resume:
            log.info("no checkpoint in %s: starting from scratch", self.out_dir)
        self.task.module.train()
        bar = tqdm(
            total=run.max_steps,
            initial=self.step,
            desc=f"train {self.cfg.kind}",
            unit="step",
            file=sys.stderr,
            disable=not (run.progress and self.info.is_main),
            dynamic_ncols=True,
        )
        window: dict[str, float] = {}
        window_steps = 0
        start = time.perf_counter()
        interrupted = False
        try:
            while self.step < run.max_steps:
                metrics = self.train_step()
                self.step += 1
                window_steps += 1
                for name, value in metrics.items():
                    window[name] = window.get(name, 0.0) + value
                bar.update(1)
                last = self.step == run.max_steps
                if self.step % run.log_every == 0 or last:
                    names = sorted(window)
                    reduced = all_reduce_sum([window[n] for n in names], self.info)
                    record: dict[str, Any] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
                    record.update(
                        {n: v / (window_steps * self.info.world) for n, v in zip(names, reduced, strict=True)}
                    )
                    record["elapsed_s"] = round(time.perf_counter() - start, 3)
                    self.history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    log.info("step %d: %s", self.step, _fmt(record))
                    window, window_steps = {}, 0
                if (run.eval_every and self.step % run.eval_every == 0) or last:
                    record = {"step": self.step, **{f"eval_{k}": v for k, v in self.evaluate().items()}}
                    self.history.append(record)
                    log.info("eval at step %d: %s", self.step, _fmt(record))
                if self.step % run.save_every == 0 or last:
                    self.save_checkpoint()
                if stop_after is not None and self.step >= stop_after and not last:
                    interrupted = True
                    break
        finally:
            bar.close()
        if not interrupted and self.info.is_main:
            self.task.export(self.out_dir / "export")
        if self.info.distributed:
            dist.barrier()
        return RunResult(self.step, self.history, interrupted)


def _fmt(record: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
