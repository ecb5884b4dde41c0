"""Reports: per scan ``slices.csv``, ``report.json`` and PNG figures; per run ``report.html``.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend, safe in worker
threads); the HTML page is rendered from a Jinja2 template shipped with the package, autoescaped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from sgad_med.io.atomic import atomic_file

if TYPE_CHECKING:
    from sgad_med.io import Scan
    from sgad_med.pipeline import Result

#: Columns of ``slices.csv``, in order (the first four are the output contract).
SLICE_COLUMNS = ("slice", "score", "flagged", "restored", "input_score", "harmonized_score", "cause", "fallback",
                 "structure", "slice_axis")

#: At most this many flagged slices get a figure each (the scores plot always covers every slice).
MAX_SLICE_FIGURES = 24

FIGURES_DIR = "figures"
SCORES_FIGURE = "scores.png"


def slice_figure_name(k: int) -> str:
    """File name of the figure of slice ``k`` under ``figures/``."""
    return f"slice_{k:04d}.png"


def _score(value: Any) -> float | None:
    """A score as a plain float in [0, 1] (``None`` for NaN: strict JSON has no NaN)."""
    value = float(value)
    if math.isnan(value):
        return None
    return min(max(value, 0.0), 1.0)


def _jsonable(value: Any) -> Any:
    """``value`` made of JSON types only: paths and unknown objects as text, NaN/Inf as ``None``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _versions() -> dict[str, str]:
    import monai
    import torch

    from sgad_med import __version__

    return {
        "sgad_med": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
    }


def _structure(result: Result, k: int) -> float | None:
    value = None if result.structure is None else float(result.structure[k])
    return None if value is None or not np.isfinite(value) else round(value, 6)


def slice_rows(result: Result) -> list[dict[str, Any]]:
    """One dict per slice with the :data:`SLICE_COLUMNS` (``harmonized_score`` ``None`` when skipped)."""
    rows = []
    for k in range(len(result.scores)):
        rows.append(
            {
                "slice": k,
                "score": _score(result.scores[k]),
                "flagged": int(bool(result.flagged[k])),
                "restored": int(bool(result.restored[k])),
                "input_score": _score(result.input_scores[k]),
                "harmonized_score": None if result.harmonized_scores is None else _score(result.harmonized_scores[k]),
                "cause": str(result.cause[k]) if k < len(result.cause) else "",
                "fallback": int(result.fallback is not None and bool(result.fallback[k])),
                "structure": _structure(result, k),
                "slice_axis": result.slice_axis.name,  # which RAS axis "slice" indexes: R, A or S
            }
        )
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(SLICE_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    "" if row[c] is None else (f"{row[c]:.6f}" if isinstance(row[c], float) else row[c])
                    for c in SLICE_COLUMNS
                ]
            )


def _display_window(result: Result) -> tuple[float, float]:
    """The scan-units range that maps to [0, 1] for display: the input's normalization as the pipeline did it
    (recorded in the result's settings), else the modality's default one."""
    recorded = result.settings.get("normalization", {})
    if "lo" in recorded and "hi" in recorded:
        return float(recorded["lo"]), float(recorded["hi"])
    from sgad_med.transforms.intensity import normalize

    _, params = normalize(result.scan.image[0:1], modality=result.scan.modality)
    return float(params.lo), float(params.hi)


def _display_slice(scan: Scan, k: int, window: tuple[float, float], axis: int = 2) -> np.ndarray:
    """Slice ``k`` along RAS ``axis`` in [0, 1], turned for a radiological view.

    Of the two in-plane RAS axes, the later one runs up the picture (anterior up in an axial slice, superior up
    in a sagittal or coronal one) and the earlier one runs right to left (patient's right on the viewer's left;
    anterior on the left in a sagittal slice).
    """
    lo, hi = window
    plane = scan.image[0].select(axis, k).detach().cpu().numpy().astype(np.float32)
    plane = np.clip((plane - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return plane.T[::-1, ::-1]


def _aspect(scan: Scan, axis: int = 2) -> float:
    first, second = (scan.spacing[i] for i in range(3) if i != axis)
    return second / first if first > 0 else 1.0


def _corrected_title(result: Result, k: int) -> str:
    if result.fallback is not None and bool(result.fallback[k]):
        return "fallback: input mapped" if result.fallback_scope == "slices" else "fallback: input"
    return "restored" if bool(result.restored[k]) else "corrected (not restored)"


def _slice_figure(result: Result, k: int, window: tuple[float, float], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    axis = result.slice_axis.index
    before = _display_slice(result.scan, k, window, axis)
    after = _display_slice(result.corrected, k, window, axis)
    harmonized = None if result.harmonized is None else _display_slice(result.harmonized, k, window, axis)
    panels: list[tuple[str, np.ndarray | None]] = [
        ("input", before),
        ("harmonized", harmonized),
        (_corrected_title(result, k), after),
    ]
    # what the restoration (or fallback) changed, then what the whole chain changed; one colour scale for both
    differences = [
        ("|corrected - harmonized|", np.abs(after - (before if harmonized is None else harmonized))),
        ("|corrected - input|", np.abs(after - before)),
    ]
    top = max(max(float(d.max()) for _, d in differences), 1e-3)
    fig = Figure(figsize=(15, 3.4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    aspect = _aspect(result.scan, axis)
    for ax, (title, image) in zip(axes[:3], panels):
        if image is None:
            ax.text(0.5, 0.5, "harmonization\nskipped", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    for ax, (title, difference) in zip(axes[3:], differences):
        shown = ax.imshow(difference, cmap="magma", vmin=0.0, vmax=top, aspect=aspect, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[4], fraction=0.046, pad=0.04)
    cause = result.cause[k] if k < len(result.cause) else ""
    fig.suptitle(
        f"{result.scan.scan_id} {result.slice_axis.plane} slice {k}: score {float(result.scores[k]):.3f}"
        + (f" (cause: {cause})" if cause else "")
    )
    fig.savefig(path, format="png", bbox_inches="tight")


def _scores_figure(result: Result, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    slices = np.arange(len(result.scores))
    fig = Figure(figsize=(9, 3), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # a line through one point draws nothing: short scans (a single image, a few slices) get markers
    marker = {"marker": "o", "markersize": 5} if len(slices) <= 16 else {}
    ax.plot(slices, result.input_scores, ls="--", lw=1, color="tab:blue", label="input", **marker)
    if result.harmonized_scores is not None:
        ax.plot(slices, result.harmonized_scores, ls=":", lw=1, color="tab:orange", label="harmonized", **marker)
    ax.plot(slices, result.scores, lw=1.5, color="black", label="score", **marker)
    flagged = np.flatnonzero(np.asarray(result.flagged))
    if len(flagged):
        ax.scatter(flagged, np.asarray(result.scores)[flagged], color="red", zorder=3, s=16, label="flagged")
    ax.axhline(result.threshold, color="red", lw=1, label=f"threshold {result.threshold:.3f}")
    ax.set_xlim(-0.5, max(len(slices) - 0.5, 0.5))
    ax.set_ylim(-0.02, 1.02)
    direction = {"R": "left to right", "A": "posterior to anterior", "S": "inferior to superior"}
    ax.set_xlabel(f"{result.slice_axis.plane} slice (0-based, {direction[result.slice_axis.name]})")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{result.scan.scan_id}: score along the slice axis")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # outside: never hides a curve
    fig.savefig(path, format="png", bbox_inches="tight")


def write_scan_outputs(
    scan_dir: Path, result: Result, inputs: list[str], settings: dict, dicom: dict[str, Any] | None = None
) -> list[Path]:
    """Write ``slices.csv``, the figures and ``report.json`` of one scan into ``scan_dir``.

    ``report.json`` is written last: its presence marks the folder complete.

    Args:
        scan_dir: an existing folder (the caller's temporary scan folder, renamed when complete).
        result: the pipeline's result for the scan.
        inputs: the input paths the scan was read from, as text.
        settings: the options of the run, recorded in ``report.json`` (made JSON-safe).
        dicom: what was written as DICOM and, for what was not, why (``report.json``'s ``"dicom"``); ``None``
            when no DICOM output was asked for.

    Returns:
        The files written: ``slices.csv``, the figures, then ``report.json``.
    """
    scan_dir = Path(scan_dir)
    written: list[Path] = []
    rows = slice_rows(result)
    csv_path = scan_dir / "slices.csv"
    _write_csv(csv_path, rows)
    written.append(csv_path)

    figures_dir = scan_dir / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    scores_path = figures_dir / SCORES_FIGURE
    _scores_figure(result, scores_path)
    written.append(scores_path)
    flagged = [int(k) for k in np.flatnonzero(np.asarray(result.flagged))]
    drawn = flagged[:MAX_SLICE_FIGURES]
    if drawn:
        window = _display_window(result)
        for k in drawn:
            path = figures_dir / slice_figure_name(k)
            _slice_figure(result, k, window, path)
            written.append(path)

    scan = result.scan
    report = {
        "scan_id": scan.scan_id,
        "inputs": [str(i) for i in inputs],
        "modality": scan.modality,
        "shape": list(scan.shape),
        "spacing": list(scan.spacing),
        "settings": settings,
        "versions": _versions(),
        "timings": result.timings,
        "threshold": result.threshold,
        "counts": {
            "slices": len(rows),
            "flagged": len(flagged),
            "restored": int(np.count_nonzero(np.asarray(result.restored))),
            "flagged_by_harmonization": sum(
                1 for r in rows if r["flagged"] and r["cause"] in ("harmonization", "both")
            ),
            "fallback": sum(r["fallback"] for r in rows),
        },
        "harmonization_fallback": result.fallback_scope,
        "slice_axis": result.slice_axis.as_dict(),
        "background_voxels": None if result.background is None else int(np.count_nonzero(result.background)),
        "dicom": dicom,
        "figures": {
            "scores": f"{FIGURES_DIR}/{SCORES_FIGURE}",
            "slices": {str(k): f"{FIGURES_DIR}/{slice_figure_name(k)}" for k in drawn},
            "max_slice_figures": MAX_SLICE_FIGURES,
            "slices_without_figure": len(flagged) - len(drawn),
        },
        "slices": rows,
    }
    report_path = scan_dir / "report.json"
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"
    with atomic_file(report_path, overwrite=True) as tmp:  # a half-written report.json is never the finished marker
        tmp.write_text(text, encoding="utf-8")
    written.append(report_path)
    return written


def _scan_figures(out_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one finished scan, as URL-quoted links relative to ``out_dir`` (only those that exist)."""
    folder = Path(str(entry.get("dir") or entry.get("scan_id") or ""))
    scan_dir = out_dir / folder
    figures: dict[str, Any] = {"scores": None, "slices": [], "not_shown": 0}
    try:
        listed = json.loads((scan_dir / "report.json").read_text(encoding="utf-8")).get("figures", {})
    except (OSError, ValueError):  # an unreadable report.json: show the counts without figures
        return figures
    figures["not_shown"] = int(listed.get("slices_without_figure", 0))
    scores = listed.get("scores")
    if scores and (scan_dir / scores).is_file():
        figures["scores"] = quote((folder / scores).as_posix())
    for k, name in sorted(listed.get("slices", {}).items(), key=lambda item: int(item[0])):
        if (scan_dir / name).is_file():
            figures["slices"].append({"slice": int(k), "src": quote((folder / name).as_posix())})
    return figures


def write_run_report(out_dir: Path, entries: Sequence[dict[str, Any]]) -> Path:
    """Write ``out_dir/report.html``: totals, then per scan its counts and figures, or its error.

    The page links the PNG figures of each scan folder by relative paths, so the output folder can be moved or
    opened offline. It appears atomically.

    Args:
        out_dir: the run's output folder.
        entries: one dict per input scan with ``scan_id``, ``inputs``, ``status`` (``ok``/``failed``/``skipped``),
            ``error``, ``n_slices``, ``n_flagged``, ``n_restored`` and ``dir`` (the scan folder, relative to
            ``out_dir``).

    Returns:
        The path of ``report.html``.
    """
    import jinja2

    out_dir = Path(out_dir)
    scans = []
    for entry in entries:
        scan: dict[str, Any] = {
            "scan_id": "",
            "status": "",
            "error": None,
            "n_slices": None,
            "n_flagged": None,
            "n_restored": None,
            "dir": None,
            **entry,
        }
        scan["inputs"] = [str(i) for i in (entry.get("inputs") or [])]
        scan["figures"] = _scan_figures(out_dir, entry) if entry.get("status") == "ok" else None
        scans.append(scan)
    totals = {
        "scans": len(scans),
        **{status: sum(1 for s in scans if s.get("status") == status) for status in ("ok", "failed", "skipped")},
        "slices": sum(int(s.get("n_slices") or 0) for s in scans),
        "flagged": sum(int(s.get("n_flagged") or 0) for s in scans),
        "restored": sum(int(s.get("n_restored") or 0) for s in scans),
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sgad_med", "templates"),
        autoescape=True,  # scan ids, paths and error messages come from files: never trust them as HTML
        undefined=jinja2.StrictUndefined,
    )
    from sgad_med import __version__

    html = env.get_template("report.html.j2").render(scans=scans, totals=totals, version=__version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "report.html"
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target
