"""Choosing and describing the compute device: CUDA, then Apple MPS, else CPU."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


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
