"""Training loops on MONAI's ignite engines. Training code never imports the CLI."""

from __future__ import annotations

from sgad_med.engines.harmonization import PairedHarmonizationTrainer, UnpairedHarmonizationTrainer

__all__ = ["PairedHarmonizationTrainer", "UnpairedHarmonizationTrainer"]
