"""`dsm client stt|tts`: clients for moshi-server's WebSocket protocol (dsm's server or Kyutai's).

`dsm client stt FILE|--mic` speaks it as Kyutai's `stt_from_file_rust_server.py` does: `Audio` messages of
1920 samples (24 kHz mono), paced at `--rtf` times real time after `--lead-silence` seconds of silence,
then a `Marker` followed by silence until the marker comes back; each `Word` is printed as it arrives, and
the words with their times (`start - stop  text`) at the end.

`dsm client tts TEXT|- OUT` speaks it as `tts_rust_server.py` does: one `Text` message per word, `Eos`,
then the `Audio` frames until the server closes the socket; the audio is written to OUT (any format dsm
writes, `-` for WAV on stdout) and the word timings are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import numpy as np

from dsm.errors import DsmError, InputError

SAMPLE_RATE = 24_000
FRAME = 1920
MARKER_ID = 0
MAX_TRAILING_SILENCE_S = 40.0  # give up waiting for the marker after this much extra silence
TRAILING_RTF = 4.0


def _ws_url(url: str, path: str) -> str:
    url = url.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif not url.startswith(("ws://", "wss://")):
        raise InputError(f"--url must start with ws://, wss://, http:// or https://, got {url!r}")
    return url + path


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _audio(pcm: np.ndarray) -> bytes:
    import msgpack

    return msgpack.packb({"type": "Audio", "pcm": pcm.tolist()}, use_single_float=True)


async def _connect(session: Any, url: str, api_key: str) -> Any:
    import aiohttp

    try:
        return await session.ws_connect(url, headers={"kyutai-api-key": api_key}, max_msg_size=64 * 2**20)
    except aiohttp.WSServerHandshakeError as e:
        if e.status == 401:
            raise DsmError(f"{url}: the server refused the API key (HTTP 401); pass --api-key") from None
        raise DsmError(f"{url}: WebSocket handshake failed (HTTP {e.status})") from None
    except aiohttp.ClientError as e:
        raise DsmError(f"{url}: cannot connect ({e})") from None


async def stream_file(
    url: str, api_key: str, pcm: np.ndarray, rtf: float, lead_silence: float, live: bool
) -> list[dict[str, Any]]:
    """Send `pcm` (24 kHz) paced at `rtf`; the words [{text, start, stop}] once the marker is back."""
    import aiohttp
    import msgpack

    words: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        ws = await _connect(http, url, api_key)
        async with ws:
            first = await ws.receive(timeout=30)
            if first.type != aiohttp.WSMsgType.BINARY:
                raise DsmError(f"{url}: the server closed the connection before Ready")
            msg = msgpack.unpackb(first.data, raw=False)
            if msg.get("type") == "Error":
                raise DsmError(f"{url}: server error: {msg.get('message')}")
            marker_back = asyncio.Event()

            async def send() -> None:
                audio = np.concatenate([np.zeros(int(lead_silence * SAMPLE_RATE), np.float32), pcm])
                start = time.monotonic()
                for i in range(0, len(audio), FRAME):
                    await ws.send_bytes(_audio(audio[i : i + FRAME]))
                    wait = start + (i + FRAME) / SAMPLE_RATE / rtf - time.monotonic()
                    await asyncio.sleep(max(wait, 0.001))
                await ws.send_bytes(msgpack.packb({"type": "Marker", "id": MARKER_ID}))
                # Silence until the marker is back (the text lags the audio), at most 4x real time so
                # that a slower server does not pile up seconds of it.
                silence = _audio(np.zeros(FRAME, np.float32))
                for _ in range(int(MAX_TRAILING_SILENCE_S * SAMPLE_RATE / FRAME)):
                    if marker_back.is_set() or ws.closed:
                        return
                    await ws.send_bytes(silence)
                    await asyncio.sleep(FRAME / SAMPLE_RATE / min(rtf, TRAILING_RTF))

            sender = asyncio.create_task(send())
            try:
                async for frame in ws:
                    if frame.type != aiohttp.WSMsgType.BINARY:
                        continue
                    msg = msgpack.unpackb(frame.data, raw=False)
                    kind = msg.get("type")
                    if kind == "Word":
                        words.append(
                            {"text": msg["text"], "start": msg["start_time"], "stop": msg["start_time"]}
                        )
                        if live:
                            print(msg["text"], end=" ", file=sys.stderr, flush=True)
                    elif kind == "EndWord" and words:
                        words[-1]["stop"] = msg["stop_time"]
                    elif kind == "Marker":
                        marker_back.set()
                        break
                    elif kind == "Error":
                        raise DsmError(f"{url}: server error: {msg.get('message')}")
                else:
                    if not marker_back.is_set():
                        raise DsmError(f"{url}: the server closed the connection before the end of the audio")
            finally:
                marker_back.set()
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    if live:
        print(file=sys.stderr)
    return words


async def stream_microphone(url: str, api_key: str, show_vad: bool) -> None:
    """Stream the default microphone until Ctrl-C, printing words (and `|` at pauses with --show-vad)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise InputError(f"--mic needs the sounddevice package and an audio device ({e})") from None
    import aiohttp
    import msgpack

    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def on_audio(data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, data[:, 0].copy())

    async with aiohttp.ClientSession() as http:
        ws = await _connect(http, url, api_key)
        async with ws:

            async def send() -> None:
                while True:
                    await ws.send_bytes(_audio(await blocks.get()))

            sender = asyncio.create_task(send())
            spoke = False
            with sd.InputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=FRAME, callback=on_audio
            ):
                try:
                    async for frame in ws:
                        if frame.type != aiohttp.WSMsgType.BINARY:
                            continue
                        msg = msgpack.unpackb(frame.data, raw=False)
                        if msg.get("type") == "Word":
                            print(msg["text"], end=" ", flush=True)
                            spoke = True
                        elif msg.get("type") == "Step" and show_vad and spoke and msg["prs"][2] > 0.5:
                            print("|", end=" ", flush=True)
                            spoke = False
                        elif msg.get("type") == "Error":
                            raise DsmError(f"{url}: server error: {msg.get('message')}")
                finally:
                    sender.cancel()
                    print()


async def synthesize(url: str, api_key: str, text: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Send `text` word by word, then Eos; (audio, words [{text, start, stop}]) once the server closes."""
    import aiohttp
    import msgpack

    frames: list[np.ndarray] = []
    words: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        ws = await _connect(http, url, api_key)
        async with ws:
            for word in text.split():
                await ws.send_bytes(msgpack.packb({"type": "Text", "text": word}))
            await ws.send_bytes(msgpack.packb({"type": "Eos"}))
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.BINARY:
                    continue
                msg = msgpack.unpackb(frame.data, raw=False)
                kind = msg.get("type")
                if kind == "Audio":
                    frames.append(np.asarray(msg["pcm"], dtype=np.float32))
                elif kind == "Text":
                    words.append({"text": msg["text"], "start": msg["start_s"], "stop": msg["stop_s"]})
                elif kind == "Error":
                    raise DsmError(f"{url}: server error: {msg.get('message')}")
            if ws.close_code not in (None, 1000):
                raise DsmError(f"{url}: the server closed the connection with code {ws.close_code}")
    return (np.concatenate(frames) if frames else np.zeros(0, np.float32)), words


def cmd_client_tts(args: argparse.Namespace) -> int:
    _require_server_extra()
    from urllib.parse import urlencode

    from dsm.cli.common import STDIO, check_audio_output, write_output_audio

    text = sys.stdin.read() if args.text == STDIO else args.text
    if not text.strip():
        raise InputError("no text to speak")
    check_audio_output(args.output)
    query = {"format": "PcmMessagePack"} | ({"voice": args.voice} if args.voice else {})
    url = _ws_url(args.url, args.path) + "?" + urlencode(query)
    audio, words = asyncio.run(synthesize(url, args.api_key, text))
    if not len(audio):
        raise DsmError(f"{url}: the server sent no audio")
    import torch

    write_output_audio(args.output, torch.from_numpy(audio)[None, None], SAMPLE_RATE, float32=False)
    if args.output != STDIO:
        for w in words:
            print(f"{w['start']:6.2f} - {w['stop']:6.2f}  {w['text']}")
    return 0


def _require_server_extra() -> None:
    try:
        import aiohttp  # noqa: F401
        import msgpack  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"dsm client needs the server extra ({e.name} is missing): pip install 'dsm[server]'"
        ) from None


def cmd_client_stt(args: argparse.Namespace) -> int:
    _require_server_extra()
    url = _ws_url(args.url, args.path)
    if args.mic:
        asyncio.run(stream_microphone(url, args.api_key, args.show_vad))
        return 0
    if args.input is None:
        raise InputError("give an audio FILE (or - for stdin), or --mic")
    from dsm.cli.common import read_input_audio

    pcm = read_input_audio(args.input)[0, 0].numpy()
    live = not args.quiet and sys.stderr.isatty()
    words = asyncio.run(stream_file(url, args.api_key, pcm, args.rtf, args.lead_silence, live))
    if args.json:
        print(json.dumps(words, ensure_ascii=False))
    else:
        for w in words:
            print(f"{w['start']:6.2f} - {w['stop']:6.2f}  {w['text']}")
    return 0


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    client = commands.add_parser(
        "client",
        parents=[common],
        help="talk to a running dsm or moshi-server",
        description="Clients for the streaming server's WebSocket protocol.",
    )
    actions = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    stt = actions.add_parser(
        "stt",
        parents=[common],
        help="stream an audio file (or the microphone) to the STT endpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stt.set_defaults(func=cmd_client_stt)
    stt.add_argument(
        "input", nargs="?", metavar="FILE", help="audio file (any format dsm reads), or - for stdin"
    )
    stt.add_argument("--mic", action="store_true", help="stream the microphone instead (needs sounddevice)")
    stt.add_argument("--url", default="ws://127.0.0.1:8080", help="server URL (default: ws://127.0.0.1:8080)")
    stt.add_argument(
        "--path", default="/api/asr-streaming", help="endpoint path (default: /api/asr-streaming)"
    )
    stt.add_argument("--api-key", default="public_token", help="API key (default: public_token)")
    stt.add_argument(
        "--rtf", type=_positive_float, default=1.01, help="speed, in multiples of real time (default: 1.01)"
    )
    stt.add_argument(
        "--lead-silence",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="silence sent before the audio, as Kyutai's script does (default: 1.0)",
    )
    stt.add_argument("--json", action="store_true", help="print the words as JSON")
    stt.add_argument("--show-vad", action="store_true", help="with --mic: print | at detected pauses")

    tts = actions.add_parser(
        "tts",
        parents=[common],
        help="speak a text through the TTS endpoint and write the audio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tts.set_defaults(func=cmd_client_tts)
    tts.add_argument("text", metavar="TEXT", help="the text, or - to read it from stdin")
    tts.add_argument(
        "output", metavar="OUT", help="audio file (format from the extension), or - for WAV on stdout"
    )
    tts.add_argument("--voice", help="voice name (the server's default voice when omitted or unknown)")
    tts.add_argument("--url", default="ws://127.0.0.1:8080", help="server URL (default: ws://127.0.0.1:8080)")
    tts.add_argument(
        "--path", default="/api/tts_streaming", help="endpoint path (default: /api/tts_streaming)"
    )
    tts.add_argument("--api-key", default="public_token", help="API key (default: public_token)")
