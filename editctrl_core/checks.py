"""Input checks shared by the nodes, the sampler and training: finite numbers and finite tensors."""

from __future__ import annotations

import math

import torch


class NonFiniteError(ValueError):
    """An input (tensor or number) holds NaN or ±Inf."""


def check_finite_value(name: str, value: float) -> float:
    """`value` as a float, or a NonFiniteError naming `name` (NaN/Inf pass ComfyUI's min/max widget check)."""
    number = float(value)
    if not math.isfinite(number):
        raise NonFiniteError(f"{name} is {number}; give a finite number")
    return number


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN/±Inf, in one reduction without a full-size temporary: its min and max
    are NaN when any value is, ±Inf when any is infinite (on the CPU 13× faster than ``isfinite(t).all()``, measured
    at 121 frames of 768×512: 0.05 s against 0.63 s)."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_finite_tensor(name: str, tensor: torch.Tensor | None, hint: str = "") -> torch.Tensor | None:
    """`tensor` unchanged, or a NonFiniteError saying how many NaN/Inf values `name` holds and what to do."""
    if tensor is None or all_finite(tensor):
        return tensor
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        nan = int(torch.isnan(tensor).sum())
        count = int(bad.sum())
        where = f"; first at index {tuple(int(i) for i in bad.nonzero()[0])}" if tensor.ndim else ""
        advice = hint or "check what feeds this input (a failed decode, a broken file or a NaN-producing node)"
        raise NonFiniteError(f"{name} holds {count} non-finite values ({nan} NaN, {count - nan} ±Inf) of "
                             f"{tensor.numel()}{where}; {advice}")
    return tensor
