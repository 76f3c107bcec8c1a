"""Training data for the LM trainers: manifest items with tokenized words and cached Mimi codes, and a
resumable, shardable batch order.

`LMItem` is one utterance ready for stream building (`dsm.train.streams`); `load_items` reads a manifest,
tokenizes every word and computes (or finds in the cache) the codes of every audio file once, up front.
`BatchOrder` draws batches from per-epoch permutations seeded by (seed, epoch); its whole state is two
integers, saved in checkpoints, so a resumed run continues with the very batches it would have drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dsm.errors import InputError
from dsm.train.codes_cache import CodesCache
from dsm.train.data.manifest import Utterance, manifest_root, read_manifest
from dsm.train.streams import AlignedWord

log = logging.getLogger("dsm.train")


@dataclass
class LMItem:
    """An utterance: audio path, tokenized words, speaker, and its Mimi codes [n_q, F] once loaded."""

    audio: Path
    text: str
    words: list[AlignedWord]
    speaker: str
    codes: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        return 0 if self.codes is None else int(self.codes.shape[1])


def tokenize_words(utt: Utterance, encode: Callable[[str], list[int]]) -> list[AlignedWord]:
    """Each manifest word as its own SentencePiece pieces (as Kyutai's TTS scripts split text)."""
    return [AlignedWord(tuple(encode(w.word)), float(w.start), float(w.end)) for w in utt.words or []]


def select(utts: list[Utterance], split: str) -> list[Utterance]:
    """The utterances tagged ``split`` (all of them when ``split`` is empty)."""
    return utts if not split else [u for u in utts if u.split == split]


def load_items(
    manifest: str | Path,
    encode: Callable[[str], list[int]],
    *,
    split: str = "",
    exclude_split: str = "",
    max_seconds: float = 30.0,
    max_items: int | None = None,
) -> list[LMItem]:
    """Manifest utterances (with word timings) as `LMItem`s, without codes yet."""
    utts = read_manifest(manifest, require_words=True)
    root = manifest_root(manifest)
    utts = select(utts, split)
    if exclude_split:
        utts = [u for u in utts if u.split != exclude_split]
    items = []
    skipped = 0
    for utt in utts:
        if utt.duration is not None and utt.duration > max_seconds:
            skipped += 1
            continue
        items.append(LMItem(utt.audio_path(root), utt.text, tokenize_words(utt, encode), utt.speaker))
        if max_items is not None and len(items) >= max_items:
            break
    if skipped:
        log.info("%s: skipped %d items longer than %.1f s", manifest, skipped, max_seconds)
    if not items:
        where = f" with split {split!r}" if split else ""
        raise InputError(f"{manifest}: no usable utterances{where}")
    return items


def attach_codes(
    items: Sequence[LMItem],
    cache: CodesCache,
    n_q: int,
    silence_frames: int = 0,
    progress: bool = False,
    max_frames: int | None = None,
) -> None:
    """Fill ``item.codes`` from the cache (computing missing entries): [n_q, F + silence_frames]."""
    from tqdm import tqdm

    for item in tqdm(items, desc="mimi codes", unit="file", disable=not progress, delay=1.0):
        codes = cache.codes(item.audio, n_q, silence_frames)
        if max_frames is not None and codes.shape[1] > max_frames:
            codes = codes[:, :max_frames]
        item.codes = codes


class BatchOrder:
    """Batches of item indices from per-epoch random permutations (``torch.Generator`` seeded with
    ``seed + epoch``). Each global batch holds ``batch_size * world`` indices; rank r gets its slice.
    Epoch boundaries are crossed inside a batch, so every batch is full."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if num_items < 1:
            raise InputError("no training items")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.cursor = 0
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.num_items, generator=gen).tolist()
        return self._perm

    def next(self) -> list[int]:
        """This rank's indices of the next global batch."""
        needed = self.batch_size * self.world
        out: list[int] = []
        while len(out) < needed:
            perm = self._permutation()
            take = min(needed - len(out), self.num_items - self.cursor)
            out.extend(perm[self.cursor : self.cursor + take])
            self.cursor += take
            if self.cursor >= self.num_items:
                self.epoch += 1
                self.cursor = 0
                self._perm = None
        return out[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.cursor = int(state["cursor"])
        self._perm = None


def eval_batches(num_items: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Fixed, in-order batches of evaluation indices; rank r takes every world-th batch."""
    batches = [list(range(i, min(i + batch_size, num_items))) for i in range(0, num_items, batch_size)]
    return batches[rank::world]
