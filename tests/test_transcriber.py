"""The STT transcriber against the DSM scripts' streaming recipe (B) run with the reference `moshi` models.

A small hub-style model directory is built in the test: a 1-layer, 128-wide STT LM (real n_q 32, card 2048,
extra heads 4x6) and a 1-layer Mimi, random weights in Kyutai's layout, a tiny SentencePiece tokenizer and a
Kyutai `config.json`. The text head is nudged so that the random model emits word boundaries (0), padding
(3) and word pieces, so transcripts and timestamps are non-trivial.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time

import lm_configs
import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_tokenizer import train_tokenizer

from dsm.codec import MimiConfig
from dsm.errors import AudioError, CheckpointError, DsmError
from dsm.stt.checkpoint import SttCheckpoint
from dsm.stt.timestamps import WordEnded, WordStarted, transcript_text, words_from_tokens
from dsm.stt.transcriber import Transcriber, VadStep

oracle = pytest.importorskip("oracle")

FRAME = 1920
MIMI_NAME = lm_configs.STT_1B["mimi_name"]
TOK_NAME = lm_configs.STT_1B["tokenizer_name"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Weights, tokenizer and reference models shared by every test (built once)."""
    root = tmp_path_factory.mktemp("stt-assets")
    tok = train_tokenizer(root, vocab_size=120, min_words=8, max_words=8)

    cfg = lm_configs.reduced(lm_configs.STT_1B, layers=1)
    cfg.update(dim=128, num_heads=2, text_card=tok.vocab_size(), context=100)
    ref_lm = oracle.reference_lm(cfg, seed=2)
    with torch.no_grad():  # make boundaries (0) and padding (3) frequent, as in a trained model
        w = ref_lm.text_linear.weight
        w[0] *= 3.0
        w[3] *= 3.5
    oracle.export_lm(ref_lm, root / "model.safetensors")

    from moshi.models import loaders

    mimi_cfg = copy.deepcopy(loaders._mimi_config)
    mimi_cfg["transformer"]["num_layers"] = 1
    torch.manual_seed(3)
    ref_mimi = loaders.get_mimi(None, mimi_config=mimi_cfg, device="cpu", num_codebooks=32)
    oracle.randomize_mimi(ref_mimi, seed=3)
    oracle.export_mimi(ref_mimi, root / MIMI_NAME)
    (root / TOK_NAME).write_bytes((root / "tok.model").read_bytes())

    audio = {}
    for name, seconds, seed in (("a", 2.5, 1), ("b", 1.7, 2), ("c", 3.0, 3)):
        wav = oracle.test_signal(1, int(seconds * 24000), seed=seed)[0, 0].numpy()
        path = root / f"{name}.wav"
        sf.write(str(path), wav, 24000, subtype="FLOAT")
        audio[name] = path
    return {"root": root, "cfg": cfg, "tok": tok, "ref_lm": ref_lm, "ref_mimi": ref_mimi, "audio": audio}


def make_repo(assets, path, prefix: float, delay: float = 0.5, drop: str | None = None):
    """A local model directory laid out like a hub repo (weights linked from the shared assets)."""
    path.mkdir()
    cfg = copy.deepcopy(assets["cfg"])
    cfg["stt_config"] = {"audio_delay_seconds": delay, "audio_silence_prefix_seconds": prefix}
    (path / "config.json").write_text(json.dumps(cfg))
    for name in ("model.safetensors", MIMI_NAME, TOK_NAME):
        if name != drop:
            (path / name).symlink_to(assets["root"] / name)
    return path


MIMI_1L = MimiConfig(num_layers=1)


@pytest.fixture(scope="module")
def transcribers(assets, tmp_path_factory):
    """get(prefix_seconds) -> an exact Transcriber loaded from a model directory (cached)."""
    cache: dict[float, Transcriber] = {}

    def get(prefix: float) -> Transcriber:
        if prefix not in cache:
            repo = make_repo(assets, tmp_path_factory.mktemp("repo") / "stt", prefix=prefix)
            cache[prefix] = Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L, exact=True)
        return cache[prefix]

    return get


@pytest.fixture(params=[0.0, 1.0], ids=["prefix0", "prefix1"])
def exact(transcribers, request):
    """stt-1b's recipe (no prefix silence) and a 1 s prefix (13 silent chunks)."""
    return transcribers(request.param)


@pytest.fixture
def exact0(transcribers):
    return transcribers(0.0)


def reference_recipe(assets, path, prefix: float, delay: float):
    """The DSM script `stt_from_file_pytorch.py` with the reference models: tokens and VAD per step."""
    from moshi.models.lm import LMGen

    mimi, lm = assets["ref_mimi"], assets["ref_lm"]
    wav, rate = sf.read(str(path), dtype="float32")
    assert rate == 24000
    audio = torch.from_numpy(wav)[None]
    if audio.shape[-1] % FRAME:
        audio = torch.nn.functional.pad(audio, (0, FRAME - audio.shape[-1] % FRAME))
    silence = torch.zeros(1, 1, FRAME)
    chunks = itertools.chain(
        itertools.repeat(silence, math.ceil(prefix * 12.5)),
        torch.split(audio[:, None], FRAME, dim=-1),
        itertools.repeat(silence, math.ceil(delay * 12.5)),
    )
    gen = LMGen(lm, use_sampling=False, temp=0, temp_text=0)
    tokens, vad = [], []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for chunk in chunks:
            codes = mimi.encode(chunk)
            text, heads = gen.step_with_extra_heads(codes)
            tokens.append(int(text[0, 0, 0]))
            vad.append(torch.stack([h[0, 0, 0] for h in heads]))
    return tokens, torch.stack(vad)


# -- parity with the reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix,name", [(0.0, "a"), (0.0, "b"), (1.0, "a")])
def test_transcribe_matches_reference_recipe(assets, transcribers, prefix, name):
    exact = transcribers(prefix)
    path = assets["audio"][name]
    tokens, vad = reference_recipe(assets, path, prefix, 0.5)
    got = exact.transcribe(path)
    assert got.tokens == tokens
    n_prefix = math.ceil(prefix * 12.5)
    assert len(tokens) == n_prefix + math.ceil(sf.info(str(path)).frames / FRAME) + 7
    tok = assets["tok"]
    assert got.text == tok.decode([t for t in tokens if t > 3])
    assert got.words == words_from_tokens(tokens, tok, prefix_chunks=n_prefix, audio_delay_seconds=0.5)
    assert got.vad is not None and got.vad.shape == (len(tokens), 4)
    assert torch.equal(got.vad, vad)
    # The random model must exercise the recipe: boundaries, padding and several words.
    assert tokens.count(0) >= 2 and tokens.count(3) >= 2 and len(got.words) >= 2
    assert all(0.0 <= w.start <= w.end for w in got.words)


def test_array_input_equals_file(assets, exact0):
    exact = exact0
    path = assets["audio"]["b"]
    wav, _ = sf.read(str(path), dtype="float32")
    assert exact.transcribe(wav, sample_rate=24000).tokens == exact.transcribe(path).tokens


def test_batch_equals_one_by_one(assets, transcribers):
    exact = transcribers(1.0)
    paths = [assets["audio"][n] for n in ("a", "b")]  # 2.5 s and 1.7 s: the slots end apart
    batch = exact.transcribe_batch(paths)
    for path, got in zip(paths, batch, strict=True):
        alone = exact.transcribe(path)
        assert got.tokens == alone.tokens
        assert got.words == alone.words and got.text == alone.text
        # Probabilities agree to float rounding: the GEMM blocking depends on the batch size.
        assert (got.vad - alone.vad).abs().max().item() <= 1e-5


def test_stream_equals_transcribe(assets, exact):
    path = assets["audio"]["c"]
    wav, _ = sf.read(str(path), dtype="float32")
    expected = exact.transcribe(path)
    stream = exact.stream()
    rng = np.random.default_rng(0)
    events, pos = [], 0
    while pos < len(wav):
        n = int(rng.integers(1, 5000))
        events += stream.push(wav[pos : pos + n])
        pos += n
    before_flush = len(stream.tokens)
    events += stream.flush()
    assert len(stream.tokens) - before_flush == 1 + exact.suffix_chunks  # partial chunk + suffix
    got = stream.transcript()
    assert got.tokens == expected.tokens
    assert got.words == expected.words and got.text == expected.text
    assert torch.equal(got.vad, expected.vad)
    vad_events = [e for e in events if isinstance(e, VadStep)]
    assert [e.step for e in vad_events] == list(range(len(expected.tokens)))
    assert torch.equal(torch.tensor([e.probs for e in vad_events]), expected.vad)
    # Word events: the Rust recipe over the tokens after the ASR delay, words in order, each ended.
    started = [e for e in events if isinstance(e, WordStarted)]
    ended = [e for e in events if isinstance(e, WordEnded)]
    assert started and ended and len(ended) <= len(started)
    assert isinstance([e for e in events if not isinstance(e, VadStep)][-1], WordEnded)
    delay = stream.words.asr_delay_in_tokens
    tail = [t for t in expected.tokens[delay - 1 :] if t > 3]
    tok = assets["tok"]
    assert "".join(e.text for e in started).replace(" ", "") == tok.decode(tail).replace(" ", "")
    with pytest.raises(DsmError, match="flushed"):
        stream.push(wav[:100])


def test_fast_kernels_agree_with_exact(assets, tmp_path):
    repo = make_repo(assets, tmp_path / "stt", prefix=0.0)
    fast = Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L)
    assert not fast.exact
    path = assets["audio"]["a"]
    expected, _ = reference_recipe(assets, path, 0.0, 0.5)
    got = fast.transcribe(path).tokens
    same = sum(a == b for a, b in zip(got, expected, strict=True))
    assert same / len(expected) >= 0.9


def test_temperature_sampling_is_seeded(assets, exact0):
    exact = exact0
    path = assets["audio"]["b"]
    a = exact.transcribe(path, temperature=1.0, seed=5)
    b = exact.transcribe(path, temperature=1.0, seed=5)
    assert a.tokens == b.tokens
    assert transcript_text(a.tokens, assets["tok"]) == a.text


# -- checkpoint resolution -------------------------------------------------------------------------------


def test_explicit_files_override_the_repo(assets, tmp_path):
    root = assets["root"]
    repo = make_repo(assets, tmp_path / "stt", prefix=0.0, drop=TOK_NAME)
    with pytest.raises(CheckpointError, match=TOK_NAME):
        SttCheckpoint.resolve(repo)
    ckpt = SttCheckpoint.resolve(repo, tokenizer=root / "tok.model")
    assert ckpt.tokenizer == root / "tok.model" and ckpt.moshi_weight == repo / "model.safetensors"
    alone = SttCheckpoint.resolve(
        moshi_weight=root / "model.safetensors",
        mimi_weight=root / MIMI_NAME,
        tokenizer=root / "tok.model",
        config_path=repo / "config.json",
    )
    assert alone.mimi_weight == root / MIMI_NAME
    assert alone.stt_config.audio_delay_seconds == 0.5
    assert alone.lm_config.extra_heads_num_heads == 4


@pytest.mark.parametrize("drop", ["model.safetensors", MIMI_NAME, "config.json"])
def test_missing_checkpoint_file(assets, tmp_path, drop):
    repo = make_repo(assets, tmp_path / "stt", prefix=0.0, drop=drop)
    if drop == "config.json":
        (repo / "config.json").unlink()
    with pytest.raises(CheckpointError, match=drop.replace(".", r"\.")):
        Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L)


def test_explicit_files_need_a_config(assets):
    with pytest.raises(CheckpointError, match="config-path"):
        SttCheckpoint.resolve(moshi_weight=assets["root"] / "model.safetensors")


def test_offline_hub_with_empty_cache_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "empty-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="config.json.*HF_HUB_OFFLINE"):
        Transcriber.from_checkpoint("kyutai/stt-1b-en_fr")
    assert time.monotonic() - start < 10


# -- audio errors ----------------------------------------------------------------------------------------


def test_audio_errors(exact0, tmp_path):
    exact = exact0
    with pytest.raises(AudioError, match="not found"):
        exact.transcribe(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="garbage.wav"):
        exact.transcribe(garbage)
    silent = tmp_path / "empty.wav"
    sf.write(str(silent), np.zeros(0, dtype=np.float32), 24000)
    with pytest.raises(AudioError, match="empty.wav"):
        exact.transcribe(silent)
    with pytest.raises(AudioError, match="empty"):
        exact.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(DsmError, match="non-finite"):
        exact.transcribe(np.full(2000, np.nan, dtype=np.float32))
    with pytest.raises(AudioError, match="not found"):
        exact.transcribe_batch([garbage.parent / "missing.wav"])
