"""Errors a user can cause: each names the file and says what is wrong and, where known, the fix."""

from __future__ import annotations

import os


class SGADError(Exception):
    """Base class of every error that bad input or bad usage can cause.

    Args:
        path: the file or folder the problem is in (``None`` when it is not about a file).
        problem: what is wrong, in words a radiology researcher understands.
        fix: what to do about it, if anything can be done.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        message = problem if self.path is None else f"{self.path}: {problem}"
        if fix:
            message = f"{message} ({fix})"
        super().__init__(message)


class ScanReadError(SGADError):
    """A file could not be read: truncated, corrupt, not what its name says."""


class UnsupportedScanError(SGADError):
    """A readable file that is not a scan sgad_med handles (non-image DICOM, colour, 4D without a volume)."""


class MissingDecoderError(SGADError):
    """The DICOM pixel data is compressed and no installed decoder plugin handles its transfer syntax."""


class InvalidScanDataError(SGADError):
    """The voxels or the header hold values no scan can have (NaN/Inf, zero or absurd sizes)."""


class NoScansFoundError(SGADError):
    """A folder holds no NIfTI file and no DICOM image series."""


class ScanWriteError(SGADError):
    """An output could not be written (it exists and overwrite is off, or the scan cannot be written that way)."""
