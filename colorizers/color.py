"""Colour conversion between sRGB and CIE Lab (D65), in torch and differentiable.

Every model in this project predicts the a,b channels of Lab from L (DTU report section 1; ParaColorizer
section III and Fig. 3), so this module is the single place where colour is converted and normalised.
Training uses the same functions, which is why they are written in torch (autograd flows through them)
rather than with scikit-image; ``tests/test_pipeline.py`` checks them against scikit-image.

Conventions:
- RGB tensors are float in [0, 1], shape ``(..., 3, H, W)``.
- Lab tensors are ``(..., 3, H, W)`` with L in [0, 100] and a, b roughly in [-110, 110].
- Networks see ``normalize_l(L)`` in [-1, 1] and predict ``normalize_ab(ab)`` in [-1, 1].
"""
from __future__ import annotations

import torch

# sRGB (D65) <-> XYZ matrices, as in IEC 61966-2-1 and scikit-image.
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423],
     [0.212671, 0.715160, 0.072169],
     [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
_XYZ_TO_RGB_WHITE = _XYZ_TO_RGB * _WHITE_D65  # XYZ -> RGB with XYZ given relative to the white point

L_SCALE = 50.0    # L in [0, 100]  ->  L / 50 - 1 in [-1, 1]
AB_SCALE = 110.0  # a, b in about [-110, 110]  ->  ab / 110 in [-1, 1]

_EPS = 6.0 / 29.0


def normalize_l(l: torch.Tensor) -> torch.Tensor:
    return l / L_SCALE - 1.0


def unnormalize_l(l_norm: torch.Tensor) -> torch.Tensor:
    return (l_norm + 1.0) * L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def unnormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    return ab_norm * AB_SCALE


def _matmul_channels(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix to the channel dimension (-3) of x."""
    m = m.to(dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    rgb = rgb.clamp(0.0, 1.0)
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(1e-12) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS ** 3, t.clamp_min(1e-12) ** (1.0 / 3.0), t / (3 * _EPS ** 2) + 4.0 / 29.0)


def _f_inv(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t ** 3, 3 * _EPS ** 2 * (t - 4.0 / 29.0))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> Lab (L in [0, 100]). Shape (..., 3, H, W)."""
    xyz = _matmul_channels(_RGB_TO_XYZ, srgb_to_linear(rgb))
    white = _WHITE_D65.to(dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    fx, fy, fz = _f(xyz / white).unbind(-3)
    l = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([l, a, b], dim=-3)


def lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> linear RGB, not clipped (values outside [0, 1] are out of the sRGB gamut)."""
    l, a, b = lab.unbind(-3)
    fy = (l + 16.0) / 116.0
    f_xyz = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    return _matmul_channels(_XYZ_TO_RGB_WHITE, _f_inv(f_xyz))  # XYZ = white * f^-1, folded into the matrix


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> sRGB in [0, 1], clipped per channel (differentiable; use in training losses)."""
    return linear_to_srgb(lab_to_linear_rgb(lab).clamp(0.0, 1.0))


def _largest_in_gamut_chroma_scale(l: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iterations: int) -> torch.Tensor:
    """For flat tensors of L, a, b: the largest s in [0, 1] such that (L, s*a, s*b) is inside the sRGB gamut.

    Bisection; Y (and so the L term) is the same for every s, so only X and Z are recomputed per step.
    """
    m = _XYZ_TO_RGB_WHITE.to(dtype=l.dtype, device=l.device)
    fy = (l + 16.0) / 116.0
    y = _f_inv(fy)
    rgb_y = [m[i, 1] * y for i in range(3)]
    a_step, b_step = a / 500.0, -b / 200.0
    tol = 1e-6
    lo, hi = torch.zeros_like(l), torch.ones_like(l)
    for _ in range(iterations):
        mid = (lo + hi) * 0.5
        x, z = _f_inv(fy + mid * a_step), _f_inv(fy + mid * b_step)
        ok = torch.ones_like(l, dtype=torch.bool)
        for i in range(3):
            channel = m[i, 0] * x + rgb_y[i] + m[i, 2] * z
            ok &= (channel >= -tol) & (channel <= 1 + tol)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return lo


def lab_to_rgb_in_gamut(lab: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Lab -> sRGB in [0, 1], bringing out-of-gamut colours into the gamut by reducing chroma.

    Per-channel clipping of an out-of-gamut colour changes its lightness, and the pipeline promises that the
    output keeps the input's L. Here each out-of-gamut pixel keeps its L and hue and has its chroma scaled by
    the largest factor s in [0, 1] that lands in gamut (bisection to 2**-iterations; a grey with the same L is
    always in gamut, so s = 0 is a valid lower bound). Not meant for backpropagation.
    """
    with torch.no_grad():
        lin = lab_to_linear_rgb(lab)
        tol = 1e-6
        bad = ((lin < -tol) | (lin > 1 + tol)).any(dim=-3)  # (..., H, W)
        where_bad = bad.nonzero(as_tuple=True)  # found once, used to read every channel and to write back
        if where_bad[0].numel():
            l, a, b = (channel[where_bad] for channel in lab.movedim(-3, 0))  # (3, ..., H, W) views
            scale = _largest_in_gamut_chroma_scale(l, a, b, iterations)
            fixed = torch.stack([l, a * scale, b * scale])[:, :, None]  # (3, N, 1): a 3-channel "image"
            lin.movedim(-3, 0)[(slice(None), *where_bad)] = lab_to_linear_rgb(fixed)[:, :, 0]  # into lin itself
        return linear_to_srgb(lin.clamp_(0.0, 1.0))


def rgb_to_l(rgb: torch.Tensor) -> torch.Tensor:
    """The L channel (0..100) of sRGB, shape (..., 1, H, W)."""
    return rgb_to_lab(rgb)[..., :1, :, :]


def l_to_gray(l: torch.Tensor) -> torch.Tensor:
    """The sRGB grey level (..., 1, H, W) in [0, 1] of colours with lightness L and a = b = 0.

    With a = b = 0, XYZ is the white point scaled by Y = f^-1((L + 16) / 116), and sRGB's white is (1, 1, 1), so
    the grey needs one channel of work instead of a three-channel Lab conversion (large photos)."""
    return linear_to_srgb(_f_inv((l + 16.0) / 116.0).clamp(0.0, 1.0))


def gray_to_rgb_from_l(l: torch.Tensor) -> torch.Tensor:
    """A grey sRGB image with the given L (a = b = 0)."""
    return l_to_gray(l).expand(*l.shape[:-3], 3, *l.shape[-2:])
