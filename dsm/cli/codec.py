"""`dsm codec encode|decode|roundtrip`: audio to Mimi codes and back."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from dsm import __version__
from dsm.cli.common import (
    MAX_N_Q,
    STDIO,
    add_mimi_options,
    check_audio_output,
    check_parent,
    label,
    load_codec,
    n_q_arg,
    progress,
    read_bytes,
    read_input_audio,
    write_output_audio,
    write_stdout,
)
from dsm.codec import Mimi
from dsm.errors import InputError

log = logging.getLogger("dsm.cli")


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


# -- codes files -------------------------------------------------------------------------------------


def save_codes(path: str, codes: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write codes [1, n_q, F] and string metadata as safetensors (to stdout for `-`)."""
    data = save_safetensors_bytes({"codes": codes.detach().cpu().contiguous()}, metadata=metadata)
    if path == STDIO:
        write_stdout(data)
        return
    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from e


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
    name = label(path)
    data = read_bytes(path)
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


def codebooks(mimi: Mimi, n_q: int | None) -> int:
    """--n-q, checked against the codec (None: all of its codebooks)."""
    if n_q is None:
        return mimi.total_codebooks
    if n_q > mimi.total_codebooks:
        raise InputError(f"--n-q {n_q}: this codec has {mimi.total_codebooks} codebooks")
    return n_q


# -- codec commands -------------------------------------------------------------------------------------


def cmd_codec_encode(args: argparse.Namespace) -> int:
    """`dsm codec encode IN OUT.safetensors`: audio -> Mimi codes."""
    if args.output != STDIO:
        check_parent(Path(args.output))
    wav = read_input_audio(args.input)
    mimi = load_codec(args)
    n_q = codebooks(mimi, args.n_q)
    start = time.perf_counter()
    codes = encode_wav(mimi, wav, n_q, args)
    log.info("encoded %d frames x %d codebooks in %.2f s", codes.shape[-1], n_q, time.perf_counter() - start)
    metadata = {
        "sample_rate": str(mimi.sample_rate),
        "frame_rate": str(mimi.frame_rate),
        "num_samples": str(wav.shape[-1]),
        "n_q": str(n_q),
        "dsm_version": __version__,
    }
    save_codes(args.output, codes, metadata)
    return 0


def cmd_codec_decode(args: argparse.Namespace) -> int:
    """`dsm codec decode CODES.safetensors OUT`: Mimi codes -> audio, trimmed to the original length."""
    check_audio_output(args.output, args.float32)
    codes, metadata = load_codes(args.input)
    num_samples = _int_metadata(metadata, "num_samples", label(args.input))
    mimi = load_codec(args)
    check_codes_fit(codes, mimi, label(args.input))
    rate = _int_metadata(metadata, "sample_rate", label(args.input))
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
    check_audio_output(args.output, args.float32)
    wav = read_input_audio(args.input)
    mimi = load_codec(args)
    n_q = codebooks(mimi, args.n_q)
    start = time.perf_counter()
    codes = encode_wav(mimi, wav, n_q, args)
    out = decode_codes(mimi, codes, args)[..., : wav.shape[-1]]
    elapsed = time.perf_counter() - start
    write_output_audio(args.output, out, mimi.sample_rate, args.float32)
    if not args.quiet:
        duration = wav.shape[-1] / mimi.sample_rate
        frames = codes.shape[-1]
        print(
            f"{label(args.input)}: {duration:.2f} s of audio, {frames} frames x {n_q} codebooks, "
            f"encoded+decoded in {elapsed:.2f} s (real-time factor {elapsed / duration:.3f})",
            file=sys.stderr if args.output == STDIO else sys.stdout,
        )
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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

    n_q_help = f"number of codebooks to keep, 1 to {MAX_N_Q} (default: all of the codec's)"
    float_help = "write 32-bit float WAV (no 16-bit rounding or clipping); .wav or - only"

    encode = action("encode", cmd_codec_encode, "encode audio to Mimi codes (safetensors)")
    encode.add_argument("input", metavar="IN", help="audio file (wav, flac, mp3, ogg, opus), or - for stdin")
    encode.add_argument("output", metavar="OUT", help="codes file (.safetensors), or - for stdout")
    encode.add_argument("--n-q", type=n_q_arg, default=None, metavar="N", help=n_q_help)
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
    roundtrip.add_argument("--n-q", type=n_q_arg, default=None, metavar="N", help=n_q_help)
    roundtrip.add_argument("--float32", action="store_true", help=float_help)
    add_mimi_options(roundtrip)
