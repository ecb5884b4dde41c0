"""Reading and writing NIfTI volumes."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader

from sgad_med.errors import InvalidScanDataError, ScanReadError, UnsupportedScanError
from sgad_med.io.atomic import atomic_file
from sgad_med.io.orientation import from_ras, to_ras
from sgad_med.io.scan import Scan, ScanSource, scan_id_for_nifti
from sgad_med.transforms.intensity import quantization_step

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Above this many voxels (16 GiB of float32) a header is taken as corrupt rather than as a scan to load.
MAX_VOXELS = 2**32
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError)


def is_nifti(path: Path) -> bool:
    """Whether the file name says NIfTI."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; voxels stay on disk) and check its size is one a scan can have."""
    try:
        image = nib.load(path)
    except _READ_ERRORS as err:
        raise ScanReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    shape = image.shape
    if len(shape) < 2 or any(int(s) <= 0 for s in shape):
        raise InvalidScanDataError(path, f"header gives an image of shape {shape}; a scan needs 2 or 3 non-empty axes")
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise InvalidScanDataError(path, f"header gives an absurd image size {shape}; the header is probably corrupt")
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise InvalidScanDataError(path, "header holds a degenerate or non-finite affine (sform/qform)")
    return image


def nifti_volume_count(path: Path) -> int:
    """How many 3D volumes the file holds (1 for 2D/3D, the length of the 4th axis for 4D)."""
    shape = nifti_header(path).shape
    if len(shape) > 4 and any(s != 1 for s in shape[4:]):
        raise UnsupportedScanError(path, f"image has {len(shape)} dimensions {shape}; only 3D and 4D are read")
    return int(shape[3]) if len(shape) >= 4 else 1


def read_nifti(source: ScanSource) -> Scan:
    """Read one volume of a NIfTI file as a RAS-oriented :class:`Scan` (modality ``OT``: NIfTI does not say)."""
    path = source.paths[0]
    header = nifti_header(path)
    volumes = nifti_volume_count(path)
    volume = source.volume
    if len(header.shape) < 4 and volume is not None:
        if volume != 0:
            raise UnsupportedScanError(path, f"is a 3D image; volume {volume} does not exist")
        volume = None  # volume 0 of a 3D file is the file
    try:
        if volumes > 1 or volume is not None:
            if volume is None:
                raise UnsupportedScanError(
                    path,
                    f"is a 4D NIfTI with {volumes} volumes; sgad-med never treats volumes as channels",
                    fix="load one volume with load_scan(path, volume=k), or discover_scans(folder, split_4d=True)",
                )
            if not 0 <= volume < volumes:
                raise UnsupportedScanError(path, f"has volumes 0..{volumes - 1}; volume {volume} does not exist")
            # MONAI's LoadImage would read every volume of the file; nibabel's array proxy reads only this one.
            native = np.asarray(header.dataobj[..., volume], dtype=np.float32)
            while native.ndim > 3:
                native = native[..., 0]
        else:
            # MONAI's NibabelReader does this right for 3D files (scaling, affine); only the RAS reorientation
            # is ours, so that the native affine needed to write back is kept.
            # (the reader itself rather than LoadImage, which would also set up every other reader MONAI has)
            reader = NibabelReader()
            native, _ = reader.get_data(reader.read(str(path)))
            native = np.asarray(native, dtype=np.float32)
    except _READ_ERRORS as err:
        problem = f"voxel data cannot be read, the file may be truncated ({type(err).__name__}: {err})"
        raise ScanReadError(path, problem) from err
    if native.ndim == 2:
        native = native[..., None]
    check_finite(native, path)
    native_affine = header.affine.astype(np.float64)
    data, ras_affine = to_ras(native, native_affine)
    meta = {"filename_or_obj": str(path)}
    image = MetaTensor(torch.from_numpy(data)[None], affine=torch.as_tensor(ras_affine), meta=meta)
    return Scan(
        image=image,
        scan_id=source.scan_id or scan_id_for_nifti(path, source.volume),
        modality="OT",
        source=source,
        native_affine=native_affine,
        quantization_step=quantization_step(header.get_data_dtype(), header.dataobj.slope),
    )


def check_finite(voxels: np.ndarray, path: Path) -> None:
    """Refuse NaN and infinite voxels: no scanner writes them and every later stage would spread them."""
    bad = int(np.size(voxels) - np.count_nonzero(np.isfinite(voxels)))
    if bad:
        raise InvalidScanDataError(path, f"{bad} voxels are NaN or infinite", fix="repair or remove the scan")


def write_nifti(scan: Scan, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``scan`` as NIfTI with the source's voxel order, shape and affine (float32, the scan's units).

    Args:
        scan: the scan to write; ``scan.native_affine`` (when set) decides the voxel order written.
        path: target ``.nii`` or ``.nii.gz`` file.
        overwrite: replace an existing file.

    Returns:
        The written path.
    """
    path = Path(path)
    data = scan.image.detach().cpu().numpy()[0].astype(np.float32)
    affine = scan.affine
    if scan.native_affine is not None:
        data = from_ras(data, affine, scan.native_affine)
        affine = scan.native_affine
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_file(path, overwrite=overwrite) as tmp:
        nib.save(image, tmp)
    return path
