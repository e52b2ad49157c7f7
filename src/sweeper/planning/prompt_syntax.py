"""A1111's prompt syntax, parsed: emphasis weights, BREAK, `<lora:name:w>` tags, prompt
editing and alternation (no torch).

A prompt copied from an A1111 PNG should render as its author saw it, so this
follows A1111's own rules (modules/prompt_parser.py, parse_prompt_attention),
corners included: `(x)` x1.1, `[x]` /1.1, `(x:w)` x w, nesting multiplies,
`\\(` `\\)` `\\[` `\\]` `\\\\` are literal, an unclosed bracket weighs what
follows it, an unmatched closing one is text. `BREAK` ends a 75-token chunk.
Prompt editing (`[a:b:when]`, `[to:when]`, `[from::when]`) and alternation
(`[a|b]`) change the prompt during the denoising loop: `schedule` gives the
prompt's text at each step, as A1111's get_learned_conditioning_prompt_schedules
does (its off-by-one included: `[a:b:10]` draws `a` in steps 0..10); a bracket
that pairs with none is text. Constructs A1111 gives a meaning that sweeper does not render
(composable AND, other extra networks) are named by `unsupported` so planning
can refuse them rather than encode them as words.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

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
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")  # lark's SIGNED_NUMBER, spaces around
_PAIRS = {"[": "]", "(": ")"}


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
    return "AND (composable prompts)" if _AND.search(text) else None


# Prompt editing and alternation. A parsed prompt is a list of nodes: text, ("wrap", open, nodes, close) for
# emphasis brackets (kept as written, weighed later by parse_attention), ("edit", before or None, after, when)
# and ("alternate", [nodes, ...]).


def scheduled(text: str) -> str | None:
    """The first prompt-editing or alternation construct of `text`, named as a user knows it, or None."""
    return _first_scheduled(_parsed(text))


def schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's schedule of `text` over `steps` steps: (last step, text) pairs. The text at sampler step
    i (0-based) is that of the first pair whose last step is >= i (`at_step`)."""
    nodes = _parsed(text)
    ends = {steps}
    _collect(nodes, steps, ends)
    return [(end, _at(nodes, end, steps)) for end in sorted(ends)]


def at_step(found: list[tuple[int, str]], step: int) -> str:
    return next((text for end, text in found if step <= end), found[-1][1])


def _parsed(text: str) -> list:
    """`text` as nodes. A bracket that pairs with none is text, as A1111's grammar reads stray ones."""
    stack: list[int] = []
    match: dict[int, int] = {}
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 1
        elif text[i] in _PAIRS:
            stack.append(i)
        elif text[i] in _PAIRS.values() and stack and _PAIRS[text[stack[-1]]] == text[i]:
            match[stack.pop()] = i
        i += 1
    return _nodes(text, 0, len(text), match)


def _nodes(text: str, start: int, end: int, match: dict[int, int]) -> list:
    nodes: list = []
    i = plain = start
    while i < end:
        if text[i] == "\\":
            i += 2
        elif i in match:
            if plain < i:
                nodes.append(text[plain:i])
            nodes.append(_bracket(text, i, match[i], match))
            i = plain = match[i] + 1
        else:
            i += 1
    if plain < end:
        nodes.append(text[plain:end])
    return nodes


def _bracket(text: str, open_at: int, close: int, match: dict[int, int]) -> tuple:
    """The node of the brackets at `open_at`..`close`: a `[...]` is prompt editing if it holds one or two `:`
    and ends in a number, else alternation if it holds a `|` (outside nested brackets, both), else emphasis."""
    if text[open_at] == "[":
        bars, colons = _top_level(text, open_at + 1, close, match)
        when = _WHEN.fullmatch(text, colons[-1] + 1, close) if len(colons) in (1, 2) else None
        if when:
            before = _nodes(text, open_at + 1, colons[0], match) if len(colons) == 2 else None
            return ("edit", before, _nodes(text, colons[-2] + 1 if len(colons) == 2 else open_at + 1, colons[-1], match), when.group(1))
        if bars:
            edges = [open_at, *bars, close]
            return ("alternate", [_nodes(text, a + 1, b, match) for a, b in zip(edges, edges[1:])])
    return ("wrap", text[open_at], _nodes(text, open_at + 1, close, match), text[close])


def _top_level(text: str, start: int, end: int, match: dict[int, int]) -> tuple[list[int], list[int]]:
    """Positions of `|` and of `:` in text[start:end] that are not inside nested brackets or escaped."""
    bars, colons = [], []
    i = start
    while i < end:
        if text[i] == "\\":
            i += 1
        elif i in match:
            i = match[i]
        elif text[i] == "|":
            bars.append(i)
        elif text[i] == ":":
            colons.append(i)
        i += 1
    return bars, colons


def _when(when: str, steps: int) -> int:
    """A1111's step of an edit: a fraction of `steps` when written with a dot, else a step number; at most `steps`."""
    value = float(when)
    return min(steps, int(value * steps if "." in when else value))


def _collect(nodes: list, steps: int, ends: set[int]) -> None:
    for node in nodes:
        if isinstance(node, str):
            continue
        if node[0] == "wrap":
            _collect(node[2], steps, ends)
        elif node[0] == "alternate":
            ends.update(range(1, steps + 1))
            for option in node[1]:
                _collect(option, steps, ends)
        else:
            if _when(node[3], steps) >= 1:
                ends.add(_when(node[3], steps))
            for part in node[1:3]:
                _collect(part or [], steps, ends)


def _at(nodes: list, step: int, steps: int) -> str:
    """The text of `nodes` at A1111's (1-based) schedule step `step`."""
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "wrap":
            out.append(node[1] + _at(node[2], step, steps) + node[3])
        elif node[0] == "alternate":
            out.append(_at(node[1][(step - 1) % len(node[1])], step, steps))
        else:
            _, before, after, when = node
            out.append(_at(before or [], step, steps) if step <= _when(when, steps) else _at(after, step, steps))
    return "".join(out)


def _first_scheduled(nodes: list) -> str | None:
    for node in nodes:
        if isinstance(node, str):
            continue
        if node[0] != "wrap":
            return f"{_written(node)} ({'alternation' if node[0] == 'alternate' else 'prompt editing'})"
        found = _first_scheduled(node[2])
        if found:
            return found
    return None


def _written(node: Any) -> str:
    """A node as it was written (text and emphasis kept; used to name a construct)."""
    if isinstance(node, str):
        return node
    if node[0] == "wrap":
        return node[1] + "".join(map(_written, node[2])) + node[3]
    if node[0] == "alternate":
        return "[" + "|".join("".join(map(_written, option)) for option in node[1]) + "]"
    _, before, after, when = node
    return "[" + ("" if before is None else "".join(map(_written, before)) + ":") + "".join(map(_written, after)) + f":{when}]"


def is_plain(text: str) -> bool:
    """Whether A1111 encodes `text` as the text itself at weight 1: no syntax with an effect."""
    return _TAG.search(text) is None and parse_attention(text) == [(text, 1.0)]
