"""What a figure was measured on: the machine, the accelerator and the versions that matter."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = ("torch", "diffusers", "peft", "transformers", "discord.py", "dlib-bin", "opencv-python-headless",
            "numpy", "Pillow")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def accelerator() -> str:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    return "none (CPU only)"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine_facts() -> dict:
    return {"os": f"{platform.system()} {platform.release()}", "cpu": cpu_name(), "cores": os.cpu_count(),
            "memory_gib": memory_gib(), "accelerator": accelerator(), "versions": versions()}
