"""Regenerate bundle/tokenizer/tokenizer.json: a byte-level BPE with GLM-4's special tokens.

The output is committed; this script only documents how it was made and re-makes it:
``python -m bundle.train_tokenizer``. The corpus is the docstrings of Python's standard library,
which every machine has, so nothing is downloaded.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bundle.special_tokens import SPECIAL_TOKENS

VOCAB_SIZE = 4000  # plus the special tokens; the default decoder's vocab (4096) covers both
OUT = Path(__file__).parent / "tokenizer" / "tokenizer.json"
SKIP = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "__")


def stdlib_docstrings() -> Iterator[str]:
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if info.name not in sys.stdlib_module_names or info.name.startswith(SKIP):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # some stdlib modules need optional system libraries
            continue
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
            if doc:
                yield doc


def train() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(SPECIAL_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(stdlib_docstrings(), trainer=trainer)
    return tokenizer


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    train().save(str(OUT))
    print(f"wrote {OUT}")
