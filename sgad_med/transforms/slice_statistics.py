"""Per-slice image statistics of a volume, each compared with the same statistic of the neighbouring slices.

Anatomy changes slowly along the slice axis; an artifact usually hits one slice. So a slice whose noise,
high-frequency energy, intensities, head area, edges or difference to its neighbours stand out from the slices
around it is suspect, whatever the scanner's overall look: the comparison is within the scan. Two users:

* the classical baseline of the detection evaluation (:class:`sgad_med.evaluation.detection.ClassicalBaseline`)
  scores slices by :func:`classical_slice_scores` alone;
* the detector (:class:`sgad_med.detector.SliceAnomalyDetector`) can take the same score over the texture
  statistics alone (:func:`texture_slice_scores`) as a third, calibrated evidence beside its classifier and
  novelty scores (see :class:`sgad_med.networks.SliceAnomalyNet`): the network sees one neighbour on each side,
  these statistics five.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "BASELINE_FEATURES",
    "TEXTURE_FEATURES",
    "slice_features",
    "robust_neighbour_z",
    "classical_slice_scores",
    "texture_slice_scores",
    "high_frequency_energy",
]

#: The per-slice statistics of :func:`slice_features`, in column order.
BASELINE_FEATURES: tuple[str, ...] = (
    "noise",
    "high_frequency",
    "head_mean",
    "p99",
    "background_mean",
    "head_area",
    "edge_energy",
    "neighbour_difference",
)

#: The statistics of fine texture, the detector's neighbour evidence (:func:`texture_slice_scores`). The others
#: (intensities, head area, background) are left to the network, which finds those kinds on its own; their z is
#: also where clean slices go degenerate (a statistic flat over the scan: on validation scans the 99.5th
#: percentile of clean max |z| is 264 over all statistics, ~4 over these three).
TEXTURE_FEATURES: tuple[str, ...] = ("noise", "high_frequency", "edge_energy")

# Immerkær (1996) noise kernel: the difference of two Laplacians, blind to linear ramps; its response to white
# noise of std sigma has std 6 sigma (the kernel's L2 norm).
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_STD = 1.4826


def slice_features(volume01: np.ndarray, head_threshold: float = 0.05) -> np.ndarray:
    """Per-slice image statistics ``[D, F]`` (columns :data:`BASELINE_FEATURES`) of a normalized volume.

    The head of each slice is estimated from the slice itself (intensity above ``head_threshold``, opened, holes
    filled): the baseline never sees the truth. Per axial slice:

    - ``noise``: robust noise std, the MAD of the Immerkær noise-kernel response inside the head / 6 (Rician
      noise bursts, zipper, spikes);
    - ``high_frequency``: fraction of the spectral energy (mean removed) above 0.25 cycles/pixel (checkerboard,
      Gibbs ringing, herringbone, stripes);
    - ``head_mean``, ``p99``: mean and 99th percentile of the head (signal loss, bias jumps, intensity drift,
      saturation, contrast inversion);
    - ``background_mean``: mean outside the dilated head (ghosts, motion smear, border bands);
    - ``head_area``: head fraction of the slice (dropout, shifts, signal loss);
    - ``edge_energy``: mean Sobel gradient magnitude (blur, ringing, hallucinated or erased structure);
    - ``neighbour_difference``: mean ``|slice_k - (slice_{k-1} + slice_{k+1}) / 2|`` (anything a slice has and
      its neighbours lack: shifts, blobs, through-plane jumps; one neighbour at the ends).

    Args:
        volume01: ``[H, W, D]`` intensities in [0, 1], slice axis last.
        head_threshold: intensity above which a voxel counts as head.

    Returns:
        float64 ``[D, F]``.
    """
    v = np.asarray(volume01, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"classical slice scores need an [H, W, D] volume, got shape {v.shape}")
    h, w, depth = v.shape
    features = np.zeros((depth, len(BASELINE_FEATURES)))

    # spectra of all slices at once: energy above 0.25 cycles/pixel over all energy but the mean's
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    high = np.hypot(fy, fx) > 0.25
    power = np.abs(np.fft.fft2(v - v.mean(axis=(0, 1), keepdims=True), axes=(0, 1))) ** 2
    total = power.sum(axis=(0, 1))
    hf_fraction = np.where(total > 0, power[high].sum(axis=0) / np.maximum(total, 1e-12), 0.0)

    # neighbours' mean, replicated at the volume's ends
    padded = np.concatenate([v[..., :1], v, v[..., -1:]], axis=-1) if depth > 1 else np.concatenate([v, v, v], -1)
    neighbours = 0.5 * (padded[..., :-2] + padded[..., 2:])
    if depth > 1:
        neighbours[..., 0], neighbours[..., -1] = v[..., 1], v[..., -2]
    neighbour_difference = np.abs(v - neighbours).mean(axis=(0, 1))

    structure = np.ones((3, 3), dtype=bool)
    for k in range(depth):
        s = v[..., k]
        head = ndimage.binary_fill_holes(ndimage.binary_opening(s > head_threshold, structure=structure))
        outside = ~ndimage.binary_dilation(head, structure=structure, iterations=2)
        response = ndimage.convolve(s, _NOISE_KERNEL, mode="reflect")
        inner = response[head] if head.sum() >= 16 else response.reshape(-1)
        noise = _MAD_TO_STD * np.median(np.abs(inner - np.median(inner))) / 6.0
        gradient = np.hypot(ndimage.sobel(s, axis=0), ndimage.sobel(s, axis=1))
        head_values = s[head] if head.any() else np.zeros(1)
        features[k] = (
            noise,
            hf_fraction[k],
            head_values.mean(),
            np.percentile(s, 99.0),
            s[outside].mean() if outside.any() else 0.0,
            head.mean(),
            gradient.mean(),
            neighbour_difference[k],
        )
    return features


def robust_neighbour_z(values: np.ndarray, window: int = 5, min_scale: float = 1e-6) -> np.ndarray:
    """Each value z-scored robustly against its neighbours along the first axis: ``(x_k - median) / scale``.

    The median and MAD are taken over the ``window`` values on each side of ``k`` (``k`` itself excluded, so a
    damaged slice does not pull its own reference; fewer at the ends). ``scale`` is ``1.4826 * MAD``, floored at
    half the median local MAD of the whole column (a locally flat feature would otherwise turn tiny differences
    into huge z) and at ``min_scale``. Where a statistic is flat over the whole scan this still leaves huge z:
    in a calibration scan with a bright background (anatomy 953) the head mask fills whole slices, the
    background mean is 0 on most of them, and a few clean slices reach z > 100,000.

    Args:
        values: ``[D]`` or ``[D, F]`` per-slice values.
        window: neighbours on each side.
        min_scale: smallest scale.

    Returns:
        float64 z-scores of ``values``' shape.
    """
    x = np.asarray(values, dtype=np.float64)
    squeeze = x.ndim == 1
    x = x[:, None] if squeeze else x
    depth = x.shape[0]
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    medians, mads = np.zeros_like(x), np.zeros_like(x)
    for k in range(depth):
        lo, hi = max(0, k - window), min(depth, k + window + 1)
        others = np.r_[np.arange(lo, k), np.arange(k + 1, hi)]
        if others.size == 0:  # a single slice: nothing to compare with
            medians[k] = x[k]
            continue
        reference = x[others]
        medians[k] = np.median(reference, axis=0)
        mads[k] = np.median(np.abs(reference - medians[k]), axis=0)
    floor = 0.5 * np.median(mads, axis=0, keepdims=True)
    scale = _MAD_TO_STD * np.maximum(np.maximum(mads, floor), min_scale / _MAD_TO_STD)
    z = (x - medians) / scale
    return z[:, 0] if squeeze else z


def classical_slice_scores(volume01: np.ndarray, window: int = 5, head_threshold: float = 0.05,
                           features: Sequence[str] = BASELINE_FEATURES) -> np.ndarray:
    """The classical baseline's anomaly score of every axial slice: the largest robust ``|z|`` of its statistics.

    Each statistic of :func:`slice_features` (noise, high-frequency energy fraction, head mean and 99th
    percentile, background mean, head area, edge energy, difference to the neighbouring slices) is z-scored
    against the same statistic of the ``window`` slices on each side (median and MAD, see
    :func:`robust_neighbour_z`): anatomy changes slowly along the slice axis, an artifact hits one slice. The
    score is the largest ``|z|`` over the statistics, so any one of them can flag a slice. It is not a
    probability; its operating threshold comes from clean validation volumes (:class:`ClassicalBaseline`).

    Args:
        volume01: ``[H, W, D]`` normalized intensities in [0, 1], slice axis last.
        window: neighbouring slices on each side that each slice is compared with.
        head_threshold: intensity above which a voxel counts as head (see :func:`slice_features`).
        features: the statistics whose largest ``|z|`` is the score (names from :data:`BASELINE_FEATURES`).

    Returns:
        float64 ``[D]`` scores >= 0, higher = more anomalous.
    """
    unknown = sorted(set(features) - set(BASELINE_FEATURES))
    if unknown or not features:
        raise ValueError(f"features must be a non-empty subset of {BASELINE_FEATURES}, got {tuple(features)}")
    columns = [BASELINE_FEATURES.index(name) for name in features]
    z = robust_neighbour_z(slice_features(volume01, head_threshold)[:, columns], window=window)
    return np.abs(z).max(axis=1)


def texture_slice_scores(volume01: np.ndarray) -> np.ndarray:
    """The detector's neighbour score: :func:`classical_slice_scores` over :data:`TEXTURE_FEATURES` only.

    Args:
        volume01: ``[H, W, D]`` normalized intensities in [0, 1], slice axis last.

    Returns:
        float64 ``[D]`` scores >= 0.
    """
    return classical_slice_scores(volume01, features=TEXTURE_FEATURES)


def high_frequency_energy(volume01: np.ndarray) -> np.ndarray:
    """The high-frequency energy of every axial slice: the mean magnitude of its Laplacian, ``[D]`` float64.

    Args:
        volume01: ``[H, W, D]`` normalized intensities in [0, 1], slice axis last.
    """
    v = np.asarray(volume01, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"high_frequency_energy needs a volume [H, W, D], got shape {v.shape}")
    return np.array([np.abs(ndimage.laplace(v[..., k], mode="reflect")).mean() for k in range(v.shape[-1])])
