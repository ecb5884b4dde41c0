"""Scan input and output: NIfTI and DICOM in, NIfTI and derived DICOM out. Knows nothing of networks."""

from __future__ import annotations

from sgad_med.io.api import load_scan, save_scan
from sgad_med.io.dicom_write import write_derived_series, write_new_series
from sgad_med.io.discover import discover_scans
from sgad_med.io.scan import Scan, ScanSource

__all__ = ["Scan", "ScanSource", "discover_scans", "load_scan", "save_scan", "write_derived_series", "write_new_series"]
