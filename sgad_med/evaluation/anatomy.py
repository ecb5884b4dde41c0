"""Anatomy-preservation metrics of harmonization: did the output keep the edges it was given, and add none?

SSIM and PSNR against a reference rendering reward the right intensities; they hardly notice a structure that
appeared or vanished. These metrics look at edges only, so they are contrast-invariant (a T2-like input and its
T1-like output share their edges) and can be computed against the true anatomy or, on real scans with no truth,
against the input:

- :func:`gradient_correlation`: Pearson correlation of the Sobel gradient magnitudes of two slices, per slice;
- :func:`hallucination_rate`: the fraction of head pixels that are edges in the output where the anatomy has
  no edge nearby (noise counts: it is structure the anatomy lacks);
- :func:`slice_flicker`: how much the output's slice-to-slice differences depart from the truth's.

All work on volumes ``[H, W, D]`` in [0, 1] with slices along the last axis, and on slices with at least
``min_foreground`` head in them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "EDGE_THRESHOLD",
    "gradient_magnitude",
    "gradient_correlation",
    "hallucination_rate",
    "slice_flicker",
    "anatomy_metrics",
]

#: Sobel magnitude (kernel / 8, so a unit step gives 0.5) above which a pixel is an edge: a step of 0.1 in [0, 1],
#: half the smallest tissue contrast of the reference style (grey/white matter, 0.21).
EDGE_THRESHOLD = 0.05


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of a 2D image (kernel divided by 8), replicate borders."""
    image = np.asarray(image, dtype=np.float64)
    gx = ndimage.sobel(image, axis=0, mode="nearest") / 8.0
    gy = ndimage.sobel(image, axis=1, mode="nearest") / 8.0
    return np.hypot(gx, gy)


def _scored_slices(mask: np.ndarray, min_foreground: float) -> list[int]:
    mask = np.asarray(mask, dtype=bool)
    return [k for k in range(mask.shape[-1]) if mask[..., k].mean() >= min_foreground and mask[..., k].any()]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def gradient_correlation(output: np.ndarray, anatomy: np.ndarray, mask: np.ndarray,
                         min_foreground: float = 0.05) -> np.ndarray:
    """Per scored slice, the correlation of the gradient magnitudes of ``output`` and ``anatomy`` in the mask.

    Args:
        output: harmonized volume ``[H, W, D]``.
        anatomy: the true anatomy (e.g. the reference rendering) or, with no truth, the input; same shape.
        mask: where to compare (head mask, dilated so that the head's outline counts), same shape.
        min_foreground: smallest mask fraction of a slice that is scored.

    Returns:
        float64 ``[n_scored]``; empty when no slice qualifies.
    """
    values = []
    for k in _scored_slices(mask, min_foreground):
        region = ndimage.binary_dilation(mask[..., k], iterations=2)
        values.append(_pearson(gradient_magnitude(output[..., k])[region],
                               gradient_magnitude(anatomy[..., k])[region]))
    return np.asarray(values, dtype=np.float64)


def hallucination_rate(output: np.ndarray, anatomy: np.ndarray, mask: np.ndarray, tolerance: int = 2,
                       threshold: float = EDGE_THRESHOLD, min_foreground: float = 0.05) -> float:
    """Fraction of the head pixels that are output edges with no anatomy edge within ``tolerance`` pixels.

    An anatomy edge is a pixel whose gradient magnitude reaches half the edge threshold (generous, so that a
    blurred or partial-volume boundary still counts as anatomy); an output edge one that reaches the threshold.

    Args:
        output: harmonized volume ``[H, W, D]`` in [0, 1] (reference-style scale).
        anatomy: the true anatomy in the reference style, same shape.
        mask: head mask, same shape.
        tolerance: pixels an output edge may lie from an anatomy edge.
        threshold: gradient magnitude of an edge (see :data:`EDGE_THRESHOLD`).
        min_foreground: smallest head fraction of a slice that is scored.

    Returns:
        The fraction over all scored slices together (0: no invented edge).
    """
    invented = total = 0
    for k in _scored_slices(mask, min_foreground):
        head = ndimage.binary_dilation(mask[..., k], iterations=2)
        near_anatomy = ndimage.binary_dilation(gradient_magnitude(anatomy[..., k]) >= threshold / 2,
                                               iterations=tolerance)
        edges = gradient_magnitude(output[..., k]) >= threshold
        invented += int((edges & ~near_anatomy & head).sum())
        total += int(head.sum())
    return invented / total if total else 0.0


def slice_flicker(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference between the output's and the truth's slice-to-slice changes, in the head.

    A slice-by-slice method that maps neighbouring slices inconsistently flickers along the slice axis; a
    consistent one changes from slice to slice only as much as the anatomy does (0).

    Args:
        output: harmonized volume ``[H, W, D]``.
        truth: the reference-style truth, same shape.
        mask: head mask, same shape.

    Returns:
        The mean over voxels whose slice and next slice are both in the head (0 when there are none).
    """
    output, truth, mask = (np.asarray(v) for v in (output, truth, mask))
    if output.shape[-1] < 2:
        return 0.0
    both = mask[..., 1:] & mask[..., :-1]
    if not both.any():
        return 0.0
    change = np.diff(output.astype(np.float64), axis=-1) - np.diff(truth.astype(np.float64), axis=-1)
    return float(np.abs(change[both]).mean())


def anatomy_metrics(output: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                    min_foreground: float = 0.05) -> dict[str, float]:
    """The three anatomy metrics of one harmonized volume against its reference-style truth.

    Returns:
        ``grad_corr`` (mean over slices), ``grad_corr_min`` (worst slice), ``hallucination`` and ``flicker``.
    """
    correlation = gradient_correlation(output, truth, mask, min_foreground)
    return {
        "grad_corr": float(correlation.mean()) if correlation.size else float("nan"),
        "grad_corr_min": float(correlation.min()) if correlation.size else float("nan"),
        "hallucination": hallucination_rate(output, truth, mask, min_foreground=min_foreground),
        "flicker": slice_flicker(output, truth, mask),
    }
