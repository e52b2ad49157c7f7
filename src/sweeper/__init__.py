"""sweeper: batch runner for Stable Diffusion prompt sweeps."""

__version__ = "0.1.0"
