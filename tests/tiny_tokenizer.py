"""A tiny SentencePiece tokenizer trained in the tests, with Kyutai's special ids (0 unk/word
boundary, 1 BOS, 2 EOS, 3 padding)."""

from __future__ import annotations

import random
from pathlib import Path

import sentencepiece as spm

_WORD_TEXT = (
    "the a cat dog house river music morning garden bird car book friend teacher model sees likes finds "
    "hears wants makes today again every night very quickly small red good some in at on with from and but "
    "time word speech stream token delay audio text voice sound water light green blue yellow open close "
    "walk run jump sing play read write listen speak think know people world day year way thing man woman "
    "child school city country hand eye life"
)
WORDS = _WORD_TEXT.split()


def train_tokenizer(
    directory: Path, vocab_size: int, min_words: int, max_words: int, lines: int = 600, seed: int = 0
) -> spm.SentencePieceProcessor:
    """Train on `lines` random sentences of WORDS (min_words..max_words each); writes directory/tok.model."""
    rng = random.Random(seed)
    corpus = directory / "corpus.txt"
    text = []
    for _ in range(lines):
        n = min_words if min_words == max_words else rng.randint(min_words, max_words)
        text.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    corpus.write_text("\n".join(text) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(directory / "tok"),
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # the corpus supports only ~110 pieces
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(directory / "tok.model"))
