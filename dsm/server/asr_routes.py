"""HTTP and WebSocket endpoints of a `BatchedAsr` module.

- `GET path` (WebSocket, default `/api/asr-streaming`): the moshi-server streaming protocol (§3).
- `POST path`: a whole audio file (raw body) -> JSON array of `Word`/`EndWord` events (§5.1).
- `POST /v1/audio/transcriptions` (OpenAI style, multipart): json, text, srt, vtt or verbose_json with
  word and segment timestamps, by the offline recipe of `dsm.stt.Transcriber` (prefix silence, audio,
  suffix silence), so the result equals `Transcriber.transcribe` on the same model.

All of them share the module's batched loop: a request holds one slot while its audio is stepped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from dsm.audio import read_audio
from dsm.audio.opus import OpusStreamDecoder
from dsm.errors import AudioError
from dsm.server.asr import FRAME, AsrSession, BatchedAsr, run_to_end, wait_for_slot
from dsm.server.asr_model import AsrModel
from dsm.server.config import AsrModuleConfig
from dsm.server.context import ServerContext
from dsm.server.formats import RESPONSE_FORMATS, render
from dsm.server.logs import event
from dsm.server.protocol import (
    STT_TYPES,
    AudioIn,
    InitIn,
    MarkerIn,
    OggOpusIn,
    ProtocolError,
    error,
    pack,
    parse_client_message,
)
from dsm.server.ws import Ending, SessionSocket
from dsm.stt.timestamps import (
    FRAME_RATE,
    WordEnded,
    WordStarted,
    WordStream,
    transcript_text,
    words_from_tokens,
)

__all__ = ["AsrService"]

log = logging.getLogger("dsm.server")

SAMPLE_RATE = 24_000
PING_INTERVAL_S = 10.0
SENDER_GRACE_S = 5.0


class AsrService:
    """One `BatchedAsr` module: its model loop and its routes."""

    def __init__(self, cfg: AsrModuleConfig, model: AsrModel, ctx: ServerContext):
        self.cfg = cfg
        self.model = model
        self.ctx = ctx
        self.loop = BatchedAsr(cfg.name, model, cfg.batch_size, ctx.metrics)

    def routes(self) -> list[web.RouteDef]:
        routes = [web.get(self.cfg.path, self.websocket), web.post(self.cfg.path, self.post)]
        if self.cfg.openai_path:
            routes.append(web.post(self.cfg.openai_path, self.openai_transcriptions))
        return routes

    def info(self) -> dict[str, str]:
        return {
            "type": "batched_asr",
            "path": self.cfg.path,
            "used_slots": str(self.loop.used_slots),
            "total_slots": str(self.cfg.batch_size),
            "lm": self.model.description,
            "audio_tokenizer": f"mimi ({self.model.n_q} codebooks)",
        }

    # -- WebSocket ---------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ctx = self.ctx
        if not ctx.authorized(request, allow_query=True):
            ctx.count_error("unauthorized")
            return web.Response(status=401)
        ws = SessionSocket(max_msg_size=self.cfg.max_message_bytes, heartbeat=PING_INTERVAL_S, compress=False)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade")
        await ws.prepare(request)
        session = self.loop.claim(asyncio.get_running_loop())
        if session is None:
            ctx.count_error("no_free_channels")
            event(log, "asr_no_free_channels", module=self.cfg.name, peer=_peer(request))
            await ws.send_bytes(error("no free channels"))
            await ws.close()
            return ws
        ctx.sockets.add(ws)
        event(
            log,
            "asr_session_start",
            module=self.cfg.name,
            session=session.id,
            slot=session.slot,
            peer=_peer(request),
        )
        sender = asyncio.create_task(self._send(ws, session))
        ending: Ending | None = None
        try:
            ending = await self._receive(ws, session)
        except Exception:  # noqa: BLE001 - a bug here must end only this session
            log.exception("asr session %d failed", session.id)
            ending = Ending("internal server error", WSCloseCode.INTERNAL_ERROR, "internal")
        finally:
            session.release()
            if ending is None and session.error:  # ended by the loop (slow client, failed step)
                ending = Ending(session.error, WSCloseCode.OK, "slow_client")
            done = {
                "type": "_end",
                "error": ending.message if ending else None,
                "code": ending.code if ending else WSCloseCode.OK,
            }
            session.outbox.put_nowait([done])
            try:
                await asyncio.wait_for(sender, SENDER_GRACE_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                sender.cancel()
                if request.transport is not None:
                    request.transport.abort()  # a client that does not read cannot take a close frame either
            ctx.sockets.discard(ws)
            if ending is not None and ending.kind:
                ctx.count_error(ending.kind)
            event(
                log,
                "asr_session_end",
                module=self.cfg.name,
                session=session.id,
                slot=session.slot,
                frames=session.frames_done,
                seconds=round(time.monotonic() - session.started, 3),
                reason=(ending.kind if ending and ending.kind else "closed"),
                **({"error": ending.message} if ending and ending.message else {}),
            )
        return ws

    async def _send(self, ws: SessionSocket, session: AsrSession) -> None:
        """Forward the loop's messages to the client until the session ends, then close."""
        try:
            while True:
                for msg in await session.outbox.get():
                    kind = msg["type"]
                    if kind == "_end":
                        if not ws.closed:
                            if msg.get("error"):
                                await ws.send_bytes(error(msg["error"]))
                            await ws.close(code=msg.get("code", WSCloseCode.OK))
                        return
                    if kind != "_eof" and not ws.closed:
                        fields = {k: v for k, v in msg.items() if k != "type"}
                        await ws.send_bytes(pack(kind, **fields))
        except (ConnectionError, RuntimeError):  # the peer went away
            return

    async def _receive(self, ws: SessionSocket, session: AsrSession) -> Ending | None:
        """Read client messages into the session; the reason the server ends it, or None (client left)."""
        cfg = self.cfg
        deadline = session.started + cfg.max_session_s if cfg.max_session_s > 0 else math.inf
        last_audio = time.monotonic()
        max_pending = int(cfg.max_buffered_s * SAMPLE_RATE)
        opus: OpusStreamDecoder | None = None
        while not session.closed:
            now = time.monotonic()
            idle_at = last_audio + cfg.idle_timeout_s if cfg.idle_timeout_s > 0 else math.inf
            if now >= deadline:
                return Ending(
                    f"maximum session duration reached ({cfg.max_session_s:g} s)", kind="max_duration"
                )
            if now >= idle_at and session.busy:
                last_audio = now  # the loop is still working through this client's audio: not idle
                continue
            if now >= idle_at:
                return Ending(f"idle timeout: no message for {cfg.idle_timeout_s:g} s", kind="idle_timeout")
            wait = min(deadline, idle_at) - now
            try:
                msg = await ws.receive(timeout=None if math.isinf(wait) else wait)
            except asyncio.TimeoutError:
                continue
            if msg.type == WSMsgType.BINARY:
                last_audio = time.monotonic()
                try:
                    parsed = parse_client_message(msg.data, STT_TYPES)
                    if isinstance(parsed, AudioIn):
                        session.push_audio(parsed.pcm)
                    elif isinstance(parsed, OggOpusIn):
                        opus = opus or OpusStreamDecoder(SAMPLE_RATE, name="OggOpus stream")
                        session.push_audio(opus.decode(parsed.data))
                    elif isinstance(parsed, MarkerIn):
                        session.push_marker(parsed.id)
                    elif isinstance(parsed, InitIn):
                        session.push_init()
                except ProtocolError as e:
                    return Ending(str(e), WSCloseCode.UNSUPPORTED_DATA, "protocol")
                except AudioError as e:
                    return Ending(str(e), WSCloseCode.UNSUPPORTED_DATA, "opus")
                while session.pending_samples > max_pending and not session.closed:
                    await asyncio.sleep(
                        0.01
                    )  # back-pressure: stop reading this client until the loop catches up
            elif msg.type == WSMsgType.TEXT:
                continue  # ignored, as the reference does
            elif msg.type == WSMsgType.ERROR:
                return Ending(
                    None, WSCloseCode.MESSAGE_TOO_BIG, "oversized" if ws.oversized else "disconnect"
                )
            elif msg.type == WSMsgType.CLOSE:
                return None
            else:  # CLOSED / CLOSING without a close frame from the client: it vanished
                return Ending(None, WSCloseCode.GOING_AWAY, "disconnect")
        return None

    # -- whole files -------------------------------------------------------------------------------
    async def _run_file(self, wav: np.ndarray, prefix_chunks: int, suffix_chunks: int) -> list[int]:
        """Step `wav` (with silence around it) through one slot; the text token of every step."""
        session = await wait_for_slot(self.loop, self.cfg.post_slot_wait_s, record=True)
        if session is None:
            raise _NoSlot()
        try:
            frames = math.ceil(len(wav) / FRAME)
            pcm = np.zeros((prefix_chunks + frames + suffix_chunks) * FRAME, dtype=np.float32)
            pcm[prefix_chunks * FRAME : prefix_chunks * FRAME + len(wav)] = wav
            return await run_to_end(session, pcm)
        finally:
            session.release()

    async def _decode(self, data: bytes, name: str) -> np.ndarray:
        if not data:
            raise AudioError(f"{name}: empty upload")
        wav = await asyncio.get_running_loop().run_in_executor(None, read_audio, data, SAMPLE_RATE)
        if len(wav) == 0:
            raise AudioError(f"{name}: audio is empty (0 samples)")
        if not np.isfinite(wav).all():
            raise AudioError(f"{name}: audio contains non-finite samples")
        return wav

    async def post(self, request: web.Request) -> web.StreamResponse:
        """moshi-server's `POST path`: raw audio in, the Word/EndWord events as a JSON array out."""
        if not self.ctx.authorized(request, allow_query=False):
            self.ctx.count_error("unauthorized")
            return web.Response(status=401)
        try:
            wav = await self._decode(await request.read(), "request body")
        except AudioError as e:
            self.ctx.count_error("bad_audio")
            return web.Response(status=500, text=str(e))
        delay = self.model.asr_delay_in_tokens
        try:
            tokens = await self._run_file(wav, 0, max(self.model.suffix_chunks, delay + 2))
        except _NoSlot:
            self.ctx.count_error("no_free_channels")
            return web.Response(status=500, text="no free channels")
        stream = WordStream(
            delay, self.model.tokenizer, padding_id=self.model.lm.cfg.existing_text_padding_id
        )
        events = stream.push_many(tokens)
        events += stream.flush(stop_time=max(0.0, (len(tokens) - delay) / FRAME_RATE))
        body: list[dict[str, Any]] = []
        for e in events:
            if isinstance(e, WordStarted):
                body.append({"type": "Word", "text": e.text, "start_time": e.start_time})
            elif isinstance(e, WordEnded):
                body.append({"type": "EndWord", "stop_time": e.stop_time})
        return web.json_response(body)

    async def openai_transcriptions(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/audio/transcriptions`, as OpenAI's API (multipart form with a `file`)."""
        ctx = self.ctx
        if not ctx.authorized(request, allow_query=False, allow_bearer=True):
            ctx.count_error("unauthorized")
            return _openai_error(401, "invalid or missing API key", "invalid_api_key")
        try:
            form = await request.post()
        except Exception as e:  # noqa: BLE001 - aiohttp raises several types for bad bodies
            return _openai_error(400, f"expected a multipart/form-data body ({e})")
        upload = form.get("file")
        if upload is None or not hasattr(upload, "file"):
            return _openai_error(400, "missing the 'file' field (an audio file)", param="file")
        fmt = str(form.get("response_format", "json"))
        if fmt not in RESPONSE_FORMATS:
            return _openai_error(
                400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", param="response_format"
            )
        granularities = [str(g) for g in form.getall("timestamp_granularities[]", [])]
        granularities += [str(g) for g in form.getall("timestamp_granularities", [])]
        bad = [g for g in granularities if g not in ("word", "segment")]
        if bad:
            return _openai_error(
                400,
                f"unknown timestamp granularity {bad[0]!r} (word or segment)",
                param="timestamp_granularities[]",
            )
        name = getattr(upload, "filename", None) or "file"
        try:
            wav = await self._decode(upload.file.read(), name)
        except AudioError as e:
            ctx.count_error("bad_audio")
            return _openai_error(400, str(e), param="file")
        model = self.model
        try:
            tokens = await self._run_file(wav, model.prefix_chunks, model.suffix_chunks)
        except _NoSlot:
            ctx.count_error("no_free_channels")
            return _openai_error(
                503, "no free channels: the server is at capacity, retry later", "server_busy"
            )
        padding = model.lm.cfg.existing_text_padding_id
        words = words_from_tokens(
            tokens,
            model.tokenizer,
            prefix_chunks=model.prefix_chunks,
            audio_delay_seconds=model.delay_seconds,
            padding_id=padding,
        )
        text = transcript_text(tokens, model.tokenizer, padding)
        language = str(form.get("language") or "en")
        body, content_type = render(fmt, text, words, len(wav) / SAMPLE_RATE, language, granularities)
        if isinstance(body, dict):
            return web.json_response(body)
        return web.Response(text=body, content_type=content_type)


class _NoSlot(Exception):
    pass


def _openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status
    )


def _peer(request: web.Request) -> str:
    return request.headers.get("X-Real-IP") or request.remote or "?"
