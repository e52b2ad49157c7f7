"""Launching: running a planned sweep in one process, over ranks, SLURM arrays or Ray actors."""
