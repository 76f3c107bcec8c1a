"""Reduced-precision products (`dsm.nn.quant`) and their use by the streaming engine."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from dsm.errors import InputError
from dsm.nn.quant import (
    MAX_ROWS,
    WeightOnlyLinear,
    _cpu_has_vnni,
    dequantize,
    fbgemm_available,
    quantize_int4,
    quantize_int8,
)

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="no FBGEMM in this PyTorch build")
# w8a8 activations get 8 bits on CPUs with int8 dot-product instructions (VNNI) and 7 without (FBGEMM's
# saturation guard): twice the rounding step, so the error bounds double there
W8A8_ACTIVATION_FACTOR = 1.0 if _cpu_has_vnni() else 2.0


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture
def weight():
    return torch.randn(96, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_product_is_the_dequantized_weights_product(weight, kind):
    x = torch.randn(3, 256)
    got = WeightOnlyLinear(kind)(x, weight)
    q, scales = quantize_int8(weight) if kind == "int8" else quantize_int4(weight)
    expected = x.bfloat16().float() @ dequantize(q, scales, kind).t()
    assert got.dtype == x.dtype and got.shape == (3, 96)
    assert _rel(got, expected) < 6e-3  # bf16 activations and outputs, float32 accumulation
    # and what quantization itself costs against the float32 product
    assert _rel(got, x @ weight.t()) < (0.015 if kind == "int8" else 0.12)


@needs_fbgemm
def test_fp16_products_of_bf16_weights_are_float32_products(weight):
    """bfloat16 weights are exact in float16: the fp16 kind computes their float32 product (to float32
    rounding), which is closer to a float32 model than a bfloat16 GEMM."""
    w = weight.bfloat16()
    x = torch.randn(5, 256)
    got = WeightOnlyLinear("fp16")(x, w)
    assert got.dtype == torch.float32
    assert _rel(got, x @ w.float().t()) < 1e-6
    half, linear = x.bfloat16(), WeightOnlyLinear("fp16")
    assert torch.equal(linear(half, w), linear(half.float(), w).bfloat16())


@needs_fbgemm
def test_w8a8_rows_are_quantized_alone(weight):
    """int8 weights and per-row int8 activations: about the int8 weight error against float32, and a
    row's result does not depend on the other rows of the call (a batch neighbour of any magnitude)."""
    linear = WeightOnlyLinear("w8a8")
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    got = linear(x, weight)
    q, scales = quantize_int8(weight)
    bound = 0.012 * W8A8_ACTIVATION_FACTOR  # the activations' rounding
    assert _rel(got, x @ dequantize(q, scales, "int8").t()) < bound
    assert _rel(got, x @ weight.t()) < 0.02 * W8A8_ACTIVATION_FACTOR
    loud = torch.cat([x, 1e3 * torch.rand(1, 256), -torch.ones(1, 256)])
    assert torch.equal(linear(loud, weight)[:3], got)
    assert torch.equal(linear(x[1:2], weight), got[1:2])
    assert linear.max_rows > MAX_ROWS  # faster than a bf16 GEMM up to 64 rows (docs/benchmarks.md)


def test_quantizers_round_trip(weight):
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert (dequantize(q, scales, "int8") - weight).abs().max() <= scales.max() / 2 + 1e-6
    q4, sz = quantize_int4(weight)
    assert int(q4.min()) >= 0 and int(q4.max()) <= 15 and sz.shape == (256 // 32, 96, 2)
    step = sz[..., 0].max()
    assert (dequantize(q4, sz, "int4") - weight).abs().max() <= step / 2 + 1e-5


def test_slices_of_one_parameter_are_quantized_apart(weight):
    """Per-step weights are row slices of one stacked parameter: each slice is its own entry."""
    linear = WeightOnlyLinear("int8")
    x = torch.randn(1, 256)
    top, bottom = linear(x, weight[:48]), linear(x, weight[48:])
    assert _rel(top, x @ weight[:48].t()) < 0.015
    assert _rel(bottom, x @ weight[48:].t()) < 0.015
    assert len(linear._packed) == 2
    linear(x, weight[:48])
    assert len(linear._packed) == 2  # cached


def test_many_rows_and_unsupported_shapes_fall_back(weight):
    linear = WeightOnlyLinear("int4")
    x = torch.randn(MAX_ROWS + 1, 256)
    assert torch.equal(linear(x, weight), F.linear(x, weight))  # a GEMM over the original weights
    odd = torch.randn(10, 256)  # int4 needs N % 16 == 0: int8 instead
    assert _rel(linear(x[:2], odd), x[:2] @ odd.t()) < 0.015
    assert linear.quantized_parameters == odd.numel()
    bias = torch.randn(96)
    assert _rel(linear(x[:1], weight, bias), x[:1] @ weight.t() + bias) < 0.12


def test_bad_kind_and_device(lm_pairs):
    with pytest.raises(InputError, match="fp16, int8, w8a8, int4"):
        WeightOnlyLinear("int2")
    _, _, model = lm_pairs("stt-1b-en_fr", torch.float32)
    with pytest.raises(InputError, match="fp16, int8, w8a8, int4"):
        model.quantized_linear("fp8")
    assert model.quantized_linear("int8") is model.quantized_linear("int8")
    if torch.cuda.is_available():
        with pytest.raises(InputError, match="CPU only"):
            model.cuda().quantized_linear("int8")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_steps_stay_close_to_the_unquantized_model(lm_pairs, dtype):
    """The stt-1b architecture (2 layers): 12 streaming steps of the temporal transformer with int8 or
    w8a8 products stay within a few per cent of the same steps unquantized; int4 within its larger
    error; fp16 (float32 products) within bfloat16 rounding, and far closer for a float32 model."""
    _, _, model = lm_pairs("stt-1b-en_fr", dtype)
    x = torch.randn(2, 12, model.cfg.dim, generator=torch.Generator().manual_seed(3)).to(dtype)
    outputs = {}
    kinds = ("int8", "int4", "fp16", "w8a8") if fbgemm_available() else ("int8", "int4")
    for kind in (None, *kinds):
        state = model.transformer.init_state(2)
        state.linear = None if kind is None else model.quantized_linear(kind)
        with torch.no_grad():
            outputs[kind] = torch.cat([model.transformer(x[:, t : t + 1], state) for t in range(12)], 1)
    assert _rel(outputs["int8"], outputs[None]) < 0.03
    assert 0.02 < _rel(outputs["int4"], outputs[None]) < 0.25
    if fbgemm_available():
        assert _rel(outputs["w8a8"], outputs[None]) < 0.04 * W8A8_ACTIVATION_FACTOR
        assert _rel(outputs["fp16"], outputs[None]) < (2e-3 if dtype == torch.float32 else 0.02)


def test_engine_refuses_exact_with_quantized(lm_pairs):
    from dsm.engine import LMGen

    _, _, model = lm_pairs("stt-1b-en_fr", torch.float32)
    with pytest.raises(InputError, match="exact"):
        LMGen(model, 1, exact=True, quantize="int8")
    gen = LMGen(model, 1, temp=0, temp_text=0, quantize="int8")
    assert gen.state.linear is model.quantized_linear("int8")


def test_tts_depformer_runs_quantized(lm_pairs):
    """The TTS architecture's depformer (per-codebook weight slices) takes the quantized products too:
    greedy audio codes of the same steps mostly agree with the unquantized ones."""
    from dsm.engine import LMGen
    from dsm.lm.conditioners import ConditionAttributes

    _, _, model = lm_pairs("tts-1.6b-en_fr", torch.float32)
    voice = torch.randn(1, 8, 512, generator=torch.Generator().manual_seed(9))
    attrs = ConditionAttributes(
        text={"cfg": "2.0", "control": "ok"},
        tensor={"speaker_wavs": (voice, torch.ones(1, 8, dtype=torch.bool))},
    )
    conditions = model.condition_provider([attrs])
    codes: dict[str | None, list[torch.Tensor]] = {None: [], "int8": []}
    for kind, out in codes.items():
        gen = LMGen(
            model,
            1,
            temp=0,
            temp_text=0,
            quantize=kind,
            condition_sum=model.fuser.get_sum(conditions),
            condition_cross=model.fuser.get_cross(conditions),
            on_audio=out.append,
        )
        if kind:
            assert gen.fast_depformer is not None and gen.fast_depformer.linear is model.quantized_linear(
                kind
            )
        inputs = torch.zeros(1, gen.needed_inputs, dtype=torch.long)
        with torch.no_grad():
            for _ in range(6):
                gen.step(inputs)
    plain, quantized = torch.cat(codes[None]), torch.cat(codes["int8"])
    assert plain.shape == quantized.shape and plain.numel() >= 6 * model.cfg.dep_q
    assert (plain == quantized).float().mean() > 0.6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_filled_span_attention_equals_the_whole_ring(monkeypatch, dtype):
    """Fast CPU streaming attends over the filled part of an unwrapped ring only: the same outputs as
    over the whole ring, through a slot reset and past the wrap-around (context 8, 20 steps)."""
    import dsm.nn.transformer as transformer_module
    from dsm.nn.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig(
        d_model=64, num_heads=4, num_layers=2, dim_feedforward=128, context=8, gating="silu"
    )
    model = Transformer(cfg).to(dtype)
    x = torch.randn(2, 20, 64).to(dtype)
    outputs = []
    for filled in (True, False):
        monkeypatch.setattr(transformer_module, "FILLED_SPAN_ON_CPU", filled)
        state = model.init_state(2)
        steps = []
        with torch.no_grad():
            for t in range(20):
                if t == 5:
                    state.reset(torch.tensor([False, True]))
                steps.append(model(x[:, t : t + 1], state))
        outputs.append(torch.cat(steps, 1).float())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6 if dtype == torch.float32 else 2e-2, rtol=0)
