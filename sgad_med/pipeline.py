"""SGADPipeline: load → normalize → harmonize → detect → restore → denormalize, one scan at a time."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sgad_med.bundles import resolve_device
from sgad_med.errors import SGADError
from sgad_med.io import Scan, load_scan
from sgad_med.io.slice_axis import SliceAxis, choose_slice_axis, parse_slice_axis
from sgad_med.transforms.background import background_level01, outside_body
from sgad_med.transforms.intensity import ScanNormalize, denormalize
from sgad_med.transforms.scan_lut import apply_intensity_lut, fit_intensity_lut, slice_structure_agreement
from sgad_med.transforms.slices import foreground_slices

if TYPE_CHECKING:
    from sgad_med.detector import SliceAnomalyDetector
    from sgad_med.harmonizer import Harmonizer
    from sgad_med.restorer import SliceRestorer

#: Values of :attr:`Result.cause`: why a slice was flagged.
CAUSES = ("", "input", "harmonization", "both")


@dataclass
class Result:
    """What the pipeline made of one scan.

    Attributes:
        scan: the input scan, as loaded.
        harmonized: the scan after harmonization, in the input's units (``None`` when harmonization was skipped).
        corrected: the harmonized scan (or the input, when skipped) with the flagged slices restored.
        input_scores: per-slice anomaly probability of the input ``[D]``.
        harmonized_scores: per-slice anomaly probability of the harmonized slices ``[D]`` (``None`` when skipped).
        scores: the per-slice score reported, ``max`` of the two ``[D]``.
        flagged: ``scores >= threshold`` ``[D]``.
        restored: slices that were restored ``[D]`` (the flagged ones under the default policy).
        cause: per slice, one of :data:`CAUSES`: ``"input"`` (damaged on arrival), ``"harmonization"`` (normal in
            the input, anomalous after harmonization: the GAN damaged it), ``"both"``, or ``""`` (not flagged).
        threshold: the threshold used.
        timings: seconds per stage (``load``, ``harmonize``, ``detect``, ``restore``, ``total``; ``write``
            once written).
        settings: the options the pipeline ran with.
        fallback: slices whose corrected version is the safe fallback instead of the harmonized or restored slice
            ``[D]`` (see :class:`SGADPipeline`; ``None``: none).
        fallback_scope: ``"none"``, ``"slices"`` (the slices the harmonizer damaged) or ``"scan"`` (the harmonizer
            damaged most of the scan: every slice is the input).
        structure: per slice, the gradient correlation of the harmonized slice with the table-mapped input (NaN
            without tissue; ``None`` when not checked).
        slice_axis: the axis of the RAS-oriented image the slices were taken along, and why
            (:func:`~sgad_med.io.slice_axis.choose_slice_axis`); every per-slice array indexes it.
        background: voxels outside the body ``[H, W, D]`` (RAS, like the image), where both output volumes hold
            the input's voxels (``None``: not computed).
    """

    scan: Scan
    harmonized: Scan | None
    corrected: Scan
    input_scores: np.ndarray
    harmonized_scores: np.ndarray | None
    scores: np.ndarray
    flagged: np.ndarray
    restored: np.ndarray
    cause: list[str]
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    fallback: np.ndarray | None = None
    fallback_scope: str = "none"
    structure: np.ndarray | None = None
    slice_axis: SliceAxis = field(default_factory=lambda: SliceAxis(2, "axial by default"))
    background: np.ndarray | None = None

    @property
    def flagged_slices(self) -> list[int]:
        """Indices of the flagged slices."""
        return [int(k) for k in np.flatnonzero(self.flagged)]


RESTORE_POLICIES = ("flagged", "none")
"""What :class:`SGADPipeline` restores: the flagged slices, or nothing (detection only)."""

# Where each component lives inside a bundles folder (model-zoo layout, see DESIGN.md).
BUNDLE_NAMES = {
    "harmonizer": "style_harmonization",
    "detector": "slice_anomaly_detection",
    "restorer": "slice_restoration",
}


class SGADPipeline:
    """The whole flow of DESIGN.md for one scan: normalize → harmonize → detect → restore → denormalize.

    The scan is normalized once (CT: HU window, MR: robust percentiles), by the components' common normalizer
    (their bundles share ``transforms/scan_normalization.json``; components that normalize differently are
    refused, since each network only knows the intensities it was trained on). The harmonizer maps it to the reference
    style; the detector scores every slice of the *input* and of the *harmonized* volume, and a slice's score is
    the larger of the two. Slices whose score reaches the threshold are flagged; under the default policy they
    are restored from their harmonized neighbours, and every other slice stays exactly as harmonized. The
    harmonized and corrected volumes are mapped back to the input's units with the input's normalization.

    Every stage streams the slices through its network ``batch_size`` at a time (see the three components), so
    peak memory is a few copies of the volume plus one batch, whatever the number of stages.

    **Slices the GAN damaged.** A slice that is normal in the input but anomalous after harmonization
    (hallucinated structure, checkerboard, intensity drift introduced by the generator) is flagged like any
    other: its harmonized score reaches the threshold even though its input score does not. It is restored
    like any flagged slice, and :attr:`Result.cause` records ``"harmonization"`` for it, so reports say that the
    GAN, not the acquisition, was the cause. ``"input"`` marks slices anomalous on arrival whose harmonized
    version scores below the threshold, ``"both"`` slices anomalous before and after harmonization; both kinds are
    restored too (a damaged input slice that the GAN made look plausible is still not to be trusted).

    **Safe fallback.** A slice flagged with cause ``"harmonization"`` is *not* restored from its harmonized
    neighbours (they may be damaged as well, and restoring cannot bring back anatomy they lost): its corrected
    version is the input slice mapped through one lookup table per scan, fitted from the input to the harmonized
    intensities on the slices the check trusts (:mod:`sgad_med.transforms.scan_lut`), which keeps every edge of the
    input and adds none. When the harmonizer damaged more than ``scan_fallback_fraction`` of the slices with
    anatomy, nothing of the harmonization is trusted: every corrected slice is the input itself. Besides the
    detector's flags, the quality check compares each harmonized slice's edges with the table-mapped input's
    (:func:`~sgad_med.transforms.scan_lut.slice_structure_agreement`): a scan-wide contrast change, inversions
    included, is in the table and agrees; a structure drawn or erased in one place does not, and a slice below
    ``min_structure`` takes the fallback as well (:attr:`Result.structure`). Both are recorded
    (:attr:`Result.fallback`, :attr:`Result.fallback_scope`; ``slices.csv`` and ``report.json``). ``harmonized``
    stays the generator's output, so that the damage can be seen.

    Args:
        harmonizer: a :class:`~sgad_med.harmonizer.Harmonizer` (may be ``None`` when ``harmonize`` is False).
        detector: a :class:`~sgad_med.detector.SliceAnomalyDetector`.
        plane_detector: the detector for scans sliced in sagittal or coronal planes (``None``: ``detector`` for
            every plane). The detection bundle ships one (``configs/planes.json``): the axial weights flag about
            20 % of clean sagittal and coronal slices, these about 1 %; axial scans keep the axial weights, which
            are the more stable ones there (see the bundle's docs).
        restorer: a :class:`~sgad_med.restorer.SliceRestorer` (may be ``None`` when ``restore_policy`` is
            ``"none"``).
        harmonize: run the harmonizer; when False, detection and restoration work on the input itself and
            ``Result.harmonized`` is ``None``.
        threshold: decision threshold in [0, 1]; ``None`` takes the detector's calibrated one.
        restore_policy: ``"flagged"`` (restore the flagged slices) or ``"none"`` (only detect).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``, ...: the components are moved there;
            ``None`` leaves them where they are.
        batch_size: slices per forward pass for every component (``None`` keeps theirs).
        progress: show progress bars over the slices of each stage.
        fallback: use the safe fallback above (``False``: restore harmonization-damaged slices like the others).
            Under ``restore_policy="none"`` nothing is corrected, the fallback included.
        scan_fallback_fraction: share of the slices with anatomy damaged by harmonization above which the whole
            scan falls back to the input.
        min_structure: a slice that arrived clean whose harmonized edges agree with those of the table-mapped input
            by a gradient correlation below this is treated as damaged by harmonization too (see above). Off (0:
            the check is not computed) by default: the shipped generator's guided filter and spatially varying
            tables put the agreement of correct slices of held-out synthetic scans at 0.5-0.95, so a strict gate
            (0.8) also rejects good harmonizations (see the sgad_pipeline bundle's docs for both settings measured).
        slice_axis: ``"auto"`` (the acquisition plane: see :func:`~sgad_med.io.slice_axis.choose_slice_axis`), or
            ``"axial"``/``"coronal"``/``"sagittal"`` (or the RAS axis 0-2) for every scan.
        keep_background: outside the body (:func:`~sgad_med.transforms.background.outside_body`) both output
            volumes hold the input's voxels, bit for bit.

    Example::

        pipeline = SGADPipeline.from_bundles("bundles")
        result = pipeline(sgad_med.load_scan("sample_data/synthetic_mr.nii.gz"))
        print(result.flagged_slices, result.cause)
        sgad_med.save_scan(result.corrected, "corrected.nii.gz")
    """

    def __init__(
        self,
        harmonizer: Harmonizer | None,
        detector: SliceAnomalyDetector,
        restorer: SliceRestorer | None,
        harmonize: bool = True,
        threshold: float | None = None,
        restore_policy: str = "flagged",
        device: str | torch.device | None = "auto",
        batch_size: int | None = None,
        progress: bool = False,
        fallback: bool = True,
        scan_fallback_fraction: float = 0.5,
        min_structure: float = 0.0,
        slice_axis: str | int = "auto",
        keep_background: bool = True,
        plane_detector: SliceAnomalyDetector | None = None,
    ) -> None:
        if restore_policy not in RESTORE_POLICIES:
            raise SGADError(None, f"unknown restore policy {restore_policy!r}", fix=f"use one of {RESTORE_POLICIES}")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise SGADError(None, f"threshold {threshold} lies outside [0, 1]", fix="pass a probability, e.g. 0.5")
        if harmonize and harmonizer is None:
            raise SGADError(None, "harmonize=True needs a harmonizer", fix="pass one, or harmonize=False")
        if restore_policy != "none" and restorer is None:
            raise SGADError(None, f"restore_policy={restore_policy!r} needs a restorer", fix="pass one, or 'none'")
        self.harmonizer, self.detector, self.restorer = harmonizer, detector, restorer
        self.plane_detector = plane_detector
        self.normalizer = self._common_normalizer()
        self.harmonize = bool(harmonize)
        self._threshold = None if threshold is None else float(threshold)
        self.restore_policy = restore_policy
        self.fallback = bool(fallback)
        self.scan_fallback_fraction = float(scan_fallback_fraction)
        self.min_structure = float(min_structure)
        parse_slice_axis(slice_axis)  # refuse a bad value now, not at the first scan
        self.slice_axis = slice_axis
        self.keep_background = bool(keep_background)
        self.device = None if device is None else resolve_device(device)
        for component in self._components():
            if self.device is not None and hasattr(component, "network"):
                component.network = component.network.to(self.device)
                component.device = self.device
                if self.device.type != "cpu" and getattr(component, "onnx_encoder", None) is not None:
                    component.onnx_encoder = None  # ONNX Runtime serves the CPU only: the GPU runs the network
            if batch_size is not None:
                component.batch_size = int(batch_size)
            component.progress = progress

    def _common_normalizer(self) -> ScanNormalize:
        """The scan is normalized once for all stages, so every component must normalize alike: the detector's
        normalizer (the default one for components that have none), checked against the others'."""
        normalizer = getattr(self.detector, "normalizer", None)
        normalizer = normalizer if normalizer is not None else ScanNormalize()
        for name, component in (("harmonizer", self.harmonizer), ("restorer", self.restorer),
                                ("plane detector", self.plane_detector)):
            other = getattr(component, "normalizer", None)
            if other is not None and other.settings != normalizer.settings:
                raise SGADError(None, f"the {name} normalizes scans differently from the detector "
                                f"({other.settings} vs {normalizer.settings})",
                                fix="load all three from bundles sharing one transforms/scan_normalization.json")
        return normalizer

    def _components(self) -> list[Any]:
        return [c for c in (self.harmonizer, self.detector, self.plane_detector, self.restorer) if c is not None]

    def detector_for(self, axis: SliceAxis) -> SliceAnomalyDetector:
        """The detector that scores slices along ``axis``: the plane detector for sagittal and coronal slices."""
        return self.plane_detector if axis.index != 2 and self.plane_detector is not None else self.detector

    @classmethod
    def from_bundles(
        cls, bundles: str | os.PathLike = "bundles", device: str | torch.device = "auto", **options: Any
    ) -> SGADPipeline:
        """Load the three networks from a folder holding the model-zoo bundles.

        Args:
            bundles: the folder holding ``style_harmonization``, ``slice_anomaly_detection`` and
                ``slice_restoration`` (each with ``configs/inference.json`` and ``models/model.pt``).
            device: where the networks run (``"auto"``: CUDA when present).
            options: the other arguments of :class:`SGADPipeline` (``harmonize``, ``threshold``,
                ``restore_policy``, ``batch_size``, ``progress``). Components not needed are not loaded.
                ``runtime="torch"`` keeps the detector's slice encoder in PyTorch; the default ``"auto"`` runs
                it in ONNX Runtime on the CPU when that is installed (the ``fast`` extra) and the bundle ships an
                export of its weights (``models/encoder.onnx``).

        Raises:
            SGADError: the folder or one of the bundles (config or weights) is missing.
        """
        from sgad_med.detector import SliceAnomalyDetector
        from sgad_med.harmonizer import Harmonizer
        from sgad_med.restorer import SliceRestorer

        root = Path(bundles)
        if not root.is_dir():
            raise SGADError(root, "bundles folder not found",
                            fix="pass the folder holding style_harmonization, slice_anomaly_detection and "
                                "slice_restoration (e.g. the repository's bundles/)")
        needed = {"detector": True, "harmonizer": options.get("harmonize", True),
                  "restorer": options.get("restore_policy", "flagged") != "none"}
        for role, name in BUNDLE_NAMES.items():
            if needed[role] and not (root / name).is_dir():
                raise SGADError(root / name, f"the {role} bundle is missing",
                                fix=f"put the {name} bundle in {root} or pass another bundles folder")
        runtime = options.pop("runtime", "auto")
        if runtime not in ("auto", "torch"):
            raise SGADError(None, f"unknown runtime {runtime!r}", fix="use 'auto' or 'torch'")
        harmonizer = Harmonizer.from_bundle(root / BUNDLE_NAMES["harmonizer"], device) if needed["harmonizer"] else None
        detector = SliceAnomalyDetector.from_bundle(root / BUNDLE_NAMES["detector"], device)
        if runtime == "auto":
            detector.use_onnx_encoder(root / BUNDLE_NAMES["detector"])
        plane_detector = None
        if (root / BUNDLE_NAMES["detector"] / "configs" / "planes.json").is_file():
            plane_detector = SliceAnomalyDetector.from_bundle(root / BUNDLE_NAMES["detector"], device,
                                                              overlays=["planes.json"])
        restorer = SliceRestorer.from_bundle(root / BUNDLE_NAMES["restorer"], device) if needed["restorer"] else None
        return cls(harmonizer, detector, restorer, device=device, plane_detector=plane_detector, **options)

    @property
    def progress(self) -> bool:
        """Whether the stages show progress bars over slices."""
        return any(getattr(c, "progress", False) for c in self._components())

    @progress.setter
    def progress(self, value: bool) -> None:
        for component in self._components():
            component.progress = bool(value)

    @property
    def threshold(self) -> float:
        """The decision threshold in use: the override, else the detector's calibrated one."""
        return self._threshold if self._threshold is not None else float(self.detector.threshold)

    @property
    def settings(self) -> dict[str, Any]:
        """The options this pipeline runs with (recorded in every :class:`Result`)."""
        return {
            "harmonize": self.harmonize,
            "threshold": self.threshold,
            "threshold_source": "override" if self._threshold is not None else "detector",
            "restore_policy": self.restore_policy,
            "fallback": self.fallback,
            "scan_fallback_fraction": self.scan_fallback_fraction,
            "min_structure": self.min_structure,
            "slice_axis": str(self.slice_axis),
            "keep_background": self.keep_background,
            "device": str(self.device if self.device is not None else self.detector.device),
            "detector_runtime": getattr(self.detector, "runtime", "torch"),
            "batch_size": {name: int(c.batch_size) for name, c in zip(("harmonizer", "detector", "restorer"),
                           (self.harmonizer, self.detector, self.restorer)) if c is not None},
        }

    def __call__(self, scan: Scan | str | os.PathLike) -> Result:
        """Run the flow on one scan (or the path of one, which is loaded first).

        Args:
            scan: a :class:`~sgad_med.io.Scan`, or anything :func:`~sgad_med.io.load_scan` reads.

        Returns:
            The :class:`Result`: harmonized and corrected scans in the input's units and geometry, per-slice
            scores, flags, restored slices, causes and timings (seconds per stage).
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        if not isinstance(scan, Scan):
            scan = load_scan(scan)
            timings["load"] = time.perf_counter() - start
        clock = time.perf_counter()
        axis = choose_slice_axis(scan, self.slice_axis)
        # every stage works on slices along the last axis: the chosen axis is moved there, and back at the end
        image = scan.image.as_tensor().detach().cpu().movedim(axis.index + 1, -1)
        volume01, params = self.normalizer.normalize_with_params(image[0:1], scan.modality)
        input01 = torch.as_tensor(volume01)[0]
        background = None
        if self.keep_background:
            level = background_level01(scan.modality, tuple(self.normalizer.settings.get("window", (-1024.0, 3071.0))))
            background = torch.from_numpy(outside_body(input01, level))
        timings["normalize"] = _lap(clock)

        clock = time.perf_counter()
        harmonized01 = self.harmonizer.harmonize01(input01) if self.harmonize else input01
        timings["harmonize"] = _lap(clock)

        clock = time.perf_counter()
        detector = self.detector_for(axis)
        threshold = self._threshold if self._threshold is not None else float(detector.threshold)
        input_scores = np.asarray(detector.score01(input01), dtype=np.float32)
        harmonized_scores = None
        if self.harmonize:
            harmonized_scores = np.asarray(detector.score01(harmonized01, harmonized=True), dtype=np.float32)
        scores = input_scores if harmonized_scores is None else np.maximum(input_scores, harmonized_scores)
        flagged = scores >= threshold
        harmonized_flags = None if harmonized_scores is None else harmonized_scores >= threshold
        cause = _causes(input_scores >= threshold, harmonized_flags)
        timings["detect"] = _lap(clock)

        clock = time.perf_counter()
        structure = table = None
        if self._fallback_on and self.min_structure > 0:
            structure, table = self._structure_check(input01, harmonized01, flagged)
            timings["structure_check"] = _lap(clock)
        fallback, scope = self._fallback_slices(input01, cause, structure)
        fallback01 = None
        if scope == "slices":
            if table is None:
                table = fit_intensity_lut(input01, harmonized01, ~flagged & foreground_slices(input01))
            fallback01 = apply_intensity_lut(input01[..., fallback], table)
        timings["fallback"] = _lap(clock)
        del input01  # drop our reference: fewer whole volumes alive during restoration

        clock = time.perf_counter()
        restored = flagged & ~fallback if self.restore_policy == "flagged" else np.zeros_like(flagged)
        chosen = np.flatnonzero(restored)
        repaired01 = self.restorer.restore01(harmonized01, chosen)[..., chosen] if chosen.size else None
        timings["restore"] = _lap(clock)

        clock = time.perf_counter()
        if self.harmonize:
            # Voxels the normalization clipped are not put back: they belong to the input's style.
            base = torch.as_tensor(denormalize(harmonized01[None], params, restore_clipped=False))
        else:
            base = image
        corrected_image = base[0:1].clone()
        if repaired01 is not None:
            # Only the restored slices change: everywhere else corrected equals harmonized bit for bit.
            corrected_image[0, ..., chosen] = torch.as_tensor(denormalize(repaired01, params, restore_clipped=False))
        if scope == "scan":
            corrected_image = image[0:1].clone()  # nothing of the harmonization is trusted: the input, bit for bit
        elif fallback01 is not None:
            corrected_image[0, ..., fallback] = torch.as_tensor(
                denormalize(fallback01[None], params, restore_clipped=False))[0]
        if background is not None:  # outside the body both outputs are the input, bit for bit
            kept = background.clone()
            kept[..., chosen] = False  # except on restored slices: their background was damaged too
            corrected_image[0][kept] = image[0][kept]
            if self.harmonize:  # base is then the pipeline's own denormalized volume: changed in place, no copy
                base[0][background] = image[0][background]
        harmonized = scan.with_image(base[0:1].movedim(-1, axis.index + 1).contiguous()) if self.harmonize else None
        corrected = scan.with_image(corrected_image.movedim(-1, axis.index + 1).contiguous())
        timings["denormalize"] = _lap(clock)
        timings["total"] = time.perf_counter() - start

        settings = {**self.settings, "threshold": threshold, "modality": scan.modality, "slice_axis": axis.as_dict(),
                    "detector_weights": "planes" if detector is not self.detector else "axial",
                    "normalization": {"kind": params.kind, "lo": float(params.lo), "hi": float(params.hi),
                                      **self.normalizer.settings}}
        return Result(
            scan=scan,
            harmonized=harmonized,
            corrected=corrected,
            input_scores=input_scores,
            harmonized_scores=harmonized_scores,
            scores=scores.astype(np.float32),
            flagged=flagged,
            restored=restored,
            cause=cause,
            threshold=threshold,
            timings=timings,
            settings=settings,
            fallback=fallback,
            fallback_scope=scope,
            structure=structure,
            slice_axis=axis,
            background=None if background is None else background.movedim(-1, axis.index).numpy(),
        )

    @property
    def _fallback_on(self) -> bool:
        """Whether the safe fallback can apply: harmonizing, correcting, and not turned off."""
        return self.harmonize and self.fallback and self.restore_policy == "flagged"

    def _structure_check(self, input01: torch.Tensor, harmonized01: torch.Tensor, flagged: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per slice, how well the harmonized edges agree with the input mapped through the scan's lookup table,
        and that table (fitted on the slices neither flagged nor disagreeing; see :mod:`sgad_med.transforms.scan_lut`).
        """
        anatomy = foreground_slices(input01)
        trusted = ~flagged & anatomy
        table = fit_intensity_lut(input01, harmonized01, trusted)
        structure = slice_structure_agreement(harmonized01, apply_intensity_lut(input01, table))
        disagreeing = np.nan_to_num(structure, nan=1.0) < self.min_structure
        if (trusted & disagreeing).any():  # fit again without the slices whose edges disagree
            table = fit_intensity_lut(input01, harmonized01, trusted & ~disagreeing)
            structure = slice_structure_agreement(harmonized01, apply_intensity_lut(input01, table))
        return structure, table

    def _fallback_slices(self, input01: torch.Tensor, cause: list[str], structure: np.ndarray | None
                         ) -> tuple[np.ndarray, str]:
        """Which slices take the safe fallback, and its scope (see the class docstring)."""
        damaged = np.array([c == "harmonization" for c in cause], dtype=bool)
        if structure is not None:  # edges no intensity mapping explains, on a slice that arrived clean
            unflagged_input = np.array([c not in ("input", "both") for c in cause], dtype=bool)
            damaged |= unflagged_input & (np.nan_to_num(structure, nan=1.0) < self.min_structure)
        if not (self._fallback_on and damaged.any()):
            return np.zeros(len(cause), dtype=bool), "none"
        anatomy = foreground_slices(input01)
        if anatomy.any() and damaged[anatomy].mean() > self.scan_fallback_fraction:
            return np.ones(len(cause), dtype=bool), "scan"
        return damaged, "slices"


def _lap(clock: float) -> float:
    return time.perf_counter() - clock


def _causes(input_flags: np.ndarray, harmonized_flags: np.ndarray | None) -> list[str]:
    """Per slice, why it is flagged: see :data:`CAUSES`."""
    if harmonized_flags is None:
        return ["input" if f else "" for f in input_flags]
    names = {(True, True): "both", (True, False): "input", (False, True): "harmonization", (False, False): ""}
    return [names[(bool(a), bool(b))] for a, b in zip(input_flags, harmonized_flags)]
