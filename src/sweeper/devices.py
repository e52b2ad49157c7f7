"""Which device `device: auto` means here, found without importing torch.

Planning (and so `--help`, `dry_run`) must stay instant, yet image ids
depend on the device type. The CUDA driver API answers "how many GPUs can
this process see" in milliseconds and honours CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from functools import lru_cache


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


def auto_device() -> str:
    """The device type that `device: auto` resolves to: cuda, mps or cpu."""
    if cuda_device_count() > 0:
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"
