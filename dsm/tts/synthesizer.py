"""Text-to-speech with a DSM TTS model (Kyutai TTS): whole texts, batches, dialogs and live text streams.

The generation loop follows the reference's `TTSModel.generate` (model-spec §5.5): one `LMGen` step per
80 ms frame; the sampled text token goes through the word-scheduling state machine (`state_machine.py`),
whose output is what the model reads next; the audio codebooks come from the depformer, except during
the first `delay_steps` (1.28 s) where the audio stream is known to be empty and the depformer is
skipped, and codebook q stays -1 while the step is below its delay + `delay_steps`. Every frame whose
audio exists is decoded at once by a streaming Mimi. Words are timed by the step at which the state
machine hands them to the model: step s starts s / 12.5 seconds into the audio.

Sampling defaults are the reference's: temperature 0.6 for text and audio, top-k 25 (text) and 250
(audio). With `seed`, draws come from a generator seeded with it, in the reference's order, so a
reference run after `torch.manual_seed(seed)` gives the same codes (with `exact=True`; the default fast
kernels agree up to float rounding, which can flip a sampled token now and then).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.engine.generator import LMGen, quantized_products
from dsm.errors import CheckpointError, InputError
from dsm.lm import load_lm
from dsm.lm.conditioners import ConditionAttributes, LUTConditioner
from dsm.lm.model import LMModel
from dsm.stt.checkpoint import load_tokenizer
from dsm.tts.checkpoint import DEFAULT_VOICE, TtsCheckpoint, TtsConfig
from dsm.tts.script import (
    FRAME_RATE,
    PAD,
    ZERO,
    Entry,
    ScriptParser,
    Tokenizer,
    has_speech,
    normalize_text,
    script_entries,
    split_text,
)
from dsm.tts.state_machine import State, StateMachine
from dsm.tts.voices import DEFAULT_VOICE_REPO, VOICE_KEY, load_voice, resolve_voice, speaker_condition

__all__ = ["AudioChunk", "Synthesis", "Synthesizer", "TtsStream", "WordTiming"]

SAMPLE_RATE = 24_000
FRAME_SIZE = 1920

Voice = str | os.PathLike | torch.Tensor  # a voice name, a .safetensors path, or an embedding [T, 512]
VoiceSpec = Voice | Sequence[Voice]  # one voice, or one per speaker of a dialog (main first)
Script = str | Sequence[str]  # a text, or dialog turns (main speaker first)


@dataclass
class WordTiming:
    """A word and where it is spoken in the audio (seconds; `end` is None until known)."""

    text: str
    start: float
    end: float | None
    step: int  # generation step at which the word was handed to the model


@dataclass
class Synthesis:
    """The result of synthesizing one script."""

    audio: np.ndarray  # float32 [samples] at `sample_rate`, in [-1, 1]
    words: list[WordTiming]
    codes: torch.Tensor  # [n_q, frames] Mimi codes of `audio`
    sample_rate: int = SAMPLE_RATE
    end_step: int | None = None  # step at which the text ran out (None: stopped by max_steps)
    steps: int = 0  # generation steps run
    time_to_first_audio: float | None = None  # seconds from the start to the first decoded frame
    # (streamed synthesis only: `synthesize` without `on_frame` decodes the audio in one go at the end)
    text_tokens: list[tuple[int, int]] = field(default_factory=list)  # (sampled, fed) per step

    @property
    def duration(self) -> float:
        """Seconds of audio (also when it was not decoded)."""
        return self.codes.shape[-1] / FRAME_RATE


@dataclass
class AudioChunk:
    """One 80 ms frame of streamed audio."""

    index: int  # frame number from the start of the audio
    audio: np.ndarray  # float32 [1920]
    codes: torch.Tensor  # [n_q]
    words: list[WordTiming]  # words that start in this frame

    @property
    def time(self) -> float:
        return self.index / FRAME_RATE


class Synthesizer:
    """A loaded TTS model (Mimi, LM, tokenizer) with its generation settings, reused across calls.

    `n_q` (1..32) audio codebooks are generated and decoded: fewer is faster and rougher (the reference
    uses 32; Kyutai's server 24). `cfg_coef` is the classifier-free guidance strength; CFG-distilled
    models (TTS-1.6b) take it as a condition value among those they were trained with (1.0 to 4.0 by
    0.5), other models run real CFG. `padding_bonus` > 0 slows the speech down, < 0 speeds it up.
    `exact=True` runs the reference's kernels (same codes as the reference at a given seed); the default
    fast kernels agree to float rounding (on CPU, 16-bit attention as two matrix products, the depth
    transformer's in float32), skip the codebooks still inside their acoustic delay and keep the
    cross-attention keys and values of the last `cross_cache_size` voices, so a voice used again starts
    sooner. `quantize` (one of `dsm.nn.quant.KINDS`: "fp16", "int8", "w8a8", "int4"; CPU) runs the
    streaming products on converted weights (`dsm.nn.quant`). `soft_decode=True` decodes codebooks 1+ as
    their code vectors averaged under the model's distribution (softmax of its logits, CFG applied)
    instead of the drawn codes, which still drive generation and are returned: a mean prediction the
    decoder hears more clearly when the model is unsure of its acoustic codebooks (a small model).
    """

    def __init__(
        self,
        mimi: Mimi,
        lm: LMModel,
        tokenizer: Tokenizer,
        tts_config: TtsConfig | dict[str, Any] | None = None,
        *,
        voice_suffix: str = "",
        voice_repo: str = DEFAULT_VOICE_REPO,
        default_voice: Voice = DEFAULT_VOICE,
        n_q: int | None = None,
        temperature: float = 0.6,
        top_k: int = 250,
        top_k_text: int = 25,
        cfg_coef: float = 2.0,
        padding_bonus: float = 0.0,
        max_padding: int = 8,
        initial_padding: int = 2,
        final_padding: int = 4,
        padding_between: int = 1,
        max_steps: int = 30_000,
        max_chars: int = 100_000,
        max_words_per_chunk: int = 80,
        exact: bool = False,
        cross_cache_size: int = 4,
        quantize: str | None = None,
        soft_decode: bool = False,
    ) -> None:
        cfg = lm.cfg
        if cfg.dep_q == 0:
            raise CheckpointError("this LM generates no audio (dep_q = 0): not a TTS model")
        if not isinstance(tts_config, TtsConfig):
            tts_config = TtsConfig.from_dict(tts_config)
        n_q = cfg.dep_q if n_q is None else n_q
        if not 1 <= n_q <= cfg.dep_q:
            raise InputError(f"n_q must be between 1 and {cfg.dep_q} for this model, got {n_q}")
        provider = lm.condition_provider
        if provider is None or VOICE_KEY not in provider.conditioners:
            raise CheckpointError(
                "this TTS model has no speaker_wavs conditioning (voices given as audio prefixes, e.g. "
                "tts-0.75b-en-public): not supported"
            )
        for name, value in (("max_steps", max_steps), ("max_chars", max_chars)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        self.mimi, self.lm, self.tokenizer = mimi, lm, tokenizer
        self.tts_config = tts_config
        self.voice_suffix, self.voice_repo = voice_suffix, voice_repo
        self.default_voice = default_voice
        self.n_q = n_q
        self.temperature, self.top_k, self.top_k_text = temperature, top_k, top_k_text
        self.cfg_coef = cfg_coef
        self.padding_bonus = padding_bonus
        self.final_padding, self.padding_between = final_padding, padding_between
        self.max_steps, self.max_chars = max_steps, max_chars
        self.max_words_per_chunk = max_words_per_chunk
        self.exact = exact
        self.quantize = quantize
        self.soft_decode = soft_decode
        quantized_products(lm, quantize, exact)  # fails now (kind, device, exact), not at the first run
        self.machine = StateMachine(
            cfg.text_card + 1, tts_config.second_stream_ahead, max_padding, initial_padding
        )
        self.voice_dim = provider.conditioners[VOICE_KEY].dim
        cfg_lut = provider.conditioners["cfg"] if "cfg" in provider.conditioners else None  # noqa: SIM401
        values = cfg_lut.possible_values if isinstance(cfg_lut, LUTConditioner) else None
        self.valid_cfg_values = sorted({float(v) for v in values}) if values else []
        self._voices: dict[str, torch.Tensor] = {}
        # Cross-attention keys/values per conditioning source (fast mode): computing them is most of the
        # first step's cost (e.g. 625 positions x 16 layers for TTS-1.6b).
        self.cross_cache_size = cross_cache_size
        self._cross_cache: OrderedDict[bytes, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

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
        **options: Any,
    ) -> Synthesizer:
        """Load from a hub repo / model directory and/or explicit files (see `TtsCheckpoint.resolve`);
        with none of them, dsm's bundled English model (`dsm.bundled`, offline, with its own voices).

        `dtype` is the LM's (default bfloat16, as Kyutai ships and runs it; float32 for the bundled model on
        CPU, as its quality was measured); Mimi runs in float32, with
        the architecture ``mimi_config``, else the config's, else Kyutai's. Other keyword arguments are the
        constructor's (n_q, temperature, cfg_coef, voice_repo, ...); the voice repo and default voice
        default to the config's ``voice_repo`` / ``default_voice`` when it names them, and sampling
        options not given to its ``generation`` table (`TtsCheckpoint.generation`).
        """
        ckpt = TtsCheckpoint.resolve(
            hf_repo,
            moshi_weight=moshi_weight,
            mimi_weight=mimi_weight,
            tokenizer=tokenizer,
            config_path=config_path,
        )
        device = torch.device(device)
        lm_config, tts_config = ckpt.lm_config, ckpt.tts_config
        generation = ckpt.generation  # a malformed table fails before any weights load
        tok = load_tokenizer(ckpt.tokenizer)
        mimi_config = mimi_config or ckpt.mimi_config
        mimi = load_mimi(ckpt.mimi_weight, config=mimi_config, device=device, num_codebooks=lm_config.n_q)
        if dtype is None:  # bfloat16 as Kyutai ships and runs it; the bundled model in float32 on CPU
            dtype = torch.float32 if ckpt.is_bundled and device.type == "cpu" else torch.bfloat16
        lm = load_lm(ckpt.moshi_weight, lm_config, device=device, dtype=dtype)
        for key, value in generation.items():  # the model's own sampling settings, unless given
            options.setdefault(key, value)
        options.setdefault("voice_suffix", ckpt.voice_suffix)
        if options.get("voice_repo") is None:
            options["voice_repo"] = ckpt.voice_repo
        options.setdefault("default_voice", ckpt.default_voice)
        return cls(mimi, lm, tok, tts_config, **options)

    # -- properties ----------------------------------------------------------------------------------
    @property
    def delay_steps(self) -> int:
        return self.tts_config.delay_steps

    @property
    def sample_rate(self) -> int:
        return self.mimi.sample_rate

    @property
    def distilled_cfg(self) -> bool:
        """Whether the model takes the CFG strength as a condition (CFG distillation)."""
        return bool(self.valid_cfg_values)

    # -- text and voices -----------------------------------------------------------------------------
    def entries(self, script: Script) -> list[Entry]:
        """The word/pause entries of a text or of dialog turns (`InputError` if there is nothing to say)."""
        self._check_script(script)
        return script_entries(
            self.tokenizer, script, multi_speaker=True, padding_between=self.padding_between
        )

    def _check_script(self, script: Script) -> None:
        if isinstance(script, str):
            size = len(script)
        elif isinstance(script, Sequence) and all(isinstance(t, str) for t in script):
            size = sum(len(t) for t in script)
        else:
            raise InputError("a script is a string or a list of strings (dialog turns)")
        if size > self.max_chars:
            raise InputError(
                f"the text has {size} characters, more than the limit of {self.max_chars}: split it, or "
                "raise max_chars"
            )

    def voice_embedding(self, voice: Voice) -> torch.Tensor:
        """A voice as a float32 [T, 512] embedding: a name in the voice repo, a `.safetensors` path or an
        `hf://` reference (files are read once and cached), or an embedding tensor given directly."""
        if isinstance(voice, torch.Tensor):
            if voice.dim() != 2 or voice.shape[1] != self.voice_dim or not voice.is_floating_point():
                raise InputError(f"a voice embedding must be a float tensor [T, {self.voice_dim}]")
            return voice.float()
        key = str(voice)
        if key not in self._voices:
            path = resolve_voice(voice, self.voice_repo, self.voice_suffix)
            self._voices[key] = load_voice(path, self.voice_dim)
        return self._voices[key]

    def condition_attributes(self, voice: VoiceSpec | None) -> ConditionAttributes:
        """The conditioning of one script: its voice(s) (None: the default voice) and, for distilled
        models, the CFG value."""
        if voice is None:
            voice = self.default_voice
        voices = [voice] if isinstance(voice, str | os.PathLike | torch.Tensor) else list(voice)
        tensor, mask = speaker_condition(
            [self.voice_embedding(v) for v in voices], self.tts_config.max_speakers
        )
        text: dict[str, str | None] = {"control": "ok", "cfg": None}
        if self.distilled_cfg:
            if self.cfg_coef not in self.valid_cfg_values:
                valid = ", ".join(f"{v:g}" for v in self.valid_cfg_values)
                raise InputError(
                    f"cfg_coef {self.cfg_coef:g} is not supported by this model (valid: {valid})"
                )
            text["cfg"] = format(self.cfg_coef, ".1f")
        return ConditionAttributes(text=text, tensor={VOICE_KEY: (tensor, mask)})

    def _conditions(self, voices: Sequence[VoiceSpec]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        attrs = [self.condition_attributes(v) for v in voices]
        if self._real_cfg:
            attrs = attrs + [a.null() for a in attrs]
        with torch.inference_mode():
            conditions = self.lm.condition_provider(attrs)
            fuser = self.lm.fuser
            return fuser.get_sum(conditions), fuser.get_cross(conditions)

    @property
    def _real_cfg(self) -> bool:
        return not self.distilled_cfg and self.cfg_coef != 1.0

    def _cross_kv(self, cross: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer cross-attention keys/values of the rows of `cross` [rows, S, dim], from the cache
        when the same source was seen before (fast mode only: exact mode computes them as the
        reference does, for the whole batch at once)."""
        transformer = self.lm.transformer
        if self.exact or self.cross_cache_size < 1 or transformer.layers[0].cross_attention is None:
            return None
        src = cross.to(self.lm.dtype)
        rows = []
        for row in src:
            key = hashlib.blake2b(row.float().cpu().numpy().tobytes(), digest_size=20).digest()
            kv = self._cross_cache.pop(key, None)
            if kv is None:
                with torch.inference_mode():
                    kv = transformer._cross_kv(row[None], self.lm.dtype)
            self._cross_cache[key] = kv
            while len(self._cross_cache) > self.cross_cache_size:
                self._cross_cache.popitem(last=False)
            rows.append(kv)
        return [
            (torch.cat([r[i][0] for r in rows]), torch.cat([r[i][1] for r in rows]))
            for i in range(len(rows[0]))
        ]

    def make_generator(
        self,
        batch_size: int,
        condition_sum: torch.Tensor | None,
        condition_cross: torch.Tensor | None,
        **engine: Any,
    ) -> LMGen:
        """The batched engine of this model's sampling settings (temperatures, top-k, CFG, n_q, exact,
        quantization) over conditioned slots, with the voices' cross-attention keys/values from the cache.
        ``engine`` takes LMGen's per-run arguments (generator or seeds, hooks)."""
        gen = LMGen(
            self.lm,
            batch_size,
            temp=self.temperature,
            temp_text=self.temperature,
            top_k=self.top_k,
            top_k_text=self.top_k_text,
            cfg_coef=self.cfg_coef if self._real_cfg else 1.0,
            cfg_is_no_text=True,
            condition_sum=condition_sum,
            condition_cross=condition_cross,
            dep_q=self.n_q,
            exact=self.exact,
            quantize=self.quantize,
            **engine,
        )
        self.refresh_cross(gen)
        return gen

    def refresh_cross(self, gen: LMGen) -> None:
        """After the engine's voice conditions change: their cross-attention keys/values from the cache
        (fast mode; otherwise the engine recomputes them on its next step)."""
        if gen.condition_cross is not None:
            gen.state.cross = self._cross_kv(gen.condition_cross)

    # -- synthesis -----------------------------------------------------------------------------------
    def synthesize(
        self,
        script: Script,
        voice: VoiceSpec | None = None,
        *,
        seed: int | None = None,
        on_frame: Callable[[AudioChunk], None] | None = None,
        on_step: Callable[[], None] | None = None,
        decode: bool = True,
    ) -> Synthesis:
        """Speak a text (or dialog turns, main speaker first, with one voice per speaker; by default
        the model's default voice).

        A text longer than `max_words_per_chunk` words is cut at sentence ends and its chunks are
        synthesized as one batch, then joined (word times follow). `on_frame` sees every audio frame
        as soon as it is decoded (single-chunk scripts), `on_step` is called after every generation
        step (progress). `decode=False` skips Mimi: codes only."""
        self._check_script(script)
        audio = "stream" if on_frame is not None else ("end" if decode else "none")
        if isinstance(script, str) and len(script.split()) > self.max_words_per_chunk:
            chunks = split_text(script, self.max_words_per_chunk)
            if len(chunks) > 1:
                entries = [self.entries(c) for c in chunks]
                return _join(self._run_batch(entries, [voice] * len(chunks), seed, None, audio, on_step))
        return self._run_batch([self.entries(script)], [voice], seed, on_frame, audio, on_step)[0]

    def synthesize_batch(
        self,
        scripts: Sequence[Script],
        voice: VoiceSpec | None = None,
        *,
        voices: Sequence[VoiceSpec] | None = None,
        seed: int | None = None,
        decode: bool = True,
    ) -> list[Synthesis]:
        """Speak several scripts through one batched engine: `voice` for all, or `voices` one per script."""
        if isinstance(scripts, str) or not scripts:
            raise InputError("synthesize_batch takes a non-empty list of scripts")
        if voices is None:
            voices = [voice] * len(scripts)
        elif voice is not None:
            raise InputError("pass either voice (for all scripts) or voices (one per script), not both")
        if len(voices) != len(scripts):
            raise InputError(f"got {len(voices)} voices for {len(scripts)} scripts")
        entries = [self.entries(s) for s in scripts]
        return self._run_batch(entries, list(voices), seed, None, "end" if decode else "none")

    def stream(
        self, text: str | Iterable[str], voice: VoiceSpec | None = None, *, seed: int | None = None
    ) -> Iterator[AudioChunk]:
        """Audio frames as they are generated, for text that may itself arrive piece by piece (e.g. from
        a language model): each piece is read as soon as the previous frames are out, and generation
        runs as far as the words received so far allow."""
        session = self.session(voice, seed=seed)
        pieces = [text] if isinstance(text, str) else text
        for piece in pieces:
            session.push(piece)
            yield from session.frames()
        session.end()
        yield from session.frames()

    def stream_batch(
        self,
        scripts: Sequence[Script],
        voice: VoiceSpec | None = None,
        *,
        voices: Sequence[VoiceSpec] | None = None,
        seed: int | None = None,
    ) -> Iterator[list[AudioChunk | None]]:
        """Several scripts through one batched engine, frame by frame: yields, for every step that
        produces audio, one chunk per script (None for a script whose audio is already complete)."""
        if isinstance(scripts, str) or not scripts:
            raise InputError("stream_batch takes a non-empty list of scripts")
        if voices is None:
            voices = [voice] * len(scripts)
        if len(voices) != len(scripts):
            raise InputError(f"got {len(voices)} voices for {len(scripts)} scripts")
        states = [self.machine.new_state(self.entries(s)) for s in scripts]
        run = _Run(self, list(voices), seed, states, input_ended=True, audio="stream")
        while not run.done:
            chunks = run.step()
            if chunks is not None:
                yield [c if c.index < run.audio_frames(b) else None for b, c in enumerate(chunks)]

    def session(self, voice: VoiceSpec | None = None, *, seed: int | None = None) -> TtsStream:
        """A live session: `push` text, `end` it, and pull audio with `frames()`."""
        return TtsStream(self, voice, seed)

    def _run_batch(
        self,
        entries: list[list[Entry]],
        voices: list[VoiceSpec],
        seed: int | None,
        on_frame: Callable[[AudioChunk], None] | None,
        audio: str,
        on_step: Callable[[], None] | None = None,
    ) -> list[Synthesis]:
        states = [self.machine.new_state(e) for e in entries]
        run = _Run(self, voices, seed, states, input_ended=True, audio=audio)
        while not run.done:
            chunks = run.step()
            if on_frame is not None and chunks is not None:
                on_frame(chunks[0])
            if on_step is not None:
                on_step()
        return [run.result(b) for b in range(len(entries))]


class _Run:
    """One batched generation: B scripts stepped together (the reference's `generate` loop)."""

    def __init__(
        self,
        synth: Synthesizer,
        voices: list[VoiceSpec],
        seed: int | None,
        states: list[State],
        input_ended: bool,
        audio: str = "stream",
    ) -> None:
        self.started = time.perf_counter()
        self.synth = synth
        self.audio_mode = audio  # "stream": decode each frame at once; "end": all at the end; "none"
        self.states = states
        self.input_ended = input_ended
        B = len(states)
        lm = synth.lm
        condition_sum, condition_cross = synth._conditions(voices)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=lm.device).manual_seed(int(seed))
        self.gen = synth.make_generator(
            B,
            condition_sum,
            condition_cross,
            generator=generator,
            on_text_logits=self._on_text_logits,
            on_text=self._on_text,
            on_audio=self._on_audio,
            on_audio_logits=self._on_audio_logits if synth.soft_decode else None,
        )
        self.decoder = synth.mimi.streaming_decoder(B, exact=synth.exact) if audio == "stream" else None
        device = lm.device
        self.inputs = torch.full((B, self.gen.needed_inputs), ZERO, dtype=torch.long, device=device)
        self.no_depformer = torch.full((B, synth.n_q), ZERO, dtype=torch.long, device=device)
        self.delays = lm.cfg.delays[1 : 1 + synth.n_q]
        delays = torch.tensor(self.delays, device=device)
        self.audio_start = delays + synth.delay_steps  # first step at which codebook q is generated
        self.audio_start_list = self.audio_start.tolist()
        self.max_delay = lm.cfg.max_delay
        self.offset = 0
        self.logged: list[list[tuple[int, int]]] = [[] for _ in states]
        self.codes: list[torch.Tensor] = []  # per audio frame, [B, n_q]
        # soft_decode: the code vectors [n_q, bins, C]; for the last max_delay + 1 steps, codebook q's mean
        # vector [B, n_q, C] (as sampled, before un-delaying); per audio frame, the latent to decode [B, C]
        self.vectors = synth.mimi.quantizer.code_vectors()[: synth.n_q].float() if synth.soft_decode else None
        self.soft_steps: deque[torch.Tensor] = deque(maxlen=self.max_delay + 1)
        self.soft_step: torch.Tensor | None = None
        self.latents: list[torch.Tensor] = []
        self.audio: list[np.ndarray] = []  # per audio frame, [B, 1920]
        self.first_audio: float | None = None

    # -- hooks (read self.offset, the step being run) --------------------------------------------
    def _on_text_logits(self, logits: torch.Tensor) -> None:
        if self.synth.padding_bonus:
            logits[..., PAD] += self.synth.padding_bonus

    def _on_text(self, tokens: torch.Tensor) -> None:
        out = []
        for b, (token, state) in enumerate(zip(tokens.tolist(), self.states, strict=True)):
            fed, _ = self.synth.machine.process(self.offset, state, token)
            self.logged[b].append((token, fed))
            out.append(fed)
        tokens.copy_(torch.tensor(out, dtype=tokens.dtype))

    def _on_audio(self, audio: torch.Tensor) -> None:
        audio.masked_fill_((self.offset < self.audio_start)[None, :], ZERO)

    def _on_audio_logits(self, codebook: int, logits: torch.Tensor) -> None:
        assert self.vectors is not None and self.soft_step is not None
        if codebook > 0:
            bins = self.vectors.shape[1]
            probs = torch.softmax(logits[:, :bins].float(), -1).to(self.vectors.device)
            self.soft_step[:, codebook] = probs @ self.vectors[codebook]

    def _soft_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """The latent [B, C] of the frame just un-delayed: codebook 0's drawn code vector plus the mean
        vectors of codebooks 1+, each from the step at which it was sampled."""
        assert self.vectors is not None and len(self.soft_steps) == self.max_delay + 1
        latent = self.vectors[0][codes[:, 0].clamp(min=0).to(self.vectors.device)]
        for q in range(1, self.synth.n_q):  # the newest step is the frame's + max_delay
            latent = latent + self.soft_steps[self.delays[q]][:, q]
        return latent

    # -- stepping ----------------------------------------------------------------------------------
    @property
    def stop_step(self) -> int | None:
        """The step count at which generation stops (None while some text is not finished)."""
        if any(s.end_step is None for s in self.states):
            return None
        return max(s.end_step for s in self.states) + self.synth.delay_steps + self.synth.final_padding

    @property
    def done(self) -> bool:
        stop = self.stop_step
        return self.offset >= self.synth.max_steps or (stop is not None and self.offset >= stop)

    def ready(self) -> bool:
        machine = self.synth.machine
        return all(machine.ready(s, self.input_ended) for s in self.states)

    def step(self) -> list[AudioChunk] | None:
        """One generation step; returns the new audio frame of each script once audio has begun."""
        override = self.no_depformer if self.offset < self.synth.delay_steps else None
        codebooks = None
        if override is None and not self.synth.exact:
            # The depformer samples codebooks in order and those still in their acoustic delay are
            # discarded (`_on_audio`): sample only through the last one that has started (the reference,
            # and exact mode, sample them all).
            started = [q for q, start in enumerate(self.audio_start_list) if self.offset >= start]
            if started and started[-1] + 1 < self.synth.n_q:
                codebooks = started[-1] + 1
        if self.vectors is not None:
            n_q, _, dim = self.vectors.shape
            self.soft_step = torch.zeros(len(self.states), n_q, dim, device=self.vectors.device)
        out = self.gen.step(self.inputs, audio_override=override, depformer_codebooks=codebooks)
        if self.soft_step is not None:
            self.soft_steps.append(self.soft_step)
        self.offset += 1
        frame = self.offset - 1 - self.max_delay  # code time of out.tokens
        if frame < self.synth.delay_steps:
            return None
        codes = out.tokens[:, 1:]
        index = len(self.codes)
        self.codes.append(codes.cpu())
        if self.vectors is not None:
            self.latents.append(self._soft_latent(codes))
        if self.decoder is None:
            return None
        if self.vectors is not None:
            pcm = self.decoder.step_latent(self.latents[-1][..., None])
        else:
            pcm = self.decoder.step(codes[..., None])
        pcm = pcm.clamp(-1, 1)[:, 0].float().cpu().numpy()
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.started
        self.audio.append(pcm)
        return [
            AudioChunk(index, pcm[b], self.codes[-1][b], self._words_at(b, index))
            for b in range(len(self.states))
        ]

    # -- results -----------------------------------------------------------------------------------
    def _words_at(self, b: int, index: int) -> list[WordTiming]:
        return [w for w in self.words(b) if w.step == index]

    def words(self, b: int) -> list[WordTiming]:
        """Word timings of script b so far (a word ends when the next entry starts, or at the end)."""
        state = self.states[b]
        taken = state.consumption_times
        words = []
        for text, step in state.transcript:
            later = [t for t in taken if t > step]
            end_step = later[0] if later else state.end_step
            end = None if end_step is None else end_step / FRAME_RATE
            words.append(WordTiming(text, step / FRAME_RATE, end, step))
        return words

    def audio_frames(self, b: int) -> int:
        """Frames of audio that belong to script b: up to its own end (+ final padding - acoustic delay)."""
        end = self.states[b].end_step
        if end is None:
            return len(self.codes)
        return max(0, min(len(self.codes), end + self.synth.final_padding - self.max_delay))

    def result(self, b: int) -> Synthesis:
        n = self.audio_frames(b)
        codes = torch.stack([c[b] for c in self.codes[:n]], dim=1) if n else torch.zeros(self.synth.n_q, 0)
        if not n or self.audio_mode == "none":
            audio = np.zeros(0, np.float32)
        elif self.audio_mode == "stream":
            audio = np.concatenate([a[b] for a in self.audio[:n]])
        else:  # one-shot decoding gives the streaming decoder's audio up to float rounding, faster
            mimi = self.synth.mimi
            with torch.inference_mode():
                if self.vectors is not None:  # soft_decode
                    latent = torch.stack([x[b] for x in self.latents[:n]], dim=-1)[None]
                    wav = mimi.decode_from_latent(latent).clamp(-1, 1)
                else:
                    wav = mimi.decode(codes[None].to(next(mimi.parameters()).device)).clamp(-1, 1)
            audio = wav[0, 0].float().cpu().numpy()
        return Synthesis(
            audio=audio.astype(np.float32),
            words=self.words(b),
            codes=codes.long(),
            sample_rate=self.synth.sample_rate,
            end_step=self.states[b].end_step,
            steps=self.offset,
            time_to_first_audio=self.first_audio,
            text_tokens=self.logged[b],
        )


class TtsStream:
    """A live TTS session for one voice: text goes in with `push` (words may be split across pushes),
    audio comes out of `frames()`, which generates as far as the text received so far allows; `end()`
    says no more text is coming. The audio equals what `synthesize` gives for the whole text."""

    def __init__(self, synth: Synthesizer, voice: VoiceSpec, seed: int | None) -> None:
        self.synth = synth
        self.parser = ScriptParser(synth.tokenizer, True, synth.padding_between)
        self.state = synth.machine.new_state()
        self.run = _Run(synth, [voice], seed, [self.state], input_ended=False)
        self.chars = 0
        self.has_speech = False

    def push(self, text: str) -> None:
        """Append text to the current turn."""
        if self.run.input_ended:
            raise InputError("this TTS session has ended: no more text can be added")
        if not isinstance(text, str):
            raise InputError(f"expected text (str), got {type(text).__name__}")
        self.chars += len(text)
        if self.chars > self.synth.max_chars:
            raise InputError(f"the session's text exceeds the limit of {self.synth.max_chars} characters")
        self.has_speech = self.has_speech or has_speech(normalize_text(text))
        self.state.entries.extend(self.parser.push(text))

    def new_turn(self) -> None:
        """Switch to the other speaker (dialogs: give the session one voice per speaker)."""
        if self.run.input_ended:
            raise InputError("this TTS session has ended: no more text can be added")
        self.state.entries.extend(self.parser.new_turn())

    def end(self) -> None:
        """No more text: the rest is generated by the next `frames()`."""
        if self.run.input_ended:
            return
        self.state.entries.extend(self.parser.finish())
        if not self.has_speech:
            raise InputError("the session received no words to speak")
        self.run.input_ended = True

    @property
    def done(self) -> bool:
        return self.run.input_ended and self.run.done

    @property
    def words(self) -> list[WordTiming]:
        return self.run.words(0)

    @property
    def time_to_first_audio(self) -> float | None:
        return self.run.first_audio

    def frames(self) -> Iterator[AudioChunk]:
        """Generate and yield frames until the text received so far is used up (or the end)."""
        run = self.run
        while not run.done and run.ready():
            chunks = run.step()
            if chunks is not None and chunks[0].index < run.audio_frames(0):
                yield chunks[0]
        if run.done:
            run.input_ended = True

    def result(self) -> Synthesis:
        """Everything generated so far, as `synthesize` returns it."""
        return self.run.result(0)


def _join(parts: list[Synthesis]) -> Synthesis:
    """Concatenate the syntheses of consecutive chunks (word times shifted)."""
    words: list[WordTiming] = []
    offset = 0.0
    steps = 0
    for part in parts:
        for w in part.words:
            end = None if w.end is None else w.end + offset
            words.append(WordTiming(w.text, w.start + offset, end, w.step + steps))
        offset += part.duration
        steps += part.codes.shape[-1]
    return Synthesis(
        audio=np.concatenate([p.audio for p in parts]),
        words=words,
        codes=torch.cat([p.codes for p in parts], dim=1),
        sample_rate=parts[0].sample_rate,
        end_step=None if any(p.end_step is None for p in parts) else steps,
        steps=max(p.steps for p in parts),
        time_to_first_audio=parts[0].time_to_first_audio,
        text_tokens=[t for p in parts for t in p.text_tokens],
    )
