"""Reading and writing NIfTI volumes."""

from __future__ import annotations

import gzip
import io
import struct
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
# Deflate cannot compress more than about 1032:1, so a .nii.gz of n bytes holds at most this many times n.
_DEFLATE_MAX_RATIO = 1032
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    zlib.error,
    gzip.BadGzipFile,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,  # nibabel's check of datatype, vox_offset, ... on load
    nib.wrapstruct.WrapStructError,
)


def is_nifti(path: Path) -> bool:
    """Whether the file name says NIfTI."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def nifti_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only; voxels stay on disk) and check its size is one a scan can have."""
    try:
        _check_extensions(path)
        image = nib.load(path)
    except _READ_ERRORS as err:
        raise ScanReadError(path, f"not a readable NIfTI file ({type(err).__name__}: {err})") from err
    shape = image.shape
    if len(shape) < 2 or any(int(s) <= 0 for s in shape):
        raise InvalidScanDataError(path, f"header gives an image of shape {shape}; a scan needs 2 or 3 non-empty axes")
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise InvalidScanDataError(path, f"header gives an absurd image size {shape}; the header is probably corrupt")
    dtype = image.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise UnsupportedScanError(path, f"stores voxels as {dtype}; sgad-med reads grayscale (integer or float) data")
    _check_data_fits(image, path)
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise InvalidScanDataError(path, "header holds a degenerate or non-finite affine (sform/qform)")
    return image


def _read_head(path: Path, size: int) -> bytes:
    """Up to ``size`` bytes from the start of the (decompressed) file, read in chunks: a file object's
    ``read(n)`` allocates ``n`` bytes before reading, whatever the file holds."""
    chunks, total = [], 0
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as file:
        while total < size:
            chunk = file.read(min(1 << 20, size - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    return b"".join(chunks)


def _check_extensions(path: Path) -> None:
    """Parse the header's extensions from a bounded copy of the header before nibabel reads the file.

    nibabel reads each extension with one ``read`` of the size the extension claims, so one damaged size field
    would allocate up to 2 GiB; parsed from bytes already in memory, a claim beyond them fails instead.
    """
    head = _read_head(path, 544)
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(head) < 4 or size not in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0]):
            continue  # not this header (or not NIfTI at all, which nibabel then says)
        if len(head) < size + 4 or head[size] == 0:
            return  # no extensions
        offset = float(klass(head[:size], check=False)["vox_offset"])
        if not np.isfinite(offset) or offset < size + 4:  # nibabel would read extensions up to the end of the file
            raise InvalidScanDataError(
                path, f"header flags extensions but gives vox_offset {offset}, leaving no room for them; it is corrupt"
            )
        klass.from_fileobj(io.BytesIO(_read_head(path, int(min(offset, path.stat().st_size * _DEFLATE_MAX_RATIO)))))
        return


def _check_data_fits(image: nib.Nifti1Image, path: Path) -> None:
    """Refuse a header whose voxels the file cannot hold, before nibabel allocates what the header claims."""
    need = int(image.header.get_data_offset()) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if need > size * _DEFLATE_MAX_RATIO:
            raise InvalidScanDataError(
                path,
                f"header gives {image.shape} voxels of {image.get_data_dtype()} ({need} bytes), more than a gzip "
                f"file of {size} bytes can hold; the header is corrupt",
            )
    elif need > size:
        raise ScanReadError(
            path,
            f"header gives {image.shape} voxels of {image.get_data_dtype()} ending at byte {need}, but the file "
            f"holds {size} bytes; it is truncated or its header is corrupt",
        )


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
    while native.ndim > 3 and native.shape[-1] == 1:  # a 4D (or 5D) file of a single volume is that volume
        native = native[..., 0]
    if native.ndim == 2:
        native = native[..., None]
    if native.ndim != 3:
        raise UnsupportedScanError(path, f"voxel data has shape {native.shape}; expected one 2D or 3D volume")
    check_finite(native, path)
    native_affine = header.affine.astype(np.float64)
    data, ras_affine = oriented(native, native_affine, path)
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


def oriented(native: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`to_ras`, refusing geometry no scan has (axes whose sizes differ by hundreds of orders of magnitude)."""
    try:
        return to_ras(native, affine)
    except nib.orientations.OrientationError as err:
        spacing = ", ".join(f"{s:.3g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
        raise InvalidScanDataError(path, f"voxel sizes ({spacing} mm) give no usable orientation ({err})") from err


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
