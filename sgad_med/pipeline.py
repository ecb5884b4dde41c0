"""SGADPipeline: load → normalize → harmonize → detect → restore → denormalize, one scan at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgad_med.io import Scan

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

    @property
    def flagged_slices(self) -> list[int]:
        """Indices of the flagged slices."""
        return [int(k) for k in np.flatnonzero(self.flagged)]
