"""A1111's prompt syntax, parsed: emphasis weights, BREAK, `<lora:name:w>` tags (no torch).

A prompt copied from an A1111 PNG should render as its author saw it, so this
follows A1111's own rules (modules/prompt_parser.py, parse_prompt_attention),
corners included: `(x)` x1.1, `[x]` /1.1, `(x:w)` x w, nesting multiplies,
`\\(` `\\)` `\\[` `\\]` `\\\\` are literal, an unclosed bracket weighs what
follows it, an unmatched closing one is text. `BREAK` ends a 75-token chunk.
Constructs A1111 gives a meaning that sweeper does not render (prompt editing,
alternation, composable AND, other extra networks) are named by `unsupported`
so planning can refuse them rather than encode them as words.
"""

from __future__ import annotations

import re
from typing import NamedTuple

BREAK = ("BREAK", -1.0)  # the marker a BREAK leaves in a parsed prompt, as A1111's
ROUND, SQUARE = 1.1, 1 / 1.1

# One token of the attention syntax, in the order A1111 tries them.
_TOKEN = re.compile(
    r"""(?P<escaped>\\[()\[\]\\]|\\)
      | (?P<open>[(\[])
      | :(?P<weight>[+-]?[.\d]+)\)
      | (?P<close>[)\]])
      | (?P<text>[^\\()\[\]:]+|:)""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra networks: <lora:name:weight>, <hypernet:...>
_AND = re.compile(r"\bAND\b")
_INNER_SQUARE = re.compile(r"\[([^\[\]]*)\]")
_SCHEDULED = re.compile(r":\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


class Lora(NamedTuple):
    name: str
    weight: float


def parse_attention(text: str) -> list[tuple[str, float]]:
    """(text, weight) runs of `text`, runs of one weight merged; a BREAK is BREAK. ValueError for a
    weight that is no number (`(x:1.2.3)`, where A1111 fails too)."""
    parts: list[list] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if match.group("escaped"):
            parts.append([token[1:], 1.0])
        elif match.group("open"):
            opened[token].append(len(parts))
        elif match.group("weight") is not None and opened["("]:
            scale(opened["("].pop(), _number(match.group("weight")))
        elif token == ")" and opened["("]:
            scale(opened["("].pop(), ROUND)
        elif token == "]" and opened["["]:
            scale(opened["["].pop(), SQUARE)
        else:  # plain text, and brackets or weights with nothing to close
            for n, piece in enumerate(_BREAK.split(token)):
                if n:
                    parts.append(list(BREAK))
                parts.append([piece, 1.0])
    for start in opened["("]:
        scale(start, ROUND)
    for start in opened["["]:
        scale(start, SQUARE)
    merged: list[list] = []
    for part in parts or [["", 1.0]]:
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(piece, weight) for piece, weight in merged]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"the weight {text!r} is not a number") from None


def lora_tags(text: str) -> tuple[str, list[Lora]]:
    """`text` without its `<lora:name>` / `<lora:name:weight>` tags (as A1111 removes them), and the
    adapters they name. ValueError for a tag of another kind or a weight that is no number."""
    found: list[Lora] = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2).split(":")
        if kind != "lora":
            raise ValueError(f"<{kind}:...> (A1111's {kind} extra network) is not supported; only <lora:name:weight>")
        if len(args) > 2 or "=" in match.group(2):
            raise ValueError(f"{match.group(0)}: separate text-encoder and UNet weights are not supported; write <lora:name:weight>")
        name = args[0].strip()
        weight = args[1].strip() if len(args) == 2 else "1"
        try:
            found.append(Lora(name, float(weight)))
        except ValueError:
            raise ValueError(f"{match.group(0)}: the weight {weight!r} is not a number") from None
        return ""

    return _TAG.sub(take, text), found


def unsupported(text: str) -> str | None:
    """The first construct A1111 gives a meaning that sweeper does not render, named as a user knows it."""
    if _AND.search(text):
        return "AND (composable prompts)"
    masked = re.sub(r"\\.", "__", text)  # escaped brackets are text
    while True:
        match = _INNER_SQUARE.search(masked)
        if match is None:
            return None
        inner = match.group(1)
        if "|" in inner:
            return f"[{inner}] (alternation)"
        if ":" in inner and _SCHEDULED.search(inner):
            return f"[{inner}] (prompt editing)"
        masked = masked[: match.start()] + "_" * len(match.group(0)) + masked[match.end():]


def is_plain(text: str) -> bool:
    """Whether A1111 encodes `text` as the text itself at weight 1: no syntax with an effect."""
    return _TAG.search(text) is None and parse_attention(text) == [(text, 1.0)]
