"""Model-based repairs of a damaged slice against its neighbours: a k-space spike removed, a saturation undone.

Two kinds of damage destroy little of a slice's own information, yet a convolutional network restores them poorly
from pixels: a k-space spike adds one conjugate pair of Fourier coefficients (a sinusoid over the whole slice,
wider than the U-Net's receptive field, then clipped to [0, 1]), and saturation multiplies the slice by an unknown
gain before clipping (the unclipped pixels hold the anatomy exactly, divided by one number). Each repair here finds
its damage by comparing the slice with the mean of its two nearest neighbours, undoes it only when the evidence is
clear, and otherwise returns the slice bit for bit, so a clean slice is never changed. The restorer
(:class:`~sgad_med.networks.SliceRestorationNet` with ``repair=True``) gets the repaired slice as an input channel
and its gate keeps it where it fits.

The thresholds were set on training anatomies 0-9 in training styles (``restoration_cases`` at severities 0.2 and
0.5): on clean slices the largest off-centre coefficient difference stands at most 1.2 times above the third
largest and the gain estimate is at most 1.00; a spike of severity 0.2 stands at least 5.3 times above it and a
saturation of severity 0.2 has a gain of at least 1.33.
"""

from __future__ import annotations

import torch

__all__ = ["despike", "desaturate"]


def _radial_frequency(h: int, w: int, device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[None, :]
    return torch.sqrt(fy * fy + fx * fx)


def _check_batches(slices: torch.Tensor, reference: torch.Tensor) -> None:
    if slices.shape != reference.shape or slices.ndim != 3:
        if torch.jit.is_scripting():  # TorchScript cannot format shapes as tuples
            raise ValueError("need two [B, H, W] batches of the same shape")
        raise ValueError(f"need two [B, H, W] batches of the same shape, got {tuple(slices.shape)} and "
                         f"{tuple(reference.shape)}")


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Median of each image's ``values`` where ``mask`` holds (NaN where it holds nowhere); ``[B]``."""
    return torch.where(mask, values, torch.full_like(values, float("nan"))).flatten(1).nanmedian(dim=1).values


def despike(
    slices: torch.Tensor,
    reference: torch.Tensor,
    min_frequency: float = 0.07,
    min_ratio: float = 3.0,
    max_pairs: int = 2,
    clipped_at: float = 0.999,
) -> torch.Tensor:
    """``slices`` with isolated k-space spikes found and the sinusoids they add subtracted.

    A spike is the largest difference ``|F(slice) - F(reference)|`` at a radial frequency of at least
    ``min_frequency`` (cycles per pixel) when it stands ``min_ratio`` times above the third largest (the second is
    its conjugate twin). Its pair of coefficients adds one sinusoid to the slice; because the damaged slice was
    clipped to [0, 1], the sinusoid's amplitude and phase are fitted by least squares to ``slice - reference`` over
    the pixels that were not clipped, and subtracted. Up to ``max_pairs`` spikes are removed, one at a time. A
    pixel clipped at 0 was at most ``-sinusoids`` before the clip, one clipped at 1 at least ``1 - sinusoids``: it
    becomes the reference held within that bound. A slice in which no spike stands out is returned bit for bit.

    Args:
        slices: images ``[B, H, W]`` on the [0, 1] scale.
        reference: images ``[B, H, W]`` the slices should resemble (for slice k: the mean of k-1 and k+1).
        min_frequency: lowest radial frequency searched; below it neighbouring slices differ in anatomy.
        min_ratio: how far the spike must stand above the third largest difference.
        max_pairs: most spikes removed per slice.
        clipped_at: a pixel at or above this value (or at 0) is taken as clipped.

    Returns:
        ``[B, H, W]``, the dtype of ``slices``.
    """
    _check_batches(slices, reference)
    h, w = slices.shape[-2:]
    image, reference64 = slices.double(), reference.double()
    unclipped = ((image > 0.0) & (image < clipped_at)).double()
    searched = (_radial_frequency(h, w, slices.device) >= min_frequency).flatten()
    rows = torch.arange(h, device=slices.device, dtype=torch.float64)[:, None] / h
    cols = torch.arange(w, device=slices.device, dtype=torch.float64)[None, :] / w
    sinusoids = torch.zeros_like(image)
    found = torch.zeros(slices.shape[0], dtype=torch.bool, device=slices.device)
    for _ in range(max_pairs):
        residual = image - sinusoids - reference64
        difference = torch.fft.fft2(residual).abs().flatten(1).masked_fill(~searched, 0.0)
        top = difference.topk(3, dim=1)
        spike = top.values[:, 0] >= min_ratio * top.values[:, 2]
        if not bool(spike.any()):
            break
        u = (top.indices[:, 0] // w).double()[:, None, None]
        v = (top.indices[:, 0] % w).double()[:, None, None]
        phase = 2.0 * torch.pi * (u * rows + v * cols)
        waves = torch.stack([torch.cos(phase), torch.sin(phase)], dim=1)  # [B, 2, H, W]
        basis = waves * unclipped[:, None]
        target = residual * unclipped
        ridge = 1e-9 * torch.eye(2, dtype=torch.float64, device=slices.device)  # a slice all clipped: no fit
        normal = torch.einsum("bihw,bjhw->bij", basis, basis) + ridge
        coefficients = torch.linalg.solve(normal, torch.einsum("bihw,bhw->bi", basis, target))
        fitted = torch.einsum("bi,bihw->bhw", coefficients, waves)
        sinusoids = sinusoids + torch.where(spike[:, None, None], fitted, torch.zeros_like(fitted))
        found |= spike
    repaired = image - sinusoids
    at_zero, at_one = image <= 0.0, image >= clipped_at
    repaired = torch.where(at_zero, torch.minimum(reference64, (-sinusoids).clamp(min=0.0)), repaired)
    repaired = torch.where(at_one, torch.maximum(reference64, 1.0 - sinusoids), repaired)
    return torch.where(found[:, None, None], repaired.clamp(0.0, 1.0).to(slices.dtype), slices)


def desaturate(
    slices: torch.Tensor,
    reference: torch.Tensor,
    min_gain: float = 1.2,
    min_extra_clipped: float = 0.05,
    clipped_at: float = 0.999,
) -> torch.Tensor:
    """``slices`` divided by the gain that saturated them, their clipped pixels bounded from below.

    The gain is the median ratio slice / reference over pixels that are neither dark, nor clipped in the slice,
    nor background in the reference, taken again over those of them where the reference is below ``0.8 / gain``.
    A slice is repaired when the gain is at least ``min_gain`` and the share of head pixels (reference above 0.05)
    clipped in it exceeds the reference's by at least ``min_extra_clipped``: its unclipped pixels are divided by
    the gain; a clipped pixel was at least ``1 / gain`` before, and becomes the larger of that and the reference.
    Any other slice is returned bit for bit.

    Args:
        slices: images ``[B, H, W]`` on the [0, 1] scale.
        reference: images ``[B, H, W]`` the slices should resemble (for slice k: the mean of k-1 and k+1).
        min_gain: smallest gain taken for a saturation.
        min_extra_clipped: smallest excess of clipped head pixels over the reference's.
        clipped_at: a pixel at or above this value is clipped.

    Returns:
        ``[B, H, W]``, the dtype of ``slices``.
    """
    _check_batches(slices, reference)
    clipped = slices >= clipped_at
    fitted = (slices > 0.02) & ~clipped & (reference > 0.05)
    ratio = slices / reference.clamp(min=1e-6)
    gain = _masked_median(ratio, fitted).nan_to_num(1.0)
    # Pixels chosen as unclipped in the slice are those darker than 1 / gain there, where the neighbours are more
    # often brighter: the first gain is low (1.87 for 2.0 on an MNI slice). Chosen again by the reference, well
    # below the clip, the ratio is unbiased.
    below_clip = fitted & (reference < 0.8 / gain[:, None, None])
    refined = _masked_median(ratio, below_clip)
    enough = below_clip.flatten(1).sum(1) >= 20
    gain = torch.where(enough & ~refined.isnan(), refined, gain)
    head = reference > 0.05
    head_pixels = head.flatten(1).sum(1).clamp(min=1)
    extra_clipped = ((clipped & head).flatten(1).sum(1) - ((reference >= clipped_at) & head).flatten(1).sum(1))
    saturated = (gain >= min_gain) & (extra_clipped / head_pixels >= min_extra_clipped)
    gain = gain[:, None, None]
    repaired = torch.where(clipped, torch.maximum(reference, 1.0 / gain).clamp(max=1.0), slices / gain)
    return torch.where(saturated[:, None, None], repaired.to(slices.dtype), slices)
