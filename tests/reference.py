"""Slow dense-matrix reference of RoAd, written from the 2×2 block formula with plain loops.

Only for tests: it shares no code with `road_interp.rotation`.
"""

from __future__ import annotations

import torch


def planes(d: int, group_size: int) -> list[tuple[int, int]]:
    """(a, b) per plane, in RoAd1 parameter order."""
    half = group_size // 2
    return [
        (g * group_size + j, g * group_size + j + half)
        for g in range(d // group_size)
        for j in range(half)
    ]


def dense_rotation(variant: str, group_size: int, theta, alpha) -> torch.Tensor:
    """The d×d matrix R of a variant's (θ, α), in float64.

    Block of plane (a, b): [[α11 cos θ11, −α12 sin θ12], [α21 sin θ21, α22 cos θ22]].
    """
    theta, alpha = theta.double(), alpha.double()
    factor = {"road_1": 0.5, "road_2": 1.0, "road_4": 2.0}[variant]
    d = int(theta.numel() / factor)
    R = torch.zeros(d, d, dtype=torch.float64)
    for k, (a, b) in enumerate(planes(d, group_size)):
        if variant == "road_1":
            t11 = t12 = t21 = t22 = theta[k]
            a11 = a12 = a21 = a22 = alpha[k]
        elif variant == "road_2":
            t11 = t12 = theta[a]
            a11 = a12 = alpha[a]
            t21 = t22 = theta[b]
            a21 = a22 = alpha[b]
        else:  # road_4: per group, g entries for the cosine column, then g for the sine column
            start = (a // group_size) * 2 * group_size
            cos_a, cos_b = start + a % group_size, start + b % group_size
            sin_a, sin_b = cos_a + group_size, cos_b + group_size
            t11, a11 = theta[cos_a], alpha[cos_a]
            t12, a12 = theta[sin_a], alpha[sin_a]
            t21, a21 = theta[sin_b], alpha[sin_b]
            t22, a22 = theta[cos_b], alpha[cos_b]
        R[a, a] = a11 * torch.cos(t11)
        R[a, b] = -a12 * torch.sin(t12)
        R[b, a] = a21 * torch.sin(t21)
        R[b, b] = a22 * torch.cos(t22)
    return R


def dense_from_coefficients(c, s, group_size: int) -> torch.Tensor:
    """The d×d matrix of per-coordinate coefficients: block [[c_a, −s_a], [s_b, c_b]]."""
    c, s = c.double(), s.double()
    d = c.numel()
    R = torch.zeros(d, d, dtype=torch.float64)
    for a, b in planes(d, group_size):
        R[a, a], R[a, b], R[b, a], R[b, b] = c[a], -s[a], s[b], c[b]
    return R
