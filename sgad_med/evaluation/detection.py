"""The held-out evaluation of anomalous-slice detection, and the classical baseline the detector has to beat.

Three parts:

* **metrics** on per-slice scores: :func:`auroc` (MONAI's ``compute_roc_auc``), :func:`average_precision`
  (AUPRC, step-wise as scikit-learn's ``average_precision_score``), :func:`threshold_at_fpr`;
* **the classical baseline**: :func:`classical_slice_scores`, per-slice image statistics (noise, high-frequency
  energy, intensities inside and outside the head, edge energy, difference to the neighbouring slices), each
  z-scored robustly against the neighbouring slices and combined by the largest ``|z|``; and
  :class:`ClassicalBaseline`, which holds its operating threshold, set at 1 % FPR on clean *validation*
  volumes of training anatomies in training styles (:func:`validation_volumes`), never on the evaluation set;
* **the evaluation**: :func:`detection_cases` (held-out anatomies in held-out styles, normalized as at inference,
  with the head truth), :func:`evaluate_detection` (a few head slices of each volume corrupted with one artifact
  kind at one severity by :func:`~sgad_med.transforms.artifacts.apply_slice_artifact`, every slice of the whole
  volume scored by the detector and the baseline; the clean volumes, as they are and after harmonization, give
  the negatives and the false-positive rates), :func:`format_table`, and :class:`DetectionEvaluation`, which
  the bundle's ``evaluate.json`` (``sgad-med evaluate detector``) runs. The leave-one-type-out experiment is
  :mod:`sgad_med.engines.leave_one_out` (it trains one detector per left-out kind).

A second section, :func:`evaluate_real_scans` (printed by :func:`format_real_scans_table`, JSON key
``"real_scans"``), measures the same on real multi-slice MR scans that ship with installed packages (nibabel's
example EPI, pydicom-data's multi-frame ``emri_small.dcm``; see :mod:`sgad_med.evaluation.real_scans`), which
have no truth: the fraction of their slices each method flags (a false-positive rate if the scans are clean, as
presumed) and AUROC on simulated damage at severity 0.5, per kind pooled over the scans.

Metrics per artifact kind and severity, for the detector and the baseline side by side: slice-level AUROC and
AUPRC (the corrupted slices of that kind against every clean head slice of the clean volumes; AUPRC therefore
depends on the prevalence, ``n_positive / (n_positive + n_negative)``, which the JSON records), sensitivity at
the method's threshold (the detector's stored one, the baseline's validation one) and the false-positive rate at
that threshold on clean head slices: of the clean input volumes, of the same volumes after harmonization, and
(JSON only, ``fpr_rest``) of the corrupted volumes' untouched head slices two or more slices away from damage.

Example::

    from sgad_med.detector import SliceAnomalyDetector
    from sgad_med.evaluation.detection import DetectionEvaluation

    evaluation = DetectionEvaluation(SliceAnomalyDetector.from_bundle("bundles/slice_anomaly_detection"),
                                     n_anatomies=2, kinds=["spike", "motion"], output_dir="eval_output")
    results = evaluation()        # prints the table, writes eval_output/detection_evaluation.json
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgad_med.evaluation.heldout import check_protocol_normalization, heldout_pairs, normalize_mr, synthetic_pairs
from sgad_med.transforms.slice_statistics import (
    BASELINE_FEATURES,
    classical_slice_scores,
    robust_neighbour_z,
    slice_features,
)

__all__ = [
    "BASELINE_FEATURES",
    "DEFAULT_SEVERITIES",
    "SEVERITY_NAMES",
    "VALIDATION_ANATOMY_SEEDS",
    "auroc",
    "average_precision",
    "threshold_at_fpr",
    "slice_features",
    "robust_neighbour_z",
    "classical_slice_scores",
    "ClassicalBaseline",
    "head_slices",
    "validation_volumes",
    "detection_cases",
    "corrupted_slices_for",
    "evaluate_detection",
    "format_table",
    "REAL_SCAN_SEVERITY",
    "real_scan_head",
    "corrupt_real_volume",
    "evaluate_real_scans",
    "format_real_scans_table",
    "DetectionEvaluation",
]

#: Severities evaluated by default; 0.5 ("moderate") is the one the quality bar is stated at.
DEFAULT_SEVERITIES: tuple[float, ...] = (0.25, 0.5, 0.75)
#: Names of the usual severities, for the table.
SEVERITY_NAMES: dict[float, str] = {0.25: "mild", 0.5: "moderate", 0.75: "severe"}
#: Training anatomies whose clean volumes (training styles) set the baseline's threshold; disjoint from
#: ``HELDOUT_ANATOMY_SEEDS``, which the evaluation uses.
VALIDATION_ANATOMY_SEEDS = range(900, 906)
#: Severity of the simulated damage on real scans.
REAL_SCAN_SEVERITY = 0.5
#: The two methods compared, in table order.
METHODS: tuple[str, ...] = ("detector", "baseline")


# ----------------------------------------------------------------------------------------------------------------
# metrics on per-slice scores
# ----------------------------------------------------------------------------------------------------------------


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if labels.all() or not labels.any():
        raise ValueError("AUROC/AUPRC need at least one positive and one negative")
    return scores, labels


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (ties count one half), via :func:`monai.metrics.compute_roc_auc`.

    Args:
        scores: per-slice scores, higher = more anomalous.
        labels: 1 (or True) for anomalous slices, 0 for clean ones; both must occur.

    Returns:
        AUROC in [0, 1]: 1 when every anomalous slice scores above every clean one, 0.5 for chance, 0 inverted.
    """
    import torch
    from monai.metrics import compute_roc_auc

    scores, labels = _scores_labels(scores, labels)
    return float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(labels.astype(np.float64))))


def average_precision(scores: Any, labels: Any) -> float:
    """Area under the precision-recall curve as average precision: ``sum_n (R_n - R_{n-1}) P_n``.

    The step-wise sum of scikit-learn's ``average_precision_score`` (no interpolation), with tied scores forming
    one threshold. Chance level is the prevalence of positives.

    Args:
        scores: per-slice scores, higher = more anomalous.
        labels: 1 (or True) for anomalous slices, 0 for clean ones; both must occur.

    Returns:
        AUPRC in (0, 1].
    """
    scores, labels = _scores_labels(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    true_positives = np.cumsum(hits)
    false_positives = np.cumsum(~hits)
    ends = np.r_[np.flatnonzero(np.diff(ranked) != 0), ranked.size - 1]  # last index of each group of tied scores
    tp, fp = true_positives[ends], false_positives[ends]
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_at_fpr(clean_scores: Any, fpr: float = 0.01) -> float:
    """The lowest threshold at which at most a fraction ``fpr`` of clean scores is flagged (``score >= t``).

    Args:
        clean_scores: scores of clean (validation) slices.
        fpr: target false-positive rate in [0, 1).

    Returns:
        The threshold: just above the ``floor(fpr * n) + 1``-th highest clean score.
    """
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64).reshape(-1))[::-1]
    if scores.size == 0:
        raise ValueError("threshold_at_fpr needs at least one clean score")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr}")
    allowed = int(np.floor(fpr * scores.size))  # this many clean slices may lie above the threshold
    return float(np.nextafter(scores[allowed], np.inf))


# ----------------------------------------------------------------------------------------------------------------
# the classical baseline (its statistics: sgad_med.transforms.slice_statistics)
# ----------------------------------------------------------------------------------------------------------------


def head_slices(mask: np.ndarray, min_foreground: float = 0.1) -> np.ndarray:
    """Boolean ``[D]``: the slices whose head fraction (of a ``[H, W, D]`` mask) is at least ``min_foreground``."""
    return np.asarray(mask, dtype=bool).mean(axis=(0, 1)) >= min_foreground


def harmonized01(harmonizer: Any, volume01: np.ndarray) -> np.ndarray:
    """A normalized volume ``[H, W, D]`` through ``harmonizer.harmonize01``, as float32 numpy clipped to [0, 1]."""
    import torch

    out = harmonizer.harmonize01(torch.as_tensor(np.asarray(volume01, dtype=np.float32)))
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def validation_volumes(
    anatomy_seeds: Iterable[int] = VALIDATION_ANATOMY_SEEDS,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
    min_foreground: float = 0.1,
    split: str = "train",
) -> list[dict]:
    """Clean validation volumes: training-pool anatomies in training styles, normalized as at inference.

    Args:
        anatomy_seeds: from ``TRAIN_ANATOMY_SEEDS`` (a held-out seed raises: thresholds are never set on the
            evaluation anatomies).
        spacing: voxel size in mm.
        seed: the generator's global seed.
        mni_dir: folder of the MNI template (``None``: searched).
        min_foreground: head fraction from which a slice counts (see :func:`head_slices`).
        split: ``"train"`` styles, ``"validation"`` styles (a little unlike the training ones) or
            ``"validation_low"`` styles (lower tissue contrast than even the held-out ones, see
            :mod:`sgad_med.data.synthetic`); never ``"heldout"``.

    Returns:
        One dict per volume: ``volume`` (float32 ``[H, W, D]`` in [0, 1]), ``head`` (bool ``[D]``),
        ``anatomy_seed``, ``style``.
    """
    from sgad_med.data.synthetic import HELDOUT_ANATOMY_SEEDS
    from sgad_med.evaluation.harmonization import head_mask

    if split not in ("train", "validation", "validation_low"):
        raise ValueError(f"validation volumes come in 'train', 'validation' or 'validation_low' styles, got {split!r}")
    seeds = [int(a) for a in anatomy_seeds]
    leaked = [a for a in seeds if a in HELDOUT_ANATOMY_SEEDS]
    if leaked:
        raise ValueError(f"validation anatomies {leaked} are held-out evaluation anatomies; use TRAIN_ANATOMY_SEEDS")
    volumes = []
    for pair in synthetic_pairs(seeds, split, spacing=spacing, seed=seed, mni_dir=mni_dir):
        volumes.append({
            "volume": normalize_mr(pair["source"]),
            "head": head_slices(head_mask(pair["target"]), min_foreground),
            "anatomy_seed": pair["anatomy_seed"],
            "style": pair["style"].name,
        })
    return volumes


class ClassicalBaseline:
    """:func:`classical_slice_scores` with an operating threshold set on clean validation volumes.

    Args:
        window: neighbouring slices on each side (see :func:`classical_slice_scores`).
        head_threshold: intensity above which a voxel counts as head.
        threshold: the operating threshold; ``None`` until :meth:`fit_threshold`.

    Example::

        baseline = ClassicalBaseline().fit_threshold(validation_volumes(), fpr=0.01)
        flagged = baseline.score01(volume01) >= baseline.threshold
    """

    def __init__(self, window: int = 5, head_threshold: float = 0.05, threshold: float | None = None) -> None:
        self.window, self.head_threshold = int(window), float(head_threshold)
        self.threshold = None if threshold is None else float(threshold)
        self.validation_anatomy_seeds: list[int] = []
        self.n_validation_slices = 0

    def score01(self, volume01: np.ndarray, harmonized: bool = False) -> np.ndarray:
        """Scores ``[D]`` of a normalized volume ``[H, W, D]`` (harmonized or not: scored alike)."""
        return classical_slice_scores(np.asarray(volume01), window=self.window, head_threshold=self.head_threshold)

    def fit_threshold(self, volumes: Sequence[dict], fpr: float = 0.01, harmonizer: Any = None) -> ClassicalBaseline:
        """Set :attr:`threshold` for a false-positive rate ``fpr`` on the head slices of clean validation volumes.

        Args:
            volumes: from :func:`validation_volumes` (dicts with ``volume``, ``head``, ``anatomy_seed``).
            fpr: target false-positive rate.
            harmonizer: when given, each volume's harmonized version is added to the clean slices, as the
                detector's threshold also covers harmonized clean slices.

        Returns:
            ``self``, with :attr:`threshold`, :attr:`validation_anatomy_seeds` and :attr:`n_validation_slices` set.
        """
        if not volumes:
            raise ValueError("fit_threshold needs at least one clean validation volume")
        clean: list[np.ndarray] = []
        for item in volumes:
            head = np.asarray(item["head"], dtype=bool)
            clean.append(self.score01(item["volume"])[head])
            if harmonizer is not None:
                clean.append(self.score01(harmonized01(harmonizer, item["volume"]))[head])
        scores = np.concatenate(clean)
        self.threshold = threshold_at_fpr(scores, fpr)
        self.validation_anatomy_seeds = sorted({int(item["anatomy_seed"]) for item in volumes})
        self.n_validation_slices = int(scores.size)
        return self


# ----------------------------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------------------------


def detection_cases(
    n_anatomies: int = 8,
    styles_per_anatomy: int = 1,
    spacing: float = 2.0,
    seed: int = 0,
    mni_dir: str | os.PathLike | None = None,
    min_foreground: float = 0.1,
) -> list[dict]:
    """Clean held-out volumes to corrupt: held-out anatomies in held-out styles, normalized as at inference.

    Anatomy ``a`` is ``HELDOUT_ANATOMY_SEEDS[a]``, its styles are drawn with ``split="heldout"`` and style seeds
    ``a * styles_per_anatomy + s`` (as :func:`~sgad_med.evaluation.harmonization.heldout_cases`). The volume is
    normalized as a real MR scan is (``normalize(volume[None], modality="MR")``). The head slices come from the
    truth (the head mask of the reference-style rendering).

    Args:
        n_anatomies: how many held-out anatomies.
        styles_per_anatomy: held-out styles (volumes) per anatomy.
        spacing: voxel size in mm (2.0 for evaluation; 8.0 for quick tests).
        seed: the generator's global seed.
        mni_dir: folder of the MNI template (``None``: searched).
        min_foreground: head fraction from which a slice counts (see :func:`head_slices`).

    Returns:
        One dict per volume: ``volume`` (float32 ``[H, W, D]`` in [0, 1]), ``head`` (bool ``[D]``),
        ``anatomy_seed``, ``style_seed``, ``style``.
    """
    from sgad_med.evaluation.harmonization import head_mask

    cases = []
    for pair in heldout_pairs(n_anatomies, styles_per_anatomy, spacing=spacing, seed=seed, mni_dir=mni_dir):
        anatomy_seed, style_seed = pair["anatomy_seed"], pair["style_seed"]
        cases.append({
            "volume": normalize_mr(pair["source"]),
            "head": head_slices(head_mask(pair["target"]), min_foreground),
            "anatomy_seed": anatomy_seed,
            "style_seed": style_seed,
            "style": pair["style"].name,
        })
    return cases


def corrupted_slices_for(head: np.ndarray, count: int, min_gap: int, seed: Sequence[int]) -> np.ndarray:
    """Up to ``count`` head slices, at least ``min_gap`` apart, never the first or last slice; deterministic.

    Apart, so that each damaged slice has clean neighbours (the 2.5D detector and the baseline's neighbour
    statistics see one damaged slice at a time, as most real artifacts come).

    Args:
        head: bool ``[D]``, the slices with head.
        count: how many slices.
        min_gap: smallest distance between two chosen slices.
        seed: seed sequence of the draw.

    Returns:
        Sorted slice indices (fewer than ``count`` when the head is too thin).
    """
    head = np.asarray(head, dtype=bool)
    candidates = np.flatnonzero(head)
    candidates = candidates[(candidates > 0) & (candidates < head.size - 1)]
    rng = np.random.default_rng(list(seed))
    chosen: list[int] = []
    for k in rng.permutation(candidates):
        if len(chosen) == count:
            break
        if all(abs(int(k) - c) >= min_gap for c in chosen):
            chosen.append(int(k))
    return np.array(sorted(chosen), dtype=int)


def _severity_key(severity: float) -> str:
    return f"{float(severity):g}"


def _artifact_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _rate(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if flags.size else None


def evaluate_detection(
    methods: Mapping[str, Any],
    thresholds: Mapping[str, float],
    cases: Sequence[dict],
    kinds: Sequence[str],
    severities: Sequence[float] = DEFAULT_SEVERITIES,
    slices_per_volume: int = 4,
    min_gap: int = 3,
    seed: int = 0,
    harmonizer: Any = None,
    progress: bool = False,
) -> dict:
    """Score every slice of clean and corrupted held-out volumes with every method; metrics per kind and severity.

    For each case, the clean volume is scored (its head slices are the negatives), and, with a harmonizer, its
    harmonized version (for the false-positive rate after harmonization). Then for each kind and severity a copy
    is corrupted on ``slices_per_volume`` head slices at least ``min_gap`` apart (the same slices for every
    severity of a kind, so severities compare like with like) and scored whole; the corrupted slices are the
    positives of that kind and severity.

    Args:
        methods: name -> object with ``score01(volume01 [H, W, D]) -> [D]`` (higher = more anomalous; called with
            ``harmonized=True`` for harmonized volumes), e.g.
            ``{"detector": SliceAnomalyDetector, "baseline": ClassicalBaseline}``.
        thresholds: name -> operating threshold (flagged: ``score >= threshold``).
        cases: from :func:`detection_cases`.
        kinds: artifact kinds (keys of :data:`~sgad_med.transforms.artifacts.ARTIFACTS`).
        severities: severities in [0, 1].
        slices_per_volume: corrupted slices per volume.
        min_gap: smallest distance between corrupted slices.
        seed: seed of the slice choice and the artifacts.
        harmonizer: object with ``harmonize01`` (e.g. :class:`~sgad_med.harmonizer.Harmonizer`), or ``None``.
        progress: show a progress bar over volumes.

    Returns:
        JSON-serialisable dict: ``methods``, ``thresholds``, ``kinds``, ``severities`` (keys as ``"0.5"``),
        ``per_kind`` (``{kind: {severity: {"n_positive", "n_negative", method: {"auroc", "auprc",
        "sensitivity", "fpr_rest"}}}}``), ``mean`` (``{severity: {method: {"auroc", "auprc", "sensitivity"}}}``),
        ``clean`` and ``clean_harmonized`` (``{"n_slices", method: {"fpr"}}``, the latter ``None`` without a
        harmonizer) and ``seconds_per_volume`` (``{method: s}``).
    """
    from tqdm import tqdm

    from sgad_med.transforms.artifacts import ARTIFACT_KINDS, apply_slice_artifact

    cases, kinds = list(cases), list(kinds)
    severities = [float(s) for s in severities]
    if not methods or not cases or not kinds or not severities:
        raise ValueError("evaluate_detection needs methods, cases, kinds and severities")
    unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
    if unknown:
        raise ValueError(f"unknown artifact kinds {unknown}; choose from {list(ARTIFACT_KINDS)}")
    names = list(methods)
    clean = {m: [] for m in names}
    harmonized = {m: [] for m in names}
    positives = {(k, s): {m: [] for m in names} for k in kinds for s in severities}
    rest = {(k, s): {m: [] for m in names} for k in kinds for s in severities}
    timing, n_scored = dict.fromkeys(names, 0.0), 0

    def score_all(volume: np.ndarray, harmonized: bool = False) -> dict[str, np.ndarray]:
        nonlocal n_scored
        out = {}
        for name in names:
            start = time.perf_counter()
            scored = methods[name].score01(volume, harmonized=True) if harmonized else methods[name].score01(volume)
            out[name] = np.asarray(scored, dtype=np.float64).reshape(-1)
            timing[name] += time.perf_counter() - start
            if out[name].shape != (volume.shape[-1],):
                raise ValueError(f"{name} returned {out[name].shape} scores for {volume.shape[-1]} slices")
        n_scored += 1
        return out

    per_case = 1 + (harmonizer is not None) + len(kinds) * len(severities)
    bar = tqdm(total=len(cases) * per_case, desc="evaluating detection", unit="volume", disable=not progress)
    for c, case in enumerate(cases):
        volume, head = np.asarray(case["volume"], dtype=np.float32), np.asarray(case["head"], dtype=bool)
        scores = score_all(volume)
        for name in names:
            clean[name].append(scores[name][head])
        bar.update()
        if harmonizer is not None:
            scores = score_all(harmonized01(harmonizer, volume), harmonized=True)
            for name in names:
                harmonized[name].append(scores[name][head])
            bar.update()
        for kind in kinds:
            k_index = ARTIFACT_KINDS.index(kind)
            chosen = corrupted_slices_for(head, slices_per_volume, min_gap, [seed, c, k_index])
            if chosen.size == 0:
                raise ValueError(f"case {c} (anatomy {case.get('anatomy_seed')}) has no head slice to corrupt")
            distance = np.min(np.abs(np.arange(head.size)[:, None] - chosen[None, :]), axis=1)
            untouched = head & (distance >= 2)
            for s_index, severity in enumerate(severities):
                corrupted, _ = apply_slice_artifact(volume[None], kind, chosen, severity,
                                                    _artifact_seed(seed, c, k_index, s_index))
                scores = score_all(np.asarray(corrupted)[0])
                for name in names:
                    positives[kind, severity][name].append(scores[name][chosen])
                    rest[kind, severity][name].append(scores[name][untouched] >= thresholds[name])
                bar.update()
    bar.close()

    negatives = {m: np.concatenate(clean[m]) for m in names}
    per_kind: dict[str, dict] = {}
    for kind in kinds:
        per_kind[kind] = {}
        for severity in severities:
            row: dict[str, Any] = {}
            for name in names:
                pos = np.concatenate(positives[kind, severity][name])
                neg = negatives[name]
                labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
                both = np.r_[pos, neg]
                row["n_positive"], row["n_negative"] = int(pos.size), int(neg.size)
                row[name] = {
                    "auroc": auroc(both, labels),
                    "auprc": average_precision(both, labels),
                    "sensitivity": float(np.mean(pos >= thresholds[name])),
                    "fpr_rest": _rate(np.concatenate(rest[kind, severity][name])),
                }
            per_kind[kind][_severity_key(severity)] = row
    mean = {
        _severity_key(s): {
            name: {
                metric: float(np.mean([per_kind[k][_severity_key(s)][name][metric] for k in kinds]))
                for metric in ("auroc", "auprc", "sensitivity")
            }
            for name in names
        }
        for s in severities
    }

    def fpr_block(store: dict[str, list[np.ndarray]]) -> dict | None:
        if not store[names[0]]:
            return None
        block: dict[str, Any] = {"n_slices": int(sum(a.size for a in store[names[0]]))}
        for name in names:
            block[name] = {"fpr": float(np.mean(np.concatenate(store[name]) >= thresholds[name]))}
        return block

    return {
        "methods": names,
        "thresholds": {name: float(thresholds[name]) for name in names},
        "kinds": kinds,
        "severities": [_severity_key(s) for s in severities],
        "per_kind": per_kind,
        "mean": mean,
        "clean": fpr_block(clean),
        "clean_harmonized": fpr_block(harmonized),
        "seconds_per_volume": {name: timing[name] / max(n_scored, 1) for name in names},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def _kind_table(names: Sequence[str], kinds: Sequence[str], per_kind: Mapping[str, Any],
                mean: Mapping[str, Any]) -> list[str]:
    """Header, a row per artifact kind and the mean row: AUROC, AUPRC and sensitivity of each method side by side,
    and whether the first method's AUROC beats the second's (``yes``, ``no``, or ``tie`` within 0.0005)."""
    short = {"detector": "det", "baseline": "base"}
    labels = [short.get(n, n[:6]) for n in names]
    kind_width = max([len("mean"), len("artifact kind")] + [len(k) for k in kinds]) + 2
    columns = [f"AUROC {lab}" for lab in labels] + [f"AUPRC {lab}" for lab in labels]
    columns += [f"sens {lab}" for lab in labels]
    better = len(names) >= 2
    header = f"{'artifact kind':<{kind_width}}" + "".join(f"{c:>12}" for c in columns)
    header += f"{names[0] + ' better':>16}" if better else ""

    def cells(entry: Mapping[str, Any]) -> str:
        row = "".join(f"{entry[n]['auroc']:>12.3f}" for n in names)
        row += "".join(f"{entry[n]['auprc']:>12.3f}" for n in names)
        row += "".join(f"{_pct(entry[n]['sensitivity']):>12}" for n in names)
        if better:
            difference = entry[names[0]]["auroc"] - entry[names[1]]["auroc"]
            row += f"{'tie' if abs(difference) < 5e-4 else 'yes' if difference > 0 else 'no':>16}"
        return row

    lines = [header, "-" * len(header)]
    lines += [f"{kind:<{kind_width}}" + cells(per_kind[kind]) for kind in kinds]
    lines += ["-" * len(header), f"{'mean':<{kind_width}}" + cells(mean)]
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """One fixed-width table of :func:`evaluate_detection` results: detector and baseline side by side.

    A block per severity: a row per artifact kind (AUROC, AUPRC and sensitivity at the threshold for each
    method, and whether the first method's AUROC beats the second's: ``yes``, ``no`` or ``tie`` when they differ
    by less than 0.0005) and a mean row; then the false-positive rates
    on clean head slices, as they are and after harmonization.

    Args:
        results: what :func:`evaluate_detection` returned (or its JSON round trip).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    names = list(results["methods"])
    thresholds = ", ".join(f"{n} {results['thresholds'][n]:.4g}" for n in names)
    lines = []
    for severity in results["severities"]:
        name = SEVERITY_NAMES.get(float(severity))
        if lines:
            lines.append("")
        lines.append(f"severity {severity}{f' ({name})' if name else ''}; thresholds: {thresholds}")
        per_kind = {kind: results["per_kind"][kind][severity] for kind in results["kinds"]}
        lines += _kind_table(names, results["kinds"], per_kind, results["mean"][severity])
    lines.append("")
    lines.append("false-positive rate on clean head slices at the threshold")
    for key, title in (("clean", "clean input"), ("clean_harmonized", "clean after harmonization")):
        block = results.get(key)
        if block is None:
            lines.append(f"  {title:<28}(no harmonizer)")
            continue
        rates = "  ".join(f"{n} {_pct(block[n]['fpr']):>6}" for n in names)
        lines.append(f"  {title:<28}{rates}   ({block['n_slices']} slices)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# real scans (no truth: presumed clean, damage simulated)
# ----------------------------------------------------------------------------------------------------------------


def real_scan_head(volume01: np.ndarray, min_foreground: float = 0.1) -> np.ndarray:
    """Boolean ``[D]``: the slices of a real volume scored, those whose foreground (``> 0.05``) is at least
    ``min_foreground`` of the slice (a real scan has no truth mask; the foreground comes from the scan itself)."""
    from sgad_med.evaluation.real_scans import FOREGROUND_THRESHOLD
    from sgad_med.transforms.slices import foreground_slices

    return foreground_slices(volume01, FOREGROUND_THRESHOLD, min_foreground)


def corrupt_real_volume(volume01: np.ndarray, kind: str, slices: Sequence[int], severity: float,
                        seed: int) -> np.ndarray:
    """A copy of a real volume ``[H, W, D]`` with ``slices`` damaged by one artifact kind; the rest untouched.

    Args:
        volume01: normalized volume, slice axis last.
        kind: artifact kind (see :func:`~sgad_med.transforms.artifacts.apply_slice_artifact`).
        slices: slice indices to damage.
        severity: strength in [0, 1].
        seed: non-negative artifact seed.

    Returns:
        float32 ``[H, W, D]``.
    """
    from sgad_med.transforms.artifacts import apply_slice_artifact

    corrupted, _ = apply_slice_artifact(np.asarray(volume01, dtype=np.float32)[None], kind, slices, severity, seed)
    return np.asarray(corrupted, dtype=np.float32)[0]


def evaluate_real_scans(
    methods: Mapping[str, Any],
    thresholds: Mapping[str, float],
    volumes: Sequence[dict],
    kinds: Sequence[str],
    severity: float = REAL_SCAN_SEVERITY,
    slices_per_volume: int = 4,
    min_gap: int = 3,
    seed: int = 0,
    min_foreground: float = 0.1,
) -> dict | None:
    """Detection on real scans, which have no truth: flag rates on the scans as they are, and simulated damage.

    (a) Each real volume is scored as it is; the fraction of its scored slices (:func:`real_scan_head`) at or
    above each method's threshold is reported. The scans are *presumed* clean, so this is a false-positive rate
    only under that assumption. (b) For each kind, a copy of each volume is damaged at ``severity`` on up to
    ``slices_per_volume`` scored slices at least ``min_gap`` apart, never the first or last
    (:func:`corrupted_slices_for`), and every slice is scored. The damaged slices of all volumes are the
    positives of that kind; the scored slices of the volumes as they are (pooled over the volumes) are the
    negatives, as in :func:`evaluate_detection`.

    Args:
        methods: name -> object with ``score01(volume01 [H, W, D]) -> [D]``.
        thresholds: name -> operating threshold.
        volumes: from :func:`~sgad_med.evaluation.real_scans.load_real_volumes` (dicts with ``name``, ``volume``).
        kinds: artifact kinds.
        severity: severity of the simulated damage.
        slices_per_volume: damaged slices per volume (fewer on thin volumes).
        min_gap: smallest distance between damaged slices.
        seed: seed of the slice choice and the artifacts.
        min_foreground: foreground fraction from which a slice is scored.

    Returns:
        JSON-serialisable dict: ``scans`` (one row per volume: ``name``, ``modality``, ``shape``, ``n_slices``
        scored, ``flagged`` ``{method: fraction}``), ``methods``, ``thresholds``, ``kinds``, ``severity`` (as
        ``"0.5"``), ``per_kind`` (``{kind: {"n_positive", "n_negative", method: {"auroc", "auprc",
        "sensitivity", "fpr_rest"}}}``), ``mean`` (``{method: {"auroc", "auprc", "sensitivity"}}``), ``notes``
        and ``seconds``; ``None`` when there are no volumes.
    """
    from sgad_med.transforms.artifacts import ARTIFACT_KINDS

    volumes, kinds, names = list(volumes), list(kinds), list(methods)
    if not volumes:
        return None
    unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown or no artifact kinds {unknown}; choose from {list(ARTIFACT_KINDS)}")
    start = time.perf_counter()

    def score(volume: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            out[name] = np.asarray(methods[name].score01(volume), dtype=np.float64).reshape(-1)
            if out[name].shape != (volume.shape[-1],):
                raise ValueError(f"{name} returned {out[name].shape} scores for {volume.shape[-1]} slices")
        return out

    rows, negatives = [], {m: [] for m in names}
    positives = {k: {m: [] for m in names} for k in kinds}
    rest = {k: {m: [] for m in names} for k in kinds}
    for v, item in enumerate(volumes):
        volume = np.asarray(item["volume"], dtype=np.float32)
        head = real_scan_head(volume, min_foreground)
        if not head.any():
            raise ValueError(f"real scan {item['name']!r} has no slice with foreground to score")
        scores = score(volume)
        for name in names:
            negatives[name].append(scores[name][head])
        rows.append({
            "name": str(item["name"]),
            "modality": str(item.get("modality", "")),
            "shape": [int(n) for n in volume.shape],
            "n_slices": int(head.sum()),
            "flagged": {name: float(np.mean(scores[name][head] >= thresholds[name])) for name in names},
        })
        for kind in kinds:
            k_index = ARTIFACT_KINDS.index(kind)
            chosen = corrupted_slices_for(head, slices_per_volume, min_gap, [seed, 7_000 + v, k_index])
            if chosen.size == 0:
                continue
            corrupted = corrupt_real_volume(volume, kind, chosen, severity, _artifact_seed(seed, 7_000 + v, k_index))
            distance = np.min(np.abs(np.arange(head.size)[:, None] - chosen[None, :]), axis=1)
            untouched = head & (distance >= 2)
            scores = score(corrupted)
            for name in names:
                positives[kind][name].append(scores[name][chosen])
                rest[kind][name].append(scores[name][untouched] >= thresholds[name])

    pooled = {m: np.concatenate(negatives[m]) for m in names}
    per_kind: dict[str, dict] = {}
    for kind in kinds:
        if not positives[kind][names[0]]:
            raise ValueError("no real volume has enough slices to damage (need interior slices with foreground)")
        row: dict[str, Any] = {}
        for name in names:
            pos, neg = np.concatenate(positives[kind][name]), pooled[name]
            labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
            both = np.r_[pos, neg]
            row["n_positive"], row["n_negative"] = int(pos.size), int(neg.size)
            row[name] = {
                "auroc": auroc(both, labels),
                "auprc": average_precision(both, labels),
                "sensitivity": float(np.mean(pos >= thresholds[name])),
                "fpr_rest": _rate(np.concatenate(rest[kind][name])),
            }
        per_kind[kind] = row
    mean = {
        name: {metric: float(np.mean([per_kind[k][name][metric] for k in kinds]))
               for metric in ("auroc", "auprc", "sensitivity")}
        for name in names
    }
    return {
        "scans": rows,
        "methods": names,
        "thresholds": {name: float(thresholds[name]) for name in names},
        "kinds": kinds,
        "severity": _severity_key(severity),
        "per_kind": per_kind,
        "mean": mean,
        "notes": "real scans with no truth, presumed clean: 'flagged' is a false-positive rate only under that "
        f"assumption. Scored slices: foreground (> 0.05) fraction >= {min_foreground}. Damage simulated with "
        f"apply_slice_artifact at severity {severity:g} on up to {slices_per_volume} slices per volume, >= "
        f"{min_gap} apart, never the first or last; positives pooled over the volumes, negatives the scored "
        "slices of the volumes as they are.",
        "seconds": time.perf_counter() - start,
    }


def format_real_scans_table(results: Mapping[str, Any]) -> str:
    """The real-scan section of the detection evaluation (:func:`evaluate_real_scans`) as a fixed-width table.

    Titled with the scans' names; per kind (and the mean) the AUROC and sensitivity of each method on simulated
    damage, then, per scan, the fraction of slices flagged as they are (presumed clean).

    Args:
        results: what :func:`evaluate_real_scans` returned (or its JSON round trip).

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    names = list(results["methods"])
    scans = ", ".join(row["name"] for row in results["scans"])
    lines = [f"real scans (no truth): {scans}",
             f"simulated damage at severity {results['severity']}, positives pooled over the scans; "
             "negatives: the scans' slices as they are"]
    lines += _kind_table(names, results["kinds"], results["per_kind"], results["mean"])
    lines.append("")
    lines.append("slices flagged on the real scans as they are (presumed clean: a false-positive rate if they are)")
    width = max(len(row["name"]) for row in results["scans"]) + 2
    for row in results["scans"]:
        rates = "  ".join(f"{n} {_pct(row['flagged'][n]):>6}" for n in names)
        shape = "x".join(str(n) for n in row["shape"])
        lines.append(f"  {row['name']:<{width}}{shape:>12}   {rates}   ({row['n_slices']} slices)")
    return "\n".join(lines)


class DetectionEvaluation:
    """The detection evaluation run by the bundle's ``evaluate.json`` and ``sgad-med evaluate detector``.

    Scores, in one run on the same held-out volumes, the detector (whole volumes through
    :meth:`~sgad_med.detector.SliceAnomalyDetector.score01`, as the pipeline does, at its stored threshold unless
    overridden) and the classical baseline (:class:`ClassicalBaseline`, its threshold set at ``target_fpr`` on
    clean validation volumes of training anatomies, harmonized copies included when there is a harmonizer).
    Prints :func:`format_table` and writes ``detection_evaluation.json`` to ``output_dir``.

    Args:
        detector: a :class:`~sgad_med.detector.SliceAnomalyDetector` (anything with ``score01`` and ``threshold``).
        harmonizer: a :class:`~sgad_med.harmonizer.Harmonizer` for the clean-after-harmonization rates, or ``None``.
        n_anatomies: held-out anatomies (one held-out style each unless ``styles_per_anatomy``).
        severities: artifact severities in [0, 1].
        kinds: artifact kinds (``None``: all of ``ARTIFACT_KINDS``).
        slices_per_volume: corrupted slices per volume.
        seed: seed of the data, the slice choice and the artifacts.
        mni_dir: folder of the MNI template (``None``: searched).
        output_dir: where ``detection_evaluation.json`` is written.
        spacing: voxel size in mm.
        styles_per_anatomy: held-out styles per anatomy.
        min_gap: smallest distance between corrupted slices of a volume.
        validation_anatomies: training anatomies whose clean volumes set the baseline's threshold.
        target_fpr: the baseline's false-positive rate on validation slices.
        window: the baseline's neighbouring slices on each side.
        cases: ready-made cases (:func:`detection_cases`) instead of building them from the arguments above.
        progress: show a progress bar.
        real_scans: also evaluate on real scans (:func:`evaluate_real_scans`, at severity 0.5 with the same kinds,
            slices per volume, gap and seed): ``True`` for
            :func:`~sgad_med.evaluation.real_scans.default_real_volumes`, a sequence of (name, path, volume index)
            for others, ``False`` (or empty) for none.
    """

    def __init__(
        self,
        detector: Any,
        harmonizer: Any = None,
        n_anatomies: int = 8,
        severities: Sequence[float] = DEFAULT_SEVERITIES,
        kinds: Sequence[str] | None = None,
        slices_per_volume: int = 4,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        output_dir: str | os.PathLike = "eval_output",
        spacing: float = 2.0,
        styles_per_anatomy: int = 1,
        min_gap: int = 3,
        validation_anatomies: Iterable[int] = VALIDATION_ANATOMY_SEEDS,
        target_fpr: float = 0.01,
        window: int = 5,
        cases: Sequence[dict] | None = None,
        progress: bool = True,
        real_scans: bool | Sequence[tuple[str, str, int | None]] = True,
    ) -> None:
        from sgad_med.transforms.artifacts import ARTIFACT_KINDS

        self.detector, self.harmonizer = detector, harmonizer
        self.n_anatomies, self.styles_per_anatomy = int(n_anatomies), int(styles_per_anatomy)
        self.severities = [float(s) for s in severities]
        self.kinds = list(ARTIFACT_KINDS if kinds is None else kinds)
        self.slices_per_volume, self.min_gap, self.seed = int(slices_per_volume), int(min_gap), int(seed)
        self.mni_dir, self.spacing = mni_dir, float(spacing)
        self.output_dir = Path(output_dir)
        self.validation_anatomies = [int(a) for a in validation_anatomies]
        self.target_fpr, self.window = float(target_fpr), int(window)
        self.cases = None if cases is None else list(cases)
        self.progress = progress
        self.real_scans = real_scans
        self.baseline: ClassicalBaseline | None = None
        self.results: dict | None = None

    def fit_baseline(self) -> ClassicalBaseline:
        """The classical baseline with its threshold set on the clean validation volumes."""
        volumes = validation_volumes(self.validation_anatomies, spacing=self.spacing, seed=self.seed,
                                     mni_dir=self.mni_dir)
        return ClassicalBaseline(window=self.window).fit_threshold(volumes, self.target_fpr, self.harmonizer)

    def real_scan_list(self) -> list[tuple[str, str, int | None]]:
        """The real scans evaluated, as (name, path, volume index), from the ``real_scans`` option."""
        from sgad_med.evaluation.real_scans import resolve_real_scans

        return resolve_real_scans(self.real_scans)

    def run(self) -> dict:
        """Evaluate, print the tables, write the JSON; returns the results."""
        from sgad_med import __version__
        from sgad_med.evaluation.real_scans import load_real_volumes

        start = time.perf_counter()
        check_protocol_normalization(self.detector, self.harmonizer)
        cases = self.cases if self.cases is not None else detection_cases(
            self.n_anatomies, self.styles_per_anatomy, spacing=self.spacing, seed=self.seed, mni_dir=self.mni_dir
        )
        evaluated = sorted({int(c["anatomy_seed"]) for c in cases})
        overlap = set(evaluated) & set(self.validation_anatomies)
        if overlap:
            raise ValueError(f"anatomies {sorted(overlap)} are both evaluated and used to set the baseline threshold")
        self.baseline = self.fit_baseline()
        results = evaluate_detection(
            {"detector": self.detector, "baseline": self.baseline},
            {"detector": float(self.detector.threshold), "baseline": float(self.baseline.threshold)},
            cases, self.kinds, self.severities, self.slices_per_volume, self.min_gap, self.seed,
            harmonizer=self.harmonizer, progress=self.progress,
        )
        results["settings"] = {
            "n_volumes": len(cases),
            "anatomy_seeds": evaluated,
            "styles": [str(c["style"]) for c in cases],
            "validation_anatomy_seeds": self.baseline.validation_anatomy_seeds,
            "n_validation_slices": self.baseline.n_validation_slices,
            "target_fpr": self.target_fpr,
            "spacing": self.spacing,
            "slices_per_volume": self.slices_per_volume,
            "min_gap": self.min_gap,
            "window": self.window,
            "seed": self.seed,
            "harmonizer": self.harmonizer is not None,
            "detector_threshold": "override" if getattr(self.detector, "_threshold", None) is not None else "stored",
            "sgad_med": __version__,
            "data": "held-out anatomies (HELDOUT_ANATOMY_SEEDS) in held-out styles, normalized as at inference; "
            "baseline threshold set on clean training-anatomy validation volumes in training styles",
        }
        results["real_scans"] = evaluate_real_scans(
            {"detector": self.detector, "baseline": self.baseline}, results["thresholds"],
            load_real_volumes(self.real_scan_list()), self.kinds, REAL_SCAN_SEVERITY, self.slices_per_volume,
            self.min_gap, self.seed,
        )
        results["seconds"] = time.perf_counter() - start
        self.results = results
        print(format_table(results))
        if results["real_scans"] is not None:
            print()
            print(format_real_scans_table(results["real_scans"]))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "detection_evaluation.json").write_text(json.dumps(results, indent=2))
        return results

    __call__ = run
