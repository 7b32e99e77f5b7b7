"""Chat messages -> input ids with one placeholder span per media item.

The bundle's chat template (the decoder folder's, rendered by transformers'
``apply_chat_template``) decides the layout; it renders a media part as
``<|begin_of_image|><|image|><|end_of_image|>`` and the gateway widens the single ``<|image|>``
to as many ids as that image has tokens (same for audio). Which token is the image placeholder
comes from the checkpoint (config.json ``image_token_id``, as GLM-4.1V's has); the default
bundle's decoder has none and uses ``<|image|>`` and ``<|audio|>``.

Text from the request never goes through the template's tokenization: each text is replaced by
a marker holding a per-render random nonce, the template renders around the markers, and then
the template's own pieces are tokenized with special tokens parsed while the texts are tokenized
with special tokens split into plain text. Text that spells ``<|begin_of_image|>`` therefore
stays literal, and the placeholder spans always equal the media parts sent.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from jinja2 import TemplateError
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from gateway.protocol.messages import (
    AssistantMessage,
    ImagePart,
    Message,
    RefusalPart,
    SystemMessage,
    TextPart,
    ToolMessage,
)
from services.common.errors import InvalidInput

log = logging.getLogger(__name__)
CACHED_PIECES = 256  # prompt pieces whose token ids are kept (ChatPrompter._ids)
CACHED_PIECE_CHARS = 32_768  # longer pieces are tokenized every time: the cache stays small
IMAGE_TOKEN, AUDIO_TOKEN = "<|image|>", "<|audio|>"
# Keys the caller sets itself; chat_template_kwargs may not override them.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tools", "tokenize", "add_generation_prompt", "enable_thinking"}
)


@dataclasses.dataclass(frozen=True)
class Placeholder:
    """Where one media item's embeddings go: input_ids[offset : offset + length]."""

    kind: str  # "image" or "audio"
    offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    placeholders: list[Placeholder]  # in the order of the request's media parts

    def media_tokens(self, kind: str) -> int:
        return sum(p.length for p in self.placeholders if p.kind == kind)


class _TextMarkers:
    """Replaces texts by unguessable markers and finds them again in the rendered string."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.texts: list[str] = []
        self.pattern = re.compile(f"\x00{self.nonce}:(\\d+)\x00")

    def mark(self, text: str) -> str:
        self.texts.append(text)
        return f"\x00{self.nonce}:{len(self.texts) - 1}\x00"

    def split(self, rendered: str) -> list[tuple[str, bool]]:
        """(piece, is_request_text) pairs, in order."""
        pieces: list[tuple[str, bool]] = []
        last = 0
        for match in self.pattern.finditer(rendered):
            pieces.append((rendered[last : match.start()], False))
            pieces.append((self.texts[int(match.group(1))], True))
            last = match.end()
        pieces.append((rendered[last:], False))
        return [(piece, is_text) for piece, is_text in pieces if piece]


def _content(content: Any, markers: _TextMarkers) -> Any:
    if content is None:  # an assistant turn with tool calls only; "None" must not render
        return ""
    if isinstance(content, str):
        return markers.mark(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": markers.mark(part.text)})
        elif isinstance(part, RefusalPart):
            parts.append({"type": "text", "text": markers.mark(part.refusal)})
        else:
            parts.append({"type": "image" if isinstance(part, ImagePart) else "audio"})
    return parts


def _template_message(message: Message, markers: _TextMarkers) -> dict[str, Any]:
    role = "system" if isinstance(message, SystemMessage) else message.role
    rendered: dict[str, Any] = {"role": role, "content": _content(message.content, markers)}
    if isinstance(message, AssistantMessage) and message.tool_calls:
        # names and arguments are request text too: never parsed for special tokens
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type,
                "function": {
                    "name": markers.mark(call.function.name),
                    "arguments": markers.mark(call.function.arguments),
                },
            }
            for call in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def _backend(tokenizer: PreTrainedTokenizerBase, *, split_special_tokens: bool) -> Tokenizer:
    """A copy of the fast tokenizer's Rust tokenizer that always splits (or parses) special
    tokens written in the text."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = split_special_tokens
    return backend


class ChatPrompter:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str | None = IMAGE_TOKEN,
        audio_token: str | None = AUDIO_TOKEN,
    ) -> None:
        self.tokenizer = tokenizer
        # The Rust tokenizer twice, each with special tokens parsed or split for good:
        # transformers' ``split_special_tokens=`` flips one flag shared by every thread, so
        # renders on concurrent threads tokenized template pieces with the placeholders split
        # (8 concurrent PhoneAgent turns: one 400, "0 image placeholders") or user text parsed.
        self._template_pieces = _backend(tokenizer, split_special_tokens=False)
        self._literal_texts = _backend(tokenizer, split_special_tokens=True)
        # A piece seen before (an agent's system prompt, a conversation's earlier turns: every
        # request repeats them) is not tokenized again; an 850-token system prompt took ~2 ms
        # of the gateway's CPU per request. Pieces are bounded, so is the cache.
        self._cached_ids = functools.lru_cache(maxsize=CACHED_PIECES)(self._encode)
        # None: the model takes no such media (the pipeline refuses those parts before rendering)
        self.image_id = self._special_id(image_token) if image_token else None
        self.audio_id = self._special_id(audio_token) if audio_token else None
        self.renders_tools = self._renders_tools()

    def _renders_tools(self) -> bool:
        """Whether the template shows offered tools to the model (GLM-4.1V's does not): tools
        it would drop are refused rather than silently ignored."""
        probe = {"type": "function", "function": {"name": "probe_tool", "parameters": {}}}
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tools=[probe], tokenize=False
        )
        return "probe_tool" in str(rendered)

    @classmethod
    def from_pretrained(
        cls, decoder_dir: Path, modalities: Sequence[str] = ("text", "image", "audio")
    ) -> ChatPrompter:
        """The placeholders of the modalities the bundle takes: a text-only checkpoint's
        tokenizer need not know any media token."""
        tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
        image_token_id = getattr(AutoConfig.from_pretrained(decoder_dir), "image_token_id", None)
        image_token = IMAGE_TOKEN
        if image_token_id is not None:
            image_token = str(tokenizer.convert_ids_to_tokens(image_token_id))
        return cls(
            tokenizer,
            image_token if "image" in modalities else None,
            AUDIO_TOKEN if "audio" in modalities else None,
        )

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token")
        return token_id

    def _ids(self, text: str, *, literal: bool) -> tuple[int, ...]:
        if len(text) > CACHED_PIECE_CHARS:
            return self._encode(text, literal)
        return self._cached_ids(text, literal)

    def _encode(self, text: str, literal: bool) -> tuple[int, ...]:
        backend = self._literal_texts if literal else self._template_pieces
        return tuple(backend.encode(text, add_special_tokens=False).ids)

    def render(
        self,
        messages: list[Message],
        media_rows: list[tuple[str, int]],
        *,
        enable_thinking: bool,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> Prompt:
        """``media_rows``: (kind, embedding rows) per media part, in the order sent."""
        markers = _TextMarkers()
        conversation = [_template_message(m, markers) for m in messages]
        extra = {
            k: v for k, v in (template_kwargs or {}).items() if k not in RESERVED_TEMPLATE_KWARGS
        }
        if tools and not self.renders_tools:
            raise InvalidInput("this model's chat template does not render tools")
        try:
            rendered = self.tokenizer.apply_chat_template(
                conversation,
                tools=cast(list[dict[Any, Any] | Callable[..., Any]] | None, tools),
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                **extra,
            )
        except TemplateError as exc:
            # the template's text may quote objects (addresses): logged, never sent
            log.warning("the chat template rejected a conversation: %s", exc)
            raise InvalidInput("the chat template rejected the conversation") from None
        ids: list[int] = []
        for piece, is_text in markers.split(str(rendered)):
            ids += self._ids(piece, literal=is_text)
        return self.expand(ids, media_rows)

    def encode_prompt(self, text: str) -> list[int]:
        """A raw /v1/completions prompt: special tokens are parsed (it is a rendered prompt),
        but it carries no media, so media placeholders are refused."""
        ids = self._ids(text, literal=False)
        if self.image_id in ids or self.audio_id in ids:
            raise InvalidInput("media placeholders are only allowed in /v1/chat/completions")
        if not ids:
            raise InvalidInput("prompt must not be empty")
        return list(ids)

    def expand(self, ids: list[int], media_rows: list[tuple[str, int]]) -> Prompt:
        """Widen the k-th image (audio) placeholder id to the k-th image's (clip's) row count."""
        queues = {
            kind: [rows for k, rows in media_rows if k == kind] for kind in ("image", "audio")
        }
        found = {
            kind: ids.count(token) if token is not None else 0
            for kind, token in (("image", self.image_id), ("audio", self.audio_id))
        }
        for kind, rows in queues.items():
            if found[kind] != len(rows):
                raise InvalidInput(
                    f"the chat template placed {found[kind]} {kind} placeholders for "
                    f"{len(rows)} {kind} parts (media is only allowed in user messages)"
                )
        by_kind: dict[str, list[Placeholder]] = {"image": [], "audio": []}
        expanded: list[int] = []
        for token in ids:
            kind = "image" if token == self.image_id else "audio" if token == self.audio_id else ""
            if not kind:
                expanded.append(token)
                continue
            length = queues[kind][len(by_kind[kind])]
            by_kind[kind].append(Placeholder(kind, len(expanded), length))
            expanded += [token] * length
        # back to request order: the k-th media part of a kind is that kind's k-th span
        taken = {"image": 0, "audio": 0}
        placeholders = []
        for kind, _ in media_rows:
            placeholders.append(by_kind[kind][taken[kind]])
            taken[kind] += 1
        return Prompt(expanded, placeholders)
