"""The held-out evaluation of slice restoration against classical restoration.

Every figure the ``slice_restoration`` bundle's docs quote comes from :class:`RestorationEvaluation` (bundle
``evaluate.json``, ``sgad-med evaluate restorer``), which scores, in one run on the same damaged slices:

- ``corrupted``: the damaged slice itself (no restoration, the floor);
- ``network``: the restorer (:class:`~sgad_med.networks.SliceRestorationNet`) on the 2.5D stack;
- ``nl_means``: :func:`skimage.restoration.denoise_nl_means` of the damaged slice, with skimage's documented
  recipe (``h = 0.8 sigma``, 5 x 5 patches, search distance 6, fast mode); ``sigma`` is estimated as
  :func:`skimage.restoration.estimate_sigma` does (the median absolute finest diagonal wavelet detail / 0.6745,
  Donoho & Johnstone), with a Haar wavelet computed here, since PyWavelets is not a dependency (see
  :func:`noise_sigma`); nothing tuned;
- ``tv_chambolle``: :func:`skimage.restoration.denoise_tv_chambolle` with its default weight 0.1;
- ``inpaint_biharmonic``: :func:`skimage.restoration.inpaint_biharmonic` of the dropped region, for the
  dropout-type kinds only (:data:`DROPOUT_KINDS`); the region is found without the truth, from the stack: the
  pixels that are exactly 0 in the damaged slice while both nearest neighbours are above 0.05 (signal is
  expected there and there is none), opened by 3 x 3 and dilated by one pixel (:func:`dropped_region`);
- ``interpolation``: the mean of the two nearest neighbouring slices (linear interpolation at the centre).

Cases (:func:`restoration_cases`): held-out anatomies (``HELDOUT_ANATOMY_SEEDS``) in held-out styles
(``split="heldout"``), normalized as a real MR scan is, a few head-containing slices each. Each slice is damaged
with every artifact kind at every severity (the neighbours are left clean), from a seed fixed by the case, the
kind and the severity. Metrics are computed on the unpadded slice against the clean truth, inside the head mask
(``psnr_mask``, ``ssim_mask``: the voxels of :func:`~sgad_med.evaluation.harmonization.head_mask` of the same
anatomy in the reference style, never derived from a method's output) and over the whole slice (``psnr``,
``ssim``). The table shows the in-mask figures; the JSON has both. The quality bar is judged on the in-mask
figures at the moderate severity (0.5). The "clean slice" check restores the *undamaged* slices and reports
how much each method changes them (MAE, in mask and whole slice).

A second section, :func:`evaluate_real_scans` (printed by :func:`format_real_scans_table`, JSON key
``"real_scans"``), does the same on real multi-slice MR scans that ship with installed packages (nibabel's example
EPI, pydicom-data's multi-frame ``emri_small.dcm``; see :mod:`sgad_med.evaluation.real_scans`): they have no
truth, so a few of their slices are damaged at severity 0.5 and the methods are scored against the original
slice, inside the foreground mask ``original > 0.05`` and over the whole slice.

Nothing here is fitted or tuned on these cases.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, inpaint_biharmonic
from tqdm import tqdm

from sgad_med.evaluation.heldout import check_protocol_normalization, heldout_pairs, synthetic_pairs
from sgad_med.evaluation.metrics import mae, psnr, ssim_map
from sgad_med.transforms.artifacts import ARTIFACT_KINDS, ARTIFACTS

__all__ = [
    "CLASSICAL_METHODS",
    "DROPOUT_KINDS",
    "METHODS",
    "MODERATE_SEVERITY",
    "SEVERITIES",
    "REAL_SCAN_SEVERITY",
    "RestorationEvaluation",
    "damage_stacks",
    "dropped_region",
    "evaluate_real_scans",
    "evaluate_restoration",
    "format_real_scans_table",
    "format_restoration_table",
    "inpaint_dropout",
    "interpolate_neighbours",
    "network_method",
    "nl_means",
    "noise_sigma",
    "quality_bar",
    "real_scan_cases",
    "restoration_cases",
    "tv_chambolle",
]

#: Severities evaluated; the first table is at :data:`MODERATE_SEVERITY`.
SEVERITIES: tuple[float, ...] = (0.25, 0.5, 0.75)
#: "Moderate" severity, at which the quality bar is judged.
MODERATE_SEVERITY = 0.5
#: Severity of the simulated damage on real scans.
REAL_SCAN_SEVERITY = 0.5
#: Kinds that zero a region of the slice: ``inpaint_biharmonic`` is scored on these only.
DROPOUT_KINDS: tuple[str, ...] = ("dropout",)
#: Methods in table order.
METHODS: tuple[str, ...] = ("corrupted", "network", "nl_means", "tv_chambolle", "inpaint_biharmonic", "interpolation")
#: The classical restoration methods the network is compared with.
CLASSICAL_METHODS: tuple[str, ...] = ("nl_means", "tv_chambolle", "inpaint_biharmonic", "interpolation")
_METRICS = ("psnr_mask", "ssim_mask", "psnr", "ssim")


# ----------------------------------------------------------------------------------------------------------------
# classical restoration
# ----------------------------------------------------------------------------------------------------------------


def noise_sigma(slice2d: np.ndarray) -> float:
    """Gaussian noise level of a slice: median absolute diagonal Haar detail / 0.6745 (Donoho & Johnstone 1994).

    What :func:`skimage.restoration.estimate_sigma` computes (with a Daubechies wavelet via PyWavelets); the Haar
    diagonal detail of each 2 x 2 block is ``(a - b - c + d) / 2``.
    """
    image = np.asarray(slice2d, dtype=np.float64)
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    x = image[:h, :w]
    detail = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(detail)) / 0.6745)


def nl_means(slice2d: np.ndarray) -> np.ndarray:
    """Non-local means of one slice (skimage's recipe: ``h = 0.8 sigma``, 5 x 5 patches, distance 6, fast mode).

    Args:
        slice2d: the damaged slice in [0, 1].

    Returns:
        float32 slice of the same shape.
    """
    image = np.asarray(slice2d, dtype=np.float64)
    sigma = noise_sigma(image)
    if sigma <= 0.0:  # a noise-free (or flat) slice: nothing to denoise
        return np.clip(image, 0.0, 1.0).astype(np.float32)
    out = denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def tv_chambolle(slice2d: np.ndarray, weight: float = 0.1) -> np.ndarray:
    """Total-variation denoising of one slice (Chambolle's algorithm, skimage's default weight 0.1).

    Args:
        slice2d: the damaged slice in [0, 1].
        weight: denoising weight.

    Returns:
        float32 slice of the same shape.
    """
    out = denoise_tv_chambolle(np.asarray(slice2d, dtype=np.float64), weight=weight)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def interpolate_neighbours(stack: np.ndarray, context: int) -> np.ndarray:
    """Linear interpolation of the centre slice from its two nearest neighbours: their mean.

    Args:
        stack: ``[2c+1, H, W]``, slice ``context`` the centre.
        context: neighbours on each side (at least 1).

    Returns:
        float32 ``[H, W]``.
    """
    if context < 1:
        raise ValueError("interpolation needs at least one neighbour on each side (context >= 1)")
    stack = np.asarray(stack, dtype=np.float32)
    return 0.5 * (stack[context - 1] + stack[context + 1])


def dropped_region(stack: np.ndarray, context: int, threshold: float = 0.05) -> np.ndarray:
    """Where signal was dropped from the centre slice, found from the stack alone (no truth).

    A pixel is dropped when it is exactly 0 in the centre slice while both nearest neighbours are above
    ``threshold`` there (anatomy is expected and there is none). Thin rims and isolated pixels (the edge of a
    head that shrinks from slice to slice, dark tissue clipped to 0) are removed by a 3 x 3 opening, and the
    region is dilated by one pixel so that the inpainting starts from undamaged pixels.

    Args:
        stack: ``[2c+1, H, W]`` in [0, 1], slice ``context`` the damaged one.
        context: neighbours on each side (at least 1).
        threshold: neighbour intensity above which a zero in the centre slice counts as dropped.

    Returns:
        Boolean ``[H, W]`` mask (all False when nothing was dropped).
    """
    stack = np.asarray(stack, dtype=np.float32)
    expected = np.minimum(stack[context - 1], stack[context + 1]) > threshold
    region = ndimage.binary_opening((stack[context] == 0.0) & expected, structure=np.ones((3, 3), bool))
    return ndimage.binary_dilation(region) if region.any() else region


def inpaint_dropout(stack: np.ndarray, context: int) -> np.ndarray:
    """Biharmonic inpainting of the dropped region of the centre slice (:func:`dropped_region`).

    Args:
        stack: ``[2c+1, H, W]`` in [0, 1].
        context: neighbours on each side.

    Returns:
        float32 ``[H, W]``: the centre slice, with the dropped region inpainted (unchanged when there is none).
    """
    stack = np.asarray(stack, dtype=np.float32)
    centre = stack[context]
    region = dropped_region(stack, context)
    if not region.any() or region.all():
        return centre.copy()
    return np.clip(inpaint_biharmonic(centre.astype(np.float64), region), 0.0, 1.0).astype(np.float32)


def network_method(restorer: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The restoration network as a method on stacks: ``[N, 2c+1, H, W] -> [N, H, W]`` (clamped to [0, 1]).

    Args:
        restorer: a :class:`~sgad_med.restorer.SliceRestorer` (its network, device, inferer, batch size and
            padding multiple are used).

    Returns:
        The function, working in batches of ``restorer.batch_size``.
    """
    from sgad_med.transforms.slices import pad_to_multiple, unpad

    @torch.no_grad()
    def restore(stacks: np.ndarray) -> np.ndarray:
        stacks_t = torch.as_tensor(np.asarray(stacks, dtype=np.float32))
        outs = []
        for start in range(0, len(stacks_t), restorer.batch_size):
            batch, pads = pad_to_multiple(stacks_t[start : start + restorer.batch_size], restorer.multiple)
            pred = restorer.inferer(batch.to(restorer.device), restorer.network)
            outs.append(unpad(pred.float(), pads)[:, 0].clamp(0.0, 1.0).cpu())
        return torch.cat(outs).numpy()

    return restore


# ----------------------------------------------------------------------------------------------------------------
# cases and the evaluation
# ----------------------------------------------------------------------------------------------------------------


def restoration_cases(
    n_anatomies: int = 8,
    styles_per_anatomy: int = 1,
    slices_per_volume: int = 4,
    context: int = 2,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
    min_foreground: float = 0.2,
    anatomy_seeds: Sequence[int] | None = None,
    split: str = "heldout",
) -> list[dict]:
    """Clean held-out slices with their neighbours: held-out anatomies in held-out styles.

    Anatomy ``a`` is ``HELDOUT_ANATOMY_SEEDS[a]``, rendered in held-out style seed ``a * styles_per_anatomy + s``
    and normalized as a real MR scan is at inference; ``slices_per_volume`` slices whose head fraction is at
    least ``min_foreground`` are drawn (deterministically from ``seed``).

    Args:
        n_anatomies: held-out anatomies (at most ``len(HELDOUT_ANATOMY_SEEDS)``).
        styles_per_anatomy: held-out styles per anatomy.
        slices_per_volume: slices drawn per volume.
        context: neighbours on each side of a slice.
        spacing: voxel size in mm.
        seed: the generator's seed and the slice draw's.
        mni_dir: folder of the MNI template (``None``: searched).
        min_foreground: smallest head fraction of a slice drawn.
        anatomy_seeds: other anatomies instead (with ``split``): e.g. training-pool seeds no training run uses in
            ``"validation"`` styles, to compare weights without the held-out set.
        split: the styles' split when ``anatomy_seeds`` is given.

    Returns:
        One dict per slice: ``stack`` float32 ``[2c+1, H, W]`` (clean), ``mask`` bool ``[H, W]`` (head, from the
        reference-style rendering), ``anatomy_seed``, ``style_seed``, ``style``, ``slice``.
    """
    from sgad_med.data.slices import choose_slices
    from sgad_med.evaluation.harmonization import head_mask
    from sgad_med.transforms.intensity import normalize
    from sgad_med.transforms.slices import slice_stacks

    if styles_per_anatomy < 1 or slices_per_volume < 1 or context < 1:
        raise ValueError("styles_per_anatomy, slices_per_volume and context must be >= 1")
    cases = []
    pairs = (heldout_pairs(n_anatomies, styles_per_anatomy, spacing=spacing, seed=seed, mni_dir=mni_dir)
             if anatomy_seeds is None else
             synthetic_pairs(anatomy_seeds, split, styles_per_anatomy, spacing=spacing, seed=seed, mni_dir=mni_dir))
    for pair in pairs:
        anatomy_seed, style_seed = pair["anatomy_seed"], pair["style_seed"]
        volume01 = np.asarray(normalize(pair["source"][None], modality="MR")[0])[0].astype(np.float32)
        mask = head_mask(pair["target"])
        chosen = choose_slices(mask.mean(axis=(0, 1)), min_foreground, slices_per_volume, [seed, style_seed])
        stacks = slice_stacks(volume01, context, chosen).numpy()
        for k, stack in zip(chosen, stacks):
            cases.append({"stack": stack, "mask": mask[..., int(k)], "anatomy_seed": anatomy_seed,
                          "style_seed": style_seed, "style": pair["style"].name, "slice": int(k)})
    return cases


def _scores(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    full = ssim_map(output, truth)
    return {"psnr_mask": psnr(output, truth, mask), "ssim_mask": float(full[mask].mean()),
            "psnr": psnr(output, truth), "ssim": float(full.mean())}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in _METRICS} | {"n": len(rows)}


def damage_stacks(clean: np.ndarray, kind: str, severity: float, context: int, seed: int = 0) -> np.ndarray:
    """A copy of clean stacks ``[N, 2c+1, H, W]`` with the centre slice of each damaged; the neighbours clean.

    Stack ``i`` uses the generator seeded with ``[seed, i, ARTIFACT_KINDS.index(kind), round(1000 severity)]``.

    Args:
        clean: float32 stacks, slice ``context`` the centre.
        kind: artifact kind (a key of :data:`~sgad_med.transforms.artifacts.ARTIFACTS`).
        severity: strength in [0, 1].
        context: neighbours on each side.
        seed: seed of the damage.

    Returns:
        float32 ``[N, 2c+1, H, W]``.
    """
    damaged = np.array(clean, dtype=np.float32, copy=True)
    for i in range(len(damaged)):
        rng = np.random.default_rng([seed, i, ARTIFACT_KINDS.index(kind), round(1000 * severity)])
        damaged[i, context] = ARTIFACTS[kind](damaged[i, context].copy(), severity, rng)
    return damaged


def evaluate_restoration(
    cases: Sequence[dict],
    restore_stacks: Callable[[np.ndarray], np.ndarray],
    kinds: Sequence[str] = ARTIFACT_KINDS,
    severities: Sequence[float] = SEVERITIES,
    context: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Every method on every case, artifact kind and severity, and the clean-slice check.

    Slice ``i`` damaged with kind ``kinds[j]`` at severity ``s`` uses the generator seeded with
    ``[seed, i, ARTIFACT_KINDS.index(kind), round(1000 s)]``, so every method sees the same damage and a run is
    reproducible.

    Args:
        cases: from :func:`restoration_cases`.
        restore_stacks: the network as a method on stacks (see :func:`network_method`).
        kinds: artifact kinds.
        severities: severities in [0, 1].
        context: neighbours on each side in the cases' stacks.
        seed: seed of the damage.
        progress: show a progress bar.

    Returns:
        ``{"severities": {"0.5": {"per_kind": {kind: {method: metrics}}, "mean": {method: metrics}}, ...},
        "clean_slice": {method: {"mae_mask", "mae"}}}``; metrics are means over slices of ``psnr_mask``,
        ``ssim_mask``, ``psnr``, ``ssim`` and ``n``, and a "mean" is over kinds.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to evaluate")
    unknown = sorted(set(kinds) - set(ARTIFACT_KINDS))
    if unknown:
        raise ValueError(f"unknown artifact kinds {unknown}; known: {ARTIFACT_KINDS}")
    clean = np.stack([c["stack"] for c in cases]).astype(np.float32)
    truths = clean[:, context]
    results: dict[str, Any] = {"severities": {}}
    jobs = [(float(s), kind) for s in severities for kind in kinds]
    for severity, kind in tqdm(jobs, desc="kinds x severities", disable=not progress):
        damaged = damage_stacks(clean, kind, severity, context, seed)
        outputs = {"corrupted": damaged[:, context], "network": restore_stacks(damaged)}
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        for i, case in enumerate(cases):
            stack = damaged[i]
            per_method = {
                "corrupted": outputs["corrupted"][i],
                "network": outputs["network"][i],
                "nl_means": nl_means(stack[context]),
                "tv_chambolle": tv_chambolle(stack[context]),
                "interpolation": interpolate_neighbours(stack, context),
            }
            if kind in DROPOUT_KINDS:
                per_method["inpaint_biharmonic"] = inpaint_dropout(stack, context)
            for method, output in per_method.items():
                rows[method].append(_scores(output, truths[i], case["mask"]))
        entry = results["severities"].setdefault(f"{severity:g}", {"per_kind": {}, "mean": {}})
        entry["per_kind"][kind] = {m: _summary(r) for m, r in rows.items() if r}
    for entry in results["severities"].values():
        for method in METHODS:
            summaries = [per[method] for per in entry["per_kind"].values() if method in per]
            if summaries:
                entry["mean"][method] = {key: float(np.mean([s[key] for s in summaries])) for key in _METRICS}
                entry["mean"][method]["kinds"] = len(summaries)
    results["clean_slice"] = _clean_slice_check(cases, clean, truths, restore_stacks, context)
    return results


def _clean_slice_check(cases: list[dict], clean: np.ndarray, truths: np.ndarray,
                       restore_stacks: Callable[[np.ndarray], np.ndarray], context: int) -> dict[str, dict]:
    """How much each method changes slices that were not damaged (MAE, in mask and whole slice)."""
    outputs = {
        "network": restore_stacks(clean),
        "nl_means": np.stack([nl_means(t) for t in truths]),
        "tv_chambolle": np.stack([tv_chambolle(t) for t in truths]),
        "inpaint_biharmonic": np.stack([inpaint_dropout(s, context) for s in clean]),
        "interpolation": np.stack([interpolate_neighbours(s, context) for s in clean]),
    }
    return {
        method: {
            "mae_mask": float(np.mean([mae(o, t, c["mask"]) for o, t, c in zip(out, truths, cases)])),
            "mae": float(np.mean([mae(o, t) for o, t in zip(out, truths)])),
        }
        for method, out in outputs.items()
    }


def quality_bar(results: dict, severity: float = MODERATE_SEVERITY) -> dict:
    """The issue's quality bar, judged on the in-mask figures at ``severity``.

    - mean PSNR over kinds at least 6 dB above the corrupted input's;
    - per kind, PSNR at least 2 dB above the best classical method's;
    - per kind, SSIM above every classical method's;
    - restoring a clean slice changes it by MAE (in mask) at most 0.01.

    Args:
        results: what :func:`evaluate_restoration` returned.
        severity: the severity judged (must be one evaluated).

    Returns:
        Each check's figures, the kinds failing it and whether it passed, and ``passed`` overall.
    """
    entry = results["severities"][f"{severity:g}"]
    mean = entry["mean"]
    gain = mean["network"]["psnr_mask"] - mean["corrupted"]["psnr_mask"]
    psnr_margin, ssim_margin = {}, {}
    for kind, per in entry["per_kind"].items():
        classical = [m for m in CLASSICAL_METHODS if m in per]
        psnr_margin[kind] = per["network"]["psnr_mask"] - max(per[m]["psnr_mask"] for m in classical)
        ssim_margin[kind] = per["network"]["ssim_mask"] - max(per[m]["ssim_mask"] for m in classical)
    clean_mae = results["clean_slice"]["network"]["mae_mask"]
    checks = {
        "psnr_gain_over_corrupted_db": {"value": gain, "required": 6.0, "passed": gain >= 6.0},
        "psnr_margin_over_best_classical_db": {
            "per_kind": psnr_margin, "required": 2.0,
            "failing": sorted(k for k, v in psnr_margin.items() if v < 2.0),
        },
        "ssim_margin_over_best_classical": {
            "per_kind": ssim_margin, "required": 0.0,
            "failing": sorted(k for k, v in ssim_margin.items() if v <= 0.0),
        },
        "clean_slice_mae": {"value": clean_mae, "required": 0.01, "passed": clean_mae <= 0.01},
    }
    for key in ("psnr_margin_over_best_classical_db", "ssim_margin_over_best_classical"):
        checks[key]["passed"] = not checks[key]["failing"]
    checks["passed"] = all(check["passed"] for check in checks.values())
    checks["severity"] = severity
    return checks


_SHORT = {"corrupted": "input", "network": "network", "nl_means": "NLmeans", "tv_chambolle": "TV",
          "inpaint_biharmonic": "inpaint", "interpolation": "interp"}


def _row(label: str, per: dict, width: int) -> str:
    cells = []
    for method in METHODS:
        if method in per:
            cells.append(f"{per[method]['psnr_mask']:>7.2f} {per[method]['ssim_mask']:>5.3f}")
        else:
            cells.append(f"{'-':>7} {'-':>5}")
    return f"{label:<{width}}" + "".join(f"{c:>15}" for c in cells)


def format_restoration_table(results: dict, severity: float = MODERATE_SEVERITY) -> str:
    """One fixed-width table: per kind at ``severity``, then the mean over kinds at every severity, the
    clean-slice check and the quality bar. Each cell is ``PSNR SSIM`` inside the head mask.

    Args:
        results: what :func:`evaluate_restoration` returned, with ``quality_bar`` (or its JSON round trip).
        severity: the severity of the per-kind rows.

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    width = max(len(k) for k in ARTIFACT_KINDS) + 14
    header = f"{'kind (PSNR dB / SSIM in mask)':<{width}}" + "".join(f"{_SHORT[m]:>15}" for m in METHODS)
    lines = [header, "-" * len(header)]
    entry = results["severities"][f"{severity:g}"]
    for kind, per in entry["per_kind"].items():
        lines.append(_row(f"{kind} @{severity:g}", per, width))
    lines.append("-" * len(header))
    for key, other in results["severities"].items():
        lines.append(_row(f"mean @{key}", other["mean"], width))
    lines.append("-" * len(header))
    clean = results["clean_slice"]
    cells = [f"{'-':>15}"] + [f"{clean[m]['mae_mask']:>15.4f}" if m in clean else f"{'-':>15}" for m in METHODS[1:]]
    lines.append(f"{'clean slice: MAE in mask':<{width}}" + "".join(cells))
    bar = results.get("quality_bar")
    if bar is not None:
        lines.append("")
        gain = bar["psnr_gain_over_corrupted_db"]
        lines.append(f"quality bar @{bar['severity']:g}: PSNR gain over input {gain['value']:.2f} dB (>= 6): "
                     f"{'pass' if gain['passed'] else 'FAIL'}")
        for key, text in (("psnr_margin_over_best_classical_db", "PSNR >= best classical + 2 dB"),
                          ("ssim_margin_over_best_classical", "SSIM > every classical")):
            failing = bar[key]["failing"]
            lines.append(f"  {text}: {'pass' if not failing else 'FAIL on ' + ', '.join(failing)}")
        clean_mae = bar["clean_slice_mae"]
        verdict = "pass" if clean_mae["passed"] else "FAIL"
        lines.append(f"  clean-slice MAE {clean_mae['value']:.4f} (<= 0.01): {verdict}")
        lines.append(f"  overall: {'pass' if bar['passed'] else 'FAIL'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# real scans (no truth: presumed clean, damage simulated)
# ----------------------------------------------------------------------------------------------------------------


def real_scan_cases(
    volumes: Sequence[dict],
    slices_per_volume: int = 4,
    context: int = 2,
    seed: int = 0,
    min_foreground: float = 0.2,
    min_gap: int = 3,
) -> list[dict]:
    """Clean slices of real volumes with their neighbours, in the form :func:`evaluate_restoration` takes.

    From each volume, up to ``slices_per_volume`` slices at least ``min_gap`` apart whose foreground
    (``> 0.05``, from the scan itself: there is no truth mask) is at least ``min_foreground`` of the slice, with
    ``context`` real neighbours on each side (no slice repeated at the volume's ends); drawn deterministically.

    Args:
        volumes: from :func:`~sgad_med.evaluation.real_scans.load_real_volumes` (dicts with ``name``, ``volume``).
        slices_per_volume: slices drawn per volume.
        context: neighbours on each side.
        seed: seed of the draw.
        min_foreground: smallest foreground fraction of a slice drawn.
        min_gap: smallest distance between two slices drawn from one volume.

    Returns:
        One dict per slice: ``stack`` float32 ``[2c+1, H, W]`` (clean), ``mask`` bool ``[H, W]`` (the original
        slice ``> 0.05``), ``scan`` (the volume's name), ``slice``.
    """
    from sgad_med.evaluation.detection import corrupted_slices_for
    from sgad_med.evaluation.real_scans import FOREGROUND_THRESHOLD
    from sgad_med.transforms.slices import slice_stacks

    if slices_per_volume < 1 or context < 1:
        raise ValueError("slices_per_volume and context must be >= 1")
    cases = []
    for v, item in enumerate(volumes):
        volume = np.asarray(item["volume"], dtype=np.float32)
        foreground = volume > FOREGROUND_THRESHOLD
        eligible = foreground.mean(axis=(0, 1)) >= min_foreground
        eligible[:context] = False
        eligible[volume.shape[-1] - context:] = False
        chosen = corrupted_slices_for(eligible, slices_per_volume, min_gap, [seed, 7_000 + v])
        if chosen.size == 0:
            continue
        stacks = slice_stacks(volume, context, chosen).numpy()
        for k, stack in zip(chosen, stacks):
            cases.append({"stack": stack, "mask": foreground[..., int(k)], "scan": str(item["name"]),
                          "slice": int(k)})
    return cases


def evaluate_real_scans(
    volumes: Sequence[dict],
    restore_stacks: Callable[[np.ndarray], np.ndarray],
    kinds: Sequence[str] = ARTIFACT_KINDS,
    severity: float = REAL_SCAN_SEVERITY,
    slices_per_volume: int = 4,
    context: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> dict | None:
    """Restoration on real scans, which have no truth: simulated damage, scored against the original real slice.

    A few slices of each real volume (:func:`real_scan_cases`) are damaged with each kind at ``severity``, the
    neighbours left clean, and restored by every method of :func:`evaluate_restoration` (the network, the
    classical methods, neighbour interpolation); PSNR and SSIM against the original slice, inside the foreground
    mask ``original > 0.05`` (``psnr_mask``, ``ssim_mask``) and over the whole slice (``psnr``, ``ssim``), per
    kind pooled over the scans' slices, and the mean over kinds; and the clean-slice check (MAE of restoring the
    untouched slices, in mask and whole slice). The scans are presumed clean.

    Args:
        volumes: from :func:`~sgad_med.evaluation.real_scans.load_real_volumes`.
        restore_stacks: the network as a method on stacks (see :func:`network_method`).
        kinds: artifact kinds.
        severity: severity of the simulated damage.
        slices_per_volume: damaged slices per volume.
        context: neighbours on each side (the network's).
        seed: seed of the slice draw and the damage.
        progress: show a progress bar.

    Returns:
        ``{"scans": [{"name", "modality", "shape", "slices"}], "severity", "kinds", "per_kind": {kind: {method:
        metrics}}, "mean": {method: metrics}, "clean_slice": {method: {"mae_mask", "mae"}}, "mask", "notes",
        "seconds"}`` (metrics as in :func:`evaluate_restoration`), or ``None`` when there are no volumes.
    """
    volumes = list(volumes)
    if not volumes:
        return None
    start = time.perf_counter()
    key = f"{float(severity):g}"
    scans, per_scan = [], []
    for v, item in enumerate(volumes):
        # scans differ in size: each is evaluated on its own (its own damage seed), then the slices are pooled
        cases = real_scan_cases([item], slices_per_volume, context, seed)
        scans.append({"name": str(item["name"]), "modality": str(item.get("modality", "")),
                      "shape": [int(n) for n in np.asarray(item["volume"]).shape],
                      "slices": [c["slice"] for c in cases]})
        if cases:
            scan_seed = int(np.random.SeedSequence([int(seed), 7_000 + v]).generate_state(1)[0])
            per_scan.append((len(cases), evaluate_restoration(cases, restore_stacks, kinds, [float(severity)],
                                                              context, scan_seed, progress)))
    if not per_scan:
        raise ValueError("no real volume has a slice with enough foreground and neighbours to damage")
    per_kind: dict[str, dict] = {}
    for kind in kinds:
        per_kind[kind] = {}
        for method in METHODS:
            parts = [r["severities"][key]["per_kind"][kind][method] for _, r in per_scan
                     if method in r["severities"][key]["per_kind"][kind]]
            if parts:
                n = sum(p["n"] for p in parts)
                per_kind[kind][method] = {m: float(sum(p[m] * p["n"] for p in parts) / n) for m in _METRICS}
                per_kind[kind][method]["n"] = n
    mean: dict[str, dict] = {}
    for method in METHODS:
        summaries = [per[method] for per in per_kind.values() if method in per]
        if summaries:
            mean[method] = {m: float(np.mean([s[m] for s in summaries])) for m in _METRICS} | {"kinds": len(summaries)}
    total = sum(n for n, _ in per_scan)
    clean_slice = {
        method: {m: float(sum(r["clean_slice"][method][m] * n for n, r in per_scan) / total)
                 for m in ("mae_mask", "mae")}
        for method in per_scan[0][1]["clean_slice"]
    }
    return {
        "scans": scans,
        "severity": f"{float(severity):g}",
        "kinds": list(kinds),
        "per_kind": per_kind,
        "mean": mean,
        "clean_slice": clean_slice,
        "mask": "foreground of the original real slice: intensity > 0.05 (normalized); *_mask metrics inside it, "
        "the others over the whole slice",
        "notes": "real scans with no truth, presumed clean; the original slice is the reference. Damage simulated "
        f"at severity {float(severity):g} on the centre slice of each stack, neighbours left clean; per kind pooled "
        "over the scans' slices (means weighted by slices), 'mean' over kinds.",
        "seconds": time.perf_counter() - start,
    }


def format_real_scans_table(results: dict) -> str:
    """The real-scan section (:func:`evaluate_real_scans`) as a fixed-width table titled with the scans' names.

    Per kind, ``PSNR SSIM`` inside the foreground mask (original slice > 0.05), the mean over kinds in mask and
    over the whole slice, and the clean-slice MAE in mask and over the whole slice.

    Args:
        results: what :func:`evaluate_real_scans` returned (or its JSON round trip).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    width = max(len(k) for k in ARTIFACT_KINDS) + 14
    scans = ", ".join(f"{s['name']} ({len(s['slices'])} slices)" for s in results["scans"])
    severity = results["severity"]
    header = f"{'kind (PSNR dB / SSIM in mask)':<{width}}" + "".join(f"{_SHORT[m]:>15}" for m in METHODS)
    lines = [f"real scans (no truth; reference: the original slice): {scans}",
             f"simulated damage at severity {severity}; mask: original slice > 0.05", header, "-" * len(header)]
    for kind, per in results["per_kind"].items():
        lines.append(_row(f"{kind} @{severity}", per, width))
    lines.append("-" * len(header))
    lines.append(_row(f"mean @{severity}", results["mean"], width))
    whole = {m: {"psnr_mask": v["psnr"], "ssim_mask": v["ssim"]} for m, v in results["mean"].items()}
    lines.append(_row(f"mean @{severity} whole slice", whole, width))
    lines.append("-" * len(header))
    clean = results["clean_slice"]
    for key, title in (("mae_mask", "clean slice: MAE in mask"), ("mae", "clean slice: MAE whole")):
        cells = [f"{'-':>15}"] + [f"{clean[m][key]:>15.4f}" if m in clean else f"{'-':>15}" for m in METHODS[1:]]
        lines.append(f"{title:<{width}}" + "".join(cells))
    return "\n".join(lines)


class RestorationEvaluation:
    """The restoration evaluation run by the bundle's ``evaluate.json`` and ``sgad-med evaluate restorer``.

    Prints one table (:func:`format_restoration_table`) and writes every figure to
    ``<output_dir>/restoration_evaluation.json``.

    Args:
        cases: from :func:`restoration_cases`.
        restorer: a :class:`~sgad_med.restorer.SliceRestorer` (or anything :func:`network_method` accepts).
        output_dir: where the JSON goes.
        kinds: artifact kinds evaluated.
        severities: severities evaluated (must include ``moderate``).
        moderate: the severity of the per-kind rows and of the quality bar.
        context: neighbours on each side in the cases' stacks.
        seed: seed of the damage.
        settings: extra settings recorded in the JSON (e.g. the case sizes).
        real_scans: also evaluate on real scans (:func:`evaluate_real_scans`, at severity 0.5 with the same kinds,
            printed as a second table, JSON key ``"real_scans"``): ``True`` for
            :func:`~sgad_med.evaluation.real_scans.default_real_volumes`, a sequence of (name, path, volume index)
            for others, ``False`` (or empty) for none.
        real_slices_per_volume: damaged slices per real volume.
    """

    def __init__(self, cases: Sequence[dict], restorer: Any, output_dir: str | os.PathLike,
                 kinds: Sequence[str] = ARTIFACT_KINDS, severities: Sequence[float] = SEVERITIES,
                 moderate: float = MODERATE_SEVERITY, context: int = 2, seed: int = 0,
                 settings: dict | None = None, real_scans: bool | Sequence[tuple[str, str, int | None]] = True,
                 real_slices_per_volume: int = 4) -> None:
        if float(moderate) not in [float(s) for s in severities]:
            raise ValueError(f"the moderate severity {moderate} must be one of the severities {list(severities)}")
        self.cases, self.restorer = list(cases), restorer
        self.output_dir = Path(output_dir)
        self.kinds, self.severities = list(kinds), [float(s) for s in severities]
        self.moderate, self.context, self.seed = float(moderate), int(context), int(seed)
        self.settings = dict(settings or {})
        self.real_scans, self.real_slices_per_volume = real_scans, int(real_slices_per_volume)
        self.results: dict | None = None

    def real_scan_list(self) -> list[tuple[str, str, int | None]]:
        """The real scans evaluated, as (name, path, volume index), from the ``real_scans`` option."""
        from sgad_med.evaluation.real_scans import resolve_real_scans

        return resolve_real_scans(self.real_scans)

    def run(self) -> dict:
        """Evaluate, print the tables, write the JSON; returns the results."""
        from sgad_med import __version__
        from sgad_med.evaluation.real_scans import load_real_volumes

        start = time.perf_counter()
        check_protocol_normalization(self.restorer)
        restore = self.restorer if callable(self.restorer) and not hasattr(self.restorer, "network") else \
            network_method(self.restorer)
        results = evaluate_restoration(self.cases, restore, self.kinds, self.severities, self.context, self.seed,
                                       progress=True)
        results["quality_bar"] = quality_bar(results, self.moderate)
        results["real_scans"] = evaluate_real_scans(
            load_real_volumes(self.real_scan_list()), restore, self.kinds, REAL_SCAN_SEVERITY,
            self.real_slices_per_volume, self.context, self.seed, progress=True,
        )
        results["settings"] = {
            **self.settings,
            "slices": len(self.cases),
            "anatomy_seeds": sorted({int(c["anatomy_seed"]) for c in self.cases}),
            "styles": sorted({str(c["style"]) for c in self.cases}),
            "kinds": self.kinds,
            "severities": self.severities,
            "moderate": self.moderate,
            "seed": self.seed,
            "dropout_kinds": list(DROPOUT_KINDS),
            "metrics": "psnr_mask/ssim_mask inside the head mask, psnr/ssim over the whole slice; neighbours clean",
            "sgad_med": __version__,
            "wall_s": round(time.perf_counter() - start, 1),
        }
        self.results = results
        print(format_restoration_table(results, self.moderate))
        if results["real_scans"] is not None:
            print()
            print(format_real_scans_table(results["real_scans"]))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "restoration_evaluation.json").write_text(json.dumps(results, indent=2))
        return results
