"""Loss terms of the slice networks: LSGAN, and the edge-structure term of L_style."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def lsgan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017): ``mean((D - 1)^2)`` for real, ``mean(D^2)`` for fake."""
    return torch.mean((logits - (1.0 if real else 0.0)) ** 2)


def gradient_magnitude(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Sobel gradient magnitude of ``[N, 1, H, W]`` images."""
    kernel_x = _SOBEL_X.to(image)[None, None]
    kernel_y = kernel_x.transpose(-1, -2)
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(padded, kernel_x), F.conv2d(padded, kernel_y)
    return torch.sqrt(gx * gx + gy * gy + eps)


def structure_loss(output: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 − normalized cross-correlation of the two images' edge maps, averaged over the batch.

    Contrast-invariant (a T2-like input and its T1-like output have edges in the same places but of other
    signs and sizes), so it punishes edges that moved, vanished or appeared: changed anatomy, not changed style.
    """
    a = gradient_magnitude(output).flatten(1)
    b = gradient_magnitude(reference).flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    ncc = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return torch.mean(1.0 - ncc)
