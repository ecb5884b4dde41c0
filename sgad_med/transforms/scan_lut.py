"""A classical per-scan intensity mapping: the pipeline's safe fallback for slices the harmonizer damaged.

When the quality check says the harmonizer damaged a slice, the pipeline must not hand it to the restorer (its
harmonized neighbours may be damaged too) and must not keep it. It maps the *input* slice instead, through one
lookup table per scan fitted from the input to the harmonized intensities on the slices the check trusts. A
lookup table acts on each voxel's own value, so the fallback keeps exactly the input's anatomy (every edge of
it, and none other), in the scan's harmonized style as far as one table can carry it.

The same table tells where the harmonizer did something no intensity mapping does: :func:`slice_structure_agreement`
compares, slice by slice, the edges of the harmonized slice with those of the input mapped through the table. A
contrast inversion the whole scan shares (T2 to T1) is in the table and agrees; a structure drawn or erased in one
place is not.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MIN_FIT_VOXELS", "bin_mean_table", "fit_intensity_lut", "apply_intensity_lut", "slice_structure_agreement"]

#: Fewest trusted foreground voxels a table is fitted on; with fewer, :func:`fit_intensity_lut` gives ``None``.
MIN_FIT_VOXELS = 2000


def fit_intensity_lut(source01: torch.Tensor | np.ndarray, target01: torch.Tensor | np.ndarray,
                      trusted: np.ndarray, bins: int = 64, foreground: float = 0.05) -> np.ndarray | None:
    """The least-squares lookup table (bin means, empty bins interpolated) from ``source01`` to ``target01``.

    Args:
        source01: the normalized input volume ``[H, W, D]`` in [0, 1].
        target01: the harmonized volume, same shape.
        trusted: boolean ``[D]``: the slices to fit on.
        bins: intensity bins over [0, 1].
        foreground: only voxels of the input above this take part (the background stays background).

    Returns:
        ``[bins]`` table values at the bin centres, or ``None`` when fewer than :data:`MIN_FIT_VOXELS` voxels
        qualify (then there is nothing to trust, and the caller keeps the input itself).
    """
    source = np.asarray(source01, dtype=np.float64)[..., np.asarray(trusted, dtype=bool)]
    target = np.asarray(target01, dtype=np.float64)[..., np.asarray(trusted, dtype=bool)]
    use = source > foreground
    if use.sum() < MIN_FIT_VOXELS:
        return None
    return bin_mean_table(source[use], target[use], bins)


def bin_mean_table(source: np.ndarray, target: np.ndarray, bins: int) -> np.ndarray:
    """The least-squares piecewise-constant table from ``source`` to ``target`` values (both 1D, source in [0, 1]):
    the mean target in each of ``bins`` equal bins, at the bin centres; empty bins interpolated from the filled
    ones (the identity when none is filled)."""
    index = np.clip((source * bins).astype(np.int64), 0, bins - 1)
    sums = np.bincount(index, weights=target, minlength=bins)
    counts = np.bincount(index, minlength=bins)
    centres = (np.arange(bins) + 0.5) / bins
    filled = counts > 0
    return np.interp(centres, centres[filled], sums[filled] / counts[filled]) if filled.any() else centres


def apply_intensity_lut(source01: torch.Tensor | np.ndarray, table: np.ndarray | None,
                        foreground: float = 0.05) -> torch.Tensor:
    """Map a normalized volume (or slices) through a table of :func:`fit_intensity_lut`; ``None`` keeps it as is.

    Voxels at or below ``foreground`` (the background) keep their value, so the background is never lifted.
    """
    source = torch.as_tensor(source01, dtype=torch.float32)
    if table is None:
        return source.clone()
    bins = len(table)
    centres = (np.arange(bins) + 0.5) / bins
    values = source.numpy()
    mapped = np.interp(values, centres, table).astype(np.float32)
    return torch.from_numpy(np.where(values > foreground, np.clip(mapped, 0.0, 1.0), values).astype(np.float32))


def slice_structure_agreement(volume01: torch.Tensor | np.ndarray, reference01: torch.Tensor | np.ndarray,
                              foreground: float = 0.05, min_fraction: float = 0.05) -> np.ndarray:
    """Per slice, the correlation of the Sobel gradient magnitudes of two volumes ``[H, W, D]`` where the reference
    has tissue (dilated by 2 pixels); NaN for slices with less than ``min_fraction`` tissue."""
    from sgad_med.engines.losses import gradient_magnitude

    a = torch.as_tensor(volume01, dtype=torch.float32).permute(2, 0, 1)[:, None]
    b = torch.as_tensor(reference01, dtype=torch.float32).permute(2, 0, 1)[:, None]
    tissue = (b > foreground).float()
    region = torch.nn.functional.max_pool2d(tissue, 5, stride=1, padding=2) > 0
    ga, gb = gradient_magnitude(a), gradient_magnitude(b)
    out = np.full(a.shape[0], np.nan, dtype=np.float64)
    for k in range(a.shape[0]):
        if float(tissue[k].mean()) < min_fraction:
            continue
        x, y = ga[k][region[k]].double(), gb[k][region[k]].double()
        x, y = x - x.mean(), y - y.mean()
        denominator = float(torch.sqrt((x * x).sum() * (y * y).sum()))
        out[k] = float((x * y).sum()) / denominator if denominator > 0 else 1.0
    return out
