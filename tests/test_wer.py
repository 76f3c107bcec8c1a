"""Word error rate alignment, corpus WER and the English normaliser."""

from __future__ import annotations

import functools
import math
import random

import pytest

from dsm.stt.normalize import EnglishTextNormalizer, normalize_english
from dsm.stt.wer import WordErrors, corpus_errors, utterance_wer, wer, word_errors


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("the cat sat", "the cat sat", (0, 0, 0, 3)),
        ("the cat sat", "the dog sat", (1, 0, 0, 3)),
        ("the cat sat down", "the cat down", (0, 1, 0, 4)),
        ("the cat", "the big cat", (0, 0, 1, 2)),
        ("a b c d e", "a x c e", (1, 1, 0, 5)),
        ("a b c", "a b x c y", (0, 0, 2, 3)),
        ("one two three four five six seven", "one too three five six seven eight", (1, 1, 1, 7)),
        ("", "", (0, 0, 0, 0)),
        ("", "a b", (0, 0, 2, 0)),
        ("a b", "", (0, 2, 0, 2)),
        ("  spaced   out\twords\n", "spaced out words", (0, 0, 0, 3)),
        # tie (2 substitutions or 1 deletion + 1 insertion): diagonal moves are preferred
        ("a b", "b c", (2, 0, 0, 2)),
    ],
)
def test_word_errors(ref, hyp, expected):
    errs = word_errors(ref, hyp)
    assert isinstance(errs, WordErrors)
    assert tuple(errs) == expected
    s, d, i, n = errs
    assert errs.errors == s + d + i


def test_rates_and_empty_reference():
    assert word_errors("a b c d", "a x c").rate == 0.5
    assert word_errors("", "").rate == 0.0
    assert word_errors("", "a").rate == math.inf
    assert utterance_wer("a b", "") == 1.0
    assert utterance_wer("", "uh") == 0.0  # the filler is normalised away
    assert utterance_wer("", "uh", normalize=False) == math.inf


def test_corpus_wer_sums_errors():
    refs = ["the cat sat", "hello world"]
    hyps = ["the cat sat down", "hello"]
    assert tuple(corpus_errors(refs, hyps)) == (0, 1, 1, 5)
    assert wer(refs, hyps) == pytest.approx(2 / 5)  # not the mean of 1/3 and 1/2
    assert wer("a b", "a c") == 0.5  # a single string is one utterance
    assert wer([], []) == 0.0
    with pytest.raises(ValueError):
        wer(["a"], ["a", "b"])


def test_wer_normalisation_switch():
    assert wer(["Hello, World!"], ["hello world"]) == 0.0
    assert wer(["Hello, World!"], ["hello world"], normalize=False) == 1.0
    assert word_errors("Mr. Smith", "mister smith", normalize=True) == (0, 0, 0, 2)


def _edit_distance(ref: tuple[str, ...], hyp: tuple[str, ...]) -> int:
    @functools.cache
    def d(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j - 1) + (ref[i - 1] != hyp[j - 1]), d(i - 1, j) + 1, d(i, j - 1) + 1)

    return d(len(ref), len(hyp))


def test_random_alignments_are_consistent():
    rng = random.Random(0)
    for _ in range(300):
        ref = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 8)))
        hyp = tuple(rng.choice("abcd") for _ in range(rng.randint(0, 8)))
        s, d, i, n = word_errors(" ".join(ref), " ".join(hyp))
        assert n == len(ref)
        assert n - d + i == len(hyp)
        assert s + d + i == _edit_distance(ref, hyp)


def test_against_jiwer_if_installed():
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(1)
    refs = [" ".join(rng.choice("abcde") for _ in range(rng.randint(1, 10))) for _ in range(50)]
    hyps = [" ".join(rng.choice("abcde") for _ in range(rng.randint(0, 10))) for _ in range(50)]
    hyps = [h if h else "a" for h in hyps]
    assert wer(refs, hyps, normalize=False) == pytest.approx(jiwer.wer(refs, hyps))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Mr. Smith and Mrs. Jones met Dr. Who", "mister smith and missus jones met doctor who"),
        ("[noise] so (laughs) we <unk> went", "so we went"),
        ("It’s 3.14, isn't it?", "it's 3.14 is not it"),
        (
            "I can't and won't; they're here, we'll see, I've, I'm",
            "i can not and will not they are here we will see i have i am",
        ),
        ("She'd been there. He's got it. Let's go.", "she had been there he has got it let us go"),
        ("it 's fine", "it's fine"),
        ("1,000 people; 1,000,000 dollars; 12,5", "1000 people 1000000 dollars 12 5"),
        ("It costs 5. Then 2.50.", "it costs 5 then 2.50"),
        ("50% of R&D", "50 percent of r and d"),
        ("well-known state-of-the-art — really", "well known state of the art really"),
        ("Uh, um, I mean, hmm", "i mean"),
        ("'quoted' the dogs' o'clock", "quoted the dogs o'clock"),
        ("Café naïve", "cafe naive"),
        ("gonna wanna gotta", "going to want to got to"),
        ("   ", ""),
    ],
)
def test_normalize_english(text, expected):
    assert normalize_english(text) == expected


def test_normalizer_keeps_fillers_when_asked():
    assert normalize_english("Uh, yes", remove_fillers=False) == "uh yes"
    assert EnglishTextNormalizer()("Uh, yes") == "yes"
    assert EnglishTextNormalizer(remove_fillers=False)("Uh, yes") == "uh yes"
