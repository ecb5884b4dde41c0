"""The networks, built from MONAI blocks. They know nothing of files."""

from __future__ import annotations

from sgad_med.networks.harmonizer import ConditionalPatchDiscriminator, HarmonizationGenerator

__all__ = ["ConditionalPatchDiscriminator", "HarmonizationGenerator"]
