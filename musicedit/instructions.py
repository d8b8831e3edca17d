"""Turn free-form edit instructions into the exact text templates the model was trained on.

The model (Instruct-MusicGen) knows three templates per stem; anything else is rejected with
a message that lists what is supported. Pure Python: the model code imports this too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from musicedit.errors import InstructionError

__all__ = ["Instruction", "InstructionError", "normalize_instruction", "MAX_INSTRUCTION_CHARS"]

MAX_INSTRUCTION_CHARS = 200

Operation = Literal["add", "remove", "extract"]

TEMPLATES: dict[str, str] = {
    "add": "Music piece. Instruct: Add {stem}.",
    "remove": "Music piece. Instruct: No {stem}.",
    "extract": "Music piece. Instruct: Only {stem}.",
}

# Leading verb phrases, longest first so "keep only" wins over "keep".
_VERBS: dict[str, Operation] = {
    "add in": "add",
    "add": "add",
    "put in": "add",
    "insert": "add",
    "include": "add",
    "with": "add",
    "remove": "remove",
    "delete": "remove",
    "drop": "remove",
    "mute": "remove",
    "take out": "remove",
    "get rid of": "remove",
    "no": "remove",
    "without": "remove",
    "extract": "extract",
    "isolate": "extract",
    "only": "extract",
    "just": "extract",
    "solo": "extract",
    "keep only": "extract",
    "keep just": "extract",
    "keep": "extract",
}
_ARTICLES = ("the", "a", "an", "some", "only", "just")
# "<stem> only" ("drums only"): the one form where the operation follows the stem.
_EXTRACT_SUFFIX = " only"
_PREFIX = re.compile(r"^(music piece\.?\s*)?(instruct\s*:\s*)?", re.IGNORECASE)
# A leading or trailing "please" ("please add drums", "add the drums, please") changes nothing.
_POLITE = re.compile(r"^please\b[\s,]*|[\s,]*\bplease$")
_TRAILING_PUNCTUATION = ".!?;:, "
_CONTROL_CATEGORIES = {"Cc", "Cf"}  # control and format (zero-width, bidi) characters


@dataclass(frozen=True)
class Instruction:
    """A supported edit: `text` is the exact template fed to the model."""

    operation: Operation
    stem: str
    text: str


def _help(stems: Sequence[str]) -> str:
    return (
        "Supported instructions: add <stem>, remove <stem> (also 'no'/'without'), "
        "extract <stem> (also 'only <stem>'/'<stem> only'/'isolate'); "
        f"stems: {', '.join(stems)}. Example: 'Add drums'."
    )


def _singular(word: str) -> str:
    if word.endswith("es") and word[:-2].endswith(("ss", "sh", "ch", "x")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _match_stem(phrase: str, stems: Sequence[str]) -> str | None:
    """The stem `phrase` names ("the drums", "some piano"), or None."""
    words = phrase.split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        return None
    wanted = _singular(" ".join(words))
    for stem in stems:
        if _singular(stem.lower()) == wanted:
            return stem
    return None


def _instruction(operation: Operation, stem: str) -> Instruction:
    return Instruction(operation, stem, TEMPLATES[operation].format(stem=stem))


def normalize_instruction(text: str, stems: Sequence[str]) -> Instruction:
    """Map `text` ("add the drums", "Music piece. Instruct: No Bass.") to an `Instruction`.

    Raises:
        InstructionError: the text is empty, over-long, has control characters, or asks for
            an operation or stem outside `stems`.
    """
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("The instruction is empty. " + _help(stems))
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(
            f"The instruction has {len(text)} characters; the limit is {MAX_INSTRUCTION_CHARS}. "
            + _help(stems)
        )
    # tabs and newlines count as whitespace; every other control/format character is refused
    if any(unicodedata.category(ch) in _CONTROL_CATEGORIES and ch not in "\t\n\r" for ch in text):
        raise InstructionError(
            "The instruction contains control characters; send plain text. " + _help(stems)
        )
    cleaned = " ".join(text.split()).lower()
    cleaned = _PREFIX.sub("", cleaned).strip()
    cleaned = cleaned.rstrip(_TRAILING_PUNCTUATION).strip()
    cleaned = _POLITE.sub("", cleaned).rstrip(_TRAILING_PUNCTUATION).strip()
    if cleaned.endswith(_EXTRACT_SUFFIX):
        stem = _match_stem(cleaned[: -len(_EXTRACT_SUFFIX)], stems)
        if stem is not None:
            return _instruction("extract", stem)
    for verb in sorted(_VERBS, key=len, reverse=True):
        if cleaned == verb or not cleaned.startswith(verb + " "):
            continue
        stem = _match_stem(cleaned[len(verb) + 1 :], stems)
        if stem is None:
            break
        return _instruction(_VERBS[verb], stem)
    raise InstructionError(f"Unsupported instruction {text.strip()[:80]!r}. " + _help(stems))
