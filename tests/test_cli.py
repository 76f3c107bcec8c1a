"""Tests for the `dsm` command line (`dsm codec encode/decode/roundtrip`), run in-process and as a script.

One full-size Mimi with random weights (and random, non-zero codebooks so codes vary) is saved once per
module; the CLI's results are compared with the same model called directly from Python.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file

import dsm.cli.codec as cli
from dsm import __version__
from dsm.audio import read_audio, write_audio
from dsm.cli import main
from dsm.codec import Mimi, MimiConfig, save_mimi

SR = 24000
FRAME = 1920
NUM_SAMPLES = SR  # 1 s: 12.5 frames, so encode pads and decode must trim
NUM_FRAMES = -(-NUM_SAMPLES // FRAME)  # 13
PCM16_STEP = 1 / 32767
# The console script installed with the package (next to this interpreter if not on PATH).
DSM = shutil.which("dsm") or str(Path(sys.executable).with_name("dsm"))


# -- fixtures ---------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def mimi(audio) -> Mimi:
    """A full-size Mimi with random weights and random codebooks fitted to the residual each level sees.

    Codebooks drawn from N(0, 1) are far from the small latents of a random encoder, so every frame would
    map to the same (smallest) codeword; centring and scaling them on the residual makes codes vary with
    the input and keeps deep levels free of near-ties, as with trained weights.
    """
    torch.manual_seed(0)
    model = Mimi(MimiConfig()).eval()
    x = torch.from_numpy(read_audio(audio)).view(1, 1, -1)
    with torch.no_grad():
        latent = model.encode_to_latent(x)
        for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
            residual = rvq.input_proj(latent).transpose(1, 2).reshape(-1, model.cfg.codebook_dim)
            for layer in rvq.vq.layers:
                book = layer._codebook
                mean, rms = residual.mean(0), (residual - residual.mean(0)).pow(2).mean().sqrt()
                book.embedding_sum.normal_().mul_(0.5 * rms).add_(mean)
                book.cluster_usage.fill_(1.0)
                book._embedding = book._augmented = None
                residual = residual - book.embedding[book.encode(residual)]
    return model


@pytest.fixture(scope="module")
def ckpt(mimi, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "mimi.safetensors"
    save_mimi(mimi, path)
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """1 s of sine + noise, 16-bit WAV at 24 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(NUM_SAMPLES) / SR
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(NUM_SAMPLES)
    path = tmp_path_factory.mktemp("audio") / "input.wav"
    write_audio(path, wav.astype(np.float32), SR)
    return path


@pytest.fixture(scope="module")
def reference(mimi, audio) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [1, 32, F], decoded wav [1, 1, F * 1920]) computed directly with the model."""
    x = torch.from_numpy(read_audio(audio)).view(1, 1, -1)
    with torch.inference_mode():
        codes = mimi.encode(x, n_q=32)
        wav = mimi.decode(codes)
    return codes, wav


@pytest.fixture(scope="module")
def encoded(ckpt, audio, tmp_path_factory) -> Path:
    """`dsm codec encode` of the test audio with all 32 codebooks."""
    out = tmp_path_factory.mktemp("codes") / "codes.safetensors"
    assert main(["codec", "encode", str(audio), str(out), "--mimi-weight", str(ckpt)]) == 0
    return out


def read_codes(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("codes"), f.metadata()


def run_error(argv: list[str], capsys) -> str:
    """Run main, assert it failed as a user error (status 2, no traceback) and return stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def save_codes(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


# -- encode -----------------------------------------------------------------------------------------------


def test_encode_writes_codes_and_metadata(encoded, reference):
    codes, metadata = read_codes(encoded)
    assert codes.dtype == torch.int64
    assert codes.shape == (1, 32, NUM_FRAMES)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2047
    for level in (0, 1, 31):  # semantic, first and last acoustic codebooks
        assert len(torch.unique(codes[0, level])) > 3, f"codebook {level}: codes should vary with the input"
    assert torch.equal(codes, reference[0])
    assert metadata == {
        "sample_rate": "24000",
        "frame_rate": "12.5",
        "num_samples": str(NUM_SAMPLES),
        "n_q": "32",
        "dsm_version": __version__,
    }


def test_encode_n_q_8_from_local_hf_repo_directory(ckpt, audio, reference, tmp_path):
    repo = tmp_path / "stt-repo"
    repo.mkdir()
    (repo / "mimi-pytorch-e351c8d8@125.safetensors").symlink_to(ckpt)
    out = tmp_path / "codes8.safetensors"
    assert main(["codec", "encode", str(audio), str(out), "--hf-repo", str(repo), "--n-q", "8"]) == 0
    codes, metadata = read_codes(out)
    assert codes.shape == (1, 8, NUM_FRAMES)
    assert torch.equal(codes, reference[0][:, :8])
    assert metadata["n_q"] == "8"


def test_streaming_encode_gives_the_one_shot_codes(ckpt, audio, encoded, tmp_path):
    out = tmp_path / "streamed.safetensors"
    argv = ["codec", "encode", str(audio), str(out), "--mimi-weight", str(ckpt), "--streaming"]
    assert main(argv) == 0
    streamed, _ = read_codes(out)
    one_shot, _ = read_codes(encoded)
    assert streamed.shape == one_shot.shape == (1, 32, NUM_FRAMES)
    assert torch.equal(streamed, one_shot)


# -- decode -----------------------------------------------------------------------------------------------


def test_decode_matches_direct_model_call(ckpt, encoded, reference, tmp_path):
    out = tmp_path / "decoded.wav"
    assert main(["codec", "decode", str(encoded), str(out), "--mimi-weight", str(ckpt), "--float32"]) == 0
    wav, rate = sf.read(str(out), dtype="float32")
    expected = reference[1][0, 0, :NUM_SAMPLES].numpy()
    assert rate == SR
    assert wav.shape == (NUM_SAMPLES,)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(wav, expected, atol=1e-5, rtol=0)


def test_decode_to_stdout_as_16_bit_wav(ckpt, encoded, reference, capsysbinary):
    assert main(["codec", "decode", str(encoded), "-", "--mimi-weight", str(ckpt)]) == 0
    data = capsysbinary.readouterr().out
    assert data[:4] == b"RIFF"
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.frames, info.subtype) == (SR, NUM_SAMPLES, "PCM_16")
    wav, _ = sf.read(io.BytesIO(data), dtype="float32")
    expected = np.clip(reference[1][0, 0, :NUM_SAMPLES].numpy(), -1, 1)
    np.testing.assert_allclose(wav, expected, atol=PCM16_STEP + 1e-6, rtol=0)


def test_streaming_decode_of_2d_codes_without_metadata(ckpt, mimi, reference, tmp_path):
    codes = reference[0][0, :, :4].contiguous()  # [n_q, F], no num_samples: no trimming
    path = save_codes(tmp_path / "plain.safetensors", {"codes": codes})
    out = tmp_path / "streamed.wav"
    argv = ["codec", "decode", str(path), str(out), "--mimi-weight", str(ckpt), "--streaming", "--float32"]
    assert main(argv) == 0
    wav, _ = sf.read(str(out), dtype="float32")
    with torch.inference_mode():
        expected = mimi.decode(codes[None])[0, 0].numpy()
    assert wav.shape == (4 * FRAME,)
    np.testing.assert_allclose(wav, expected, atol=1e-5, rtol=0)


# -- roundtrip --------------------------------------------------------------------------------------------


def test_roundtrip_from_stdin(ckpt, audio, reference, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(audio.read_bytes())))
    out = tmp_path / "roundtrip.wav"
    assert main(["codec", "roundtrip", "-", str(out), "--mimi-weight", str(ckpt), "--float32"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1
    assert "1.00 s" in summary[0] and "13 frames x 32 codebooks" in summary[0]
    assert "real-time factor" in summary[0]
    wav, rate = sf.read(str(out), dtype="float32")
    assert (rate, wav.shape) == (SR, (NUM_SAMPLES,))
    np.testing.assert_allclose(wav, reference[1][0, 0, :NUM_SAMPLES].numpy(), atol=1e-5, rtol=0)


# -- the installed script ---------------------------------------------------------------------------------


def _script_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    return env


def test_script_version(tmp_path):
    result = subprocess.run(
        [DSM, "--version"], capture_output=True, text=True, timeout=120, env=_script_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dsm {__version__}"


def test_script_encode_to_stdout(ckpt, audio, reference, tmp_path):
    argv = [DSM, "codec", "encode", str(audio), "-", "--mimi-weight", str(ckpt), "--n-q", "4", "-q"]
    result = subprocess.run(argv, capture_output=True, timeout=300, env=_script_env(tmp_path))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    codes = load(result.stdout)["codes"]
    assert torch.equal(codes, reference[0][:, :4])


def test_script_reports_errors_without_traceback(tmp_path):
    argv = [DSM, "codec", "decode", str(tmp_path / "missing.safetensors"), "out.wav", "--mimi-weight", "x"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env=_script_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("dsm: error: ") and "missing.safetensors: file not found" in result.stderr
    assert "Traceback" not in result.stderr


# -- errors -----------------------------------------------------------------------------------------------


def test_missing_input_file(ckpt, tmp_path, capsys):
    missing = tmp_path / "nope.wav"
    err = run_error(
        ["codec", "encode", str(missing), str(tmp_path / "c.safetensors"), "--mimi-weight", str(ckpt)], capsys
    )
    assert err.startswith("dsm: error: ")
    assert f"{missing}: file not found" in err


def test_non_audio_input(ckpt, tmp_path, capsys):
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 50)
    err = run_error(
        ["codec", "roundtrip", str(text), str(tmp_path / "o.wav"), "--mimi-weight", str(ckpt)], capsys
    )
    assert "notes.wav" in err and "not a recognised audio format" in err


@pytest.mark.parametrize("action", ["encode", "roundtrip"])
def test_no_model_flags_without_bundled_codec(action, audio, tmp_path, capsys, monkeypatch):
    """Without model flags the bundled codec is used; where it is not installed, the error says so."""
    monkeypatch.setattr("dsm.bundled.ROOT", tmp_path / "models")
    err = run_error(["codec", action, str(audio), str(tmp_path / "out.wav")], capsys)
    assert err.startswith("dsm: error: dsm's bundled codec model is not installed")
    assert "mimi.safetensors" in err and "--hf-repo kyutai/stt-1b-en_fr" in err


def test_missing_weight_file(audio, tmp_path, capsys):
    weights = tmp_path / "absent.safetensors"
    err = run_error(
        ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", str(weights)],
        capsys,
    )
    assert f"{weights}: checkpoint file not found" in err


@pytest.fixture(scope="module")
def ckpt_state(ckpt) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt))


def test_checkpoint_with_missing_key(ckpt_state, audio, tmp_path, capsys):
    key = "decoder_transformer.transformer.layers.3.norm1.weight"
    assert key in ckpt_state
    bad = save_codes(tmp_path / "missing-key.safetensors", {k: v for k, v in ckpt_state.items() if k != key})
    err = run_error(
        ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", str(bad)], capsys
    )
    assert f"missing keys: {key}" in err


def test_checkpoint_with_unexpected_key(ckpt_state, audio, tmp_path, capsys):
    bad = save_codes(
        tmp_path / "extra-key.safetensors", {**ckpt_state, "encoder.extra_head.weight": torch.zeros(3)}
    )
    err = run_error(
        ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", str(bad)], capsys
    )
    assert "unexpected keys: encoder.extra_head.weight" in err
    assert "missing keys" not in err


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (torch.full((1, 8, 3), 5000), r"codes must lie in [0, 2047], got values in [5000, 5000]"),
        (torch.tensor([[[0, 7, -3]]]), r"codes must lie in [0, 2047], got values in [-3, 7]"),
        (torch.arange(10), "codes must have shape [n_q, frames] or [1, n_q, frames], got [10]"),
        (torch.zeros(2, 8, 3, dtype=torch.long), "got [2, 8, 3]"),
        (torch.zeros(1, 8, 3), "codes must be integers, got torch.float32"),
        (torch.zeros(1, 33, 3, dtype=torch.long), "33 codebooks, Mimi decodes 1 to 32"),
        (torch.zeros(1, 8, 0, dtype=torch.long), "codes have 0 frames"),
    ],
    ids=["too-large", "negative", "1-d", "batch-2", "float", "33-codebooks", "empty"],
)
def test_invalid_codes(codes, expected, ckpt, tmp_path, capsys):
    path = save_codes(tmp_path / "bad.safetensors", {"codes": codes})
    err = run_error(
        ["codec", "decode", str(path), str(tmp_path / "o.wav"), "--mimi-weight", str(ckpt)], capsys
    )
    assert f"{path}: " in err
    assert expected in err


def test_codes_file_without_codes_tensor(ckpt, tmp_path, capsys):
    path = save_codes(tmp_path / "tokens.safetensors", {"tokens": torch.zeros(1, 8, 3, dtype=torch.long)})
    err = run_error(
        ["codec", "decode", str(path), str(tmp_path / "o.wav"), "--mimi-weight", str(ckpt)], capsys
    )
    assert "no 'codes' tensor (tensors found: tokens)" in err


def test_codes_file_that_is_not_safetensors(ckpt, audio, tmp_path, capsys):
    err = run_error(
        ["codec", "decode", str(audio), str(tmp_path / "o.wav"), "--mimi-weight", str(ckpt)], capsys
    )
    assert f"{audio}: not a safetensors codes file" in err


@pytest.mark.parametrize("n_q", ["0", "33", "eight"])
def test_invalid_n_q(n_q, ckpt, audio, tmp_path, capsys):
    argv = ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", str(ckpt)]
    err = run_error([*argv, "--n-q", n_q], capsys)
    assert "error: argument --n-q" in err
    assert ("must be between 1 and 32" if n_q != "eight" else "expected an integer") in err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize(
    ("out", "extra", "expected"),
    [
        ("out.xyz", [], "unknown audio extension '.xyz'"),
        ("out.flac", ["--float32"], "--float32 only applies to .wav output"),
        ("no-such-dir/out.wav", [], "directory"),
    ],
)
def test_bad_output_is_rejected_before_decoding(out, extra, expected, encoded, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_codec", _must_not_be_called)
    err = run_error(
        ["codec", "decode", str(encoded), str(tmp_path / out), "--mimi-weight", "x", *extra], capsys
    )
    assert expected in err


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("the model should not be loaded")


def test_offline_hub_repo_not_in_cache(audio, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    # huggingface_hub reads these once, at import: patch its constants too in case it is already loaded.
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
    start = time.monotonic()
    err = run_error(
        ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--hf-repo", "some/repo"], capsys
    )
    assert time.monotonic() - start < 30
    assert "some/repo" in err and "HF_HUB_OFFLINE" in err
    assert "cannot find Mimi weights" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(audio, ckpt, tmp_path, capsys):
    argv = ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", str(ckpt)]
    err = run_error([*argv, "--device", "cuda"], capsys)
    assert "--device cuda: cuda is not available" in err


def test_invalid_device_name(capsys):
    err = run_error(
        ["codec", "encode", "a.wav", "b.safetensors", "--mimi-weight", "x", "--device", "gpu0"], capsys
    )
    assert "argument --device: not a torch device: 'gpu0'" in err


# -- exit statuses ----------------------------------------------------------------------------------------


def test_version_and_help_return_zero(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dsm {__version__}"
    assert main(["codec", "encode", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--n-q", "--mimi-weight", "--hf-repo", "--device", "--streaming", "--quiet", "--verbose"):
        assert flag in out


def test_missing_subcommand_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(audio, tmp_path, capsys, monkeypatch):
    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_codec", interrupt)
    argv = ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", "x"]
    assert main(argv) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_unexpected_exceptions_propagate(audio, tmp_path, monkeypatch):
    def bug(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cli, "load_codec", bug)
    argv = ["codec", "encode", str(audio), str(tmp_path / "c.safetensors"), "--mimi-weight", "x"]
    with pytest.raises(RuntimeError, match="a real bug"):
        main(argv)


def test_verbose_flag_after_the_subcommand_enables_info_logging(ckpt, encoded, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        cli, "decode_codes", lambda mimi, codes, args: torch.zeros(1, 1, codes.shape[-1] * FRAME)
    )
    out = tmp_path / "silence.wav"
    assert main(["codec", "decode", str(encoded), str(out), "--mimi-weight", str(ckpt), "-v"]) == 0
    assert f"INFO dsm.cli: loaded Mimi from {ckpt}" in capsys.readouterr().err
    assert sf.info(str(out)).frames == NUM_SAMPLES
    assert main(["-q", "codec", "decode", str(encoded), str(out), "--mimi-weight", str(ckpt)]) == 0
    assert capsys.readouterr().err == ""
