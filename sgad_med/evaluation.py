"""Metrics and classical baselines, and the held-out evaluation of harmonization.

Every figure a bundle's docs quote comes from :class:`HarmonizationEvaluation` (bundle ``evaluate.json``,
``sgad-med evaluate harmonizer``), which scores the GAN and the classical baselines in one run on the same
held-out cases: anatomies warped with seeds never used in training (``HELDOUT_ANATOMY_SEEDS``) rendered in
held-out styles (``split="heldout"``: GM/WM contrast below anything trained on).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance
from skimage.exposure import match_histograms
from skimage.metrics import structural_similarity

# A slice takes part in the per-slice metrics when at least this fraction of it is head.
MIN_SLICE_FOREGROUND = 0.05


def ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM map of two 2D images in [0, 1] (Gaussian window, sigma 1.5, as Wang et al. 2004)."""
    _, full = structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return full


def psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB for data range 1, over ``mask`` if given; capped at 100 dB for identical images."""
    diff = (x - y)[mask] if mask is not None else (x - y)
    mse = float(np.mean(diff.astype(np.float64) ** 2)) if diff.size else 0.0
    return 100.0 if mse <= 1e-10 else float(10.0 * np.log10(1.0 / mse))


def mae(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, over ``mask`` if given."""
    diff = np.abs(x - y)[mask] if mask is not None else np.abs(x - y)
    return float(diff.mean()) if diff.size else 0.0


def wasserstein_histogram(x: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                          reference_mask: np.ndarray | None = None) -> float:
    """1D Wasserstein (earth mover's) distance between the intensity distributions of two images."""
    a = x[mask] if mask is not None else x.ravel()
    b = reference[reference_mask] if reference_mask is not None else reference.ravel()
    return float(wasserstein_distance(a.ravel(), b.ravel()))


def head_mask(truth: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The head/body mask of a reference-style volume: above ``threshold``, closed, holes filled.

    For synthetic cases the mask comes from the truth (never from a method's output), so every method is
    scored on the same voxels.
    """
    mask = truth > threshold
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 3, 3)), iterations=2)
    return ndimage.binary_fill_holes(mask)


def volume_metrics(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Per-slice SSIM/PSNR/MAE inside the mask and over whole slices, averaged over the slices with head.

    Per-slice 2D SSIM is what the 2.5D networks are trained on and what a reader sees; slices with less than
    :data:`MIN_SLICE_FOREGROUND` head are left out (they are nearly all background and would inflate scores).
    """
    rows: dict[str, list[float]] = {k: [] for k in ("ssim_mask", "psnr_mask", "mae_mask", "ssim", "psnr", "mae")}
    for k in range(truth.shape[-1]):
        m = mask[..., k]
        if m.mean() < MIN_SLICE_FOREGROUND:
            continue
        x, y = output[..., k].astype(np.float64), truth[..., k].astype(np.float64)
        full = ssim_map(x, y)
        rows["ssim_mask"].append(float(full[m].mean()))
        rows["psnr_mask"].append(psnr(x, y, m))
        rows["mae_mask"].append(mae(x, y, m))
        rows["ssim"].append(float(full.mean()))
        rows["psnr"].append(psnr(x, y))
        rows["mae"].append(mae(x, y))
    scores = {key: float(np.mean(values)) for key, values in rows.items()}
    scores["wasserstein"] = wasserstein_histogram(output, truth, mask, mask)
    return scores


def identity(source: np.ndarray) -> np.ndarray:
    """No harmonization: the normalized source itself."""
    return source


def histogram_matching(source: np.ndarray, reference: np.ndarray, source_mask: np.ndarray | None = None,
                       reference_mask: np.ndarray | None = None) -> np.ndarray:
    """``skimage.exposure.match_histograms`` of the foreground onto a reference volume's foreground.

    With masks, only foreground voxels are matched (to the reference's foreground distribution) and the
    background is left as it is; without, whole volumes are matched.
    """
    if source_mask is None:
        return match_histograms(source, reference).astype(np.float32)
    out = source.astype(np.float32).copy()
    out[source_mask] = match_histograms(source[source_mask], reference[reference_mask]).astype(np.float32)
    return out


class NyulStandardizer:
    """Nyúl–Udupa piecewise-linear intensity standardization (Nyúl & Udupa 1999; Nyúl et al. 2000).

    A faithful re-implementation of ``intensity_normalization``'s ``NyulNormalizer`` (v3) with the same
    defaults: landmarks at percentiles 1, 10, 20, …, 90, 99 of the foreground (the mask, or the voxels above
    0); each training image's landmarks mapped linearly so that its 1st/99th percentiles land on
    ``output_range``; the standard scale is their mean; an image is standardized by piecewise-linear
    interpolation of its landmarks onto the standard scale, extrapolated linearly beyond them.

    ``output_range=None`` puts the standard scale in the reference images' own units (their mean 1st/99th
    percentiles), so that outputs can be compared with reference-style truth. Fit on reference-style volumes
    of training anatomies only, never on the evaluation set.

    Args:
        output_range: the standard scale's 1st/99th percentile values, or ``None`` (see above).
        min_percentile: lowest landmark.
        max_percentile: highest landmark.
        step: spacing of the intermediate landmarks (10: deciles).
    """

    def __init__(self, output_range: tuple[float, float] | None = None, min_percentile: float = 1.0,
                 max_percentile: float = 99.0, step: float = 10.0) -> None:
        self.output_range = output_range
        self.percentiles = np.concatenate([[min_percentile], np.arange(step, 100.0 - step + 1e-9, step),
                                           [max_percentile]])
        self.standard_scale: np.ndarray | None = None

    @staticmethod
    def _foreground(volume: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        return volume[mask.astype(bool)] if mask is not None else volume[volume > 0]

    def fit(self, volumes: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> NyulStandardizer:
        """Learn the standard scale from (reference-style) volumes."""
        if not volumes:
            raise ValueError("NyulStandardizer.fit needs at least one volume")
        masks = list(masks) if masks is not None else [None] * len(volumes)
        landmarks = [np.percentile(self._foreground(v, m), self.percentiles) for v, m in zip(volumes, masks)]
        low, high = self.output_range or (float(np.mean([lm[0] for lm in landmarks])),
                                          float(np.mean([lm[-1] for lm in landmarks])))
        scaled = []
        for lm in landmarks:
            if lm[-1] == lm[0]:
                raise ValueError("a training volume has equal 1st and 99th percentiles")
            scaled.append(low + (lm - lm[0]) * (high - low) / (lm[-1] - lm[0]))
        self.standard_scale = np.mean(scaled, axis=0)
        return self

    def transform(self, volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Standardize one volume (all its voxels, by its own foreground's landmarks)."""
        if self.standard_scale is None:
            raise RuntimeError("NyulStandardizer must be fitted before transform")
        landmarks = np.percentile(self._foreground(volume, mask), self.percentiles)
        return _interp_extrapolate(volume, landmarks, self.standard_scale).astype(np.float32)


def _interp_extrapolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation, extrapolated linearly with the end segments (scipy's interp1d rule)."""
    xp, fp = np.asarray(xp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    xp, unique = np.unique(xp, return_index=True)  # repeated landmarks (flat histograms) would divide by 0
    fp = fp[unique]
    if len(xp) == 1:
        return np.full_like(x, fp[0], dtype=np.float64)
    out = np.interp(x, xp, fp)
    low, high = x < xp[0], x > xp[-1]
    out[low] = fp[0] + (x[low] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    out[high] = fp[-1] + (x[high] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


def heldout_cases(n_anatomies: int = 8, styles_per_anatomy: int = 2, spacing: float = 2.0, seed: int = 0,
                  mni_dir: str | os.PathLike | None = None) -> list[dict]:
    """Held-out evaluation cases: held-out anatomies in held-out styles, with reference-style truth.

    Source and truth are normalized exactly as a real MR scan is at inference (robust percentiles), as in
    training. ``reference_input`` is the truth itself: a scan already in the reference style, on which a
    method should change nothing (the anatomy-preservation check).
    """
    from sgad_med.data.mni import load_mni_template
    from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS, SyntheticStyleGenerator
    from sgad_med.transforms.intensity import normalize

    generator = SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=spacing), seed=seed)
    cases = []
    for a in range(n_anatomies):
        anatomy_seed = HELDOUT_ANATOMY_SEEDS[a]
        for s in range(styles_per_anatomy):
            pair = generator.pair(anatomy_seed, style_seed=a * styles_per_anatomy + s, split="heldout")
            source = np.asarray(normalize(pair["source"][None], modality="MR")[0])[0]
            target = np.asarray(normalize(pair["target"][None], modality="MR")[0])[0]
            cases.append({
                "source": source, "target": target, "mask": head_mask(pair["target"]), "reference_input": target,
                "anatomy_seed": anatomy_seed, "style": pair["style"].name, "style_params": pair["style_params"],
            })
    return cases


def reference_volumes(anatomy_seeds: Iterable[int], spacing: float = 2.0, seed: int = 0,
                      mni_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Training anatomies in the reference style, normalized: what the classical baselines are fitted on."""
    from sgad_med.data.mni import load_mni_template
    from sgad_med.data.synthetic import REFERENCE_STYLE, SyntheticStyleGenerator
    from sgad_med.transforms.intensity import normalize

    generator = SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=spacing), seed=seed)
    volumes = [generator.volume(int(a), REFERENCE_STYLE) for a in anatomy_seeds]
    return [np.asarray(normalize(v[None], modality="MR")[0])[0] for v in volumes]


def evaluate_harmonization(methods: dict[str, Callable[[dict], np.ndarray]], cases: Sequence[dict],
                           progress: bool = True) -> dict:
    """Score each method on each case; mean and std per metric per method.

    Args:
        methods: name -> function of a case (it reads ``case["source"]``, may read the mask) returning the
            harmonized volume in reference-style [0, 1] units.
        cases: from :func:`heldout_cases`.
        progress: show a progress bar.

    Returns:
        ``{"methods": {name: {metric: {"mean", "std"}}}, "preservation": {name: MAE}, "cases": [...]}``:
        ``preservation`` is each method's MAE (inside the mask) between its output and its input on scans
        already in the reference style.
    """
    from tqdm import tqdm

    per_case: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    preservation: dict[str, list[float]] = {name: [] for name in methods}
    timings: dict[str, float] = dict.fromkeys(methods, 0.0)
    for case in tqdm(cases, desc="evaluating", unit="case", disable=not progress):
        for name, method in methods.items():
            start = time.perf_counter()
            output = np.clip(method(case), 0.0, 1.0)
            timings[name] += time.perf_counter() - start
            per_case[name].append(volume_metrics(output, case["target"], case["mask"]))
            same = np.clip(method({**case, "source": case["reference_input"]}), 0.0, 1.0)
            preservation[name].append(mae(same, case["reference_input"], case["mask"]))
    summary = {
        name: {m: {"mean": float(np.mean([r[m] for r in rows])), "std": float(np.std([r[m] for r in rows]))}
               for m in rows[0]}
        for name, rows in per_case.items()
    }
    return {
        "methods": summary,
        "preservation_mae_mask": {name: float(np.mean(v)) for name, v in preservation.items()},
        "seconds_per_case": {name: t / max(len(cases), 1) for name, t in timings.items()},
        "cases": [{"anatomy_seed": c["anatomy_seed"], "style": c["style"],
                   **{name: per_case[name][i] for name in methods}} for i, c in enumerate(cases)],
    }


COLUMNS = [("ssim_mask", "SSIM(mask)", "{:.3f}"), ("psnr_mask", "PSNR(mask)", "{:.2f}"),
           ("mae_mask", "MAE(mask)", "{:.4f}"), ("ssim", "SSIM", "{:.3f}"), ("psnr", "PSNR", "{:.2f}"),
           ("mae", "MAE", "{:.4f}"), ("wasserstein", "W1 hist", "{:.4f}")]


def format_table(results: dict) -> str:
    """One fixed-width table: a row per method, mean ± std per metric, then anatomy preservation."""
    header = f"{'method':<22}" + "".join(f"{title:>18}" for _, title, _ in COLUMNS) + f"{'MAE on ref-style':>18}"
    lines = [header, "-" * len(header)]
    for name, metrics in results["methods"].items():
        cells = "".join(f"{(fmt.format(metrics[key]['mean']) + ' ± ' + fmt.format(metrics[key]['std'])):>18}"
                        for key, _, fmt in COLUMNS)
        lines.append(f"{name:<22}{cells}{results['preservation_mae_mask'][name]:>18.4f}")
    return "\n".join(lines)


def default_real_scans() -> list[tuple[str, str, int | None]]:
    """Real scans with no truth that ship with installed packages: (name, path, 4D volume index).

    nibabel's example EPI (first volume) and the axial MR slices of pydicom's and pydicom-data's test files,
    where installed. Sagittal single slices are left out: sgad-med works on axial slices.
    """
    import nibabel
    from pydicom.data import get_testdata_file

    found = []
    epi = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    if epi.exists():
        found.append(("nibabel example4d EPI (vol 0)", str(epi), 0))
    for name in ("MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"):
        path = get_testdata_file(name)
        if path is not None:
            found.append((f"pydicom {name}", str(path), None))
    return found


def edge_agreement(output: np.ndarray, source: np.ndarray) -> float:
    """Normalized cross-correlation of the Sobel edge maps of two volumes, slice by slice (1: same edges).

    Contrast-invariant, so it measures whether anatomy stayed where it was when there is no truth to compare.
    """
    import torch

    from sgad_med.engines.losses import structure_loss

    a = torch.as_tensor(np.moveaxis(output, -1, 0)[:, None], dtype=torch.float32)
    b = torch.as_tensor(np.moveaxis(source, -1, 0)[:, None], dtype=torch.float32)
    return float(1.0 - structure_loss(a, b))


def evaluate_real_scans(harmonize01: Callable[[np.ndarray], np.ndarray], scans: Sequence[tuple[str, str, int | None]],
                        references: Sequence[np.ndarray]) -> list[dict]:
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
        rows.append({
            "scan": name, "shape": list(source.shape),
            "w1_before": float(wasserstein_distance(source[foreground], reference_voxels)),
            "w1_after": float(wasserstein_distance(output[foreground], reference_voxels)),
            "edge_ncc": edge_agreement(output, source),
        })
    return rows


def format_real_table(rows: Sequence[dict]) -> str:
    """The real-scan rows as a fixed-width table."""
    lines = [f"{'real scan (no truth)':<44}{'shape':>16}{'W1 before':>12}{'W1 after':>12}{'edge NCC':>10}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"{row['scan']:<44}{shape:>16}{row['w1_before']:>12.4f}{row['w1_after']:>12.4f}"
                     f"{row['edge_ncc']:>10.3f}")
    return "\n".join(lines)


def _inside(standardized: np.ndarray, source: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """A baseline's output on the foreground, the source's background elsewhere."""
    return np.where(foreground, standardized, source).astype(np.float32)


class HarmonizationEvaluation:
    """The harmonization evaluation run by the bundle's ``evaluate.json`` and ``sgad-med evaluate harmonizer``.

    Scores, in one run on the same held-out cases: no harmonization, histogram matching, Nyúl–Udupa, and the
    GAN. The baselines get the best reference they can: histogram matching matches each case to a
    reference-style volume of a *training* anatomy; Nyúl is fitted on reference-style training anatomies.

    Args:
        cases: from :func:`heldout_cases`.
        harmonizer: a :class:`~sgad_med.harmonizer.Harmonizer` (its ``harmonize01`` is called on normalized volumes).
        references: reference-style volumes of training anatomies (see :func:`reference_volumes`).
        output_dir: where ``harmonization_evaluation.json`` is written.
        real_scans: real scans with no truth, scored by :func:`evaluate_real_scans` (see :func:`default_real_scans`).
    """

    def __init__(self, cases: Sequence[dict], harmonizer, references: Sequence[np.ndarray],
                 output_dir: str | os.PathLike, real_scans: Sequence[tuple[str, str, int | None]] = ()) -> None:
        self.cases, self.harmonizer, self.references = list(cases), harmonizer, list(references)
        self.real_scans = list(real_scans)
        self.output_dir = Path(output_dir)
        self.results: dict | None = None

    def methods(self) -> dict[str, Callable[[dict], np.ndarray]]:
        """The methods compared, by name."""
        import torch

        reference = self.references[0]
        reference_mask = head_mask(reference)
        nyul = NyulStandardizer().fit(self.references, [head_mask(r) for r in self.references])
        # The baselines are given the true head mask as their foreground: the best mask they could have.
        return {
            "none": lambda case: identity(case["source"]),
            "histogram matching": lambda case: histogram_matching(case["source"], reference, case["mask"],
                                                                  reference_mask),
            "nyul-udupa": lambda case: _inside(nyul.transform(case["source"], case["mask"]), case["source"],
                                               case["mask"]),
            "sgad-med GAN": lambda case: self.harmonizer.harmonize01(torch.as_tensor(case["source"])).numpy(),
        }

    def run(self) -> dict:
        """Evaluate, print the table, write the JSON; returns the results."""
        from sgad_med import __version__

        results = evaluate_harmonization(self.methods(), self.cases)
        results["settings"] = {
            "cases": len(self.cases), "anatomy_seeds": sorted({c["anatomy_seed"] for c in self.cases}),
            "styles": [c["style"] for c in self.cases], "sgad_med": __version__,
            "data": "held-out anatomies (HELDOUT_ANATOMY_SEEDS) in held-out styles",
        }
        import torch

        gan = self.harmonizer.harmonize01
        results["real_scans"] = evaluate_real_scans(lambda v: gan(torch.as_tensor(v)).numpy(), self.real_scans,
                                                    self.references)
        self.results = results
        print(format_table(results))
        if results["real_scans"]:
            print()
            print(format_real_table(results["real_scans"]))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "harmonization_evaluation.json").write_text(json.dumps(results, indent=2))
        return results
