"""The `dsm` command line.

Each command is a `cmd_*` function taking the parsed arguments and returning an exit status; `build_parser`
wires them into argparse subcommands (`parser.set_defaults(func=...)`). Failures that are the user's to
fix raise `DsmError` and are reported as `dsm: error: <message>` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from dsm import __version__
from dsm.audio import WRITE_FORMATS, encode_audio, read_audio, write_audio
from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.errors import CheckpointError, DsmError, InputError
from dsm.hub import mimi_file

log = logging.getLogger("dsm.cli")

STDIO = "-"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXAMPLE_REPO = "kyutai/stt-1b-en_fr"
_DEFAULTS = MimiConfig()
MAX_N_Q = _DEFAULTS.n_q
SAMPLE_RATE = _DEFAULTS.sample_rate


# -- argument types and shared options -------------------------------------------------------------------


def _n_q(text: str) -> int:
    """argparse type for --n-q: an integer in 1..32."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= n <= MAX_N_Q:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_N_Q}, got {n}")
    return n


def _device(text: str) -> torch.device:
    """argparse type for --device: anything `torch.device` accepts (cpu, cuda, cuda:1, mps)."""
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0)") from None


def _common_options() -> argparse.ArgumentParser:
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
        "--mimi-weight", metavar="PATH", help="Mimi weights (a .safetensors file); overrides --hf-repo's"
    )
    group.add_argument(
        "--hf-repo",
        metavar="REPO",
        help=f"Hugging Face repo (or a local directory laid out like one) holding Mimi, e.g. {EXAMPLE_REPO}",
    )
    group.add_argument(
        "--device", type=_device, default=torch.device("cpu"), help="torch device (default: cpu)"
    )
    group.add_argument(
        "--streaming", action="store_true", help="run the streaming encoder/decoder frame by frame"
    )


# -- model loading --------------------------------------------------------------------------------------


def require_mimi_source(args: argparse.Namespace) -> None:
    """Fail early (before any I/O) when no Mimi weights were named."""
    if not (args.mimi_weight or args.hf_repo):
        raise InputError(
            "no Mimi weights given: pass --mimi-weight PATH or --hf-repo REPO "
            f"(e.g. --hf-repo {EXAMPLE_REPO})"
        )


def mimi_weight_path(args: argparse.Namespace) -> Path:
    """The Mimi checkpoint named by --mimi-weight, else the one of --hf-repo."""
    require_mimi_source(args)
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
    start = time.perf_counter()
    mimi = load_mimi(path, device=args.device)
    log.info("loaded Mimi from %s on %s in %.2f s", path, args.device, time.perf_counter() - start)
    return mimi


# -- progress -------------------------------------------------------------------------------------------


def progress(total: int, desc: str, args: argparse.Namespace) -> Iterator[int]:
    """range(total), with a tqdm bar on stderr when it is a terminal and --quiet is off."""
    from tqdm import tqdm

    disable = args.quiet or not sys.stderr.isatty()
    # delay: only inputs that take a while (long ones) get a bar at all.
    return iter(tqdm(range(total), desc=desc, unit="frame", file=sys.stderr, disable=disable, delay=1.0))


# -- codec operations -----------------------------------------------------------------------------------


def encode_wav(mimi: Mimi, wav: torch.Tensor, n_q: int, args: argparse.Namespace) -> torch.Tensor:
    """wav [1, 1, T] -> codes [1, n_q, ceil(T / frame)], one-shot or frame by frame with --streaming."""
    wav = wav.to(args.device)
    if not args.streaming:
        return mimi.encode(wav, n_q=n_q)
    frame = mimi.frame_size
    wav = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % frame))
    encoder = mimi.streaming_encoder(1, n_q=n_q)
    steps = progress(wav.shape[-1] // frame, "encode", args)
    return torch.cat([encoder.step(wav[..., i * frame : (i + 1) * frame]) for i in steps], dim=-1)


def decode_codes(mimi: Mimi, codes: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """codes [1, K, F] -> wav [1, 1, F * frame], one-shot or frame by frame with --streaming."""
    codes = codes.to(args.device)
    if not args.streaming:
        return mimi.decode(codes)
    decoder = mimi.streaming_decoder(1)
    steps = progress(codes.shape[-1], "decode", args)
    return torch.cat([decoder.step(codes[..., i : i + 1]) for i in steps], dim=-1)


# -- files ----------------------------------------------------------------------------------------------


def _label(path: str) -> str:
    return "<stdin>" if path == STDIO else path


def read_input_audio(path: str) -> torch.Tensor:
    """Audio file (or stdin for `-`) as a float32 [1, 1, T] tensor at 24 kHz mono."""
    source = sys.stdin.buffer if path == STDIO else path
    wav = read_audio(source, sample_rate=SAMPLE_RATE, mono=True, name=_label(path))
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
    _check_parent(out)


def _check_parent(out: Path) -> None:
    if not out.parent.is_dir():
        raise InputError(f"{out}: cannot write, directory '{out.parent}' does not exist")
    if out.is_dir():
        raise InputError(f"{out}: cannot write, it is a directory")


def write_output_audio(path: str, wav: torch.Tensor, sample_rate: int, float32: bool) -> None:
    """Write audio to a file (format from the extension) or WAV bytes to stdout for `-`."""
    subtype = "FLOAT" if float32 else None
    if path == STDIO:
        _write_stdout(encode_audio(wav, sample_rate, "wav", subtype=subtype))
    else:
        write_audio(path, wav, sample_rate, subtype=subtype)


def _write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def save_codes(path: str, codes: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write codes [1, n_q, F] and string metadata as safetensors (to stdout for `-`)."""
    data = save_safetensors_bytes({"codes": codes.detach().cpu().contiguous()}, metadata=metadata)
    if path == STDIO:
        _write_stdout(data)
        return
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from e


def _read_bytes(path: str) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: {'is a directory' if file.is_dir() else 'file not found'}")
    try:
        return file.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


def _safetensors_metadata(data: bytes, name: str) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (raising InputError when it is not safetensors)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError("bad header size")
        header = json.loads(data[8 : 8 + size])
    except ValueError:
        raise InputError(f"{name}: not a safetensors codes file (as written by `dsm codec encode`)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def load_codes(path: str) -> tuple[torch.Tensor, dict[str, str]]:
    """Codes [1, n_q, F] (int64) and metadata from a safetensors file, with structural checks."""
    name = _label(path)
    data = _read_bytes(path)
    metadata = _safetensors_metadata(data, name)
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as e:  # safetensors raises its own error types for corrupt payloads
        raise InputError(f"{name}: not a readable safetensors file ({e})") from e
    if "codes" not in tensors:
        found = ", ".join(sorted(tensors)) or "none"
        raise InputError(f"{name}: no 'codes' tensor (tensors found: {found})")
    codes = tensors["codes"]
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise InputError(f"{name}: codes must be integers, got {codes.dtype}")
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3 or codes.shape[0] != 1:
        raise InputError(
            f"{name}: codes must have shape [n_q, frames] or [1, n_q, frames], got {list(codes.shape)}"
        )
    if codes.shape[-1] == 0:
        raise InputError(f"{name}: codes have 0 frames")
    return codes.long(), metadata


def check_codes_fit(codes: torch.Tensor, mimi: Mimi, name: str) -> None:
    """Raise InputError (naming the file) when codes do not fit the codec's codebooks."""
    if not 1 <= codes.shape[1] <= mimi.total_codebooks:
        raise InputError(f"{name}: {codes.shape[1]} codebooks, Mimi decodes 1 to {mimi.total_codebooks}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= mimi.cardinality:
        raise InputError(
            f"{name}: codes must lie in [0, {mimi.cardinality - 1}], got values in [{low}, {high}]"
        )


def _int_metadata(metadata: dict[str, str], key: str, name: str) -> int | None:
    if key not in metadata:
        return None
    try:
        value = int(metadata[key])
    except ValueError:
        raise InputError(f"{name}: metadata {key}={metadata[key]!r} is not an integer") from None
    if value < 1:
        raise InputError(f"{name}: metadata {key}={value} must be positive")
    return value


# -- codec commands -------------------------------------------------------------------------------------


def cmd_codec_encode(args: argparse.Namespace) -> int:
    """`dsm codec encode IN OUT.safetensors`: audio -> Mimi codes."""
    require_mimi_source(args)
    if args.output != STDIO:
        _check_parent(Path(args.output))
    wav = read_input_audio(args.input)
    mimi = load_codec(args)
    start = time.perf_counter()
    codes = encode_wav(mimi, wav, args.n_q, args)
    log.info(
        "encoded %d frames x %d codebooks in %.2f s", codes.shape[-1], args.n_q, time.perf_counter() - start
    )
    metadata = {
        "sample_rate": str(mimi.sample_rate),
        "frame_rate": str(mimi.frame_rate),
        "num_samples": str(wav.shape[-1]),
        "n_q": str(args.n_q),
        "dsm_version": __version__,
    }
    save_codes(args.output, codes, metadata)
    return 0


def cmd_codec_decode(args: argparse.Namespace) -> int:
    """`dsm codec decode CODES.safetensors OUT`: Mimi codes -> audio, trimmed to the original length."""
    require_mimi_source(args)
    check_audio_output(args.output, args.float32)
    codes, metadata = load_codes(args.input)
    num_samples = _int_metadata(metadata, "num_samples", _label(args.input))
    mimi = load_codec(args)
    check_codes_fit(codes, mimi, _label(args.input))
    rate = _int_metadata(metadata, "sample_rate", _label(args.input))
    if rate is not None and rate != mimi.sample_rate:
        log.warning("%s says sample_rate=%d, but Mimi runs at %d", args.input, rate, mimi.sample_rate)
    start = time.perf_counter()
    wav = decode_codes(mimi, codes, args)
    log.info("decoded %d frames in %.2f s", codes.shape[-1], time.perf_counter() - start)
    if num_samples is not None:
        if num_samples > wav.shape[-1]:
            log.warning(
                "%s: num_samples=%d exceeds the %d decoded samples", args.input, num_samples, wav.shape[-1]
            )
        wav = wav[..., :num_samples]
    write_output_audio(args.output, wav, mimi.sample_rate, args.float32)
    return 0


def cmd_codec_roundtrip(args: argparse.Namespace) -> int:
    """`dsm codec roundtrip IN OUT`: encode then decode, and print a one-line summary."""
    require_mimi_source(args)
    check_audio_output(args.output, args.float32)
    wav = read_input_audio(args.input)
    mimi = load_codec(args)
    start = time.perf_counter()
    codes = encode_wav(mimi, wav, args.n_q, args)
    out = decode_codes(mimi, codes, args)[..., : wav.shape[-1]]
    elapsed = time.perf_counter() - start
    write_output_audio(args.output, out, mimi.sample_rate, args.float32)
    if not args.quiet:
        duration = wav.shape[-1] / mimi.sample_rate
        frames = codes.shape[-1]
        print(
            f"{_label(args.input)}: {duration:.2f} s of audio, {frames} frames x {args.n_q} codebooks, "
            f"encoded+decoded in {elapsed:.2f} s (real-time factor {elapsed / duration:.3f})",
            file=sys.stderr if args.output == STDIO else sys.stdout,
        )
    return 0


def _add_codec_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    codec = commands.add_parser(
        "codec",
        parents=[common],
        help="encode/decode audio with the Mimi codec",
        description="Mimi codec tools.",
    )
    actions = codec.add_subparsers(dest="codec_command", required=True, metavar="ACTION")

    def action(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(func=func)
        return parser

    n_q_help = f"number of codebooks to keep, 1 to {MAX_N_Q} (default: {MAX_N_Q})"
    float_help = "write 32-bit float WAV (no 16-bit rounding or clipping); .wav or - only"

    encode = action("encode", cmd_codec_encode, "encode audio to Mimi codes (safetensors)")
    encode.add_argument("input", metavar="IN", help="audio file (wav, flac, mp3, ogg, opus), or - for stdin")
    encode.add_argument("output", metavar="OUT", help="codes file (.safetensors), or - for stdout")
    encode.add_argument("--n-q", type=_n_q, default=MAX_N_Q, metavar="N", help=n_q_help)
    add_mimi_options(encode)

    decode = action("decode", cmd_codec_decode, "decode Mimi codes (safetensors) to audio")
    decode.add_argument("input", metavar="CODES", help="codes file from `dsm codec encode`, or - for stdin")
    decode.add_argument(
        "output", metavar="OUT", help="audio file (format from the extension), or - for WAV on stdout"
    )
    decode.add_argument("--float32", action="store_true", help=float_help)
    add_mimi_options(decode)

    roundtrip = action("roundtrip", cmd_codec_roundtrip, "encode then decode audio, printing speed")
    roundtrip.add_argument("input", metavar="IN", help="audio file, or - for stdin")
    roundtrip.add_argument(
        "output", metavar="OUT", help="audio file (format from the extension), or - for stdout"
    )
    roundtrip.add_argument("--n-q", type=_n_q, default=MAX_N_Q, metavar="N", help=n_q_help)
    roundtrip.add_argument("--float32", action="store_true", help=float_help)
    add_mimi_options(roundtrip)


# -- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `dsm` parser; each leaf subcommand sets `func`."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="dsm", description="Delayed Streams Modeling: streaming speech tools.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"dsm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_codec_parser(commands, common)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv, errors only with --quiet."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logger = logging.getLogger("dsm")
    for handler in [h for h in logger.handlers if getattr(h, "_dsm_cli", False)]:
        logger.removeHandler(handler)  # a previous main() call in this process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._dsm_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the `dsm` command line; returns the exit status (0 ok, 2 usage/user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors: return their status instead of exiting
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    # -v/-q default to SUPPRESS so a subcommand does not reset what was given before it.
    args.verbose, args.quiet = getattr(args, "verbose", 0), getattr(args, "quiet", False)
    setup_logging(args.verbose, args.quiet)
    try:
        with torch.inference_mode():
            return args.func(args)
    except DsmError as e:
        print(f"dsm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dsm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
