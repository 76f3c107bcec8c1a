"""Speech-to-text with a DSM STT model: whole files, batches of files, and live streams.

Audio is fed as the DSM scripts do (model-spec §4.2, recipe B): 24 kHz mono, right-padded to a multiple of
1920 samples, preceded by ``ceil(audio_silence_prefix_seconds * 12.5)`` silent 80 ms chunks and followed
by ``ceil(audio_delay_seconds * 12.5)`` silent chunks (no first-frame duplication). Each chunk is encoded by
a streaming Mimi into 32 codes and fed to one `LMGen` step, which samples one text token (greedy by
default). The transcript decodes the tokens > 3; word timestamps follow `words_from_tokens`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dsm.audio import AudioStream, read_audio, resample, stream_audio
from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.engine.generator import LMGen, quantized_products
from dsm.errors import AudioError, InputError
from dsm.lm import load_lm
from dsm.lm.model import LMModel
from dsm.stt.checkpoint import SttCheckpoint, SttConfig, load_tokenizer
from dsm.stt.timestamps import (
    END_OF_PADDING_ID,
    FRAME_RATE,
    TextTokenizer,
    Word,
    WordEnded,
    WordStarted,
    WordStream,
    transcript_text,
    words_from_tokens,
)

__all__ = ["Prompt", "SttStream", "Transcriber", "Transcript", "VadStep"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
FRAME_SIZE = 1920
# Silent chunks between an audio prompt and the audio to transcribe (the DSM prompt script's 0.8 s).
PROMPT_SEPARATOR_CHUNKS = 10
# Frames per Mimi encoder call in offline transcription (fast mode): the encoder's cost per frame falls
# from 23 ms (1 frame) to 4.6 ms (16 frames) for Kyutai's Mimi on a 2-core AVX2 CPU.
ENCODE_BLOCK = 16


@dataclass
class Transcript:
    """The result of transcribing one audio file.

    ``tokens[i]`` is the text token of step i, counting the prefix and suffix silence; ``vad[i]`` holds the
    class-0 ("end of turn") probability of each extra head at step i, or ``vad`` is None when the model has
    no extra heads.
    """

    text: str
    words: list[Word]
    tokens: list[int]
    vad: torch.Tensor | None
    prefix_chunks: int
    duration: float  # seconds of real audio (before padding)
    prompt_steps: int = 0  # steps of ``tokens`` spent on the prompt, cut from ``text`` and ``words``


@dataclass(frozen=True)
class Prompt:
    """Steering for the transcript's spelling (model-spec §4.4, the DSM prompt script).

    ``audio`` (24 kHz mono) is fed after the prefix silence and followed by 0.8 s of silence before the
    audio to transcribe; ``text`` is forced: while its tokens remain, only they, padding (3) and word
    boundaries (0) may be sampled. The prompt's own transcript is cut from the result at the first word
    boundary after both the forced text and the audio prompt (plus half the separator, plus the delay);
    word times stay relative to the audio to transcribe.
    """

    text: str | None = None
    audio: np.ndarray | None = None

    @property
    def audio_chunks(self) -> int:
        """Chunks of prompt audio plus the separator silence (0 without an audio prompt)."""
        if self.audio is None:
            return 0
        return math.ceil(len(self.audio) / FRAME_SIZE) + PROMPT_SEPARATOR_CHUNKS


class _PromptForcer:
    """`LMGen` text hooks that force each slot's prompt tokens, in order (the reference's PromptHook)."""

    def __init__(self, prompts: list[list[int]], device: torch.device, padding_id: int) -> None:
        width = max((len(p) for p in prompts), default=0)
        self.expected = torch.full((len(prompts), width + 1), -1, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            self.expected[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)
        self.position = torch.zeros(len(prompts), dtype=torch.long, device=device)
        self.allowed = torch.tensor([END_OF_PADDING_ID, padding_id], device=device)
        self.active = torch.ones(len(prompts), dtype=torch.bool, device=device)
        self.last_forced_step = [-1] * len(prompts)
        self.step = 0

    def remaining(self) -> torch.Tensor:
        return (self.position < self.lengths) & self.active

    def on_text_logits(self, logits: torch.Tensor) -> None:
        forcing = self.remaining()
        if not bool(forcing.any()):
            return
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[:, self.allowed] = True
        next_token = self.expected.gather(1, self.position[:, None])
        keep.scatter_(1, next_token.clamp_min(0), True)
        logits.masked_fill_(forcing[:, None] & ~keep, float("-inf"))

    def on_text(self, tokens: torch.Tensor) -> None:
        hit = self.remaining() & (tokens == self.expected.gather(1, self.position[:, None])[:, 0])
        for b in hit.nonzero()[:, 0].tolist():
            self.last_forced_step[b] = self.step
        self.position += hit.long()
        self.step += 1


class _Feed:
    """The audio of one slot as successive 1920-sample frames, the last one zero-padded.

    Files come block by block from an `AudioStream` (constant memory), arrays as one block. ``samples``
    counts the samples read so far; ``expected`` is the announced total (None when unknown).
    """

    def __init__(self, blocks: Iterable[np.ndarray], name: str, expected: int | None) -> None:
        self._blocks = iter(blocks)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._exhausted = False
        self.samples = 0
        self.expected = expected
        while not self.samples and self._pull():  # resampling may hold the first samples back
            pass
        if not self.samples:
            self.close()
            raise AudioError(f"{name}: audio is empty (0 samples)")

    def _pull(self) -> bool:
        """Append the next block to the buffer; False once the source is exhausted."""
        block = None if self._exhausted else next(self._blocks, None)
        if block is None:
            self._exhausted = True
            return False
        self.samples += len(block)
        self._buffer = np.concatenate([self._buffer, block]) if len(self._buffer) else block
        return True

    def next_frame(self) -> np.ndarray | None:
        """The next frame (shorter at the very end), or None when the audio is over."""
        while len(self._buffer) < FRAME_SIZE and self._pull():
            pass
        if not len(self._buffer):
            return None
        frame, self._buffer = self._buffer[:FRAME_SIZE], self._buffer[FRAME_SIZE:]
        return frame

    def close(self) -> None:
        if isinstance(self._blocks, AudioStream):
            self._blocks.close()

    def __enter__(self) -> _Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Rows:
    """Per-step tensors of one shape, gathered into preallocated chunks of steps."""

    def __init__(self, shape: tuple[int, ...], chunk: int = 1024) -> None:
        self._shape, self._chunk, self.n = shape, chunk, 0
        self._chunks: list[torch.Tensor] = []

    def append(self, row: torch.Tensor) -> None:
        if self.n % self._chunk == 0:
            self._chunks.append(torch.zeros(self._chunk, *self._shape))
        self._chunks[-1][self.n % self._chunk] = row
        self.n += 1

    def stacked(self) -> torch.Tensor:
        """All rows, ``[n, *shape]``."""
        return torch.cat(self._chunks)[: self.n] if self._chunks else torch.zeros(0, *self._shape)


@dataclass(frozen=True)
class VadStep:
    """Semantic-VAD output of one step: class-0 probability per extra head.

    ``time`` is the end of the chunk fed at that step, in seconds of the real audio (<= 0 during the prefix
    silence); the model's view lags it by the text delay.
    """

    step: int
    time: float
    probs: tuple[float, ...]


SttEvent = WordStarted | WordEnded | VadStep
AudioInput = str | os.PathLike | bytes | np.ndarray | torch.Tensor


class Transcriber:
    """A loaded STT model (Mimi, LM, tokenizer), reused across calls.

    ``exact=True`` runs the reference kernels (bit-identical to Kyutai's streaming code in float32); the
    default uses faster kernels that agree up to float rounding. ``temperature`` 0 is greedy (the DSM
    scripts' setting); otherwise text tokens are sampled among the ``top_k`` most likely.
    ``quantize`` (one of `dsm.nn.quant.KINDS`, CPU) runs the LM's streaming products on converted
    weights (`dsm.nn.quant`): "fp16" (half-precision weights, float32 products: as accurate as the
    default, LM steps ~2.4x faster than bf16 products on an AVX-512 CPU), "int8", "w8a8" (int8 weights
    and activations, fastest) or "int4"; none of them is exact.
    """

    def __init__(
        self,
        mimi: Mimi,
        lm: LMModel,
        tokenizer: TextTokenizer,
        stt_config: SttConfig | dict[str, Any] | None = None,
        *,
        exact: bool = False,
        temperature: float = 0.0,
        top_k: int = 50,
        quantize: str | None = None,
    ) -> None:
        if lm.cfg.n_q - lm.cfg.dep_q > mimi.total_codebooks:
            raise InputError(f"the LM reads {lm.cfg.n_q} codebooks but Mimi has {mimi.total_codebooks}")
        self.mimi = mimi
        self.lm = lm
        self.tokenizer = tokenizer
        if not isinstance(stt_config, SttConfig):
            stt_config = SttConfig.from_dict(stt_config)
        self.stt_config = stt_config
        self.exact = exact
        self.quantize = quantize
        quantized_products(lm, quantize, exact)  # fails now (kind, device, exact), not at the first run
        self.temperature = temperature
        self.top_k = top_k
        self.padding_id = lm.cfg.existing_text_padding_id

    @classmethod
    def from_checkpoint(
        cls,
        hf_repo: str | Path | None = None,
        *,
        moshi_weight: str | Path | None = None,
        mimi_weight: str | Path | None = None,
        tokenizer: str | Path | None = None,
        config_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        mimi_config: MimiConfig | None = None,
        exact: bool = False,
        temperature: float = 0.0,
        quantize: str | None = None,
    ) -> Transcriber:
        """Load from a hub repo / model directory and/or explicit files (see `SttCheckpoint.resolve`);
        with none of them, dsm's bundled English model (`dsm.bundled`, offline).

        ``dtype`` is the LM's (default bfloat16 on GPU, float32 on CPU); Mimi runs in float32, with the
        architecture ``mimi_config``, else the config's, else Kyutai's.
        """
        ckpt = SttCheckpoint.resolve(
            hf_repo,
            moshi_weight=moshi_weight,
            mimi_weight=mimi_weight,
            tokenizer=tokenizer,
            config_path=config_path,
        )
        device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        lm_config = ckpt.lm_config
        tok = load_tokenizer(ckpt.tokenizer)
        mimi_config = mimi_config or ckpt.mimi_config
        mimi = load_mimi(ckpt.mimi_weight, config=mimi_config, device=device, num_codebooks=lm_config.n_q)
        lm = load_lm(ckpt.moshi_weight, lm_config, device=device, dtype=dtype)
        top_k = int(ckpt.lm_gen_config.get("top_k_text", 50))
        return cls(
            mimi,
            lm,
            tok,
            ckpt.stt_config,
            exact=exact,
            temperature=temperature,
            top_k=top_k,
            quantize=quantize,
        )

    # -- recipe ---------------------------------------------------------------------------------
    @property
    def prefix_chunks(self) -> int:
        """Silent chunks fed before the audio: ceil(prefix seconds * 12.5)."""
        return math.ceil(self.stt_config.audio_silence_prefix_seconds * FRAME_RATE)

    @property
    def suffix_chunks(self) -> int:
        """Silent chunks fed after the audio to flush the delayed text: ceil(delay seconds * 12.5)."""
        return math.ceil(self.stt_config.audio_delay_seconds * FRAME_RATE)

    @property
    def num_heads(self) -> int:
        return self.lm.cfg.extra_heads_num_heads

    def _generator(
        self,
        batch: int,
        temperature: float | None,
        seeds: Sequence[int] | None,
        forcer: _PromptForcer | None = None,
    ) -> LMGen:
        temp = self.temperature if temperature is None else temperature
        return LMGen(
            self.lm,
            batch,
            temp=0.0,
            temp_text=temp,
            top_k_text=self.top_k,
            seeds=seeds,
            exact=self.exact,
            quantize=self.quantize,
            on_text_logits=None if forcer is None else forcer.on_text_logits,
            on_text=None if forcer is None else forcer.on_text,
        )

    def make_prompt(
        self, text: str | None = None, audio: AudioInput | None = None, sample_rate: int | None = None
    ) -> Prompt | None:
        """A `Prompt` from text and/or audio (a file, bytes or an array); None when both are absent."""
        if text is not None and not text.strip():
            raise InputError("the prompt text is empty")
        if text is None and audio is None:
            return None
        wav = None if audio is None else self.load_audio(audio, sample_rate)
        return Prompt(text=text, audio=wav)

    def load_audio(self, source: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """24 kHz mono float32 samples of a file (path or bytes) or an array ([T] or [C, T])."""
        if isinstance(source, str | os.PathLike | bytes | bytearray):
            if sample_rate is not None:
                raise InputError("sample_rate applies to arrays; files carry their own rate")
            wav = read_audio(source, SAMPLE_RATE)
            name = str(source) if not isinstance(source, bytes | bytearray) else "<bytes>"
        else:
            if isinstance(source, torch.Tensor):
                source = source.detach().cpu().float().numpy()
            wav = np.asarray(source)
            if wav.dtype.kind != "f":
                raise InputError(f"expected floating point samples, got dtype {wav.dtype}")
            if wav.ndim == 2:
                wav = wav.mean(axis=0)
            if wav.ndim != 1:
                raise InputError(f"expected audio of shape [T] or [C, T], got {tuple(wav.shape)}")
            if not np.isfinite(wav).all():
                raise InputError("audio contains non-finite samples (NaN or inf)")
            wav = resample(wav.astype(np.float32), sample_rate or SAMPLE_RATE, SAMPLE_RATE)
            name = "<array>"
        if wav.shape[-1] == 0:
            raise AudioError(f"{name}: audio is empty (0 samples)")
        return np.ascontiguousarray(wav, dtype=np.float32)

    # -- whole files ----------------------------------------------------------------------------
    def transcribe(
        self,
        source: AudioInput,
        sample_rate: int | None = None,
        *,
        temperature: float | None = None,
        seed: int | None = None,
        prompt_text: str | None = None,
        prompt_audio: AudioInput | None = None,
        progress: bool = False,
    ) -> Transcript:
        """Transcribe one file or array (``sample_rate`` is for arrays; None means 24 kHz).

        Files (paths, bytes) are decoded block by block as the model consumes them, so memory stays
        constant for long-form audio (an hour and more); arrays are fed as they are.
        ``prompt_text`` / ``prompt_audio`` steer spelling (see `Prompt`); the prompt's transcript is cut.
        ``progress`` shows a tqdm bar on stderr for long inputs.
        """
        return self.transcribe_batch(
            [source],
            sample_rate,
            temperature=temperature,
            seeds=None if seed is None else [seed],
            prompt_text=prompt_text,
            prompt_audio=prompt_audio,
            progress=progress,
        )[0]

    def transcribe_batch(
        self,
        sources: Sequence[AudioInput],
        sample_rate: int | None = None,
        *,
        temperature: float | None = None,
        seeds: Sequence[int] | None = None,
        prompt_text: str | None = None,
        prompt_audio: AudioInput | None = None,
        progress: bool = False,
    ) -> list[Transcript]:
        """Transcribe several files at once through one batched Mimi encoder and one `LMGen`.

        Each file runs exactly as alone: a slot stops (is masked inactive) after its own suffix silence.
        A prompt applies to every file.
        """
        if not sources:
            return []
        with ExitStack() as stack:
            feeds = [stack.enter_context(self._feed(s, sample_rate)) for s in sources]
            prompt = self.make_prompt(prompt_text, prompt_audio)
            return self._run(feeds, temperature, seeds, prompt, progress)

    def _feed(self, source: AudioInput, sample_rate: int | None) -> _Feed:
        """Files (paths, bytes) stream from disk in blocks; arrays are checked and resampled whole."""
        if isinstance(source, str | os.PathLike | bytes | bytearray):
            if sample_rate is not None:
                raise InputError("sample_rate applies to arrays; files carry their own rate")
            stream = stream_audio(source, SAMPLE_RATE)
            expected = round(stream.duration * SAMPLE_RATE) if stream.frames > 0 else None
            return _Feed(stream, stream.name, expected)
        wav = self.load_audio(source, sample_rate)
        return _Feed([wav], "<array>", len(wav))

    @staticmethod
    def _prompt_frames(prompt: Prompt | None) -> np.ndarray:
        """The samples fed before each file: the prompt audio and the separator, whole frames (or none)."""
        if prompt is None or prompt.audio is None:
            return np.zeros(0, dtype=np.float32)
        padded = np.zeros(prompt.audio_chunks * FRAME_SIZE, dtype=np.float32)
        padded[: len(prompt.audio)] = prompt.audio
        return padded

    def _expected_steps(self, feeds: list[_Feed], head_chunks: int) -> int | None:
        """The longest slot's steps by the announced lengths (for the progress bar), None if unknown."""
        if any(f.expected is None for f in feeds):
            return None
        body = max(math.ceil(f.expected / FRAME_SIZE) for f in feeds if f.expected is not None)
        return self.prefix_chunks + head_chunks + body + self.suffix_chunks

    @torch.inference_mode()
    def _run(
        self,
        feeds: list[_Feed],
        temperature: float | None,
        seeds: Sequence[int] | None,
        prompt: Prompt | None = None,
        progress: bool = False,
    ) -> list[Transcript]:
        """Step all slots together; a slot ends (after its suffix silence) once its feed runs out."""
        B = len(feeds)
        P = self.prefix_chunks
        head = self._prompt_frames(prompt)
        head_chunks = len(head) // FRAME_SIZE
        ends: list[int | None] = [None] * B  # the step after each slot's last one, once known
        # Fast mode encodes ENCODE_BLOCK frames per encoder call (the codec's weights are read once per
        # block instead of once per frame); exact mode encodes frame by frame, as the reference recipe.
        block = 1 if self.exact else ENCODE_BLOCK
        frames = torch.zeros(B, 1, block * FRAME_SIZE)

        def fill(step: int, out: torch.Tensor) -> None:
            """The frame of every slot at `step` into `out` [B, FRAME_SIZE] (zero: silence)."""
            r = step - P  # frames fed after the prefix silence
            for b, feed in enumerate(feeds):
                if ends[b] is not None or r < 0:
                    continue
                if r < head_chunks:
                    out[b] = torch.from_numpy(head[r * FRAME_SIZE : (r + 1) * FRAME_SIZE])
                elif (frame := feed.next_frame()) is not None:
                    out[b, : len(frame)] = torch.from_numpy(frame)
                else:
                    ends[b] = step + self.suffix_chunks

        forcer = None
        if prompt is not None and prompt.text is not None:
            ids = list(self.tokenizer.encode(prompt.text))
            forcer = _PromptForcer([ids] * B, self.lm.device, self.padding_id)
        encoder = self.mimi.streaming_encoder(B, n_q=self.lm.cfg.n_q, exact=self.exact)
        gen = self._generator(B, temperature, seeds, forcer)
        tokens: list[list[int]] = [[] for _ in range(B)]
        vad = _Rows((B, self.num_heads))
        total = self._expected_steps(feeds, head_chunks)
        bar = tqdm(total=total, desc="transcribing", unit="frame", disable=not progress, delay=1.0)
        s = 0
        codes = torch.zeros(0)
        while True:
            j = s % block
            if j == 0:
                frames.zero_()
                for i in range(block):
                    fill(s + i, frames[:, 0, i * FRAME_SIZE : (i + 1) * FRAME_SIZE])
            alive = [end is None or s < end for end in ends]
            if not any(alive):
                break
            active = torch.tensor(alive, device=self.lm.device)
            mask = None if all(alive) else active
            if forcer is not None:
                forcer.active = active
            if j == 0:  # slots that end within the block are encoded on (silence), their codes unused
                codes = encoder.step(frames.to(self.lm.device), active=mask)
            out = gen.step(codes[:, :, j], active=mask)
            for b, token in enumerate(out.tokens[:, 0].tolist()):
                if alive[b]:
                    tokens[b].append(token)
            if out.extra_heads:
                vad.append(torch.stack([h[:, 0] for h in out.extra_heads], dim=1).float().cpu())
            bar.update()
            s += 1
        bar.close()
        all_vad = vad.stacked()
        results = []
        for b, feed in enumerate(feeds):
            steps = len(tokens[b])
            forced = -1
            if forcer is not None:
                forced = forcer.last_forced_step[b]
                if forcer.position[b] < forcer.lengths[b]:
                    log.warning("the prompt text was not completed by the end of the audio")
                    forced = steps  # everything was constrained by the prompt: nothing is kept
            slot_vad = all_vad[:steps, b].clone() if len(all_vad) else torch.zeros(steps, self.num_heads)
            results.append(self._transcript(tokens[b], slot_vad, feed.samples / SAMPLE_RATE, prompt, forced))
        return results

    def _prompt_cut(self, tokens: list[int], prompt: Prompt | None, last_forced_step: int) -> int:
        """The step of the word boundary that starts the transcript proper (0 without a prompt)."""
        if prompt is None:
            return 0
        earliest = last_forced_step + 1
        if prompt.audio is not None:
            delay_steps = round(self.stt_config.audio_delay_seconds * FRAME_RATE)
            audio_end = self.prefix_chunks + prompt.audio_chunks - PROMPT_SEPARATOR_CHUNKS // 2
            earliest = max(earliest, audio_end + delay_steps)
        for i in range(max(earliest - 1, 0), len(tokens)):
            if tokens[i] == END_OF_PADDING_ID:
                return i
        return len(tokens)

    def _transcript(
        self,
        tokens: list[int],
        vad: torch.Tensor | None,
        duration: float,
        prompt: Prompt | None = None,
        last_forced_step: int = -1,
    ) -> Transcript:
        words = words_from_tokens(
            tokens,
            self.tokenizer,
            prefix_chunks=self.prefix_chunks,
            audio_delay_seconds=self.stt_config.audio_delay_seconds,
            padding_id=self.padding_id,
        )
        cut = self._prompt_cut(tokens, prompt, last_forced_step)
        if cut:
            offset_s = int(self.prefix_chunks / FRAME_RATE) + self.stt_config.audio_delay_seconds
            first = max(0.0, (cut + 1) / FRAME_RATE - offset_s)
            shift = (prompt.audio_chunks if prompt else 0) / FRAME_RATE
            words = [
                Word(w.text, max(0.0, w.start - shift), max(0.0, w.end - shift))
                for w in words
                if w.start >= first
            ]
        text = transcript_text(tokens[cut:], self.tokenizer, self.padding_id)
        vad = vad if self.num_heads else None
        return Transcript(text, words, tokens, vad, self.prefix_chunks, duration, prompt_steps=cut)

    # -- streaming ------------------------------------------------------------------------------
    def stream(
        self,
        *,
        asr_delay_in_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> SttStream:
        """A live session: `push` 24 kHz audio of any length, then `flush` at the end."""
        return SttStream(self, asr_delay_in_tokens=asr_delay_in_tokens, temperature=temperature, seed=seed)


class SttStream:
    """One live transcription stream (see `Transcriber.stream`).

    Events, in step order: `WordStarted` when a word is complete, `WordEnded` at the next boundary (the
    Rust server's recipe, `WordStream`, with times in seconds of the real audio) and, when the model has
    extra heads, a `VadStep` per step. ``asr_delay_in_tokens`` defaults to the prefix chunks plus
    ``round(audio_delay_seconds * 12.5)`` (6 for stt-1b-en_fr).
    """

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        asr_delay_in_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> None:
        t = transcriber
        self.transcriber = t
        if asr_delay_in_tokens is None:
            asr_delay_in_tokens = t.prefix_chunks + round(t.stt_config.audio_delay_seconds * FRAME_RATE)
        self.words = WordStream(asr_delay_in_tokens, t.tokenizer, padding_id=t.padding_id)
        self._encoder = t.mimi.streaming_encoder(1, n_q=t.lm.cfg.n_q, exact=t.exact)
        self._gen = t._generator(1, temperature, None if seed is None else [seed])
        self._buffer = np.zeros(0, dtype=np.float32)
        self.tokens: list[int] = []
        self._vad: list[torch.Tensor] = []
        self.samples = 0
        self.closed = False

    @property
    def step(self) -> int:
        """Steps run so far (silence included)."""
        return len(self.tokens)

    @torch.inference_mode()
    def _feed(self, chunk: np.ndarray) -> list[SttEvent]:
        t = self.transcriber
        wav = torch.from_numpy(chunk)[None, None].to(t.lm.device)
        codes = self._encoder.step(wav)
        out = self._gen.step(codes[:, :, 0])
        token = int(out.tokens[0, 0])
        step = len(self.tokens)
        self.tokens.append(token)
        events: list[SttEvent] = list(self.words.push(token))
        if out.extra_heads:
            probs = torch.stack([h[0, 0] for h in out.extra_heads]).float().cpu()
            self._vad.append(probs)
            time = (step + 1 - t.prefix_chunks) / FRAME_RATE
            events.append(VadStep(step, time, tuple(probs.tolist())))
        return events

    def _silence(self, n: int) -> list[SttEvent]:
        events: list[SttEvent] = []
        for _ in range(n):
            events.extend(self._feed(np.zeros(FRAME_SIZE, dtype=np.float32)))
        return events

    def push(self, pcm: np.ndarray | torch.Tensor | Sequence[float]) -> list[SttEvent]:
        """Feed 24 kHz mono float samples ([T] or [1, T]); returns the events of the whole chunks run."""
        if self.closed:
            raise InputError("this stream was flushed; start a new one with Transcriber.stream()")
        if isinstance(pcm, torch.Tensor):
            pcm = pcm.detach().cpu().float().numpy()
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim == 2 and pcm.shape[0] == 1:
            pcm = pcm[0]
        if pcm.ndim != 1:
            raise InputError(f"expected mono audio of shape [T] or [1, T], got {tuple(pcm.shape)}")
        if not np.isfinite(pcm).all():
            raise InputError("audio contains non-finite samples (NaN or inf)")
        events: list[SttEvent] = []
        if not self.tokens:
            events.extend(self._silence(self.transcriber.prefix_chunks))
        self.samples += len(pcm)
        self._buffer = np.concatenate([self._buffer, pcm])
        n = len(self._buffer) // FRAME_SIZE
        for k in range(n):
            events.extend(self._feed(self._buffer[k * FRAME_SIZE : (k + 1) * FRAME_SIZE]))
        self._buffer = self._buffer[n * FRAME_SIZE :].copy()
        return events

    def flush(self) -> list[SttEvent]:
        """End of audio: pad the partial chunk, feed the suffix silence, and emit the remaining words."""
        if self.closed:
            return []
        events: list[SttEvent] = []
        if not self.tokens:
            events.extend(self._silence(self.transcriber.prefix_chunks))
        if len(self._buffer):
            chunk = np.zeros(FRAME_SIZE, dtype=np.float32)
            chunk[: len(self._buffer)] = self._buffer
            self._buffer = np.zeros(0, dtype=np.float32)
            events.extend(self._feed(chunk))
        events.extend(self._silence(self.transcriber.suffix_chunks))
        end = max(0.0, (self.words.step - self.words.asr_delay_in_tokens) / FRAME_RATE)
        events.extend(self.words.flush(stop_time=end))
        self.closed = True
        return events

    def transcript(self) -> Transcript:
        """The transcript of the tokens so far, by the offline recipe (equal to `transcribe` after
        `flush`)."""
        t = self.transcriber
        vad = torch.stack(self._vad) if self._vad else torch.zeros(len(self.tokens), t.num_heads)
        return t._transcript(list(self.tokens), vad, self.samples / SAMPLE_RATE)
