"""Finding the scans in files and folders: every NIfTI file and every DICOM series, recursively."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from pydicom.misc import is_dicom

from sgad_med.errors import NoScansFoundError, SGADError
from sgad_med.io.dicom_read import non_image_reason, read_header
from sgad_med.io.nifti import is_nifti, nifti_volume_count
from sgad_med.io.scan import ScanSource, scan_id_for_nifti, scan_id_for_series

_SKIP_NAMES = {"DICOMDIR"}


def discover_scans(root: str | os.PathLike, split_4d: bool = False) -> list[ScanSource]:
    """List the scans in a file or folder, without reading any voxels.

    A folder is searched recursively. NIfTI files are scans of their own (one per volume with ``split_4d``);
    DICOM files are grouped by SeriesInstanceUID, wherever in the tree they lie. Files that cannot be read
    are listed as sources with ``problem`` set, and non-image DICOM objects (RTSTRUCT, SR, SEG, ...) with
    ``skip_reason`` set, so that a batch reports them instead of stopping. Hidden files and folders (names
    starting with a dot, e.g. our own temporary outputs) are ignored.

    Args:
        root: a NIfTI file, a DICOM file, or a folder.
        split_4d: list each volume of a 4D NIfTI as its own scan; otherwise a 4D file is one source that
            ``load_scan`` refuses with a message naming this option.

    Returns:
        The sources, in a stable order (by path).

    Raises:
        NoScansFoundError: ``root`` does not exist, or holds no NIfTI and no DICOM file.
    """
    root = Path(root)
    if not root.exists():
        raise NoScansFoundError(root, "does not exist")
    files = [root] if root.is_file() else sorted(_walk(root))
    sources: list[ScanSource] = []
    series: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        if is_nifti(path):
            sources.extend(_nifti_sources(path, split_4d))
        elif _looks_like_dicom(path):
            try:
                header = read_header(path)
            except SGADError as err:
                sources.append(ScanSource("dicom", (path,), scan_id_for_series(str(path)), problem=err))
                continue
            reason = non_image_reason(header)
            uid = str(header.get("SeriesInstanceUID", "")) or f"no-series-uid:{path}"
            if reason is not None:
                sources.append(ScanSource("dicom", (path,), scan_id_for_series(uid), uid, skip_reason=reason))
            else:
                series[uid].append(path)
    for uid, paths in series.items():
        sources.append(ScanSource("dicom", tuple(sorted(paths)), scan_id_for_series(uid), uid))
    if not sources:
        raise NoScansFoundError(root, "holds no NIfTI file (.nii, .nii.gz) and no DICOM file")
    return _unique_ids(sorted(sources, key=lambda s: (str(s.paths[0]), s.volume or 0)))


def _walk(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name not in _SKIP_NAMES:
                yield Path(dirpath) / name


def _looks_like_dicom(path: Path) -> bool:
    # The 128-byte preamble + "DICM" of Part 10 files; files without it (raw datasets) are not looked at.
    try:
        return path.suffix.lower() in (".dcm", ".dicom", ".ima") or is_dicom(path)
    except OSError:
        return False


def _nifti_sources(path: Path, split_4d: bool) -> list[ScanSource]:
    try:
        volumes = nifti_volume_count(path)
    except SGADError as err:
        return [ScanSource("nifti", (path,), scan_id_for_nifti(path), problem=err)]
    if volumes > 1 and split_4d:
        return [ScanSource("nifti", (path,), scan_id_for_nifti(path, k), volume=k) for k in range(volumes)]
    return [ScanSource("nifti", (path,), scan_id_for_nifti(path))]


def _unique_ids(sources: list[ScanSource]) -> list[ScanSource]:
    """Two NIfTI files of one name in different folders would share an id: suffix the later ones."""
    seen: dict[str, int] = {}
    unique = []
    for source in sources:
        count = seen.get(source.scan_id, 0)
        seen[source.scan_id] = count + 1
        if count:
            source = ScanSource(
                source.kind, source.paths, f"{source.scan_id}-{count + 1}", source.series_uid, source.volume,
                source.problem, source.skip_reason,
            )
        unique.append(source)
    return unique
