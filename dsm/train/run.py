"""Entry point shared by the command line and the tests: build a trainer's task and run the loop."""

from __future__ import annotations

import logging
import shutil

import torch

from dsm.train.config import TrainConfig
from dsm.train.loop import DistInfo, RunResult, Trainer, TrainTask, seed_everything, setup_distributed

log = logging.getLogger("dsm.train")


def build_task(cfg: TrainConfig, info: DistInfo) -> TrainTask:
    """The task of ``cfg.kind`` (codec, stt, tts), with its model and data loaded."""
    if cfg.kind == "codec":
        from dsm.train.codec import CodecTask

        return CodecTask(cfg, info)
    if cfg.kind == "stt":
        from dsm.train.stt import SttTask

        return SttTask(cfg, info)
    from dsm.train.tts import TtsTask

    return TtsTask(cfg, info)


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None) -> RunResult:
    """Train as ``cfg`` says (joining a torchrun group when launched by one); returns the run's result.

    Seeds every RNG from ``[run].seed`` before building the model, so two runs of a config start from
    the same weights; ``resume`` continues from ``<out_dir>/checkpoint.pt`` when there is one."""
    threads = torch.get_num_threads()
    try:
        if cfg.run.num_threads > 0:
            torch.set_num_threads(cfg.run.num_threads)
        return _train(cfg, resume, stop_after)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, resume: bool, stop_after: int | None) -> RunResult:
    with torch.inference_mode(False), torch.enable_grad():
        info = setup_distributed(cfg.run.device)
        seed_everything(cfg.run.seed)
        task = build_task(cfg, info)
        seed_everything(cfg.run.seed + 1_000 * info.rank)
        trainer = Trainer(cfg, task, info)
        if info.is_main:
            cfg.out_dir.mkdir(parents=True, exist_ok=True)
            src = cfg.path(cfg.source) if cfg.source != "<config>" else None
            if src is not None and src.is_file():
                shutil.copyfile(src, cfg.out_dir / "train_config.toml")
        result = trainer.run(resume=resume, stop_after=stop_after)
        if info.is_main and result.history:
            last = [r for r in result.history if "loss" in r]
            if last:
                log.info("finished at step %d, loss %.4f", result.step, last[-1]["loss"])
        return result
