"""A small TTS checkpoint made in the tests: the tts-1.6b-en_fr architecture (32 codebooks, card 2048,
delays [0, 0, 2...], demuxed second text stream, voice cross-attention, distilled-CFG and control LUTs,
depformer with per-step weights on the real schedule and low-rank embeddings) at 2 layers and small
widths, random weights in Kyutai's layout, a tiny SentencePiece tokenizer, a 1-layer Mimi and random
voice embeddings, laid out like the hub repos `kyutai/tts-1.6b-en_fr` and `kyutai/tts-voices`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lm_configs
import oracle
import torch
from safetensors.torch import save_file
from tiny_tokenizer import train_tokenizer

from dsm.codec import MimiConfig

MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOK_NAME = "tokenizer_spm_8k_en_fr_audio.model"
MOSHI_NAME = "dsm_tts_1e68beda@240.safetensors"
SUFFIX = ".1e68beda@240.safetensors"
VOICES = ("expresso/ex03-ex01_happy_001_channel1_334s.wav", "vctk/p225_023.wav", "unmute-prod-website/a.wav")
MIMI_1L = MimiConfig(num_layers=1)


def tts_config(text_card: int) -> dict:
    cfg = lm_configs.reduced(lm_configs.TTS_1B6)
    cfg.update(
        dim=128,
        num_heads=2,
        context=60,
        text_card=text_card,
        depformer_dim=64,
        depformer_num_heads=2,
        depformer_dim_feedforward=96,
        depformer_low_rank_embeddings=16,
    )
    cfg["conditioners"]["control"]["lut"]["dim"] = 32
    cfg.update(
        model_id={"sig": "1e68beda", "epoch": 240},
        moshi_name=MOSHI_NAME,
        mimi_name=MIMI_NAME,
        tokenizer_name=TOK_NAME,
    )
    return cfg


def reference_mimi(seed: int):
    """A 1-layer reference Mimi with random codebooks (decoding only needs their embeddings)."""
    from moshi.models import loaders

    mimi_cfg = copy.deepcopy(loaders._mimi_config)
    mimi_cfg["transformer"]["num_layers"] = 1
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, mimi_config=mimi_cfg, device="cpu", num_codebooks=32)
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("_codebook.embedding_sum"):
                buf.normal_(0.0, 1.0)
            elif name.endswith(("_codebook.cluster_usage", "_codebook._initialized")):
                buf.fill_(1.0)
        for name, p in mimi.named_parameters():
            if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
                p.uniform_(0.05, 0.3)
    oracle._clear_codebook_caches(mimi)
    return mimi.eval()


_BUILT: dict[str, dict] = {}


def shared(tmp_path_factory) -> dict:
    """`build` once per test session (the test modules share the assets)."""
    if "assets" not in _BUILT:
        _BUILT["assets"] = build(tmp_path_factory.mktemp("tts"))
    return _BUILT["assets"]


def build(root: Path) -> dict:
    """Write the model repo (root/model) and the voice repo (root/voices); return the reference parts."""
    tok = train_tokenizer(root, vocab_size=120, min_words=6, max_words=10)
    cfg = tts_config(tok.vocab_size())
    ref_cfg = {k: v for k, v in cfg.items() if k not in ("model_id", "moshi_name")}
    ref_lm = oracle.reference_lm(ref_cfg, seed=3)
    with torch.no_grad():
        # A trained model samples padding (3) and new words (0) far more than anything else. Make the
        # summed "control" condition put a large constant on channel 0 of every step's input; it
        # survives to the output norm, where only tokens 3 and 0 read it.
        control = ref_lm.condition_provider.conditioners["control"]
        embed = control.embed.weight[0]
        control.output_proj.weight[0] = 20.0 * embed / embed.pow(2).sum()
        text = ref_lm.text_linear.weight
        text[:, 0] = 0.0
        text[3, 0], text[0, 0] = 0.4, 0.3
    ref_lm.condition_provider.float()
    repo = root / "model"
    repo.mkdir()
    oracle.export_lm(ref_lm, repo / MOSHI_NAME)
    ref_mimi = reference_mimi(seed=4)
    oracle.export_mimi(ref_mimi, repo / MIMI_NAME)
    (repo / TOK_NAME).write_bytes((root / "tok.model").read_bytes())
    (repo / "config.json").write_text(json.dumps(cfg))
    voices = root / "voices"
    gen = torch.Generator().manual_seed(5)
    for i, name in enumerate(VOICES):
        path = voices / (name + SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = 20 if i < 2 else 14  # voices of different lengths are padded to the longest
        save_file({"speaker_wavs": torch.randn(1, 512, frames, generator=gen)}, str(path))
    return {
        "root": root,
        "repo": repo,
        "voices": voices,
        "cfg": cfg,
        "tok": tok,
        "ref_lm": ref_lm,
        "ref_mimi": ref_mimi,
    }


def reference_tts(assets: dict, n_q: int = 32, padding_bonus: float = 0.0, temp: float = 0.6):
    """The reference `TTSModel` around the same weights."""
    from moshi.models.tts import StateMachine, TokenIds, TTSModel

    cfg = assets["cfg"]
    machine = StateMachine(
        TokenIds(cfg["text_card"] + 1),
        second_stream_ahead=cfg["tts_config"]["second_stream_ahead"],
        max_padding=8,
        initial_padding=2,
    )
    return TTSModel(
        lm=assets["ref_lm"],
        mimi=assets["ref_mimi"],
        tokenizer=assets["tok"],
        voice_suffix=SUFFIX,
        voice_repo=str(assets["voices"]),
        machine=machine,
        delay_steps=int(cfg["tts_config"]["audio_delay"] * 12.5),
        n_q=n_q,
        temp=temp,
        padding_bonus=padding_bonus,
    )
