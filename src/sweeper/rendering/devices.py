"""Which devices this machine can render on, found without importing torch.

Planning (and so `--help`, `dry_run`) must stay instant, yet image ids
depend on the device type, and `device=cuda` on a machine where torch cannot
use CUDA must be refused before anything loads. The CUDA driver API answers
"how many GPUs can this process see" in milliseconds and honours
CUDA_VISIBLE_DEVICES; torch/version.py says whether torch was built with CUDA.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import re
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices visible to this process (0 without a driver)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@lru_cache(maxsize=1)
def torch_build() -> tuple[str, bool]:
    """(torch's version, whether it was built with CUDA or ROCm), read from torch/version.py."""
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    try:
        text = (Path(locations[0]) / "version.py").read_text(encoding="utf-8")
    except (IndexError, OSError):
        return "not installed", False
    version = re.search(r"^__version__\s*=\s*['\"]([^'\"]*)", text, re.M)
    gpu = re.search(r"^(cuda|hip)\b[^=\n]*=\s*['\"]", text, re.M)
    return (version.group(1) if version else "unknown"), gpu is not None


def usable_gpus() -> int:
    """GPUs that torch in this process can render on: visible ones, with a CUDA build of torch."""
    return cuda_device_count() if torch_build()[1] else 0


def auto_device() -> str:
    """The device type that `device: auto` resolves to: cuda, mps or cpu."""
    if usable_gpus() > 0:
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"


def cuda_problem(index: int | None) -> str | None:
    """Why `device=cuda` (or `cuda:index`) cannot render here, or None when it can."""
    version, built_with_cuda = torch_build()
    if not built_with_cuda:
        return f"this torch ({version}) is built without CUDA: install a CUDA build of torch, or use device=cpu"
    count = cuda_device_count()
    if count == 0:
        return "no CUDA GPU is visible to this process (no driver, or CUDA_VISIBLE_DEVICES hides them): use device=cpu"
    if index is not None and index >= count:
        return f"only {count} GPU(s) are visible here (cuda:0 .. cuda:{count - 1})"
    return None
