"""The oracle of edge-keeping harmonization: a lookup table per tissue plus a bias field, fitted on the truth.

An edge-keeping harmonizer (such as :class:`~sgad_med.networks.EdgePreservingGenerator`) can only map each
pixel's intensity, smoothly varying in space, after removing a smooth bias and some noise. The best any such map
could do on a case is bounded by the same map fitted with everything the method never gets: the true tissue
labels and the true reference rendering. The oracle

1. fits the bias field by least squares in the log domain: ``log source ≈ log mean[label] + Σ c_j cos_j`` over
   the head voxels, with low-order cosines over the field of view (the family the synthetic styles draw from);
2. optionally denoises the bias-corrected source with the self-guided filter, at the strength that suits the
   case best (chosen on its truth);
3. fits, per tissue label, a piecewise-linear lookup table from the corrected source to the truth (the mean of
   the truth in each intensity bin: the least-squares table), and applies it.

So the evaluation can say whether a shortfall is the design's (the oracle falls short too) or the training's.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_basis", "fit_log_bias", "tissue_lut", "tissue_lut_oracle"]


def cosine_basis(shape: tuple[int, ...], order: int = 2) -> np.ndarray:
    """Separable cosines up to ``order`` per axis over a volume, the constant left out: ``[n_terms, *shape]``."""
    axes = [np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, np.arange(order + 1))) for n in shape]
    terms = []
    for i in range(order + 1):
        for j in range(order + 1):
            for k in range(order + 1):
                if i == j == k == 0:
                    continue
                terms.append(np.einsum("a,b,c->abc", axes[0][:, i], axes[1][:, j], axes[2][:, k]))
    return np.asarray(terms, dtype=np.float32)


def fit_log_bias(source: np.ndarray, labels: np.ndarray, mask: np.ndarray, order: int = 2,
                 stride: int = 3) -> np.ndarray:
    """The smooth multiplicative bias of ``source``, by least squares on the head voxels with known labels.

    Args:
        source: volume ``[H, W, D]``, positive where tissue is.
        labels: tissue label per voxel (any integers), same shape.
        mask: the voxels to fit on (the head), same shape.
        order: highest cosine order per axis.
        stride: fit on every ``stride``-th voxel along each axis (the field is smooth; this keeps it fast).

    Returns:
        The field ``[H, W, D]`` (multiplicative, 1 where there is no bias).
    """
    basis = cosine_basis(source.shape, order)
    if mask.sum() < 1000 * stride**3:  # a small volume: fit on every voxel
        stride = 1
    step = (slice(None, None, stride),) * 3
    use = mask[step] & (source[step] > 1e-3)
    if use.sum() < basis.shape[0] * 10:
        return np.ones(source.shape, dtype=np.float32)
    tissue_ids = np.unique(labels[step][use])
    one_hot = (labels[step][use][:, None] == tissue_ids[None]).astype(np.float64)
    design = np.concatenate([one_hot, basis[(slice(None), *step)][:, use].T.astype(np.float64)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, np.log(source[step][use]), rcond=None)
    field = np.tensordot(coefficients[len(tissue_ids):], basis, axes=1)
    return np.exp(field).astype(np.float32)


def tissue_lut(corrected: np.ndarray, target: np.ndarray, labels: np.ndarray, mask: np.ndarray,
               bins: int = 64) -> np.ndarray:
    """Per tissue label, the least-squares piecewise-linear table from ``corrected`` to ``target``, applied.

    Each label's table holds the mean of ``target`` in each of ``bins`` intensity bins of ``corrected`` (fitted
    inside ``mask``, plus the background label everywhere); empty bins are interpolated from the filled ones.
    """
    from sgad_med.transforms.scan_lut import bin_mean_table

    centres = (np.arange(bins) + 0.5) / bins
    out = np.empty(corrected.shape, dtype=np.float32)
    for label in np.unique(labels):
        voxels = labels == label
        fit = voxels & mask if (voxels & mask).sum() > bins else voxels
        table = bin_mean_table(corrected[fit], target[fit], bins)
        out[voxels] = np.interp(corrected[voxels], centres, table)
    return out


def tissue_lut_oracle(source: np.ndarray, target: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                      denoise: bool = False, eps_choices: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                      radius: int = 2) -> np.ndarray:
    """The oracle's output for one case (see the module docstring).

    Args:
        source: normalized source volume ``[H, W, D]`` in [0, 1].
        target: its reference-style truth, same shape.
        labels: the true tissue labels, same shape.
        mask: the head mask, same shape.
        denoise: apply the self-guided filter (per slice) before the tables, at the case's best strength.
        eps_choices: the guided filter strengths tried.
        radius: the guided filter's radius in pixels.

    Returns:
        float32 ``[H, W, D]`` in [0, 1].
    """
    source = np.asarray(source, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    corrected = np.clip(source / fit_log_bias(source, labels, mask), 0.0, 1.0)
    candidates = [corrected]
    if denoise:
        import torch

        from sgad_med.networks.edge_preserving import guided_filter

        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(corrected, -1, 0)[:, None]))
        for eps in eps_choices:
            filtered = guided_filter(slices, slices, radius, eps)[:, 0].clamp(0, 1).numpy()
            candidates.append(np.ascontiguousarray(np.moveaxis(filtered, 0, -1)))
    outputs = [tissue_lut(c, target, labels, mask) for c in candidates]
    errors = [float(np.abs(o - target)[mask].mean()) for o in outputs]
    return np.clip(outputs[int(np.argmin(errors))], 0.0, 1.0)
