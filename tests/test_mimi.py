"""Mimi parity with the reference implementation, streaming behaviour, and loader errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dsm.codec import Mimi, MimiConfig, load_mimi, save_mimi
from dsm.errors import CheckpointError, InputError

oracle = pytest.importorskip("oracle")

FRAME = 1920


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(reference Mimi, dsm Mimi loaded from the reference's weights in Kyutai's layout)."""
    torch.set_num_threads(2)
    ref = oracle.reference_mimi(seed=0)
    path = oracle.export_mimi(ref, tmp_path_factory.mktemp("mimi") / "mimi.safetensors")
    return ref, load_mimi(path)


@pytest.fixture(scope="module")
def wav():
    return oracle.test_signal(2, 12 * FRAME + 700, seed=5)  # not a whole number of frames


@pytest.mark.parametrize("n_q", [8, 32])
def test_encode_matches_reference(pair, wav, n_q):
    ref, ours = pair
    ref.set_num_codebooks(n_q)
    with torch.no_grad():
        expected = ref.encode(wav)
        got = ours.encode(wav, n_q=n_q)
    assert got.dtype == torch.int64
    assert got.shape == expected.shape == (2, n_q, 13)
    assert torch.equal(got, expected)
    assert len(torch.unique(got[:, 0])) > 3, "codes should vary with the input"


@pytest.mark.parametrize("n_q", [8, 32])
def test_decode_matches_reference(pair, wav, n_q):
    ref, ours = pair
    ref.set_num_codebooks(32)
    with torch.no_grad():
        codes = ref.encode(wav)[:, :n_q]
        expected = ref.decode(codes)
        got = ours.decode(codes)
    assert got.shape == expected.shape == (2, 1, 13 * FRAME)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 1e-3


def test_latent_matches_reference(pair, wav):
    ref, ours = pair
    with torch.no_grad():
        expected = ref.encode_to_latent(wav, quantize=False)
        got = ours.encode_to_latent(wav)
    assert (got - expected).abs().max().item() <= 1e-5


def _stream_encode(ours: Mimi, wav: torch.Tensor, chunks: list[int], exact: bool = True) -> torch.Tensor:
    enc = ours.streaming_encoder(wav.shape[0], exact=exact)
    out, start = [], 0
    for n in chunks:
        out.append(enc.step(wav[..., start * FRAME : (start + n) * FRAME]))
        start += n
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize("chunks", [[1] * 12, [1, 3, 2, 5, 1]], ids=["frame-by-frame", "uneven"])
def test_streaming_encode_equals_one_shot(pair, wav, chunks):
    _, ours = pair
    x = wav[..., : 12 * FRAME]
    with torch.no_grad():
        one_shot = ours.encode(x)
    assert torch.equal(_stream_encode(ours, x, chunks, exact=True), one_shot)


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_streaming_agrees_with_exact(pair, batch):
    """The default (fast) streaming kernels differ from the reference's only by float rounding."""
    _, ours = pair
    x = oracle.test_signal(batch, 12 * FRAME, seed=40 + batch)
    exact, fast = ours.streaming_encoder(batch, exact=True), ours.streaming_encoder(batch)
    chunks = [1, 2, 1, 3, 5]
    start, worst, same, total = 0, 0.0, 0, 0
    for n in chunks:
        piece = x[..., start * FRAME : (start + n) * FRAME]
        a, b = exact.step_latent(piece), fast.step_latent(piece)
        worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
        codes_a = ours.quantizer.encode(a, 32, exact=True)
        codes_b = ours.quantizer.encode(b, 32, exact=False)
        same += (codes_a == codes_b).sum().item()
        total += codes_a.numel()
        start += n
    assert worst <= 1e-5
    assert same / total >= 0.99
    dec_exact, dec_fast = ours.streaming_decoder(batch, exact=True), ours.streaming_decoder(batch)
    codes = ours.encode(x)
    for k in range(0, 12, 3):
        a, b = dec_exact.step(codes[..., k : k + 3]), dec_fast.step(codes[..., k : k + 3])
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("chunks", [[1] * 12, [2, 1, 4, 5]], ids=["frame-by-frame", "uneven"])
def test_streaming_decode_equals_one_shot(pair, wav, chunks):
    _, ours = pair
    with torch.no_grad():
        codes = ours.encode(wav[..., : 12 * FRAME])
        one_shot = ours.decode(codes)
    dec = ours.streaming_decoder(2, exact=True)
    out, start = [], 0
    for n in chunks:
        out.append(dec.step(codes[..., start : start + n]))
        start += n
    assert (torch.cat(out, dim=-1) - one_shot).abs().max().item() <= 1e-5


def test_streaming_matches_reference_streaming(pair, wav):
    ref, ours = pair
    ref.set_num_codebooks(32)
    x = wav[..., : 6 * FRAME]
    with torch.no_grad(), ref.streaming(2):
        expected = torch.cat([ref.encode(x[..., k * FRAME : (k + 1) * FRAME]) for k in range(6)], dim=-1)
    with torch.no_grad(), ref.streaming(2):
        expected_wav = torch.cat([ref.decode(expected[..., k : k + 1]) for k in range(6)], dim=-1)
    assert torch.equal(_stream_encode(ours, x, [1] * 6), expected)
    dec = ours.streaming_decoder(2, exact=True)
    got_wav = torch.cat([dec.step(expected[..., k : k + 1]) for k in range(6)], dim=-1)
    assert (got_wav - expected_wav).abs().max().item() <= 1e-5


def test_batch_with_midway_reset_equals_separate_runs(pair):
    _, ours = pair
    a, b, c = (oracle.test_signal(1, 8 * FRAME, seed=s) for s in (11, 12, 13))
    b_restart = oracle.test_signal(1, 8 * FRAME, seed=14)
    with torch.no_grad():
        separate = [ours.encode(x) for x in (a, b, c)]
        separate_restart = ours.encode(b_restart[..., : 4 * FRAME])
    enc = ours.streaming_encoder(3, exact=True)
    got = []
    for k in range(8):
        if k == 4:
            enc.reset([1])
        second = b if k < 4 else b_restart
        kk = k if k < 4 else k - 4
        batch = torch.cat(
            [x[..., k * FRAME : (k + 1) * FRAME] for x in (a,)]
            + [second[..., kk * FRAME : (kk + 1) * FRAME]]
            + [c[..., k * FRAME : (k + 1) * FRAME]]
        )
        got.append(enc.step(batch))
    got = torch.cat(got, dim=-1)
    assert torch.equal(got[0:1], separate[0])
    assert torch.equal(got[2:3], separate[2])
    assert torch.equal(got[1:2, :, :4], separate[1][..., :4])
    assert torch.equal(got[1:2, :, 4:], separate_restart)
    assert enc.frames.tolist() == [8, 4, 8]

    # Decoder: stream 0 restarted midway on new codes equals a fresh one-shot decode of those codes.
    codes = torch.cat(separate)
    with torch.no_grad():
        fresh = ours.decode(codes[0:1, :, 4:])
        whole = ours.decode(codes)
    dec = ours.streaming_decoder(3, exact=True)
    outs = []
    for k in range(8):
        if k == 4:
            dec.reset(torch.tensor([True, False, False]))
        outs.append(dec.step(codes[..., k : k + 1]))
    out = torch.cat(outs, dim=-1)
    assert (out[0:1, :, 4 * FRAME :] - fresh).abs().max().item() <= 1e-5
    assert (out[1:] - whole[1:]).abs().max().item() <= 1e-5


def test_idle_streams_keep_their_state(pair):
    _, ours = pair
    x = oracle.test_signal(2, 6 * FRAME, seed=21)
    with torch.no_grad():
        expected = ours.encode(x)
    enc = ours.streaming_encoder(2, exact=True)
    out0, out1 = [], []
    k1 = 0
    for k in range(6):
        # Stream 1 skips steps 2 and 3 (fed garbage it must ignore), then resumes where it stopped.
        active = torch.tensor([True, k not in (2, 3)])
        garbage = torch.randn(1, 1, FRAME)
        frame1 = x[1:2, :, k1 * FRAME : (k1 + 1) * FRAME] if active[1] else garbage
        codes = enc.step(torch.cat([x[0:1, :, k * FRAME : (k + 1) * FRAME], frame1]), active=active)
        out0.append(codes[0:1])
        if active[1]:
            out1.append(codes[1:2])
            k1 += 1
    assert torch.equal(torch.cat(out0, -1), expected[0:1])
    assert torch.equal(torch.cat(out1, -1), expected[1:2, :, :k1])


def test_streaming_past_the_attention_ring_matches_reference(tmp_path):
    """A short context (8 steps at 25 Hz) makes the K/V ring wrap within a few frames; the streamed
    codes and audio must follow the reference's ring semantics exactly."""
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    cfg["transformer"]["context"] = 8
    cfg["transformer"]["num_layers"] = 2
    torch.manual_seed(3)
    ref = loaders.get_mimi(None, mimi_config=cfg, device="cpu", num_codebooks=32)
    oracle.randomize_mimi(ref, seed=3)
    path = oracle.export_mimi(ref, tmp_path / "small.safetensors")
    ours = load_mimi(path, config=MimiConfig(context=8, num_layers=2))
    x = oracle.test_signal(1, 10 * FRAME, seed=8)
    with torch.no_grad(), ref.streaming(1):
        expected = torch.cat([ref.encode(x[..., k * FRAME : (k + 1) * FRAME]) for k in range(10)], -1)
    with torch.no_grad(), ref.streaming(1):
        expected_wav = torch.cat([ref.decode(expected[..., k : k + 1]) for k in range(10)], -1)
    assert torch.equal(_stream_encode(ours, x, [1] * 10), expected)
    dec = ours.streaming_decoder(1, exact=True)
    got_wav = torch.cat([dec.step(expected[..., k : k + 1]) for k in range(10)], -1)
    assert (got_wav - expected_wav).abs().max().item() <= 1e-5


# -- errors -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = Mimi(MimiConfig(num_layers=1))
    path = tmp_path_factory.mktemp("ckpt") / "mimi.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_loader_reports_missing_and_unexpected_keys(small_checkpoint, tmp_path):
    state = load_file(str(small_checkpoint))
    state.pop("decoder.model.0.conv.conv.bias")
    state["decoder.model.99.conv.conv.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointError) as err:
        load_mimi(bad, config=MimiConfig(num_layers=1))
    message = str(err.value)
    assert "missing keys: decoder.model.0.conv.conv.bias" in message
    assert "unexpected keys: decoder.model.99.conv.conv.weight" in message


def test_loader_reports_wrong_shapes(small_checkpoint, tmp_path):
    state = load_file(str(small_checkpoint))
    state["downsample.conv.conv.conv.weight"] = torch.zeros(512, 512, 3)
    bad = tmp_path / "shape.safetensors"
    save_file(state, str(bad))
    with pytest.raises(
        CheckpointError, match=r"downsample.conv.conv.conv.weight: checkpoint \[512, 512, 3\]"
    ):
        load_mimi(bad, config=MimiConfig(num_layers=1))


def test_loader_accepts_legacy_names(small_checkpoint, tmp_path):
    state = load_file(str(small_checkpoint))
    legacy = {}
    for key, value in state.items():
        key = key.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
        key = key.replace("_codebook.cluster_usage", "_codebook.cluster_size")
        key = key.replace("_codebook.embedding_sum", "_codebook.embed_avg")
        legacy[key] = value
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(path))
    a = load_mimi(small_checkpoint, config=MimiConfig(num_layers=1))
    b = load_mimi(path, config=MimiConfig(num_layers=1))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_loader_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_mimi(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors"):
        load_mimi(junk)


def test_input_validation(small_checkpoint):
    mimi = load_mimi(small_checkpoint, config=MimiConfig(num_layers=1))
    with pytest.raises(InputError, match="shape"):
        mimi.encode(torch.zeros(FRAME))
    with pytest.raises(InputError, match="empty"):
        mimi.encode(torch.zeros(1, 1, 0))
    with pytest.raises(InputError, match="between 1 and 32"):
        mimi.encode(torch.zeros(1, 1, FRAME), n_q=33)
    with pytest.raises(InputError, match=r"\[0, 2047\]"):
        mimi.decode(torch.full((1, 8, 2), 2048))
    with pytest.raises(InputError, match=r"\[0, 2047\]"):
        mimi.decode(torch.full((1, 8, 2), -1))
    with pytest.raises(InputError, match="integers"):
        mimi.decode(torch.zeros(1, 8, 2))
    with pytest.raises(InputError, match="33 codebooks"):
        mimi.decode(torch.zeros(1, 33, 2, dtype=torch.long))
    enc = mimi.streaming_encoder(2)
    with pytest.raises(InputError, match="whole frames"):
        enc.step(torch.zeros(2, 1, 1000))
    with pytest.raises(InputError, match="expected 2 streams"):
        enc.step(torch.zeros(3, 1, FRAME))
    with pytest.raises(InputError, match="out of range"):
        enc.reset([5])


def test_bfloat16_mode_keeps_codebook_search_in_float32(tmp_path, pair):
    ref, _ = pair
    path = oracle.export_mimi(ref, tmp_path / "mimi.safetensors")
    fp32 = load_mimi(path)
    bf16 = load_mimi(path).to(torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert bf16.quantizer.rvq_first.input_proj.weight.dtype == torch.float32
    x = oracle.test_signal(1, 4 * FRAME, seed=31)
    with torch.no_grad():
        latent32, latent16 = fp32.encode_to_latent(x), bf16.encode_to_latent(x)
        codes = fp32.encode(x)
        audio32, audio16 = fp32.decode(codes), bf16.decode(codes)
    assert latent16.dtype == torch.float32
    assert ((latent16 - latent32).norm() / latent32.norm()).item() < 0.05
    assert ((audio16.float() - audio32).norm() / audio32.norm()).item() < 0.05
    assert bf16.streaming_encoder(1).step(x[..., :FRAME]).shape == (1, 32, 1)


def test_fresh_model_is_initialised():
    """A Mimi built without a checkpoint (e.g. to train) has proper random weights, not raw memory."""
    model = Mimi(MimiConfig(num_layers=1))
    weight = model.encoder_transformer.transformer.layers[0].self_attn.in_proj_weight
    bound = 1 / weight.shape[1] ** 0.5
    assert weight.abs().max().item() <= bound
    assert abs(weight.std().item() - bound / 3**0.5) < 0.1 * bound
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_codec_directory_carries_its_architecture(tmp_path):
    """A codec directory (mimi.safetensors + mimi_config.json, as `dsm train codec` exports and dsm's
    bundled codec ships) loads with its own architecture; an explicit config still wins."""
    cfg = MimiConfig(num_layers=1, n_q=8)
    directory = tmp_path / "codec"
    directory.mkdir()
    torch.manual_seed(0)
    save_mimi(Mimi(cfg), directory / "mimi.safetensors")
    (directory / "mimi_config.json").write_text(json.dumps(cfg.to_dict()))
    mimi = load_mimi(directory)
    assert mimi.cfg == cfg and mimi.total_codebooks == 8
    assert MimiConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    (directory / "mimi_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid Mimi config"):
        load_mimi(directory)
    with pytest.raises(InputError, match=r"unknown Mimi config keys: layers, seanet\.filters"):
        MimiConfig.from_dict({"layers": 2, "seanet": {"filters": 8}})
