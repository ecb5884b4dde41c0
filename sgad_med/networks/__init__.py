"""The networks, built from MONAI blocks. They know nothing of files."""

from __future__ import annotations

from sgad_med.networks.detector import SliceAnomalyNet
from sgad_med.networks.edge_preserving import EdgePreservingGenerator
from sgad_med.networks.harmonizer import ConditionalPatchDiscriminator, HarmonizationGenerator
from sgad_med.networks.residual_unet import ResidualSliceUNet
from sgad_med.networks.restorer import SliceRestorationNet
from sgad_med.networks.sequence_detector import SliceSequenceNet

__all__ = [
    "ConditionalPatchDiscriminator",
    "EdgePreservingGenerator",
    "HarmonizationGenerator",
    "ResidualSliceUNet",
    "SliceAnomalyNet",
    "SliceRestorationNet",
    "SliceSequenceNet",
]
