"""Variation seeds (A1111's "Variation seed" and "Variation seed strength"): checked here, before any
model loads; the noise is blended in rendering/variation.py."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.planning.validate import SEED_LIMIT, is_int


def checked(c: Mapping[str, Any], strength: float | None) -> int | None:
    """A job's variation seed; None where no `strength` (subseed_strength checked, 0 made None) blends it in,
    so the image is the seed's own, with its id. Either key without the other would change nothing: refused."""
    value = c.get("subseed")
    if value is None:
        if strength is not None:
            raise invalid("subseed_strength", strength, "blends in the noise of a variation seed: set subseed too")
        return None
    if not is_int(value) or not 0 <= value < SEED_LIMIT:
        raise invalid("subseed", value, f"must be an integer 0 .. {SEED_LIMIT - 1}")
    if c.get("subseed_strength") is None:
        raise invalid("subseed", value, "changes nothing without subseed_strength (0 .. 1) to blend its noise in")
    return None if strength is None else value
