"""LM conditioning (TTS): parity of dsm.lm.conditioners with the reference, key layout, and errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from dsm.errors import CheckpointError, InputError
from dsm.lm.conditioners import (
    Condition,
    ConditionAttributes,
    ConditionFuser,
    ConditionProvider,
    LUTConditioner,
    TensorCondition,
    TensorConditioner,
    null_attributes,
    sin_embedding,
)

os.environ.setdefault("NO_TORCH_COMPILE", "1")
os.environ.setdefault("NO_CUDA_GRAPH", "1")
if os.environ.get("DSM_REQUIRE_ORACLE") == "1":  # a missing oracle must fail, not skip
    import moshi.conditioners as ref_cond
    import moshi.conditioners.tensors as ref_tensors
    import moshi.conditioners.text as ref_text
    import moshi.models.loaders as ref_loaders
    import moshi.modules.transformer as ref_transformer
else:
    ref_cond = pytest.importorskip("moshi.conditioners", reason="reference package moshi not installed")
    ref_tensors = pytest.importorskip("moshi.conditioners.tensors")
    ref_text = pytest.importorskip("moshi.conditioners.text")
    ref_loaders = pytest.importorskip("moshi.models.loaders")
    ref_transformer = pytest.importorskip("moshi.modules.transformer")

CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]
# Verbatim from kyutai/tts-1.6b-en_fr config.json.
TTS_CONDITIONERS = {
    "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
    "cfg": {
        "type": "lut",
        "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": CFG_VALUES},
    },
    "control": {
        "type": "lut",
        "lut": {"dim": 2048, "n_bins": 1, "tokenizer": "noop", "possible_values": ["ok"]},
    },
}
TTS_FUSER = {
    "cross_attention_pos_emb": True,
    "cross_attention_pos_emb_scale": 1,
    "sum": ["control", "cfg"],
    "prepend": [],
    "cross": ["speaker_wavs"],
}
SPEAKER_DIM = 512


def build_pair(dim: int, seed: int = 0):
    """(reference provider, reference fuser, dsm provider loaded from the reference's state, dsm fuser)."""
    torch.manual_seed(seed)
    cfg = {"conditioners": copy.deepcopy(TTS_CONDITIONERS), "fuser": copy.deepcopy(TTS_FUSER)}
    ref = ref_loaders.get_conditioner_provider(dim, "cpu", cfg)
    ref_fuser = ref_loaders.get_condition_fuser(cfg)
    with torch.no_grad():
        for p in ref.parameters():  # random, of a realistic size, and distinct from any default init
            p.normal_(0.0, 0.5)
    ours = ConditionProvider.from_config(copy.deepcopy(TTS_CONDITIONERS), output_dim=dim)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ref_fuser, ours, ConditionFuser.from_config(TTS_FUSER)


@pytest.fixture(scope="module")
def pair64():
    return build_pair(64)


def speaker(length: int, seed: int, masked: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random [1, T, 512] speaker tensor and its [1, T] mask (False on `masked`, zeros there)."""
    g = torch.Generator().manual_seed(seed)
    tensor = torch.randn(1, length, SPEAKER_DIM, generator=g)
    mask = torch.ones(1, length, dtype=torch.bool)
    if masked is not None:
        tensor[:, masked] = 0
        mask[:, masked] = False
    return tensor, mask


def item(cfg: str | None, control: str | None, spk: tuple[torch.Tensor, torch.Tensor] | None):
    """The same batch item as (reference ConditionAttributes, dsm ConditionAttributes)."""
    text = {"cfg": cfg, "control": control}
    if spk is None:  # dsm: None = absent; the reference's equivalent is a zero-length tensor.
        empty = torch.zeros(1, 0, SPEAKER_DIM)
        ref_spk = ref_cond.TensorCondition(empty, torch.zeros(1, 0, dtype=torch.bool))
        ours_spk = None
    else:
        ref_spk = ref_cond.TensorCondition(spk[0].clone(), spk[1].clone())
        ours_spk = TensorCondition(spk[0].clone(), spk[1].clone())
    return (
        ref_cond.ConditionAttributes(text=dict(text), tensor={"speaker_wavs": ref_spk}),
        ConditionAttributes(text=dict(text), tensor={"speaker_wavs": ours_spk}),
    )


def tts_voice_slots(length: int, voices: int, seed: int, max_speakers: int = 5):
    """`make_condition_attributes`-style speaker input: [1, 5*T, 512], unused slots zero and masked."""
    tensor = torch.zeros(1, max_speakers, length, SPEAKER_DIM)
    mask = torch.zeros(1, max_speakers, length, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    for i in range(voices):
        tensor[0, i] = torch.randn(length, SPEAKER_DIM, generator=g)
        mask[0, i] = True
    return tensor.view(1, -1, SPEAKER_DIM), mask.view(1, -1)


BATCHES = {
    "single": [("2.5", "ok", speaker(10, 1))],
    "mixed": [
        ("1.0", "ok", speaker(3, 2)),
        ("2.5", "ok", speaker(7, 3, masked=slice(5, 7))),
        ("4.0", None, speaker(5, 4)),
        (None, "ok", None),
    ],
    "no_speaker": [("3.5", "ok", None), ("1.5", "ok", None)],
    "tts_voices": [("2.0", "ok", tts_voice_slots(6, 1, 5)), ("1.0", "ok", tts_voice_slots(6, 2, 6))],
}


def make_batch(name: str):
    pairs = [item(*spec) for spec in BATCHES[name]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def assert_close(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} != {expected.dtype}"
    diff = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    assert diff <= 1e-6, f"{what}: max abs diff {diff}"


def check_parity(ref, ref_fuser, ours, fuser, ref_attrs, our_attrs, exact: bool = True):
    expected = ref.prepare_and_provide(ref_attrs)
    with torch.no_grad():
        got = ours(our_attrs)
    assert set(got) == set(expected) == {"cfg", "control", "speaker_wavs"}
    for name, (emb, mask) in expected.items():
        assert isinstance(got[name], Condition)
        assert torch.equal(got[name].mask, mask), name
        if exact:
            assert torch.equal(got[name].emb, emb), name
        assert_close(got[name].emb, emb, name)
    for method in ("get_sum", "get_cross"):
        want, have = getattr(ref_fuser, method)(expected), getattr(fuser, method)(got)
        assert have.dtype == torch.float32
        if exact:
            assert torch.equal(have, want), method
        assert_close(have, want, method)
    return got


def test_state_dict_keys_match_reference(pair64):
    ref, _, ours, _ = pair64
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert set(our_state) == set(ref_state)
    # As in the LM checkpoint (model-spec §2.9), after stripping `condition_provider.`.
    assert sorted(our_state) == sorted(
        f"conditioners.{name}.{leaf}"
        for name, leaves in {
            "cfg": ["embed.weight", "output_proj.weight", "learnt_padding"],
            "control": ["embed.weight", "output_proj.weight", "learnt_padding"],
            "speaker_wavs": ["output_proj.weight", "learnt_padding"],
        }.items()
        for leaf in leaves
    )
    for key, value in ref_state.items():
        assert our_state[key].shape == value.shape, key
        assert our_state[key].dtype == torch.float32, key
        assert torch.equal(our_state[key], value), key
    assert our_state["conditioners.cfg.embed.weight"].shape == (8, 16)
    assert our_state["conditioners.control.embed.weight"].shape == (2, 2048)
    assert our_state["conditioners.speaker_wavs.output_proj.weight"].shape == (64, 512)
    assert our_state["conditioners.control.learnt_padding"].shape == (1, 1, 64)
    assert dict(ConditionFuser.from_config(TTS_FUSER).state_dict()) == {}
    assert ours.text_conditions == ["cfg", "control"]
    assert ours.tensor_conditions == ["speaker_wavs"]
    assert ours.conditioners["cfg"].possible_values == CFG_VALUES


@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_provider_and_fuser_match_reference(pair64, batch):
    ref_attrs, our_attrs = make_batch(batch)
    got = check_parity(*pair64, ref_attrs, our_attrs)
    lengths = [0 if spec[2] is None else spec[2][0].shape[1] for spec in BATCHES[batch]]
    assert got["speaker_wavs"].emb.shape == (len(lengths), max(lengths), 64)
    assert got["cfg"].emb.shape == (len(lengths), 1, 64)


@pytest.mark.parametrize("batch", ["mixed", "tts_voices"])
def test_null_and_cfg_batches_match_reference(pair64, batch):
    ref, _, ours, _ = pair64
    ref_attrs, our_attrs = make_batch(batch)
    ref_null, our_null = ref_cond.dropout_all_conditions(ref_attrs), null_attributes(our_attrs)
    got = check_parity(*pair64, ref_null, our_null)
    for name, (emb, mask) in got.items():  # everything became learnt padding
        assert not mask.any(), name
        pad = ours.conditioners[name].learnt_padding
        assert torch.equal(emb, pad.expand_as(emb)), name
    # the originals are untouched, and conditional + null branches batch together (real CFG).
    assert our_attrs[0].text["cfg"] == BATCHES[batch][0][0]
    check_parity(*pair64, ref_attrs + ref_null, our_attrs + our_null)


def test_real_lm_dim(pair64):
    pair = build_pair(2048, seed=1)
    ref_attrs, our_attrs = make_batch("mixed")
    check_parity(*pair, ref_attrs, our_attrs)
    ref_attrs, our_attrs = make_batch("tts_voices")
    check_parity(*pair, ref_attrs, our_attrs)


def test_parity_checks_can_fail(pair64):
    ref, ref_fuser, _, fuser = pair64
    ours = ConditionProvider.from_config(TTS_CONDITIONERS, output_dim=64)
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ours.conditioners["cfg"].learnt_padding.add_(1e-3)
    with pytest.raises(AssertionError):
        check_parity(ref, ref_fuser, ours, fuser, *make_batch("mixed"))
    with pytest.raises(AssertionError):  # a different fuser (no position embedding) is caught too
        ours.load_state_dict(ref.state_dict())
        no_pos = ConditionFuser.from_config({**TTS_FUSER, "cross_attention_pos_emb": False})
        check_parity(ref, ref_fuser, ours, no_pos, *make_batch("single"))


@pytest.mark.parametrize(
    "fuser_cfg",
    [
        {
            "sum": ["cfg", "control", "cfg"],
            "cross": ["speaker_wavs", "cfg", "speaker_wavs"],
            "cross_attention_pos_emb": True,
            "cross_attention_pos_emb_scale": 0.37,
        },
        {"sum": ["control"], "cross": ["speaker_wavs"], "cross_attention_pos_emb": False},
        {"cross": ["speaker_wavs"], "cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 3},
    ],
)
def test_fuser_variants_match_reference(pair64, fuser_cfg):
    ref, _, ours, _ = pair64
    ref_fuser = ref_loaders.get_condition_fuser({"fuser": copy.deepcopy(fuser_cfg)})
    fuser = ConditionFuser.from_config(fuser_cfg)
    ref_attrs, our_attrs = make_batch("mixed")
    expected, got = ref.prepare_and_provide(ref_attrs), ours(our_attrs)
    want_sum, have_sum = ref_fuser.get_sum(expected), fuser.get_sum(got)
    assert (want_sum is None) == (have_sum is None)
    if want_sum is not None:
        assert torch.equal(have_sum, want_sum)
    assert torch.equal(fuser.get_cross(got), ref_fuser.get_cross(expected))


@pytest.mark.parametrize("dim", [4, 64, 2048])
def test_sin_embedding_matches_reference(dim):
    positions = torch.arange(37).view(1, -1, 1)
    assert torch.equal(sin_embedding(37, dim), ref_transformer.create_sin_embedding(positions, dim))


def test_hash_trick_and_no_projection_variants():
    torch.manual_seed(3)
    ref = ref_text.LUTConditioner(n_bins=5, dim=8, output_dim=16, tokenizer="noop", device="cpu")
    ours = LUTConditioner(5, 8, 16)
    ours.load_state_dict(ref.state_dict(), strict=True)
    values = ["rock", "jazz", None, "Jeff Buckley", "rock"]
    tokens, mask = ref.prepare(values)
    emb, ref_mask = ref(ref.prepare(values))
    got = ours(values)
    assert torch.equal(ours.tokenize(values)[0], tokens.long())
    assert torch.equal(got.mask, ref_mask) and torch.equal(got.emb, emb)

    ref_t = ref_tensors.TensorConditioner(
        dim=16, output_dim=16, device="cpu", force_linear=False, learn_padding=False
    )
    ours_t = ConditionProvider.from_config(
        {"x": {"type": "tensor", "tensor": {"dim": 16, "force_linear": False, "learn_padding": False}}}, 16
    ).conditioners["x"]
    assert isinstance(ours_t, TensorConditioner) and not list(ours_t.parameters())
    x = torch.randn(2, 3, 16)
    m = torch.tensor([[True, True, False], [True, False, False]])
    want = ref_t(ref_cond.TensorCondition(x, m))
    have = ours_t(TensorCondition(x, m))
    assert torch.equal(have.emb, want.condition) and torch.equal(have.mask, want.mask)


def test_attribute_normalisation_and_collation():
    t = torch.randn(4, SPEAKER_DIM)
    a = ConditionAttributes(text={"cfg": "1.0"}, tensor={"s": t})  # bare [T, D] tensor: all-True mask
    assert a.tensor["s"].tensor.shape == (1, 4, SPEAKER_DIM) and a.tensor["s"].mask.all()
    b = ConditionAttributes(tensor={"s": (t[:2], torch.tensor([True, False]))})
    batch = TensorCondition.cat([a.tensor["s"], b.tensor["s"], None], SPEAKER_DIM)
    assert batch.tensor.shape == (3, 4, SPEAKER_DIM)
    assert batch.mask.tolist() == [[True] * 4, [True, False, False, False], [False] * 4]
    assert torch.equal(batch.tensor[1, :2], t[:2])
    assert not batch.tensor[1, 2:].any() and not batch.tensor[2].any()
    n = a.null()
    assert n.text == {"cfg": None} and not n.tensor["s"].tensor.any() and not n.tensor["s"].mask.any()
    assert a.text == {"cfg": "1.0"} and a.tensor["s"].mask.all()


def test_unknown_lut_value(pair64):
    _, _, ours, _ = pair64
    _, attrs = item("5.0", "ok", None)
    with pytest.raises(InputError, match=r"'5\.0'.*'1\.0', '1\.5'"):
        ours([attrs])
    _, attrs = item("2.0", "OK", None)
    with pytest.raises(InputError, match="'ok'"):
        ours([attrs])


def test_missing_and_malformed_attributes(pair64):
    _, _, ours, fuser = pair64
    with pytest.raises(InputError, match="lacks the text condition 'control'"):
        ours([ConditionAttributes(text={"cfg": "1.0"}, tensor={"speaker_wavs": None})])
    with pytest.raises(InputError, match="lacks the tensor condition 'speaker_wavs'"):
        ours([ConditionAttributes(text={"cfg": "1.0", "control": "ok"})])
    with pytest.raises(InputError, match="given as a text condition"):
        ours([ConditionAttributes(text={"cfg": None, "control": None, "speaker_wavs": "x"})])
    with pytest.raises(InputError, match="non-empty list"):
        ours([])
    with pytest.raises(InputError, match="non-empty list"):
        ours(item("1.0", "ok", None)[1])
    with pytest.raises(InputError, match=r"\[B, T, 512\]"):
        ours([ConditionAttributes({"cfg": None, "control": None}, {"speaker_wavs": torch.zeros(3, 8)})])
    with pytest.raises(InputError, match="one batch item"):
        ConditionAttributes(tensor={"s": torch.zeros(2, 3, 8)})
    with pytest.raises(InputError, match="mask"):
        ConditionAttributes(tensor={"s": (torch.zeros(1, 3, 8), torch.ones(1, 2, dtype=torch.bool))})
    with pytest.raises(InputError, match="string or None"):
        ConditionAttributes(text={"cfg": 2.0})
    with pytest.raises(InputError, match="'cfg' is missing"):
        fuser.get_sum({"control": Condition(torch.zeros(1, 1, 64), torch.ones(1, 1, dtype=torch.bool))})


def test_config_errors():
    def conds(entry):
        return {"x": entry}

    def lut(**kwargs):
        return {"type": "lut", "lut": {"dim": 4, **kwargs}}

    with pytest.raises(CheckpointError, match="unknown conditioner type 'wav'"):
        ConditionProvider.from_config(conds({"type": "wav", "wav": {"dim": 4}}), 8)
    with pytest.raises(RuntimeError, match="Unknow conditioner type"):  # the reference refuses it too
        ref_loaders.get_conditioner_provider(8, "cpu", {"conditioners": conds({"type": "wav", "wav": {}})})
    with pytest.raises(CheckpointError, match="'type'"):
        ConditionProvider.from_config(conds({"lut": {}}), 8)
    with pytest.raises(CheckpointError, match="missing the 'lut'"):
        ConditionProvider.from_config(conds({"type": "lut"}), 8)
    with pytest.raises(CheckpointError, match="unsupported config keys"):
        ConditionProvider.from_config(conds({"type": "tensor", "tensor": {"dim": 4, "foo": 1}}), 8)
    with pytest.raises(CheckpointError, match="missing config keys"):
        ConditionProvider.from_config(conds({"type": "lut", "lut": {"dim": 4}}), 8)
    with pytest.raises(CheckpointError, match="3 possible values for 2 bins"):
        ConditionProvider.from_config(conds(lut(n_bins=2, possible_values=["a", "b", "c"])), 8)
    with pytest.raises(CheckpointError, match="tokenizer"):
        ConditionProvider.from_config(conds(lut(n_bins=2, tokenizer="bpe")), 8)
    with pytest.raises(CheckpointError, match="output_bias"):
        ConditionProvider.from_config(conds({"type": "tensor", "tensor": {"dim": 4, "output_bias": True}}), 8)
    with pytest.raises(CheckpointError, match="possible_values"):
        ConditionProvider.from_config(conds(lut(n_bins=2, possible_values=[1.0, 2.0])), 8)
    with pytest.raises(CheckpointError, match="prepend"):
        ConditionFuser.from_config({**TTS_FUSER, "prepend": ["cfg"]})
    with pytest.raises(CheckpointError, match="unsupported config keys"):
        ConditionFuser.from_config({**TTS_FUSER, "concat": []})
    # Keys the reference loader overrides or that only shape initialisation are accepted.
    provider = ConditionProvider.from_config(
        conds({"type": "tensor", "tensor": {"dim": 4, "output_dim": 3, "pad_empty": True}}), 8
    )
    assert provider.conditioners["x"].output_proj.weight.shape == (8, 4)
    empty = ConditionFuser.from_config({})
    assert empty.get_sum({}) is None and empty.get_cross({}) is None and not empty.has_conditions
