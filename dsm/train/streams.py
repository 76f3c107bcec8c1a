"""Training token grids for DSM models: the word-aligned text stream, the delays, loss masks and weights.

Everything runs in "code time": index t of a stream is Mimi frame t (80 ms, 12.5 Hz). A word starting at
``s`` seconds belongs to frame ``floor(s * 12.5)`` (:func:`frame_index`).

**STT** (model-spec §4.3): the text row carries, for each word, the end-of-padding token 0 at frame
``floor(s * 12.5) + delay`` and the word's SentencePiece pieces in the following frames; every other frame
holds the padding token 3. ``delay`` is the STT text delay in frames (0.5 s -> 6 for stt-1b). A word whose
slot is still taken by the previous word's pieces is pushed to the first free frame. With the DSM scripts'
streaming recipe (§4.2, recipe B, which never shows the model the first audio frame) the decoded start of
such a word is exactly ``floor(s * 12.5) / 12.5`` (`dsm.stt.timestamps.words_from_tokens`).

**TTS** (§5.3): text leads and the audio follows ``delay_steps`` frames later (1.28 s -> 16): audio row
index ``t + delay_steps`` holds Mimi frame t, and the first ``delay_steps`` audio entries are the zero
token -1 (no loss). The text rows replay the inference state machine: at a word's "new word" step (its
frame, pushed later while the previous word still has pieces to emit) the model should predict 0, the
word's pieces are then fed one per step, and with a lookahead second stream (``second_stream_ahead`` > 0)
the 0 moves to the second stream while the pieces of the word ``second_stream_ahead`` entries ahead follow
it there; the fed value is ``(second + 1) * (text_card + 1) + main`` (the demuxed embedding of §2.2).
After the last word, the model should predict 0 once more (end of text).

Losses: cross-entropy on the text row with ``pad_weight`` on padding targets (0.5 in Kyutai's fine-tuning
code) and on the generated audio codebooks with ``first_codebook_weight`` on codebook 0; positions holding
-1 (batch padding, audio before the TTS delay) carry no loss. The acoustic delays inside the model (TTS
``delays`` [0, 0, 2, ...]) are applied by `LMModel.forward` itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from dsm.errors import InputError
from dsm.lm.model import ZERO_TOKEN, LMOutput

FRAME_RATE = 12.5
PAD = 3  # existing_text_padding_id
EPAD = 0  # existing_text_end_padding_id: STT word boundary, TTS "new word"
MAIN_SPEAKER = 1  # TTS speaker tokens (model-spec §5.2)
OTHER_SPEAKER = 2
# Word times come from float seconds: 0.48 * 12.5 is 5.999999999999999, which is frame 6.
_EPSILON = 1e-6


def frame_index(seconds: float, frame_rate: float = FRAME_RATE) -> int:
    """The frame holding time ``seconds``: floor(seconds * frame_rate), robust to float rounding."""
    return math.floor(seconds * frame_rate + _EPSILON)


def delay_frames(seconds: float, frame_rate: float = FRAME_RATE) -> int:
    """A delay in seconds as a whole number of frames (nearest; 0.5 s -> 6, 1.28 s -> 16)."""
    return int(round(seconds * frame_rate))


@dataclass(frozen=True)
class AlignedWord:
    """A word's token ids and its time span in seconds."""

    tokens: tuple[int, ...]
    start: float
    end: float


# -- STT ------------------------------------------------------------------------------------------------


def stt_text_stream(
    words: Sequence[AlignedWord], num_frames: int, delay: int, pad: int = PAD, epad: int = EPAD
) -> torch.Tensor:
    """The STT text row [num_frames] (long): ``epad`` at frame(start) + delay, the pieces after it, ``pad``
    elsewhere. Words that do not fit before ``num_frames`` are cut (the caller pads the audio by the delay).
    """
    if delay < 0:
        raise InputError(f"the STT delay must be >= 0 frames, got {delay}")
    text = torch.full((num_frames,), pad, dtype=torch.long)
    free = 0  # first frame not taken by an earlier word
    for word in words:
        marker = max(frame_index(word.start) + delay, free)
        if marker >= num_frames:
            break
        text[marker] = epad
        pieces = list(word.tokens)[: num_frames - marker - 1]
        text[marker + 1 : marker + 1 + len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        free = marker + 1 + len(word.tokens)
    return text


# -- TTS ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TtsText:
    """The TTS text rows over T steps: ``fed`` (the model's text input, muxed with the second stream when
    there is one), ``target`` (what the model should predict: 0 at new-word and end steps, the pieces it
    emits, else padding), the new-word step of each word and the end-of-text step (-1 if cut)."""

    fed: torch.Tensor
    target: torch.Tensor
    word_steps: tuple[int, ...]
    end_step: int


def tts_word_steps(words: Sequence[AlignedWord], num_steps: int) -> tuple[list[int], int]:
    """New-word step of each word (its frame, at least one step after the previous word's pieces) and the
    end step (the frame of the last word's end, likewise pushed). Steps may be >= num_steps (cut)."""
    steps: list[int] = []
    free = 0
    for word in words:
        step = max(frame_index(word.start), free)
        steps.append(step)
        free = step + len(word.tokens) + 1
    end = max(frame_index(words[-1].end), free) if words else 0
    return steps, end


def tts_text_streams(
    words: Sequence[AlignedWord],
    num_steps: int,
    text_card: int,
    second_stream_ahead: int = 0,
    pad: int = PAD,
    new_word: int = EPAD,
) -> TtsText:
    """Replay the TTS state machine (model-spec §5.3) along the aligned words over ``num_steps`` steps."""
    steps, end = tts_word_steps(words, num_steps)
    at_step = {step: k for k, step in enumerate(steps)}
    n_embed = text_card + 1
    fed = torch.full((num_steps,), pad, dtype=torch.long)
    target = torch.full((num_steps,), pad, dtype=torch.long)
    queued: deque[int] = deque()
    lookahead: deque[int] = deque()
    for t in range(num_steps):
        k = at_step.get(t)
        if k is not None:  # the model asks for a word and gets word k
            queued.extend(words[k].tokens)
            if second_stream_ahead > 0:
                ahead = [w for w in words[k + 1 :] if w.tokens]
                if len(ahead) >= second_stream_ahead:
                    lookahead.extend(ahead[second_stream_ahead - 1].tokens)
            output = target[t] = new_word
        elif t == end and words:  # the model asks for a word and none is left: end of text
            target[t] = new_word
            output = new_word if second_stream_ahead > 0 else pad
        else:
            output = queued.popleft() if queued else pad
            target[t] = output
        if second_stream_ahead > 0:
            second = -1
            if output == new_word:
                second = new_word
                output = queued.popleft() if queued else pad
            elif lookahead:
                second = lookahead.popleft()
            output = (second + 1) * n_embed + output
        fed[t] = output
    return TtsText(fed, target, tuple(steps), end if end < num_steps else -1)


def delayed_audio(codes: torch.Tensor, delay_steps: int, num_steps: int) -> torch.Tensor:
    """Audio rows [n_q, num_steps]: -1 for the first ``delay_steps`` steps, then ``codes`` [n_q, F], cut or
    padded with -1 to ``num_steps``."""
    out = torch.full((codes.shape[0], num_steps), ZERO_TOKEN, dtype=torch.long)
    n = max(0, min(codes.shape[1], num_steps - delay_steps))
    out[:, delay_steps : delay_steps + n] = codes[:, :n]
    return out


# -- examples, batches and losses --------------------------------------------------------------------------


@dataclass
class LMExample:
    """One training item: codes [K, T] (row 0 the fed text, rows 1.. audio), the text target [T] and the
    per-step text loss weight [T]."""

    codes: torch.Tensor
    text_target: torch.Tensor
    text_weight: torch.Tensor


def text_weights(target: torch.Tensor, pad_weight: float, pad: int = PAD) -> torch.Tensor:
    """Loss weight per text step: ``pad_weight`` where the target is padding, else 1."""
    return torch.where(target == pad, pad_weight, 1.0).float()


def stt_example(
    codes: torch.Tensor, words: Sequence[AlignedWord], delay: int, pad_weight: float
) -> LMExample:
    """STT item from audio codes [n_q, F] (the audio already followed by at least ``delay`` silent frames)."""
    text = stt_text_stream(words, codes.shape[1], delay)
    grid = torch.cat([text[None], codes.long()], dim=0)
    return LMExample(grid, text.clone(), text_weights(text, pad_weight))


def noisy_audio(
    codes: torch.Tensor, prob: float, card: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A copy of batch codes [B, K, T] whose audio rows (1..K-1) have each real code (>= 0) replaced by a
    uniformly random one of ``card`` with probability ``prob``; the text row and special tokens are kept."""
    out = codes.clone()
    audio = out[:, 1:]
    hit = (torch.rand(audio.shape, generator=generator) < prob).to(audio.device) & (audio >= 0)
    random_codes = torch.randint(0, card, audio.shape, generator=generator).to(audio.device)
    audio[hit] = random_codes[hit]
    return out


def tts_example(
    codes: torch.Tensor,
    words: Sequence[AlignedWord],
    delay_steps: int,
    text_card: int,
    second_stream_ahead: int,
    pad_weight: float,
    input_rows: int = 0,
) -> LMExample:
    """TTS item from audio codes [n_q, F]: T = F + delay_steps steps. ``input_rows`` extra audio rows
    (user-input codebooks of a model with n_q > dep_q) are fed as -1."""
    steps = codes.shape[1] + delay_steps
    text = tts_text_streams(words, steps, text_card, second_stream_ahead)
    audio = delayed_audio(codes.long(), delay_steps, steps)
    rows = [text.fed[None], audio]
    if input_rows:
        rows.append(torch.full((input_rows, steps), ZERO_TOKEN, dtype=torch.long))
    return LMExample(torch.cat(rows, 0), text.target, text_weights(text.target, pad_weight))


@dataclass
class LMBatch:
    """Examples right-padded with -1 (codes, targets) and weight 0: codes [B, K, T], text_target [B, T],
    text_weight [B, T]; ``extra`` carries task data (e.g. TTS voice conditions)."""

    codes: torch.Tensor
    text_target: torch.Tensor
    text_weight: torch.Tensor
    extra: dict

    def to(self, device: torch.device | str) -> LMBatch:
        return LMBatch(
            self.codes.to(device), self.text_target.to(device), self.text_weight.to(device), self.extra
        )


def collate(examples: Sequence[LMExample], extra: dict | None = None) -> LMBatch:
    """Stack examples, right-padding every row with -1 and the weights with 0."""
    if not examples:
        raise InputError("cannot build a batch from no examples")
    K = examples[0].codes.shape[0]
    T = max(e.codes.shape[1] for e in examples)
    codes = torch.full((len(examples), K, T), ZERO_TOKEN, dtype=torch.long)
    target = torch.full((len(examples), T), ZERO_TOKEN, dtype=torch.long)
    weight = torch.zeros(len(examples), T)
    for b, e in enumerate(examples):
        n = e.codes.shape[1]
        codes[b, :, :n] = e.codes
        target[b, :n] = e.text_target
        weight[b, :n] = e.text_weight
    return LMBatch(codes, target, weight, extra or {})


def codebook_weights(n: int, first_codebook_weight: float) -> torch.Tensor:
    """Loss weight of each generated codebook: ``first_codebook_weight`` for codebook 0, 1 for the rest."""
    weights = torch.ones(n)
    if n:
        weights[0] = first_codebook_weight
    return weights


@dataclass
class LMLoss:
    """Weighted mean cross-entropies (the total is text + audio) and their normalisers."""

    total: torch.Tensor
    text: torch.Tensor
    audio: torch.Tensor | None
    text_weight: float
    audio_weight: float


def lm_loss(out: LMOutput, batch: LMBatch, first_codebook_weight: float = 1.0) -> LMLoss:
    """Text loss: sum(w * CE) / sum(w) over valid steps; audio loss: the same with the codebook weights,
    over the steps `LMModel.forward` marks valid (not delayed out, not -1)."""
    valid = out.text_mask[:, 0] & (batch.text_weight > 0) & (batch.text_target >= 0)
    logits = out.text_logits[:, 0][valid].float()
    w = batch.text_weight[valid]
    ce = F.cross_entropy(logits, batch.text_target[valid], reduction="none")
    w_sum = w.sum()
    text = (ce * w).sum() / w_sum.clamp(min=1e-8)
    audio = None
    a_sum = 0.0
    if out.logits is not None:
        dep_q = out.logits.shape[1]
        targets = batch.codes[:, 1 : 1 + dep_q]
        mask = out.mask & (targets >= 0)
        cw = codebook_weights(dep_q, first_codebook_weight).to(out.logits.device)
        weights = cw[None, :, None].expand_as(mask)[mask]
        ce_a = F.cross_entropy(out.logits[mask].float(), targets[mask], reduction="none")
        a_total = weights.sum()
        audio = (ce_a * weights).sum() / a_total.clamp(min=1e-8)
        a_sum = float(a_total)
    total = text if audio is None else text + audio
    return LMLoss(total, text, audio, float(w_sum), a_sum)
