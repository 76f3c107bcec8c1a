"""The DSM language model: Kyutai's tiny test checkpoint, and the real architectures (reduced depth,
random weights exported from the reference in Kyutai's layout) against the reference forward."""

from __future__ import annotations

from pathlib import Path

import lm_configs
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from dsm.errors import CheckpointError
from dsm.lm.conditioners import ConditionAttributes
from dsm.lm.config import LMConfig
from dsm.lm.loader import load_lm, read_config

TINY = Path(__file__).resolve().parents[2] / "shared" / "reference" / "kyutai-test-lm"


def tiny_config() -> LMConfig:
    """The tiny model of the reference's test_lm.py (see shared/reference/kyutai-test-lm/README.md)."""
    return LMConfig.from_kyutai(
        {
            "delays": [0, 1, 2, 4],
            "n_q": 3,
            "dep_q": 3,
            "card": 32,
            "text_card": 48,
            "dim": 16,
            "num_layers": 2,
            "num_heads": 1,
            "hidden_scale": 1,
            "context": 4,
            "depformer_dim": 16,
            "depformer_multi_linear": True,
            "depformer_weights_per_step": True,
            "depformer_weights_per_step_schedule": [0, 1, 1],
            "depformer_low_rank_embeddings": 8,
            "depformer_num_heads": 1,
            "depformer_gating": "silu",
        }
    )


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per codebook over valid positions: logits [B, K, T, V] -> [K]."""
    out = []
    for k in range(logits.shape[1]):
        m = mask[:, k]
        out.append(F.cross_entropy(logits[:, k][m].float(), targets[:, k][m]))
    return torch.stack(out)


def test_tiny_kyutai_checkpoint_passes_the_reference_check():
    model = load_lm(TINY / "test_lm_model.safetensors", tiny_config(), dtype=torch.float32)
    codes = load_file(str(TINY / "test_lm_codes.safetensors"))["codes"]
    expected = load_file(str(TINY / "test_lm_out.safetensors"))
    with torch.no_grad():
        out = model(codes)
    assert out.logits.shape == (3, 3, 7, 32) and out.text_logits.shape == (3, 1, 7, 48)
    assert torch.equal(out.mask, expected["mask"])
    assert torch.equal(out.text_mask, expected["text_mask"])
    ce = masked_ce(out.logits, codes[:, 1:], out.mask)
    ref_ce = masked_ce(expected["logits"], codes[:, 1:], expected["mask"])
    assert torch.allclose(ce, ref_ce, rtol=1e-6, atol=0)
    text_ce = masked_ce(out.text_logits, codes[:, :1], out.text_mask)
    ref_text_ce = masked_ce(expected["text_logits"], codes[:, :1], expected["text_mask"])
    assert torch.allclose(text_ce, ref_text_ce, rtol=1e-6, atol=0)
    assert torch.isnan(out.logits[~out.mask]).all()


# -- real architectures, reduced depth -------------------------------------------------------------


@pytest.fixture(scope="module", params=["stt-1b-en_fr", "stt-2.6b-en", "tts-1.6b-en_fr"])
def arch(request, lm_pairs):
    """(name, config dict, reference model, dsm model loaded from the reference's exported weights)."""
    return (request.param, *lm_pairs(request.param))


def _random_codes(cfg: dict, batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg["card"], (batch, cfg["n_q"] + 1, steps), generator=gen)
    codes[:, 0] = torch.randint(0, cfg["text_card"], (batch, steps), generator=gen)
    codes[0, 3, 5] = -1  # a "zero" token: embeds to exactly 0, masked out of the loss
    return codes


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _conditions(batch: int):
    """dsm and reference condition attributes for the same voices (TTS)."""
    from moshi.conditioners import ConditionAttributes as RefAttributes
    from moshi.conditioners import TensorCondition as RefTensor

    gen = torch.Generator().manual_seed(3)
    ours, ref = [], []
    for b, cfg_value in zip(range(batch), ["2.0", "1.5", "4.0"], strict=False):
        voice = torch.randn(1, 6 + 2 * b, 512, generator=gen)
        mask = torch.ones(1, voice.shape[1], dtype=torch.bool)
        ours.append(
            ConditionAttributes(
                text={"cfg": cfg_value, "control": "ok"}, tensor={"speaker_wavs": (voice, mask)}
            )
        )
        ref.append(
            RefAttributes(
                text={"cfg": cfg_value, "control": "ok"}, tensor={"speaker_wavs": RefTensor(voice, mask)}
            )
        )
    return ours, ref


def test_full_sequence_logits_match_reference(arch):
    name, cfg, ref, ours = arch
    batch, steps = 2, 12
    codes = _random_codes(cfg, batch, steps)
    with torch.no_grad():
        if cfg["dep_q"] == 0:  # STT: the reference's training forward is forward_text
            initial = ref._get_initial_token().expand(batch, -1, -1)
            tokens = torch.cat([initial, codes[..., :-1]], dim=2)
            ref_hidden, ref_text = ref.forward_text(tokens)
            hidden, text = ours.forward_text(tokens)
            assert _relative(text, ref_text) <= 1e-4
            assert _relative(hidden, ref_hidden) <= 1e-4
            if cfg.get("extra_heads_num_heads"):
                probs = ours.extra_head_probs(hidden)
                ref_probs = [torch.softmax(h(ref_hidden), dim=-1) for h in ref.extra_heads]
                assert len(probs) == 4
                for p, rp in zip(probs, ref_probs, strict=True):
                    assert (p - rp).abs().max().item() <= 1e-5
            return
        ours_attrs, ref_attrs = _conditions(batch)
        ref_conditions = ref.condition_provider(ref.condition_provider.prepare(ref_attrs))
        expected = ref(codes, ref_conditions)
        conditions = ours.condition_provider(ours_attrs)
        out = ours(codes, ours.fuser.get_sum(conditions), ours.fuser.get_cross(conditions))
    assert torch.equal(out.mask, expected.mask) and torch.equal(out.text_mask, expected.text_mask)
    assert not out.mask[0, 2, 5]  # the -1 code
    valid = expected.mask
    assert _relative(out.logits[valid], expected.logits[valid]) <= 1e-4
    assert _relative(out.text_logits, expected.text_logits) <= 1e-4


def test_bfloat16_load_keeps_conditioners_float32(arch, tmp_path):
    name, cfg, ref, _ = arch
    oracle = pytest.importorskip("oracle")
    path = oracle.export_lm(ref, tmp_path / "model.safetensors")
    model = load_lm(path, LMConfig.from_kyutai(cfg))
    path.unlink()
    assert model.dtype == torch.bfloat16
    assert model.transformer.layers[0].norm1.alpha.dtype == torch.bfloat16
    if model.condition_provider is not None:
        assert all(p.dtype == torch.float32 for p in model.condition_provider.parameters())


# -- loader errors ---------------------------------------------------------------------------------


def test_loader_names_missing_and_unexpected_keys(tmp_path):
    state = load_file(str(TINY / "test_lm_model.safetensors"))
    state.pop("text_linear.weight")
    state["linears.7.weight"] = torch.zeros(32, 16)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_lm(path, tiny_config())
    assert "missing keys: text_linear.weight" in str(err.value)
    assert "unexpected keys: linears.7.weight" in str(err.value)


def test_loader_reports_a_mismatched_architecture():
    cfg = tiny_config()
    cfg.dim = 32
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_lm(TINY / "test_lm_model.safetensors", cfg)


def test_config_errors(tmp_path):
    bad = dict(lm_configs.STT_1B, not_a_key=1)
    with pytest.raises(CheckpointError, match="unknown keys not_a_key"):
        LMConfig.from_kyutai(bad)
    with pytest.raises(CheckpointError, match="33 delays"):
        LMConfig.from_kyutai(dict(lm_configs.STT_1B, delays=[0, 0]))
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid JSON config"):
        read_config(path)
    with pytest.raises(CheckpointError, match="config file not found"):
        read_config(tmp_path / "absent.json")


def test_config_reads_meta_and_depformer_overrides():
    cfg = LMConfig.from_kyutai(lm_configs.TTS_1B6)
    assert cfg.meta["model_type"] == "tts" and cfg.demux_second_text_stream
    dep = cfg.depformer()
    assert (dep.d_model, dep.num_heads, dep.num_layers, dep.mult) == (1024, 16, 4, 11)
    assert dep.positional_embedding == "none" and dep.context is None and not dep.cross_attention
    stt = LMConfig.from_kyutai(lm_configs.STT_1B)
    assert stt.temporal().context == 750 and stt.temporal().max_period == 100000


def test_forward_without_text_input_is_the_generation_null_branch():
    """`LMModel.forward(codes, inputs=...)` with the text row of `inputs` withheld (CFG training) gives the
    logits generation uses for the null branch with `cfg_is_no_text`: a greedy run whose audio comes from
    that branch alone (cfg_coef 0) is reproduced token for token by the teacher-forced forward on the
    generated codes; not with the text read, nor with the text row removed from `codes` itself (the
    depformer would lose the step's text token, which generation keeps)."""
    from dsm.engine.generator import LMGen
    from dsm.lm.model import LMModel

    torch.manual_seed(0)
    model = LMModel(tiny_config()).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.5)  # larger than the init, so that the text visibly changes the audio
    gen = LMGen(model, 1, temp=0.0, temp_text=0.0, cfg_coef=0.0, cfg_is_no_text=True)
    frames = [gen.step().tokens for _ in range(24)]
    codes = torch.stack([f for f in frames if bool((f >= 0).all())], dim=2)  # [1, 1 + dep_q, T]
    assert codes.shape[2] >= 16
    no_text = codes.clone()
    no_text[:, 0] = -1

    def agrees(fed: torch.Tensor, inputs: torch.Tensor | None) -> bool:
        with torch.no_grad():
            out = model(fed, inputs=inputs)
        return torch.equal(out.logits.argmax(-1)[out.mask], codes[:, 1:][out.mask])

    assert agrees(codes, no_text)
    assert not agrees(codes, None)
    assert not agrees(no_text, None)
    with pytest.raises(ValueError, match="shape of codes"):
        model(codes, inputs=no_text[..., 1:])
