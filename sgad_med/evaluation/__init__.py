"""Evaluations of the three networks against classical baselines, on held-out anatomies and styles.

- :mod:`sgad_med.evaluation.metrics`: SSIM, PSNR, MAE, histogram distance (shared);
- :mod:`sgad_med.evaluation.harmonization`: histogram matching, Nyúl–Udupa, and the harmonization table;
- :mod:`sgad_med.evaluation.real_scans`: the real scans every evaluation is also measured on (offline).

The harmonization names are re-exported here, as before this became a package.
"""

from __future__ import annotations

from sgad_med.evaluation.harmonization import *  # noqa: F401,F403
from sgad_med.evaluation.harmonization import __all__ as _harmonization_all
from sgad_med.evaluation.metrics import __all__ as _metrics_all

__all__ = sorted(set(_harmonization_all) | set(_metrics_all))
