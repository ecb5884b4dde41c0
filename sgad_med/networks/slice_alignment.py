"""In-plane re-registration of a slice to its neighbours by phase correlation (integer pixels).

A slice displaced in-plane (patient motion between the acquisitions of a 2D multi-slice scan) still holds its own
anatomy, only in the wrong place; moving it back recovers it far better than rebuilding it from the neighbours.
The restorer (:class:`~sgad_med.networks.SliceRestorationNet` with ``align=True``) gets the re-registered slice as
an extra channel and keeps it where it fits.
"""

from __future__ import annotations

import torch


def phase_correlation_shift(
    moving: torch.Tensor, reference: torch.Tensor, max_shift: int = 8, min_peak_ratio: float = 2.0
) -> torch.Tensor:
    """The integer in-plane translation that moves ``moving`` onto ``reference``, per image of a batch.

    The peak of the phase-correlation surface (the inverse FFT of the normalized cross-power spectrum), searched
    within ``max_shift`` pixels. A peak is trusted only if it is at least ``min_peak_ratio`` times the correlation
    at zero shift: neighbouring slices differ a little in anatomy, which on unshifted slices gives off-centre
    peaks barely above the zero-shift one (at most 1.2 times it on our validation slices; a real shift gives 4 or
    more), and an untrusted peak means no shift.

    Args:
        moving: images ``[B, H, W]``.
        reference: images ``[B, H, W]`` to register to (for a slice: the mean of its two nearest neighbours).
        max_shift: largest translation searched along each axis, in pixels.
        min_peak_ratio: how far the peak must stand above the zero-shift correlation to be taken.

    Returns:
        Long tensor ``[B, 2]`` of ``(dy, dx)``: ``moving`` translated by it (see :func:`translate`) matches
        ``reference``.
    """
    if moving.shape != reference.shape or moving.ndim != 3:
        if torch.jit.is_scripting():  # TorchScript cannot format shapes as tuples
            raise ValueError("need two [B, H, W] batches of the same shape")
        raise ValueError(f"need two [B, H, W] batches of the same shape, got {tuple(moving.shape)} and "
                         f"{tuple(reference.shape)}")
    cross = torch.fft.fft2(reference.float()) * torch.conj(torch.fft.fft2(moving.float()))
    surface = torch.fft.ifft2(cross / (cross.abs() + 1e-12)).real
    h, w = surface.shape[-2:]
    # FFT index -> signed offset (0, 1, ..., -1)
    offset_y = (torch.arange(h, device=surface.device) + h // 2) % h - h // 2
    offset_x = (torch.arange(w, device=surface.device) + w // 2) % w - w // 2
    window = (offset_y.abs()[:, None] <= max_shift) & (offset_x.abs()[None, :] <= max_shift)
    peak, flat = surface.masked_fill(~window, float("-inf")).flatten(1).max(dim=1)
    shifts = torch.stack([offset_y[flat // w], offset_x[flat % w]], dim=1)
    trusted = peak > min_peak_ratio * surface[:, 0, 0].clamp(min=0.0)
    return torch.where(trusted[:, None], shifts, torch.zeros_like(shifts))


def translate(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``images`` ``[B, H, W]`` translated by whole pixels ``shifts`` ``[B, 2]`` (dy, dx), zero-filled (no
    wrap-around); a zero shift returns the image bit for bit."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2], images.shape[-1]
    rows: list[list[int]] = shifts.tolist()  # annotated for TorchScript
    for b, shift in enumerate(rows):
        dy, dx = shift[0], shift[1]
        out[b, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
            b, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return out


def align_to_reference(
    moving: torch.Tensor, reference: torch.Tensor, max_shift: int = 8, min_peak_ratio: float = 2.0
) -> torch.Tensor:
    """``moving`` ``[B, H, W]`` translated onto ``reference`` (:func:`phase_correlation_shift`, :func:`translate`)."""
    with torch.no_grad():
        return translate(moving, phase_correlation_shift(moving, reference, max_shift, min_peak_ratio))
