"""Held-out splits of a manifest: by sentence (no test sentence is heard in training, whatever the voice),
by voice (no test voice is heard in training), or both at once.

Assignments hash each sentence (normalised: case and punctuation ignored) or voice with a seed, so they
do not depend on the order of the manifest and stay put when utterances are added.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from dsm.errors import InputError
from dsm.train.data.manifest import Utterance

SPLITS = ("train", "valid", "test")
BY = ("sentence", "voice", "both")


def sentence_key(text: str) -> str:
    """A sentence's identity for splitting: lower case, letters, digits and apostrophes only."""
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).split())


def voice_key(utt: Utterance) -> str:
    """A voice's identity for splitting: the speaker field (rates and pitches of one voice stay together)."""
    return utt.speaker


def _fraction(key: str, seed: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_fractions(valid: float, test: float) -> None:
    if valid < 0 or test < 0 or valid + test >= 1:
        raise InputError(f"held-out fractions must be >= 0 and sum below 1, got valid={valid}, test={test}")


def _assign(keys: Iterable[str], valid: float, test: float, seed: int, salt: str) -> dict[str, str]:
    """Each distinct key to a split: fractions of the keys (not of the utterances), at least one key for
    each non-zero held-out fraction and one for training."""
    distinct = sorted(set(keys), key=lambda k: _fraction(k, seed, salt))
    n = len(distinct)
    wanted = 1 + (valid > 0) + (test > 0)
    if n < wanted:
        raise InputError(
            f"cannot hold out {salt}s for valid={valid}, test={test}: only {n} distinct {salt}(s)"
        )
    n_test = max(1, round(n * test)) if test > 0 else 0
    n_valid = max(1, round(n * valid)) if valid > 0 else 0
    n_valid = min(n_valid, n - n_test - 1)
    out = {}
    for i, key in enumerate(distinct):
        out[key] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return out


def split_by_sentence(
    utts: Sequence[Utterance], valid: float = 0.05, test: float = 0.05, seed: int = 0
) -> list[Utterance]:
    """Copies of `utts` with `split` set so that every utterance of a sentence lands in the same split."""
    _check_fractions(valid, test)
    table = _assign((sentence_key(u.text) for u in utts), valid, test, seed, "sentence")
    return [replace(u, split=table[sentence_key(u.text)]) for u in utts]


def split_by_voice(
    utts: Sequence[Utterance],
    valid: float = 0.0,
    test: float = 0.0,
    seed: int = 0,
    valid_voices: Sequence[str] = (),
    test_voices: Sequence[str] = (),
) -> list[Utterance]:
    """Copies of `utts` with `split` set by voice: the voices named, else fractions of the voices."""
    voices = {voice_key(u) for u in utts}
    if valid_voices or test_voices:
        unknown = sorted((set(valid_voices) | set(test_voices)) - voices)
        if unknown:
            raise InputError(
                f"voices not in the manifest: {', '.join(unknown)} (found: {', '.join(sorted(voices))})"
            )
        both = set(valid_voices) & set(test_voices)
        if both:
            raise InputError(f"voices held out for both valid and test: {', '.join(sorted(both))}")
        table = {v: "test" if v in test_voices else "valid" if v in valid_voices else "train" for v in voices}
    else:
        _check_fractions(valid, test)
        table = _assign(voices, valid, test, seed, "voice")
    return [replace(u, split=table[voice_key(u)]) for u in utts]


def split_both(
    utts: Sequence[Utterance],
    valid: float = 0.05,
    test: float = 0.05,
    seed: int = 0,
    valid_voices: Sequence[str] = (),
    test_voices: Sequence[str] = (),
) -> list[Utterance]:
    """Held out by sentence and by voice at once: an utterance trains only when both its sentence and its
    voice are training ones; otherwise it goes to test if either is a test one, else to valid. So training
    shares no sentence and no voice with valid or test."""
    by_sentence = split_by_sentence(utts, valid, test, seed)
    by_voice = split_by_voice(utts, valid, test, seed, valid_voices, test_voices)
    out = []
    for u, s, v in zip(utts, by_sentence, by_voice, strict=True):
        tags = {s.split, v.split}
        out.append(replace(u, split="test" if "test" in tags else "valid" if "valid" in tags else "train"))
    return out


def split_manifest(
    utts: Sequence[Utterance],
    by: str,
    valid: float = 0.05,
    test: float = 0.05,
    seed: int = 0,
    valid_voices: Sequence[str] = (),
    test_voices: Sequence[str] = (),
) -> list[Utterance]:
    """Dispatch on `by` ("sentence", "voice" or "both")."""
    if by == "sentence":
        return split_by_sentence(utts, valid, test, seed)
    if by == "voice":
        return split_by_voice(utts, valid, test, seed, valid_voices, test_voices)
    if by == "both":
        return split_both(utts, valid, test, seed, valid_voices, test_voices)
    raise InputError(f"unknown split criterion {by!r} (known: {', '.join(BY)})")
