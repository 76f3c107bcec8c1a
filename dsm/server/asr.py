"""The batched speech-to-text loop of a `BatchedAsr` module (server-protocol §3.5-§3.11).

One thread owns the model: a batched streaming Mimi encoder and one `LMGen` over `batch_size` slots.
Each live session (a WebSocket or an HTTP request) holds one slot. Every iteration the loop:

1. takes, for each session, queued input until it has one 80 ms frame (1920 samples) or runs out;
   `Marker`s are noted with the frame they wait for, `Init` (and a new session) resets the slot;
2. runs ONE encoder step and ONE `LMGen.step` for the whole batch, with the slots that have a frame
   active (the others keep their state exactly);
3. turns each active slot's text token into `Word`/`EndWord` events (`WordStream`, the Rust server's
   recipe), a `Step` with the VAD probabilities when the model has extra heads, and due markers, and
   hands them to the session's asyncio queue without ever waiting on a client.

Sessions talk to the loop through thread-safe queues only: input through `AsrSession.push_*` (which any
asyncio task may call), output through `AsrSession.outbox`, an `asyncio.Queue` of lists of messages
(dicts with a `type`) filled with `call_soon_threadsafe`. A session's results are delivered only while it
still owns its slot, so nothing computed for a previous occupant reaches the next one.

Markers are counted per session: `Marker{id}` comes back once this session's audio sent before it has
been stepped through, plus `asr_delay_in_tokens` further steps (the reference counts a global step
counter, which returns markers too early when other slots are busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dsm.engine.generator import LMGen
from dsm.server.asr_model import AsrModel
from dsm.server.metrics import ASR_CONNECTION_STEPS_BUCKETS, ASR_STEP_BUCKETS, Registry
from dsm.stt.timestamps import FRAME_RATE, WordEnded, WordStarted, WordStream

__all__ = ["FRAME", "AsrSession", "BatchedAsr"]

log = logging.getLogger("dsm.server.asr")

FRAME = 1920
MAX_PENDING_MESSAGES = 20_000  # outbound messages queued for a client that does not read (~25 min of Steps)
_ids = itertools.count(1)

Message = dict[str, Any]


class AsrSession:
    """One client of a `BatchedAsr`: its slot, input queue, output queue and per-stream state.

    Created by `BatchedAsr.claim` on the asyncio thread that will read `outbox`. Items put in `outbox`
    are lists of messages; internal ones are `{"type": "_end", "error": str | None}` (the loop ended the
    session) and `{"type": "_eof"}` (all input given with `finish_input` has been processed).
    """

    def __init__(self, module: BatchedAsr, slot: int, loop: asyncio.AbstractEventLoop, record: bool):
        self.id = next(_ids)
        self.module = module
        self.slot = slot
        self.loop = loop
        self.record = record
        self.outbox: asyncio.Queue[list[Message]] = asyncio.Queue()
        self.closed = False
        self.started = time.monotonic()
        self.error: str | None = None
        # Input, written by the session's task (asyncio thread) and read by the loop thread.
        self._inbox: deque[tuple[str, Any]] = deque()
        self.pushed_samples = 0  # written by the asyncio side only
        self.frames_delivered = 0  # frames whose results reached `outbox` (asyncio side)
        self.consumed_samples = 0  # written by the loop only
        # Stream state, touched by the loop thread only.
        self._chunks: deque[np.ndarray] = deque()
        self.buffered = 0
        self.frames_taken = 0
        self.frames_done = 0
        self.markers: list[tuple[int, int]] = []  # (target frame, id), in arrival order
        self.words = WordStream(
            module.model.asr_delay_in_tokens,
            module.model.tokenizer,
            padding_id=module.model.lm.cfg.existing_text_padding_id,
        )
        self.needs_reset = True
        self.eof = False
        self.eof_sent = False
        self.tokens: list[int] = []  # text token per step, when `record`

    # -- input (asyncio side) ---------------------------------------------------------------------
    @property
    def pending_samples(self) -> int:
        """Samples given to the loop and not yet taken into a frame."""
        return self.pushed_samples - self.consumed_samples

    @property
    def busy(self) -> bool:
        """Whether the loop still has work for this session: a whole frame queued, or a frame whose results
        have not reached `outbox` yet (asyncio side)."""
        return self.pending_samples >= FRAME or self.frames_taken > self.frames_delivered

    def push_audio(self, pcm: np.ndarray) -> None:
        if len(pcm) and not self.closed:
            self.pushed_samples += len(pcm)
            self._inbox.append(("audio", np.ascontiguousarray(pcm, dtype=np.float32)))
            self.module.wake.set()

    def push_marker(self, marker_id: int) -> None:
        if self.closed:
            return
        self._inbox.append(("marker", marker_id))
        self.module.wake.set()

    def push_init(self) -> None:
        if self.closed:
            return
        self._inbox.append(("init", None))
        self.module.wake.set()

    def finish_input(self) -> None:
        """No more audio: the partial frame is padded with zeros, then `_eof` is delivered."""
        self._inbox.append(("eof", None))
        self.module.wake.set()

    def release(self) -> None:
        """Give the slot back (idempotent); nothing more is delivered to this session."""
        self.module.release(self)

    # -- loop side -------------------------------------------------------------------------------
    def _reset_stream(self) -> None:
        self.words.reset()
        self.consumed_samples += self.buffered
        self._chunks.clear()
        self.buffered = 0

    def _append(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)
        self.buffered += len(pcm)

    def _take_frame(self) -> np.ndarray:
        out = np.empty(FRAME, dtype=np.float32)
        filled = 0
        while filled < FRAME:
            chunk = self._chunks[0]
            n = min(FRAME - filled, len(chunk))
            out[filled : filled + n] = chunk[:n]
            filled += n
            if n == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[n:]
        self.buffered -= FRAME
        self.consumed_samples += FRAME
        self.frames_taken += 1
        return out

    def _intake(self, messages: list[Message]) -> tuple[np.ndarray | None, bool]:
        """Process queued input until one frame is available; returns (frame or None, reset needed)."""
        reset = False
        delay = self.module.model.asr_delay_in_tokens
        while self._inbox and self.buffered < FRAME:
            kind, value = self._inbox.popleft()
            if kind == "audio":
                self._append(value)
            elif kind == "marker":
                target = self.frames_taken + math.ceil(self.buffered / FRAME) + delay
                self.markers.append((target, value))
            elif kind == "init":
                self._reset_stream()
                reset = True
                messages.append({"type": "Ready"})
            elif kind == "eof":
                self.eof = True
                if self.buffered % FRAME:
                    pad = FRAME - self.buffered % FRAME
                    self._append(np.zeros(pad, dtype=np.float32))
        frame = self._take_frame() if self.buffered >= FRAME else None
        return frame, reset

    def _due_markers(self, messages: list[Message]) -> None:
        if not self.markers:
            return
        keep = []
        for target, marker in self.markers:
            if target <= self.frames_done:
                messages.append({"type": "Marker", "id": marker})
            else:
                keep.append((target, marker))
        self.markers = keep

    def _check_eof(self, messages: list[Message]) -> None:
        if self.eof and not self.eof_sent and not self._inbox and self.buffered < FRAME:
            self.eof_sent = True
            messages.append({"type": "_eof"})


class BatchedAsr:
    """The model loop of one STT module (see the module docstring). `start()` runs it in a thread."""

    def __init__(self, name: str, model: AsrModel, batch_size: int, metrics: Registry | None = None):
        self.name = name
        self.model = model
        self.batch_size = batch_size
        self.slots: list[AsrSession | None] = [None] * batch_size
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.step_idx = 0
        self.frames_processed = 0
        self.failed: str | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._sampling = model.temperature > 0
        device = model.lm.device
        self.device = device
        self.encoder = model.mimi.streaming_encoder(batch_size, n_q=model.n_q, exact=model.exact)
        self.gen = LMGen(
            model.lm,
            batch_size,
            temp=0.0,
            temp_text=model.temperature,
            top_k_text=model.top_k,
            seeds=[random.getrandbits(63) for _ in range(batch_size)] if self._sampling else None,
            exact=model.exact,
            quantize=model.quantize,
        )
        self._frames = torch.zeros(batch_size, 1, FRAME)
        metrics = metrics or Registry()
        self.m_connect = metrics.counter("asr_connect", "ASR sessions started")
        self.m_open = metrics.gauge("asr_open_channels", "ASR slots currently held")
        self.m_step = metrics.histogram(
            "asr_model_step_duration", "wall time of one batched step (s)", ASR_STEP_BUCKETS
        )
        self.m_steps = metrics.histogram(
            "asr_connection_num_steps", "frames processed per session", ASR_CONNECTION_STEPS_BUCKETS
        )
        self.m_active = metrics.gauge("dsm_asr_active_slots", "slots that took part in the last step")
        self.m_rtf = metrics.gauge(
            "dsm_asr_realtime_factor",
            "audio seconds processed per wall second over the last steps (active slots x 80 ms / step time)",
        )
        self.m_audio = metrics.counter("dsm_asr_audio_seconds", "seconds of audio transcribed")
        self.m_errors = metrics.counter("dsm_asr_step_errors", "batched steps that raised an exception")
        self._rtf_window: deque[tuple[float, int]] = deque(maxlen=50)

    # -- lifecycle --------------------------------------------------------------------------------
    @torch.inference_mode()
    def warmup(self, steps: int = 2) -> None:
        """Full-batch steps on silence, then a reset of every slot (before the port opens)."""
        for _ in range(steps):
            codes = self.encoder.step(self._frames.to(self.device))
            self.gen.step(codes[:, :, 0])
        self.encoder.reset()
        self.gen.reset()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"dsm-asr-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- slots (any thread) ------------------------------------------------------------------------
    @property
    def used_slots(self) -> int:
        return sum(s is not None for s in self.slots)

    def claim(self, loop: asyncio.AbstractEventLoop, record: bool = False) -> AsrSession | None:
        """The first free slot, or None when all are busy."""
        if self.failed:
            return None
        with self.lock:
            for i, current in enumerate(self.slots):
                if current is None:
                    session = AsrSession(self, i, loop, record)
                    self.slots[i] = session
                    self.m_open.inc()
                    self.m_connect.inc()
                    break
            else:
                return None
        self.wake.set()
        return session

    def release(self, session: AsrSession) -> None:
        with self.lock:
            if session.closed:
                return
            session.closed = True
            if self.slots[session.slot] is session:
                self.slots[session.slot] = None
                self.m_open.dec()
                self.m_steps.observe(session.frames_done)

    # -- the loop (model thread) -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                self._iteration()
        except BaseException as e:  # pragma: no cover - bugs only: the sessions are told, not left hanging
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("asr module %s: model loop stopped", self.name)
            with self.lock:
                sessions = [s for s in self.slots if s is not None]
            self._deliver({s: [{"type": "_end", "error": "internal server error"}] for s in sessions})

    def _deliver(self, out: dict[AsrSession, list[Message]], stepped: bool = False) -> None:
        """Hand messages to their sessions' event loops; `stepped`: each session had a frame in this step
        (counted in `frames_delivered` even when the step produced no message)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[AsrSession, list[Message], bool]]] = {}
        for session, messages in out.items():
            if messages or stepped:
                by_loop.setdefault(session.loop, []).append((session, messages, stepped))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the session's event loop is closed: nobody to tell
                loop.call_soon_threadsafe(_put_all, items)

    @torch.inference_mode()
    def _iteration(self) -> None:
        self.wake.clear()
        with self.lock:
            sessions = list(self.slots)
        B = self.batch_size
        active = [False] * B
        resets: list[int] = []
        early: dict[AsrSession, list[Message]] = {}
        frames = self._frames
        for i, s in enumerate(sessions):
            if s is None or s.closed:
                continue
            messages: list[Message] = []
            reset = s.needs_reset
            if reset:
                s.needs_reset = False
                messages.append({"type": "Ready"})
            frame, init = s._intake(messages)
            if reset or init:
                resets.append(i)
            if frame is not None:
                frames[i, 0] = torch.from_numpy(frame)
                active[i] = True
            else:
                s._check_eof(messages)
            early[s] = messages
        if resets:
            self.encoder.reset(resets)
            seeds = [random.getrandbits(63) for _ in resets] if self._sampling else None
            self.gen.reset(resets, seeds=seeds)
        self._deliver(early)
        if not any(active):
            self.wake.wait(0.05)
            return
        mask = None if all(active) else torch.tensor(active, device=self.device)
        start = time.perf_counter()
        try:
            codes = self.encoder.step(frames.to(self.device), active=mask)
            out = self.gen.step(codes[:, :, 0], active=mask)
            tokens = out.tokens[:, 0].tolist()
            probs = (
                torch.stack([h[:, 0] for h in out.extra_heads], dim=1).float().cpu().numpy()
                if out.extra_heads
                else None
            )
        except Exception:  # a step failure ends the sessions in it, never the loop
            log.exception("asr module %s: batched step failed", self.name)
            self.m_errors.inc()
            failed = [sessions[i] for i in range(B) if active[i]]
            for s in failed:
                s.release()
            self.encoder.reset([i for i in range(B) if active[i]])
            self.gen.reset([i for i in range(B) if active[i]])
            self._deliver({s: [{"type": "_end", "error": "internal server error"}] for s in failed})
            return
        elapsed = time.perf_counter() - start
        self.step_idx += 1
        n_active = sum(active)
        self.frames_processed += n_active
        self.m_step.observe(elapsed)
        self.m_active.set(n_active)
        self.m_audio.inc(n_active / FRAME_RATE)
        self._rtf_window.append((elapsed, n_active))
        busy = sum(e for e, _ in self._rtf_window)
        if busy > 0:
            self.m_rtf.set(sum(n for _, n in self._rtf_window) / FRAME_RATE / busy)
        log.debug("asr %s step %d: %d active, %.1f ms", self.name, self.step_idx, n_active, elapsed * 1e3)
        results: dict[AsrSession, list[Message]] = {}
        for i, s in enumerate(sessions):
            if not active[i] or s is None:
                continue
            messages = []
            token = tokens[i]
            s.frames_done += 1
            if s.record:
                s.tokens.append(token)
            for event in s.words.push(token):
                if isinstance(event, WordStarted):
                    messages.append({"type": "Word", "text": event.text, "start_time": event.start_time})
                elif isinstance(event, WordEnded):
                    messages.append({"type": "EndWord", "stop_time": event.stop_time})
            if probs is not None:
                messages.append(
                    {
                        "type": "Step",
                        "step_idx": self.step_idx,
                        "prs": probs[i].tolist(),
                        "buffered_pcm": s.buffered,
                    }
                )
            s._due_markers(messages)
            s._check_eof(messages)
            results[s] = messages
        self._deliver(results, stepped=True)


def _put_all(items: list[tuple[AsrSession, list[Message], bool]]) -> None:
    """On the session's event loop: queue each session's messages unless it has ended."""
    for session, messages, stepped in items:
        session.frames_delivered += stepped
        if not messages or (session.closed and messages[0]["type"] != "_end"):
            continue
        if session.outbox.qsize() > MAX_PENDING_MESSAGES:
            session.error = "client does not read its messages; too many pending"
            session.release()
            session.outbox.put_nowait([{"type": "_end", "error": session.error}])
            continue
        session.outbox.put_nowait(messages)


async def wait_for_slot(
    module: BatchedAsr, timeout: float, record: bool = False, poll: float = 0.1
) -> AsrSession | None:
    """Claim a slot, retrying every `poll` seconds for up to `timeout` (HTTP requests queue this way)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        session = module.claim(loop, record)
        if session is not None or time.monotonic() >= deadline or module.failed:
            return session
        await asyncio.sleep(poll)


async def run_to_end(
    session: AsrSession, pcm: np.ndarray, on_message: Callable[[Message], None] | None = None
):
    """Feed a whole signal to a claimed session, wait until it is processed; returns the recorded tokens.

    Raises `RuntimeError` if the loop ended the session (the module failed).
    """
    session.push_audio(pcm)
    session.finish_input()
    while True:
        for msg in await session.outbox.get():
            if msg["type"] == "_eof":
                return session.tokens
            if msg["type"] == "_end":
                raise RuntimeError(msg.get("error") or "session ended")
            if on_message is not None:
                on_message(msg)
