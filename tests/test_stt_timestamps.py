"""Word timestamps from STT text tokens: the DSM script recipe and the Rust server's incremental recipe.

Expected values are written out by hand: with no prefix and no delay, step i is at i * 0.08 s.
"""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch
from tiny_tokenizer import train_tokenizer

from dsm.stt.timestamps import (
    Word,
    WordEnded,
    WordStarted,
    WordStream,
    transcript_text,
    words_from_tokens,
)


@pytest.fixture(scope="module")
def sp(tmp_path_factory) -> spm.SentencePieceProcessor:
    """A tiny SentencePiece model with Kyutai's special ids: 0 unk, 1 BOS, 2 EOS, 3 pad."""
    tok = train_tokenizer(tmp_path_factory.mktemp("spm"), vocab_size=200, min_words=4, max_words=10)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert tok.eos_id() == 2
    return tok


@pytest.fixture(scope="module")
def ids(sp):
    """ids("cat") -> the single piece id of a training word (asserted to be one piece)."""

    def one(word: str) -> int:
        pieces = sp.encode(word)
        assert len(pieces) == 1, (word, pieces)
        assert pieces[0] > 3
        return pieces[0]

    return one


class FakeTokenizer:
    """Decodes ids through a table (ids <= 3 render visibly, to catch missing filtering); encode lengths
    are set per word."""

    def __init__(self, pieces: dict[int, str], lengths: dict[str, int]) -> None:
        self.pieces = {0: "<0>", 1: "<s>", 2: "</s>", 3: "<pad>", **pieces}
        self.lengths = lengths

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").strip()

    def encode(self, text: str) -> list[int]:
        return [99] * self.lengths[text]

    def eos_id(self) -> int:
        return 2


def approx_words(words: list[Word]) -> list[tuple[str, object, object]]:
    return [(w.text, pytest.approx(w.start, abs=1e-9), pytest.approx(w.end, abs=1e-9)) for w in words]


def as_tuples(words: list[Word]) -> list[tuple[str, float, float]]:
    return [(w.text, w.start, w.end) for w in words]


def run(tokens, tok, prefix_chunks=0, delay=0.0, **kw) -> list[tuple[str, float, float]]:
    return as_tuples(
        words_from_tokens(tokens, tok, prefix_chunks=prefix_chunks, audio_delay_seconds=delay, **kw)
    )


# ----------------------------------------------------------------------------------------------------------
# words_from_tokens (DSM script recipe)


def test_tokenizer_pieces(sp, ids):
    for w in ("the", "cat", "dog", "sees"):
        assert sp.decode([ids(w)]) == w
    assert len(sp.encode("hello")) >= 2


def test_no_boundaries(sp, ids):
    assert run([3, ids("cat"), ids("dog"), 3, 2], sp) == []
    assert run([], sp) == []


def test_one_word_per_segment(sp, ids):
    cat, dog = ids("cat"), ids("dog")
    #        0  1  2    3  4  5  6    7  8  9
    tokens = [3, 0, cat, 3, 3, 0, dog, 3, 0, 3]
    # segments [2,5) and [6,8); the last one, [9,10), holds only padding
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.16, 0.40),
        ("dog", 0.48, 0.64),
    ]
    # a 0.2 s delay shifts everything and clamps at 0
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.2)) == [
        ("cat", 0.0, 0.20),
        ("dog", 0.28, 0.44),
    ]


def test_word_at_the_very_start_clamps_to_zero(sp, ids):
    assert run([0, ids("cat"), 0], sp, delay=0.5) == [("cat", 0.0, 0.0)]
    assert approx_words(
        words_from_tokens([0, ids("cat"), 0], sp, prefix_chunks=0, audio_delay_seconds=0.1)
    ) == [("cat", 0.0, 0.06)]


def test_several_words_in_one_segment_use_encode_lengths(sp, ids):
    the, cat, sees = ids("the"), ids("cat"), ids("sees")
    hello = sp.encode("hello")
    h = len(hello)
    # 0 | the cat h e l l o sees 3 3 | 0
    tokens = [0, the, cat, *hello, sees, 3, 3, 0]
    end = 6 + h
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("the", 0.08, 0.16),
        ("cat", 0.16, 0.24),
        ("hello", 0.24, (3 + h) * 0.08),
        ("sees", (3 + h) * 0.08, end * 0.08),
    ]


def test_several_words_step_allocation_ignores_padding_positions(sp, ids):
    # "the" gets len(encode("the")) = 1 step from the segment start, even though "cat" arrives at step 4
    tokens = [0, ids("the"), 3, 3, ids("cat"), 3, 0]
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("the", 0.08, 0.16),
        ("cat", 0.16, 0.48),
    ]


def test_several_words_allocation_is_not_clamped_to_the_segment():
    tok = FakeTokenizer({10: "▁alpha", 11: "▁beta"}, {"alpha": 3, "beta": 1})
    # segment [1, 3): alpha takes 3 steps -> [1, 4), beta starts at 4 and "ends" at 3, as upstream
    assert approx_words(words_from_tokens([0, 10, 11, 0], tok, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("alpha", 0.08, 0.32),
        ("beta", 0.32, 0.24),
    ]


def test_segment_with_only_padding_and_consecutive_boundaries(sp, ids):
    #         0  1  2  3  4         5
    tokens = [0, 3, 3, 0, ids("cat"), 0]
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.32, 0.40)
    ]
    #         0  1  2  3         4  5
    tokens = [0, 0, 0, ids("dog"), 0, 0]
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("dog", 0.24, 0.32)
    ]


def test_prefix_chunks_offset_truncates(sp, ids):
    # 13 prefix chunks at 12.5 Hz: int(1.04) = 1 s, plus 2.5 s delay -> offset 3.5 s (not 3.54)
    tokens = [3] * 50 + [0, ids("cat"), 3, 3, 3, 0, 3]
    words = words_from_tokens(tokens, sp, prefix_chunks=13, audio_delay_seconds=2.5)
    assert approx_words(words) == [("cat", 51 * 0.08 - 3.5, 55 * 0.08 - 3.5)]
    assert words[0].start == pytest.approx(0.58) and words[0].end == pytest.approx(0.90)
    # 12 chunks truncate to 0 s
    words = words_from_tokens(tokens, sp, prefix_chunks=12, audio_delay_seconds=2.5)
    assert approx_words(words) == [("cat", 1.58, 1.90)]


def test_last_segment_ends_at_eos(sp, ids):
    cat, dog = ids("cat"), ids("dog")
    # last segment [1, 3): the EOS at 3 ends it, "dog" after it is dropped
    assert approx_words(
        words_from_tokens([0, cat, 3, 2, dog, 3], sp, prefix_chunks=0, audio_delay_seconds=0.0)
    ) == [("cat", 0.08, 0.24)]


def test_last_segment_capped_at_twelve_steps(sp, ids):
    cat, dog = ids("cat"), ids("dog")
    # no EOS, long tail: the segment [1, 13) ends 12 steps after its start
    tokens = [0, cat] + [3] * 20
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 1.04)
    ]
    # a piece at index 13 is outside the cap ...
    tokens = [0, cat] + [3] * 11 + [dog] + [3] * 5
    assert tokens[13] == dog
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 1.04)
    ]
    # ... one at index 12 is inside: two words, "cat" gets 1 step, "dog" runs to 13
    tokens = [0, cat] + [3] * 10 + [dog] + [3] * 5
    assert tokens[12] == dog
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 0.16),
        ("dog", 0.16, 1.04),
    ]
    # the cap is configurable
    tokens = [0, cat] + [3] * 20
    words = words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0, last_segment_max_steps=3)
    assert approx_words(words) == [("cat", 0.08, 0.32)]


def test_last_segment_ends_at_end_of_sequence(sp, ids):
    assert approx_words(
        words_from_tokens([0, ids("cat"), 3, 3], sp, prefix_chunks=0, audio_delay_seconds=0.0)
    ) == [("cat", 0.08, 0.32)]


def test_eos_only_terminates_the_last_segment(sp, ids):
    cat, dog = ids("cat"), ids("dog")
    # an EOS inside a closed segment is just ignored: "cat dog" in [1, 4)
    tokens = [0, cat, 2, dog, 0, 3]
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 0.16),
        ("dog", 0.16, 0.32),
    ]
    # an EOS before the last boundary does not end the last segment [5, 8)
    tokens = [0, cat, 2, 3, 0, dog, 3, 3]
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 0.32),
        ("dog", 0.40, 0.64),
    ]


def test_bos_eos_and_padding_are_not_decoded():
    tok = FakeTokenizer({10: "▁alpha", 11: "▁beta"}, {"alpha": 1, "beta": 1})
    tokens = [0, 1, 10, 2, 3, 0, 11, 3]
    assert approx_words(words_from_tokens(tokens, tok, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("alpha", 0.08, 0.40),
        ("beta", 0.48, 0.64),
    ]
    assert transcript_text(tokens, tok) == "alpha beta"


def test_accepts_tensors_and_custom_ids(sp, ids):
    tokens = torch.tensor([0, ids("cat"), 3, 0])
    assert approx_words(words_from_tokens(tokens, sp, prefix_chunks=0, audio_delay_seconds=0.0)) == [
        ("cat", 0.08, 0.24)
    ]
    # boundary 7 and padding 5 instead of 0 and 3, at 25 Hz
    tok = FakeTokenizer({5: "", 7: "", 10: "▁alpha"}, {"alpha": 1})
    words = words_from_tokens(
        [7, 10, 5, 7],
        tok,
        prefix_chunks=0,
        audio_delay_seconds=0.0,
        frame_rate=25.0,
        padding_id=5,
        end_of_padding_id=7,
    )
    assert approx_words(words) == [("alpha", 0.04, 0.12)]
    with pytest.raises(ValueError):
        words_from_tokens([[0, 1]], tok, prefix_chunks=0, audio_delay_seconds=0.0)


def test_transcript_text(sp, ids):
    hello = sp.encode("hello")
    tokens = [3, 0, ids("the"), 3, 1, *hello, 2, 0, 3, ids("cat")]
    assert transcript_text(tokens, sp) == "the hello cat"
    assert transcript_text([3, 0, 3], sp) == ""


# ----------------------------------------------------------------------------------------------------------
# WordStream (Rust server recipe)


def test_word_stream_events_and_delay_gating(sp, ids):
    cat, dog, the, sees = ids("cat"), ids("dog"), ids("the"), ids("sees")
    stream = WordStream(3, sp)
    trace = [
        (dog, []),  # n=1 < 3: ignored
        (0, []),  # n=2 < 3: ignored, no stop time recorded
        (cat, []),  # n=3 = delay: the first processed step
        (0, [WordStarted("cat", 0.0, (cat,)), WordEnded(0.08)]),  # n=4: stop (4-3)/12.5
        (cat, []),  # n=5
        (3, [WordStarted("cat", 0.08, (cat,))]),  # n=6
        (3, []),  # n=7
        (0, [WordEnded(0.40)]),  # n=8: (8-3)/12.5
        (the, []),  # n=9
        (3, [WordStarted("the", 0.40, (the,))]),  # n=10
        (dog, []),  # n=11: a second word before any boundary
        (2, []),  # n=12: EOS is appended like any other id
        (0, [WordStarted("dog", 0.40, (dog, 2)), WordEnded(0.80)]),  # n=13: (13-3)/12.5
        (sees, []),  # n=14
    ]
    for token, expected in trace:
        assert stream.push(token) == expected, (stream.step, token)
    assert stream.step == 14
    assert stream.last_stop_time == 0.80
    assert stream.pending_tokens == (sees,)
    assert stream.flush() == [WordStarted("sees", 0.80, (sees,))]
    assert stream.flush() == []
    assert stream.flush(stop_time=1.5) == [WordEnded(1.5)]
    assert stream.flush(stop_time=1.6) == []


def test_word_stream_word_before_delay_is_dropped(sp, ids):
    cat = ids("cat")
    stream = WordStream(6, sp)
    # the pieces at n=1..5 are never appended; n=6 (the delay) is the first processed step
    assert stream.push_many([cat, cat, cat, cat, cat]) == []
    assert stream.push(0) == []
    assert stream.last_stop_time == 0.0
    assert stream.push_many([cat, 0]) == [WordStarted("cat", 0.0, (cat,)), WordEnded(0.16)]


def test_word_stream_multi_piece_word_and_reset(sp):
    hello = sp.encode("hello")
    h = len(hello)
    stream = WordStream(1, sp)
    # delay 1: n=1 is processed, stop times are (n-1)/12.5
    assert stream.push(0) == []
    events = stream.push_many([*hello, 3, 3, 0])
    assert events == [WordStarted("hello", 0.0, tuple(hello)), WordEnded(pytest.approx((h + 3) * 0.08))]
    stream.reset()
    assert stream.step == 0 and stream.last_stop_time == 0.0 and stream.pending_tokens == ()
    assert stream.flush(stop_time=1.0) == []


def test_word_stream_delay_zero(sp, ids):
    stream = WordStream(0, sp)
    assert stream.push_many([0, ids("cat"), 0]) == [WordStarted("cat", 0.08, (ids("cat"),)), WordEnded(0.24)]
    with pytest.raises(ValueError):
        WordStream(-1, sp)
