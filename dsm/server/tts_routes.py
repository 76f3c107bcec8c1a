"""HTTP and WebSocket endpoints of a `Py` (TTS) module.

- `GET path` (WebSocket, default `/api/tts_streaming`, query `format` and `voice`): moshi-server's TTS
  protocol (§4): `Text` / `Eos` / `Voice` (and a lone `0x00` byte for Eos, WebSocket text frames for Text)
  in; per `format` (`OggOpus` by default, `OggOpusMessagePack`, `Pcm`, `PcmMessagePack`) the audio of each
  80 ms frame, and in the msgpack formats `Ready` first and `Text` word timestamps; the server closes the
  socket after the last audio.
- `POST path`: JSON `{"text", "voice"}` -> a streamed WAV (16-bit, 24 kHz, unknown-length header).
- `POST /v1/audio/speech` (OpenAI style): JSON `{"input", "voice", "response_format", "speed"}` -> audio
  (`wav`, `pcm` 16-bit, `flac`, `opus`, `mp3`).

An unknown voice name falls back to the module's default voice, as in moshi-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from typing import Any

import numpy as np
import torch
from aiohttp import WSCloseCode, WSMsgType, web

from dsm.audio import encode_audio
from dsm.audio.opus import OpusStreamEncoder
from dsm.errors import DsmError
from dsm.server.asr_model import mimi_config_from_table, parse_dtype, pick_device
from dsm.server.config import TtsModuleConfig, resolve_snapshot
from dsm.server.context import ServerContext
from dsm.server.logs import event
from dsm.server.protocol import (
    TTS_TYPES,
    EosIn,
    ProtocolError,
    TextIn,
    VoiceIn,
    error,
    pack,
    parse_client_message,
)
from dsm.server.tts import BatchedTts, TtsSession
from dsm.server.ws import Ending, SessionSocket
from dsm.tts.checkpoint import DEFAULT_TTS_REPO, DEFAULT_VOICE
from dsm.tts.synthesizer import Synthesizer

__all__ = ["TtsService"]

log = logging.getLogger("dsm.server")

SAMPLE_RATE = 24_000
FORMATS = ("OggOpus", "OggOpusMessagePack", "Pcm", "PcmMessagePack")
MSGPACK_FORMATS = ("OggOpusMessagePack", "PcmMessagePack")
SPEECH_FORMATS = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
}
PING_INTERVAL_S = 10.0
SENDER_GRACE_S = 5.0
PCM_LIMIT = 0.99  # moshi-server clamps the samples of Audio messages to +-0.99
# tts.py's Config fields (the `py` table) that map onto Synthesizer options.
PY_OPTIONS = {
    "n_q": "n_q",
    "temp": "temperature",
    "cfg_coef": "cfg_coef",
    "max_padding": "max_padding",
    "initial_padding": "initial_padding",
    "final_padding": "final_padding",
    "padding_between": "padding_between",
    "padding_bonus": "padding_bonus",
}


def wav_header() -> bytes:
    """moshi-server's streamed WAV header: PCM 16-bit mono 24 kHz, RIFF and data sizes 0xFFFFFFFF."""
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
        + b"data" + struct.pack("<I", 0xFFFFFFFF)
    )  # fmt: skip


def pcm16(pcm: np.ndarray) -> bytes:
    """Samples clamped to [-1, 1], times 32767, truncated toward zero (as moshi-server)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16).astype("<i2").tobytes()


class TtsService:
    """One TTS module: its model loop and its routes."""

    def __init__(self, cfg: TtsModuleConfig, synth: Synthesizer, default_voice: str, ctx: ServerContext):
        self.cfg = cfg
        self.synth = synth
        self.ctx = ctx
        self.default_voice_name = default_voice
        self.loop = BatchedTts(
            cfg.name, synth, cfg.batch_size, synth.voice_embedding(default_voice), ctx.metrics
        )

    @classmethod
    def load(cls, cfg: TtsModuleConfig, ctx: ServerContext, device: str | None = None) -> TtsService:
        """Load the model of the module's `py` table (tts.py's `Config`) and its voices; warm up."""
        py = dict(cfg.py)
        where = f"modules.{cfg.name}.py"
        dev = pick_device(device or (cfg.device if cfg.device != "auto" else str(py.get("device", "auto"))))
        options: dict[str, Any] = {}
        for key, option in PY_OPTIONS.items():
            if key in py:
                value = py[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise DsmError(f"{where}.{key}: expected a number, got {value!r}")
                options[option] = (
                    int(value)
                    if key in ("n_q", "max_padding", "initial_padding", "final_padding", "padding_between")
                    else float(value)
                )
        if "soft_decode" in py:  # dsm extension (`Synthesizer(soft_decode=...)`)
            if not isinstance(py["soft_decode"], bool):
                raise DsmError(f"{where}.soft_decode: expected true or false, got {py['soft_decode']!r}")
            options["soft_decode"] = py["soft_decode"]
        if "voice_folder" in py:
            options["voice_repo"] = str(resolve_snapshot(str(py["voice_folder"]), f"{where}.voice_folder"))
        synth = Synthesizer.from_checkpoint(
            py.get("hf_repo", DEFAULT_TTS_REPO),
            moshi_weight=py.get("moshi_weight"),
            mimi_weight=py.get("mimi_weight"),
            tokenizer=py.get("tokenizer") or cfg.text_tokenizer_file,
            config_path=py.get("config_path"),
            device=dev,
            dtype=parse_dtype(cfg.dtype_override, dev),
            mimi_config=mimi_config_from_table(cfg.mimi_config, f"modules.{cfg.name}"),
            exact=cfg.exact,
            quantize=cfg.quantize,
            **options,
        )
        # the reference server's default voice, unless the model's config names its own
        model_voice = synth.default_voice != DEFAULT_VOICE
        default_voice = str(
            py.get("default_voice") or (synth.default_voice if model_voice else "barack_demo.wav")
        )
        try:
            synth.voice_embedding(default_voice)
        except DsmError as e:
            raise DsmError(f"{where}.default_voice: {e}") from e
        service = cls(cfg, synth, default_voice, ctx)
        service.loop.warmup()
        return service

    def routes(self) -> list[web.RouteDef]:
        routes = [web.get(self.cfg.path, self.websocket), web.post(self.cfg.path, self.post)]
        if self.cfg.openai_path:
            routes.append(web.post(self.cfg.openai_path, self.openai_speech))
        return routes

    def info(self) -> dict[str, str]:
        return {
            "type": "py",
            "path": self.cfg.path,
            "used_slots": str(self.loop.used_slots),
            "total_slots": str(self.cfg.batch_size),
            "script": "dsm.tts",
        }

    async def _voice(self, name: str | None) -> torch.Tensor:
        """The embedding of a voice name; the default voice for None or an unknown name."""
        if not name:
            return self.loop.default_voice
        try:
            return await asyncio.get_running_loop().run_in_executor(None, self.synth.voice_embedding, name)
        except DsmError:
            event(log, "tts_unknown_voice", level=logging.DEBUG, module=self.cfg.name, voice=name)
            return self.loop.default_voice

    # -- WebSocket ---------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        fmt = request.query.get("format", "OggOpus")
        if fmt not in FORMATS:  # checked before the key, as moshi-server's query extractor does
            return web.Response(
                status=400, text=f"Failed to deserialize query string: unknown format {fmt!r}"
            )
        if not ctx.authorized(request, allow_query=True):
            ctx.count_error("unauthorized")
            return web.Response(status=401)
        voice = await self._voice(request.query.get("voice"))
        ws = SessionSocket(
            max_msg_size=self.cfg.max_message_bytes,
            heartbeat=PING_INTERVAL_S,
            compress=False,
            send_errors=fmt in MSGPACK_FORMATS,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade")
        await ws.prepare(request)
        session = self.loop.claim(asyncio.get_running_loop(), voice)
        if session is None:
            ctx.count_error("no_free_channels")
            if fmt in MSGPACK_FORMATS:
                await ws.send_bytes(error("no free channels"))
                await ws.close()
            else:
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"no free channels")
            return ws
        ctx.sockets.add(ws)
        event(
            log,
            "tts_session_start",
            module=self.cfg.name,
            session=session.id,
            slot=session.slot,
            format=fmt,
            peer=request.headers.get("X-Real-IP") or request.remote or "?",
        )
        sender = asyncio.create_task(self._send(ws, session, fmt))
        ending: Ending | None = None
        try:
            ending = await self._receive(ws, session)
        except Exception:  # noqa: BLE001 - a bug here must end only this session
            log.exception("tts session %d failed", session.id)
            ending = Ending("internal server error", WSCloseCode.INTERNAL_ERROR, "internal")
        if ending is not None or ws.closed:
            session.release()  # the client left or misbehaved: stop generating for it
            done = {
                "type": "_end",
                "error": ending.message if ending else None,
                "code": ending.code if ending else WSCloseCode.OK,
            }
            session.outbox.put_nowait([done])
        with contextlib.suppress(asyncio.CancelledError):
            await sender  # a normal session ends when the loop has sent the last audio
        session.release()
        ctx.sockets.discard(ws)
        if ending is not None and ending.kind:
            ctx.count_error(ending.kind)
        event(
            log,
            "tts_session_end",
            module=self.cfg.name,
            session=session.id,
            slot=session.slot,
            steps=session.offset,
            frames=session.frames_sent,
            seconds=round(time.monotonic() - session.started, 3),
            first_audio_s=None if session.first_audio is None else round(session.first_audio, 3),
            reason=(ending.kind if ending and ending.kind else "done"),
            **({"error": ending.message} if ending and ending.message else {}),
        )
        return ws

    async def _send(self, ws: SessionSocket, session: TtsSession, fmt: str) -> None:
        """Session start messages, then the loop's messages in `fmt`, then the close."""
        msgpack_format = fmt in MSGPACK_FORMATS
        opus = OpusStreamEncoder(SAMPLE_RATE, name="tts output") if fmt.startswith("OggOpus") else None
        try:
            if msgpack_format:
                await ws.send_bytes(pack("Ready"))
            if opus is not None:
                header = opus.encode(np.zeros(0, np.float32))
                await ws.send_bytes(pack("OggOpus", data=header) if msgpack_format else header)
            while True:
                for msg in await session.outbox.get():
                    kind = msg["type"]
                    if kind == "_end":
                        if not ws.closed:
                            if msg.get("error") and msgpack_format:
                                await ws.send_bytes(error(msg["error"]))
                            await ws.close(code=msg.get("code", WSCloseCode.OK))
                        return
                    if ws.closed:
                        continue
                    if kind == "Audio":
                        pcm = np.clip(msg["pcm"], -PCM_LIMIT, PCM_LIMIT).astype(np.float32)
                        if opus is not None:
                            data = opus.encode(pcm)
                            await ws.send_bytes(pack("OggOpus", data=data) if msgpack_format else data)
                        elif msgpack_format:
                            await ws.send_bytes(pack("Audio", pcm=pcm))
                        else:
                            await ws.send_bytes(pcm.astype("<f4").tobytes())
                    elif kind == "Text" and msgpack_format:
                        await ws.send_bytes(
                            pack("Text", text=msg["text"], start_s=msg["start_s"], stop_s=msg["stop_s"])
                        )
        except (ConnectionError, RuntimeError):
            return

    async def _receive(self, ws: SessionSocket, session: TtsSession) -> Ending | None:
        """Read client messages into the session until it ends; why the server ended it, or None."""
        cfg = self.cfg
        deadline = session.started + cfg.max_session_s if cfg.max_session_s > 0 else math.inf
        last = time.monotonic()
        while not session.closed:
            now = time.monotonic()
            idle = cfg.idle_timeout_s > 0 and session.waiting_for_text
            idle_at = last + cfg.idle_timeout_s if idle else math.inf
            if now >= deadline:
                return Ending(
                    f"maximum session duration reached ({cfg.max_session_s:g} s)", kind="max_duration"
                )
            if now >= idle_at:  # as moshi-server: the text so far is spoken, then the socket closes
                event(
                    log, "tts_idle_timeout", module=cfg.name, session=session.id, seconds=cfg.idle_timeout_s
                )
                self.ctx.count_error("idle_timeout")
                session.push_eos()
                last = now
                continue
            wait = min(deadline, idle_at, now + 1.0) - now  # re-check the session's state every second
            try:
                msg = await ws.receive(timeout=wait)
            except asyncio.TimeoutError:
                continue
            last = time.monotonic()
            if msg.type == WSMsgType.TEXT:
                self._text(session, msg.data)
            elif msg.type == WSMsgType.BINARY:
                if msg.data == b"\x00":
                    session.push_eos()
                    continue
                try:
                    parsed = parse_client_message(msg.data, TTS_TYPES)
                except ProtocolError as e:
                    return Ending(str(e), WSCloseCode.UNSUPPORTED_DATA, "protocol")
                if isinstance(parsed, TextIn):
                    error_text = self._text(session, parsed.text)
                    if error_text:
                        return Ending(error_text, WSCloseCode.POLICY_VIOLATION, "protocol")
                elif isinstance(parsed, EosIn):
                    session.push_eos()
                elif isinstance(parsed, VoiceIn):
                    voice = self._custom_voice(parsed.embeddings)
                    if voice is not None:
                        session.set_voice(voice)
            elif msg.type == WSMsgType.ERROR:
                return Ending(
                    None, WSCloseCode.MESSAGE_TOO_BIG, "oversized" if ws.oversized else "disconnect"
                )
            elif msg.type == WSMsgType.CLOSE:
                return None if session.input_ended or session.closed else Ending(None, kind=None)
            else:
                return Ending(None, WSCloseCode.GOING_AWAY, "disconnect")
        return None

    def _text(self, session: TtsSession, text: str) -> str | None:
        if session.chars + len(text) > self.synth.max_chars:
            return f"the session's text exceeds the limit of {self.synth.max_chars} characters"
        session.push_text(text)
        return None

    def _custom_voice(self, embeddings: np.ndarray) -> torch.Tensor | None:
        """A `Voice` embedding [1, C, T] (or [C, T]) as [T, C]; None (the default voice) if malformed."""
        arr = embeddings[0] if embeddings.ndim == 3 and embeddings.shape[0] == 1 else embeddings
        if arr.ndim != 2 or arr.shape[0] != self.synth.voice_dim or not np.isfinite(arr).all():
            return None
        return torch.from_numpy(np.ascontiguousarray(arr.T, dtype=np.float32))

    # -- whole texts -------------------------------------------------------------------------------
    async def _session(self, text: str, voice_name: str | None, padding_bonus: float = 0.0) -> TtsSession:
        voice = await self._voice(voice_name)
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.cfg.post_slot_wait_s
        while True:
            session = self.loop.claim(loop, voice, padding_bonus)
            if session is not None or time.monotonic() >= deadline or self.loop.failed:
                break
            await asyncio.sleep(0.1)
        if session is None:
            raise _NoSlot()
        session.push_text(text)
        session.push_eos()
        return session

    async def _frames(self, session: TtsSession):
        """The session's audio frames until it ends (RuntimeError if the loop ended it with an error)."""
        try:
            while True:
                for msg in await session.outbox.get():
                    if msg["type"] == "Audio":
                        yield msg["pcm"]
                    elif msg["type"] == "_end":
                        if msg.get("error"):
                            raise RuntimeError(msg["error"])
                        return
        finally:
            session.release()

    async def post(self, request: web.Request) -> web.StreamResponse:
        """moshi-server's `POST path`: JSON {"text", "voice"} -> streamed WAV."""
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unreadable body
            return web.Response(status=400, text='expected a JSON body {"text": ..., "voice": ...}')
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("text"), str)
            or not isinstance(body.get("voice"), str)
        ):
            return web.Response(status=422, text="JSON body needs the string fields 'text' and 'voice'")
        if not self.ctx.authorized(request, allow_query=False):
            self.ctx.count_error("unauthorized")
            return web.Response(status=401)
        try:
            session = await self._session(body["text"], body["voice"])
        except _NoSlot:
            self.ctx.count_error("no_free_channels")
            return web.Response(status=500, text="no free channels")
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        await response.prepare(request)
        await response.write(wav_header())
        try:
            async for pcm in self._frames(session):
                await response.write(pcm16(pcm))
        except (RuntimeError, ConnectionError) as e:
            event(log, "tts_post_failed", level=logging.WARNING, module=self.cfg.name, error=str(e))
        await response.write_eof()
        return response

    async def openai_speech(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/speech`, as OpenAI's API."""
        if not self.ctx.authorized(request, allow_query=False, allow_bearer=True):
            self.ctx.count_error("unauthorized")
            return _openai_error(401, "invalid or missing API key", "invalid_api_key")
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001
            return _openai_error(400, "expected a JSON body")
        if not isinstance(body, dict):
            return _openai_error(400, "expected a JSON object")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            return _openai_error(400, "'input' must be a non-empty string", param="input")
        if len(text) > self.synth.max_chars:
            return _openai_error(
                400, f"'input' is longer than {self.synth.max_chars} characters", param="input"
            )
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_FORMATS:
            return _openai_error(
                400, f"response_format must be one of {', '.join(SPEECH_FORMATS)}", param="response_format"
            )
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            return _openai_error(400, "speed must be a number between 0.25 and 4.0", param="speed")
        voice = body.get("voice")
        try:
            session = await self._session(
                text,
                voice if isinstance(voice, str) else None,
                padding_bonus=speed_to_padding_bonus(float(speed)),
            )
        except _NoSlot:
            self.ctx.count_error("no_free_channels")
            return _openai_error(
                503, "no free channels: the server is at capacity, retry later", "server_busy"
            )
        if fmt in ("pcm", "wav"):  # streamed as it is generated
            response = web.StreamResponse(headers={"Content-Type": SPEECH_FORMATS[fmt]})
            await response.prepare(request)
            if fmt == "wav":
                await response.write(wav_header())
            try:
                async for pcm in self._frames(session):
                    await response.write(pcm16(pcm))
            except (RuntimeError, ConnectionError) as e:
                event(log, "tts_speech_failed", level=logging.WARNING, module=self.cfg.name, error=str(e))
            await response.write_eof()
            return response
        try:
            frames = [pcm async for pcm in self._frames(session)]
        except RuntimeError as e:
            return _openai_error(500, str(e), "server_error")
        audio = np.concatenate(frames) if frames else np.zeros(0, np.float32)
        data = await asyncio.get_running_loop().run_in_executor(None, encode_audio, audio, SAMPLE_RATE, fmt)
        return web.Response(body=data, content_type=SPEECH_FORMATS[fmt])


def speed_to_padding_bonus(speed: float) -> float:
    """OpenAI's `speed` as a padding bonus on the text logits (> 0 slows down): -2 ln(speed). An
    approximation: the model decides how long words take, the bonus only shifts it toward longer or
    shorter pauses and words."""
    return -2.0 * math.log(speed)


class _NoSlot(Exception):
    pass


def _openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status
    )
