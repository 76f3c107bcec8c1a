"""Tiny aligned corpora, codecs and configs for the trainer tests (built in a few seconds)."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch
from tiny_tokenizer import train_tokenizer

from dsm.audio import write_audio
from dsm.codec import Mimi, MimiConfig, save_mimi
from dsm.codec.seanet import SeanetConfig
from dsm.train.data.manifest import Utterance, WordTiming, write_manifest

SR = 24_000
VOCAB = ["cat", "dog", "bird", "music", "water", "light"]
TINY_MIMI = {
    "seanet": {"n_filters": 4, "dimension": 32},
    "num_layers": 1,
    "num_heads": 2,
    "dim_feedforward": 64,
    "context": 50,
    "codebook_dim": 16,
}
STT_ARCH = {
    "dim": 64,
    "num_heads": 2,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "context": 64,
    "max_period": 10000,
    "norm": "rms_norm_f32",
    "gating": "silu",
    "positional_embedding": "rope",
    "card": 2048,
    "n_q": 8,
    "dep_q": 0,
    "text_card": 128,
    "delays": [0] * 9,
    "existing_text_padding_id": 3,
    "causal": True,
    "fuser": None,
}


def tiny_mimi_config() -> MimiConfig:
    raw = copy.deepcopy(TINY_MIMI)
    return MimiConfig(seanet=SeanetConfig(**raw.pop("seanet")), **raw)


def word_tone(word: str, samples: int, rng: random.Random) -> np.ndarray:
    """A word as a short harmonic tone whose pitch names the word (learnable from the codes)."""
    f0 = 180.0 + 90.0 * VOCAB.index(word) + rng.uniform(-8, 8)
    t = np.arange(samples) / SR
    env = np.sin(np.pi * np.linspace(0, 1, samples)) ** 0.5
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 4))
    return (0.25 * env * tone).astype(np.float32)


def make_corpus(root: Path, n: int = 12, n_eval: int = 2, seconds: float = 2.0, seed: int = 0) -> Path:
    """n clips of word tones with hand-placed word times; the last n_eval are split 'eval'."""
    rng = random.Random(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        wav = np.zeros(int(seconds * SR), dtype=np.float32) + 1e-3 * np.random.default_rng(
            seed + i
        ).standard_normal(int(seconds * SR)).astype(np.float32)
        words, t = [], rng.uniform(0.1, 0.3)
        while len(words) < 3:
            word, dur = rng.choice(VOCAB), rng.uniform(0.2, 0.35)
            if t + dur > seconds - 0.1:
                break
            a = int(round(t * SR))
            wav[a : a + int(dur * SR)] += word_tone(word, int(dur * SR), rng)
            words.append(WordTiming(word, round(t, 3), round(t + dur, 3)))
            t += dur + rng.uniform(0.1, 0.25)
        name = f"clips/{i:03d}.wav"
        write_audio(root / name, wav, SR)
        utts.append(
            Utterance(
                audio=name,
                text=" ".join(w.word for w in words),
                words=words,
                speaker=f"spk{i % 2}",
                duration=seconds,
                split="eval" if i >= n - n_eval else "train",
            )
        )
    write_manifest(root / "manifest.jsonl", utts)
    return root / "manifest.jsonl"


def make_mimi(path: Path, seed: int = 0) -> Path:
    """A random tiny Mimi (32 codebooks of 2048) whose codebooks are spread like its latents."""
    torch.manual_seed(seed)
    mimi = Mimi(tiny_mimi_config()).eval()
    t = torch.arange(SR) / SR
    probe = (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 2 * t)).view(1, 1, -1)
    with torch.no_grad():
        latent = mimi.encode_to_latent(probe)
        for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
            x = rvq.input_proj(latent)
            std = float(x.std())
            for level in rvq.vq.layers:
                book = level._codebook
                book.embedding_sum.copy_(torch.randn(book.embedding_sum.shape) * std)
                book.cluster_usage.fill_(1.0)
                book._clear()
                std *= 0.7
    save_mimi(mimi, path)
    return path


def make_assets(root: Path) -> dict:
    """Corpus, tokenizer and tiny Mimi under root."""
    root.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(root, vocab_size=120, min_words=8, max_words=8)
    return {
        "root": root,
        "manifest": make_corpus(root / "data"),
        "tokenizer": root / "tok.model",
        "tok": tok,
        "mimi": make_mimi(root / "mimi.safetensors"),
    }


def stt_config_dict(assets: dict, out_dir: Path, **overrides) -> dict:
    raw = {
        "run": {
            "out_dir": str(out_dir),
            "seed": 0,
            "max_steps": 30,
            "log_every": 5,
            "eval_every": 0,
            "save_every": 10,
            "progress": False,
            "num_threads": 1,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 3, "batch_size": 4, "weight_decay": 0.0},
        "data": {
            "train": str(assets["manifest"]),
            "eval_split": "eval",
            "cache_dir": str(assets["root"] / "cache"),
        },
        "model": {
            "arch": copy.deepcopy(STT_ARCH),
            "tokenizer": str(assets["tokenizer"]),
            "mimi_weight": str(assets["mimi"]),
            "mimi_config": copy.deepcopy(TINY_MIMI),
            "export_dtype": "float32",
        },
        "stt": {"delay_seconds": 0.32},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


TTS_ARCH = {
    "dim": 64,
    "num_heads": 2,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "context": 64,
    "max_period": 10000,
    "norm": "rms_norm_f32",
    "gating": "silu",
    "positional_embedding": "rope",
    "card": 2048,
    "n_q": 4,
    "dep_q": 4,
    "text_card": 128,
    "delays": [0, 0, 1, 1, 1],
    "demux_second_stream": True,
    "cross_attention": True,
    "existing_text_padding_id": 3,
    "causal": True,
    "depformer_dim": 32,
    "depformer_num_heads": 2,
    "depformer_num_layers": 1,
    "depformer_dim_feedforward": 64,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "depformer_weights_per_step_schedule": [0, 1, 2, 2],
    "depformer_low_rank_embeddings": 16,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 32}},
        "control": {
            "type": "lut",
            "lut": {"n_bins": 1, "dim": 8, "tokenizer": "noop", "possible_values": ["ok"]},
        },
    },
    "fuser": {"sum": ["control"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": True},
}


def tts_config_dict(assets: dict, out_dir: Path, **overrides) -> dict:
    raw = stt_config_dict(assets, out_dir)
    del raw["stt"]
    raw["model"]["arch"] = copy.deepcopy(TTS_ARCH)
    raw["tts"] = {
        "audio_delay": 0.16,
        "second_stream_ahead": 2,
        "voice_seconds": 0.8,
        "max_speakers": 2,
        "text_conditions": {"control": "ok"},
        "condition_dropout": 0.2,
        "first_codebook_weight": 2.0,
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


def codec_config_dict(assets: dict, out_dir: Path, **overrides) -> dict:
    arch = copy.deepcopy(TINY_MIMI) | {"n_q": 4, "bins": 64}
    raw = {
        "run": {
            "out_dir": str(out_dir),
            "seed": 0,
            "max_steps": 30,
            "log_every": 5,
            "save_every": 10,
            "progress": False,
            "num_threads": 1,
        },
        "optim": {"lr": 3e-3, "warmup_steps": 3, "batch_size": 4, "weight_decay": 0.0},
        "data": {"train": str(assets["manifest"]), "eval_split": "eval"},
        "codec": {
            "arch": arch,
            "segment_seconds": 0.48,
            "mel_scales": [64, 128, 256],
            "mel_bins": 32,
            "disc_scales": [128],
            "disc_channels": 4,
        },
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw
