"""Kyutai `config.json` contents of the published DSM models (model-spec §2.10), for tests.

`reduced(cfg, layers)` keeps the real shapes, key names and code paths at a smaller depth.
"""

from __future__ import annotations

import copy

STT_1B = {
    "dim": 2048,
    "num_heads": 16,
    "num_layers": 16,
    "hidden_scale": 4.125,
    "context": 750,
    "max_period": 100000,
    "norm": "rms_norm_f32",
    "gating": "silu",
    "positional_embedding": "rope",
    "card": 2048,
    "n_q": 32,
    "dep_q": 0,
    "text_card": 8000,
    "delays": [0] * 33,
    "existing_text_padding_id": 3,
    "layer_scale": None,
    "causal": True,
    "depformer_multi_linear": True,
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
    "fuser": None,
    "model_type": "stt",
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
    "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
}

STT_2B6 = copy.deepcopy(STT_1B) | {
    "num_heads": 32,
    "num_layers": 48,
    "context": 375,
    "text_card": 4000,
    "extra_heads_num_heads": 0,
    "tokenizer_name": "tokenizer_en_audio_4000.model",
    "stt_config": {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
}

TTS_1B6 = {
    "dim": 2048,
    "num_heads": 16,
    "num_layers": 16,
    "hidden_scale": 4.125,
    "context": 500,
    "max_period": 10000,
    "norm": "rms_norm_f32",
    "gating": "silu",
    "positional_embedding": "rope",
    "card": 2048,
    "n_q": 32,
    "dep_q": 32,
    "text_card": 8000,
    "text_card_out": None,
    "delays": [0, 0] + [2] * 31,
    "demux_second_stream": True,
    "cross_attention": True,
    "existing_text_padding_id": 3,
    "layer_scale": None,
    "causal": True,
    "depformer_dim": 1024,
    "depformer_num_heads": 16,
    "depformer_num_layers": 4,
    "depformer_dim_feedforward": 3072,
    "depformer_multi_linear": True,
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
    "depformer_low_rank_embeddings": 128,
    "conditioners": {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
        "cfg": {
            "type": "lut",
            "lut": {
                "n_bins": 7,
                "dim": 16,
                "tokenizer": "noop",
                "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"],
            },
        },
        "control": {
            "type": "lut",
            "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop", "possible_values": ["ok"]},
        },
    },
    "fuser": {
        "sum": ["control", "cfg"],
        "cross": ["speaker_wavs"],
        "cross_attention_pos_emb": True,
        "cross_attention_pos_emb_scale": 1.0,
    },
    "model_type": "tts",
    "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
}


def reduced(cfg: dict, layers: int = 2, depformer_layers: int = 2) -> dict:
    out = copy.deepcopy(cfg)
    out["num_layers"] = layers
    if "depformer_num_layers" in out:
        out["depformer_num_layers"] = depformer_layers
    return out


def lm_kwargs(cfg: dict) -> dict:
    """The config without its meta keys, as the reference's `get_moshi_lm` expects it."""
    meta = ("model_type", "mimi_name", "tokenizer_name", "stt_config", "tts_config", "lm_gen_config")
    return {k: copy.deepcopy(v) for k, v in cfg.items() if k not in meta}
