"""GLM-4's special tokens, in id order (they take ids 0..N-1 of the shipped tokenizer)."""

from __future__ import annotations

ENDOFTEXT = "<|endoftext|>"
GMASK = "[gMASK]"
SOP = "<sop>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
OBSERVATION = "<|observation|>"
BEGIN_OF_IMAGE = "<|begin_of_image|>"
IMAGE = "<|image|>"
END_OF_IMAGE = "<|end_of_image|>"
BEGIN_OF_AUDIO = "<|begin_of_audio|>"
AUDIO = "<|audio|>"
END_OF_AUDIO = "<|end_of_audio|>"
THINK = "<think>"
END_THINK = "</think>"

SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, GMASK, SOP, SYSTEM, USER, ASSISTANT, OBSERVATION,
    BEGIN_OF_IMAGE, IMAGE, END_OF_IMAGE, BEGIN_OF_AUDIO, AUDIO, END_OF_AUDIO,
    THINK, END_THINK,
)  # fmt: skip

# GLM-4 stops at any of these: the end of text, or the model starting the next turn.
EOS_TOKENS: tuple[str, ...] = (ENDOFTEXT, USER, OBSERVATION)
