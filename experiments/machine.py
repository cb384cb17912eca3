"""What machine a benchmark or experiment ran on, recorded next to its numbers.

Every benchmark and experiment under ``experiments/`` records this one description (in its
JSON, ``machine.json`` or report header), so runs from different scripts compare key by key.
The load average is part of it: this project's CPU machines are shared, and a ratio measured
under a load of 10 reads differently from one measured on an idle machine.
"""

from __future__ import annotations

import os
import platform

import torch


def describe(device: torch.device | str | None = None) -> dict[str, object]:
    """The device the run uses (default: CUDA if present, else the CPU), the CPU, thread and
    library versions, and the 1/5/15-minute load average now (where the OS reports one)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info: dict[str, object] = {
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    load = load_average()
    if load is not None:
        info["load_average"] = load
    return info


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average now (None where the OS has none, e.g. Windows)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
