"""Per-slice anomaly scores of whole scans with a trained, calibrated detector network.

The shipped detector is a :class:`~sgad_med.networks.SliceSequenceNet`: it reads the whole scan and gives each
slice its own calibrated probability. Weights of the earlier :class:`~sgad_med.networks.SliceAnomalyNet` (2.5D
stacks, novelty and neighbour evidence, scan reference) still load and score as they did.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn
from tqdm import tqdm

from sgad_med.errors import SGADError
from sgad_med.io import Scan, ScanSource, load_scan
from sgad_med.io.atomic import atomic_file
from sgad_med.slice_runner import SliceNetworkRunner
from sgad_med.transforms.intensity import ScanNormalize
from sgad_med.transforms.slice_statistics import texture_slice_scores
from sgad_med.transforms.slices import foreground_slices

logger = logging.getLogger(__name__)


class SliceAnomalyDetector(SliceNetworkRunner):
    """Scores every axial slice of a scan: the calibrated probability that it is anomalous.

    The scan is normalized as in training; with a :class:`~sgad_med.networks.SliceSequenceNet` its slices are
    encoded ``batch_size`` at a time and the network along the slice axis gives every slice its calibrated
    probability (with the earlier :class:`~sgad_med.networks.SliceAnomalyNet`, 2.5D stacks are scored by its
    classifier and novelty evidence). A slice is flagged when its probability reaches the threshold: the one
    stored with the weights (set for a target false-positive rate on clean calibration slices) unless
    ``threshold`` overrides it.

    Args:
        network: the trained, calibrated detector network.
        device: where to run it (``"auto"``: CUDA when present).
        batch_size: slices per forward pass.
        threshold: decision threshold in [0, 1]; ``None`` takes the network's stored one.
        progress: show a progress bar over slices.
        inferer: how the network's ``evidence`` is called on a batch (MONAI inferer; a plain call by default).
        multiple: zero-pad slices to a multiple of this, as the training slices were.
        scan_relative: judge the slices of a scan that looks unusual as a whole against its own median slice
            (the calibrated default); ``False`` scores every slice against clean calibration slices only.
        neighbour_statistics: add the calibrated neighbour evidence (texture statistics of each slice against
            five slices on each side) to scans as they arrive, when the weights carry its calibration; ``False``
            leaves it out. It never applies to harmonized volumes (see :meth:`score01`).
        normalizer: how a scan is mapped to [0, 1] (see :class:`~sgad_med.slice_runner.SliceNetworkRunner`).

    Example::

        detector = SliceAnomalyDetector.from_bundle("bundles/slice_anomaly_detection")
        scan = sgad_med.load_scan("sample_data/synthetic_mr.nii.gz")
        scores, flags = detector.score(scan), detector.flag(scan)
    """

    default_bundle = "bundles/slice_anomaly_detection"

    #: What encodes the slices: the network's own ``encode``, or an :class:`~sgad_med.export.OnnxEncoder` of it
    #: (see :meth:`use_onnx_encoder`). ``None``: the network's.
    onnx_encoder: Any = None

    @property
    def encoder(self) -> Any:
        """The callable that encodes slices ``(slices, previous, following) -> features``."""
        return self.onnx_encoder if self.onnx_encoder is not None else self.network.encode

    @property
    def runtime(self) -> str:
        """``"onnxruntime"`` when ONNX Runtime encodes the slices, else ``"torch"``."""
        return "onnxruntime" if self.onnx_encoder is not None else "torch"

    def use_onnx_encoder(self, bundle: str | os.PathLike, weights: str | os.PathLike | None = None) -> bool:
        """Encode slices with ONNX Runtime when it is installed, the device is the CPU, the network is the
        sequence network and the bundle's ``models/encoder.onnx`` was exported from these weights (the same
        features within 4e-6, ``tests/test_export.py``). Returns whether it does."""
        from sgad_med.export import matching_onnx_encoder

        usable = self.device.type == "cpu" and self.is_sequence
        self.onnx_encoder = matching_onnx_encoder(bundle, weights) if usable else None
        return self.onnx_encoder is not None

    def __init__(self, network: nn.Module, device: str | torch.device = "auto", batch_size: int = 32,
                 threshold: float | None = None, progress: bool = False, inferer: Inferer | None = None,
                 multiple: int = 16, scan_relative: bool = True, neighbour_statistics: bool = True,
                 normalizer: ScanNormalize | None = None) -> None:
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        super().__init__(network, device=device, batch_size=batch_size, multiple=multiple, progress=progress,
                         inferer=inferer, normalizer=normalizer)
        self._threshold = None if threshold is None else float(threshold)
        self.scan_relative = scan_relative
        self.neighbour_statistics = neighbour_statistics

    @property
    def threshold(self) -> float:
        """The decision threshold in use: the override, else the one stored with the weights."""
        return self._threshold if self._threshold is not None else float(self.network.threshold)

    @torch.no_grad()
    def evidence01(self, volume01: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit [D], novelty [D])`` of every slice of a normalized volume ``[H, W, D]``, on the CPU."""
        volume01 = torch.as_tensor(volume01, dtype=torch.float32)
        depth = volume01.shape[-1]
        logits, novelties = torch.empty(depth), torch.empty(depth)
        for start in tqdm(range(0, depth, self.batch_size), desc="detecting", unit="batch", disable=not self.progress):
            chosen = torch.arange(start, min(start + self.batch_size, depth))
            # padded as in training: the pooled features behind the novelty score depend on the slice size
            stacks, _ = self.padded_stacks(volume01, chosen.numpy())
            with torch.autocast("cuda", enabled=self.device.type == "cuda"):
                logit, novelty = self.inferer(stacks, self.network.evidence)
            logits[chosen], novelties[chosen] = logit.float().cpu(), novelty.float().cpu()
        return logits, novelties

    @torch.no_grad()
    def slice_evidence01(self, volume01: torch.Tensor | np.ndarray, scan_shift: bool = True, neighbour: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What :meth:`SliceAnomalyNet.combine <sgad_med.networks.SliceAnomalyNet.combine>` takes, for every slice
        of a normalized volume ``[H, W, D]``, on the detector's device.

        Args:
            volume01: the volume, slice axis last.
            scan_shift: compute the scan shift (how unusual the slices with anatomy look as a whole, by the
                network's calibration); ``None`` in its place otherwise.
            neighbour: compute the neighbour texture statistic of each slice; ``None`` in its place otherwise.

        Returns:
            ``(logit [D], novelty [D], shift [2] or None, neighbour [D] or None)``.
        """
        logit, novelty = (e.to(self.device) for e in self.evidence01(volume01))
        shift = z = None
        if scan_shift:
            anatomy = torch.as_tensor(foreground_slices(volume01), device=self.device)
            shift = self.network.scan_shift(logit[anatomy], novelty[anatomy])
        if neighbour:
            z = torch.as_tensor(texture_slice_scores(np.asarray(volume01, dtype=np.float32)), dtype=torch.float32,
                                device=self.device)
        return logit, novelty, shift, z

    @property
    def is_sequence(self) -> bool:
        """Whether the network scores whole scans (:class:`~sgad_med.networks.SliceSequenceNet`)."""
        return hasattr(self.network, "sequence_logits")

    @torch.no_grad()
    def sequence_logits01(self, volume01: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Uncalibrated logits ``[D]`` of every slice of a normalized volume ``[H, W, D]`` (sequence network).

        The slices are encoded ``batch_size`` at a time; the network along the slice axis then sees the whole scan.
        """
        volume01 = torch.as_tensor(volume01, dtype=torch.float32)
        if volume01.ndim != 3:
            raise ValueError(f"the detector scores volumes [H, W, D], got shape {tuple(volume01.shape)}")
        slices = volume01.permute(2, 0, 1)
        depth = slices.shape[0]
        features = []
        for start in tqdm(range(0, depth, self.batch_size), desc="detecting", unit="batch", disable=not self.progress):
            chosen = torch.arange(start, min(start + self.batch_size, depth))
            batch = slices[chosen].to(self.device)
            previous = slices[(chosen - 1).clamp_min(0)].to(self.device)  # the ends are their own outer neighbours
            following = slices[(chosen + 1).clamp_max(depth - 1)].to(self.device)
            with torch.autocast("cuda", enabled=self.device.type == "cuda"):
                features.append(self.inferer(batch, self.encoder, previous, following).float().to(self.device))
        return self.network.sequence_logits(torch.cat(features)[None])[0].float().cpu()

    @torch.no_grad()
    def score01(self, volume01: torch.Tensor | np.ndarray, harmonized: bool = False) -> np.ndarray:
        """Probabilities ``[D]`` for a normalized volume ``[H, W, D]`` in [0, 1].

        With a :class:`~sgad_med.networks.SliceSequenceNet` (the shipped detector) every slice is scored by the
        network over the whole scan, as input or harmonized alike (it was trained and calibrated on both), and
        none of the options below apply. With the earlier :class:`~sgad_med.networks.SliceAnomalyNet`:

        With :attr:`scan_relative`, a scan whose slices with anatomy look unusual *as a whole* is judged against
        its own median slice; with :attr:`neighbour_statistics`, the neighbour evidence joins in (see
        :class:`~sgad_med.networks.SliceAnomalyNet`), unless ``harmonized``.

        Args:
            volume01: the volume, slice axis last.
            harmonized: the volume is the harmonizer's output. The harmonizer treats slices one by one, and clean
                harmonized slices differ from their neighbours in intensity statistics far more than scanned ones
                (on clean calibration scans the 99.75th percentile of the classical baseline's score is ~10,000
                harmonized, ~9 as scanned), so the neighbour evidence is left out; the network, trained on
                harmonized slices too, judges them alone.
        """
        if self.is_sequence:
            logits = self.sequence_logits01(volume01)
            return self.network.calibrated_probability(logits).numpy().astype(np.float32)
        use_neighbours = self.neighbour_statistics and not harmonized and self.network.uses_neighbour_evidence
        evidence = self.slice_evidence01(volume01, scan_shift=self.scan_relative, neighbour=use_neighbours)
        return self.network.combine(*evidence).cpu().numpy().astype(np.float32)

    def score(self, scan: Scan) -> np.ndarray:
        """Per-slice probabilities ``[D]`` in [0, 1] along the last axis of the RAS-oriented scan."""
        return self.score01(self.normalize_scan(scan)[0])

    def flag(self, scan: Scan) -> np.ndarray:
        """Boolean ``[D]``: slices whose probability reaches :attr:`threshold`."""
        return self.score(scan) >= self.threshold


class ScoreFolder:
    """The bundle's inference "evaluator": per-slice scores for every scan found in a folder.

    Writes ``<output_dir>/<scan_id>_slice_scores.csv`` (``slice,score,flagged``; ``slice`` along the last axis of
    the RAS-oriented volume). One bad scan never stops the others: its error is logged and counted.

    Args:
        sources: scans to score (e.g. ``sgad_med.discover_scans(dataset_dir)``).
        detector: the :class:`SliceAnomalyDetector`.
        output_dir: where the CSV files go.
        overwrite: replace existing outputs.
    """

    def __init__(self, sources: Sequence[ScanSource], detector: SliceAnomalyDetector, output_dir: str | os.PathLike,
                 overwrite: bool = False) -> None:
        self.sources, self.detector = list(sources), detector
        self.output_dir, self.overwrite = Path(output_dir), overwrite
        self.written: list[Path] = []
        self.failed: dict[str, str] = {}

    def run(self) -> dict[str, str]:
        """Score every source; returns ``{scan_id: error}`` for the ones that failed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for source in tqdm(self.sources, desc="scans", unit="scan"):
            if source.skip_reason is not None:
                continue
            target = self.output_dir / f"{source.scan_id}_slice_scores.csv"
            if target.exists() and not self.overwrite:
                continue
            try:
                scores = self.detector.score(load_scan(source))
            except SGADError as err:
                logger.error("%s", err)
                self.failed[source.scan_id] = str(err)
                continue
            rows = "".join(f"{k},{s:.6f},{int(s >= self.detector.threshold)}\n" for k, s in enumerate(scores))
            with atomic_file(target, overwrite=True) as tmp:
                Path(tmp).write_text("slice,score,flagged\n" + rows)
            self.written.append(target)
        return self.failed
