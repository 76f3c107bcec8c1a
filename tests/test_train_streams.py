"""Batch construction for the trainers against hand-computed streams (dsm.train.streams)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_tokenizer import train_tokenizer
from torch.nn import functional as F

from dsm.errors import InputError
from dsm.lm.model import LMOutput
from dsm.stt.timestamps import words_from_tokens
from dsm.train.streams import (
    AlignedWord,
    LMBatch,
    LMExample,
    codebook_weights,
    collate,
    delay_frames,
    delayed_audio,
    frame_index,
    lm_loss,
    noisy_audio,
    stt_example,
    stt_text_stream,
    text_weights,
    tts_example,
    tts_text_streams,
)


def W(tokens, start, end=None):
    return AlignedWord(tuple(tokens), start, start + 0.1 if end is None else end)


def test_frames_and_delays():
    assert frame_index(0.0) == 0
    assert frame_index(0.079) == 0
    assert frame_index(0.08) == 1
    assert frame_index(0.48) == 6  # 0.48 * 12.5 is 5.999999999999999 in floats
    assert frame_index(1.0) == 12
    assert delay_frames(0.5) == 6  # stt-1b (the Rust config's asr_delay_in_tokens)
    assert delay_frames(1.28) == 16  # tts-1.6b's delay_steps
    assert delay_frames(0.0) == 0


def test_stt_text_stream_by_hand():
    words = [W([10, 11], 0.0), W([12], 0.17), W([13, 14, 15], 0.2)]
    # word 1 at frame 0 + delay 2; word 2 (frame 2 -> 4) waits for word 1's pieces; word 3 likewise.
    expected = [3, 3, 0, 10, 11, 0, 12, 0, 13, 14, 15, 3]
    assert stt_text_stream(words, 12, delay=2).tolist() == expected
    assert stt_text_stream(words, 10, delay=2).tolist() == expected[:10]  # cut at the end
    assert stt_text_stream(words, 4, delay=2).tolist() == [3, 3, 0, 10]
    # no delay, spaced words
    spaced = [W([20], 0.1), W([21, 22], 0.5)]
    assert stt_text_stream(spaced, 10, delay=0).tolist() == [3, 0, 20, 3, 3, 3, 0, 21, 22, 3]
    assert stt_text_stream([], 3, delay=1).tolist() == [3, 3, 3]
    with pytest.raises(InputError):
        stt_text_stream(words, 5, delay=-1)


def test_stt_example_rows_and_weights():
    codes = torch.arange(2 * 8).view(2, 8)
    ex = stt_example(codes, [W([7], 0.1)], delay=3, pad_weight=0.5)
    assert ex.codes.shape == (3, 8)
    assert ex.codes[0].tolist() == [3, 3, 3, 3, 0, 7, 3, 3]
    assert torch.equal(ex.codes[1:], codes)
    assert ex.text_target.tolist() == ex.codes[0].tolist()
    assert ex.text_weight.tolist() == [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.5, 0.5]
    assert text_weights(torch.tensor([3, 0, 9]), 0.25).tolist() == [0.25, 1.0, 1.0]


def test_stt_stream_decodes_to_word_start_frames(tmp_path):
    """Under the DSM scripts' streaming recipe (the first audio frame is never shown to the model, so the
    model's step i sees frame i where training showed frame i - 1), the trained stream decodes each word's
    start to floor(s * 12.5) / 12.5 with `words_from_tokens`."""
    tok = train_tokenizer(tmp_path, vocab_size=120, min_words=8, max_words=8)
    spoken = [("garden", 0.13, 0.5), ("music", 0.74, 1.1), ("yellow", 1.61, 2.0), ("river", 2.3, 2.6)]
    words = [AlignedWord(tuple(tok.encode(w)), s, e) for w, s, e in spoken]
    delay = 6
    text = stt_text_stream(words, 50, delay)
    decoded = words_from_tokens(text[1:], tok, prefix_chunks=0, audio_delay_seconds=delay / 12.5)
    assert [w.text for w in decoded] == [w for w, _, _ in spoken]
    for word, (_, start, _) in zip(decoded, spoken, strict=True):
        assert word.start == pytest.approx(math.floor(start * 12.5) / 12.5, abs=1e-9)


def test_tts_streams_without_second_stream():
    words = [W([10, 11], 0.0, 0.2), W([12], 0.25, 0.3), W([13, 14], 0.33, 0.5), W([15], 0.9, 1.0)]
    out = tts_text_streams(words, 16, text_card=127, second_stream_ahead=0)
    # new-word steps: frame 0; frame 3; frame 4 pushed to 5 (one pad after B's piece); frame 11. End at 13.
    assert out.word_steps == (0, 3, 5, 11)
    assert out.end_step == 13
    assert out.fed.tolist() == [0, 10, 11, 0, 12, 0, 13, 14, 3, 3, 3, 0, 15, 3, 3, 3]
    assert out.target.tolist() == [0, 10, 11, 0, 12, 0, 13, 14, 3, 3, 3, 0, 15, 0, 3, 3]


def test_tts_streams_with_lookahead_second_stream():
    words = [W([10, 11], 0.0, 0.2), W([12], 0.25, 0.3), W([13, 14], 0.33, 0.5), W([15], 0.9, 1.0)]
    out = tts_text_streams(words, 16, text_card=127, second_stream_ahead=2)
    N = 128

    def mux(second, main):
        return (second + 1) * N + main

    expected = [
        mux(0, 10),  # A consumed: 0 goes to the second stream, A's first piece on the main one
        mux(13, 11),  # then the pieces of C (two entries ahead) on the second stream
        mux(14, 3),
        mux(0, 12),  # B consumed; lookahead gets D
        mux(15, 3),
        mux(0, 13),  # C consumed; nothing two entries ahead
        14,
        3,
        3,
        3,
        3,
        mux(0, 15),  # D
        3,
        mux(0, 3),  # end of text: the state machine still feeds a new-word marker
        3,
        3,
    ]
    assert out.fed.tolist() == expected
    assert out.target.tolist() == [0, 11, 3, 0, 3, 0, 14, 3, 3, 3, 3, 0, 3, 0, 3, 3]
    # the demuxed embedding decodes the values back into (main, second)
    main = [v % N for v in expected]
    second = [v // N - 1 for v in expected]
    assert main[:3] == [10, 11, 3] and second[:3] == [0, 13, 14]


def test_tts_example_delays_audio():
    codes = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert delayed_audio(codes, 2, 6).tolist() == [[-1, -1, 5, 6, 7, -1], [-1, -1, 8, 9, 10, -1]]
    assert delayed_audio(codes, 2, 4).tolist() == [[-1, -1, 5, 6], [-1, -1, 8, 9]]
    ex = tts_example(
        codes,
        [W([20], 0.0, 0.1)],
        delay_steps=2,
        text_card=31,
        second_stream_ahead=0,
        pad_weight=0.5,
        input_rows=1,
    )
    assert ex.codes.shape == (4, 5)
    assert ex.codes[0].tolist() == [0, 20, 3, 3, 3]
    assert ex.text_target.tolist() == [0, 20, 0, 3, 3]  # word, then the end-of-text request at frame 2
    assert ex.codes[1].tolist() == [-1, -1, 5, 6, 7]
    assert ex.codes[3].tolist() == [-1] * 5  # user-input row of a model with n_q > dep_q
    assert ex.text_weight.tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]


def test_collate_pads_with_zero_token_and_zero_weight():
    a = LMExample(torch.ones(2, 3, dtype=torch.long), torch.ones(3, dtype=torch.long), torch.ones(3))
    b = LMExample(torch.full((2, 5), 2), torch.full((5,), 2), torch.full((5,), 0.5))
    batch = collate([a, b])
    assert batch.codes.shape == (2, 2, 5)
    assert batch.codes[0].tolist() == [[1, 1, 1, -1, -1]] * 2
    assert batch.text_target[0].tolist() == [1, 1, 1, -1, -1]
    assert batch.text_weight[0].tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(InputError):
        collate([])


def test_lm_loss_weights_by_hand():
    torch.manual_seed(0)
    B, T, V, dep_q, card = 2, 4, 7, 2, 5
    codes = torch.randint(0, card, (B, 1 + dep_q, T))
    codes[:, 0] = torch.tensor([[3, 0, 4, 3], [5, 3, -1, -1]])
    codes[1, 1:, 2:] = -1
    weight = text_weights(codes[:, 0], 0.5) * (codes[:, 0] >= 0)
    batch = LMBatch(codes, codes[:, 0].clone(), weight, {})
    text_logits = torch.randn(B, 1, T, V)
    logits = torch.randn(B, dep_q, T, card)
    mask = codes[:, 1:] >= 0
    mask[:, 1, -1] = False  # as an acoustic delay of 1 leaves the last step without a prediction
    logits[:, 1, -1] = float("nan")
    out = LMOutput(logits, mask, text_logits, codes[:, :1] >= 0)
    loss = lm_loss(out, batch, first_codebook_weight=10.0)

    num = den = 0.0
    for b in range(B):
        for t in range(T):
            y = int(codes[b, 0, t])
            if y < 0:
                continue
            w = 0.5 if y == 3 else 1.0
            num += w * float(F.cross_entropy(text_logits[b, 0, t], torch.tensor(y)))
            den += w
    assert float(loss.text) == pytest.approx(num / den, rel=1e-6)
    anum = aden = 0.0
    for b in range(B):
        for q in range(dep_q):
            for t in range(T):
                if not mask[b, q, t]:
                    continue
                w = 10.0 if q == 0 else 1.0
                anum += w * float(F.cross_entropy(logits[b, q, t], codes[b, 1 + q, t]))
                aden += w
    assert float(loss.audio) == pytest.approx(anum / aden, rel=1e-6)
    assert float(loss.total) == pytest.approx(num / den + anum / aden, rel=1e-6)
    assert codebook_weights(3, 100.0).tolist() == [100.0, 1.0, 1.0]


def test_noisy_audio_replaces_only_real_audio_codes():
    codes = torch.full((4, 9, 200), 5, dtype=torch.long)
    codes[:, :, 150:] = -1  # right padding
    codes[:, 3, :10] = -2
    original = codes.clone()
    gen = torch.Generator().manual_seed(0)
    out = noisy_audio(codes, 0.3, 1024, gen)
    assert torch.equal(codes, original)  # a copy
    assert torch.equal(out[:, 0], codes[:, 0])  # the text row is never touched
    assert torch.equal(out[codes < 0], codes[codes < 0])  # nor special tokens
    changed = (out != codes)[:, 1:].float()
    real = (codes[:, 1:] >= 0).float()
    assert 0.25 < changed.sum() / real.sum() < 0.35
    assert out.min() >= -2 and out.max() < 1024
    assert torch.equal(noisy_audio(codes, 0.0, 1024, gen), codes)
