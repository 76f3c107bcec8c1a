"""The DSM text-to-speech trainer: the word-aligned text streams in, Mimi codes out through the depth
transformer, with voice conditioning.

Streams (`dsm.train.streams.tts_example`): the text leads and the audio follows ``audio_delay`` seconds
later (1.28 s -> 16 frames for tts-1.6b); the text rows replay the inference state machine, with the
lookahead second stream when ``second_stream_ahead`` > 0. Multi-speaker models (those with a
``speaker_wavs`` tensor conditioner) get speaker token 1 before the first word, as Kyutai's scripts do.

Voice conditioning: the unquantized Mimi latent of the first ``voice_seconds`` of another utterance of the
same speaker (drawn at random each time, from its first ``voice_pool`` training utterances when that is set;
the utterance itself when it is the speaker's only one), zero-padded
to that length, in slot 0 of ``max_speakers`` slots (model-spec §5.4); LUT conditions take the values of
``[tts].text_conditions`` (absent ones are None). With ``condition_dropout`` an item is, with that
probability, the null branch of classifier-free guidance as generation builds it for models without
distilled CFG (``cfg_is_no_text``): every condition dropped and no text into the temporal transformer.
Loss: text cross-entropy (padding weighted by ``pad_weight``) + audio cross-entropy over the generated
codebooks (codebook 0 weighted by ``first_codebook_weight``). ``code_noise`` replaces that fraction of the
audio history the temporal transformer reads by random codes, so that the model leans on the text.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from dsm.codec import MimiConfig, load_mimi
from dsm.errors import InputError
from dsm.lm.conditioners import ConditionAttributes, LUTConditioner, TensorCondition, TensorConditioner
from dsm.lm.model import ZERO_TOKEN
from dsm.nn.sampling import sample
from dsm.train.codes_cache import CodesCache
from dsm.train.dataset import LMItem
from dsm.train.lm_task import LMTask
from dsm.train.streams import (
    MAIN_SPEAKER,
    AlignedWord,
    LMBatch,
    LMExample,
    collate,
    delay_frames,
    noisy_audio,
    tts_example,
)

DEFAULT_AUDIO_DELAY = 1.28
DEFAULT_MAX_SPEAKERS = 5


class TtsTask(LMTask):
    kind = "tts"

    def check_model(self) -> None:
        if self.lm.cfg.dep_q < 1:
            raise InputError(f"{self.cfg.source}: the TTS trainer needs a model with a depformer (dep_q > 0)")

    def configure(self) -> None:
        t = self.cfg.tts
        raw = self.setup.raw_config.get("tts_config") or {}
        self.audio_delay = (
            t.audio_delay if t.audio_delay is not None else float(raw.get("audio_delay", DEFAULT_AUDIO_DELAY))
        )
        self.delay_steps = delay_frames(self.audio_delay)
        ahead = t.second_stream_ahead
        self.ahead = int(raw.get("second_stream_ahead", 0)) if ahead is None else ahead
        if self.ahead > 0 and not self.lm.cfg.demux_second_text_stream:
            raise InputError(
                f"{self.cfg.source}: second_stream_ahead = {self.ahead} needs a model with "
                "demux_second_stream = true"
            )
        self.max_speakers = t.max_speakers or int(raw.get("max_speakers", DEFAULT_MAX_SPEAKERS))
        self.first_codebook_weight = t.first_codebook_weight
        provider = self.lm.condition_provider
        conditioners = {} if provider is None else dict(provider.conditioners.items())
        self.voice_names = [n for n, c in conditioners.items() if isinstance(c, TensorConditioner)]
        self.lut_names = [n for n, c in conditioners.items() if isinstance(c, LUTConditioner)]
        if len(self.voice_names) > 1:
            raise InputError(
                f"the model has several tensor conditioners {self.voice_names}; expected one voice"
            )
        unknown = sorted(set(t.text_conditions) - set(self.lut_names))
        if unknown:
            raise InputError(f"{self.cfg.source}: [tts].text_conditions names unknown conditioners {unknown}")
        for name, value in t.text_conditions.items():
            conditioners[name].tokenize([value])  # an invalid value fails now, not mid-run
        self.multi_speaker = "speaker_wavs" in conditioners
        self.gen = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + self.info.rank + 1)

    def codes_n_q(self) -> int:
        return self.lm.cfg.dep_q

    def load_data(self) -> None:
        super().load_data()
        self.latents: dict[Path, torch.Tensor] = {}
        self.by_speaker: dict[str, list[Path]] = defaultdict(list)  # voice clips to draw from
        pool = self.cfg.tts.voice_pool
        for item in self.train_items:
            if item.speaker and (pool == 0 or len(self.by_speaker[item.speaker]) < pool):
                self.by_speaker[item.speaker].append(item.audio)
        if not self.voice_names:
            return
        t = self.cfg.tts
        voice_mimi = self.setup.mimi
        if t.voice_mimi:
            cfg = MimiConfig.from_dict(self.cfg.model.mimi_config) if self.cfg.model.mimi_config else None
            voice_mimi = load_mimi(self.cfg.path(t.voice_mimi), config=cfg, device=self.device)
        dim = self.lm.condition_provider.conditioners[self.voice_names[0]].dim
        if voice_mimi.cfg.dimension != dim:
            raise InputError(
                f"the voice conditioner takes {dim}-dim latents but the voice Mimi makes "
                f"{voice_mimi.cfg.dimension}-dim ones"
            )
        cache = CodesCache(self.cache.directory, voice_mimi, self.device)
        distinct = {speaker: set(clips) for speaker, clips in self.by_speaker.items()}
        needed = [clip for clips in self.by_speaker.values() for clip in clips]
        # an item whose speaker has no other clip is its own voice (`_voice_source`)
        items = self.train_items + self.eval_items
        needed += [i.audio for i in items if distinct.get(i.speaker, set()) <= {i.audio}]
        for source in needed:
            if source not in self.latents:
                self.latents[source] = cache.latent(source, t.voice_seconds)

    def example(self, item: LMItem) -> LMExample:
        words = list(item.words)
        if self.multi_speaker and words:
            first = words[0]
            words[0] = AlignedWord((MAIN_SPEAKER, *first.tokens), first.start, first.end)
        cfg = self.lm.cfg
        return tts_example(
            item.codes,
            words,
            self.delay_steps,
            cfg.text_card,
            self.ahead,
            self.cfg.tts.pad_weight,
            input_rows=cfg.n_q - cfg.dep_q,
        )

    def _voice_source(self, item: LMItem, train: bool) -> Path:
        others = [p for p in self.by_speaker.get(item.speaker, []) if p != item.audio]
        if not others:
            return item.audio
        if not train:
            return others[0]
        return others[int(torch.randint(len(others), (1,), generator=self.gen))]

    def _attributes(self, item: LMItem, train: bool) -> ConditionAttributes:
        text = {name: self.cfg.tts.text_conditions.get(name) for name in self.lut_names}
        tensor = {}
        for name in self.voice_names:
            latent = self.latents[self._voice_source(item, train)]
            frames = latent.shape[0]
            voice = torch.zeros(self.max_speakers * frames, latent.shape[1])
            mask = torch.zeros(self.max_speakers * frames, dtype=torch.bool)
            voice[:frames] = latent
            mask[:frames] = True
            tensor[name] = TensorCondition(voice[None].to(self.device), mask[None].to(self.device))
        return ConditionAttributes(text=text, tensor=tensor)

    def make_batch(self, items: list[LMItem], train: bool) -> LMBatch:
        """Collated examples. In training, each item is, with probability ``condition_dropout``, the null
        branch of classifier-free guidance as generation builds it (`cfg_is_no_text`): every condition
        null, no text into the temporal transformer (the depformer still sees each step's text token, as
        in generation) and no text loss; and ``code_noise`` replaces that fraction of the audio history the
        temporal transformer reads by random codes (the targets stay). Both go in ``extra["inputs"]``."""
        examples = [self.example(item) for item in items]
        attributes = [self._attributes(item, train) for item in items] if self.lm.condition_provider else None
        dropout = self.cfg.tts.condition_dropout if train else 0.0
        noise = self.cfg.tts.code_noise if train else 0.0
        dropped = []
        for i, example in enumerate(examples):
            if dropout > 0 and float(torch.rand((), generator=self.gen)) < dropout:
                dropped.append(i)
                example.text_weight.zero_()
                if attributes is not None:
                    attributes[i] = attributes[i].null()
        batch = collate(examples, {} if attributes is None else {"attributes": attributes}).to(self.device)
        if dropped or noise > 0:
            inputs = batch.codes.clone()
            inputs[dropped, 0] = ZERO_TOKEN
            if noise > 0:
                inputs = noisy_audio(inputs, noise, self.lm.cfg.card, self.gen)
            batch.extra["inputs"] = inputs
        return batch

    def freeze_unused(self) -> None:
        super().freeze_unused()
        emb = self.lm.depformer_text_emb
        if emb is not None and emb.demux and emb.low_rank is not None:
            emb.low_rank.requires_grad_(False)  # created but not applied with demux (model-spec §2.2)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.gen.set_state(state["gen"])

    @torch.no_grad()
    def teacher_forced_logits(self, item: LMItem) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [dep_q, frames, card], true codes [dep_q, frames], -1 where none) of the item's audio
        frames (the audio delay removed), each codebook of each frame given the true history, text and
        lower codebooks (no condition dropout)."""
        batch = self.make_batch([item], train=False)
        out = self.lm(batch.codes, **self.module.conditions(batch))
        n = self.lm.cfg.dep_q
        logits = out.logits[0].float().nan_to_num(0.0)[:, self.delay_steps :]
        truth = batch.codes[0, 1 : 1 + n, self.delay_steps :]
        return logits[:, : item.frames], truth[:, : item.frames]

    @torch.no_grad()
    def draw_audio_codes(
        self,
        item: LMItem,
        temperature: float = 0.6,
        top_k: int = 250,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The item's audio codes [dep_q, frames] drawn from the model teacher-forced
        (`teacher_forced_logits`); -1 where the item has no code. Frame f is the item's audio frame f: what
        the codec's decoder gets from this model, aligned with the true audio (`[codec].substitute_codes`
        trains on it)."""
        logits, truth = self.teacher_forced_logits(item)
        drawn = sample(logits, temperature, top_k, generator)
        return torch.where(truth >= 0, drawn, torch.full_like(drawn, -1))

    @torch.no_grad()
    def expected_acoustic_codewords(self, item: LMItem) -> torch.Tensor:
        """[codebook_dim, frames]: the sum over the acoustic codebooks 1 .. dep_q - 1 of each one's codewords
        averaged under the model's teacher-forced distribution (`teacher_forced_logits`), in the codec's
        acoustic quantizer before its output projection; NaN where the item has no code. What soft decoding
        (`Synthesizer(soft_decode=True)`) hands the decoder for those codebooks, aligned with the true audio
        (`[codec].substitute_codes` trains on it)."""
        logits, truth = self.teacher_forced_logits(item)
        rvq = self.setup.mimi.quantizer.rvq_rest
        books = torch.stack([layer._codebook.embedding.float() for layer in rvq.vq.layers[: len(truth) - 1]])
        probs = torch.softmax(logits[1:, :, : books.shape[1]], -1)  # [dep_q - 1, frames, bins]
        mean = torch.einsum("qtb,qbc->ct", probs, books)
        return mean.masked_fill(~(truth >= 0).all(0), float("nan"))

    def export_updates(self) -> dict[str, Any]:
        raw = dict(self.setup.raw_config.get("tts_config") or {})
        raw.update(
            audio_delay=self.audio_delay, second_stream_ahead=self.ahead, max_speakers=self.max_speakers
        )
        if self.voice_names:  # voices are codec latents of this many seconds (`dsm voice` makes them)
            raw["voice_seconds"] = self.cfg.tts.voice_seconds
        return {"model_type": "tts", "tts_config": raw}
