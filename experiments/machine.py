"""What machine a benchmark ran on, recorded next to its numbers."""

from __future__ import annotations

import os
import platform

import torch


def describe() -> dict[str, object]:
    info: dict[str, object] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
