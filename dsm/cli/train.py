"""`dsm train codec|stt|tts --config FILE.toml [--resume]`: train or fine-tune a codec, STT or TTS model.

Multi-GPU / multi-node: launch the same command with torchrun, e.g.
``torchrun --no-python --nproc_per_node 8 dsm train stt --config stt.toml``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dsm.errors import InputError

log = logging.getLogger("dsm.cli")

KIND_HELP = {
    "codec": "a Mimi-architecture audio codec (reconstruction losses, optional adversarial)",
    "stt": "a DSM speech-to-text model, from scratch or fine-tuning a Kyutai checkpoint (full or LoRA)",
    "tts": "a DSM text-to-speech model with the depth transformer and voice conditioning",
}


def register(commands, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train",
        parents=[common],
        help="train or fine-tune models from a TOML config",
        description="Train or fine-tune a codec, STT or TTS model as a TOML config says "
        "(examples: configs/train/*.toml).",
    )
    kinds = parser.add_subparsers(dest="train_kind", required=True, metavar="KIND")
    for kind, help_text in KIND_HELP.items():
        sub = kinds.add_parser(kind, parents=[common], help=help_text, description=f"Train {help_text}.")
        sub.add_argument("--config", required=True, metavar="FILE.toml", help="training config (TOML)")
        sub.add_argument(
            "--resume", action="store_true", help="continue from <out_dir>/checkpoint.pt if it exists"
        )
        sub.add_argument("--max-steps", type=int, metavar="N", help="override [run].max_steps")
        sub.add_argument("--out-dir", metavar="DIR", help="override [run].out_dir")
        sub.add_argument("--device", metavar="DEVICE", help="override [run].device (cpu, cuda)")
        sub.add_argument("--threads", type=int, metavar="N", help="override [run].num_threads (CPU threads)")
        sub.set_defaults(func=run_train, train_kind=kind)


def run_train(args: argparse.Namespace) -> int:
    from dsm.train.config import load_config
    from dsm.train.run import train

    cfg = load_config(args.config, args.train_kind)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise InputError(f"--max-steps must be >= 1, got {args.max_steps}")
        cfg.run.max_steps = args.max_steps
    if args.out_dir:
        cfg.run.out_dir = str(Path(args.out_dir).resolve())
    if args.device:
        cfg.run.device = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        cfg.run.num_threads = args.threads
    if args.quiet:
        cfg.run.progress = False
    if args.verbose == 0 and not args.quiet:
        logging.getLogger("dsm.train").setLevel(logging.INFO)
    result = train(cfg, resume=args.resume)
    print(f"trained {args.train_kind} for {result.step} steps; outputs in {cfg.out_dir}")
    return 0
