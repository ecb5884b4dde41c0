"""Training loops on MONAI's ignite engines. Training code never imports the CLI."""

from __future__ import annotations

from sgad_med.engines.detection import calibrate_bundle_weights, calibrate_detector, calibrate_scan_reference
from sgad_med.engines.harmonization import PairedHarmonizationTrainer, UnpairedHarmonizationTrainer
from sgad_med.engines.restoration import RestorationLoss, prepare_restoration_batch

__all__ = [
    "PairedHarmonizationTrainer",
    "RestorationLoss",
    "UnpairedHarmonizationTrainer",
    "calibrate_bundle_weights",
    "calibrate_detector",
    "calibrate_scan_reference",
    "prepare_restoration_batch",
]
