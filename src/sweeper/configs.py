"""Where sweeper's Hydra configs are."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """conf/ as shipped in the wheel (sweeper/conf), else the source checkout's top-level conf/."""
    packaged = Path(__file__).resolve().parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")
