"""The DSM speech-to-text trainer: Mimi codes in, the word-aligned text stream out, delayed.

Each item's audio is followed by ``delay + 4`` silent frames so the last word's tokens fit; the text row is
`dsm.train.streams.stt_text_stream` (0 at frame(start) + delay, then the word's pieces, padding 3 elsewhere).
Only text is predicted (dep_q = 0), so the loss is the text cross-entropy with padding weighted by
``[stt].pad_weight``; ``[stt].code_noise`` replaces a fraction of the input audio codes by random ones
during training. The exported model directory loads in `dsm.stt.Transcriber`.
"""

from __future__ import annotations

from typing import Any

import torch

from dsm.errors import InputError
from dsm.stt.checkpoint import SttConfig
from dsm.train.dataset import LMItem
from dsm.train.lm_task import LMTask
from dsm.train.streams import FRAME_RATE, LMBatch, LMExample, delay_frames, noisy_audio, stt_example

DEFAULT_DELAY_SECONDS = 0.5
# Silent frames after the delay, so that a last word's first pieces fit in the stream.
TAIL_FRAMES = 4


class SttTask(LMTask):
    kind = "stt"

    def check_model(self) -> None:
        if self.lm.cfg.dep_q != 0:
            raise InputError(
                f"{self.cfg.source}: the STT trainer needs a model with dep_q = 0 (text output only), "
                f"got dep_q = {self.lm.cfg.dep_q}"
            )

    def configure(self) -> None:
        raw = self.setup.raw_config.get("stt_config") or {}
        delay = self.cfg.stt.delay_seconds
        if delay is None:
            delay = float(raw.get("audio_delay_seconds", DEFAULT_DELAY_SECONDS))
        if delay < 0:
            raise InputError(f"{self.cfg.source}: [stt].delay_seconds must be >= 0, got {delay}")
        self.delay_seconds = delay
        self.delay = delay_frames(delay, FRAME_RATE)
        # per rank, as the TTS trainer's generator: each rank draws its own noise for its own slice
        self.noise_rng = torch.Generator().manual_seed(self.cfg.run.seed * 7919 + self.info.rank + 1)

    def silence_frames(self) -> int:
        return self.delay + TAIL_FRAMES

    def example(self, item: LMItem) -> LMExample:
        return stt_example(item.codes, item.words, self.delay, self.cfg.stt.pad_weight)

    def make_batch(self, items: list[LMItem], train: bool) -> LMBatch:
        batch = super().make_batch(items, train)
        noise = self.cfg.stt.code_noise
        if train and noise > 0:
            batch.codes = noisy_audio(batch.codes, noise, self.lm.cfg.card, self.noise_rng)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "noise_rng": self.noise_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "noise_rng" in state:
            self.noise_rng.set_state(state["noise_rng"])

    def export_updates(self) -> dict[str, Any]:
        old = SttConfig.from_dict(self.setup.raw_config.get("stt_config"))
        prefix = old.audio_silence_prefix_seconds if "stt_config" in self.setup.raw_config else 0.0
        return {
            "model_type": "stt",
            "stt_config": {"audio_delay_seconds": self.delay_seconds, "audio_silence_prefix_seconds": prefix},
        }
