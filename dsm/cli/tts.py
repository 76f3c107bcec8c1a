"""`dsm tts INPUT OUTPUT`: text to speech with a Kyutai DSM TTS model.

INPUT is a UTF-8 text file or `-` for stdin; with `--dialog` each non-empty line is a turn, alternating
between the speakers (give one `--voice` per speaker). OUTPUT is an audio file (`.wav`, `.ogg` /
`.opus` as Ogg/Opus, `.flac`, `.mp3`) or `-` to play through the sound card as the audio is generated
(needs the `sounddevice` package).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dsm.audio import WRITE_FORMATS, encode_audio, write_audio
from dsm.cli.common import (
    STDIO,
    add_checkpoint_options,
    check_device,
    check_parent,
    checkpoint_files,
    checkpoint_kwargs,
    label,
    n_q_arg,
    read_input_audio,
)
from dsm.codec import load_mimi
from dsm.errors import DsmError, InputError
from dsm.tts.checkpoint import DEFAULT_TTS_REPO, DEFAULT_VOICE, TtsCheckpoint
from dsm.tts.synthesizer import Synthesis, Synthesizer
from dsm.tts.voices import DEFAULT_VOICE_REPO, available_voices, save_voice, voice_from_audio

TTS_1B6_SUFFIX = ".1e68beda@240.safetensors"

log = logging.getLogger("dsm.cli")

_OPUS_EXTENSIONS = ("ogg", "opus")


def read_text(path: str) -> str:
    """The input text: a UTF-8 file, or stdin for `-`."""
    if path == STDIO:
        return sys.stdin.read()
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: {'is a directory' if file.is_dir() else 'file not found'}")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


def check_output(path: str) -> None:
    """Reject an unusable OUTPUT before any model is loaded."""
    if path == STDIO:
        _sounddevice()
        return
    out = Path(path)
    ext = out.suffix.lower().lstrip(".")
    if ext not in WRITE_FORMATS:
        supported = ", ".join(f".{f}" for f in WRITE_FORMATS)
        raise InputError(
            f"{path}: unknown audio extension '{out.suffix}' (supported: {supported}, or - to play)"
        )
    check_parent(out)


def _sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise InputError(
            "OUTPUT '-' plays the audio through the sound card, which needs the sounddevice package "
            "(pip install sounddevice); or give an output file such as out.wav"
        ) from None
    except OSError as e:  # the package is there but PortAudio is not
        raise InputError(f"cannot play audio: {e} (give an output file such as out.wav instead)") from None
    return sounddevice


def write_output(path: str, audio: np.ndarray, sample_rate: int) -> None:
    ext = Path(path).suffix.lower().lstrip(".")
    wav = torch.from_numpy(audio)[None]
    if ext in _OPUS_EXTENSIONS:  # Ogg/Opus for .ogg as well (write_audio's .ogg is Vorbis)
        data = encode_audio(wav, sample_rate, "opus")
        try:
            Path(path).write_bytes(data)
        except OSError as e:
            raise InputError(f"{path}: cannot write ({e.strerror or e})") from e
    else:
        write_audio(path, wav, sample_rate)


def load_synthesizer(args: argparse.Namespace) -> Synthesizer:
    start = time.perf_counter()
    sampling = {
        "n_q": args.n_q,
        "temperature": args.temp,
        "cfg_coef": args.cfg_coef,
        "padding_bonus": args.padding_bonus,
        "soft_decode": args.soft_decode,
    }
    # options left unset take the model's own (its config's generation table), else the reference's
    synth = Synthesizer.from_checkpoint(
        **checkpoint_kwargs(args),
        voice_repo=args.voice_repo,
        **{k: v for k, v in sampling.items() if v is not None},
    )
    log.info("loaded the TTS model on %s in %.2f s", args.device, time.perf_counter() - start)
    return synth


def cmd_tts(args: argparse.Namespace) -> int:
    if args.list_voices:
        voices, where = available_voices(*_voices_of_model(args))
        print(f"{len(voices)} voices in {where}:")
        for voice in voices:
            print(f"  {voice}")
        return 0
    if args.input is None or args.output is None:
        raise InputError("give INPUT (a text file, or - for stdin) and OUTPUT (an audio file, or - to play)")
    check_output(args.output)
    text = read_text(args.input)
    script: str | list[str] = text
    if args.dialog:
        script = [line.strip() for line in text.splitlines() if line.strip()]
        if not script:
            raise InputError(f"{label(args.input)}: the dialog has no turns")
    synth = load_synthesizer(args)
    voices = args.voice or [synth.default_voice]
    voice = voices[0] if len(voices) == 1 else voices
    synth.entries(script)  # text errors before any generation
    start = time.perf_counter()
    if args.output == STDIO:
        result = play(synth, script, voice, args)
    else:
        result = synthesize_with_progress(synth, script, voice, args)
        write_output(args.output, result.audio, result.sample_rate)
    elapsed = time.perf_counter() - start
    for word in result.words:
        log.info("%7.2f %7.2f  %s", word.start, word.end if word.end is not None else float("nan"), word.text)
    if not args.quiet:
        duration = result.duration
        rtf = elapsed / duration if duration else float("nan")
        first = (
            ""
            if result.time_to_first_audio is None
            else f", first audio after {result.time_to_first_audio:.2f} s"
        )
        print(
            f"{label(args.input)}: {len(result.words)} words, {duration:.2f} s of audio in {elapsed:.2f} s "
            f"(real-time factor {rtf:.2f}{first})",
            file=sys.stderr,
        )
    return 0


def synthesize_with_progress(synth: Synthesizer, script, voice, args: argparse.Namespace) -> Synthesis:
    from tqdm import tqdm

    disable = args.quiet or not sys.stderr.isatty()
    with tqdm(desc="tts", unit="step", file=sys.stderr, disable=disable, delay=1.0) as bar:
        return synth.synthesize(script, voice, seed=args.seed, on_step=lambda: bar.update(1))


def play(synth: Synthesizer, script, voice, args: argparse.Namespace) -> Synthesis:
    """Stream the audio to the sound card as it is generated."""
    sd = _sounddevice()
    session = synth.session(voice, seed=args.seed)
    turns = [script] if isinstance(script, str) else script
    with sd.OutputStream(samplerate=synth.sample_rate, channels=1, dtype="float32") as stream:
        for i, turn in enumerate(turns):
            if i:
                session.new_turn()
            session.push(turn)
            for chunk in session.frames():
                stream.write(chunk.audio[:, None])
        session.end()
        for chunk in session.frames():
            stream.write(chunk.audio[:, None])
    return session.result()


def _voices_of_model(args: argparse.Namespace) -> tuple[str, str]:
    """(Voice repo, voice-file suffix) for --list-voices: the flags, else the model's config (TTS-1.6b's
    suffix when the config cannot be read)."""
    try:
        ckpt = TtsCheckpoint.resolve(**checkpoint_files(args))
        repo, suffix = ckpt.voice_repo, ckpt.voice_suffix
    except DsmError as e:
        log.info("no model config for the voices (%s); using TTS-1.6b's", e)
        repo, suffix = DEFAULT_VOICE_REPO, TTS_1B6_SUFFIX
    if args.voice_repo is not None:
        repo = args.voice_repo
    return repo, suffix if args.voice_suffix is None else args.voice_suffix


def cmd_voice(args: argparse.Namespace) -> int:
    """`dsm voice CLIP OUT.safetensors`: a new voice for a TTS model conditioned on its codec's latent."""
    check_parent(Path(args.output))
    if not args.output.endswith(".safetensors"):
        raise InputError(f"{args.output}: a voice file must end in .safetensors")
    check_device(args.device)
    ckpt = TtsCheckpoint.resolve(**checkpoint_files(args))
    if ckpt.tts_config.voice_seconds is None:
        raise InputError(
            f"{ckpt.config_path}: this model's voices come from a speaker encoder dsm does not have "
            "(Kyutai's TTS models): pick one of its voice repo's voices instead"
        )
    seconds = args.seconds or ckpt.tts_config.voice_seconds
    wav = read_input_audio(args.clip)
    mimi = load_mimi(ckpt.mimi_weight, config=ckpt.mimi_config, device=args.device)
    embedding = voice_from_audio(mimi, wav, seconds)
    save_voice(args.output, embedding)
    print(f"{args.output}: voice from the first {seconds:g} s of {label(args.clip)}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    voice_cmd = commands.add_parser(
        "voice",
        parents=[common],
        help="make a voice file from a clip (dsm's bundled TTS and models trained by `dsm train tts`)",
        description="Make a voice for a TTS model conditioned on its codec's latent (dsm's bundled model, "
        "or one trained with `dsm train tts`): the latent of the clip's first seconds. Use it with "
        "`dsm tts --voice OUT.safetensors`.",
    )
    voice_cmd.set_defaults(func=cmd_voice)
    voice_cmd.add_argument("clip", metavar="CLIP", help="audio of the speaker (any format), or - for stdin")
    voice_cmd.add_argument("output", metavar="OUT", help="the voice file to write (.safetensors)")
    voice_cmd.add_argument(
        "--seconds", type=float, default=None, help="seconds of the clip to use (default: the model's)"
    )
    add_checkpoint_options(voice_cmd, DEFAULT_TTS_REPO)
    parser = commands.add_parser(
        "tts",
        parents=[common],
        help="text to speech with a Kyutai TTS model",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.set_defaults(func=cmd_tts)
    parser.add_argument("input", metavar="INPUT", nargs="?", help="text file (UTF-8), or - for stdin")
    parser.add_argument(
        "output", metavar="OUTPUT", nargs="?", help="audio file (.wav, .ogg/.opus, .flac, .mp3), or - to play"
    )
    voice = parser.add_argument_group("voice")
    voice.add_argument(
        "--voice",
        action="append",
        metavar="VOICE",
        help="voice name in --voice-repo, a .safetensors embedding or hf://repo/file (default: the "
        f"model's; {DEFAULT_VOICE} for Kyutai's); repeat for the speakers of a --dialog",
    )
    voice.add_argument(
        "--voice-repo",
        metavar="REPO",
        help=f"voices repo or directory (default: the model's; {DEFAULT_VOICE_REPO} for Kyutai's)",
    )
    voice.add_argument(
        "--dialog", action="store_true", help="each line of INPUT is a turn, alternating speakers"
    )
    voice.add_argument(
        "--list-voices", action="store_true", help="list the voices of --voice-repo for the model and exit"
    )
    voice.add_argument(
        "--voice-suffix",
        metavar="SUFFIX",
        help="file suffix of the model's voice embeddings, for --list-voices (default: from the model's "
        f"config, else {TTS_1B6_SUFFIX})",
    )
    add_checkpoint_options(parser, DEFAULT_TTS_REPO, "bfloat16; float32 for the bundled model on CPU")
    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--n-q", type=n_q_arg, metavar="N", help="audio codebooks, 1 to 32 (default: all of the model's)"
    )
    gen.add_argument(
        "--temp",
        type=float,
        help="sampling temperature, 0 for greedy (default: the model's, else 0.6; the bundled model's 0)",
    )
    gen.add_argument("--cfg-coef", type=float, help="guidance strength (default: the model's, else 2.0)")
    gen.add_argument(
        "--padding-bonus", type=float, help="> 0 speaks slower, < 0 faster (default: the model's, else 0)"
    )
    gen.add_argument(
        "--soft-decode",
        action=argparse.BooleanOptionalAction,
        help="decode codebooks 1+ as code vectors averaged under the model's distribution, not the drawn "
        "codes (clearer speech from a small model unsure of its acoustic codebooks; default: the model's, "
        "on for the bundled model)",
    )
    gen.add_argument("--seed", type=int, default=None, help="random seed for reproducible output")
