"""Evaluation of the whole pipeline on held-out synthetic scans with known corrupted slices.

Each case is a held-out anatomy in a held-out style (as the harmonization and detection evaluations draw them),
in an MR-like scale, with a few head slices corrupted by the artifact transforms (kinds in turn, at one
severity). The pipeline runs on the corrupted scan as on a real one; its outputs are compared, in the
normalized units the networks work in, with the truth: the same anatomy in the reference style.

Reported:

- detection: the fraction of corrupted slices flagged (per kind and overall), the fraction of clean head slices
  flagged, and how many of those the detector blamed on harmonization (cause ``"harmonization"``);
- restoration, on the corrupted slices: the mean absolute error to the truth of the harmonized slice (no
  restoration), of the pipeline's corrected slice, and of a classical baseline with perfect detection (the mean of
  the two harmonized neighbours);
- that every slice neither restored nor taking the fallback is identical in the corrected and the harmonized volumes.
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

from sgad_med.evaluation.detection import corrupted_slices_for, head_slices
from sgad_med.evaluation.heldout import check_protocol_normalization, heldout_pairs, normalize_mr

DEFAULT_KINDS = ("spike", "stripes", "signal_loss", "motion", "checkerboard", "blob")
MR_SCALE = 1000.0  # synthetic volumes are in [0, 1]; scans arrive in scanner units


def pipeline_cases(
    n_anatomies: int = 4,
    styles_per_anatomy: int = 1,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
    min_foreground: float = 0.1,
) -> list[dict]:
    """Held-out anatomies in held-out styles, with their reference-style truth.

    Args:
        n_anatomies: how many held-out anatomies (``HELDOUT_ANATOMY_SEEDS[0:n]``).
        styles_per_anatomy: held-out styles per anatomy (style seeds ``a * styles_per_anatomy + s``).
        spacing: voxel size in mm (2.0 for evaluation; 8.0 for quick tests).
        seed: the generator's global seed.
        mni_dir: folder of the MNI template (``None``: searched).
        min_foreground: head fraction from which a slice counts as head.

    Returns:
        One dict per case: ``source`` (float32 ``[H, W, D]`` in MR-like units), ``truth01`` (the reference-style
        rendering, normalized as at inference), ``head`` (bool ``[D]``), ``affine``, ``anatomy_seed``,
        ``style_seed``, ``style``.
    """
    from sgad_med.evaluation.harmonization import head_mask

    cases = []
    for pair in heldout_pairs(n_anatomies, styles_per_anatomy, spacing=spacing, seed=seed, mni_dir=mni_dir):
        anatomy_seed, style_seed = pair["anatomy_seed"], pair["style_seed"]
        mask = head_mask(pair["target"])
        cases.append({
            "source": (pair["source"] * MR_SCALE).astype(np.float32),
            "truth01": normalize_mr(pair["target"]),
            "head": head_slices(mask, min_foreground),
            # the head slices along each RAS axis, for the sagittal and coronal cases
            "head_by_axis": [head_slices(np.moveaxis(mask, axis, -1), min_foreground) for axis in range(3)],
            "affine": np.asarray(pair["affine"], dtype=np.float64),
            "anatomy_seed": anatomy_seed,
            "style_seed": style_seed,
            "style": pair["style"].name,
        })
    return cases


def _to01(image: torch.Tensor, normalization: dict) -> np.ndarray:
    lo, hi = float(normalization["lo"]), float(normalization["hi"])
    return ((image.detach().cpu().numpy()[0] - lo) / (hi - lo)).astype(np.float32)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).mean())


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate_pipeline(
    pipeline: Any,
    cases: Sequence[dict],
    kinds: Sequence[str] = DEFAULT_KINDS,
    severity: float = 0.5,
    slices_per_volume: int = 3,
    min_gap: int = 4,
    seed: int = 0,
    plane: str = "axial",
) -> dict[str, Any]:
    """Corrupt known slices of each case, run the pipeline, and measure detection and restoration.

    With ``plane`` ``"sagittal"`` or ``"coronal"``, the slices of that plane are corrupted and the pipeline slices
    the scans in that plane (``slice_axis``), as it would a scan acquired so: the networks, trained on axial
    slices, then see sagittal or coronal ones.

    Args:
        pipeline: an :class:`~sgad_med.pipeline.SGADPipeline`.
        cases: from :func:`pipeline_cases`.
        kinds: artifact kinds (:data:`sgad_med.transforms.artifacts.ARTIFACTS`), used in turn.
        severity: artifact strength in [0, 1].
        slices_per_volume: corrupted slices per case (apart by ``min_gap``, inside the head).
        min_gap: smallest distance between two corrupted slices.
        seed: seed of the slice and artifact draws.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    Returns:
        A JSON-ready dict: ``detection``, ``restoration``, ``unchanged_elsewhere``, ``per_case`` and settings.
    """
    previous_axis = getattr(pipeline, "slice_axis", "auto")
    pipeline.slice_axis = plane  # as the pipeline slices a scan acquired in that plane
    try:
        return _evaluate_plane(pipeline, cases, kinds, severity, slices_per_volume, min_gap, seed, plane)
    finally:
        pipeline.slice_axis = previous_axis


def _evaluate_plane(pipeline: Any, cases: Sequence[dict], kinds: Sequence[str], severity: float,
                    slices_per_volume: int, min_gap: int, seed: int, plane: str) -> dict[str, Any]:
    from monai.data import MetaTensor

    from sgad_med.io import Scan
    from sgad_med.io.slice_axis import parse_slice_axis
    from sgad_med.transforms.artifacts import SliceArtifact

    axis = parse_slice_axis(plane)

    def last(volume: np.ndarray) -> np.ndarray:  # the plane's slices along the last axis
        return np.moveaxis(volume, axis, -1)

    found: dict[str, list[int]] = {kind: [] for kind in kinds}
    clean_flags: list[int] = []
    beside_flags: list[int] = []  # the clean head slices next to a damaged one (they share its 2.5D stacks)
    clean_by_gan = 0
    errors: dict[str, list[float]] = {"harmonized, not restored": [], "sgad-med pipeline": [],
                                      "neighbour mean (perfect detection)": []}
    unchanged = True
    per_case = []
    turn = 0
    for index, case in enumerate(cases):
        head = case["head_by_axis"][axis] if "head_by_axis" in case else case["head"]
        chosen = corrupted_slices_for(head, slices_per_volume, min_gap, seed=[seed, index])
        # the artifact transforms work on [0, 1] intensities (they clip there) and on the last axis: damage the
        # rendering's slices of the plane, then scale
        image = MetaTensor(torch.as_tensor(last(case["source"] / MR_SCALE).copy())[None])
        kind_of: dict[int, str] = {}
        for j, k in enumerate(chosen):
            kind = kinds[turn % len(kinds)]
            turn += 1
            kind_of[int(k)] = kind
            image = SliceArtifact(kind, [int(k)], severity=severity, seed=seed * 1000 + index * 10 + j)(image)
        damaged = torch.as_tensor(image.as_tensor()).movedim(-1, axis + 1) * MR_SCALE
        scan = Scan(image=MetaTensor(damaged.contiguous(), affine=torch.as_tensor(case["affine"])),
                    scan_id=f"case{index}", modality="MR")
        result = pipeline(scan)
        threshold, weights = result.threshold, result.settings.get("detector_weights", "axial")
        norm = result.settings["normalization"]
        corrected01 = last(_to01(result.corrected.image, norm))
        harmonized = result.harmonized if result.harmonized is not None else scan
        harmonized01 = last(_to01(harmonized.image, norm))
        truth01 = last(case["truth01"])
        depth = truth01.shape[-1]
        for k, kind in kind_of.items():
            found[kind].append(int(result.flagged[k]))
            neighbours = 0.5 * (harmonized01[..., max(k - 1, 0)] + harmonized01[..., min(k + 1, depth - 1)])
            errors["harmonized, not restored"].append(_mae(harmonized01[..., k], truth01[..., k]))
            errors["sgad-med pipeline"].append(_mae(corrected01[..., k], truth01[..., k]))
            errors["neighbour mean (perfect detection)"].append(_mae(neighbours, truth01[..., k]))
        clean = np.asarray(head, dtype=bool).copy()
        clean[list(kind_of)] = False
        beside = np.zeros_like(clean)
        for k in kind_of:
            beside[max(k - 1, 0) : k + 2] = True
        beside &= clean
        clean_flags += [int(f) for f in result.flagged[clean]]
        beside_flags += [int(f) for f in result.flagged[beside]]
        clean_by_gan += sum(result.cause[k] == "harmonization" for k in np.flatnonzero(clean & result.flagged))
        keep = ~result.restored & ~(result.fallback if result.fallback is not None else False)
        unchanged &= bool(np.array_equal(last(result.corrected.image.numpy()[0])[..., keep],
                                         last(harmonized.image.numpy()[0])[..., keep]))
        per_case.append({"anatomy_seed": case["anatomy_seed"], "style": case["style"],
                         "corrupted": {str(k): v for k, v in kind_of.items()}, "flagged": result.flagged_slices})
    all_found = sum(found.values(), [])
    return {
        "settings": {"kinds": list(kinds), "severity": severity, "slices_per_volume": slices_per_volume,
                     "n_cases": len(cases), "threshold": float(threshold), "seed": seed, "plane": plane,
                     "detector_weights": weights},
        "detection": {
            "corrupted_flagged": _mean(all_found),
            "corrupted_flagged_by_kind": {kind: _mean(v) for kind, v in found.items()},
            "n_corrupted": len(all_found),
            "clean_flagged": _mean(clean_flags),
            "n_clean": len(clean_flags),
            "clean_flagged_beside_damage": int(sum(beside_flags)),
            "n_clean_beside_damage": len(beside_flags),
            "clean_flagged_blamed_on_harmonization": int(clean_by_gan),
        },
        "restoration": {name: _mean(values) for name, values in errors.items()},
        "unchanged_elsewhere": unchanged,
        "per_case": per_case,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def format_table(results: dict[str, Any]) -> str:
    """The evaluation as text: detection rates, then the restoration errors."""
    detection = results["detection"]
    plane = results["settings"].get("plane", "axial")
    weights = results["settings"].get("detector_weights")
    plane = f"{plane} slices" + (f" (detector weights: {weights})" if weights else "")
    lines = [f"pipeline evaluation: {results['settings']['n_cases']} held-out cases, {plane}, severity "
             f"{results['settings']['severity']}, threshold {results['settings']['threshold']:.3f}",
             f"corrupted slices flagged: {_pct(detection['corrupted_flagged'])} of {detection['n_corrupted']}"]
    for kind, rate in detection["corrupted_flagged_by_kind"].items():
        lines.append(f"  {kind:<16} {_pct(rate)}")
    lines.append(f"clean head slices flagged: {_pct(detection['clean_flagged'])} of {detection['n_clean']} "
                 f"({detection['clean_flagged_blamed_on_harmonization']} blamed on harmonization)")
    if "clean_flagged_beside_damage" in detection:
        beside, n_beside = detection["clean_flagged_beside_damage"], detection["n_clean_beside_damage"]
        elsewhere = round(detection["clean_flagged"] * detection["n_clean"]) - beside
        n_elsewhere = detection["n_clean"] - n_beside
        lines.append(f"  next to a damaged slice   {beside} of {n_beside}")
        lines.append(f"  elsewhere                 {elsewhere} of {n_elsewhere} "
                     f"({_pct(elsewhere / n_elsewhere if n_elsewhere else None)})")
    lines.append("mean absolute error to the truth on the corrupted slices (normalized units):")
    for name, value in results["restoration"].items():
        lines.append(f"  {name:<36} {'-' if value is None else f'{value:.4f}'}")
    lines.append(f"slices neither restored nor fallback identical to harmonized: {results['unchanged_elsewhere']}")
    return "\n".join(lines)


class PipelineEvaluation:
    """The evaluation run by ``bundles/sgad_pipeline/configs/evaluate.json`` and ``sgad-med evaluate pipeline``.

    Args:
        cases: the cases, or a function making them (so that building the config makes no data).
        pipeline: the pipeline, or a function making it.
        output_dir: where ``pipeline_evaluation.json`` goes.
        kinds: artifact kinds, in turn.
        severity: artifact strength.
        slices_per_volume: corrupted slices per case.
        seed: seed of the draws.
        real_anatomy: also run the pipeline on the real test scans of
            :func:`~sgad_med.evaluation.real_anatomy.real_anatomy_scans` and report whether ``corrected`` keeps
            their anatomy.
        planes: besides the axial evaluation (the main figures), the same cases cut and damaged in these planes
            (``"sagittal"``, ``"coronal"``), reported under ``"planes"``.
    """

    def __init__(self, cases: Sequence[dict] | Callable[[], Sequence[dict]], pipeline: Any,
                 output_dir: str | os.PathLike, kinds: Sequence[str] = DEFAULT_KINDS, severity: float = 0.5,
                 slices_per_volume: int = 3, seed: int = 0, real_anatomy: bool = False,
                 planes: Sequence[str] = ()) -> None:
        self.real_anatomy = bool(real_anatomy)
        self.planes = [p for p in planes if p != "axial"]
        self.cases, self.pipeline, self.output_dir = cases, pipeline, Path(output_dir)
        self.kinds, self.severity = list(kinds), float(severity)
        self.slices_per_volume, self.seed = int(slices_per_volume), int(seed)

    def run(self) -> dict[str, Any]:
        """Evaluate, print the table, write the JSON; returns the results."""
        started = time.perf_counter()
        cases = self.cases() if callable(self.cases) else self.cases
        # A pipeline has a detector; anything else here is a function making one (the config's lazy partial).
        pipeline = self.pipeline if hasattr(self.pipeline, "detector") else self.pipeline()
        check_protocol_normalization(pipeline.detector)  # the pipeline has checked the others against it
        results = evaluate_pipeline(pipeline, cases, self.kinds, self.severity, self.slices_per_volume, seed=self.seed)
        if self.planes:
            results["planes"] = {plane: evaluate_pipeline(pipeline, cases, self.kinds, self.severity,
                                                          self.slices_per_volume, seed=self.seed, plane=plane)
                                 for plane in self.planes}
        if self.real_anatomy:
            from sgad_med.evaluation.real_anatomy import evaluate_real_anatomy

            results["real_anatomy"] = evaluate_real_anatomy(pipeline)
        results["seconds"] = round(time.perf_counter() - started, 1)
        print(format_table(results))
        for plane_results in results.get("planes", {}).values():
            print()
            print(format_table(plane_results))
        if self.real_anatomy:
            from sgad_med.evaluation.real_anatomy import format_real_anatomy

            print()
            print(format_real_anatomy(results["real_anatomy"]))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "pipeline_evaluation.json").write_text(json.dumps(results, indent=2))
        return results
