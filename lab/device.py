"""Choosing and describing the compute device: CUDA, then Apple MPS, else CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

CPU_CHUNK = 96
"""Images per encoder call on the CPU: calls whose activations stay under about 32 MB are the
fastest per image there (``python -m lab bench algorithms`` times the alternatives)."""


def pick_device(preference: str = "auto") -> torch.device:
    """The device to compute on. ``auto`` prefers CUDA, then MPS, then the CPU.

    Asking for an accelerator that is not present raises ``ValueError``.
    """
    if preference not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {preference!r}")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but no CUDA GPU is available here")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but Apple MPS is not available here")
    return torch.device(preference)


def describe_device(device: torch.device | None = None) -> dict:
    """A plain description: kind, name, and memory in GiB where known."""
    device = device or pick_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"kind": "cuda", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    if device.type == "mps":
        return {"kind": "mps", "name": "Apple GPU (MPS)", "memory_gib": None}
    return {"kind": "cpu", "name": f"CPU ({torch.get_num_threads()} threads)", "memory_gib": None}


def gpu_count() -> int:
    """How many CUDA GPUs this machine has (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def keep_freed_memory(mmap_mb: int = 32, trim_mb: int = 256) -> bool:
    """Ask glibc's allocator to reuse freed memory rather than hand it back to the system.

    By default every tensor over a few MB is a fresh ``mmap`` whose pages fault in one by one
    when first written, and a freed one is unmapped at once; a training step allocates and
    frees hundreds of such activations. Served from a heap that keeps up to ``trim_mb`` MB
    of free memory instead, they skip those page faults. Only the lab's own processes ask for
    this (``lab/__main__.py``); importing the package leaves the allocator alone. Returns whether the setting took (False off glibc, e.g. on macOS).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, mmap_mb << 20), (M_TRIM_THRESHOLD, trim_mb << 20), (M_TOP_PAD, 16 << 20)))


def describe_machine() -> str:
    """This machine in words: the processor, its cores, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = describe_device(pick_device("auto"))
    extra = f", {gpu['name']}" if gpu["kind"] != "cpu" else ""
    return f"{cpu}, {os.cpu_count()} cores{extra}"
