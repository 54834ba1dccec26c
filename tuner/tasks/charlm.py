"""``charlm``: a tiny causal transformer character LM on text that ships with Python.

Text sources (the ``text`` option): ``python-docs`` is ``pydoc_data.topics`` (the language reference
topics, ~460 K chars of English and code); ``python-source`` is the standard library's own top-level
``.py`` files. The vocabulary is fixed (newline + printable ASCII, 96 symbols), so it does not depend
on the text or the Python version: curly quotes and dashes are mapped to ASCII, anything else to ``?``.

The text is split by position (train first, validation last) and cut into windows of ``context + 1``
chars every ``stride`` chars; inputs are ``(N, context)`` long, targets the same shifted by one.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Optional

from tuner.errors import lookup
from tuner.tasks.base import SimpleTask, TaskData, cross_entropy
from tuner.tasks.digits import check_fraction

VOCAB = "\n" + "".join(chr(code) for code in range(32, 127))
UNKNOWN = "?"
TYPOGRAPHY = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...", "\t": "    "})
# Every metric is a mean over characters so that chunked validation averages exactly (perplexity = e^loss is not).
DIRECTIONS = {"loss": "minimize", "bits_per_char": "minimize", "accuracy": "maximize"}


def python_docs(max_chars: int) -> str:
    """The pydoc topics (Python's language reference excerpts), in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def python_source(max_chars: int) -> str:
    """The standard library's top-level ``.py`` files, in sorted file-name order."""
    parts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        if sum(map(len, parts)) >= max_chars:
            break
    return "\n".join(parts)


TEXT_SOURCES: dict[str, Callable[[int], str]] = {"python-docs": python_docs, "python-source": python_source}


def normalize(text: str) -> str:
    """``text`` restricted to ``VOCAB``: typographic punctuation to ASCII, other symbols to ``?``."""
    ascii_text = text.translate(TYPOGRAPHY).encode("ascii", errors="replace").decode("ascii")
    allowed = set(VOCAB)
    return "".join(ch if ch in allowed else UNKNOWN for ch in ascii_text)


@lru_cache(maxsize=4)
def corpus(source: str, max_chars: int) -> str:
    """The first ``max_chars`` normalized chars of a text source (cached per process)."""
    return normalize(lookup(TEXT_SOURCES, "text source", source)(max_chars))[:max_chars]


def encode(text: str) -> Any:
    """Chars -> a long tensor of ``VOCAB`` indices (``text`` must be normalized)."""
    import torch

    table = torch.zeros(128, dtype=torch.long)
    table[[ord(ch) for ch in VOCAB]] = torch.arange(len(VOCAB))
    return table[torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8).long()]


def decode(indices: Any) -> str:
    """Indices -> chars."""
    return "".join(VOCAB[int(i)] for i in indices)


def windows(tokens: Any, context: int, stride: int) -> tuple[Any, Any]:
    """``(inputs, targets)``: every ``stride``-th window of ``context + 1`` tokens, split into x and next-x."""
    if tokens.shape[0] < context + 1:
        raise ValueError(
            f"a split of {tokens.shape[0]} chars is shorter than context + 1 = {context + 1}; raise max_chars"
        )
    chunks = tokens.unfold(0, context + 1, stride)
    return chunks[:, :-1].contiguous(), chunks[:, 1:].contiguous()


def load(source: str, max_chars: int, val_fraction: float, context: int, stride: int) -> TaskData:
    """Train on the first ``1 - val_fraction`` of the text, validate on the rest."""
    tokens = encode(corpus(source, max_chars))
    cut = int(round(tokens.shape[0] * (1 - val_fraction)))
    return TaskData(*windows(tokens[:cut], context, stride), *windows(tokens[cut:], context, stride))


def lm_metrics(logits: Any, targets: Any) -> dict[str, float]:
    """Mean next-char cross-entropy (nats), bits per char and accuracy of a batch (perplexity is e^loss)."""
    loss = cross_entropy(logits, targets).item()
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return {"loss": loss, "bits_per_char": loss / math.log(2), "accuracy": accuracy}


def build_transformer(context: int, d_model: int, n_layers: int, n_heads: int) -> Any:
    """The character-level transformer of the ``charlm`` task."""
    from tuner.tasks.charlm_model import CharTransformer

    return CharTransformer(len(VOCAB), context, d_model, n_layers, n_heads)


def _check(context: int, d_model: int, n_layers: int, n_heads: int, max_chars: int, stride: int) -> None:
    for name, value in (
        ("context", context),
        ("d_model", d_model),
        ("n_layers", n_layers),
        ("n_heads", n_heads),
        ("max_chars", max_chars),
        ("stride", stride),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={value}")
    if d_model % n_heads:
        raise ValueError(f"d_model must be a multiple of n_heads, got d_model={d_model}, n_heads={n_heads}")


def charlm(
    context: int = 64,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    max_chars: int = 200_000,
    val_fraction: float = 0.1,
    stride: Optional[int] = None,
    text: str = "python-docs",
) -> SimpleTask:
    """A character-level transformer LM; minimize validation cross-entropy (nats per char)."""
    stride = context if stride is None else stride
    _check(context, d_model, n_layers, n_heads, max_chars, stride)
    lookup(TEXT_SOURCES, "text source", text)
    return SimpleTask(
        name="charlm",
        model_fn=partial(build_transformer, context, d_model, n_layers, n_heads),
        data_fn=partial(load, text, max_chars, check_fraction(val_fraction, "val_fraction"), context, stride),
        loss_fn=cross_entropy,
        metrics_fn=lm_metrics,
        metric="loss",
        direction="minimize",
        directions=DIRECTIONS,
        default_batch_size=32,
    )
