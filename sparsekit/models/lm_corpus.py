"""Text every install has, for training small causal LMs, and the check that keeps evaluation text out of it.

Two sources, both offline and free to redistribute:

- ``recovery``: ``sparsekit/data/recovery_corpus.txt``, 810 everyday sentences written for this project;
- ``pydoc``: the English documentation topics in Python's standard library (``pydoc_data.topics``,
  PSF licence, about 465k characters), cut into sentences and paragraphs. Its exact text depends on
  the Python version; ``pydoc_digest`` names the version a model was trained on.

A text counts as *leaked* into training text when its whole normalised text (case and spacing
ignored) is there or when any run of ``SHINGLE_WORDS`` consecutive words of it is.
``benchmarks/train_causal_lm.py`` and ``scripts/train_lm_small.py`` (the shipped ``lm:small``) both
refuse to train on text holding a built-in evaluation or calibration sentence.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable, Sequence

__all__ = [
    "MIN_UNIT_WORDS", "SHINGLE_WORDS", "check_no_leakage", "corpus_units", "leaked", "normalise", "pydoc_digest",
    "pydoc_units", "shingles", "words",
]

SHINGLE_WORDS = 10
"""A run of this many consecutive words shared with the training text counts as leakage."""
MIN_UNIT_WORDS = 3
"""Shorter pieces of the documentation (headings, stray symbols) are dropped."""


def normalise(text: str) -> str:
    """Lower case, runs of whitespace as one space."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """The lower-cased alphanumeric words of ``text`` (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words of ``text`` (empty when it has fewer)."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def pydoc_units() -> list[str]:
    """The standard library's documentation topics (sorted by name) cut into sentences and paragraphs,
    whitespace collapsed, pieces under ``MIN_UNIT_WORDS`` words dropped."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    pieces = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    return [" ".join(p.split()) for p in pieces if len(p.split()) >= MIN_UNIT_WORDS]


def pydoc_digest() -> str:
    """SHA-256 of this Python's documentation topics (they change between Python versions)."""
    import pydoc_data.topics

    return hashlib.sha256(repr(sorted(pydoc_data.topics.topics.items())).encode()).hexdigest()


def corpus_units(extra_texts: Sequence[str] = ()) -> dict[str, list[str]]:
    """Training text by source: ``recovery`` (one sentence each), ``pydoc`` and ``extra`` (non-empty lines).

    Args:
        extra_texts: more text (each string split into its non-empty lines).

    Returns:
        source -> list of units (sentences or paragraphs), in a fixed order.
    """
    from ..data import recovery_corpus

    units = {"recovery": list(recovery_corpus()), "pydoc": pydoc_units()}
    extra = [" ".join(line.split()) for t in extra_texts for line in t.splitlines() if line.strip()]
    if extra:
        units["extra"] = extra
    return units


def leaked(texts: Iterable[str], units: Iterable[str]) -> list[str]:
    """The ``texts`` found in the training ``units``: whole (normalised) or by a shared run of
    ``SHINGLE_WORDS`` words, runs across unit boundaries included (training rows are packed end to end).

    Args:
        texts: what must stay out of training (evaluation text).
        units: the training text pieces.

    Returns:
        The leaked texts, in the order given.
    """
    units = list(units)
    joined = "\n".join(normalise(u) for u in units)
    seen = shingles(" ".join(units))
    return [t for t in texts if normalise(t) in joined or not shingles(t).isdisjoint(seen)]


def check_no_leakage(units: Iterable[str], sentences: Sequence[str] | None = None) -> None:
    """Raise if any built-in sentence (or a run of ``SHINGLE_WORDS`` of its words) is in the text.

    Args:
        units: the training text pieces.
        sentences: the sentences to look for (default: every built-in sentence of
            ``sparsekit.models.sentences``, which holds both the evaluation and the calibration ones).

    Raises:
        ValueError: naming the sentences found (at most five).
    """
    from .sentences import SENTENCES

    found = leaked(SENTENCES if sentences is None else sentences, units)
    if found:
        listing = "; ".join(repr(s[:80]) for s in found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        raise ValueError(f"{len(found)} built-in evaluation/calibration sentence(s) appear in the training text, "
                         f"so the model would be scored on text it trained on: {listing}")
