"""Pieces shared by the `dsm` subcommands: argument types, model flags, progress bars and file I/O."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from dsm.audio import WRITE_FORMATS, encode_audio, read_audio, write_audio
from dsm.bundled import bundled
from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.errors import CheckpointError, InputError
from dsm.hub import mimi_file, repo_config
from dsm.nn.quant import KINDS

log = logging.getLogger("dsm.cli")

STDIO = "-"
EXAMPLE_REPO = "kyutai/stt-1b-en_fr"
_DEFAULTS = MimiConfig()
MAX_N_Q = _DEFAULTS.n_q
SAMPLE_RATE = _DEFAULTS.sample_rate


# -- argument types and shared options -------------------------------------------------------------------


def n_q_arg(text: str) -> int:
    """argparse type for --n-q: an integer in 1..32."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= n <= MAX_N_Q:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_N_Q}, got {n}")
    return n


def device_arg(text: str) -> torch.device:
    """argparse type for --device: anything `torch.device` accepts (cpu, cuda, cuda:1, mps)."""
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0)") from None


def common_options() -> argparse.ArgumentParser:
    """-v/--quiet, accepted both before and after the subcommand (`main` fills in their defaults)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv for debug)"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors, no progress bar"
    )
    return common


def add_mimi_options(parser: argparse.ArgumentParser) -> None:
    """Kyutai-style flags that choose the Mimi weights and where they run."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--mimi-weight",
        metavar="PATH",
        help="Mimi weights (a .safetensors file, or a codec directory); overrides --hf-repo's",
    )
    group.add_argument(
        "--hf-repo",
        metavar="REPO",
        help=f"Hugging Face repo (or a local directory laid out like one) holding Mimi, e.g. {EXAMPLE_REPO} "
        "(default: dsm's bundled codec)",
    )
    group.add_argument(
        "--device", type=device_arg, default=torch.device("cpu"), help="torch device (default: cpu)"
    )
    group.add_argument(
        "--streaming", action="store_true", help="run the streaming encoder/decoder frame by frame"
    )


# -- model loading --------------------------------------------------------------------------------------


def mimi_weight_path(args: argparse.Namespace) -> Path:
    """The Mimi checkpoint named by --mimi-weight, else the one of --hf-repo, else dsm's bundled codec
    (a directory: weights and architecture)."""
    if not (args.mimi_weight or args.hf_repo):
        return bundled("codec")
    if args.mimi_weight:
        return Path(args.mimi_weight).expanduser()
    try:
        return mimi_file(args.hf_repo)
    except CheckpointError as e:
        raise CheckpointError(f"cannot find Mimi weights for --hf-repo {args.hf_repo}: {e}") from e


def check_device(device: torch.device) -> None:
    """Raise InputError when the device's backend is not available in this torch build."""
    available = {
        "cuda": torch.cuda.is_available,
        "mps": lambda: hasattr(torch.backends, "mps") and torch.backends.mps.is_available(),
    }.get(device.type)
    if available is not None and not available():
        raise InputError(
            f"--device {device}: {device.type} is not available on this machine (use --device cpu)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def load_codec(args: argparse.Namespace) -> Mimi:
    """Load Mimi as the model flags say."""
    check_device(args.device)
    path = mimi_weight_path(args)
    config = None
    if args.hf_repo and not args.mimi_weight:  # a model repo of a dsm-trained codec names its architecture
        raw = repo_config(args.hf_repo).get("mimi_config")
        config = None if raw is None else MimiConfig.from_dict(raw)
    start = time.perf_counter()
    mimi = load_mimi(path, config=config, device=args.device)
    log.info("loaded Mimi from %s on %s in %.2f s", path, args.device, time.perf_counter() - start)
    return mimi


# -- progress -------------------------------------------------------------------------------------------


def progress(total: int, desc: str, args: argparse.Namespace) -> Iterator[int]:
    """range(total), with a tqdm bar on stderr when it is a terminal and --quiet is off."""
    from tqdm import tqdm

    disable = args.quiet or not sys.stderr.isatty()
    # delay: only inputs that take a while (long ones) get a bar at all.
    return iter(tqdm(range(total), desc=desc, unit="frame", file=sys.stderr, disable=disable, delay=1.0))


# -- files ----------------------------------------------------------------------------------------------


def label(path: str) -> str:
    return "<stdin>" if path == STDIO else path


def read_input_audio(path: str) -> torch.Tensor:
    """Audio file (or stdin for `-`) as a float32 [1, 1, T] tensor at 24 kHz mono."""
    source = sys.stdin.buffer if path == STDIO else path
    wav = read_audio(source, sample_rate=SAMPLE_RATE, mono=True, name=label(path))
    return torch.from_numpy(wav).view(1, 1, -1)


def check_audio_output(path: str, float32: bool = False) -> None:
    """Reject an output path write_audio would refuse, before any time is spent computing."""
    if path == STDIO:
        return
    out = Path(path)
    ext = out.suffix.lower().lstrip(".")
    if ext not in WRITE_FORMATS:
        supported = ", ".join(f".{f}" for f in WRITE_FORMATS)
        raise InputError(
            f"{path}: unknown audio extension '{out.suffix}' (supported: {supported}, or - for stdout)"
        )
    if float32 and ext != "wav":
        raise InputError(f"{path}: --float32 only applies to .wav output")
    check_parent(out)


def check_parent(out: Path) -> None:
    if not out.parent.is_dir():
        raise InputError(f"{out}: cannot write, directory '{out.parent}' does not exist")
    if out.is_dir():
        raise InputError(f"{out}: cannot write, it is a directory")


def write_output_audio(path: str, wav: torch.Tensor, sample_rate: int, float32: bool) -> None:
    """Write audio to a file (format from the extension) or WAV bytes to stdout for `-`."""
    subtype = "FLOAT" if float32 else None
    if path == STDIO:
        write_stdout(encode_audio(wav, sample_rate, "wav", subtype=subtype))
    else:
        write_audio(path, wav, sample_rate, subtype=subtype)


def write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def read_bytes(path: str) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: {'is a directory' if file.is_dir() else 'file not found'}")
    try:
        return file.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


# -- DSM checkpoints (STT, TTS) -------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_checkpoint_options(
    parser: argparse.ArgumentParser, published: str, dtype_help: str | None = None
) -> None:
    """Kyutai's model flags for a DSM checkpoint: a hub repo (or a local directory laid out like one),
    each file overridable (an explicit file wins over the repo's), the device and, with ``dtype_help``
    (the default, for the help), the LM dtype and quantization. Without any of them dsm's bundled model
    is used; ``published`` names Kyutai's model in the help."""
    group = parser.add_argument_group("model")
    repo_help = (
        f"Hugging Face repo id (e.g. {published}), or a local directory laid out like one (default: dsm's "
        "bundled English model)"
    )
    group.add_argument("--hf-repo", metavar="REPO", help=repo_help)
    group.add_argument("--moshi-weight", metavar="PATH", help="LM weights (.safetensors)")
    group.add_argument("--mimi-weight", metavar="PATH", help="Mimi weights (.safetensors)")
    group.add_argument("--tokenizer", metavar="PATH", help="SentencePiece model")
    group.add_argument("--config-path", metavar="PATH", help="Kyutai config.json")
    group.add_argument(
        "--device", type=device_arg, default=torch.device("cpu"), help="torch device (default: cpu)"
    )
    if dtype_help is not None:
        group.add_argument(
            "--dtype", choices=sorted(DTYPES), help=f"LM weights dtype (default: {dtype_help})"
        )
        group.add_argument(
            "--quantize",
            choices=KINDS,
            help="LM products on converted weights (CPU): fp16 (as accurate as the default, ~2.4x "
            "faster steps on AVX-512 CPUs), int8 (weight-only), w8a8 (int8 weights and activations, "
            "fastest) or int4 (lossiest); default: none",
        )


def checkpoint_files(args: argparse.Namespace) -> dict:
    """The file flags of `add_checkpoint_options`, as `*Checkpoint.resolve` takes them."""
    return {
        k: getattr(args, k) for k in ("hf_repo", "moshi_weight", "mimi_weight", "tokenizer", "config_path")
    }


def checkpoint_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for `*.from_checkpoint` from the flags of `add_checkpoint_options`."""
    check_device(args.device)
    return {
        **checkpoint_files(args),
        "device": args.device,
        "dtype": DTYPES[args.dtype] if args.dtype else None,
        "quantize": args.quantize,
    }
