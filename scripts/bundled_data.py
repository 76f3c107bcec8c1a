"""Corpus helpers of the bundled-model recipe (scripts/train_bundled.sh).

    python scripts/bundled_data.py merge OUT.jsonl IN1.jsonl IN2.jsonl ...   # one manifest, paths rebased
    python scripts/bundled_data.py tokenizer MANIFEST OUT.model [--vocab 1000]

The tokenizer is a SentencePiece unigram model trained on the text of the manifest's *training* split only
(held-out sentences stay unseen), with Kyutai's special ids: 0 unknown / word start, 1 BOS, 2 EOS,
3 padding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from dsm.train.data.manifest import manifest_root, read_manifest, rebase, write_manifest


def merge(out: Path, inputs: list[Path]) -> int:
    """Write the utterances of `inputs` into one manifest at `out`, audio paths relative to its folder."""
    utts = []
    for path in inputs:
        utts += rebase(read_manifest(path), manifest_root(path), out.resolve().parent)
    write_manifest(out, utts)
    return len(utts)


def train_tokenizer(manifest: Path, out: Path, vocab: int, split: str = "train") -> int:
    """Train the SentencePiece model on the `split` sentences of `manifest`; returns its vocabulary size."""
    import sentencepiece as spm

    texts = sorted({u.text for u in read_manifest(manifest) if not split or u.split == split})
    if not texts:
        raise SystemExit(f"{manifest}: no {split!r} sentences to train a tokenizer on")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        corpus.write_text("\n".join(texts) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "tok"),
            vocab_size=vocab,
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            minloglevel=2,
        )
        out.write_bytes((Path(tmp) / "tok.model").read_bytes())
    return spm.SentencePieceProcessor(model_file=str(out)).vocab_size()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge manifests")
    m.add_argument("out", type=Path)
    m.add_argument("inputs", type=Path, nargs="+")
    t = sub.add_parser("tokenizer", help="train the text tokenizer on the training sentences")
    t.add_argument("manifest", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--vocab", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.cmd == "merge":
        print(f"{merge(args.out, args.inputs)} utterances -> {args.out}")
    else:
        print(f"{train_tokenizer(args.manifest, args.out, args.vocab)} pieces -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
