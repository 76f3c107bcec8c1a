"""The STT transcriber against the DSM scripts' streaming recipe (B) run with the reference `moshi` models,
on the small hub-style model directory of `tests/stt_assets.py`."""

from __future__ import annotations

import functools
import itertools
import math
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

import dsm.stt.transcriber as transcriber_module
from dsm.audio import read_audio, resample, stream_audio
from dsm.errors import AudioError, CheckpointError, DsmError
from dsm.stt.checkpoint import SttCheckpoint
from dsm.stt.timestamps import WordEnded, WordStarted, transcript_text, words_from_tokens
from dsm.stt.transcriber import Transcriber, VadStep

oracle = pytest.importorskip("oracle")

from stt_assets import FRAME, MIMI_1L, MIMI_NAME, TOK_NAME, make_repo  # noqa: E402


@pytest.fixture(scope="module")
def assets(stt_assets):
    return stt_assets


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


def test_fast_block_encoding_equals_frame_by_frame(assets, tmp_path):
    """Fast mode encodes 16 frames per Mimi call offline: the codes (so the tokens) are those of the
    frame-by-frame live session, and a batch whose slots end apart equals one-by-one."""
    fast = Transcriber.from_checkpoint(make_repo(assets, tmp_path / "stt", prefix=1.0), mimi_config=MIMI_1L)
    paths = [assets["audio"][n] for n in ("a", "b", "c")]
    batch = fast.transcribe_batch(paths)
    for path, got in zip(paths, batch, strict=True):
        alone = fast.transcribe(path)
        assert got.tokens == alone.tokens and got.words == alone.words
        wav, _ = sf.read(str(path), dtype="float32")
        stream = fast.stream()
        stream.push(wav)
        stream.flush()
        assert stream.transcript().tokens == alone.tokens
        assert len(alone.tokens) > transcriber_module.ENCODE_BLOCK  # several blocks, one cut short


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


@pytest.mark.parametrize("quantize,agree", [(None, 0.9), ("fp16", 0.9), ("int8", 0.9), ("w8a8", 0.8)])
def test_fast_kernels_agree_with_exact(assets, tmp_path, quantize, agree):
    """Fast kernels (and reduced-precision products, `--quantize fp16 / int8 / w8a8`) pick the
    reference's tokens at nearly every step (random weights: nearly flat logits, so rounding flips a few;
    w8a8, which also rounds the activations to 8 bits, keeps 85 %)."""
    repo = make_repo(assets, tmp_path / "stt", prefix=0.0)
    fast = Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L, quantize=quantize)
    assert not fast.exact
    path = assets["audio"]["a"]
    expected, _ = reference_recipe(assets, path, 0.0, 0.5)
    got = fast.transcribe(path).tokens
    same = sum(a == b for a, b in zip(got, expected, strict=True))
    assert same / len(expected) >= agree
    if quantize:
        assert fast.lm.quantized_linear(quantize).quantized_parameters > 0
        with pytest.raises(DsmError, match="exact"):
            Transcriber.from_checkpoint(repo, mimi_config=MIMI_1L, quantize=quantize, exact=True)


def test_resampled_file_and_bytes_equal_their_samples(assets, exact0, tmp_path):
    """Files at other rates are resampled block by block, as `read_audio` does at once."""
    wav, _ = sf.read(str(assets["audio"]["b"]), dtype="float32")
    path = tmp_path / "b16k.flac"
    sf.write(str(path), resample(wav, 24000, 16000), 16000)
    expected = exact0.transcribe(read_audio(path, 24000), sample_rate=24000)
    assert exact0.transcribe(path).tokens == expected.tokens
    got = exact0.transcribe(path.read_bytes())
    assert got.tokens == expected.tokens and got.duration == expected.duration


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


# -- prompting (model-spec §4.4) -------------------------------------------------------------------------


def reference_prompt_recipe(assets, target, prompt_wav, prompt_text: str | None, delay: float = 0.5):
    """The DSM prompt script with the reference models (prefix 0): chunks of prefix silence, prompt audio,
    10 silent chunks, target, suffix silence; the PromptHook forcing the prompt text's tokens."""
    from moshi.models.lm import LMGen

    mimi, lm, tok = assets["ref_mimi"], assets["ref_lm"], assets["tok"]
    expected = list(tok.encode(prompt_text)) if prompt_text else []

    def on_logits(logits):
        if expected:
            keep = logits.clone()
            logits.fill_(float("-inf"))
            for t in (0, 3, expected[0]):
                logits[..., t] = keep[..., t]

    def on_text(token):
        t = int(token[0])
        if expected and t not in (0, 3):
            assert t == expected[0]
            expected.pop(0)

    def chunks_of(wav):
        wav = torch.from_numpy(wav)[None, None]
        wav = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % FRAME))
        return list(torch.split(wav, FRAME, dim=-1))

    silence = torch.zeros(1, 1, FRAME)
    chunks = [] if prompt_wav is None else chunks_of(prompt_wav) + [silence] * 10
    chunks += chunks_of(target) + [silence] * math.ceil(delay * 12.5)
    gen = LMGen(
        lm, use_sampling=False, temp=0, temp_text=0, on_text_logits_hook=on_logits, on_text_hook=on_text
    )
    tokens = []
    with torch.no_grad(), mimi.streaming(1), gen.streaming(1):
        for chunk in chunks:
            tokens.append(int(gen.step(mimi.encode(chunk))[0, 0, 0]))
    return tokens, expected


@pytest.mark.parametrize("use_audio,use_text", [(True, False), (False, True), (True, True)])
def test_prompt_matches_reference_recipe(assets, exact0, use_audio, use_text):
    tok = assets["tok"]
    target, _ = sf.read(str(assets["audio"]["b"]), dtype="float32")
    prompt_wav = sf.read(str(assets["audio"]["a"]), dtype="float32")[0][:30000] if use_audio else None
    # Words the random model itself writes on this audio, so that greedy forcing can complete them.
    own = [w.text for w in exact0.transcribe(assets["audio"]["c"]).words]
    prompt_text = " ".join(own[:2]) if use_text else None
    tokens, left = reference_prompt_recipe(assets, target, prompt_wav, prompt_text)
    assert not left, "the reference did not complete the forced prompt"
    got = exact0.transcribe(target, sample_rate=24000, prompt_text=prompt_text, prompt_audio=prompt_wav)
    assert got.tokens == tokens
    # The cut: a word boundary after the forced text (and after the audio prompt plus the delay).
    cut = got.prompt_steps
    assert 0 < cut < len(tokens) and tokens[cut] == 0
    if use_text:
        forced = list(tok.encode(prompt_text))
        pieces = [i for i, t in enumerate(tokens) if t > 3]
        assert [tokens[i] for i in pieces[: len(forced)]] == forced  # forced from the first step on
        assert pieces[len(forced) - 1] < cut
    if use_audio:
        assert cut >= math.ceil(30000 / FRAME) + 10 // 2 + 6 - 1
    assert got.text == tok.decode([t for t in tokens[cut:] if t > 3])
    full = words_from_tokens(tokens, tok, prefix_chunks=0, audio_delay_seconds=0.5)
    kept = [w for w in full if w.start >= (cut + 1) / 12.5 - 0.5]
    shift = (math.ceil(30000 / FRAME) + 10) / 12.5 if use_audio else 0.0
    assert [w.text for w in got.words] == [w.text for w in kept]
    for w, k in zip(got.words, kept, strict=True):
        assert w.start == pytest.approx(max(0.0, k.start - shift)) and w.end == pytest.approx(
            max(0.0, k.end - shift)
        )
    assert all(w.end <= got.duration + 1.0 for w in got.words)


def test_prompt_errors_and_batch(assets, exact0):
    target = assets["audio"]["b"]
    with pytest.raises(DsmError, match="prompt text is empty"):
        exact0.transcribe(target, prompt_text="  ")
    with pytest.raises(AudioError, match="not found"):
        exact0.transcribe(target, prompt_audio=target.parent / "nope.wav")
    paths = [assets["audio"]["a"], target]
    batch = exact0.transcribe_batch(paths, prompt_audio=assets["audio"]["c"])
    for path, got in zip(paths, batch, strict=True):
        assert got.tokens == exact0.transcribe(path, prompt_audio=assets["audio"]["c"]).tokens


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_long_form_stream_runs_in_constant_memory(assets, transcribers):
    """Far past the KV ring (context 100 steps): the state is written in place and memory stays flat."""
    stream = transcribers(0.0).stream()
    rng = np.random.default_rng(1)
    second = (0.1 * rng.standard_normal(24000)).astype(np.float32)
    for _ in range(10):  # past the ring once: every buffer exists now
        stream.push(second)
    gen = stream._gen
    pointers = [t.data_ptr() for t in gen.state.keys + gen.state.values]
    before = _rss_bytes()
    for _ in range(30):  # 30 s more: 375 steps, 3.75 times the context
        stream.push(second)
    growth = _rss_bytes() - before
    assert stream.step == 40 * 12.5
    assert [t.data_ptr() for t in gen.state.keys + gen.state.values] == pointers
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB"
    events = stream.flush()
    assert stream.transcript().duration == 40.0 and isinstance(events, list)


def test_long_file_streams_from_disk(assets, exact0, tmp_path, monkeypatch):
    """A file is decoded block by block as the model consumes it: the same transcript as its samples given
    as an array, without ever decoding it whole, and a peak of traced (Python and numpy) memory far below
    its decoded size. Blocks of 0.1 s instead of the default 2.7 s let a 12 s file show it quickly."""
    base = np.concatenate([sf.read(str(assets["audio"][n]), dtype="float32")[0] for n in "abc"])
    wav = np.tile(base, 2)[: 12 * 24000]
    path = tmp_path / "long.wav"
    sf.write(str(path), wav, 24000, subtype="FLOAT")
    expected = exact0.transcribe(wav, sample_rate=24000)

    def whole(*args, **kwargs):
        raise AssertionError("a file was decoded whole")

    monkeypatch.setattr(transcriber_module, "read_audio", whole)
    small_blocks = functools.partial(stream_audio, block_frames=2400)
    monkeypatch.setattr(transcriber_module, "stream_audio", small_blocks)
    tracemalloc.start()
    try:
        got = exact0.transcribe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.tokens == expected.tokens and len(got.tokens) == 150 + 7
    assert got.text == expected.text and got.words == expected.words
    assert torch.equal(got.vad, expected.vad)
    assert got.duration == expected.duration == 12.0
    assert peak < wav.nbytes / 4, f"peak {peak / 2**10:.0f} KiB for {wav.nbytes / 2**10:.0f} KiB of audio"
