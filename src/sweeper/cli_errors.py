"""Hydra's complaints about a command line, said the way a user fixes them.

    prompt=a fox (masterpiece:1.2)   ->  type it quoted: 'prompt="a fox (masterpiece:1.2)"'
    guidnace=7                       ->  unknown key guidnace; did you mean guidance?
    refiner.split=0.8                ->  refiner.split needs a refiner: refiner=sdxl or refiner=tiny

Hydra's override grammar reads `, ( ) [ ] { } : | ' "` and spaces as syntax;
A1111-style prompts are full of them. Inside a Hydra quoted string they are
plain text, so every prompt has one way to be typed: `'key="..."'` (shell
single quotes around, Hydra double quotes inside), with `"` and `\\` escaped
by a backslash and `${` written `\\${`. `quoted_override` makes that form for
any value, shell quoting included.
"""

from __future__ import annotations

import difflib
import re
import shlex
from typing import Iterable

# Keys whose values are text a user types freely (Hydra syntax in them is a surprise, not intent).
TEXT_KEYS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")


def quoted_override(key: str, value: str) -> str:
    """`key=value` as one shell word that Hydra reads back as exactly `value` (one string, never a sweep).

    In a Hydra quoted string a backslash escapes only a quote (and the
    backslashes right before one); `${` starts an interpolation unless escaped.
    """
    escaped = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ('\\"' if m.group(2) else ""), value).replace("${", "\\${")
    return shlex.quote(f'{key}="{escaped}"')


def explain(message: str, override: str | None, known: Iterable[str]) -> str | None:
    """One line for a Hydra error about the command line, or None to keep Hydra's own.

    `override` is the override Hydra could not parse, when it says; `known` the config's keys.
    """
    ambiguous = re.match(r"Ambiguous value for argument '(.*)'", message)
    line = override or (ambiguous.group(1) if ambiguous else None)
    if line is not None and "=" in line:
        key, value = line.split("=", 1)
        what = "splits it into several values at its commas" if ambiguous else "cannot read it as written"
        return (
            f"Hydra {what}: {line!r} (commas, ( ) [ ] {{ }} : | and quotes are its syntax); "
            f"to pass it as one text, type {quoted_override(key.lstrip('+~'), value)}"
        )
    unknown = re.match(r"Could not override '([^']*)'", message)
    if unknown and not _exists(unknown.group(1), known):
        return unknown_key(unknown.group(1), known)
    return None  # a key that exists (a dict getting new keys): Hydra's own line says to add a `+`


def _exists(key: str, known: Iterable[str]) -> bool:
    if key.startswith("refiner."):
        return False  # refiner=none has none of them: unknown_key says to choose a refiner
    return key in [*known, *_launcher_keys()]


def unknown_key(key: str, known: Iterable[str]) -> str:
    """The line for a key the config does not have, naming the closest known one."""
    group, _, field = key.partition(".")
    if group == "refiner" and field in ("split", "mode", "id", "revision"):
        return f"invalid {key}: refiner=none has no {field}; choose a refiner first: refiner=sdxl or refiner=tiny"
    if key.startswith("hydra.launcher."):
        known = _launcher_keys()
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; python -m sweeper --help lists every key"
    return f"unknown key {key}{hint}"


def _launcher_keys() -> list[str]:
    from dataclasses import fields

    from hydra_plugins.sweeper_plugins import config

    schemas = (config.SlurmLauncherConf, config.AccelerateLauncherConf, config.RayActorsLauncherConf)
    return [f"hydra.launcher.{field.name}" for schema in schemas for field in fields(schema) if not field.name.startswith("_")]
