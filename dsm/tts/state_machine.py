"""The TTS word-scheduling state machine (model-spec §5.3).

The model does not read padded, time-aligned text: at every step it samples a text token, and the
state machine turns that into the text token it is fed next. When the model asks for a new word (token
0) the next entry is taken and its tokens are fed one per step on the main text stream; with a second
stream (`second_stream_ahead` > 0, TTS-1.6b: 2), the "new word" marker goes there instead, followed by
the tokens of the word that many entries ahead (lookahead). Padding limits keep the model from
stalling (`max_padding`) or from rushing (`forced_padding` after each entry, `initial_padding` at the
start). Asking for a word when none is left marks the end of the text (`end_step`).

Fed tokens with a second stream are multiplexed as (second + 1) * card + main, card = text_card + 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from dsm.tts.script import NEW_WORD, PAD, ZERO, Entry


@dataclass
class State:
    """Scheduling state of one stream."""

    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    queued: deque[int] = field(default_factory=deque)
    lookahead_queued: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumption_times: list[int] = field(default_factory=list)  # step at which each entry was taken
    transcript: list[tuple[str, int]] = field(default_factory=list)  # (word, step) of each word

    def tokens_ahead(self, lookahead: int) -> list[int]:
        """Tokens of the `lookahead`-th remaining entry that is a word ([] if there is none)."""
        for entry in self.entries:
            if entry.tokens:
                lookahead -= 1
                if lookahead == 0:
                    return entry.tokens
        return []

    @property
    def words_left(self) -> int:
        return sum(1 for e in self.entries if e.tokens)


@dataclass(frozen=True)
class StateMachine:
    """The reference's scheduling rules; `process` is applied to every sampled text token."""

    card: int  # text_card + 1: the multiplexing base of the two text streams
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: Iterable[Entry] = ()) -> State:
        return State(deque(entries), self.initial_padding, self.initial_padding)

    def may_take_entry(self, state: State) -> bool:
        """Whether the next `process` call can take an entry (otherwise it only pads or feeds tokens)."""
        return not state.queued and state.forced_padding <= 0

    def ready(self, state: State, input_ended: bool) -> bool:
        """Whether a step can run now without changing the result that the complete text would give:
        true unless the step might take an entry while the words it needs (the next one and the
        lookahead) have not arrived yet."""
        if input_ended or not self.may_take_entry(state):
            return True
        if state.entries and state.entries[0].is_pause:
            return True
        return state.words_left > self.second_stream_ahead

    def process(self, step: int, state: State, token: int) -> tuple[int, bool]:
        """Sampled token -> (token to feed, whether an entry was taken at this step)."""
        consumed = False
        if token not in (NEW_WORD, PAD):
            token = PAD
        if state.queued or state.forced_padding > 0:
            token = PAD
        elif state.remaining_padding <= 0:
            token = NEW_WORD

        if token == NEW_WORD:
            if state.entries:
                entry = state.entries.popleft()
                state.consumption_times.append(step)
                consumed = True
                if entry.tokens:
                    state.transcript.append((entry.text, step))
                    state.queued.extend(entry.tokens)
                    if self.second_stream_ahead:
                        state.lookahead_queued.extend(state.tokens_ahead(self.second_stream_ahead))
                    state.remaining_padding = self.max_padding
                else:
                    token = PAD  # a pause: as if the model had padded
                state.forced_padding = entry.padding
            else:
                token = NEW_WORD if self.second_stream_ahead and state.end_step is None else PAD
                if state.end_step is None:
                    state.end_step = step

        if token == PAD:
            if state.remaining_padding > 0:
                state.remaining_padding -= 1
            if state.forced_padding > 0:
                state.forced_padding -= 1
            output = state.queued.popleft() if state.queued else PAD
        else:
            output = NEW_WORD

        if self.second_stream_ahead:
            second = ZERO
            if output == NEW_WORD:
                second = NEW_WORD
                output = state.queued.popleft() if state.queued else PAD
            elif state.lookahead_queued:
                second = state.lookahead_queued.popleft()
            output = (second + 1) * self.card + output
        return output, consumed
