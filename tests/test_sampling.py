"""dsm.nn.sampling: parity with the reference sampler, RNG consumption, distribution and errors."""

from __future__ import annotations

import os

import pytest
import torch

from dsm.errors import InputError
from dsm.nn.sampling import sample, sample_per_slot

os.environ.setdefault("NO_TORCH_COMPILE", "1")

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))


@pytest.fixture(scope="module")
def ref():
    """The reference `moshi.utils.sampling` module (required when DSM_REQUIRE_ORACLE=1)."""
    if os.environ.get("DSM_REQUIRE_ORACLE") == "1":
        import moshi.utils.sampling as module
    else:
        module = pytest.importorskip("moshi.utils.sampling", reason="reference package moshi not installed")
    return module


def _logits(*shape: int, seed: int, scale: float = 3.0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def _rng_state(device: str) -> torch.Tensor:
    return torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()


# --- greedy ---


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_greedy_matches_reference(ref, dtype, temperature):
    # bf16 values in a narrow range: many exact ties on the maximum
    x = (torch.randint(-40, 8, (6, 2, 2049), generator=torch.Generator().manual_seed(0)) / 8).to(dtype)
    maxima = x.float().amax(-1, keepdim=True)
    assert bool(((x.float() == maxima).sum(-1) > 1).any()), "the test needs tied maxima"
    state = torch.get_rng_state()
    got = sample(x, temperature, 250)
    assert torch.equal(torch.get_rng_state(), state)  # greedy draws nothing
    expected = ref.sample_token(x.float(), use_sampling=True, temp=temperature, top_k=250)
    assert got.dtype == torch.int64 and got.shape == (6, 2)
    assert torch.equal(got, expected)
    assert torch.equal(got, ref.sample_token(x, use_sampling=False))


def test_greedy_takes_first_index_on_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 2.0, 2.0]])
    assert sample(x, 0.0, 0).tolist() == [1, 0, 2]
    assert sample(x.bfloat16(), torch.zeros(3), 5).tolist() == [1, 0, 2]
    assert sample(x[0], 0.0).item() == 1  # a single row [V] gives a 0-d result


# --- sampled, shared temperature: draw-for-draw parity ---


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("shape", [(4, 300), (3, 1, 300), (2, 3, 300), (300,)])
@pytest.mark.parametrize("temperature", [0.6, 1.0])
@pytest.mark.parametrize("top_k", [0, 25, 250, 1000])
def test_sampled_matches_reference(ref, device, shape, temperature, top_k):
    steps = [_logits(*shape, seed=i, device=device) for i in range(8)]
    torch.manual_seed(1234)
    if device == "cuda":
        torch.cuda.manual_seed(1234)
    expected = [ref.sample_token(x, use_sampling=True, temp=temperature, top_k=top_k) for x in steps]
    expected_state = _rng_state(device)
    torch.manual_seed(1234)
    if device == "cuda":
        torch.cuda.manual_seed(1234)
    got = [sample(x, temperature, top_k) for x in steps]
    assert torch.equal(_rng_state(device), expected_state)  # same RNG consumption
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.int64 and g.shape == shape[:-1]
        assert torch.equal(g, e)
    greedy = [x.argmax(-1) for x in steps]
    assert any(not torch.equal(g, a) for g, a in zip(got, greedy, strict=True))  # really sampled


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_top_p_matches_reference(ref, top_p):
    steps = [_logits(5, 120, seed=i, scale=1.5) for i in range(10)]
    torch.manual_seed(7)
    expected = [ref.sample_token(x, use_sampling=True, temp=0.8, top_k=25, top_p=top_p) for x in steps]
    torch.manual_seed(7)
    got = [sample(x, 0.8, 25, top_p=top_p) for x in steps]
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_bf16_logits_are_sampled_in_float32(ref):
    steps = [_logits(4, 2049, seed=i, dtype=torch.bfloat16) for i in range(8)]
    torch.manual_seed(3)
    expected = [ref.sample_token(x.float(), use_sampling=True, temp=0.6, top_k=250) for x in steps]
    torch.manual_seed(3)
    got = [sample(x, 0.6, 250) for x in steps]
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_explicit_generator_matches_seeded_reference(ref):
    steps = [_logits(4, 500, seed=i) for i in range(6)]
    torch.manual_seed(99)
    expected = [ref.sample_token(x, use_sampling=True, temp=0.6, top_k=25) for x in steps]
    state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(99)
    got = [sample(x, 0.6, 25, generator=gen) for x in steps]
    assert torch.equal(torch.get_rng_state(), state)  # the default generator is untouched
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_uniform_tensor_temperature_is_the_scalar_path(ref):
    steps = [_logits(6, 2, 400, seed=i) for i in range(6)]
    torch.manual_seed(5)
    expected = [ref.sample_token(x, use_sampling=True, temp=0.6, top_k=250) for x in steps]
    torch.manual_seed(5)
    got = [sample(x, torch.full((6,), 0.6), 250) for x in steps]
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


# --- per-row temperatures ---


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("top_k", [0, 25])
def test_mixed_row_temperatures(ref, device, top_k):
    temps = [0.0, 0.6, -1.0, 1.0, 0.6, 2.0, 0.0, 1.0]
    B = len(temps)
    for step in range(6):
        x = _logits(B, 3, 200, seed=step, device=device)
        torch.manual_seed(step)
        got = sample(x, torch.tensor(temps, device=device), top_k)
        after = _rng_state(device)
        for t in sorted(set(temps)):
            rows = [b for b, tb in enumerate(temps) if tb == t]
            torch.manual_seed(step)
            full = ref.sample_token(x, use_sampling=t > 0, temp=t, top_k=top_k)
            assert torch.equal(got[rows], full[rows]), f"rows at temperature {t}"
            if t > 0:
                assert torch.equal(_rng_state(device), after)  # one [N, k] block, like the reference


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_per_row_scaling_is_bitwise_the_scalar_division(device):
    from dsm.nn.sampling import _resolve_temperature, _scale  # the bits are not observable in the tokens

    x = _logits(5, 2, 4000, seed=3, scale=7.0, device=device)
    temps = [0.6, 0.7, 0.0, 1.3, 0.45]
    resolved = _resolve_temperature(torch.tensor(temps), x.shape[:-1], x.device)
    assert resolved.rows is not None
    scaled = _scale(x, resolved)
    for b, t in enumerate(temps):
        if t > 0:
            assert torch.equal(scaled[b], x[b] / t), f"row {b}"
    assert not torch.equal(x[0] / 0.6, x[0] * (1 / 0.6)) or device == "cuda"  # the check is sensitive
    one = _resolve_temperature(torch.tensor([0.6, 0.0, 0.6, 0.6, 0.6]), x.shape[:-1], x.device)
    assert one.rows is None and one.scalar is not None
    assert torch.equal(_scale(x, one)[0], x[0] / 0.6)


def test_row_temperatures_as_list_and_prefix_shape(ref):
    x = _logits(3, 2, 300, seed=11)
    temps = [0.6, 0.0, 1.5]
    torch.manual_seed(0)
    from_list = sample(x, temps, 25)
    torch.manual_seed(0)
    from_tensor = sample(x, torch.tensor(temps, dtype=torch.float64), 25)
    assert torch.equal(from_list, from_tensor)
    torch.manual_seed(0)
    per_row = sample(x, torch.tensor(temps)[:, None].expand(3, 2), 25)
    assert torch.equal(from_list, per_row)
    assert torch.equal(from_list[1], x[1].argmax(-1))


def test_all_greedy_rows_draw_nothing():
    x = _logits(4, 50, seed=0)
    state = torch.get_rng_state()
    assert torch.equal(sample(x, torch.tensor([0.0, -2.0, 0.0, 0.0]), 25), x.argmax(-1))
    assert torch.equal(torch.get_rng_state(), state)


# --- distribution ---


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew a token outside the candidates"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 4, 0.0), (1.3, 0, 0.0), (1.0, 0, 0.8)])
def test_distribution_matches_softmax(temperature, top_k, top_p):
    logits = torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0, 1.2])
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)
    if top_k:
        probs[order[top_k:]] = 0
    if top_p:
        before = probs[order].cumsum(0) - probs[order]
        probs[order[before > top_p]] = 0
    probs /= probs.sum()
    n = 60_000
    tokens = sample(logits.expand(n, 6), temperature, top_k, torch.Generator().manual_seed(0), top_p=top_p)
    assert _chi_square(tokens, probs) < 35.0  # about p = 1e-6 with at most 5 degrees of freedom


def test_per_row_temperatures_follow_their_own_distribution():
    logits = torch.tensor([1.0, 0.5, 2.0, -1.0, 0.0, 1.2])
    n = 40_000
    temps = torch.tensor([0.5, 3.0]).repeat_interleave(n)
    tokens = sample(logits.expand(2 * n, 6), temps, 0, torch.Generator().manual_seed(1))
    for i, t in enumerate([0.5, 3.0]):
        assert _chi_square(tokens[i * n : (i + 1) * n], torch.softmax(logits / t, -1)) < 35.0
    # and the check can fail: the hot rows do not follow the cold distribution
    assert _chi_square(tokens[n:], torch.softmax(logits / 0.5, -1)) > 1000.0


# --- per-slot generators ---


def _generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("top_k", [0, 25])
def test_per_slot_streams_are_independent(ref, top_k):
    seeds = [10, 11, 12, 13]
    steps = [_logits(4, 1, 300, seed=i) for i in range(10)]
    state = torch.get_rng_state()
    gens = _generators(seeds)
    batched = torch.stack([sample_per_slot(x, 0.6, top_k, gens) for x in steps], dim=1)  # [4, T, 1]
    assert torch.equal(torch.get_rng_state(), state)
    for b, seed in enumerate(seeds):
        (alone,) = _generators([seed])
        solo = torch.stack([sample_per_slot(x[b : b + 1], 0.6, top_k, [alone]) for x in steps], dim=1)
        assert torch.equal(solo[0], batched[b])
        torch.manual_seed(seed)
        expected = torch.stack(
            [ref.sample_token(x[b : b + 1], use_sampling=True, temp=0.6, top_k=top_k) for x in steps], dim=1
        )
        assert torch.equal(batched[b], expected[0])
    assert len({tuple(row.flatten().tolist()) for row in batched}) == 4  # the slots really differ


def test_per_slot_greedy_slot_keeps_its_generator_and_others_are_unaffected():
    x = _logits(3, 200, seed=4)
    gens = _generators([1, 2, 3])
    before = [g.get_state() for g in gens]
    got = sample_per_slot(x, torch.tensor([0.8, 0.0, 1.2]), 25, gens)
    assert got[1] == x[1].argmax()
    assert torch.equal(gens[1].get_state(), before[1])  # greedy: no draw
    assert not torch.equal(gens[0].get_state(), before[0])
    # slot 0 and 2 give the same tokens when the other slots change temperature or are absent
    other = sample_per_slot(x, torch.tensor([0.8, 1.7, 1.2]), 25, _generators([1, 5, 3]))
    assert other[0] == got[0] and other[2] == got[2]
    (g2,) = _generators([3])
    assert sample_per_slot(x[2:], 1.2, 25, [g2])[0] == got[2]


def test_per_slot_none_uses_default_generator(ref):
    x = _logits(3, 300, seed=8)
    torch.manual_seed(21)
    expected = ref.sample_token(x[1:2], use_sampling=True, temp=0.6, top_k=25)
    after = torch.get_rng_state()
    torch.manual_seed(21)
    got = sample_per_slot(x, 0.6, 25, [torch.Generator().manual_seed(0), None, torch.Generator()])
    assert got[1] == expected[0]
    assert torch.equal(torch.get_rng_state(), after)


def test_per_slot_all_greedy():
    x = _logits(3, 2, 40, seed=2)
    gens = _generators([1, 2, 3])
    assert torch.equal(sample_per_slot(x, 0.0, 25, gens), x.argmax(-1))
    assert torch.equal(gens[0].get_state(), _generators([1])[0].get_state())


# --- errors ---


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"temperature": float("nan")}, "finite"),
        ({"temperature": float("inf")}, "finite"),
        ({"temperature": torch.tensor([0.5, float("inf")])}, "finite"),
        ({"temperature": torch.ones(3)}, "prefix"),
        ({"temperature": [0.5, 0.5, 0.5]}, "prefix"),
        ({"temperature": torch.ones(2, 5)}, "prefix"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": torch.ones(2, dtype=torch.bool)}, "real"),
        ({"logits": torch.zeros(2, 5, dtype=torch.long)}, "floating"),
        ({"logits": torch.tensor(1.0)}, "dims"),
        ({"logits": torch.zeros(2, 0)}, "empty"),
        ({"logits": [[0.0, 1.0]]}, "Tensor"),
    ],
)
def test_sample_errors(kwargs, match):
    args = {"logits": torch.zeros(2, 5), "temperature": 0.7, "top_k": 3} | kwargs
    with pytest.raises(InputError, match=match):
        sample(**args)


def test_per_slot_errors():
    x = torch.zeros(2, 5)
    with pytest.raises(InputError, match="2 slots"):
        sample_per_slot(x, 0.7, 3, [None])
    with pytest.raises(InputError, match="sequence"):
        sample_per_slot(x, 0.7, 3, torch.Generator())
    with pytest.raises(InputError, match="torch.Generator"):
        sample_per_slot(x, 0.7, 3, [None, 3])
    with pytest.raises(InputError, match="dims"):
        sample_per_slot(x[0], 0.7, 3, [None])
    with pytest.raises(InputError, match="top_k"):
        sample_per_slot(x, 0.7, -2, [None, None])
    with pytest.raises(ValueError):  # InputError is a ValueError
        sample_per_slot(x, float("nan"), 3, [None, None])


def test_empty_batches():
    assert sample(torch.zeros(0, 5), 0.6, 3).shape == (0,)
    assert sample(torch.zeros(0, 2, 5), [], 3).shape == (0, 2)
    assert sample_per_slot(torch.zeros(0, 5), 0.6, 3, []).shape == (0,)
    assert sample_per_slot(torch.zeros(2, 0, 5), 0.6, 3, [None, None]).shape == (2, 0)
