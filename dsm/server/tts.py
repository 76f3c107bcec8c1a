"""The batched text-to-speech loop of a `Py` (TTS) module (server-protocol §4.6).

One thread owns the model: one `LMGen` over `batch_size` slots (each with its own voice conditioning) and a
batched streaming Mimi decoder. Each live session holds a slot; its words go through the word-scheduling
state machine of `dsm.tts` (one `State` per slot, each slot at its own step count). Every iteration:

1. each session's queued input is taken: `Text` messages become word entries (each message is complete
   words, as in moshi-server), `Eos` ends the text; the first text (re)starts the slot: reset of its LM
   and decoder state, its voice installed;
2. the slots that can step without waiting for more words (`StateMachine.ready`) run ONE batched
   `LMGen.step` (the depformer is skipped while every active slot is inside the initial text-to-audio
   delay), then ONE batched decoder step for the slots that produced an audio frame;
3. each slot's new frame goes out as `{"type": "Audio", "pcm": float32[1920]}`, each word whose end is
   known as `{"type": "Text", "text", "start_s", "stop_s"}`; a slot whose text is finished and spoken
   (plus the final padding) gets `{"type": "_end"}` and is freed.

The audio of a session equals `Synthesizer.synthesize` of its whole text with the same voice and settings
(up to float rounding: the batch changes the GEMM shapes).
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
from typing import Any

import torch

from dsm.server.metrics import PY_CONNECTION_STEPS_BUCKETS, PY_STEP_BUCKETS, Registry
from dsm.tts.script import PAD, ZERO, ScriptParser, has_speech, normalize_text
from dsm.tts.synthesizer import FRAME_RATE, Synthesizer

__all__ = ["BatchedTts", "TtsSession"]

log = logging.getLogger("dsm.server.tts")

MAX_PENDING_MESSAGES = 20_000
_ids = itertools.count(1)

Message = dict[str, Any]


class TtsSession:
    """One client of a `BatchedTts`. Input through `push_text`/`push_eos` (any asyncio task), output in
    `outbox` (lists of messages; `_end` last, with `error` None for a normal end)."""

    def __init__(
        self,
        module: BatchedTts,
        slot: int,
        loop: asyncio.AbstractEventLoop,
        voice: torch.Tensor,
        padding_bonus: float = 0.0,
    ):
        self.id = next(_ids)
        self.module = module
        self.slot = slot
        self.loop = loop
        self.voice = voice  # [T, dim] embedding
        self.padding_bonus = padding_bonus
        self.outbox: asyncio.Queue[list[Message]] = asyncio.Queue()
        self.closed = False
        self.started = time.monotonic()
        self.error: str | None = None
        self.chars = 0
        self._inbox: deque[tuple[str, Any]] = deque()
        # Loop-thread state.
        synth = module.synth
        self.parser = ScriptParser(synth.tokenizer, True, synth.padding_between)
        self.state = synth.machine.new_state()
        self.running = False  # the slot was reset for this session (first text seen)
        self.input_ended = False
        self.has_speech = False
        self.offset = 0  # generation steps of this session
        self.frames_sent = 0
        self.words_sent = 0
        self.first_audio: float | None = None

    # -- input (asyncio side) ---------------------------------------------------------------------
    def push_text(self, text: str) -> None:
        if not self.closed:
            self.chars += len(text)
            self._inbox.append(("text", text))
            self.module.wake.set()

    def push_eos(self) -> None:
        if not self.closed:
            self._inbox.append(("eos", None))
            self.module.wake.set()

    def set_voice(self, voice: torch.Tensor) -> None:
        """A custom voice, before the first text (later ones are ignored, as in moshi-server)."""
        if not self.closed:
            self._inbox.append(("voice", voice))
            self.module.wake.set()

    @property
    def waiting_for_text(self) -> bool:
        """True while the session cannot go on without more text from its client."""
        return not self.input_ended and not self._inbox

    def release(self) -> None:
        self.module.release(self)


class BatchedTts:
    """The model loop of one TTS module. `start()` runs it in a thread."""

    def __init__(
        self,
        name: str,
        synth: Synthesizer,
        batch_size: int,
        default_voice: torch.Tensor,
        metrics: Registry | None = None,
    ):
        self.name = name
        self.synth = synth
        self.batch_size = batch_size
        self.default_voice = default_voice
        self.slots: list[TtsSession | None] = [None] * batch_size
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.failed: str | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        lm = synth.lm
        self.device = lm.device
        condition_sum, condition_cross = synth._conditions([default_voice] * batch_size)
        sampling = synth.temperature > 0
        self.gen = synth.make_generator(
            batch_size,
            condition_sum,
            condition_cross,
            seeds=[random.getrandbits(63) for _ in range(batch_size)] if sampling else None,
            on_text_logits=self._on_text_logits,
            on_text=self._on_text,
            on_audio=self._on_audio,
        )
        self._sampling = sampling
        self.decoder = synth.mimi.streaming_decoder(batch_size, exact=synth.exact)
        self.inputs = torch.full(
            (batch_size, self.gen.needed_inputs), ZERO, dtype=torch.long, device=self.device
        )
        self.no_depformer = torch.full((batch_size, synth.n_q), ZERO, dtype=torch.long, device=self.device)
        delays = torch.tensor(lm.cfg.delays[1 : 1 + synth.n_q], device=self.device)
        self.audio_start = delays + synth.delay_steps
        self.max_delay = lm.cfg.max_delay
        self.offsets = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self._step_sessions: list[TtsSession | None] = [None] * batch_size  # active sessions of this step
        metrics = metrics or Registry()
        self.m_connect = metrics.counter("py_connect", "TTS sessions started")
        self.m_open = metrics.gauge("py_open_channels", "TTS slots currently held")
        self.m_total = metrics.counter("py_total_steps", "loop iterations with at least one slot held")
        self.m_active = metrics.counter("py_active_steps", "iterations where at least one slot stepped")
        self.m_step = metrics.histogram(
            "py_model_step_duration", "wall time of one batched step (s)", PY_STEP_BUCKETS
        )
        self.m_missing = metrics.counter("py_missing_words_steps", "per slot and step: waiting for words")
        self.m_could = metrics.counter("py_could_have_run_steps", "per slot and step: not starved")
        self.m_steps = metrics.histogram(
            "py_model_connection_num_steps", "steps per TTS session", PY_CONNECTION_STEPS_BUCKETS
        )
        self.m_errors = metrics.counter("dsm_tts_step_errors", "batched TTS steps that raised an exception")

    # -- lifecycle --------------------------------------------------------------------------------
    @torch.inference_mode()
    def warmup(self, steps: int = 2) -> None:
        """Full-batch steps (with audio: depformer and decoder), then a reset of every slot."""
        for _ in range(steps):
            out = self.gen.step(self.inputs)
            self.decoder.step(out.tokens[:, 1:, None].clamp(min=0))
        self.gen.reset()
        self.decoder.reset()
        self.offsets.zero_()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"dsm-tts-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop = True
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def used_slots(self) -> int:
        return sum(s is not None for s in self.slots)

    def claim(
        self, loop: asyncio.AbstractEventLoop, voice: torch.Tensor | None = None, padding_bonus: float = 0.0
    ) -> TtsSession | None:
        if self.failed:
            return None
        with self.lock:
            for i, current in enumerate(self.slots):
                if current is None:
                    session = TtsSession(
                        self, i, loop, self.default_voice if voice is None else voice, padding_bonus
                    )
                    self.slots[i] = session
                    self.m_open.inc()
                    self.m_connect.inc()
                    return session
        return None

    def release(self, session: TtsSession) -> None:
        with self.lock:
            if session.closed:
                return
            session.closed = True
            if self.slots[session.slot] is session:
                self.slots[session.slot] = None
                self.m_open.dec()
                self.m_steps.observe(session.offset)

    # -- hooks (called inside gen.step for all rows; only this step's active slots matter) --------------
    def _on_text_logits(self, logits: torch.Tensor) -> None:
        for b, s in enumerate(self._step_sessions):
            bonus = self.synth.padding_bonus + (s.padding_bonus if s is not None else 0.0)
            if s is not None and bonus:
                logits[b, PAD] += bonus

    def _on_text(self, tokens: torch.Tensor) -> None:
        values = tokens.tolist()
        machine = self.synth.machine
        for b, s in enumerate(self._step_sessions):
            if s is not None:
                values[b], _ = machine.process(s.offset, s.state, values[b])
        tokens.copy_(torch.tensor(values, dtype=tokens.dtype))

    def _on_audio(self, audio: torch.Tensor) -> None:
        audio.masked_fill_(self.offsets[:, None] < self.audio_start[None, :], ZERO)

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                self._iteration()
        except BaseException as e:  # pragma: no cover - bugs only: the sessions are told
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("tts module %s: model loop stopped", self.name)
            with self.lock:
                sessions = [s for s in self.slots if s is not None]
            self._deliver({s: [{"type": "_end", "error": "internal server error"}] for s in sessions})

    def _deliver(self, out: dict[TtsSession, list[Message]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[TtsSession, list[Message]]]] = {}
        for session, messages in out.items():
            if messages:
                by_loop.setdefault(session.loop, []).append((session, messages))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_put_all, items)

    def _intake(self, s: TtsSession, out: list[Message], resets: list[TtsSession]) -> None:
        """Take the session's queued messages (loop thread)."""
        while s._inbox:
            kind, value = s._inbox.popleft()
            if kind == "voice":
                if not s.running:
                    s.voice = value
                continue
            if s.input_ended:
                continue
            if kind == "text":
                if not s.running:
                    s.running = True
                    resets.append(s)
                s.has_speech = s.has_speech or has_speech(normalize_text(value))
                s.state.entries.extend(s.parser.push(value) + s.parser.finish())  # a message is whole words
            elif kind == "eos":
                s.input_ended = True
                if not s.running or not s.has_speech:  # nothing to say: end at once
                    out.append({"type": "_end", "error": None})
                    return

    @torch.inference_mode()
    def _iteration(self) -> None:
        self.wake.clear()
        with self.lock:
            sessions = list(self.slots)
        B = self.batch_size
        synth, machine = self.synth, self.synth.machine
        early: dict[TtsSession, list[Message]] = {}
        resets: list[TtsSession] = []
        active = [False] * B
        held = False
        for i, s in enumerate(sessions):
            if s is None or s.closed:
                continue
            held = True
            messages: list[Message] = []
            self._intake(s, messages, resets)
            if messages:
                early[s] = messages
                continue
            if s.running and machine.ready(s.state, s.input_ended):
                active[i] = True
                self.m_could.inc()
            elif s.running:
                self.m_missing.inc()
        for s in resets:
            try:
                self._reset_slot(s)
            except Exception:  # e.g. a custom voice the conditioner rejects: this session only
                log.exception("tts module %s: cannot start session %d", self.name, s.id)
                early[s] = [{"type": "_end", "error": "cannot use this voice"}]
                active[s.slot] = False
        self._deliver(early)
        for s, messages in early.items():  # ended before speaking (Eos without text)
            if messages and messages[-1]["type"] == "_end":
                s.release()
        if held:
            self.m_total.inc()
        if not any(active):
            self.wake.wait(0.05)
            return
        self._step_sessions = [sessions[i] if active[i] else None for i in range(B)]
        mask = torch.tensor(active, device=self.device)
        in_delay = all(sessions[i].offset < synth.delay_steps for i in range(B) if active[i])
        start = time.perf_counter()
        try:
            self.offsets = torch.tensor(
                [s.offset if s is not None else 0 for s in sessions], device=self.device
            )
            out = self.gen.step(
                self.inputs, active=mask, audio_override=self.no_depformer if in_delay else None
            )
            frames: dict[int, int] = {}
            for i in range(B):
                if active[i]:
                    s = sessions[i]
                    s.offset += 1
                    frame = s.offset - 1 - self.max_delay
                    if frame >= synth.delay_steps:
                        frames[i] = frame - synth.delay_steps
            pcm = None
            if frames:
                decode = torch.zeros(B, dtype=torch.bool, device=self.device)
                decode[list(frames)] = True
                codes = torch.where(decode[:, None], out.tokens[:, 1:], 0)
                pcm = (
                    self.decoder.step(codes[..., None], active=decode)
                    .clamp(-1, 1)[:, 0]
                    .float()
                    .cpu()
                    .numpy()
                )
        except Exception:  # a step failure ends the sessions in it, never the loop
            log.exception("tts module %s: batched step failed", self.name)
            self.m_errors.inc()
            failed = [sessions[i] for i in range(B) if active[i]]
            for s in failed:
                s.release()
            self._deliver({s: [{"type": "_end", "error": "internal server error"}] for s in failed})
            return
        finally:
            self._step_sessions = [None] * B
        elapsed = time.perf_counter() - start
        self.m_active.inc()
        self.m_step.observe(elapsed)
        results: dict[TtsSession, list[Message]] = {}
        for i in range(B):
            if not active[i]:
                continue
            s = sessions[i]
            messages: list[Message] = []
            state = s.state
            if i in frames and frames[i] < self._audio_frames(s):
                if s.first_audio is None:
                    s.first_audio = time.monotonic() - s.started
                messages.append({"type": "Audio", "pcm": pcm[i]})
                s.frames_sent += 1
            finished = state.end_step is not None and s.offset >= self._stop_step(s)
            messages.extend(self._words(s))
            if finished or s.offset >= synth.max_steps:
                messages.append({"type": "_end", "error": None})  # delivered although released
                s.release()
            results[s] = messages
        self._deliver(results)

    def _reset_slot(self, s: TtsSession) -> None:
        i = s.slot
        seeds = [random.getrandbits(63)] if self._sampling else None
        self.gen.reset([i], seeds=seeds)
        self.decoder.reset([i])
        condition_sum, condition_cross = self.synth._conditions([s.voice])
        self.gen.set_conditions([i], condition_sum, condition_cross)
        self.synth.refresh_cross(self.gen)

    def _stop_step(self, s: TtsSession) -> int:
        return s.state.end_step + self.synth.delay_steps + self.synth.final_padding

    def _audio_frames(self, s: TtsSession) -> int:
        """Frames that belong to the session's speech (as `Synthesizer`: up to its end + final padding)."""
        end = s.state.end_step
        if end is None:
            return math.inf  # type: ignore[return-value]
        return max(0, end + self.synth.final_padding - self.max_delay)

    def _words(self, s: TtsSession) -> list[Message]:
        """`Text` messages of the words whose end is now known (the next entry, or the end, has started)."""
        state = s.state
        out = []
        while s.words_sent < len(state.transcript):
            text, step = state.transcript[s.words_sent]
            later = [t for t in state.consumption_times if t > step]
            end = later[0] if later else state.end_step
            if end is None:
                break
            out.append(
                {"type": "Text", "text": text, "start_s": step / FRAME_RATE, "stop_s": end / FRAME_RATE}
            )
            s.words_sent += 1
        return out


def _put_all(items: list[tuple[TtsSession, list[Message]]]) -> None:
    for session, messages in items:
        if session.closed and messages[-1]["type"] != "_end":
            continue
        if session.outbox.qsize() > MAX_PENDING_MESSAGES:
            session.error = "client does not read its messages; too many pending"
            session.release()
            session.outbox.put_nowait([{"type": "_end", "error": session.error}])
            continue
        session.outbox.put_nowait(messages)
