"""Write a trained LM as a model directory laid out like Kyutai's hub repos.

The directory holds ``model.safetensors`` (Kyutai's key layout, LoRA adapters merged; floating tensors in
bfloat16 by default as Kyutai ships them, the conditioners in float32), a ``config.json`` naming the files
(``moshi_name``, ``mimi_name``, ``tokenizer_name``) with the stream settings (``stt_config`` /
``tts_config``), and copies of the tokenizer and Mimi weights, so ``dsm.stt.Transcriber.from_checkpoint(dir)``
(or Kyutai's own loaders) read it as they read a published model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dsm.train.lora import merged_state_dict

MODEL_NAME = "model.safetensors"


def _copy(src: Path, dst: Path) -> None:
    if dst.exists() and dst.resolve() == src.resolve():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def export_lm(
    lm: torch.nn.Module,
    raw_config: dict[str, Any],
    out_dir: str | Path,
    *,
    tokenizer: str | Path,
    mimi_weight: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    updates: dict[str, Any] | None = None,
    text_vocab: int | None = None,
) -> Path:
    """Save ``lm`` (an `LMModel`, possibly with LoRA adapters) and its files into ``out_dir``.

    ``raw_config`` is the model's Kyutai config.json content; ``updates`` overrides keys of it (e.g.
    ``stt_config``). With ``text_vocab`` (the tokenizer's size) below the model's text outputs, the text
    head keeps only that many rows (``text_card_out``), so that no sampler can write a token the tokenizer
    cannot read. Returns the directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in merged_state_dict(lm).items():
        value = value.detach().cpu()
        if value.is_floating_point():
            keep32 = key.startswith("condition_provider.") or key.startswith("fuser.")
            value = value.float() if keep32 else value.to(dtype)
        state[key] = value.contiguous()
    config = dict(raw_config)
    config.update(updates or {})
    text_out = state["text_linear.weight"].shape[0] if "text_linear.weight" in state else None
    if text_vocab is not None and text_out is not None and text_vocab < text_out:
        for key in ("text_linear.weight", "text_linear.bias"):
            if key in state:
                state[key] = state[key][:text_vocab].contiguous()
        config["text_card_out"] = text_vocab
    tmp = out / f".{MODEL_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / MODEL_NAME)
    tokenizer, mimi_weight = Path(tokenizer), Path(mimi_weight)
    _copy(tokenizer, out / tokenizer.name)
    _copy(mimi_weight, out / mimi_weight.name)
    config.update(moshi_name=MODEL_NAME, mimi_name=mimi_weight.name, tokenizer_name=tokenizer.name)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
