"""`dsm stt` and `dsm eval` on the small STT model directory of `tests/stt_assets.py`, checked against the
Python API (itself checked against the reference recipe in test_transcriber.py)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
import soundfile as sf

from dsm.cli import main
from dsm.stt.formats import segments_from_words
from dsm.stt.transcriber import Transcriber
from dsm.stt.wer import word_errors

pytest.importorskip("oracle")

from stt_assets import MIMI_1L, make_repo  # noqa: E402


@pytest.fixture(scope="module")
def repo(stt_assets, tmp_path_factory):
    return make_repo(stt_assets, tmp_path_factory.mktemp("cli-repo") / "stt", prefix=0.0)


@pytest.fixture(scope="module")
def api(repo):
    return Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L, exact=True)


@pytest.fixture(autouse=True)
def one_layer_mimi(monkeypatch):
    """The assets' Mimi has 1 transformer layer; the CLI loads with the default config otherwise."""
    original = Transcriber.from_checkpoint.__func__

    def load(cls, *args, **kwargs):
        kwargs.setdefault("mimi_config", MIMI_1L)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Transcriber, "from_checkpoint", classmethod(load))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_equals_the_api(stt_assets, repo, api, capsys):
    path = stt_assets["audio"]["a"]
    code, out, err = run(capsys, "stt", path, "--hf-repo", repo, "--exact", "--format", "json", "--vad")
    assert code == 0, err
    got = json.loads(out)
    expected = api.transcribe(path)
    assert got["text"] == expected.text and got["file"] == str(path)
    assert [(w["word"], w["start"], w["end"]) for w in got["words"]] == [
        (w.text, round(w.start, 3), round(w.end, 3)) for w in expected.words
    ]
    assert len(got["vad"]) == len(expected.tokens) and len(got["vad"][0]) == 4
    assert sum(len(s["words"]) for s in got["segments"]) == len(expected.words)


def test_live_text_output_and_stdin(stt_assets, repo, api, capsys, monkeypatch):
    path = stt_assets["audio"]["c"]
    # Live words follow the Rust server's recipe: tokens from the ASR delay on (6 steps here).
    tokens = api.transcribe(path).tokens
    expected = stt_assets["tok"].decode(
        [t for t in tokens[api.stream().words.asr_delay_in_tokens - 1 :] if t > 3]
    )
    code, out, err = run(capsys, "stt", path, "--hf-repo", repo, "--exact")
    assert code == 0, err
    assert out.split() == expected.split()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    code, out, err = run(capsys, "stt", "-", "--hf-repo", repo, "--exact")
    assert code == 0, err
    assert out.split() == expected.split()


def test_subtitles_for_a_batch_of_files(stt_assets, repo, api, capsys, tmp_path):
    paths = [stt_assets["audio"][n] for n in ("a", "b", "c")]
    for fmt in ("srt", "vtt"):
        code, _, err = run(
            capsys, "stt", *paths, "--hf-repo", repo, "--exact", "--format", fmt, "--batch-size", "2",
            "--output-dir", tmp_path,
        )  # fmt: skip
        assert code == 0, err
        for path in paths:
            text = (tmp_path / f"{path.stem}.{fmt}").read_text()
            segments = segments_from_words(api.transcribe(path).words)
            sep = "," if fmt == "srt" else r"\."
            cues = re.findall(rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> ", text)
            assert len(cues) == len(segments) >= 1
            h, m, s, ms = map(int, cues[0])
            assert h * 3600 + m * 60 + s + ms / 1000 == pytest.approx(segments[0].start, abs=1e-3)
            assert text.startswith("WEBVTT\n\n" if fmt == "vtt" else "1\n")
            assert all(seg.text in text for seg in segments)


def test_prompt_text_and_several_text_outputs(stt_assets, repo, api, capsys):
    a, b = stt_assets["audio"]["a"], stt_assets["audio"]["b"]
    own = api.transcribe(stt_assets["audio"]["c"]).words[0].text
    code, out, err = run(capsys, "stt", a, b, "--hf-repo", repo, "--exact", "--prompt-text", own)
    assert code == 0, err
    lines = out.splitlines()
    assert lines == [f"{p}: {api.transcribe(p, prompt_text=own).text.strip()}" for p in (a, b)]


def test_errors(stt_assets, repo, capsys, tmp_path):
    a = stt_assets["audio"]["a"]
    code, out, err = run(capsys, "stt", tmp_path / "missing.wav", a, "--hf-repo", repo, "--format", "json")
    assert code == 2 and "missing.wav" in err and "not found" in err
    assert json.loads(out)["file"] == str(a)  # the readable file is still transcribed
    code, _, err = run(capsys, "stt", a, a, "--hf-repo", repo, "--format", "srt")
    assert code == 2 and "--output-dir" in err
    code, _, err = run(capsys, "stt", a, "--hf-repo", tmp_path / "no-repo")
    assert code == 2 and "dsm: error:" in err
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), [], 24000)
    code, _, err = run(capsys, "stt", empty, "--hf-repo", repo)
    assert code == 2 and "empty.wav" in err
    code, _, err = run(capsys, "stt", a, "--hf-repo", repo, "--prompt-text", " ")
    assert code == 2 and "prompt text is empty" in err
    code, _, err = run(capsys, "stt", a, "--hf-repo", repo, "--quantize", "int8", "--exact")
    assert code == 2 and "drop exact or quantize" in err


def test_quantized_transcription(stt_assets, repo, api, capsys):
    """`--quantize int8` runs the LM's products in int8 (tokens of this model: the same as unquantized)."""
    path = stt_assets["audio"]["a"]
    code, out, err = run(capsys, "stt", path, "--hf-repo", repo, "--quantize", "int8", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["text"] == api.transcribe(path).text


def test_eval_reports_wer_and_speed(stt_assets, repo, api, capsys, tmp_path):
    a, b = stt_assets["audio"]["a"], stt_assets["audio"]["b"]
    own_a = api.transcribe(a).text
    manifest = tmp_path / "set.jsonl"
    rows = [{"audio": str(a), "text": own_a}, {"audio": str(b), "text": "completely different words here"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = tmp_path / "report.json"
    code, out, err = run(
        capsys, "eval", manifest, "--hf-repo", repo, "--exact", "--batch-size", "2", "--output", report
    )
    assert code == 0, err
    got = json.loads(report.read_text())
    assert got["files"][0]["wer"] == 0.0
    hyp_b = api.transcribe(b).text
    expected_b = word_errors(rows[1]["text"], hyp_b, normalize=True)
    assert got["files"][1]["errors"] == expected_b.errors
    assert got["errors"] == expected_b.errors
    n_words = word_errors(own_a, own_a, normalize=True).n_reference_words + expected_b.n_reference_words
    assert got["reference_words"] == n_words and got["wer"] == pytest.approx(expected_b.errors / n_words)
    assert got["rtf"] > 0 and "corpus WER" in out and "real-time factor" in out and a.name in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav"}\n')
    code, _, err = run(capsys, "eval", bad, "--hf-repo", repo)
    assert code == 2 and "bad.jsonl:1" in err
