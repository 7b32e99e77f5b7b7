"""Detokenizing generated ids: stop strings across token boundaries, the <think> split."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gateway.reasoning import OutputParser, ReasoningOutput, StopMatcher, token_bytes

TOKENIZER = Path(__file__).parents[2] / "bundle" / "tokenizer" / "tokenizer.json"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER))


def run(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    shown = ""
    for piece in pieces:
        text, stopped = matcher.push(piece)
        shown += text
        if stopped:
            return shown, True
    return shown + matcher.flush(), False


def test_stop_string_split_over_pieces_is_found_and_never_shown() -> None:
    assert run(StopMatcher(["STOP"]), ["go ", "S", "T", "O", "P", " more"]) == ("go ", True)


def test_text_that_only_begins_a_stop_string_is_held_then_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("go ST") == ("go ", False)  # "ST" might begin "STOP"
    assert matcher.push("ART") == ("START", False)
    assert run(StopMatcher(["STOP"]), ["ends with ST"]) == ("ends with ST", False)


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert run(StopMatcher(["world", "lo w"]), ["hello", " world"]) == ("hel", True)
    assert run(StopMatcher([]), ["a", "b"]) == ("ab", False)


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def parse(
    tokenizer: Tokenizer, token_ids: list[int], **kwargs: object
) -> tuple[str, str, OutputParser]:
    parser = OutputParser(tokenizer, **kwargs)  # type: ignore[arg-type]
    content = reasoning = ""
    for token in token_ids:  # one id per step: the hardest case for boundaries
        delta = parser.feed([token])
        content, reasoning = content + delta.content, reasoning + delta.reasoning
    tail = parser.finish()
    return content + tail.content, reasoning + tail.reasoning, parser


def test_incremental_detokenization_matches_decoding_at_once(tokenizer: Tokenizer) -> None:
    text = "Grüße, 世界! naïve café ✓"
    content, reasoning, _ = parse(tokenizer, ids(tokenizer, text))
    assert (content, reasoning) == (text, "")


def test_stop_string_across_token_boundaries(tokenizer: Tokenizer) -> None:
    token_ids = ids(tokenizer, "one two three four")
    content, _, parser = parse(tokenizer, token_ids, stop=["o thr"])
    assert content == "one tw" and parser.stopped


THOUGHT = "I think so</think>The answer is 42."


def test_thinking_output_is_split_into_reasoning_and_content(tokenizer: Tokenizer) -> None:
    content, reasoning, parser = parse(
        tokenizer, ids(tokenizer, THOUGHT), thinking=True, reasoning=ReasoningOutput.SEPARATE
    )
    assert (reasoning, content) == ("I think so", "The answer is 42.")
    assert parser.reasoning_tokens == len(ids(tokenizer, "I think so</think>"))


def test_reasoning_is_left_out_unless_asked_but_still_counted(tokenizer: Tokenizer) -> None:
    content, reasoning, parser = parse(tokenizer, ids(tokenizer, THOUGHT), thinking=True)
    assert (reasoning, content) == ("", "The answer is 42.")
    assert parser.reasoning_tokens == len(ids(tokenizer, "I think so</think>"))


def test_inline_mode_keeps_think_tags_in_content(tokenizer: Tokenizer) -> None:
    content, reasoning, _ = parse(
        tokenizer, ids(tokenizer, THOUGHT), thinking=True, reasoning=ReasoningOutput.INLINE
    )
    assert (reasoning, content) == ("", "<think>I think so</think>The answer is 42.")


def test_a_think_block_opened_by_the_model_is_reasoning_too(tokenizer: Tokenizer) -> None:
    text = "Hm.<think>quietly</think>Done"
    content, reasoning, _ = parse(
        tokenizer, ids(tokenizer, text), reasoning=ReasoningOutput.SEPARATE
    )
    assert (reasoning, content) == ("quietly", "Hm.Done")


def test_special_tokens_are_not_shown_and_text_spelling_them_is(tokenizer: Tokenizer) -> None:
    token_ids = ids(tokenizer, "a<|endoftext|>")  # the real special token
    literal = tokenizer.encode("b <|image|>", add_special_tokens=False)
    assert parse(tokenizer, token_ids)[0] == "a"
    tokenizer.encode_special_tokens = True
    try:
        spelled = tokenizer.encode("b <|image|>", add_special_tokens=False).ids
    finally:
        tokenizer.encode_special_tokens = False
    assert spelled != literal.ids
    assert parse(tokenizer, spelled)[0] == "b <|image|>"


def test_completions_do_not_split_reasoning(tokenizer: Tokenizer) -> None:
    content, reasoning, parser = parse(tokenizer, ids(tokenizer, THOUGHT), split_reasoning=False)
    assert (reasoning, content) == ("", "I think soThe answer is 42.")
    assert parser.reasoning_tokens == 0


def test_token_bytes_keep_partial_utf8_characters(tokenizer: Tokenizer) -> None:
    text = "世界 ok<|endoftext|>"
    token_ids = ids(tokenizer, text)
    assert b"".join(token_bytes(tokenizer, t) for t in token_ids) == text.encode()
    assert token_bytes(tokenizer, tokenizer.get_vocab_size() + 5) == b""
