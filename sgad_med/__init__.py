"""sgad_med: harmonize CT/MR scan style with a GAN, flag anomalous slices, restore them. A MONAI plugin."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sgad-med")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from sgad_med.errors import (  # noqa: E402
    InvalidScanDataError,
    MissingDecoderError,
    NoScansFoundError,
    ScanReadError,
    ScanWriteError,
    SGADError,
    UnsupportedScanError,
)
from sgad_med.io import Scan, ScanSource, discover_scans, load_scan, save_scan  # noqa: E402
from sgad_med.pipeline import Result, SGADPipeline  # noqa: E402

__all__ = [
    "__version__",
    "SGADError",
    "ScanReadError",
    "UnsupportedScanError",
    "MissingDecoderError",
    "InvalidScanDataError",
    "NoScansFoundError",
    "ScanWriteError",
    "Scan",
    "ScanSource",
    "discover_scans",
    "load_scan",
    "save_scan",
    "SGADPipeline",
    "Result",
]
