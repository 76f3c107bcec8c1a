"""TTS text handling and word scheduling: script parsing against the reference's `script_to_entries`,
incremental parsing, long-text splitting, and the state machine (hand-computed token streams, and the
reference `StateMachine` on random model outputs)."""

from __future__ import annotations

import random

import pytest
from tiny_tokenizer import WORDS, train_tokenizer

from dsm.errors import InputError
from dsm.tts.script import Entry, ScriptParser, has_speech, normalize_text, script_entries, split_text
from dsm.tts.state_machine import StateMachine


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=120, min_words=4, max_words=9)


SCRIPTS = [
    ["the cat sees a bird"],
    ["  the   cat\tsees\n a bird  "],
    ['the cat <break time="1.5s"/> sees a <break time="2s"> bird'],
    ['music:time (again) today’s <break time="0.3s" /> river'],
    ["the dog", "a bird sings", "good night"],
    ["", "the other speaker starts"],
    ["one", "", "three"],
    ['<break time="1s"/>the<break time="0.04s"/>end'],
]


def _as_tuples(entries):
    return [(list(e.tokens), e.text, e.padding) for e in entries]


@pytest.mark.parametrize("script", SCRIPTS, ids=range(len(SCRIPTS)))
@pytest.mark.parametrize("multi_speaker", [True, False])
def test_entries_match_reference(tok, script, multi_speaker):
    from moshi.models.tts import TokenIds, script_to_entries

    expected = script_to_entries(tok, TokenIds(121), 12.5, script, multi_speaker, padding_between=1)
    parser = ScriptParser(tok, multi_speaker, padding_between=1, normalize=False)
    assert _as_tuples(parser.parse(script)) == _as_tuples(expected)
    ours = ScriptParser(tok, multi_speaker, padding_between=1).parse(script)  # extra clean-ups: no-ops here
    assert _as_tuples(ours) == _as_tuples(expected)


def test_entry_details(tok):
    entries = script_entries(tok, ['the cat <break time="1.5s"/> sees', "a bird"])
    assert [e.text for e in entries] == ["the", "cat", "", "sees", "a", "bird"]
    assert entries[0].tokens[0] == 1 and entries[4].tokens[0] == 2  # speaker tokens: main, then other
    assert entries[2].is_pause and entries[2].padding == 19  # round(1.5 * 12.5)
    assert all(e.padding == len(e.tokens) for e in entries if e.tokens)  # padding_between = 1
    no_pad = ScriptParser(tok, padding_between=0).parse("the cat")
    assert [e.padding for e in no_pad] == [0, 0]


def test_incremental_parsing_equals_whole(tok):
    rng = random.Random(0)
    text = 'the cat: sees (a) bird <break time="0.5s"/> music  today <break time="2s">again the end'
    expected = _as_tuples(ScriptParser(tok).parse(text))
    for _ in range(30):
        parser, got, pos = ScriptParser(tok), [], 0
        while pos < len(text):
            n = rng.randint(1, 9)
            got += parser.push(text[pos : pos + n])
            pos += n
        got += parser.finish()
        assert _as_tuples(got) == expected
    parser = ScriptParser(tok)
    assert parser.push("hel") == [] and parser.push("lo wor") != [] and parser.push("ld <break ti") != []
    assert [e.padding for e in parser.push('me="1s"/> x')] == [12]
    # Dialog turns through the incremental interface.
    parser = ScriptParser(tok)
    got = parser.push("the dog") + parser.new_turn() + parser.push("a bird") + parser.finish()
    assert _as_tuples(got) == _as_tuples(ScriptParser(tok).parse(["the dog", "a bird"]))


def test_normalization_and_speech_detection():
    assert normalize_text("“Hello” — it’s\u00a0fine…\u200b", extra=True) == '"Hello"  -  it\'s\u00a0fine...'
    assert normalize_text("a:b (c)", extra=False) == "a b c"
    assert normalize_text("tab\there\x07", extra=True) == "tab here"
    assert has_speech("Ça va? 42") and has_speech("日本")
    assert not has_speech("... ?! -- ") and not has_speech('<break time="1s"/>') and not has_speech("")


def test_script_errors(tok):
    with pytest.raises(InputError, match="empty"):
        script_entries(tok, "  \n ")
    with pytest.raises(InputError, match="empty"):
        script_entries(tok, ["", " "])
    with pytest.raises(InputError, match="no words"):
        script_entries(tok, "?! ...")
    with pytest.raises(InputError, match="no words"):
        script_entries(tok, '<break time="2s"/>')
    with pytest.raises(InputError, match="invalid break duration"):
        script_entries(tok, 'the <break time="1x5s"/> end')
    with pytest.raises(InputError, match="no turns"):
        ScriptParser(tok).parse([])


def test_split_text():
    text = (
        "First sentence here. Second one is a bit longer, with a clause; third! "
        'A <break time="1.5s"/> pause.\n\nNew paragraph without end'
    )
    chunks = split_text(text, max_words=6)
    assert chunks == [
        "First sentence here.",
        "Second one is a bit longer,",
        "with a clause; third!",
        'A <break time="1.5s"/> pause.',
        "New paragraph without end",
    ]
    assert " ".join(chunks).split() == text.split()
    assert split_text(text, max_words=1000) == [" ".join(text.split())]
    words = " ".join(WORDS[:25])
    assert [len(c.split()) for c in split_text(words, 10)] == [10, 10, 5]
    with pytest.raises(InputError):
        split_text("a b", 0)


# -- state machine --------------------------------------------------------------------------------------


def run_machine(machine, entries, tokens):
    state = machine.new_state(entries)
    out = [machine.process(step, state, t) for step, t in enumerate(tokens)]
    return [o for o, _ in out], [c for _, c in out], state


def test_state_machine_single_stream_by_hand():
    machine = StateMachine(card=10, second_stream_ahead=0, max_padding=3, initial_padding=2)
    entries = [Entry([5, 6], "A", 2), Entry([7], "B", 1)]
    tokens = [0, 0, 3, 0, 3, 0, 3, 3, 5, 3, 0]
    out, consumed, state = run_machine(machine, entries, tokens)
    # initial padding; max padding forces word A; its tokens; the model asks for B; B; pads until max
    # padding forces a word that does not exist: end of text at step 9.
    assert out == [3, 3, 0, 5, 6, 0, 7, 3, 3, 3, 3]
    assert consumed == [False, False, True, False, False, True, False, False, False, False, False]
    assert state.end_step == 9 and state.transcript == [("A", 2), ("B", 5)]
    assert state.consumption_times == [2, 5]


def test_state_machine_second_stream_by_hand():
    machine = StateMachine(card=10, second_stream_ahead=2, max_padding=3, initial_padding=1)
    entries = [Entry([5, 6], "A"), Entry([7], "B"), Entry([8], "C")]
    out, _, state = run_machine(machine, entries, [0, 3, 3, 0, 0, 0, 0])
    # (second + 1) * 10 + main: new-word markers on the second stream, with the lookahead word (C's 8
    # while A is fed), the current word's pieces on the main stream; the end marker, then nothing.
    assert out == [3, 15, 96, 17, 18, 13, 3]
    assert state.end_step == 5


def test_state_machine_pauses_and_padding_rules():
    machine = StateMachine(card=10, second_stream_ahead=0, max_padding=8, initial_padding=0)
    entries = [Entry([], "", 3), Entry([4], "w", 0)]
    out, consumed, state = run_machine(machine, entries, [0, 0, 0, 0, 0, 3])
    assert out == [3, 3, 3, 0, 4, 3]  # the pause is taken as padding and makes 3 pads (incl. its own)
    assert consumed == [True, False, False, True, False, False]
    assert state.transcript == [("w", 3)] and state.consumption_times == [0, 3]


@pytest.mark.parametrize("ahead", [0, 2])
def test_state_machine_matches_reference(ahead):
    from moshi.models.tts import Entry as RefEntry
    from moshi.models.tts import StateMachine as RefMachine
    from moshi.models.tts import TokenIds

    rng = random.Random(ahead)
    for trial in range(40):
        raw = []
        for _ in range(rng.randint(0, 8)):
            if rng.random() < 0.2:
                raw.append(([], "", rng.randint(0, 4)))
            else:
                tokens = [rng.randint(4, 99) for _ in range(rng.randint(1, 4))]
                raw.append((tokens, f"w{len(raw)}", rng.randint(0, 4)))
        max_padding, initial = rng.randint(1, 8), rng.randint(0, 3)
        ref = RefMachine(TokenIds(100), ahead, max_padding, initial)
        ours = StateMachine(100, ahead, max_padding, initial)
        ref_state = ref.new_state([RefEntry(list(t), w, p) for t, w, p in raw])
        state = ours.new_state([Entry(list(t), w, p) for t, w, p in raw])
        for step in range(60):
            token = rng.choice([0, 3, 3, 0, 7, 99])
            assert ours.process(step, state, token) == ref.process(step, ref_state, token), (trial, step)
        assert state.end_step == ref_state.end_step
        assert state.transcript == ref_state.transcript
        assert state.consumption_times == ref_state.consumption_times


def test_state_machine_readiness():
    """A step may run before more words arrive only if it cannot take an entry that lacks its lookahead."""
    machine = StateMachine(card=10, second_stream_ahead=2, max_padding=8, initial_padding=2)
    state = machine.new_state([Entry([5], "a")])
    assert machine.ready(state, input_ended=False)  # initial padding: no entry can be taken yet
    machine.process(0, state, 0)
    machine.process(1, state, 0)
    assert not machine.ready(state, input_ended=False)  # "a" could be taken, its lookahead is missing
    state.entries.extend([Entry([6], "b"), Entry([7], "c")])
    assert machine.ready(state, input_ended=False)
    assert machine.ready(machine.new_state(), input_ended=True)
