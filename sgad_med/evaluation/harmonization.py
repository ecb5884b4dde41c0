"""Classical harmonization baselines and the held-out evaluation of harmonization.

Three parts:

* **metrics** on 2D slices or 3D volumes in [0, 1]: :func:`ssim`, :func:`psnr` (data range 1), :func:`mae`, each
  over the whole image or inside a mask, :func:`wasserstein_histogram` between intensity distributions, and
  :func:`head_mask`, the voxels the masked metrics are computed on;
* **classical baselines**, monotonic intensity maps a GAN has to beat: :func:`identity`,
  :func:`histogram_matching` and Nyúl–Udupa piecewise-linear standardization (:class:`NyulStandardizer`);
* **the evaluation**: :func:`heldout_cases` (held-out anatomies in held-out styles, with reference-style truth),
  :func:`evaluate_harmonization` (every method on every case, mean ± std) and :func:`format_table`.

Every figure a bundle's docs quote comes from :class:`HarmonizationEvaluation` (bundle ``evaluate.json``,
``sgad-med evaluate harmonizer``), which scores the GAN and the classical baselines in one run on the same
held-out cases: anatomies warped with seeds never used in training (``HELDOUT_ANATOMY_SEEDS``) rendered in
held-out styles (``split="heldout"``: GM/WM contrast below anything trained on). The baselines are fitted on
reference-style volumes of *training* anatomies only (:func:`reference_volumes`), never on the evaluation set.

Example::

    from sgad_med.evaluation import (NyulStandardizer, evaluate_harmonization, format_table, head_mask,
                                     heldout_cases, histogram_matching, identity, reference_volumes)

    cases = heldout_cases(n_anatomies=8, styles_per_anatomy=2)
    refs = reference_volumes(range(8))                       # training anatomies, reference style
    nyul = NyulStandardizer().fit(refs, [head_mask(r) for r in refs])
    results = evaluate_harmonization({"none": identity, "nyul": nyul.transform}, cases)
    print(format_table(results))
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance
from skimage.exposure import match_histograms

from sgad_med.evaluation.anatomy import anatomy_metrics, gradient_correlation
from sgad_med.evaluation.harmonization_stress import cross_style_ssim
from sgad_med.evaluation.heldout import check_protocol_normalization, heldout_pairs, normalize_mr, synthetic_pairs
from sgad_med.evaluation.metrics import (
    PSNR_CAP_DB,
    as_float_pair,
    checked_mask,
    mae,
    psnr,
    ssim,
    ssim_map,
    wasserstein_histogram,
)
from sgad_med.evaluation.real_scans import default_real_scans

__all__ = [
    "MIN_SLICE_FOREGROUND",
    "PSNR_CAP_DB",
    "METRICS",
    "ANATOMY_METRICS",
    "ssim_map",
    "ssim",
    "psnr",
    "mae",
    "wasserstein_histogram",
    "head_mask",
    "volume_metrics",
    "identity",
    "histogram_matching",
    "NyulStandardizer",
    "nyul_standardize",
    "baseline_methods",
    "uses_case",
    "COLUMNS",
    "heldout_cases",
    "harmonization_cases",
    "reference_volumes",
    "evaluate_harmonization",
    "format_table",
    "HarmonizationEvaluation",
    "default_real_scans",
    "edge_agreement",
    "evaluate_real_scans",
    "format_real_table",
    "format_anatomy_table",
    "format_cross_style",
    "oracle_methods",
    "by_style",
]

#: A slice takes part in the per-slice metrics of :func:`volume_metrics` when at least this fraction of it is head.
MIN_SLICE_FOREGROUND = 0.05
#: The metrics :func:`volume_metrics` returns, in table order: masked first, then whole-slice, then histogram.
METRICS: tuple[str, ...] = ("ssim_mask", "psnr_mask", "mae_mask", "ssim", "psnr", "mae", "wasserstein")
#: The anatomy-preservation metrics :func:`evaluate_harmonization` adds (see :mod:`sgad_med.evaluation.anatomy`).
ANATOMY_METRICS: tuple[str, ...] = ("grad_corr", "grad_corr_min", "hallucination", "flicker")


def head_mask(reference_volume_or_anatomy: Any, threshold: float = 0.05, closing_iterations: int = 2) -> np.ndarray:
    """The head (body) mask: the voxels every method is scored on, taken from the truth.

    For a reference-style volume (the target of a synthetic case: air is exactly 0 there, the darkest tissue,
    CSF, is 0.3), the voxels above ``threshold``; an :class:`~sgad_med.data.synthetic.Anatomy` is first rendered
    in :data:`~sgad_med.data.synthetic.REFERENCE_STYLE` (noise-free), so both give the same mask. Then closed
    (a 3x3(x3) structuring element, ``closing_iterations`` times, on a padded copy so that a head touching the
    border is not eroded) and with enclosed holes filled. The mask never comes from a method's output, so all
    methods are scored on the same voxels. (Real scans have no truth; this is for synthetic evaluation.)

    Args:
        reference_volume_or_anatomy: a 2D or 3D reference-style image in [0, 1], or an ``Anatomy``.
        threshold: intensity above which a voxel is head (images only).
        closing_iterations: iterations of the binary closing (0: none).

    Returns:
        Boolean mask of the image's shape.
    """
    from sgad_med.data.synthetic import REFERENCE_STYLE, Anatomy, render

    volume = reference_volume_or_anatomy
    if isinstance(volume, Anatomy):
        volume = render(volume, REFERENCE_STYLE)  # noise-free: the same mask as from the case's truth
    mask = np.asarray(volume) > threshold
    if closing_iterations > 0 and mask.any():
        pad = closing_iterations + 1
        padded = np.pad(mask, pad)
        structure = np.ones((3,) * mask.ndim, dtype=bool)
        padded = ndimage.binary_closing(padded, structure=structure, iterations=closing_iterations)
        mask = padded[tuple(slice(pad, -pad) for _ in range(mask.ndim))]
    return ndimage.binary_fill_holes(mask)


def volume_metrics(
    output: np.ndarray, truth: np.ndarray, mask: np.ndarray, min_foreground: float = MIN_SLICE_FOREGROUND
) -> dict[str, float]:
    """All :data:`METRICS` of one harmonized volume against its truth.

    SSIM, PSNR and MAE are computed per axial slice (last axis), in 2D, inside the mask (``*_mask``) and over the
    whole slice, and averaged over the slices whose head fraction is at least ``min_foreground``: per-slice 2D
    SSIM is what the 2.5D networks are trained on and what a reader looks at, and nearly empty slices (a few head
    voxels in a sea of background) would only add noise (masked) or inflate the scores (whole slice). The
    Wasserstein distance is volumetric: the head voxels of the output against the head voxels of the truth.
    A 2D input is treated as a volume of one slice.

    Args:
        output: the harmonized volume ``[H, W, D]`` in [0, 1].
        truth: the same anatomy in the reference style, same shape.
        mask: head mask, same shape (see :func:`head_mask`).
        min_foreground: smallest head fraction of a slice that is scored.

    Returns:
        ``{metric: value}`` for every name in :data:`METRICS`.
    """
    output, truth = as_float_pair(output, truth)
    mask = checked_mask(mask, output.shape)
    if output.ndim == 2:
        output, truth, mask = output[..., None], truth[..., None], mask[..., None]
    rows: dict[str, list[float]] = {k: [] for k in METRICS if k != "wasserstein"}
    for k in range(truth.shape[-1]):
        m = mask[..., k]
        if not m.any() or m.mean() < min_foreground:
            continue
        x, y = output[..., k], truth[..., k]
        full = ssim_map(x, y)
        rows["ssim_mask"].append(float(full[m].mean()))
        rows["psnr_mask"].append(psnr(x, y, m))
        rows["mae_mask"].append(mae(x, y, m))
        rows["ssim"].append(float(full.mean()))
        rows["psnr"].append(psnr(x, y))
        rows["mae"].append(mae(x, y))
    if not rows["ssim"]:
        raise ValueError(f"no slice has a head fraction of at least {min_foreground}: nothing to score")
    scores = {key: float(np.mean(values)) for key, values in rows.items()}
    scores["wasserstein"] = wasserstein_histogram(output, truth, mask, mask)
    return {key: scores[key] for key in METRICS}


# ----------------------------------------------------------------------------------------------------------------
# classical baselines
# ----------------------------------------------------------------------------------------------------------------


def identity(source: np.ndarray, reference: Any = None) -> np.ndarray:
    """No harmonization: the normalized source itself, the floor every method must beat.

    Args:
        source: normalized volume in [0, 1].
        reference: ignored (present so that every baseline has the same ``(source, reference)`` form).

    Returns:
        ``source`` as float32 (no copy when it already is).
    """
    return np.asarray(source, dtype=np.float32)


def histogram_matching(
    source: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, reference_mask: np.ndarray | None = None
) -> np.ndarray:
    """Match the source's intensity histogram to a reference's (``skimage.exposure.match_histograms``).

    A monotonic map: it fixes brightness and contrast, never the order of tissues (see the module docstring).

    Args:
        source: normalized volume in [0, 1].
        reference: reference-style volume (or any array of reference intensities, e.g. the pooled head voxels of
            several reference volumes).
        mask: the source's foreground. When given, only those voxels are matched, to the reference's foreground
            distribution, and the background is left as it is; when ``None``, whole volumes are matched.
        reference_mask: the reference's foreground; when ``None`` and ``mask`` is given, its nonzero voxels
            (air is exactly 0 in the reference style).

    Returns:
        float32 volume of the source's shape.
    """
    source = np.asarray(source)
    reference = np.asarray(reference)
    if mask is None:
        return match_histograms(source, reference).astype(np.float32)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != source.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the source shape {source.shape}")
    reference_mask = reference != 0 if reference_mask is None else np.asarray(reference_mask, dtype=bool)
    if not mask.any() or not reference_mask.any():
        raise ValueError("histogram_matching: an empty foreground mask (source or reference)")
    out = source.astype(np.float32, copy=True)
    out[mask] = match_histograms(source[mask], reference[reference_mask]).astype(np.float32)
    return out


class NyulStandardizer:
    """Nyúl–Udupa piecewise-linear intensity standardization (Nyúl & Udupa 1999; Nyúl, Udupa & Zhang 2000).

    Training: for each (reference-style) volume, the landmarks are percentiles of its foreground
    (``min_percentile``, then ``percentile_after_min`` to ``percentile_before_max`` every ``percentile_step``,
    then ``max_percentile``: by default 1, 10, 20, ..., 90, 99); they are mapped linearly so that the 1st and
    99th percentiles land on ``[s1, s2] = output_range``, and the standard scale is their mean over the volumes.
    Transform: the volume's own landmarks are mapped onto the standard scale by piecewise-linear interpolation,
    extrapolated linearly beyond the end landmarks, over *all* voxels (background included).

    This follows ``intensity-normalization``'s ``NyulNormalizer`` (v3) exactly, with the same defaults and
    foreground rule (the mask's voxels, or the voxels > 0 without a mask), with one difference in defaults:
    ``output_range=None`` (ours) puts ``[s1, s2]`` at the reference volumes' own mean 1st and 99th percentiles,
    so that the output is in reference-style [0, 1] units and can be compared with the truth; pass
    ``output_range=(1.0, 100.0)`` for the package's default scale. Repeated landmarks (a flat histogram) are
    merged instead of dividing by zero.

    Fit it on reference-style volumes of training anatomies only (see :func:`reference_volumes`), never on the
    evaluation set.

    Args:
        output_range: ``(s1, s2)``, the standard scale's values at the 1st/99th percentiles, or ``None`` (above).
        min_percentile: lowest landmark percentile.
        max_percentile: highest landmark percentile.
        percentile_after_min: first intermediate landmark percentile.
        percentile_before_max: last intermediate landmark percentile.
        percentile_step: spacing of the intermediate landmarks (10: deciles).

    Example::

        nyul = NyulStandardizer().fit(reference_volumes(range(8)))
        out = nyul.transform(source01)
    """

    def __init__(
        self,
        output_range: tuple[float, float] | None = None,
        min_percentile: float = 1.0,
        max_percentile: float = 99.0,
        percentile_after_min: float = 10.0,
        percentile_before_max: float = 90.0,
        percentile_step: float = 10.0,
    ) -> None:
        if not 0.0 <= min_percentile < percentile_after_min <= percentile_before_max < max_percentile <= 100.0:
            raise ValueError("percentiles must satisfy 0 <= min < after_min <= before_max < max <= 100")
        if output_range is not None and not float(output_range[1]) > float(output_range[0]):
            raise ValueError(f"output_range must be (s1, s2) with s2 > s1, got {output_range}")
        self.output_range = None if output_range is None else (float(output_range[0]), float(output_range[1]))
        middle = np.arange(percentile_after_min, percentile_before_max + percentile_step, percentile_step)
        self.percentiles = np.concatenate([[min_percentile], middle, [max_percentile]])
        self.standard_scale: np.ndarray | None = None

    @staticmethod
    def foreground(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The voxels the landmarks are computed on: the mask's, or those above 0 without a mask."""
        volume = np.asarray(volume)
        voxels = volume[np.asarray(mask, dtype=bool)] if mask is not None else volume[volume > 0]
        if voxels.size == 0:
            raise ValueError("NyulStandardizer: the foreground is empty (no voxel in the mask, or none above 0)")
        return voxels

    def landmarks(self, volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The landmark intensities of one volume (its foreground's percentiles at :attr:`percentiles`)."""
        return np.percentile(self.foreground(volume, mask), self.percentiles)

    def fit(self, volumes: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> NyulStandardizer:
        """Learn the standard scale from reference-style volumes.

        Args:
            volumes: reference-style volumes (of training anatomies).
            masks: one foreground mask per volume (entries may be ``None``), or ``None``: voxels > 0.

        Returns:
            ``self``, fitted (:attr:`standard_scale` set).
        """
        volumes = list(volumes)
        if not volumes:
            raise ValueError("NyulStandardizer.fit needs at least one volume")
        masks = list(masks) if masks is not None else [None] * len(volumes)
        if len(masks) != len(volumes):
            raise ValueError(f"{len(volumes)} volumes but {len(masks)} masks")
        # As the package: the landmarks, and the ends of the linear map to [s1, s2] computed as separate scalar
        # percentiles (for float32 data these are float32, and can differ from the landmarks in the last bits).
        landmarks, ends = [], []
        for i, (volume, mask) in enumerate(zip(volumes, masks)):
            voxels = self.foreground(volume, mask)
            landmarks.append(np.percentile(voxels, self.percentiles))
            # a Python-float q keeps float32 data's dtype, as in the package (an array q would give float64)
            lo, hi = (np.percentile(voxels, float(q)) for q in self.percentiles[[0, -1]])
            ends.append((np.float64(lo), np.float64(hi)))
            if ends[-1][0] == ends[-1][1]:
                raise ValueError(
                    f"volume {i}: its {self.percentiles[0]}th and {self.percentiles[-1]}th "
                    "percentiles are equal (a constant foreground)"
                )
        if self.output_range is None:
            low, high = float(np.mean([e[0] for e in ends])), float(np.mean([e[1] for e in ends]))
        else:
            low, high = self.output_range
        scaled = [low + (lm - lo) * (high - low) / (hi - lo) for lm, (lo, hi) in zip(landmarks, ends)]
        self.standard_scale = np.mean(scaled, axis=0)
        return self

    def transform(self, volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Standardize one volume: its own foreground landmarks onto the standard scale, every voxel mapped.

        Args:
            volume: the volume to standardize.
            mask: its foreground (``None``: voxels > 0), used for the landmarks only.

        Returns:
            float32 volume of the same shape (not clipped: values beyond the end landmarks are extrapolated).
        """
        if self.standard_scale is None:
            raise RuntimeError("NyulStandardizer must be fitted before transform")
        return nyul_standardize(volume, self.standard_scale, mask, self.percentiles)

    __call__ = transform


def nyul_standardize(
    source: np.ndarray,
    standard_scale: np.ndarray,
    mask: np.ndarray | None = None,
    percentiles: Sequence[float] | None = None,
) -> np.ndarray:
    """Nyúl–Udupa standardization of one volume onto a given standard landmark scale (functional form).

    Args:
        source: the volume.
        standard_scale: landmark values of the standard scale (e.g. ``NyulStandardizer.standard_scale``).
        mask: the source's foreground (``None``: voxels > 0).
        percentiles: the landmark percentiles, one per ``standard_scale`` entry (default 1, 10, ..., 90, 99).

    Returns:
        float32 volume: piecewise-linear map of the source's landmarks onto ``standard_scale``, extrapolated.
    """
    percentiles = NyulStandardizer().percentiles if percentiles is None else np.asarray(percentiles, dtype=float)
    standard_scale = np.asarray(standard_scale, dtype=np.float64)
    if standard_scale.shape != percentiles.shape:
        raise ValueError(f"{standard_scale.size} standard landmarks for {percentiles.size} percentiles")
    source = np.asarray(source)
    landmarks = np.percentile(NyulStandardizer.foreground(source, mask), percentiles)
    return _interp_extrapolate(source, landmarks, standard_scale).astype(np.float32)


def _interp_extrapolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation, extrapolated with the end segments, as ``interp1d(fill_value="extrapolate")``."""
    x = np.asarray(x, dtype=np.float64)
    xp, fp = np.asarray(xp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    xp, first = np.unique(xp, return_index=True)  # repeated landmarks (flat histograms) would divide by 0
    fp = fp[first]
    if len(xp) == 1:
        return np.full_like(x, fp[0])
    out = np.interp(x, xp, fp)
    low, high = x < xp[0], x > xp[-1]
    out[low] = fp[0] + (x[low] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[high] = fp[-1] + (x[high] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


# ----------------------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------------------


def uses_case(method: Callable[[dict], np.ndarray]) -> Callable[[dict], np.ndarray]:
    """Mark a method for :func:`evaluate_harmonization` as taking the whole case dict instead of the source.

    For methods that need more than the source volume, e.g. a baseline given the true head mask::

        methods = {"nyul": uses_case(lambda case: nyul.transform(case["source"], case["mask"]))}

    Args:
        method: a function of a case dict returning the harmonized volume.

    Returns:
        The same function, marked (``method.uses_case = True``).
    """
    method.uses_case = True  # type: ignore[attr-defined]
    return method


def _apply(method: Callable, case: dict, source: np.ndarray) -> np.ndarray:
    output = method({**case, "source": source}) if getattr(method, "uses_case", False) else method(source)
    output = np.asarray(output.detach().cpu() if hasattr(output, "detach") else output, dtype=np.float64)
    if output.shape != source.shape:
        raise ValueError(f"a method returned shape {output.shape} for a source of shape {source.shape}")
    return np.clip(output, 0.0, 1.0)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def evaluate_harmonization(
    methods: dict[str, Callable[[np.ndarray], np.ndarray]],
    cases: Iterable[dict],
    min_foreground: float = MIN_SLICE_FOREGROUND,
    progress: bool = False,
) -> dict:
    """Score every method on every case against the reference-style truth; mean ± std per method.

    Each method gets the case's ``source`` itself (a normalized volume in [0, 1]; the very array, not a copy, so a
    test's oracle can look its truth up by identity) and returns the harmonized volume, which is clipped to
    [0, 1] (every stage of the pipeline works in [0, 1]; the harmonizer clamps too). A method marked with
    :func:`uses_case` gets the whole case dict instead. Metrics (see :func:`volume_metrics`):
    per-slice 2D SSIM/PSNR/MAE inside the case's mask and over whole slices, averaged over the slices with head,
    and the Wasserstein distance between the output's and the target's head-voxel histograms; then the
    anatomy-preservation metrics of :func:`~sgad_med.evaluation.anatomy.anatomy_metrics` (:data:`ANATOMY_METRICS`:
    gradient correlation with the truth, mean and worst slice, the rate of invented edges, slice flicker).

    When a case holds ``reference_input`` (a scan already in the reference style, see :func:`heldout_cases`),
    each method is also run on it and its MAE to its input inside the mask is reported as
    ``preservation_mae_mask``: a method should leave such a scan alone.

    Args:
        methods: name -> method.
        cases: dicts with ``source``, ``target`` (same shape, reference style), ``mask`` (bool, same shape), and
            optionally ``anatomy_seed``, ``style`` (reported per case) and ``reference_input``.
        min_foreground: smallest head fraction of a slice that is scored.
        progress: show a progress bar.

    Returns:
        A JSON-serialisable dict: ``metrics`` (the metric names), ``n_cases``, ``methods``
        (``{name: {metric: {"mean", "std"}}}``, std with ddof 1, 0 for a single case), ``seconds_per_case``
        (``{name: s}``), ``preservation_mae_mask`` (``{name: mean}``, only when every case has a
        ``reference_input``) and ``cases`` (per case: ``anatomy_seed``, ``style`` and ``{name: {metric: value}}``).
    """
    from tqdm import tqdm

    cases = list(cases)
    if not methods:
        raise ValueError("evaluate_harmonization needs at least one method")
    if not cases:
        raise ValueError("evaluate_harmonization needs at least one case")
    per_case: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    timings = dict.fromkeys(methods, 0.0)
    preserve = all("reference_input" in case for case in cases)
    preservation: dict[str, list[float]] = {name: [] for name in methods}
    for case in tqdm(cases, desc="evaluating", unit="case", disable=not progress):
        target = np.asarray(case["target"])
        mask = np.asarray(case["mask"], dtype=bool)
        source = np.asarray(case["source"])
        if source.shape != target.shape:
            raise ValueError(f"case source {source.shape} and target {target.shape} differ in shape")
        for name, method in methods.items():
            start = time.perf_counter()
            output = _apply(method, case, source)
            timings[name] += time.perf_counter() - start
            per_case[name].append({**volume_metrics(output, target, mask, min_foreground),
                                   **anatomy_metrics(output, target, mask, min_foreground)})
            if preserve:
                reference_input = np.asarray(case["reference_input"])
                same = _apply(method, case, reference_input)
                preservation[name].append(mae(same, reference_input, mask))
    results: dict[str, Any] = {
        "metrics": list(METRICS),
        "n_cases": len(cases),
        "methods": {name: {m: _mean_std([r[m] for r in rows]) for m in METRICS + ANATOMY_METRICS}
                    for name, rows in per_case.items()},
        "seconds_per_case": {name: t / len(cases) for name, t in timings.items()},
    }
    if preserve:
        results["preservation_mae_mask"] = {name: float(np.mean(v)) for name, v in preservation.items()}
    results["cases"] = [
        {
            "anatomy_seed": _jsonable(case.get("anatomy_seed")),
            "style": _jsonable(case.get("style")),
            **{name: per_case[name][i] for name in methods},
        }
        for i, case in enumerate(cases)
    ]
    return results


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return getattr(value, "name", None) or str(value)  # e.g. a Style object: its name


#: Table columns: (metric key, title, format).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ssim_mask", "SSIM(mask)", "{:.3f}"),
    ("psnr_mask", "PSNR(mask)", "{:.2f}"),
    ("mae_mask", "MAE(mask)", "{:.4f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("psnr", "PSNR", "{:.2f}"),
    ("mae", "MAE", "{:.4f}"),
    ("wasserstein", "W1 hist", "{:.4f}"),
)


def format_table(results: dict) -> str:
    """One fixed-width table of :func:`evaluate_harmonization` results: a row per method, mean ± std per metric.

    Higher is better for SSIM and PSNR (dB), lower for MAE and W1 (the Wasserstein distance of the head
    histograms); ``(mask)`` columns are inside the head mask. A last column gives the MAE on scans already in
    the reference style when the results have it.

    Args:
        results: what :func:`evaluate_harmonization` returned (or its JSON round trip).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    preservation = results.get("preservation_mae_mask")
    name_width = max([len("method")] + [len(name) for name in results["methods"]]) + 2
    cell = 18
    header = f"{'method':<{name_width}}" + "".join(f"{title:>{cell}}" for _, title, _ in COLUMNS)
    if preservation is not None:
        header += f"{'MAE on ref-style':>{cell}}"
    lines = [header, "-" * len(header)]
    for name, metrics in results["methods"].items():
        row = f"{name:<{name_width}}"
        for key, _, fmt in COLUMNS:
            row += f"{fmt.format(metrics[key]['mean']) + ' ± ' + fmt.format(metrics[key]['std']):>{cell}}"
        if preservation is not None:
            row += f"{preservation[name]:>{cell}.4f}"
        lines.append(row)
    return "\n".join(lines)




def heldout_cases(
    n_anatomies: int = 8,
    styles_per_anatomy: int = 2,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Held-out evaluation cases: held-out anatomies in held-out styles, with reference-style truth.

    Anatomy ``a`` is ``HELDOUT_ANATOMY_SEEDS[a]``; its styles are drawn with ``split="heldout"`` and style seeds
    ``a * styles_per_anatomy + s``; each case is built by :func:`harmonization_cases`.

    Args:
        n_anatomies: how many held-out anatomies (at most ``len(HELDOUT_ANATOMY_SEEDS)``).
        styles_per_anatomy: held-out styles per anatomy.
        spacing: voxel size in mm (2.0 for evaluation; 4.0 or 8.0 for quick tests).
        seed: the generator's global seed.
        mni_dir: folder of the MNI template (``None``: search, see :func:`~sgad_med.data.mni.find_mni_dir`).

    Returns:
        As :func:`harmonization_cases`.
    """
    return _cases(heldout_pairs(n_anatomies, styles_per_anatomy, spacing=spacing, seed=seed, mni_dir=mni_dir))


def harmonization_cases(
    anatomy_seeds: Sequence[int],
    split: str,
    styles_per_anatomy: int = 2,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Evaluation cases of the given anatomies in ``split`` styles, with reference-style truth.

    :func:`heldout_cases` is this on the held-out anatomies and styles; on training-pool anatomies no training
    run uses (e.g. 960-967) with ``split="validation"`` it is a validation set built the same way, to compare
    weights without the held-out set. The source is put through the normalization a real MR scan gets before
    harmonization (:func:`sgad_med.transforms.normalize` with ``modality="MR"``: robust 0.5/99.5 percentiles of
    the nonzero voxels to [0, 1], clipped), so bias, outliers and the scanner's arbitrary scale reach the methods
    as they would on real data. The target is the same anatomy in :data:`REFERENCE_STYLE`, put through the same
    normalization: that is the [0, 1] reference-style scale the GAN is trained to produce
    (``sgad_med.data.slices`` normalizes both sides of each training pair), so a scan already in the reference
    style maps to itself. The mask is :func:`head_mask` of the (un-normalized) reference-style truth.

    Args:
        anatomy_seeds: anatomy seeds (the generator refuses seeds of the other split).
        split: style split, see :data:`sgad_med.data.synthetic.SPLITS`.
        styles_per_anatomy: styles per anatomy (style seeds ``a * styles_per_anatomy + s``).
        spacing: voxel size in mm.
        seed: the generator's global seed.
        mni_dir: folder of the MNI template.

    Returns:
        One dict per case: ``source``, ``target``, ``reference_input`` (the target again: a reference-style scan,
        for the preservation check), float32 ``[H, W, D]`` in [0, 1]; ``mask`` (bool); ``anatomy_seed``,
        ``style_seed``, ``style`` (the style's name, e.g. ``"t2-heldout"``), ``style_params`` (a plain dict).
    """
    return _cases(synthetic_pairs(anatomy_seeds, split, styles_per_anatomy, spacing, seed, mni_dir))


def _cases(pairs: Iterable[dict]) -> list[dict]:
    cases = []
    for pair in pairs:
        target = normalize_mr(pair["target"])
        cases.append(
            {
                "source": normalize_mr(pair["source"]),
                "target": target,
                "reference_input": target,
                "mask": head_mask(pair["target"]),
                "anatomy_seed": pair["anatomy_seed"],
                "style_seed": pair["style_seed"],
                "style": pair["style"].name,
                "style_params": pair["style_params"],
                **({"labels": pair["labels"]} if "labels" in pair else {}),
            }
        )
    return cases


def reference_volumes(
    anatomy_seeds: Iterable[int], spacing: float = 2.0, seed: int = 0, mni_dir: str | os.PathLike | None = None
) -> list[np.ndarray]:
    """Training anatomies in the reference style, normalized as the targets are: what the baselines are fitted on.

    Args:
        anatomy_seeds: anatomy seeds from ``TRAIN_ANATOMY_SEEDS`` (a held-out seed raises: the baselines must
            never see the evaluation anatomies).
        spacing: voxel size in mm.
        seed: the generator's global seed.
        mni_dir: folder of the MNI template.

    Returns:
        float32 ``[H, W, D]`` volumes in [0, 1].
    """
    from sgad_med.data.mni import load_mni_template
    from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, REFERENCE_STYLE, SyntheticStyleGenerator

    seeds = [int(a) for a in anatomy_seeds]
    leaked = [a for a in seeds if a in HELDOUT_ANATOMY_SEEDS]
    if leaked:
        raise ValueError(f"reference anatomies {leaked} are held-out evaluation anatomies; use TRAIN_ANATOMY_SEEDS")
    generator = SyntheticStyleGenerator(
        template=load_mni_template(mni_dir, spacing=spacing), seed=seed, anatomy_cache=1
    )
    return [normalize_mr(generator.volume(a, REFERENCE_STYLE)) for a in seeds]


# ----------------------------------------------------------------------------------------------------------------
# real scans (no truth)
# ----------------------------------------------------------------------------------------------------------------


def edge_agreement(output: np.ndarray, source: np.ndarray) -> float:
    """Normalized cross-correlation of the Sobel edge maps of two volumes, slice by slice (1: same edges).

    Contrast-invariant, so it measures whether anatomy stayed where it was when there is no truth to compare.
    """
    import torch

    from sgad_med.engines.losses import structure_loss

    a = torch.as_tensor(np.moveaxis(output, -1, 0)[:, None], dtype=torch.float32)
    b = torch.as_tensor(np.moveaxis(source, -1, 0)[:, None], dtype=torch.float32)
    return float(1.0 - structure_loss(a, b))


def evaluate_real_scans(
    harmonize01: Callable[[np.ndarray], np.ndarray],
    scans: Sequence[tuple[str, str, int | None]],
    references: Sequence[np.ndarray],
) -> list[dict]:
    """What can be measured on real scans with no truth: histogram distance to the reference style, before and
    after, and whether the edges stayed in place.

    Args:
        harmonize01: maps a normalized volume to the reference style.
        scans: (name, path, volume index) as :func:`default_real_scans` gives.
        references: normalized reference-style volumes (their head voxels give the reference histogram).

    Returns:
        One row per scan: ``w1_before``, ``w1_after`` (Wasserstein distance of the head intensities to the
        reference's) and ``edge_ncc`` (edge agreement between input and output).
    """
    from sgad_med.io import load_scan
    from sgad_med.transforms.intensity import normalize

    reference_voxels = np.concatenate([r[head_mask(r)] for r in references])
    rows = []
    for name, path, volume in scans:
        scan = load_scan(path, volume=volume)
        source = np.asarray(normalize(scan.image.as_tensor()[0:1], modality=scan.modality)[0])[0]
        output = np.clip(harmonize01(source), 0.0, 1.0)
        foreground = source > 0.05
        rows.append(
            {
                "scan": name,
                "shape": list(source.shape),
                "w1_before": float(wasserstein_distance(source[foreground], reference_voxels)),
                "w1_after": float(wasserstein_distance(output[foreground], reference_voxels)),
                "edge_ncc": edge_agreement(output, source),
                **_input_gradient_correlation(output, source, foreground),
            }
        )
    return rows


def _input_gradient_correlation(output: np.ndarray, source: np.ndarray, foreground: np.ndarray) -> dict:
    """Gradient correlation of output and input per slice with tissue (>= 5 % of the slice above 0.05)."""
    values = gradient_correlation(output, source, foreground)
    return {"grad_corr_input": float(values.mean()) if values.size else None,
            "grad_corr_input_min": float(values.min()) if values.size else None}


def format_real_table(rows: Sequence[dict]) -> str:
    """The real-scan rows as a fixed-width table."""
    lines = [f"{'real scan (no truth)':<44}{'shape':>16}{'W1 before':>12}{'W1 after':>12}{'edge NCC':>10}"
             f"{'grad corr':>11}{'worst':>8}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        corr = row.get("grad_corr_input")
        worst = row.get("grad_corr_input_min")
        lines.append(
            f"{row['scan']:<44}{shape:>16}{row['w1_before']:>12.4f}{row['w1_after']:>12.4f}{row['edge_ncc']:>10.3f}"
            + (f"{corr:>11.3f}{worst:>8.3f}" if corr is not None else f"{'-':>11}{'-':>8}")
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# the bundle's evaluation
# ----------------------------------------------------------------------------------------------------------------


def _inside(standardized: np.ndarray, source: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """A baseline's output on the foreground, the source's background elsewhere."""
    return np.where(foreground, standardized, source).astype(np.float32)


def baseline_methods(references: Sequence[np.ndarray]) -> dict[str, Callable[[dict], np.ndarray]]:
    """The classical baselines, fitted on reference-style volumes of training anatomies, as case methods.

    Each baseline is given the case's true head mask as its foreground (the best mask it could have; the GAN
    gets none) and leaves the background as it is: ``"none"`` (:func:`identity`), ``"histogram matching"``
    (to the pooled head voxels of all ``references``) and ``"nyul-udupa"`` (:class:`NyulStandardizer` fitted on
    ``references`` with their head masks).

    Args:
        references: normalized reference-style volumes of training anatomies (:func:`reference_volumes`).

    Returns:
        name -> method marked with :func:`uses_case`, for :func:`evaluate_harmonization`.
    """
    references = list(references)
    if not references:
        raise ValueError("the baselines need at least one reference-style volume")
    masks = [head_mask(r) for r in references]
    pooled = np.concatenate([r[m] for r, m in zip(references, masks)])
    nyul = NyulStandardizer().fit(references, masks)
    return {
        "none": uses_case(lambda case: identity(case["source"])),
        "histogram matching": uses_case(
            lambda case: histogram_matching(case["source"], pooled, case["mask"], np.ones(pooled.shape, bool))
        ),
        "nyul-udupa": uses_case(
            lambda case: _inside(nyul.transform(case["source"], case["mask"]), case["source"], case["mask"])
        ),
    }


def oracle_methods() -> dict[str, Callable[[dict], np.ndarray]]:
    """The oracle rows (see :mod:`sgad_med.evaluation.harmonization_oracle`): a lookup table per true tissue plus
    a fitted bias field, without and with the best self-guided denoising; they need the cases' ``labels``."""
    from sgad_med.evaluation.harmonization_oracle import tissue_lut_oracle

    def oracle(denoise: bool) -> Callable[[dict], np.ndarray]:
        return uses_case(lambda case: tissue_lut_oracle(case["source"], case["target"], case["labels"], case["mask"],
                                                        denoise=denoise))

    return {"oracle: tissue LUT + bias": oracle(False), "oracle: + guided filter": oracle(True)}


def by_style(results: dict, metric: str) -> dict[str, dict[str, float]]:
    """Per style name (e.g. ``"t2-heldout"``), the mean of ``metric`` over its cases, for every method."""
    methods = list(results["methods"])
    styles: dict[str, dict[str, list[float]]] = {}
    for case in results["cases"]:
        entry = styles.setdefault(str(case["style"]), {m: [] for m in methods})
        for m in methods:
            entry[m].append(case[m][metric])
    return {style: {m: float(np.mean(v)) for m, v in entry.items()} for style, entry in sorted(styles.items())}


#: Columns of :func:`format_anatomy_table`: (metric, title, format).
ANATOMY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ssim_mask", "SSIM(mask)", "{:.3f}"),
    ("grad_corr", "grad corr", "{:.3f}"),
    ("grad_corr_min", "worst slice", "{:.3f}"),
    ("hallucination", "invented %", "{:.3f}"),
    ("flicker", "flicker", "{:.4f}"),
)


def format_anatomy_table(results: dict, title: str) -> str:
    """Per style and method: SSIM in the head, gradient correlation with the true anatomy (mean, worst slice),
    invented edges (% of head pixels) and slice flicker."""
    per_metric = {key: by_style(results, key) for key, _, _ in ANATOMY_COLUMNS}
    styles = list(per_metric["ssim_mask"])
    methods = list(results["methods"])
    width = max(len(m) for m in methods) + 2
    header = f"{title:<{width + 20}}" + "".join(f"{t:>13}" for _, t, _ in ANATOMY_COLUMNS)
    lines = [header, "-" * len(header)]
    for style in styles:
        for method in methods:
            row = f"{style:<20}{method:<{width}}"
            for key, _, fmt in ANATOMY_COLUMNS:
                value = per_metric[key][style][method] * (100.0 if key == "hallucination" else 1.0)
                row += f"{fmt.format(value):>13}"
            lines.append(row)
    return "\n".join(lines)


class HarmonizationEvaluation:
    """The harmonization evaluation run by the bundle's ``evaluate.json`` and ``sgad-med evaluate harmonizer``.

    Scores, in one run on the same held-out cases: no harmonization, histogram matching, Nyúl–Udupa (see
    :func:`baseline_methods`), the oracle rows (:func:`oracle_methods`, when the cases carry labels), the shipped
    generator and any generators given for comparison (e.g. the old U-Net). Every method gets SSIM/PSNR/MAE and
    the anatomy metrics; then the same on the stress styles (:func:`~sgad_med.evaluation.harmonization_stress.
    stress_cases`), the cross-style consistency of each method, and the real scans (no truth: histogram distance
    and the gradient correlation of output and input, per slice).

    Args:
        cases: from :func:`heldout_cases`.
        harmonizer: a :class:`~sgad_med.harmonizer.Harmonizer` (its ``harmonize01`` is called on normalized volumes).
        references: reference-style volumes of training anatomies (see :func:`reference_volumes`).
        output_dir: where ``harmonization_evaluation.json`` is written.
        real_scans: real scans with no truth, scored by :func:`evaluate_real_scans` (see :func:`default_real_scans`).
        name: the shipped generator's row name.
        comparison: more harmonizers to score beside it, by row name.
        stress: the stress cases (``None``: none).
        cross_style: groups from :func:`~sgad_med.evaluation.harmonization_stress.three_style_cases` (``None``:
            no cross-style test).
        oracle: add the oracle rows (cases without ``labels`` cannot have them).
    """

    def __init__(
        self,
        cases: Sequence[dict],
        harmonizer: Any,
        references: Sequence[np.ndarray],
        output_dir: str | os.PathLike,
        real_scans: Sequence[tuple[str, str, int | None]] = (),
        name: str = "sgad-med GAN",
        comparison: dict[str, Any] | None = None,
        stress: Sequence[dict] | None = None,
        cross_style: Sequence[Sequence[dict]] | None = None,
        oracle: bool = True,
    ) -> None:
        self.cases, self.harmonizer, self.references = list(cases), harmonizer, list(references)
        self.real_scans = list(real_scans)
        self.output_dir = Path(output_dir)
        self.name = name
        self.comparison = dict(comparison or {})
        self.stress = list(stress) if stress is not None else []
        self.cross_style = list(cross_style) if cross_style is not None else []
        self.oracle = oracle
        self.results: dict | None = None

    @staticmethod
    def _runner(harmonizer: Any) -> Callable[[np.ndarray], np.ndarray]:
        import torch

        def run(volume: np.ndarray) -> np.ndarray:
            return harmonizer.harmonize01(torch.as_tensor(np.asarray(volume, dtype=np.float32))).numpy()

        return run

    def _gan(self, volume: np.ndarray) -> np.ndarray:
        return self._runner(self.harmonizer)(volume)

    def generators(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """The networks compared, by row name: the shipped one first."""
        return {self.name: self._gan, **{n: self._runner(h) for n, h in self.comparison.items()}}

    def methods(self, cases: Sequence[dict] | None = None) -> dict[str, Callable]:
        """The methods compared, by name (the oracle only when every case has labels)."""
        cases = self.cases if cases is None else cases
        methods = dict(baseline_methods(self.references))
        if self.oracle and cases and all("labels" in c for c in cases):
            methods.update(oracle_methods())
        return {**methods, **self.generators()}

    def _cross_style(self) -> dict[str, float]:
        methods = {k: v for k, v in self.methods(self.cross_style[0]).items() if not k.startswith("oracle")}
        return {name: cross_style_ssim(lambda case, m=method: _apply(m, case, case["source"]), self.cross_style)
                for name, method in methods.items()}

    def run(self) -> dict:
        """Evaluate, print the tables, write the JSON; returns the results."""
        from sgad_med import __version__

        check_protocol_normalization(self.harmonizer, *self.comparison.values())
        results = evaluate_harmonization(self.methods(), self.cases, progress=True)
        results["settings"] = {
            "cases": len(self.cases),
            "anatomy_seeds": sorted({int(c["anatomy_seed"]) for c in self.cases}),
            "styles": [str(c["style"]) for c in self.cases],
            "sgad_med": __version__,
            "data": "held-out anatomies (HELDOUT_ANATOMY_SEEDS) in held-out styles; baselines fitted on "
            "reference-style training anatomies",
        }
        if self.stress:
            results["stress"] = evaluate_harmonization(self.methods(self.stress), self.stress, progress=True)
        if self.cross_style:
            results["cross_style_ssim"] = self._cross_style()
        results["real_scans"] = {name: evaluate_real_scans(run, self.real_scans, self.references)
                                 for name, run in self.generators().items()}
        self.results = results
        print(format_table(results))
        print()
        print(format_anatomy_table(results, "held-out styles"))
        if self.stress:
            print()
            print(format_table(results["stress"]))
            print()
            print(format_anatomy_table(results["stress"], "stress styles"))
        if self.cross_style:
            print()
            print(format_cross_style(results["cross_style_ssim"], len(self.cross_style)))
        for name, rows in results["real_scans"].items():
            if rows:
                print()
                print(f"{name}:")
                print(format_real_table(rows))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "harmonization_evaluation.json").write_text(json.dumps(_jsonable_tree(results), indent=2))
        return results


def format_cross_style(values: dict[str, float], n_anatomies: int) -> str:
    """The cross-style consistency table: SSIM in the head between outputs of one anatomy in three styles."""
    lines = [f"{'same anatomy in t1/t2/flair held-out styles (' + str(n_anatomies) + ' anatomies)':<64}"
             f"{'pairwise SSIM(mask)':>20}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{name:<64}{value:>20.3f}" for name, value in values.items()]
    return "\n".join(lines)


def _jsonable_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable_tree(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return _jsonable(value) if not isinstance(value, (int, float, str, bool)) else value
