"""Codec training stages that start from a trained codec: the decoder-only stage keeps every code as it was
(so the STT and TTS trained on them stay valid), and its code noise draws near misses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from train_fixtures import TINY_MIMI, codec_config_dict, make_assets

from dsm.audio import read_audio
from dsm.codec import Mimi, MimiConfig, load_mimi
from dsm.errors import CheckpointError, InputError
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


def test_widened_decoder_starts_as_the_narrow_one(trained, tmp_path):
    """A decoder-only stage with a wider SEANet decoder (``seanet.decoder_n_filters``) starts from the
    init's decoder widened (Net2Net: the same function up to the symmetry-breaking noise), keeps every code,
    and exports a codec that `load_mimi` reads back by its mimi_config.json."""
    from dsm.train.codec import load_init_codec, widen_decoder

    assets, init = trained
    wide = ARCH | {"seanet": ARCH["seanet"] | {"decoder_n_filters": 12}}
    narrow = load_mimi(init, config=MimiConfig.from_dict(ARCH)).eval()
    widened, levels = load_init_codec(init, MimiConfig.from_dict(wide), "cpu")
    assert levels == 4
    assert (
        widened.decoder.model[0].conv.conv.out_channels == 3 * narrow.decoder.model[0].conv.conv.out_channels
    )
    wav = torch.from_numpy(read_audio(str(next(assets["manifest"].parent.rglob("*.wav")))))[None, None]
    with torch.no_grad():
        codes = narrow.encode(wav)
        assert torch.equal(widened.eval().encode(wav), codes)
        before = narrow.decode(codes)
        torch.testing.assert_close(
            widened.decode(codes), before, rtol=0.0, atol=0.02 * float(before.abs().max())
        )
        exact = Mimi(MimiConfig.from_dict(wide)).eval()
        state = {k: v.float() for k, v in narrow.state_dict().items()}
        exact.load_state_dict(widen_decoder(state, 3, noise=0.0))
        torch.testing.assert_close(exact.decode(codes), before, rtol=1e-4, atol=1e-5)

    cfg = _decoder_config(assets, init, tmp_path / "w", arch=wide)
    train(cfg)
    exported = load_mimi(tmp_path / "w" / "export")
    assert exported.cfg.seanet.decoder_n_filters == 12 and exported.cfg.seanet.n_filters == 4
    with torch.no_grad():
        assert torch.equal(exported.encode(wav), codes)
    with pytest.raises(CheckpointError, match="cannot be widened"):
        load_init_codec(
            init, MimiConfig.from_dict(ARCH | {"seanet": ARCH["seanet"] | {"decoder_n_filters": 6}}), "cpu"
        )


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


def _substitutes(task: CodecTask, path, k: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random drawn codes [k, frames] for the task's training files, -1 on every third frame; written to
    ``path`` keyed by resolved audio path as `scripts/bundled_data.py tts-codes` writes them."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for file in task.files:
        frames = task._wav(file).shape[0] // task.mimi.frame_size
        codes = torch.randint(64, (k, frames), generator=gen)
        codes[:, ::3] = -1
        out[str(file.resolve())] = codes.to(torch.int16)
    save_file(out, str(path))
    return out


def test_substitute_codes_are_what_the_decoder_decodes(trained, tmp_path):
    """[codec].substitute_codes: a substituted batch holds each crop's drawn codes at its frames (-1 past
    the file's end), and the decoder decodes its first K codebooks only, the drawn codes in place of the
    true ones but where they are -1. Training on them changes the decoder side only."""
    assets, init = trained
    task = CodecTask(_decoder_config(assets, init, tmp_path / "probe"), DistInfo())
    stored = _substitutes(task, tmp_path / "codes.safetensors")
    cfg = _decoder_config(
        assets,
        init,
        tmp_path / "s",
        substitute_codes=str(tmp_path / "codes.safetensors"),
        substitute_prob=1.0,
    )
    task = CodecTask(cfg, DistInfo())
    wav, teacher, substitute = task.next_batch()
    n = task.segment // task.mimi.frame_size
    assert teacher is None and substitute.shape == (wav.shape[0], 2, n)
    file = task.files[0]
    codes = stored[str(file.resolve())].long()
    assert torch.equal(task._substitute_crop(file, 2 * task.mimi.frame_size), codes[:, 2 : 2 + n])
    tail = task._substitute_crop(file, (codes.shape[1] - 1) * task.mimi.frame_size)
    assert torch.equal(tail[:, 0], codes[:, -1]) and bool((tail[:, 1:] == -1).all())

    module = task.module.eval()
    with torch.no_grad():
        y, _, _ = module.reconstruct(wav, 2, update=False, substitute=substitute)
        true = task.mimi.quantizer.encode(
            task.mimi.downsample(task.mimi.encoder_transformer(task.mimi.encoder(wav))), 2
        )
        expected = task.mimi.decode(torch.where(substitute >= 0, substitute, true))
    assert (substitute >= 0).any() and (substitute < 0).any()
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)

    train(cfg)
    before = load_mimi(init, config=MimiConfig.from_dict(ARCH))
    after = load_mimi(tmp_path / "s" / "export", config=MimiConfig.from_dict(ARCH))
    a, b = before.state_dict(), after.state_dict()
    assert all(
        torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder", "downsample")) or "_codebook" in k
    )
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder"))


def test_expected_codewords_are_what_the_decoder_decodes(trained, tmp_path):
    """Soft substitutes (float [codebook_dim, frames], metadata n_q = K): a batch holds each crop's expected
    acoustic codewords (NaN past the file's end), and the decoder decodes the true codebook 0 plus them in
    place of the true codebooks 1 .. K - 1: when they are the codewords of some codes, exactly what decoding
    those codes gives."""
    from safetensors.torch import save_file

    assets, init = trained
    task = CodecTask(_decoder_config(assets, init, tmp_path / "probe"), DistInfo())
    drawn = _substitutes(task, tmp_path / "codes.safetensors", k=3)
    rvq = task.mimi.quantizer.rvq_rest
    soft = {}
    with torch.no_grad():
        for key, codes in drawn.items():
            words = rvq.sum_codewords(codes[None, 1:].long().clamp_min(0))[0]
            soft[key] = words.masked_fill(codes[0] < 0, float("nan")).contiguous()
    save_file(soft, str(tmp_path / "soft.safetensors"), metadata={"n_q": "3"})
    cfg = _decoder_config(
        assets, init, tmp_path / "s", substitute_codes=str(tmp_path / "soft.safetensors"), substitute_prob=1.0
    )
    task = CodecTask(cfg, DistInfo())
    assert task.module.soft_levels == 3
    wav, _, substitute = task.next_batch()
    n = task.segment // task.mimi.frame_size
    assert substitute.dtype == torch.float32 and substitute.shape == (
        wav.shape[0],
        rvq.vq.layers[0]._codebook.embedding.shape[1],
        n,
    )
    file = task.files[0]
    stored = soft[str(file.resolve())]
    tail = task._substitute_crop(file, (stored.shape[1] - 1) * task.mimi.frame_size)
    torch.testing.assert_close(tail[:, 0], stored[:, -1], equal_nan=True)
    assert bool(tail[:, 1:].isnan().all())

    crops = [task._crop(f, random=False) for f in task.files[:2]]
    wav = torch.stack([c for c, _ in crops])[:, None]
    picked = torch.stack([task._substitute_crop(f, 0) for f in task.files[:2]])
    codes = torch.stack(
        [
            F.pad(
                drawn[str(f.resolve())][:, :n].long(),
                (0, max(0, n - drawn[str(f.resolve())].shape[1])),
                value=-1,
            )
            for f in task.files[:2]
        ]
    )
    module = task.module.eval()
    with torch.no_grad():
        y, _, _ = module.reconstruct(wav, 3, update=False, substitute=picked)
        true = task.mimi.quantizer.encode(
            task.mimi.downsample(task.mimi.encoder_transformer(task.mimi.encoder(wav))), 3
        )
        hard = torch.cat([true[:, :1], torch.where(codes[:, 1:] >= 0, codes[:, 1:], true[:, 1:])], 1)
        expected = task.mimi.decode(hard)
    assert (codes[:, 1:] >= 0).any() and (codes[:, 1:] < 0).any()
    torch.testing.assert_close(y, expected, rtol=1e-3, atol=1e-4)

    save_file(soft, str(tmp_path / "bare.safetensors"))
    bare = _decoder_config(assets, init, tmp_path / "b", substitute_codes=str(tmp_path / "bare.safetensors"))
    with pytest.raises(InputError, match="metadata n_q"):
        CodecTask(bare, DistInfo())


def test_substitute_codes_need_decoder_only_and_matching_files(trained, tmp_path):
    assets, init = trained
    task = CodecTask(_decoder_config(assets, init, tmp_path / "probe"), DistInfo())
    _substitutes(task, tmp_path / "codes.safetensors")
    raw = codec_config_dict(assets, tmp_path / "x")
    raw["codec"].update({"init": str(init), "substitute_codes": str(tmp_path / "codes.safetensors")})
    with pytest.raises(InputError, match="substitute_codes needs decoder_only"):
        CodecTask(parse_config(raw, "codec", tmp_path), DistInfo())
    from safetensors.torch import save_file

    save_file({"/nowhere/a.wav": torch.zeros(2, 5, dtype=torch.int16)}, str(tmp_path / "other.safetensors"))
    other = _decoder_config(
        assets, init, tmp_path / "y", substitute_codes=str(tmp_path / "other.safetensors")
    )
    with pytest.raises(InputError, match="codes for none of the"):
        CodecTask(other, DistInfo())
    with pytest.raises(InputError, match="substitute_prob must lie in"):
        _decoder_config(assets, init, tmp_path / "z", substitute_prob=1.5)
