"""Detection evaluation by damage layout and by group of clean slices: where a detector flags clean slices.

The earlier evaluation damaged a few slices three or more apart and counted false positives over whole clean
scans; a detector that flags the clean neighbours of damage, misses the middle of a run of damage or flags
near-empty end slices looked fine there. This one damages held-out scans (held-out anatomies in held-out
styles, and real volumes the team did not make) at damaged fractions of 5 %, 25 % and 40 % of their slices,
either as **isolated** slices (one clean slice or more between two damaged ones) or as **contiguous** runs of 2
to 8 slices, one artifact kind per copy, every kind in turn, and reports:

- the false-positive rate separately for three groups of clean slices (:func:`clean_groups`): **isolated**
  clean slices (three or more slices from damage), clean slices **adjacent** to damage (one or two slices away)
  and **end** slices (clean slices with little tissue: head fraction above 0 and below 0.1), per layout and
  density, and on the clean scans as they are (and, with a harmonizer, after harmonization);
- sensitivity per artifact kind and AUROC overall (every damaged slice against every clean slice, all layouts).

Methods are compared on the same volumes: the detector at its stored threshold, the classical per-slice
statistics baseline and a high-frequency-energy baseline (:class:`HighFrequencyBaseline`: a slice is flagged
when its high-frequency energy departs from its neighbours'), both at thresholds set for 1 % false positives
on clean validation scans of training anatomies (never the evaluated ones), and the trivial baseline that flags
nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sgad_med.data.slice_runs import distance_to_damage
from sgad_med.evaluation.detection import (
    VALIDATION_ANATOMY_SEEDS,
    ClassicalBaseline,
    auroc,
    harmonized01,
    threshold_at_fpr,
    validation_volumes,
)
from sgad_med.transforms.artifacts import ARTIFACT_KINDS, ARTIFACTS

__all__ = [
    "DENSITIES",
    "LAYOUTS",
    "GROUPS",
    "END_FOREGROUND",
    "clean_groups",
    "evaluation_layout",
    "HighFrequencyBaseline",
    "TrivialBaseline",
    "heldout_volumes",
    "real_volumes",
    "evaluate_slice_groups",
    "format_slice_groups_table",
    "SliceGroupEvaluation",
]

#: Damaged fractions of a scan's slices evaluated.
DENSITIES: tuple[float, ...] = (0.05, 0.25, 0.40)
#: How the damaged slices lie: alone, or in runs of 2 to 8.
LAYOUTS: tuple[str, ...] = ("isolated", "contiguous")
#: The groups of clean slices whose false-positive rates are reported.
GROUPS: tuple[str, ...] = ("isolated", "adjacent", "end")
#: Head fraction below which a slice with some tissue is an end slice.
END_FOREGROUND = 0.1


def clean_groups(damaged: np.ndarray, foreground: np.ndarray, end_foreground: float = END_FOREGROUND
                 ) -> dict[str, np.ndarray]:
    """Boolean masks ``[D]`` of a scan's clean slices by group.

    Args:
        damaged: ``[D]`` truth.
        foreground: ``[D]`` head fraction of each slice.
        end_foreground: head fraction below which (and above 0) a slice is an end slice.

    Returns:
        ``isolated``: clean, 3 or more slices from damage, head fraction >= ``end_foreground``;
        ``adjacent``: clean, 1 or 2 slices from damage, head fraction >= ``end_foreground``;
        ``end``: clean, head fraction in (0, ``end_foreground``), wherever the damage is.
    """
    damaged = np.asarray(damaged, dtype=bool)
    foreground = np.asarray(foreground, dtype=np.float64)
    clean, head = ~damaged, foreground >= end_foreground
    near = distance_to_damage(damaged) <= 2
    return {
        "isolated": clean & head & ~near,
        "adjacent": clean & head & near,
        "end": clean & (foreground > 0.0) & (foreground < end_foreground),
    }


def evaluation_layout(candidates: np.ndarray, density: float, layout: str, rng: np.random.Generator,
                      max_run: int = 8) -> np.ndarray:
    """Boolean ``[D]``: which candidate slices to damage, about ``density`` of the candidates.

    ``"isolated"``: single slices with at least one clean slice between two; ``"contiguous"``: runs of 2 to
    ``max_run`` slices with at least one clean slice between runs. At least one slice is damaged.

    Args:
        candidates: bool ``[D]``, the slices damage may hit (slices with tissue).
        density: fraction of the candidates to damage.
        layout: ``"isolated"`` or ``"contiguous"``.
        rng: the random generator.
        max_run: the longest run.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    candidates = np.asarray(candidates, dtype=bool)
    depth = candidates.size
    target = max(1, int(round(density * candidates.sum())))
    damaged = np.zeros(depth, dtype=bool)
    positions = np.flatnonzero(candidates)
    for _ in range(50 * target):
        missing = target - int(damaged.sum())
        if missing <= 0 or positions.size == 0:
            break
        length = 1 if layout == "isolated" else int(rng.integers(2, max_run + 1))
        length = max(1, min(length, missing if layout == "isolated" else max(missing, 2)))
        start = int(rng.choice(positions))
        stop = start + length
        if stop > depth or not candidates[start:stop].all():
            continue
        if damaged[max(start - 1, 0) : min(stop + 1, depth)].any():  # keep a clean slice between
            continue
        damaged[start:stop] = True
    if not damaged.any() and positions.size:
        damaged[int(rng.choice(positions))] = True
    return damaged


class HighFrequencyBaseline:
    """Flags a slice when its high-frequency energy departs from its neighbours'.

    The energy of a slice is the mean magnitude of its Laplacian; its score is the robust ``|z|`` of that energy
    against the ``window`` slices on each side (:func:`~sgad_med.transforms.slice_statistics.robust_neighbour_z`).
    The threshold is set for a false-positive rate on clean validation scans (:meth:`fit_threshold`).

    Args:
        window: neighbouring slices on each side.
        threshold: the operating threshold (``None`` until fitted).
    """

    def __init__(self, window: int = 5, threshold: float | None = None) -> None:
        self.window = int(window)
        self.threshold = None if threshold is None else float(threshold)

    def score01(self, volume01: np.ndarray, harmonized: bool = False) -> np.ndarray:
        """Scores ``[D]`` of a normalized volume ``[H, W, D]``."""
        from sgad_med.transforms.slice_statistics import high_frequency_energy, robust_neighbour_z

        return np.abs(robust_neighbour_z(high_frequency_energy(np.asarray(volume01)), window=self.window))

    def fit_threshold(self, volumes: Sequence[dict], fpr: float = 0.01, harmonizer: Any = None
                      ) -> HighFrequencyBaseline:
        """Set :attr:`threshold` for ``fpr`` on the head slices of clean validation volumes (and harmonized)."""
        clean = []
        for item in volumes:
            head = np.asarray(item["head"], dtype=bool)
            clean.append(self.score01(item["volume"])[head])
            if harmonizer is not None:
                clean.append(self.score01(harmonized01(harmonizer, item["volume"]))[head])
        self.threshold = threshold_at_fpr(np.concatenate(clean), fpr)
        return self


class TrivialBaseline:
    """Flags no slice: every score 0, threshold 1 (the floor every method must beat)."""

    threshold = 1.0

    def score01(self, volume01: np.ndarray, harmonized: bool = False) -> np.ndarray:
        """Zeros ``[D]``."""
        return np.zeros(np.asarray(volume01).shape[-1])


def heldout_volumes(n_anatomies: int = 8, spacing: float = 2.0, seed: int = 0,
                    mni_dir: str | os.PathLike | None = None) -> list[dict]:
    """Held-out anatomies (seeds 10000 on) in held-out styles, normalized as at inference.

    Returns:
        One dict per volume: ``name``, ``volume`` (float32 ``[H, W, D]``), ``foreground`` (head fraction of
        each slice, from the truth) and ``head`` (head fraction >= 0.1).
    """
    from sgad_med.evaluation.harmonization import head_mask
    from sgad_med.evaluation.heldout import heldout_pairs, normalize_mr

    out = []
    for pair in heldout_pairs(n_anatomies, 1, spacing=spacing, seed=seed, mni_dir=mni_dir):
        foreground = head_mask(pair["target"]).mean(axis=(0, 1))
        out.append({"name": f"anatomy {pair['anatomy_seed']}", "volume": normalize_mr(pair["source"]),
                    "foreground": foreground, "head": foreground >= END_FOREGROUND})
    return out


def real_volumes(scans: Sequence[tuple[str, str, int | None]] | bool = True) -> list[dict]:
    """Real volumes (:func:`~sgad_med.evaluation.real_scans.load_real_volumes`) with their foreground fractions.

    There is no truth: the foreground of a slice is the fraction of its voxels above 0.05, and the volumes are
    presumed clean as shipped.
    """
    from sgad_med.evaluation.real_scans import FOREGROUND_THRESHOLD, load_real_volumes, resolve_real_scans

    out = []
    for item in load_real_volumes(resolve_real_scans(scans)):
        foreground = (item["volume"] > FOREGROUND_THRESHOLD).mean(axis=(0, 1))
        out.append({"name": item["name"], "volume": item["volume"], "foreground": foreground,
                    "head": foreground >= END_FOREGROUND})
    return out


def _seed(*parts: int) -> list[int]:
    return [int(p) for p in parts]


def evaluate_slice_groups(
    methods: Mapping[str, Any],
    thresholds: Mapping[str, float],
    volumes: Sequence[dict],
    kinds: Sequence[str] = ARTIFACT_KINDS,
    densities: Sequence[float] = DENSITIES,
    layouts: Sequence[str] = LAYOUTS,
    severity: float = 0.5,
    seed: int = 0,
    harmonizer: Any = None,
    progress: bool = False,
) -> dict:
    """Score clean and damaged copies of volumes with every method; rates by group, layout and density.

    For each volume: the clean volume (and with a harmonizer its harmonized version) is scored; then for each
    layout, density and kind a copy is damaged (:func:`evaluation_layout` over the slices with tissue, every
    damaged slice by that kind at ``severity``) and scored whole.

    Args:
        methods: name -> object with ``score01(volume01 [H, W, D], harmonized=False) -> [D]``.
        thresholds: name -> operating threshold (flagged: ``score >= threshold``).
        volumes: dicts with ``name``, ``volume`` and ``foreground`` (:func:`heldout_volumes`, :func:`real_volumes`).
        kinds: artifact kinds.
        densities: damaged fractions.
        layouts: ``"isolated"`` and/or ``"contiguous"``.
        severity: severity of every damaged slice.
        seed: seed of the layouts and the artifacts.
        harmonizer: object with ``harmonize01``, for the clean-after-harmonization rates.
        progress: progress bar.

    Returns:
        JSON-serialisable dict: ``methods``, ``thresholds``, ``settings`` (one per layout and density, plus
        ``clean`` and ``clean harmonized``: ``{"name", method: {group: fpr}, "n": {group: count}, method_sens}``),
        ``per_kind`` (``{kind: {method: {"sensitivity", "auroc"}, "n_positive"}}``), ``overall``
        (``{method: {"auroc", "sensitivity"}}``) and counts.
    """
    from tqdm import tqdm

    names, kinds = list(methods), list(kinds)
    unknown = [k for k in kinds if k not in ARTIFACT_KINDS]
    if unknown or not kinds or not volumes or not names:
        raise ValueError(f"evaluate_slice_groups needs methods, volumes and known kinds (unknown: {unknown})")
    flags: dict[str, dict[str, dict[str, list[np.ndarray]]]] = {}  # setting -> method -> group -> flags
    positives: dict[str, dict[str, list[np.ndarray]]] = {k: {m: [] for m in names} for k in kinds}
    positive_flags: dict[str, dict[str, list[np.ndarray]]] = {}
    negatives: dict[str, list[np.ndarray]] = {m: [] for m in names}
    timing = dict.fromkeys(names, 0.0)

    def score(volume: np.ndarray, harmonized: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            start = time.perf_counter()
            s = methods[name].score01(volume, harmonized=True) if harmonized else methods[name].score01(volume)
            timing[name] += time.perf_counter() - start
            out[name] = np.asarray(s, dtype=np.float64).reshape(-1)
            if out[name].shape != (volume.shape[-1],):
                raise ValueError(f"{name} returned {out[name].shape} scores for {volume.shape[-1]} slices")
        return out

    def record(setting: str, scores: dict[str, np.ndarray], damaged: np.ndarray, foreground: np.ndarray) -> None:
        groups = clean_groups(damaged, foreground)
        flags.setdefault(setting, {m: {g: [] for g in GROUPS} for m in names})
        positive_flags.setdefault(setting, {m: [] for m in names})
        for name in names:
            flagged = scores[name] >= thresholds[name]
            for group, mask in groups.items():
                flags[setting][name][group].append(flagged[mask])
            positive_flags[setting][name].append(flagged[damaged])
            negatives[name].append(scores[name][~damaged & (np.asarray(foreground) > 0)])

    settings = [(layout, density) for layout in layouts for density in densities]
    total = len(volumes) * (1 + (harmonizer is not None) + len(settings) * len(kinds))
    bar = tqdm(total=total, desc="evaluating detection", unit="volume", disable=not progress)
    for v, item in enumerate(volumes):
        volume = np.asarray(item["volume"], dtype=np.float32)
        foreground = np.asarray(item["foreground"], dtype=np.float64)
        none = np.zeros(volume.shape[-1], dtype=bool)
        record("clean", score(volume), none, foreground)
        bar.update()
        if harmonizer is not None:
            record("clean harmonized", score(harmonized01(harmonizer, volume), harmonized=True), none, foreground)
            bar.update()
        tissue = foreground > 0
        for s_index, (layout, density) in enumerate(settings):
            damaged = evaluation_layout(tissue, density, layout, np.random.default_rng(_seed(seed, v, s_index)))
            for kind in kinds:
                k_index = ARTIFACT_KINDS.index(kind)
                rng = np.random.default_rng(_seed(seed, v, s_index, k_index, 1))
                copy = volume.copy()
                for k in np.flatnonzero(damaged):
                    copy[..., k] = ARTIFACTS[kind](volume[..., k], severity, rng)
                changed = damaged & (np.abs(copy - volume).mean(axis=(0, 1)) > 0)
                scores = score(copy)
                record(f"{layout} {density:.0%}", scores, changed, foreground)
                for name in names:
                    positives[kind][name].append(scores[name][changed])
                bar.update()
    bar.close()

    pooled_negatives = {m: np.concatenate(negatives[m]) for m in names}

    def rate(parts: list[np.ndarray]) -> tuple[float | None, int]:
        joined = np.concatenate(parts) if parts else np.zeros(0, bool)
        return (float(joined.mean()) if joined.size else None), int(joined.size)

    setting_rows = []
    for setting, per_method in flags.items():
        row: dict[str, Any] = {"name": setting, "n": {}}
        for name in names:
            row[name] = {}
            for group in GROUPS:
                row[name][group], row["n"][group] = rate(per_method[name][group])
            row[name]["sensitivity"], row["n"]["damaged"] = rate(positive_flags[setting][name])
        setting_rows.append(row)
    per_kind: dict[str, Any] = {}
    for kind in kinds:
        per_kind[kind] = {}
        for name in names:
            pos = np.concatenate(positives[kind][name])
            neg = pooled_negatives[name]
            labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
            per_kind[kind][name] = {"sensitivity": float(np.mean(pos >= thresholds[name])) if pos.size else None,
                                    "auroc": auroc(np.r_[pos, neg], labels) if pos.size else None}
        per_kind[kind]["n_positive"] = int(np.concatenate(positives[kind][names[0]]).size)
    overall = {}
    for name in names:
        pos = np.concatenate([np.concatenate(positives[k][name]) for k in kinds])
        neg = pooled_negatives[name]
        labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
        overall[name] = {"auroc": auroc(np.r_[pos, neg], labels),
                         "sensitivity": float(np.mean(pos >= thresholds[name])),
                         "fpr": float(np.mean(neg >= thresholds[name]))}
    return {
        "methods": names,
        "thresholds": {m: float(thresholds[m]) for m in names},
        "volumes": [str(item["name"]) for item in volumes],
        "kinds": kinds,
        "densities": [float(d) for d in densities],
        "layouts": list(layouts),
        "severity": float(severity),
        "settings": setting_rows,
        "per_kind": per_kind,
        "overall": overall,
        "n_positive": int(sum(per_kind[k]["n_positive"] for k in kinds)),
        "n_negative": int(pooled_negatives[names[0]].size),
        "seconds_scoring": timing,
    }


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100.0 * value:5.1f}%"


def format_slice_groups_table(results: Mapping[str, Any], title: str) -> str:
    """One section of the evaluation (:func:`evaluate_slice_groups`) as a fixed-width table.

    Args:
        results: what :func:`evaluate_slice_groups` returned (or its JSON round trip).
        title: the section's first line.

    Returns:
        The table, lines joined by newlines.
    """
    names = list(results["methods"])
    width = max(len(n) for n in names) + 2
    lines = [title,
             f"volumes: {', '.join(results['volumes'])}",
             f"severity {results['severity']:g}, {len(results['kinds'])} kinds, one kind per damaged copy; "
             "thresholds: " + ", ".join(f"{n} {results['thresholds'][n]:.4g}" for n in names),
             "",
             "false-positive rate by group of clean slices (isolated: >= 3 slices from damage; adjacent: 1-2 slices "
             "from damage; end: head fraction < 10 %), and sensitivity",
             f"  {'setting':<20}{'method':<{width}}{'isolated':>9}{'adjacent':>9}{'end':>9}{'sensitivity':>12}"
             f"   (clean slices: isolated / adjacent / end; damaged)"]
    for row in results["settings"]:
        n = row["n"]
        counts = f"   ({n['isolated']} / {n['adjacent']} / {n['end']}; {n['damaged']})"
        for i, name in enumerate(names):
            label = row["name"] if i == 0 else ""
            sens = row[name]["sensitivity"]
            lines.append(f"  {label:<20}{name:<{width}}{_pct(row[name]['isolated']):>9}{_pct(row[name]['adjacent']):>9}"
                         f"{_pct(row[name]['end']):>9}{_pct(sens) if n['damaged'] else '':>12}"
                         f"{counts if i == 0 else ''}")
    lines.append("")
    lines.append("per artifact kind, all layouts and densities pooled: sensitivity at the threshold / AUROC "
                 "(damaged slices of that kind against every clean slice with tissue)")
    lines.append(f"  {'kind':<20}" + "".join(f"{n:>{max(len(n), 14) + 2}}" for n in names) + "   n damaged")
    for kind in results["kinds"]:
        row = results["per_kind"][kind]
        cells = []
        for name in names:
            s, a = row[name]["sensitivity"], row[name]["auroc"]
            cell = "n/a" if s is None else f"{s:.3f} / {a:.3f}"
            cells.append(f"{cell:>{max(len(name), 14) + 2}}")
        lines.append(f"  {kind:<20}" + "".join(cells) + f"   {row['n_positive']}")
    cells = [f"{results['overall'][n]['sensitivity']:.3f} / {results['overall'][n]['auroc']:.3f}" for n in names]
    lines.append(f"  {'all kinds':<20}" + "".join(f"{c:>{max(len(n), 14) + 2}}" for c, n in zip(cells, names))
                 + f"   {results['n_positive']} (clean: {results['n_negative']})")
    return "\n".join(lines)


class SliceGroupEvaluation:
    """The detection evaluation run by the bundle's ``evaluate.json`` (``sgad-med evaluate detector``).

    Builds the held-out volumes (:func:`heldout_volumes`) and the real volumes (:func:`real_volumes`), sets the
    baselines' thresholds on clean validation volumes of training anatomies (harmonized copies included with a
    harmonizer), runs :func:`evaluate_slice_groups` on both sets, prints :func:`format_slice_groups_table` for each
    and writes ``detection_evaluation.json`` to ``output_dir``.

    Args:
        detector: a :class:`~sgad_med.detector.SliceAnomalyDetector` (anything with ``score01`` and ``threshold``).
        harmonizer: a :class:`~sgad_med.harmonizer.Harmonizer` (clean-after-harmonization rates), or ``None``.
        n_anatomies: held-out anatomies.
        kinds: artifact kinds (``None``: all).
        densities: damaged fractions.
        layouts: damage layouts.
        severity: severity of the damage.
        seed: seed of the data, the layouts and the artifacts.
        mni_dir: folder of the MNI template (``None``: searched).
        output_dir: where ``detection_evaluation.json`` goes.
        spacing: voxel size of the synthetic volumes, mm.
        validation_anatomies: training anatomies whose clean volumes set the baselines' thresholds.
        target_fpr: the baselines' false-positive rate on those volumes.
        window: the baselines' neighbouring slices on each side.
        real_scans: ``True`` (the default real volumes), a sequence of (name, path, volume index), or ``False``.
        volumes: ready-made held-out volumes (:func:`heldout_volumes`) instead of building them from the above.
        progress: progress bars.
    """

    def __init__(
        self,
        detector: Any,
        harmonizer: Any = None,
        n_anatomies: int = 8,
        kinds: Sequence[str] | None = None,
        densities: Sequence[float] = DENSITIES,
        layouts: Sequence[str] = LAYOUTS,
        severity: float = 0.5,
        seed: int = 0,
        mni_dir: str | os.PathLike | None = None,
        output_dir: str | os.PathLike = "eval_output",
        spacing: float = 2.0,
        validation_anatomies: Iterable[int] = VALIDATION_ANATOMY_SEEDS,
        target_fpr: float = 0.01,
        window: int = 5,
        real_scans: bool | Sequence[tuple[str, str, int | None]] = True,
        volumes: Sequence[dict] | None = None,
        progress: bool = True,
    ) -> None:
        self.detector, self.harmonizer = detector, harmonizer
        self.n_anatomies = int(n_anatomies)
        self.kinds = list(ARTIFACT_KINDS if kinds is None else kinds)
        self.densities, self.layouts = [float(d) for d in densities], list(layouts)
        self.severity, self.seed = float(severity), int(seed)
        self.mni_dir, self.spacing, self.output_dir = mni_dir, float(spacing), Path(output_dir)
        self.validation_anatomies = [int(a) for a in validation_anatomies]
        self.target_fpr, self.window = float(target_fpr), int(window)
        self.real_scans, self.progress = real_scans, progress
        self.volumes = None if volumes is None else list(volumes)
        self.results: dict | None = None

    def methods(self) -> tuple[dict[str, Any], dict[str, float]]:
        """The methods compared and their thresholds (the baselines' set on the validation volumes)."""
        volumes = validation_volumes(self.validation_anatomies, spacing=self.spacing, seed=self.seed,
                                     mni_dir=self.mni_dir)
        classical = ClassicalBaseline(window=self.window).fit_threshold(volumes, self.target_fpr, self.harmonizer)
        high_frequency = HighFrequencyBaseline(window=self.window).fit_threshold(volumes, self.target_fpr,
                                                                                 self.harmonizer)
        methods = {"detector": self.detector, "classical": classical, "hf-neighbours": high_frequency,
                   "trivial": TrivialBaseline()}
        return methods, {name: float(m.threshold) for name, m in methods.items()}

    def run(self) -> dict:
        """Evaluate, print the tables, write the JSON; returns the results."""
        from sgad_med import __version__
        from sgad_med.evaluation.heldout import check_protocol_normalization

        start = time.perf_counter()
        check_protocol_normalization(self.detector, self.harmonizer)
        methods, thresholds = self.methods()
        common = {"kinds": self.kinds, "densities": self.densities, "layouts": self.layouts,
                  "severity": self.severity, "seed": self.seed, "progress": self.progress}
        volumes = self.volumes if self.volumes is not None else heldout_volumes(self.n_anatomies, self.spacing,
                                                                                 self.seed, self.mni_dir)
        heldout = evaluate_slice_groups(methods, thresholds, volumes, harmonizer=self.harmonizer, **common)
        real = real_volumes(self.real_scans) if self.real_scans else []
        real_results = evaluate_slice_groups(methods, thresholds, real, **common) if real else None
        results = {
            "heldout": heldout,
            "real_scans": real_results,
            "settings": {"n_anatomies": self.n_anatomies, "spacing": self.spacing, "seed": self.seed,
                         "validation_anatomy_seeds": self.validation_anatomies, "target_fpr": self.target_fpr,
                         "window": self.window, "harmonizer": self.harmonizer is not None,
                         "detector_threshold": "override" if getattr(self.detector, "_threshold", None) is not None
                         else "stored", "sgad_med": __version__},
        }
        results["seconds"] = time.perf_counter() - start
        self.results = results
        print(format_slice_groups_table(heldout, "held-out synthetic scans (anatomies 10000 on, held-out styles)"))
        if real_results is not None:
            print()
            print(format_slice_groups_table(real_results, "real volumes, clean as shipped (no truth), the same "
                                            "damage added"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "detection_evaluation.json").write_text(json.dumps(results, indent=2))
        return results

    __call__ = run
