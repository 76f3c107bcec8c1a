"""`dsm tts`: the command line against the Python API on the small TTS checkpoint of tts_assets (with a
full-size Mimi, as the command loads Kyutai's architecture), output formats and user errors."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from dsm.audio import read_audio
from dsm.cli import main
from dsm.codec import Mimi, MimiConfig, save_mimi
from dsm.errors import CheckpointError
from dsm.tts.synthesizer import Synthesizer

tts_assets = pytest.importorskip("tts_assets")

TEXT = "The red bird."


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The shared test model with a full-size Mimi (random weights) instead of the 1-layer one."""
    assets = tts_assets.shared(tmp_path_factory)
    model = tmp_path_factory.mktemp("tts-cli") / "model"
    model.mkdir()
    for path in assets["repo"].iterdir():
        if path.name != tts_assets.MIMI_NAME:
            (model / path.name).symlink_to(path)
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig()).eval()
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
    save_mimi(mimi, model / tts_assets.MIMI_NAME)
    return {"repo": model, "voices": assets["voices"]}


def args(repo, *extra):
    return [
        "tts",
        "--hf-repo",
        str(repo["repo"]),
        "--voice-repo",
        str(repo["voices"]),
        "--dtype",
        "float32",
        "--n-q",
        "8",
        "-q",
        *extra,
    ]


@pytest.mark.parametrize("soft", [False, True])
def test_wav_output_equals_python_api(repo, tmp_path, soft):
    text_file = tmp_path / "in.txt"
    text_file.write_text(TEXT + "\n")
    out = tmp_path / "out.wav"
    flags = ["--seed", "4", "--voice", tts_assets.VOICES[1]] + (["--soft-decode"] if soft else [])
    assert main(args(repo, str(text_file), str(out), *flags)) == 0
    synth = Synthesizer.from_checkpoint(
        repo["repo"], dtype=torch.float32, voice_repo=str(repo["voices"]), n_q=8, soft_decode=soft
    )
    expected = synth.synthesize(TEXT + "\n", tts_assets.VOICES[1], seed=4)
    wav, sr = sf.read(str(out), dtype="float32")
    assert sr == 24000 and wav.shape == expected.audio.shape
    np.testing.assert_allclose(wav, expected.audio, atol=1.0 / 32767 + 1e-6)


def test_stdin_to_ogg_opus_and_dialog(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there.\n\nHi, my friend!\n"))
    out = tmp_path / "dialog.ogg"
    voices = ["--voice", tts_assets.VOICES[0], "--voice", tts_assets.VOICES[1]]
    assert main(args(repo, "-", str(out), "--dialog", "--seed", "1", *voices)) == 0
    assert out.read_bytes()[:4] == b"OggS" and b"OpusHead" in out.read_bytes()[:200]
    wav = read_audio(out, sample_rate=24000)
    assert 0.5 < len(wav) / 24000 < 30


def test_list_voices(repo, capsys):
    assert main(args(repo, "--list-voices")) == 0
    out = capsys.readouterr().out
    assert "3 voices" in out and tts_assets.VOICES[1] in out


def test_errors(repo, tmp_path, capsys, monkeypatch):
    text_file = tmp_path / "in.txt"
    text_file.write_text(TEXT)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n")
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if not installed
    cases = [
        (args(repo, str(text_file), "-"), "needs the sounddevice package"),
        (args(repo, str(text_file), str(tmp_path / "out.xyz")), "unknown audio extension"),
        (args(repo, str(tmp_path / "missing.txt"), str(tmp_path / "o.wav")), "file not found"),
        (args(repo, str(empty), str(tmp_path / "o.wav")), "empty"),
        (args(repo, str(text_file), str(tmp_path / "o.wav"), "--voice", "nobody.wav"), "available voices"),
        (
            args(repo, str(text_file), str(tmp_path / "o.wav"), "--cfg-coef", "7"),
            "cfg_coef 7 is not supported",
        ),
        (args(repo, str(text_file)), "give INPUT"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_voice_command_refuses_models_with_a_speaker_encoder(repo, tmp_path, capsys):
    """Kyutai-style TTS configs have no `voice_seconds`: their voices come from an unreleased speaker
    encoder, so `dsm voice` says so instead of writing an embedding the model would misread."""
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(24_000, dtype=np.float32), 24_000)
    out = tmp_path / "voice.safetensors"
    assert main(["voice", str(clip), str(out), "--hf-repo", str(repo["repo"])]) == 2
    assert "speaker encoder dsm does not have" in capsys.readouterr().err
    assert main(["voice", str(clip), str(tmp_path / "voice.bin"), "--hf-repo", str(repo["repo"])]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert not out.exists()


def test_model_generation_defaults(repo, tmp_path, capsys):
    """A config's `generation` table (dsm extension) sets the sampling options the caller leaves unset:
    the command without flags equals the Python API given them; flags and keyword arguments win."""
    import json

    model = tmp_path / "model"
    model.mkdir()
    for path in repo["repo"].iterdir():
        if path.name != "config.json":
            (model / path.name).symlink_to(path.resolve())
    config = json.loads((repo["repo"] / "config.json").read_text())
    config["generation"] = {"temperature": 0, "soft_decode": True}
    (model / "config.json").write_text(json.dumps(config))
    synth = Synthesizer.from_checkpoint(model, dtype=torch.float32, voice_repo=str(repo["voices"]))
    assert synth.temperature == 0.0 and synth.soft_decode
    overridden = Synthesizer.from_checkpoint(
        model, dtype=torch.float32, voice_repo=str(repo["voices"]), temperature=0.6, soft_decode=False
    )
    assert overridden.temperature == 0.6 and not overridden.soft_decode
    text_file = tmp_path / "in.txt"
    text_file.write_text(TEXT + "\n")
    flags = ["--voice", tts_assets.VOICES[1]]
    outs = {}
    for name, extra in (("default", []), ("sampled", ["--temp", "0.6", "--no-soft-decode", "--seed", "3"])):
        outs[name] = tmp_path / f"{name}.wav"
        argv = args({**repo, "repo": model}, str(text_file), str(outs[name]), *flags, *extra)
        assert main(argv) == 0
    expected = Synthesizer.from_checkpoint(
        model, dtype=torch.float32, voice_repo=str(repo["voices"]), n_q=8
    ).synthesize(TEXT + "\n", tts_assets.VOICES[1])
    wav, _ = sf.read(str(outs["default"]), dtype="float32")
    np.testing.assert_allclose(wav, expected.audio, atol=1.0 / 32767 + 1e-6)
    sampled = Synthesizer.from_checkpoint(
        repo["repo"], dtype=torch.float32, voice_repo=str(repo["voices"]), n_q=8
    ).synthesize(TEXT + "\n", tts_assets.VOICES[1], seed=3)
    wav, _ = sf.read(str(outs["sampled"]), dtype="float32")
    assert wav.shape == sampled.audio.shape
    np.testing.assert_allclose(wav, sampled.audio, atol=1.0 / 32767 + 1e-6)
    for bad, message in (
        ({"temperature": "hot"}, "generation.temperature must be a float"),
        ({"soft_decode": 1}, "generation.soft_decode must be a bool"),
        ({"top_k": 2.5}, "generation.top_k must be an int"),
        ({"beam": 4}, "unknown option"),
    ):
        (model / "config.json").write_text(json.dumps({**config, "generation": bad}))
        with pytest.raises(CheckpointError, match=message):
            Synthesizer.from_checkpoint(model, dtype=torch.float32, voice_repo=str(repo["voices"]))
        assert main(args({**repo, "repo": model}, str(text_file), str(tmp_path / "x.wav"))) == 2
        assert message in capsys.readouterr().err
