"""A small hub-style STT model directory with random weights, shared by the STT tests (built once per
session by the `stt_assets` fixture of `conftest.py`).

A 1-layer, 128-wide STT LM (real n_q 32, card 2048, extra heads 4x6) and a 1-layer Mimi, random weights made
by the reference `moshi` package (`oracle`) in Kyutai's layout, a tiny SentencePiece tokenizer and a Kyutai
`config.json`. The text head is nudged so that the random model emits word boundaries (0), padding (3) and
word pieces, so transcripts and timestamps are non-trivial.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lm_configs
import soundfile as sf
import torch
from tiny_tokenizer import train_tokenizer

from dsm.codec import MimiConfig

FRAME = 1920
MIMI_NAME = lm_configs.STT_1B["mimi_name"]
TOK_NAME = lm_configs.STT_1B["tokenizer_name"]
MIMI_1L = MimiConfig(num_layers=1)


def build_assets(root: Path) -> dict[str, Any]:
    """Weights, tokenizer, test audio (a 2.5 s, b 1.7 s, c 3.0 s) and the reference models, under `root`."""
    import oracle
    from moshi.models import loaders

    tok = train_tokenizer(root, vocab_size=120, min_words=8, max_words=8)

    cfg = lm_configs.reduced(lm_configs.STT_1B, layers=1)
    cfg.update(dim=128, num_heads=2, text_card=tok.vocab_size(), context=100)
    ref_lm = oracle.reference_lm(cfg, seed=2)
    with torch.no_grad():  # make boundaries (0) and padding (3) frequent, as in a trained model
        w = ref_lm.text_linear.weight
        w[0] *= 3.0
        w[3] *= 3.5
    oracle.export_lm(ref_lm, root / "model.safetensors")

    mimi_cfg = copy.deepcopy(loaders._mimi_config)
    mimi_cfg["transformer"]["num_layers"] = 1
    torch.manual_seed(3)
    ref_mimi = loaders.get_mimi(None, mimi_config=mimi_cfg, device="cpu", num_codebooks=32)
    oracle.randomize_mimi(ref_mimi, seed=3)
    oracle.export_mimi(ref_mimi, root / MIMI_NAME)
    (root / TOK_NAME).write_bytes((root / "tok.model").read_bytes())

    audio = {}
    for name, seconds, seed in (("a", 2.5, 1), ("b", 1.7, 2), ("c", 3.0, 3)):
        wav = oracle.test_signal(1, int(seconds * 24000), seed=seed)[0, 0].numpy()
        path = root / f"{name}.wav"
        sf.write(str(path), wav, 24000, subtype="FLOAT")
        audio[name] = path
    return {"root": root, "cfg": cfg, "tok": tok, "ref_lm": ref_lm, "ref_mimi": ref_mimi, "audio": audio}


def make_repo(assets: dict[str, Any], path: Path, prefix: float, delay: float = 0.5, drop: str | None = None):
    """A local model directory laid out like a hub repo (weights linked from the shared assets)."""
    path.mkdir()
    cfg = copy.deepcopy(assets["cfg"])
    cfg["stt_config"] = {"audio_delay_seconds": delay, "audio_silence_prefix_seconds": prefix}
    (path / "config.json").write_text(json.dumps(cfg))
    for name in ("model.safetensors", MIMI_NAME, TOK_NAME):
        if name != drop:
            (path / name).symlink_to(assets["root"] / name)
    return path
