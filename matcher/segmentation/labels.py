"""Object labels for learned segmentation: catalog products -> labels, and typed prompts -> labels.

The bench's ``category`` names rooms (a plant and a sofa are both "Living room"), so
labels come from the product's title and tags through the reviewed keyword rules in
``label_map.json``; what users type is resolved through the phrases in ``prompts.json``.
Both files are data: review them, extend them, the code only applies them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
LABEL_MAP_FILE = HERE / "label_map.json"
PROMPTS_FILE = HERE / "prompts.json"


class UnknownPromptError(ValueError):
    """A prompt that names no known label; the message lists the labels and their phrases."""


def normalise(text: str) -> str:
    """Lower case, punctuation and underscores as spaces, single spaces ('Mid-century' -> 'mid century')."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _phrase_pattern(phrase: str) -> re.Pattern:
    """Whole words of ``phrase``, a plural 's'/'es' accepted on its last word."""
    return re.compile(r"\b" + re.escape(normalise(phrase)) + r"(?:s|es)?\b")


@dataclass(frozen=True)
class Rule:
    label: str | None
    patterns: tuple[re.Pattern, ...]

    def matches(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)


@dataclass(frozen=True)
class LabelMap:
    labels: tuple[str, ...]
    rules: tuple[Rule, ...]

    def label_for(self, title: str, tags: Iterable[str] = ()) -> str | None:
        """First rule matching the title, else the first matching the tags; None when nothing matches."""
        for text in (normalise(title), normalise(" , ".join(tags))):
            for rule in self.rules:
                if text and rule.matches(text):
                    return rule.label
        return None


@lru_cache(maxsize=4)
def load_label_map(path: Path = LABEL_MAP_FILE) -> LabelMap:
    data = json.loads(Path(path).read_text())
    labels = tuple(data["labels"])
    rules = tuple(Rule(r["label"], tuple(_phrase_pattern(k) for k in r["keywords"])) for r in data["rules"])
    stray = {r.label for r in rules} - set(labels) - {None}
    if stray:
        raise ValueError(f"{path}: rules use labels missing from 'labels': {sorted(stray)}")
    return LabelMap(labels, rules)


def known_labels() -> tuple[str, ...]:
    return load_label_map().labels


def label_for_product(title: str, tags: Sequence[str] | str | None = ()) -> str | None:
    """The object label of a catalog product from its title and tags (None: not a labelled object)."""
    if isinstance(tags, str):
        tags = [t for t in tags.split(",")]
    return load_label_map().label_for(title or "", tags or ())


@dataclass(frozen=True)
class PromptBook:
    phrases: dict[str, tuple[str, ...]]  # label -> phrases
    command_words: frozenset[str]

    def describe(self) -> str:
        return "; ".join(f"{label}: {', '.join(phrases)}" for label, phrases in self.phrases.items())


@lru_cache(maxsize=4)
def load_prompts(path: Path = PROMPTS_FILE) -> PromptBook:
    data = json.loads(Path(path).read_text())
    phrases = {label: tuple(normalise(p) for p in items) for label, items in data["labels"].items()}
    return PromptBook(phrases, frozenset(normalise(w) for w in data["command_words"]))


def strip_command_words(text: str, command_words: frozenset[str]) -> str:
    """'segment all the armchairs' -> 'armchairs': leading command words and articles go."""
    words = text.split()
    while words and words[0] in command_words:
        words.pop(0)
    return " ".join(words)


def resolve_prompt(text: str, labels: Sequence[str] | None = None) -> str:
    """The label a typed prompt asks for; ``labels`` (what a model knows) restricts the answer.

    The prompt is matched against every label's phrases first, so "bedside table" means cabinet even
    for a model without that label (then it is an error, never a silent "table").
    Raises :class:`UnknownPromptError` naming the known labels and their phrases.
    """
    book = load_prompts()
    allowed = tuple(labels) if labels is not None else tuple(book.phrases)
    candidates = list(book.phrases) + [label for label in allowed if label not in book.phrases]
    core = strip_command_words(normalise(text), book.command_words)
    best: tuple[int, str] | None = None
    for label in candidates:
        for phrase in book.phrases.get(label, ()) + (normalise(label),):
            if core and _phrase_pattern(phrase).search(core) and (best is None or len(phrase) > best[0]):
                best = (len(phrase), label)
    shown = PromptBook({k: book.phrases.get(k, (k,)) for k in allowed}, book.command_words).describe()
    if best is None:
        raise UnknownPromptError(f"unknown prompt {text!r}: known labels are {', '.join(allowed)} (phrases: {shown})")
    if best[1] not in allowed:
        raise UnknownPromptError(f"prompt {text!r} asks for {best[1]!r}, which this model does not know: it knows "
                                 f"{', '.join(allowed)} (phrases: {shown})")
    return best[1]
