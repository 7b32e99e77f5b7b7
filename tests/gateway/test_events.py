"""Events that queued up together become one per choice: text joined in order, every token's
logprob kept, the last event's finish reason."""

from __future__ import annotations

from gateway.events import ChoiceEvent, coalesced
from gateway.reasoning import Delta
from services.decoder.types import TokenLogprob


def event(index: int, text: str, finish: str | None = None) -> ChoiceEvent:
    logprobs = tuple(TokenLogprob(ord(c), -1.0) for c in text)
    return ChoiceEvent(index, Delta(content=text, tokens=len(text)), logprobs, finish)


def test_queued_events_become_one_per_choice_in_the_order_the_choices_came() -> None:
    queued = [event(1, "ab"), event(0, "x"), event(1, "c"), event(0, "yz", "length")]
    one, zero = coalesced(queued)
    assert (one.index, one.delta.content, one.delta.tokens, one.finish_reason) == (
        1,
        "abc",
        3,
        None,
    )
    assert (zero.index, zero.delta.content, zero.finish_reason) == (0, "xyz", "length")
    assert [lp.token_id for lp in zero.logprobs] == [ord(c) for c in "xyz"]


def test_a_single_event_is_passed_on_as_it_is() -> None:
    only = event(0, "a")
    assert coalesced([only]) == [only]
