"""What a job reports as it runs: each choice's events (a text delta, its tokens' logprobs, the
finish) and the request's token counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway.reasoning import Delta
from gateway.tools import ParsedCall
from services.decoder.types import TokenLogprob


@dataclasses.dataclass
class ChoiceEvent:
    index: int
    delta: Delta
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    tool_calls: tuple[ParsedCall, ...] = ()  # with the last event, when the output was calls

    def followed_by(self, later: ChoiceEvent) -> ChoiceEvent:
        """This event and a later one of the same choice, as one."""
        delta = Delta(
            self.delta.content + later.delta.content,
            self.delta.reasoning + later.delta.reasoning,
            self.delta.tokens + later.delta.tokens,
        )
        return ChoiceEvent(
            self.index, delta, self.logprobs + later.logprobs, later.finish_reason,
            self.tool_calls + later.tool_calls,
        )  # fmt: skip


def coalesced(events: Sequence[ChoiceEvent]) -> list[ChoiceEvent]:
    """Events that queued up together, one per choice (in the order the choices came)."""
    joined: dict[int, ChoiceEvent] = {}
    for event in events:
        earlier = joined.get(event.index)
        joined[event.index] = event if earlier is None else earlier.followed_by(event)
    return list(joined.values())


@dataclasses.dataclass
class Counts:
    prompt_tokens: int
    image_tokens: int
    audio_tokens: int
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the decoder served from its prefix cache
