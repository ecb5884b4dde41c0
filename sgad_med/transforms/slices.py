"""2.5D slice stacks: each axial slice k with its neighbours k-c … k+c as channels, and back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def stack_indices(depth: int, slices: np.ndarray | list[int], context: int) -> np.ndarray:
    """Indices ``[len(slices), 2c+1]`` of each slice's neighbours, repeating the edge slices at the ends."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(slices)[:, None] + offsets[None, :], 0, depth - 1)


def slice_stacks(volume: torch.Tensor | np.ndarray, context: int = 1, slices=None) -> torch.Tensor:
    """Cut a volume ``[H, W, D]`` (or ``[1, H, W, D]``) into 2.5D stacks ``[N, 2c+1, H, W]``.

    Args:
        volume: the volume, slice axis last.
        context: neighbours on each side; the first and last slices repeat at the volume's ends.
        slices: which slices to cut (all by default).

    Returns:
        A float32 tensor, one stack per requested slice.
    """
    volume = torch.as_tensor(np.asarray(volume) if not isinstance(volume, torch.Tensor) else volume)
    if volume.ndim == 4:
        volume = volume[0]
    depth = volume.shape[-1]
    slices = np.arange(depth) if slices is None else np.asarray(slices)
    index = torch.as_tensor(stack_indices(depth, slices, context))
    return volume.to(torch.float32)[..., index].permute(2, 3, 0, 1).contiguous()


def pad_to_multiple(batch: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two axes of ``[N, C, H, W]`` to multiples of ``multiple`` (centred); returns the pads.

    Zero is background on the normalized [0, 1] scale, so padding adds no structure a network could react to.
    """
    height, width = batch.shape[-2:]
    extra_h, extra_w = (-height) % multiple, (-width) % multiple
    pads = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
    return (F.pad(batch, pads) if any(pads) else batch), pads


def unpad(batch: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pads
    height, width = batch.shape[-2:]
    return batch[..., top : height - bottom, left : width - right]


def foreground_slices(volume01: torch.Tensor | np.ndarray, threshold: float = 0.05,
                      min_fraction: float = 0.1) -> np.ndarray:
    """Boolean ``[D]``: the slices of a normalized volume ``[H, W, D]`` in which the head or body fills at least
    ``min_fraction`` of the slice (voxels above ``threshold`` on the [0, 1] scale).

    A real scan has no mask; this is what "the scan's slices with anatomy in them" means without one.
    """
    volume = volume01.detach().cpu().numpy() if isinstance(volume01, torch.Tensor) else np.asarray(volume01)
    return (volume > threshold).mean(axis=(0, 1)) >= min_fraction
