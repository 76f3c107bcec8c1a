"""Codec training stages that start from a trained codec: the decoder-only stage keeps every code as it was
(so the STT and TTS trained on them stay valid), and its code noise draws near misses."""

from __future__ import annotations

import copy

import pytest
import torch
from train_fixtures import TINY_MIMI, codec_config_dict, make_assets

from dsm.audio import read_audio
from dsm.codec import MimiConfig, load_mimi
from dsm.errors import InputError
from dsm.train.codec import CodecTask
from dsm.train.config import parse_config
from dsm.train.loop import DistInfo
from dsm.train.run import train

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = copy.deepcopy(TINY_MIMI) | {"n_q": 4, "bins": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny codec trained from scratch (20 steps) and its corpus."""
    root = tmp_path_factory.mktemp("codec")
    assets = make_assets(root / "assets")
    raw = codec_config_dict(assets, root / "first", run={"max_steps": 20})
    train(parse_config(raw, "codec", root))
    return assets, root / "first" / "export" / "mimi.safetensors"


def _decoder_config(assets, init, out_dir, **codec):
    raw = codec_config_dict(assets, out_dir, run={"max_steps": 6, "save_every": 6})
    raw["codec"].update({"init": str(init), "decoder_only": True, **codec})
    return parse_config(raw, "codec", out_dir)


def test_decoder_only_with_code_noise_keeps_the_codes(trained, tmp_path):
    assets, init = trained
    train(_decoder_config(assets, init, tmp_path / "dec", code_noise=0.5, code_noise_neighbours=4))
    cfg = MimiConfig.from_dict(ARCH)
    before = load_mimi(init, config=cfg)
    after = load_mimi(tmp_path / "dec" / "export" / "mimi.safetensors", config=cfg)
    wav = torch.from_numpy(read_audio(str(next(assets["manifest"].parent.rglob("*.wav")))))[None, None]
    with torch.no_grad():
        assert torch.equal(before.encode(wav), after.encode(wav))
    a, b = before.state_dict(), after.state_dict()
    encoder_side = [k for k in a if k.startswith(("encoder", "downsample")) or "_codebook" in k]
    decoder_side = [k for k in a if k.startswith(("decoder", "upsample"))]
    assert encoder_side and all(torch.equal(a[k], b[k]) for k in encoder_side)
    assert any(not torch.equal(a[k], b[k]) for k in decoder_side)


def test_code_noise_draws_among_the_nearest_codewords(trained, tmp_path):
    assets, init = trained
    cfg = _decoder_config(assets, init, tmp_path / "n", code_noise=1.0, code_noise_neighbours=3)
    task = CodecTask(cfg, DistInfo())
    module = task.module
    vectors = task.mimi.quantizer.code_vectors().float()  # [4, 64, C]
    codes = torch.randint(64, (2, 4, 50))
    torch.manual_seed(0)
    noisy = module.perturb(codes)
    assert not torch.equal(noisy, codes)
    for level in range(4):
        dist = torch.cdist(vectors[level], vectors[level])
        dist.fill_diagonal_(float("inf"))
        nearest = dist.argsort(-1)[:, :3]  # [64, 3]
        old, new = codes[:, level].reshape(-1), noisy[:, level].reshape(-1)
        assert (nearest[old] == new[:, None]).any(-1).all()
    module.c.code_noise = 0.0
    assert torch.equal(module.perturb(codes), codes)


def test_code_noise_needs_a_frozen_codebook(trained, tmp_path):
    assets, init = trained
    raw = codec_config_dict(assets, tmp_path / "x")
    raw["codec"].update({"init": str(init), "code_noise": 0.5})
    with pytest.raises(InputError, match="code_noise needs decoder_only"):
        CodecTask(parse_config(raw, "codec", tmp_path), DistInfo())
    bad = _decoder_config(assets, init, tmp_path / "y", code_noise=0.5, code_noise_neighbours=64)
    with pytest.raises(InputError, match="code_noise_neighbours must lie in"):
        CodecTask(bad, DistInfo())


def test_decoder_only_learns_new_codebooks_after_the_inits(trained, tmp_path):
    """An init with 4 codebooks in a 6-codebook architecture: the first 4 codes stay exactly as they were,
    the 2 new codebooks are seeded and learned, and the decoder side trains."""
    assets, init = trained
    wide = ARCH | {"n_q": 6}
    train(_decoder_config(assets, init, tmp_path / "wide", arch=wide))
    before = load_mimi(init, config=MimiConfig.from_dict(ARCH))
    after = load_mimi(tmp_path / "wide" / "export", config=MimiConfig.from_dict(wide))
    assert after.total_codebooks == 6
    wav = torch.from_numpy(read_audio(str(next(assets["manifest"].parent.rglob("*.wav")))))[None, None]
    with torch.no_grad():
        old, new = before.encode(wav), after.encode(wav)
    assert torch.equal(new[:, :4], old)
    a, b = before.state_dict(), after.state_dict()
    assert all(
        torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder", "downsample")) or "_codebook" in k
    )
    for level in after.quantizer.rvq_rest.vq.layers[3:]:
        book = level._codebook
        assert float(book._initialized) == 1.0 and book.embedding_sum.abs().sum() > 0
    assert len(torch.unique(new[:, 4:])) > 1


def test_new_codebooks_need_decoder_only_and_no_code_noise(trained, tmp_path):
    assets, init = trained
    raw = codec_config_dict(assets, tmp_path / "x")
    raw["codec"].update({"init": str(init), "arch": ARCH | {"n_q": 6}})
    with pytest.raises(InputError, match="new codebooks are learned with decoder_only"):
        CodecTask(parse_config(raw, "codec", tmp_path), DistInfo())
    noisy = _decoder_config(
        assets, init, tmp_path / "y", code_noise=0.5, code_noise_neighbours=4, arch=ARCH | {"n_q": 6}
    )
    with pytest.raises(InputError, match="code_noise needs every codebook"):
        CodecTask(noisy, DistInfo())
