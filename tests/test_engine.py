"""The batched streaming generator against the reference's LMGen, and slot independence."""

from __future__ import annotations

import pytest
import torch

from dsm.engine import LMGen
from dsm.errors import InputError
from dsm.lm.conditioners import ConditionAttributes

STT = "stt-1b-en_fr"
TTS = "tts-1.6b-en_fr"


def _audio(batch: int, steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, 32, steps), generator=torch.Generator().manual_seed(seed))


def _reference_stt(ref, audio: torch.Tensor):
    from moshi.models.lm import LMGen as RefGen

    gen = RefGen(ref, temp=0, temp_text=0)
    tokens, probs = [], []
    with gen.streaming(audio.shape[0]):
        for i in range(audio.shape[-1]):
            out = gen.step_with_extra_heads(audio[:, :, i : i + 1])
            tokens.append(out[0][:, :, 0])
            heads = [p[:, 0] for p in out[1]]
            probs.append(torch.stack(heads, dim=1) if heads else torch.zeros(audio.shape[0], 0))
    return torch.stack(tokens, 1), torch.stack(probs, 1)


def _ours_stt(gen: LMGen, audio: torch.Tensor):
    tokens, probs = [], []
    for i in range(audio.shape[-1]):
        out = gen.step(audio[:, :, i])
        tokens.append(out.tokens)
        heads = out.extra_heads
        probs.append(torch.stack(heads, dim=1) if heads else torch.zeros(audio.shape[0], 0))
    return torch.stack(tokens, 1), torch.stack(probs, 1)


@pytest.mark.parametrize(
    "name,dtype",
    [(STT, torch.float32), (STT, torch.bfloat16), ("stt-2.6b-en", torch.float32)],
    ids=["1b-fp32", "1b-bf16", "2.6b-fp32"],
)
def test_stt_greedy_100_steps_match_reference(lm_pairs, name, dtype):
    _, ref, ours = lm_pairs(name, dtype)
    audio = _audio(2, 100)
    expected, expected_probs = _reference_stt(ref, audio)
    got, probs = _ours_stt(LMGen(ours, 2, temp=0, temp_text=0, exact=True), audio)
    assert got.shape == (2, 100, 1)
    assert torch.equal(got, expected)
    assert torch.equal(probs, expected_probs)
    assert probs.shape == ((2, 100, 4, 6) if name == STT else (2, 100, 0))
    assert len(torch.unique(got)) > 10  # the text really varies


def test_stt_fast_kernels_agree_with_exact(lm_pairs):
    """float32 with the default (fast, skinny-GEMM) kernels agrees with the exact ones to rounding."""
    _, _, ours = lm_pairs(STT)
    audio = _audio(2, 40, seed=4)
    exact = LMGen(ours, 2, temp=0, temp_text=0, exact=True)
    fast = LMGen(ours, 2, temp=0, temp_text=0)
    worst, same = 0.0, 0
    for i in range(40):
        a, b = exact.step(audio[:, :, i]), fast.step(audio[:, :, i])
        worst = max(worst, ((a.hidden.float() - b.hidden.float()).abs().max() / a.hidden.abs().max()).item())
        same += int((a.text == b.text).sum())
    assert worst <= 1e-5
    assert same / 80 >= 0.99


def test_reset_of_one_slot_equals_separate_runs(lm_pairs):
    _, _, ours = lm_pairs(STT)
    a, b, b_new = _audio(1, 60, seed=1), _audio(1, 60, seed=2), _audio(1, 20, seed=3)
    separate_a, _ = _ours_stt(LMGen(ours, 1, temp=0, temp_text=0), a)
    separate_b, _ = _ours_stt(LMGen(ours, 1, temp=0, temp_text=0), b[..., :40])
    separate_b_new, _ = _ours_stt(LMGen(ours, 1, temp=0, temp_text=0), b_new)
    gen = LMGen(ours, 2, temp=0, temp_text=0)
    got = []
    for i in range(60):
        if i == 40:
            gen.reset([1])
        second = b[:, :, i] if i < 40 else b_new[:, :, i - 40]
        got.append(gen.step(torch.cat([a[:, :, i], second])).tokens)
    got = torch.stack(got, 1)
    assert torch.equal(got[0:1], separate_a)
    assert torch.equal(got[1:2, :40], separate_b)
    assert torch.equal(got[1:2, 40:], separate_b_new)


def test_inactive_slots_keep_their_state(lm_pairs):
    _, _, ours = lm_pairs(STT)
    audio = _audio(2, 30, seed=7)
    expected, _ = _ours_stt(LMGen(ours, 2, temp=0, temp_text=0), audio)
    gen = LMGen(ours, 2, temp=0, temp_text=0)
    got0, got1, j = [], [], 0
    for i in range(30):
        active = torch.tensor([True, i % 3 != 1])  # slot 1 idles every third step
        inputs = torch.stack(
            [audio[0, :, i], audio[1, :, j] if active[1] else torch.zeros(32, dtype=torch.long)]
        )
        out = gen.step(inputs, active=active)
        got0.append(out.tokens[0])
        if active[1]:
            got1.append(out.tokens[1])
            j += 1
        else:
            assert (out.tokens[1] == -2).all() and not out.ready[1]
    assert torch.equal(torch.stack(got0), expected[0])
    assert torch.equal(torch.stack(got1), expected[1, :j])


def _tts_conditions(ours, batch: int):
    from moshi.conditioners import ConditionAttributes as RefAttributes
    from moshi.conditioners import TensorCondition as RefTensor

    gen = torch.Generator().manual_seed(9)
    voice = torch.randn(batch, 8, 512, generator=gen)
    mask = torch.ones(1, 8, dtype=torch.bool)
    text = {"cfg": "2.0", "control": "ok"}
    ours_attrs = [
        ConditionAttributes(text=text, tensor={"speaker_wavs": (voice[b : b + 1], mask)})
        for b in range(batch)
    ]
    ref_attrs = [
        RefAttributes(text=text, tensor={"speaker_wavs": RefTensor(voice[b : b + 1], mask)})
        for b in range(batch)
    ]
    conditions = ours.condition_provider(ours_attrs)
    return ours.fuser.get_sum(conditions), ours.fuser.get_cross(conditions), ref_attrs


@pytest.mark.parametrize("temp", [0.0, 0.6], ids=["greedy", "sampled"])
def test_tts_depformer_steps_match_reference(lm_pairs, temp):
    """Forced text (as TTS does), audio from the depformer: same codes, greedy or with the same seed."""
    from moshi.models.lm import LMGen as RefGen

    _, ref, ours = lm_pairs(TTS)
    batch, steps = 2, 10
    condition_sum, condition_cross, ref_attrs = _tts_conditions(ours, batch)
    ref_conditions = ref.condition_provider(ref.condition_provider.prepare(ref_attrs))
    text = torch.randint(0, 8000, (batch, steps), generator=torch.Generator().manual_seed(2))
    sampling = dict(temp=temp, temp_text=temp, top_k=250, top_k_text=25)

    torch.manual_seed(5)
    ref_gen = RefGen(ref, condition_tensors=ref_conditions, **sampling)
    expected = []
    with ref_gen.streaming(batch):
        for i in range(steps):
            ref_gen.on_text_hook = lambda t, forced=text[:, i]: t.copy_(forced)
            out = ref_gen.step(torch.zeros(batch, 0, 1, dtype=torch.long))
            if out is not None:
                expected.append(out[:, :, 0])

    torch.manual_seed(5)
    gen = LMGen(
        ours, batch, exact=True, condition_sum=condition_sum, condition_cross=condition_cross, **sampling
    )
    got = []
    for i in range(steps):
        gen.on_text = lambda t, forced=text[:, i]: t.copy_(forced)
        out = gen.step()
        if i < 2:
            assert not out.ready.any()  # the audio delay (2 steps) is not over yet
        else:
            got.append(out.tokens)
    assert torch.equal(torch.stack(got), torch.stack(expected))
    assert torch.equal(torch.stack(got)[:, :, 0], text[:, : steps - 2].T)  # text comes back un-delayed


def test_tts_cfg_matches_reference(lm_pairs):
    from moshi.models.lm import LMGen as RefGen

    _, ref, ours = lm_pairs(TTS)
    batch, steps = 1, 6
    condition_sum, condition_cross, ref_attrs = _tts_conditions(ours, batch)
    ref_conditions = ref.condition_provider(ref.condition_provider.prepare(ref_attrs + ref_attrs))
    sampling = dict(temp=0, temp_text=0, cfg_coef=2.0, cfg_is_no_text=True)
    ref_gen = RefGen(ref, condition_tensors=ref_conditions, **sampling)
    expected = []
    with ref_gen.streaming(batch):
        for _ in range(steps):
            out = ref_gen.step(torch.zeros(batch, 0, 1, dtype=torch.long))
            if out is not None:
                expected.append(out[:, :, 0])
    gen = LMGen(
        ours,
        batch,
        exact=True,
        condition_sum=condition_sum.repeat(2, 1, 1),
        condition_cross=condition_cross.repeat(2, 1, 1),
        **sampling,
    )
    got = [gen.step().tokens for _ in range(steps)][2:]
    assert torch.equal(torch.stack(got), torch.stack(expected))


@pytest.mark.parametrize("exact", [False, True], ids=["fast", "exact"])
def test_depformer_samples_only_the_codebooks_asked_for(lm_pairs, exact):
    """`depformer_codebooks=n`: the first n codebooks as a full step samples them, the rest ZERO (-1)."""
    _, _, ours = lm_pairs(TTS)
    condition_sum, condition_cross, _ = _tts_conditions(ours, 1)
    audio = {}
    for n in (None, 3):
        seen = []
        gen = LMGen(
            ours,
            1,
            temp=0,
            temp_text=0,
            exact=exact,
            condition_sum=condition_sum,
            condition_cross=condition_cross,
            on_audio=seen.append,
        )
        with torch.no_grad():
            gen.step(torch.zeros(1, gen.needed_inputs, dtype=torch.long), depformer_codebooks=n)
        audio[n] = seen[0]
    assert torch.equal(audio[3][:, :3], audio[None][:, :3])
    assert (audio[3][:, 3:] == -1).all() and (audio[None][:, 3:] >= 0).all()
    with pytest.raises(InputError, match="depformer_codebooks"):
        gen.step(torch.zeros(1, gen.needed_inputs, dtype=torch.long), depformer_codebooks=0)


def test_per_slot_seeds_do_not_depend_on_the_batch(lm_pairs):
    _, _, ours = lm_pairs(STT)
    audio = _audio(3, 12, seed=11)
    alone = LMGen(ours, 1, temp=1.0, temp_text=1.0, top_k_text=50, seeds=[123])
    batch = LMGen(ours, 3, temp=1.0, temp_text=1.0, top_k_text=50, seeds=[7, 123, 8])
    for i in range(12):
        a = alone.step(audio[1:2, :, i])
        b = batch.step(audio[:, :, i])
        assert torch.equal(a.text, b.text[1:2])


def test_input_errors(lm_pairs):
    _, _, ours = lm_pairs(STT)
    gen = LMGen(ours, 2)
    with pytest.raises(InputError, match="pass inputs"):
        gen.step()
    with pytest.raises(InputError, match=r"shape \[2, 32\]"):
        gen.step(torch.zeros(3, 32, dtype=torch.long))
    with pytest.raises(InputError, match="out of range"):
        gen.reset([4])
    with pytest.raises(InputError, match="seeds"):
        LMGen(ours, 2, seeds=[1])


def test_single_stream_hidden_state_is_bit_exact(lm_pairs):
    """Batch 1 takes BLAS's matrix-vector kernels, which round differently on unaligned weights: the
    loader must hand out aligned weights for exact mode to stay bit-identical to the reference."""
    from moshi.models.lm import LMGen as RefGen

    _, ref, ours = lm_pairs(STT)
    assert all(p.data_ptr() % 64 == 0 for p in ours.parameters())
    audio = _audio(1, 8, seed=5)
    ref_gen = RefGen(ref, temp=0, temp_text=0)
    gen = LMGen(ours, 1, temp=0, temp_text=0, exact=True)
    with ref_gen.streaming(1):
        for i in range(8):
            _, expected = ref_gen._step(audio[:, :, i : i + 1])
            assert torch.equal(gen.step(audio[:, :, i]).hidden, expected[:, 0])
