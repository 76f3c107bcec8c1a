"""The TTS synthesizer against the reference pipeline (`moshi.models.tts.TTSModel.generate` + Mimi
streaming decode) on a small random TTS-architecture checkpoint (tests/tts_assets.py): same codes, fed
text tokens, word steps and end step, at a fixed seed and greedy, for texts, batches, dialogs, breaks,
fewer codebooks, the padding bonus and real CFG; streaming and long-text consistency; input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsm.errors import CheckpointError, InputError
from dsm.tts.synthesizer import Synthesizer

oracle = pytest.importorskip("oracle")
tts_assets = pytest.importorskip("tts_assets")

TEXT = "The cat sees a red bird. Music in the garden!"
VOICE, VOICE2, VOICE3 = tts_assets.VOICES
DELAY = 16  # 1.28 s at 12.5 Hz


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return tts_assets.shared(tmp_path_factory)


@pytest.fixture(scope="module")
def exact(assets):
    return load(assets, exact=True)


@pytest.fixture(scope="module")
def fast(assets):
    return load(assets, n_q=8)


def load(assets, **options) -> Synthesizer:
    return Synthesizer.from_checkpoint(
        assets["repo"],
        dtype=torch.float32,
        mimi_config=tts_assets.MIMI_1L,
        voice_repo=str(assets["voices"]),
        **options,
    )


def configure(synth: Synthesizer, **settings):
    """Set generation attributes of a shared synthesizer for one test (returns the old values)."""
    old = {k: getattr(synth, k) for k in settings}
    for k, v in settings.items():
        setattr(synth, k, v)
    return old


def reference_run(
    assets, scripts, voices, seed, n_q=32, padding_bonus=0.0, temp=0.6, cfg=2.0, real_cfg=False, decode=False
):
    """Reference generate (+ decode): (frames [B, 1 + n_q, T] from code time 0, result, pcm). The audio is
    decoded in one go, which equals the reference's frame-by-frame streaming decode to float rounding."""
    ref = tts_assets.reference_tts(assets, n_q=n_q, padding_bonus=padding_bonus, temp=temp)
    if real_cfg:  # as for a model without distilled CFG
        ref.__dict__["valid_cfg_conditionings"] = set()
        ref.cfg_coef = cfg
    entries = [ref.prepare_script(s if isinstance(s, list) else [s], padding_between=1) for s in scripts]
    attrs = [
        ref.make_condition_attributes(
            [assets["voices"] / (v + tts_assets.SUFFIX) for v in (vs if isinstance(vs, list) else [vs])],
            cfg_coef=None if real_cfg else cfg,
        )
        for vs in voices
    ]
    torch.manual_seed(seed)
    try:
        result = ref.generate(entries, attrs)
    finally:
        assets["ref_lm"].dep_q = 32
    frames = torch.cat(result.frames, dim=2)
    pcm = None
    if decode:
        with torch.no_grad():
            pcm = assets["ref_mimi"].decode(frames[:, 1:, DELAY:]).clip(-1, 1)[:, 0]
    return frames, result, pcm


def check_same(got, frames, result, b: int = 0, n_q: int = 32, pcm=None):
    n = got.codes.shape[1]
    end = result.end_steps[b]
    assert got.end_step == end is not None
    assert n == end + 4 - 2  # audio up to the end of the text + final padding - acoustic delay
    assert got.codes.shape[0] == n_q
    assert torch.equal(got.codes, frames[b, 1 : 1 + n_q, DELAY : DELAY + n])
    assert got.text_tokens == result.logged_text_tokens[b]
    assert [(w.text, w.step) for w in got.words] == result.all_transcripts[b]
    if pcm is not None:
        assert got.audio.shape == (n * 1920,)
        np.testing.assert_allclose(got.audio, pcm[b, : n * 1920].numpy(), atol=1e-4, rtol=0)


# -- parity with the reference -------------------------------------------------------------------------


def test_seeded_synthesis_matches_reference(assets, exact):
    frames, result, pcm = reference_run(assets, [TEXT], [VOICE], seed=11, decode=True)
    got = exact.synthesize(TEXT, VOICE, seed=11)
    check_same(got, frames, result, pcm=pcm)
    # The random model exercises the machine: words taken on its own request and on forced ones.
    sampled = [s for s, _ in got.text_tokens]
    assert sampled.count(0) >= 2 and sampled.count(3) >= 5
    assert [w.text for w in got.words] == TEXT.split()
    assert all(w.start < w.end for w in got.words)
    assert got.words[0].start == got.words[0].step / 12.5
    assert got.words[1].start == got.words[0].end
    assert got.duration == pytest.approx((result.end_steps[0] + 2) * 0.08)
    assert (frames[0, 1:, :DELAY] == -1).all()  # the audio delay region


def test_greedy_matches_reference(assets, exact):
    old = configure(exact, temperature=0.0, n_q=8)
    try:
        got = exact.synthesize("The cat sees a bird.", VOICE2, decode=False)
    finally:
        configure(exact, **old)
    frames, result, _ = reference_run(assets, ["The cat sees a bird."], [VOICE2], seed=0, temp=0.0, n_q=8)
    check_same(got, frames, result, n_q=8)
    assert got.audio.size == 0


def test_batch_dialog_breaks_bonus_match_reference(assets, exact):
    """A batch through one engine: a two-voice dialog and a text with pauses, 16 codebooks, a padding
    bonus (slower speech) and another CFG value."""
    scripts = [["Hello there.", "Hi! How are you?"], 'Good night <break time="0.4s"/> again.']
    voices = [[VOICE, VOICE2], VOICE3]  # a shorter voice: the batch pads its cross-attention source
    old = configure(exact, n_q=16, padding_bonus=1.0, cfg_coef=3.0)
    try:
        got = exact.synthesize_batch(scripts, voices=voices, seed=5, decode=False)
    finally:
        configure(exact, **old)
    frames, result, _ = reference_run(assets, scripts, voices, seed=5, n_q=16, padding_bonus=1.0, cfg=3.0)
    for b in range(2):
        check_same(got[b], frames, result, b, n_q=16)
    card = assets["cfg"]["text_card"] + 1
    fed = [f % card for _, f in got[0].text_tokens]  # main stream of the demuxed tokens
    assert 1 in fed and 2 in fed  # both speaker tokens
    assert len(result.all_consumption_times[1]) == 4  # 3 words + the pause


def test_real_cfg_matches_reference(assets, exact):
    """Models without distilled CFG run real classifier-free guidance (null-conditioned copies)."""
    old = configure(exact, n_q=4, valid_cfg_values=[])
    try:
        got = exact.synthesize("The dog runs home.", VOICE, seed=2, decode=False)
    finally:
        configure(exact, **old)
    frames, result, _ = reference_run(assets, ["The dog runs home."], [VOICE], seed=2, n_q=4, real_cfg=True)
    check_same(got, frames, result, n_q=4)


# -- streaming, batching, long texts ---------------------------------------------------------------------


def test_stream_with_words_arriving_equals_synthesize(assets, fast):
    """Text pushed in pieces (words split across pushes) while audio is pulled: same codes, tokens and
    words as the whole text, the audio starts before the text is complete, and the frame-by-frame audio
    equals the one-shot decoding of `synthesize` to float rounding."""
    text = "Hello there, my friend. Good night!"
    expected = fast.synthesize(text, VOICE, seed=3)
    session = fast.session(VOICE, seed=3)
    rng = np.random.default_rng(0)
    chunks, pos = [], 0
    while pos < len(text):
        n = int(rng.integers(1, 8))
        session.push(text[pos : pos + n])
        pos += n
        chunks += list(session.frames())
    before_end = len(chunks)
    session.end()
    chunks += list(session.frames())
    assert session.done and 0 < before_end < len(chunks)
    got = session.result()
    assert torch.equal(got.codes, expected.codes)
    assert got.text_tokens == expected.text_tokens and got.words == expected.words
    assert [c.index for c in chunks] == list(range(got.codes.shape[1]))
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), expected.audio, atol=1e-4)
    starts = [(w.text, c.index) for c in chunks for w in c.words]
    assert starts == [(w.text, w.step) for w in got.words]
    assert session.time_to_first_audio is not None and session.time_to_first_audio > 0
    seen = []
    on_frame = fast.synthesize("Good night!", VOICE, seed=3, on_frame=seen.append)
    assert [c.index for c in seen] == list(range(on_frame.codes.shape[1]))
    assert on_frame.time_to_first_audio is not None


def test_soft_decode(assets):
    """`soft_decode`: codebooks 1+ decoded as their code vectors averaged under the model's distribution.
    The drawn codes (and so generation) are unchanged; with peaked logits and greedy draws the mean
    vector is the drawn code's own, so the audio is the hard decoding's (each codebook taken from the
    step at which it was sampled); with the model's flat logits it differs; frame by frame it equals the
    one-shot decoding."""
    synth = load(assets, n_q=8, soft_decode=True)
    text = "Music in the garden, every night!"
    soft = synth.synthesize(text, VOICE, seed=2)
    configure(synth, soft_decode=False)
    hard = synth.synthesize(text, VOICE, seed=2)
    assert torch.equal(soft.codes, hard.codes) and soft.words == hard.words
    assert soft.audio.shape == hard.audio.shape
    assert np.abs(soft.audio - hard.audio).max() > 1e-3
    configure(synth, soft_decode=True)
    frames = []
    streamed = synth.synthesize(text, VOICE, seed=2, on_frame=frames.append)
    assert torch.equal(streamed.codes, soft.codes)
    np.testing.assert_allclose(np.concatenate([f.audio for f in frames]), soft.audio, atol=1e-4)

    with torch.no_grad():
        for head in synth.lm.linears:
            head.weight.mul_(1e4)
    configure(synth, temperature=0.0)
    peaked = synth.synthesize(text, VOICE)
    configure(synth, soft_decode=False)
    peaked_hard = synth.synthesize(text, VOICE)
    assert torch.equal(peaked.codes, peaked_hard.codes)
    np.testing.assert_allclose(peaked.audio, peaked_hard.audio, atol=1e-5)


def test_fast_kernels_agree_with_exact(assets, exact, fast):
    old = configure(exact, n_q=8, temperature=0.0)
    old_fast = configure(fast, temperature=0.0)
    try:
        a = exact.synthesize("Music in the garden, every night!", VOICE, decode=False)
        b = fast.synthesize("Music in the garden, every night!", VOICE, decode=False)
    finally:
        configure(exact, **old)
        configure(fast, **old_fast)
    assert a.words == b.words
    n = min(a.codes.shape[1], b.codes.shape[1])
    assert (a.codes[:, :n] == b.codes[:, :n]).float().mean() >= 0.95


@pytest.mark.parametrize("kind,least", [("fp16", 0.95), ("int8", 0.8), ("w8a8", 0.7)])
def test_quantized_synthesis_agrees(assets, exact, kind, least):
    """`quantize=`: reduced-precision products in the temporal and depth transformers; greedy codes
    close to the reference kernels' (random weights: nearly flat logits; measured fp16 100 %, int8 88 %,
    w8a8 77 %)."""
    quantized = load(assets, n_q=8, temperature=0.0, quantize=kind)
    old = configure(exact, n_q=8, temperature=0.0)
    try:
        a = exact.synthesize("Music in the garden, every night!", VOICE, decode=False)
        b = quantized.synthesize("Music in the garden, every night!", VOICE, decode=False)
    finally:
        configure(exact, **old)
    assert a.words == b.words
    n = min(a.codes.shape[1], b.codes.shape[1])
    assert (a.codes[:, :n] == b.codes[:, :n]).float().mean() >= least
    assert quantized.lm.quantized_linear(kind).quantized_parameters > 0
    with pytest.raises(InputError, match="exact"):
        load(assets, quantize=kind, exact=True)


def test_batch_slots_equal_single_runs_greedy(fast):
    old = configure(fast, temperature=0.0)
    try:
        texts = ["Good morning.", "The river is very green today."]
        batch = fast.synthesize_batch(texts, voices=[VOICE, VOICE2], decode=False)
        alone = [fast.synthesize(t, v, decode=False) for t, v in zip(texts, [VOICE, VOICE2], strict=True)]
    finally:
        configure(fast, **old)
    for got, ref in zip(batch, alone, strict=True):
        assert got.words == ref.words and got.end_step == ref.end_step
        assert (got.codes == ref.codes).float().mean() >= 0.95  # batch GEMMs round differently


def test_long_text_is_split_and_joined(fast):
    old = configure(fast, max_words_per_chunk=5)
    try:
        text = "Good morning. The cat sees a bird; the dog runs home. Music!"
        got = fast.synthesize(text, VOICE, seed=1, decode=False)
        parts = fast.synthesize_batch(
            ["Good morning.", "The cat sees a bird;", "the dog runs home. Music!"],
            VOICE,
            seed=1,
            decode=False,
        )
    finally:
        configure(fast, **old)
    assert [w.text for w in got.words] == text.split()
    assert torch.equal(got.codes, torch.cat([p.codes for p in parts], dim=1))
    starts = [w.start for w in got.words]
    assert starts == sorted(starts)
    assert got.words[2].start == pytest.approx(parts[0].duration + parts[1].words[0].start)


# -- errors ------------------------------------------------------------------------------------------


def test_input_errors(assets, fast):
    with pytest.raises(InputError, match="empty"):
        fast.synthesize("   ", VOICE)
    with pytest.raises(InputError, match="no words"):
        fast.synthesize("... !? -- ", VOICE)
    with pytest.raises(InputError, match="no words"):
        fast.synthesize('<break time="1s"/>', VOICE)
    with pytest.raises(InputError, match=r"unknown voice 'nobody/none\.wav'[\s\S]*vctk/p225_023\.wav"):
        fast.synthesize(TEXT, "nobody/none.wav")
    with pytest.raises(InputError, match="voice file not found"):
        fast.synthesize(TEXT, "/nonexistent/voice.safetensors")
    old = configure(fast, max_chars=20)
    try:
        with pytest.raises(InputError, match="more than the limit of 20"):
            fast.synthesize(TEXT, VOICE)
    finally:
        configure(fast, **old)
    old = configure(fast, cfg_coef=2.2)
    try:
        with pytest.raises(InputError, match=r"cfg_coef 2\.2 is not supported .*valid: 1, 1\.5, 2"):
            fast.synthesize(TEXT, VOICE)
    finally:
        configure(fast, **old)
    with pytest.raises(InputError, match="n_q must be between 1 and 32"):
        load(assets, n_q=33)
    with pytest.raises(InputError, match="at most 5 voices"):
        fast.synthesize(TEXT, [VOICE] * 6)
    with pytest.raises(InputError, match="2 voices for 1 scripts"):
        fast.synthesize_batch([TEXT], voices=[VOICE, VOICE2])
    session = fast.session(VOICE)
    session.push("...")
    with pytest.raises(InputError, match="no words"):
        session.end()
    with pytest.raises(CheckpointError, match="no TTS config"):  # files but no config
        Synthesizer.from_checkpoint(moshi_weight="model.safetensors")


def test_voice_by_path_and_tensor(assets, fast):
    path = assets["voices"] / (VOICE + tts_assets.SUFFIX)
    old = configure(fast, temperature=0.0)
    try:
        by_name = fast.synthesize("Hello.", VOICE, decode=False)
        by_path = fast.synthesize("Hello.", str(path), decode=False)
        by_tensor = fast.synthesize("Hello.", fast.voice_embedding(str(path)), decode=False)
    finally:
        configure(fast, **old)
    assert torch.equal(by_name.codes, by_path.codes) and torch.equal(by_name.codes, by_tensor.codes)
    assert 1 <= len(fast._cross_cache) <= fast.cross_cache_size  # the voice's keys/values were reused
