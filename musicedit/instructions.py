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

__all__ = ["Instruction", "InstructionError", "normalize_instruction", "normalize_edit",
           "MAX_INSTRUCTION_CHARS", "MAX_STEPS"]

MAX_INSTRUCTION_CHARS = 200
MAX_STEPS = 4  # instructions one edit may chain

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
        "extract <stem> (also 'only <stem>'/'<stem> only'/'isolate'), replace <stem> with "
        f"<stem> (also 'swap <stem> for <stem>'), or up to {MAX_STEPS} of them chained with "
        "'then' or 'and' ('remove the guitar, then add piano'); "
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


def _check_text(text: str, stems: Sequence[str]) -> None:
    """Refuse empty, over-long and control-character text."""
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


def _clean(text: str) -> str:
    """Lower case, single spaces, no template prefix, trailing punctuation or 'please'."""
    cleaned = " ".join(text.split()).lower()
    cleaned = _PREFIX.sub("", cleaned).strip()
    cleaned = cleaned.rstrip(_TRAILING_PUNCTUATION).strip()
    return _POLITE.sub("", cleaned).rstrip(_TRAILING_PUNCTUATION).strip()


def _one(cleaned: str, stems: Sequence[str]) -> Instruction | None:
    """The instruction one cleaned phrase names, or None."""
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
    return None


def normalize_instruction(text: str, stems: Sequence[str]) -> Instruction:
    """Map `text` ("add the drums", "Music piece. Instruct: No Bass.") to an `Instruction`.

    Raises:
        InstructionError: the text is empty, over-long, has control characters, or asks for
            an operation or stem outside `stems`.
    """
    _check_text(text, stems)
    instruction = _one(_clean(text), stems)
    if instruction is None:
        raise InstructionError(f"Unsupported instruction {text.strip()[:80]!r}. " + _help(stems))
    return instruction


# "replace the guitar with piano", "swap the guitar for piano": remove, then add.
_REPLACE = re.compile(r"^(?:replace|swap(?: out)?|substitute|exchange|switch) (.+?) "
                      r"(?:with|for|by) (.+)$")
# Between the steps of a chain; the longest first.
_CHAIN = re.compile(r"\s*(?:,? and then |,? then |,? and |, |; | & )\s*")


def normalize_edit(text: str, stems: Sequence[str]) -> tuple[Instruction, ...]:
    """Map `text` to the steps it asks for, in order (1 to `MAX_STEPS`).

    One instruction, as `normalize_instruction` reads it; several chained with "then", "and",
    commas or semicolons ("remove the guitar, then add piano"; a step without a verb repeats
    the previous one's: "remove the drums and the bass"); "replace X with Y" and "swap X for
    Y" are "remove X, then add Y". Strict like `normalize_instruction`: every part must be a
    supported instruction.

    Raises:
        InstructionError: as `normalize_instruction`, or more than `MAX_STEPS` steps.
    """
    _check_text(text, stems)
    steps: list[Instruction] = []
    verb: str | None = None
    for part in (p for p in _CHAIN.split(_clean(text)) if p):
        part = _clean(part)
        replace = _REPLACE.match(part)
        if replace is not None:
            old = _match_stem(replace.group(1), stems)
            new = _match_stem(replace.group(2), stems)
            if old is None or new is None or old == new:
                steps = []
                break
            steps += [_instruction("remove", old), _instruction("add", new)]
            verb = "add"
            continue
        instruction = _one(part, stems)
        if instruction is None and verb is not None:
            instruction = _one(f"{verb} {part}", stems)
        if instruction is None:
            steps = []
            break
        steps.append(instruction)
        verb = next((v for v in sorted(_VERBS, key=len, reverse=True)
                     if part == v or part.startswith(v + " ")), verb)
    if not steps:
        raise InstructionError(f"Unsupported instruction {text.strip()[:80]!r}. " + _help(stems))
    if len(steps) > MAX_STEPS:
        raise InstructionError(f"The instruction has {len(steps)} steps; at most {MAX_STEPS} "
                               "can be chained in one edit (submit the rest as another edit of "
                               "this one's result, with source_job_id). " + _help(stems))
    return tuple(steps)
