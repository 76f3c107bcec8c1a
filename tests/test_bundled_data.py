"""The bundled-model recipe's corpus helpers (scripts/bundled_data.py): speaker filtering and the speed
perturbation that makes the TTS's second voice."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import read_audio, write_audio
from dsm.train.data.manifest import Utterance, WordTiming, read_manifest, write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bundled_data  # noqa: E402

RATE = 24_000


def _corpus(root: Path) -> Path:
    """Two speakers, one 2 s clip each: a 200 Hz tone for "a", 300 Hz for "b"."""
    t = np.arange(2 * RATE) / RATE
    utts = []
    for name, freq, split in (("a", 200.0, "train"), ("b", 300.0, "test")):
        write_audio(root / f"{name}.wav", 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32), RATE)
        words = [WordTiming("one", 0.2, 0.6), WordTiming("two", 1.0, 1.8)]
        utts.append(Utterance(f"{name}.wav", "one two", words, speaker=name, duration=2.0, split=split))
    manifest = root / "m.jsonl"
    write_manifest(manifest, utts)
    return manifest


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.argmax(spectrum) * RATE / len(wav))


def test_merge_keeps_named_speakers(tmp_path):
    manifest = _corpus(tmp_path)
    out = tmp_path / "sub" / "merged.jsonl"
    out.parent.mkdir()
    assert bundled_data.merge(out, [manifest], speakers="b") == 1
    (utt,) = read_manifest(out)
    assert utt.speaker == "b" and utt.split == "test"
    assert utt.audio_path(out.parent).resolve() == (tmp_path / "b.wav").resolve()
    assert bundled_data.merge(out, [manifest], default_split="train") == 2


@pytest.mark.parametrize("factor", [0.88, 1.2])
def test_speed_perturbation_scales_pitch_tempo_and_word_times(tmp_path, factor):
    manifest = _corpus(tmp_path)
    out_dir = tmp_path / "fast"
    assert bundled_data.speed(manifest, out_dir, "a", factor, "a-new") == 1
    (utt,) = read_manifest(out_dir / "manifest.jsonl")
    assert utt.speaker == "a-new" and utt.split == "train" and utt.text == "one two"
    assert utt.duration == pytest.approx(2.0 / factor, abs=1e-3)
    times = [t for w in utt.words for t in (w.start, w.end)]
    assert times == pytest.approx([t / factor for t in (0.2, 0.6, 1.0, 1.8)], abs=1e-3)
    wav = read_audio(str(utt.audio_path(out_dir)), sample_rate=None)
    assert len(wav) == pytest.approx(2 * RATE / factor, abs=2)
    assert _peak_hz(wav) == pytest.approx(200.0 * factor, rel=0.01)
    with pytest.raises(SystemExit, match="no utterance of speaker"):
        bundled_data.speed(manifest, out_dir, "nobody", factor, "x")


def test_ship_codec_stores_bfloat16_and_keeps_codes(tmp_path):
    """Shipping casts the codec to bfloat16 but its codebooks: a shipped codec picks the same codes as
    the float32 export and decodes them within bfloat16 rounding. A shipped STT beside it gets its
    architecture (its config's mimi_config)."""
    import json

    import torch
    from safetensors.torch import load_file

    from dsm.codec import Mimi, MimiConfig, load_mimi, save_mimi
    from dsm.codec.loader import CONFIG_NAME, WEIGHTS_NAME
    from dsm.codec.seanet import SeanetConfig

    seanet = SeanetConfig(n_filters=4, dimension=32)
    config = MimiConfig(
        seanet=seanet, num_layers=1, num_heads=2, dim_feedforward=64, n_q=4, bins=32, codebook_dim=16
    )
    torch.manual_seed(0)
    model = Mimi(config).eval()
    with torch.no_grad():  # random codewords near the latent (a fresh model's are all zero)
        for name, buf in model.named_buffers():
            if name.endswith("_codebook.embedding_sum"):
                buf.normal_(std=1e-3)
    export = tmp_path / "export"
    export.mkdir()
    save_mimi(model, export / WEIGHTS_NAME)
    (export / CONFIG_NAME).write_text(json.dumps(config.to_dict()))
    (tmp_path / "stt").mkdir()  # a shipped STT beside it, its config naming an older codec architecture
    older = MimiConfig(seanet=SeanetConfig(n_filters=2, dimension=32)).to_dict()
    (tmp_path / "stt" / "config.json").write_text(json.dumps({"dim": 8, "mimi_config": older}))
    bundled_data.ship_codec(export, tmp_path / "shipped")
    stt = json.loads((tmp_path / "stt" / "config.json").read_text())
    assert stt == {"dim": 8, "mimi_config": config.to_dict()}

    shipped = load_file(str(tmp_path / "shipped" / WEIGHTS_NAME))
    books = [k for k in shipped if "_codebook." in k]
    assert books and all(shipped[k].dtype == torch.float32 for k in books if shipped[k].is_floating_point())
    rest = [v for k, v in shipped.items() if "_codebook." not in k and v.is_floating_point()]
    assert rest and all(v.dtype == torch.bfloat16 for v in rest)

    exported, shipped_codec = load_mimi(export), load_mimi(tmp_path / "shipped")
    wav = 0.1 * torch.randn(1, 1, 1920 * 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes, codes_shipped = exported.encode(wav), shipped_codec.encode(wav)
        out, out_shipped = exported.decode(codes), shipped_codec.decode(codes)
    assert torch.equal(codes, codes_shipped) and codes.unique().numel() > 4
    assert (out - out_shipped).abs().max() <= 1e-2 * out.abs().max()


def test_tts_codes_writes_what_the_codec_trainer_reads(tmp_path):
    """`tts-codes`: a TTS run's teacher-forced draws for an evenly spread subset of its training clips,
    [dep_q, frames] int16 each, keyed by resolved audio path."""
    import torch
    from safetensors.torch import load_file
    from train_fixtures import make_assets, tts_config_dict

    from dsm.train.config import parse_config
    from dsm.train.loop import DistInfo
    from dsm.train.run import train
    from dsm.train.tts import TtsTask

    assets = make_assets(tmp_path / "assets")
    raw = tts_config_dict(assets, tmp_path / "run", run={"max_steps": 2, "save_every": 2})
    cfg = parse_config(raw, "tts", tmp_path)
    train(cfg)
    out = tmp_path / "codes.safetensors"
    assert bundled_data.tts_codes(cfg, out, None, 0.6, 250, 0, limit=3) == 3
    codes = load_file(str(out))
    task = TtsTask(cfg, DistInfo())
    frames = {str(item.audio.resolve()): item.frames for item in task.train_items}
    assert len(codes) == 3 and set(codes) <= set(frames)
    for key, value in codes.items():
        assert value.dtype == torch.int16 and value.shape == (task.lm.cfg.dep_q, frames[key])
        assert int(value.min()) >= -1 and int(value.max()) < task.lm.cfg.card
    soft = tmp_path / "soft.safetensors"
    assert bundled_data.tts_codes(cfg, soft, None, 0.6, 250, 0, limit=3, soft=True) == 3
    from safetensors import safe_open

    with safe_open(str(soft), "pt") as f:
        assert f.metadata() == {"n_q": str(task.lm.cfg.dep_q)}
    dim = task.setup.mimi.quantizer.rvq_rest.vq.layers[0]._codebook.embedding.shape[1]
    for key, value in load_file(str(soft)).items():
        assert value.dtype == torch.float16 and value.shape == (dim, frames[key])


def test_ship_generation_options_are_checked_before_shipping():
    """`ship-lm --generation` writes a typed table the loader accepts, and refuses unknown options or
    wrongly typed values (before any file is written, so no half-shipped model is left)."""
    table = bundled_data.parse_generation(["temperature=0", "soft_decode=true", "top_k=50"])
    assert table == {"temperature": 0.0, "soft_decode": True, "top_k": 50}
    assert isinstance(table["temperature"], float)
    for bad, words in [
        (["temprature=0"], "unknown option"),
        (["soft_decode=1"], "must be a bool"),
        (["top_k=2.5"], "must be an int"),
        (["temperature=warm"], "must be a number or true/false"),
    ]:
        with pytest.raises(SystemExit, match=words):
            bundled_data.parse_generation(bad)


@pytest.mark.parametrize(
    ("kind", "voices", "generation", "words"),
    [
        ("tts", [], [], "at least one --voice"),
        ("tts", ["joe=joe.wav"], ["temprature=0"], "unknown option"),
        ("stt", [], ["temperature=0"], "for a TTS model"),
    ],
)
def test_ship_lm_refuses_bad_options_before_writing(tmp_path, kind, voices, generation, words):
    out = tmp_path / "shipped"
    with pytest.raises(SystemExit, match=words):
        bundled_data.ship_lm(kind, tmp_path / "export", out, voices, 4.0, tmp_path / "m.jsonl", generation)
    assert not out.exists()
