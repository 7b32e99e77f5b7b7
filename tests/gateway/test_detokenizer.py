"""Incremental detokenizing: the pieces always join to what a full decode of the same ids gives,
on random ids (special tokens, lone bytes of UTF-8 characters) and on multi-byte text; a
character never shows half-done mid-stream; a character cut off at the end is flushed as a full
decode shows it. The parser gives the same text and stop however the ids are grouped into
messages (one per step, or several when the stream fell behind)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gateway.detokenizer import Detokenizer
from gateway.reasoning import OutputParser, ReasoningOutput

TOKENIZER = Path(__file__).parents[2] / "bundle" / "tokenizer" / "tokenizer.json"
MULTI_BYTE = "Grüße, 世界! こんにちは 🌍🎉 naïve café — Ελληνικά 한국어 ✓ 𠀋𩸽"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER))


def pieces(tokenizer: Tokenizer, token_ids: list[int]) -> list[str]:
    detokenizer = Detokenizer(tokenizer)
    return [detokenizer.step(t) for t in token_ids] + [detokenizer.flush()]


def test_random_ids_join_to_their_full_decode(tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    vocab = tokenizer.get_vocab_size()
    for _ in range(300):
        token_ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        expected = tokenizer.decode(token_ids, skip_special_tokens=True)
        assert "".join(pieces(tokenizer, token_ids)) == expected, token_ids


def test_multi_byte_text_comes_whole_character_by_character(tokenizer: Tokenizer) -> None:
    token_ids = tokenizer.encode(MULTI_BYTE * 3, add_special_tokens=False).ids
    assert len(token_ids) > len(MULTI_BYTE)  # many characters span several tokens
    shown = pieces(tokenizer, token_ids)
    assert "".join(shown) == MULTI_BYTE * 3
    assert not any("\ufffd" in piece for piece in shown)


def test_a_character_cut_off_at_the_end_is_flushed_as_a_full_decode_shows_it(
    tokenizer: Tokenizer,
) -> None:
    emoji = tokenizer.encode("ok 🌍", add_special_tokens=False).ids
    cut = emoji[:-1]  # the emoji's last byte never comes (max_tokens ended the output)
    detokenizer = Detokenizer(tokenizer)
    assert "".join(detokenizer.step(t) for t in cut) == "ok "
    assert detokenizer.flush() == tokenizer.decode(cut)[len("ok ") :] != ""
    assert detokenizer.flush() == ""  # flushed once; the stream starts afresh
    assert "".join(pieces(tokenizer, emoji)) == "ok 🌍"


def grouped(token_ids: list[int], rng: random.Random) -> list[list[int]]:
    groups, start = [], 0
    while start < len(token_ids):
        size = rng.choice((1, 1, 2, 3, 7))
        groups.append(token_ids[start : start + size])
        start += size
    return groups


@pytest.mark.parametrize("seed", range(5))
def test_the_parser_gives_the_same_output_however_the_ids_are_grouped(
    tokenizer: Tokenizer, seed: int
) -> None:
    text = f"I think {MULTI_BYTE}</think>The answer: {MULTI_BYTE} STOP here, never shown"
    token_ids = tokenizer.encode(text, add_special_tokens=False).ids
    outcomes = set()
    for groups in ([[t] for t in token_ids], grouped(token_ids, random.Random(seed))):
        parser = OutputParser(
            tokenizer, stop=["STOP"], thinking=True, reasoning=ReasoningOutput.SEPARATE
        )
        content = reasoning = ""
        tokens = 0
        for group in groups:
            delta = parser.feed(group)
            content, reasoning = content + delta.content, reasoning + delta.reasoning
            tokens += delta.tokens
            if parser.stopped:
                break
        outcomes.add((content, reasoning, tokens, parser.stopped))
    assert outcomes == {
        (
            f"The answer: {MULTI_BYTE} ",
            f"I think {MULTI_BYTE}",
            _tokens_up_to(tokenizer, token_ids, "STOP"),
            True,
        )
    }


def _tokens_up_to(tokenizer: Tokenizer, token_ids: list[int], stop: str) -> int:
    """How many ids it takes until the decoded text contains ``stop``."""
    for count in range(1, len(token_ids) + 1):
        if stop in tokenizer.decode(token_ids[:count]):
            return count
    raise AssertionError(f"{stop!r} never appears")
