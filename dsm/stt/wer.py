"""Word error rate: Levenshtein alignment on words (no external dependency).

``WER = (S + D + I) / N`` with N the number of reference words. Corpus WER sums errors and reference words
over all utterances (not the mean of per-utterance rates). The total ``S + D + I`` is the word-level edit
distance; when several alignments reach it, the split between S, D and I follows the backtrace preference
match/substitution, then deletion, then insertion (from the end of both sequences).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from dsm.stt.normalize import normalize_english

__all__ = ["WordErrors", "corpus_errors", "utterance_wer", "wer", "word_errors"]


class WordErrors(NamedTuple):
    """Error counts of one or more aligned utterances."""

    substitutions: int
    deletions: int
    insertions: int
    n_reference_words: int

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / N; 0.0 when both are 0, ``inf`` for errors against an empty reference."""
        if self.n_reference_words == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.n_reference_words


def _align(ref: Sequence[str], hyp: Sequence[str]) -> WordErrors:
    n, m = len(ref), len(hyp)
    # d[i][j]: edit distance between ref[:i] and hyp[:j]
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        row, prev, r = d[i], d[i - 1], ref[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (r != hyp[j - 1])
            row[j] = min(diag, prev[j] + 1, row[j - 1] + 1)
    s = de = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            s += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            de += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return WordErrors(s, de, ins, n)


def word_errors(reference: str, hypothesis: str, *, normalize: bool = False) -> WordErrors:
    """(substitutions, deletions, insertions, n_reference_words) of one utterance, words split on whitespace.

    With ``normalize``, both texts go through :func:`dsm.stt.normalize.normalize_english` first.
    """
    if normalize:
        reference, hypothesis = normalize_english(reference), normalize_english(hypothesis)
    return _align(reference.split(), hypothesis.split())


def _as_list(texts: Sequence[str] | str) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def corpus_errors(
    references: Sequence[str] | str, hypotheses: Sequence[str] | str, *, normalize: bool = True
) -> WordErrors:
    """Summed :func:`word_errors` over paired utterances (a single string counts as one utterance)."""
    refs, hyps = _as_list(references), _as_list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = [word_errors(r, h, normalize=normalize) for r, h in zip(refs, hyps, strict=True)]
    return WordErrors(*(sum(c[k] for c in counts) for k in range(4)))


def wer(references: Sequence[str] | str, hypotheses: Sequence[str] | str, normalize: bool = True) -> float:
    """Corpus-level WER: sum of errors / sum of reference words (see :attr:`WordErrors.rate` for N = 0)."""
    return corpus_errors(references, hypotheses, normalize=normalize).rate


def utterance_wer(reference: str, hypothesis: str, normalize: bool = True) -> float:
    """WER of a single utterance (see :attr:`WordErrors.rate` for an empty reference)."""
    return word_errors(reference, hypothesis, normalize=normalize).rate
