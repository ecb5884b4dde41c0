"""Image-quality metrics on 2D slices or 3D volumes in [0, 1], shared by every evaluation.

:func:`ssim` and :func:`psnr` (data range 1) and :func:`mae`, each over the whole image or inside a mask, and
:func:`wasserstein_histogram` between two intensity distributions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance
from skimage.metrics import structural_similarity

__all__ = ["PSNR_CAP_DB", "as_float_pair", "checked_mask", "ssim_map", "ssim", "psnr", "mae", "wasserstein_histogram"]

#: PSNR (dB) reported for identical images (infinite PSNR), so that results stay finite and strict-JSON-clean.
PSNR_CAP_DB = 100.0

# SSIM as Wang et al. 2004: gaussian window of sigma 1.5 (11 x 11 once truncated at 3.5 sigma), population
# covariances, data range 1 (every image here is in [0, 1]).
_SSIM_KWARGS: dict[str, Any] = {
    "data_range": 1.0,
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
}
_SSIM_MIN_SIDE = 11  # skimage's window size for sigma 1.5, truncate 3.5


def as_float_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64, checked to have the same shape."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    return x, y


def checked_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A boolean mask of ``shape`` that selects something (``None`` passes through)."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {shape}")
    if not mask.any():
        raise ValueError("the mask selects no voxel: a metric over an empty region is undefined")
    return mask


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Local SSIM of two 2D images in [0, 1] (Wang et al. 2004: gaussian window, sigma 1.5, data range 1).

    Args:
        x: 2D image, at least 11 x 11.
        y: 2D image of the same shape.

    Returns:
        float64 SSIM map of the same shape (1 where the images agree locally).
    """
    x, y = as_float_pair(x, y)
    if x.ndim != 2:
        raise ValueError(f"ssim_map takes 2D images, got shape {x.shape}; use ssim() for volumes")
    if min(x.shape) < _SSIM_MIN_SIDE:
        raise ValueError(
            f"SSIM with a sigma-1.5 gaussian window needs images of at least "
            f"{_SSIM_MIN_SIDE} x {_SSIM_MIN_SIDE}, got {x.shape}"
        )
    _, full = structural_similarity(x, y, full=True, **_SSIM_KWARGS)
    return full


def ssim(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Structural similarity, over the whole image or averaged over a mask.

    A 2D image gets one SSIM map. A 3D volume ``[H, W, D]`` gets one 2D map per axial slice (last axis), stacked:
    the networks work on axial slices, and volumes often have too few slices for a 3D window. The score is the
    mean of the map over all voxels, or over the mask's voxels (each voxel weighs the same, so slices with more
    head weigh more; :func:`volume_metrics` averages per slice instead).

    Args:
        x: image in [0, 1], 2D or 3D.
        y: the image compared with (the truth), same shape.
        mask: boolean mask of the same shape, or ``None`` for the whole image.

    Returns:
        SSIM in [-1, 1]; 1.0 for identical images.
    """
    x, y = as_float_pair(x, y)
    mask = checked_mask(mask, x.shape)
    if x.ndim == 2:
        full = ssim_map(x, y)
    elif x.ndim == 3:
        full = np.stack([ssim_map(x[..., k], y[..., k]) for k in range(x.shape[-1])], axis=-1)
    else:
        raise ValueError(f"ssim takes 2D slices or 3D volumes, got shape {x.shape}")
    return float(full[mask].mean() if mask is not None else full.mean())


def psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio for data range 1: ``10 log10(1 / MSE)``, over the whole image or a mask.

    Args:
        x: image in [0, 1], any shape.
        y: the image compared with, same shape.
        mask: boolean mask of the same shape, or ``None``.

    Returns:
        PSNR in dB; :data:`PSNR_CAP_DB` (100 dB) when the images are identical (MSE <= 1e-10), instead of infinity.
    """
    x, y = as_float_pair(x, y)
    mask = checked_mask(mask, x.shape)
    diff = (x - y)[mask] if mask is not None else (x - y)
    mse = float(np.mean(diff**2))
    return PSNR_CAP_DB if mse <= 1e-10 else min(PSNR_CAP_DB, float(10.0 * np.log10(1.0 / mse)))


def mae(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, over the whole image or a mask.

    Args:
        x: image, any shape.
        y: the image compared with, same shape.
        mask: boolean mask of the same shape, or ``None``.

    Returns:
        The mean of ``|x - y|`` (0.0 for identical images).
    """
    x, y = as_float_pair(x, y)
    mask = checked_mask(mask, x.shape)
    diff = np.abs(x - y)
    return float(diff[mask].mean() if mask is not None else diff.mean())


def wasserstein_histogram(
    x: np.ndarray, reference: np.ndarray, mask_x: np.ndarray | None = None, mask_ref: np.ndarray | None = None
) -> float:
    """1D Wasserstein (earth mover's) distance between two intensity distributions.

    Spatially blind: it says how far the histogram of ``x`` is from the reference's (in intensity units: a
    uniform shift by ``c`` gives ``c``), not whether the right voxels got the right values. The two images need not
    have the same shape or anatomy.

    Args:
        x: image (any shape).
        reference: the reference image (any shape).
        mask_x: voxels of ``x`` to take (``None``: all).
        mask_ref: voxels of ``reference`` to take (``None``: all).

    Returns:
        ``scipy.stats.wasserstein_distance`` of the two sets of intensities.
    """
    x, reference = np.asarray(x), np.asarray(reference)
    a = x[np.asarray(mask_x, dtype=bool)] if mask_x is not None else x.ravel()
    b = reference[np.asarray(mask_ref, dtype=bool)] if mask_ref is not None else reference.ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein_histogram needs at least one voxel on each side")
    return float(wasserstein_distance(a.astype(np.float64), b.astype(np.float64)))
