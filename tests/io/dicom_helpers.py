"""Helpers for DICOM tests: dciodvfy, and an enhanced multi-frame MR made by highdicom from our own series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> set[str]:
    """The distinct 'Error' lines dciodvfy prints for one file (empty when it finds none)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools); .ci/run installs it")
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip().startswith("Error")}


def write_enhanced_mr(series_files: list[Path], target: Path) -> Path:
    """Convert a single-frame MR series to one Legacy Converted Enhanced MR multi-frame file (highdicom)."""
    highdicom_legacy = pytest.importorskip("highdicom.legacy", reason="highdicom (the [test] extra) is not installed")
    datasets = [pydicom.dcmread(p) for p in series_files]
    multiframe = highdicom_legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=900,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    multiframe.save_as(target)
    return target
