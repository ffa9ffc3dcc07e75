"""Text shipped with sparsekit for training (not for evaluation).

``recovery_corpus.txt`` holds the sentences a pruned text model is fine-tuned on by distillation
(``sparsekit.recovery``): 810 sentences written for this project in 40 topics, from 4 to 34 words.
It shares no sentence with the evaluation set (``sparsekit.models.sentences``), so a recovered
model is scored on text it never trained on. One sentence per line; ``#`` lines are comments and
topic headings (``# topic: <name>``).

The file ships like the digits weights in ``sparsekit/models/bundled``: a plain file inside the
package folder, read with ``importlib.resources`` so it is found wherever the package is installed.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

__all__ = ["CORPUS_FILE", "recovery_corpus", "recovery_corpus_topics"]

CORPUS_FILE = "recovery_corpus.txt"


@lru_cache(maxsize=1)
def _parsed() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files(__package__).joinpath(CORPUS_FILE).read_text(encoding="utf-8")
    sentences, topics, topic = [], [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# topic:"):
            topic = line[len("# topic:"):].strip()
        elif line and not line.startswith("#"):
            sentences.append(line)
            topics.append(topic)
    return tuple(sentences), tuple(topics)


def recovery_corpus() -> tuple[str, ...]:
    """The shipped training sentences, in file order.

    Returns:
        A tuple of sentences (no blank lines, no comments).
    """
    return _parsed()[0]


def recovery_corpus_topics() -> tuple[str, ...]:
    """The topic of each sentence of ``recovery_corpus()`` (same length, same order).

    Returns:
        A tuple of topic names.
    """
    return _parsed()[1]
