"""Fuzzing the scan readers: every input either loads as a sane scan or raises an SGADError naming the file.

Two kinds of test share one oracle (:func:`check_read`):

- property tests (hypothesis, derandomized so CI always runs the same examples) that edit one header field,
  one DICOM attribute, the declared transfer syntax or the gzip wrapper of small valid files;
- a seeded mutation fuzzer that stacks random damage (bit flips, truncation, overwritten runs, VR swaps,
  field edits, gzip damage) on the same seeds, including DICOM series folders and multi-frame files.

Every read runs under a time limit and an address-space limit (Linux), so a hang or a header that makes a
reader allocate gigabytes fails the test instead of stalling CI. Inputs that once made a reader fail in a
wrong way live in ``tests/io/fuzz_corpus/`` and are replayed by :func:`test_regression_corpus`.

``SGAD_FUZZ_CASES`` (default 100) sets how many stacked mutations the fuzzer tries per seed and
``SGAD_FUZZ_EXAMPLES`` (default 100) how many examples each property test runs: raise both for a longer hunt.
Failing inputs are saved under ``SGAD_FUZZ_SAVE`` (default: a temporary folder named in the failure message).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID

import sgad_med
from sgad_med.errors import SGADError
from sgad_med.io import write_new_series
from tests.conftest import oblique_affine, smooth_volume
from tests.io.dicom_helpers import write_enhanced_mr

# damaged files make pydicom and nibabel warn; the warnings are expected, the outcome is what is tested
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:pydicom"),
    pytest.mark.filterwarnings("ignore::UserWarning:nibabel"),
]

CORPUS = Path(__file__).parent / "fuzz_corpus"
READ_SECONDS = 5.0  # a read of these tiny files takes milliseconds; seconds means a hang
READ_HEADROOM = 1 << 30  # address space one read may add (1 GiB), far below what a trusted absurd header needs
CASES_PER_SEED = int(os.environ.get("SGAD_FUZZ_CASES", "100"))
FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("SGAD_FUZZ_EXAMPLES", "100")),
    deadline=4 * READ_SECONDS * 1000,  # ms; a single read is already bounded by READ_SECONDS
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


# --- the oracle --------------------------------------------------------------------------------------------


class ReadTimeout(BaseException):
    """A read ran past READ_SECONDS (a BaseException, so no reader's ``except Exception`` swallows it)."""


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except OSError:
        return None


@contextlib.contextmanager
def bounded(seconds: float = READ_SECONDS, headroom: int = READ_HEADROOM) -> Iterator[None]:
    """Run the body with a wall-clock limit (SIGALRM) and an address-space limit, where the OS allows both."""
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    current = _address_space() if sys.platform.startswith("linux") else None
    old_limit = resource.getrlimit(resource.RLIMIT_AS) if current is not None else None
    if use_alarm:

        def _timeout(signum, frame):
            raise ReadTimeout(f"read took more than {seconds} s")

        old_handler = signal.signal(signal.SIGALRM, _timeout)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    if old_limit is not None:
        soft, hard = old_limit
        limit = current + headroom
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        if old_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _check_error(err: SGADError, target: Path) -> str:
    message = str(err)
    assert str(target) in message, f"the message must name {target}: {message!r}"
    assert err.problem and len(err.problem) >= 10, f"the message must say what is wrong: {message!r}"
    for cause in _causes(err):
        # An SGADError wrapped around these still means the reader did not bound its time or memory.
        assert not isinstance(cause, (MemoryError, ReadTimeout, RecursionError)), f"unbounded read: {message!r}"
    return type(err).__name__


def _check_scan(scan: sgad_med.Scan, target: Path) -> str:
    image = scan.image
    assert image.ndim == 4 and image.shape[0] == 1 and all(s > 0 for s in image.shape[1:]), image.shape
    assert image.dtype == torch.float32
    assert bool(torch.isfinite(image).all()), f"{target} loaded with NaN or infinite voxels"
    affine = scan.affine
    assert affine.shape == (4, 4) and np.all(np.isfinite(affine)), f"{target} loaded with a non-finite affine"
    assert abs(np.linalg.det(affine[:3, :3])) > 0, f"{target} loaded with a degenerate affine"
    assert scan.scan_id and "/" not in scan.scan_id
    return "ok"


def check_read(target: Path, split_4d: bool = False) -> list[str]:
    """Load ``target`` (file or folder), then for a folder or ``split_4d`` every source discovered in it.

    Returns:
        The outcomes, ``"ok"`` or the SGADError's class name, ``load_scan(target)``'s first. Any other
        exception, a hang or an allocation beyond the headroom fails (propagates or asserts).
    """
    outcomes = []
    with bounded():
        try:
            outcomes.append(_check_scan(sgad_med.load_scan(target), target))
        except SGADError as err:
            outcomes.append(_check_error(err, target))
    if target.is_dir() or split_4d:
        # the batch's path: discovery never stops at a bad file, and every source loads or fails cleanly
        with bounded():
            try:
                sources = sgad_med.discover_scans(target, split_4d=split_4d)
            except SGADError as err:
                return [*outcomes, _check_error(err, target)]
        for source in sources:
            if source.skip_reason:
                continue
            with bounded():
                try:
                    outcomes.append(_check_scan(sgad_med.load_scan(source), source.path))
                except SGADError as err:
                    outcomes.append(_check_error(err, source.path))
    return outcomes


# --- seeds -------------------------------------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


#: pydicom test files used as seeds as they are: other encodings and transfer syntaxes of one MR image.
PYDICOM_SEEDS = (
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_implicit.dcm",
    "image_dfl.dcm",
)


def make_seeds(root: Path) -> dict[str, Path]:
    """Small valid inputs: NIfTI (1 and 2, int16 with scaling, float, 4D, gzipped), DICOM file, series, multi-frame."""
    out: dict[str, Path] = {}
    volume = smooth_volume(shape=(6, 5, 4), low=-200.0, high=800.0)
    affine = oblique_affine()
    scaled = nib.Nifti1Image(np.rint(volume * 4).astype(np.int16), affine)
    scaled.header.set_slope_inter(0.25, -3.0)
    for name, image in [
        ("int16.nii", scaled),
        ("float.nii", nib.Nifti1Image(volume, affine)),
        ("nifti2.nii", nib.Nifti2Image(volume, affine)),
        ("four_d.nii", nib.Nifti1Image(np.stack([volume, volume * 2], axis=-1), affine)),
    ]:
        nib.save(image, root / name)
        out[name] = root / name
        gz = root / (name + ".gz")
        gz.write_bytes(_gzip((root / name).read_bytes()))
        out[name + ".gz"] = gz
    # fixed UIDs and dates: the same seeds, so the same mutated files, on every run
    fixed = {"acquired": datetime.datetime(2024, 1, 2, 3, 4, 5)}
    files = write_new_series(volume, affine, root / "series_ct", modality="CT", uid_seed="fuzz-ct", **fixed)
    out["series_ct"] = root / "series_ct"
    out["single_mr.dcm"] = write_new_series(
        volume[..., :1], affine, root / "single", modality="MR", uid_seed="fuzz-single", **fixed
    )[0]
    mr = write_new_series(volume, affine, root / "mr", modality="MR", uid_seed="fuzz-mr", **fixed)
    enhanced = pydicom.dcmread(write_enhanced_mr(mr, root / "enhanced.dcm"))
    enhanced.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["fuzz-enhanced-series"])
    enhanced.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["fuzz-enhanced-instance"])
    enhanced.file_meta.MediaStorageSOPInstanceUID = enhanced.SOPInstanceUID
    enhanced.InstanceCreationTime = "030405"
    fixed_values = {0x0018A002: "20240102030405", 0x00209164: pydicom.uid.generate_uid(entropy_srcs=["fuzz-dim"])}

    def fix(dataset: pydicom.Dataset, element: DataElement) -> None:  # FrameAcquisitionDateTime, dimension UID
        if element.tag in fixed_values:
            element.value = fixed_values[element.tag]

    enhanced.walk(fix)
    enhanced.save_as(root / "enhanced.dcm", enforce_file_format=True)
    out["enhanced.dcm"] = root / "enhanced.dcm"
    # a classic multi-frame image: one plane's geometry, equally spaced frames, no functional groups
    classic = pydicom.dcmread(files[0])
    classic.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["fuzz-classic-series"])
    classic.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["fuzz-classic-instance"])
    classic.NumberOfFrames = len(files)
    classic.PixelData = b"".join(pydicom.dcmread(f).PixelData for f in files)
    classic.save_as(root / "classic_mf.dcm", enforce_file_format=True)
    out["classic_mf.dcm"] = root / "classic_mf.dcm"
    for name in PYDICOM_SEEDS:
        out[name] = Path(get_testdata_file(name))
    return out


@pytest.fixture(scope="session")
def seeds(tmp_path_factory) -> dict[str, Path]:
    out = make_seeds(tmp_path_factory.mktemp("fuzz_seeds"))
    for name, path in out.items():  # every seed is valid: the oracle's "ok" is reachable
        if name.startswith("four_d"):  # one 4D source that load_scan refuses, then its two volumes
            assert check_read(path, split_4d=True) == ["UnsupportedScanError", "ok", "ok"], name
        else:
            assert set(check_read(path)) == {"ok"}, name
    return out


NIFTI_SEEDS = ["int16.nii", "float.nii", "nifti2.nii", "four_d.nii"]
DICOM_FILE_SEEDS = ["single_mr.dcm", "enhanced.dcm", "classic_mf.dcm", *PYDICOM_SEEDS]


@pytest.fixture
def scratch(tmp_path) -> Callable[[str, bytes], Path]:
    """Write bytes under a fresh name in a fresh folder (hypothesis reruns the test body in one tmp_path)."""
    counter = iter(range(10**9))

    def write(name: str, data: bytes) -> Path:
        folder = tmp_path / f"case{next(counter):05d}"
        folder.mkdir()
        path = folder / name
        path.write_bytes(data)
        return path

    return write


# --- mutations ---------------------------------------------------------------------------------------------

# NIfTI-1 header fields: (name, offset, struct format). NIfTI-2 moves them, so those edits apply to NIfTI-1.
NIFTI1_FIELDS = [
    ("sizeof_hdr", 0, "<i"),
    ("dim0", 40, "<h"),
    ("dim1", 42, "<h"),
    ("dim2", 44, "<h"),
    ("dim3", 46, "<h"),
    ("dim4", 48, "<h"),
    ("dim5", 50, "<h"),
    ("datatype", 70, "<h"),
    ("bitpix", 72, "<h"),
    ("qfac", 76, "<f"),
    ("pixdim1", 80, "<f"),
    ("pixdim2", 84, "<f"),
    ("pixdim3", 88, "<f"),
    ("vox_offset", 108, "<f"),
    ("scl_slope", 112, "<f"),
    ("scl_inter", 116, "<f"),
    ("qform_code", 252, "<h"),
    ("sform_code", 254, "<h"),
    ("quatern_b", 256, "<f"),
    ("qoffset_x", 268, "<f"),
    ("srow_x0", 280, "<f"),
    ("srow_y1", 300, "<f"),
    ("srow_z2", 320, "<f"),
    ("srow_z3", 324, "<f"),
    ("magic", 344, "4s"),
]
INT16_VALUES = [-32768, -1, *range(9), 16, 64, 255, *range(256, 2305, 256), 10000, 32767]  # dims, datatypes
FLOAT_VALUES = [
    float("nan"),
    float("inf"),
    -float("inf"),
    0.0,
    -1.0,
    1e-30,
    1e30,
    3.4e38,
    351.0,
    352.0,
    353.0,
    1e9,
    2.5,
]
MAGICS = [b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"xyz\0"]


def set_nifti_field(data: bytes, field: tuple[str, int, str], value) -> bytes:
    name, offset, fmt = field
    raw = bytearray(data)
    if fmt == "<h":
        value = int(np.clip(value, -32768, 32767))
    elif fmt == "<i":
        value = int(np.clip(value, -(2**31), 2**31 - 1))
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(raw)


def flip_bits(data: bytes, positions: list[int]) -> bytes:
    raw = bytearray(data)
    for bit in positions:
        raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    return bytes(raw)


def gzip_damage(data: bytes, kind: str, where: float) -> bytes:
    """Damage a gzip stream: its CRC, its length field, its header flags, its deflate data, or its end."""
    raw = bytearray(data)
    if kind == "crc":
        raw[-8] ^= 0xFF
    elif kind == "isize":
        raw[-4:] = struct.pack("<I", 0xFFFFFFFF)
    elif kind == "flags":
        raw[3] = 0xFF  # FEXTRA, FNAME, FCOMMENT, FHCRC and reserved bits, with none of their content
    elif kind == "method":
        raw[2] = 7
    elif kind == "deflate":
        raw[10 + int(where * (len(raw) - 18))] ^= 0x5A
    elif kind == "truncate":
        raw = raw[: max(1, int(where * len(raw)))]
    elif kind == "trailing":
        raw += b"\x1f\x8b\x08\x00garbage after the stream"
    elif kind == "empty_member":
        raw += _gzip(b"")
    return bytes(raw)


GZIP_DAMAGE = ["crc", "isize", "flags", "method", "deflate", "truncate", "trailing", "empty_member"]


def dicom_meta_end(data: bytes) -> int:
    """Offset of the first byte after the file meta group of a Part 10 file (0 when there is none)."""
    if data[128:132] != b"DICM":
        return 0
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The same encoded dataset under a file meta that declares ``uid``: a wrong declaration, not a re-encode."""
    end = dicom_meta_end(data)
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = UID(uid)
    buffer = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
    return data[:128] + b"DICM" + buffer.getvalue() + data[end:]


TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.100",  # MPEG2 (no decoder exists in pydicom)
    "1.2.840.10008.1.2.4.201",  # HTJ2K
    "1.2.3.4.5.6",  # unknown
]

# DICOM attributes to set, with the values tried; a value's VR may be wrong on purpose (see dicom_edit).
DICOM_EDITS: dict[str, list] = {
    "Rows": [0, 1, 2, 255, 65535],
    "Columns": [0, 1, 3, 65535],
    "BitsAllocated": [0, 1, 7, 8, 12, 32, 64],
    "BitsStored": [0, 1, 8, 17, 33],
    "HighBit": [0, 7, 40],
    "PixelRepresentation": [0, 1, 2],
    "SamplesPerPixel": [0, 2, 3, 4],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL", "MONOCHROME1", "", "NONSENSE"],
    "NumberOfFrames": ["0", "-1", "2", "3", "5", "1000000000", "abc", "1.5"],
    "PlanarConfiguration": [0, 1, 2],
    "RescaleSlope": ["nan", "inf", "-inf", "0", "1e308", "1e39", "abc"],
    "RescaleIntercept": ["nan", "inf", "1e308", "x"],
    "PixelSpacing": [["0", "1"], ["nan", "1"], ["1"], ["1", "1", "1"], ["-1", "1"], ["abc", "1"]],
    "ImageOrientationPatient": [
        ["1", "0", "0"],
        ["nan"] * 6,
        ["1", "0", "0", "1", "0", "0"],
        ["0", "0", "0", "0", "0", "0"],
        ["a", "b", "c", "d", "e", "f"],
    ],
    "ImagePositionPatient": [["0", "0"], ["nan", "0", "0"], ["inf", "0", "0"], ["1e308", "0", "0"], ["a", "b", "c"]],
    "SliceThickness": ["0", "-2", "nan", "abc", "1e308"],
    "SpacingBetweenSlices": ["0", "nan", "abc"],
    "SOPClassUID": ["1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.88.11", "", "not a uid"],
    "SeriesInstanceUID": ["", "1.2.3"],
    "Modality": ["", "RTSTRUCT", "SR", "XX"],
    "WindowCenter": ["abc"],
    "VOILUTFunction": ["SIGMOID"],
    "PixelPaddingValue": [0, 65535],
}
WRONG_VRS = ["US", "SS", "UL", "DS", "IS", "LO", "CS", "OB", "OW", "FD", "SQ", "UN", "UT"]


def _vr_value(vr: str, value):
    """``value`` encoded as a value of ``vr`` (wrong on purpose when the VR is not the attribute's)."""
    values = value if isinstance(value, list) else [value]
    if vr in ("US", "SS", "UL"):
        ints = []
        for v in values:
            try:
                ints.append(int(float(v)))
            except (TypeError, ValueError, OverflowError):
                ints.append(7)
        limit = {"US": (0, 65535), "SS": (-32768, 32767), "UL": (0, 2**32 - 1)}[vr]
        ints = [int(np.clip(v, *limit)) for v in ints]
        return ints if len(ints) > 1 else ints[0]
    if vr == "FD":
        floats = []
        for v in values:
            try:
                floats.append(float(v))
            except (TypeError, ValueError):
                floats.append(float("nan"))
        return floats if len(floats) > 1 else floats[0]
    if vr in ("OB", "OW", "UN"):
        return ("\\".join(str(v) for v in values)).encode("ascii", "replace").ljust(2, b"\0")
    if vr == "SQ":
        return pydicom.Sequence([pydicom.Dataset()])
    return "\\".join(str(v) for v in values)


def dicom_edit(ds: pydicom.Dataset, keyword: str, value, vr: str | None) -> None:
    """Set ``keyword`` to ``value`` as raw text or bytes under ``vr`` (the attribute's own VR when ``None``)."""
    tag = Tag(keyword)
    own_vr = pydicom.datadict.dictionary_VR(tag).split(" or ")[0]  # "US or SS": either will do
    vr = vr or own_vr
    if vr == own_vr and own_vr in ("US", "SS", "UL") and not isinstance(value, int):
        vr = "LO"  # a number written as text where the standard wants binary: a VR error too
    encoded = _vr_value(vr, value)
    if isinstance(encoded, (str, bytes)):
        # A raw element: its bytes are written as they are, as a damaged file would hold them, where a
        # DataElement would first have to be a valid value of its VR.
        raw = encoded.encode("latin-1", "replace") if isinstance(encoded, str) else encoded
        raw += (b"\0" if vr in ("OB", "UN", "UI") else b" ") * (len(raw) % 2)
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    else:
        ds[tag] = DataElement(tag, vr, encoded)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    """Encode a dataset as a Part 10 file in its own transfer syntax, without pydicom's consistency fixes."""
    buffer = io.BytesIO()
    with pydicom.config.disable_value_validation():
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def dicom_structural(data: bytes, rng: random.Random) -> bytes:
    """One structural edit of an encoded DICOM file: an attribute value, a VR, the pixel data, the frames."""
    ds = pydicom.dcmread(io.BytesIO(data))
    choice = rng.random()
    if choice < 0.45:
        keyword = rng.choice(sorted(DICOM_EDITS))
        vr = rng.choice(WRONG_VRS) if rng.random() < 0.3 else None
        dicom_edit(ds, keyword, rng.choice(DICOM_EDITS[keyword]), vr)
    elif choice < 0.6 and "PixelData" in ds:
        pixels = ds.PixelData
        cut = rng.choice([0, 1, 2, len(pixels) // 2, len(pixels) - 1, len(pixels) + 1, 2 * len(pixels)])
        ds.PixelData = (pixels * 3)[:cut] if cut > len(pixels) else pixels[:cut]
    elif choice < 0.75 and "PerFrameFunctionalGroupsSequence" in ds:
        groups = ds.PerFrameFunctionalGroupsSequence
        edit = rng.choice(["drop", "plane", "measures", "orientation", "position"])
        item = groups[rng.randrange(len(groups))]
        if edit == "drop":
            del groups[rng.randrange(len(groups))]
        elif edit == "plane" and "PlanePositionSequence" in item:
            del item.PlanePositionSequence
        elif edit == "measures" and "PixelMeasuresSequence" in ds.SharedFunctionalGroupsSequence[0]:
            del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        elif edit == "orientation":
            shared = ds.SharedFunctionalGroupsSequence[0]
            if "PlaneOrientationSequence" in shared:
                dicom_edit(
                    shared.PlaneOrientationSequence[0],
                    "ImageOrientationPatient",
                    rng.choice(DICOM_EDITS["ImageOrientationPatient"]),
                    None,
                )
        elif "PlanePositionSequence" in item:
            dicom_edit(
                item.PlanePositionSequence[0],
                "ImagePositionPatient",
                rng.choice(DICOM_EDITS["ImagePositionPatient"] + [["0", "0", "0"]]),
                None,
            )
    elif choice < 0.85:
        keyword = rng.choice(sorted(DICOM_EDITS))
        if keyword in ds:
            delattr(ds, keyword)
    else:
        return with_transfer_syntax(data, rng.choice(TRANSFER_SYNTAXES))
    return dicom_bytes(ds)


def swap_vr(data: bytes, rng: random.Random) -> bytes:
    """Overwrite the two VR bytes of one explicit-VR element with another VR's code (byte-level VR damage)."""
    start = dicom_meta_end(data)
    offsets = [i for i in range(start, len(data) - 6) if data[i + 4 : i + 6] in _VR_CODES]
    if not offsets:
        return data
    at = rng.choice(offsets)
    return data[: at + 4] + rng.choice(sorted(_VR_CODES)) + data[at + 6 :]


_VR_CODES = {
    vr.encode()
    for vr in (
        "US",
        "SS",
        "UL",
        "DS",
        "IS",
        "LO",
        "CS",
        "OB",
        "OW",
        "UI",
        "SQ",
        "UN",
        "UT",
        "DA",
        "TM",
        "PN",
        "SH",
        "FD",
        "FL",
        "AT",
        "ST",
        "LT",
    )
}


def raw_mutation(data: bytes, rng: random.Random, header: int) -> bytes:
    """One byte-level mutation; ``header`` bytes at the start are where most damage is aimed."""
    kind = rng.choice(["flip_header", "flip_header", "flip_any", "truncate", "overwrite", "insert", "delete"])
    if kind == "flip_header":
        return flip_bits(data, [rng.randrange(min(header, len(data)) * 8) for _ in range(rng.randint(1, 4))])
    if kind == "flip_any":
        return flip_bits(data, [rng.randrange(len(data) * 8) for _ in range(rng.randint(1, 16))])
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    at = rng.randrange(len(data))
    run = rng.randint(1, 16)
    if kind == "overwrite":
        fill = rng.choice([b"\xff", b"\x00", bytes([rng.randrange(256)])])
        return data[:at] + fill * run + data[at + run :]
    if kind == "insert":
        return data[:at] + rng.randbytes(run) + data[at:]
    return data[:at] + data[at + run :]


def nifti_mutation(data: bytes, rng: random.Random) -> bytes:
    """A header field set to an absurd value (half the time) or a byte-level mutation."""
    if rng.random() < 0.5 and data[344:347] in (b"n+1", b"ni1"):
        field = rng.choice(NIFTI1_FIELDS)
        if field[2] == "<h" or field[2] == "<i":
            value = rng.choice(INT16_VALUES)
        elif field[2] == "4s":
            value = rng.choice(MAGICS)
        else:
            value = rng.choice(FLOAT_VALUES)
        return set_nifti_field(data, field, value)
    return raw_mutation(data, rng, header=352 if data[344:347] in (b"n+1", b"ni1") else 544)


# --- property tests ----------------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(["int16.nii", "float.nii", "four_d.nii"]),
    field=st.sampled_from(NIFTI1_FIELDS),
    number=st.one_of(
        st.sampled_from(INT16_VALUES + FLOAT_VALUES),
        st.integers(-(2**31), 2**31 - 1),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
    ),
    magic=st.sampled_from(MAGICS),
    gzipped=st.booleans(),
)
def test_nifti_header_field_property(seeds, scratch, seed, field, number, magic, gzipped):
    value = magic if field[2] == "4s" else number
    if field[2] in ("<h", "<i"):
        value = int(value) if np.isfinite(value) else 0
    data = set_nifti_field(seeds[seed].read_bytes(), field, value)
    name = seed + (".gz" if gzipped else "")
    check_read(scratch(name, _gzip(data) if gzipped else data), split_4d=seed == "four_d.nii")


@FUZZ_SETTINGS
@given(
    dims=st.lists(st.integers(-1, 32767), min_size=1, max_size=7),
    ndim=st.integers(-1, 9),
    datatype=st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 0, 1, 32, 128, 2304, 999]),
    gzipped=st.booleans(),
)
def test_nifti_absurd_dimensions_property(seeds, scratch, dims, ndim, datatype, gzipped):
    data = seeds["int16.nii"].read_bytes()
    raw = bytearray(data)
    raw[40:56] = struct.pack("<8h", ndim, *dims, *([1] * (7 - len(dims))))
    raw[70:72] = struct.pack("<h", datatype)
    name = "dims.nii.gz" if gzipped else "dims.nii"
    outcome = check_read(scratch(name, _gzip(bytes(raw)) if gzipped else bytes(raw)))[0]
    voxels = int(np.prod([max(d, 0) for d in dims[: max(ndim, 0)]], dtype=np.float64)) if ndim > 0 else 0
    if outcome == "ok":  # a header the reader accepted must describe data the file really holds
        assert voxels <= len(data), (dims, ndim, datatype)


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(NIFTI_SEEDS + DICOM_FILE_SEEDS),
    flips=st.lists(st.integers(0, 8 * 4096), min_size=1, max_size=12),
    keep=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_bit_flips_and_truncation_property(seeds, scratch, seed, flips, keep):
    data = flip_bits(seeds[seed].read_bytes(), flips)
    if keep is not None:
        data = data[: int(keep * len(data))]
    check_read(scratch(seed, data), split_4d=seed == "four_d.nii")


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(["int16.nii", "float.nii", "nifti2.nii", "four_d.nii"]),
    damage=st.sampled_from(GZIP_DAMAGE),
    where=st.floats(0.0, 1.0),
)
def test_gzip_damage_property(seeds, scratch, seed, damage, where):
    data = gzip_damage(seeds[seed + ".gz"].read_bytes(), damage, where)
    check_read(scratch(seed + ".gz", data), split_4d=seed == "four_d.nii")


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(
        ["single_mr.dcm", "enhanced.dcm", "classic_mf.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"]
    ),
    keyword=st.sampled_from(sorted(DICOM_EDITS)),
    index=st.integers(0, 7),
    vr=st.one_of(st.none(), st.sampled_from(WRONG_VRS)),
)
def test_dicom_attribute_property(seeds, scratch, seed, keyword, index, vr):
    ds = pydicom.dcmread(seeds[seed])
    values = DICOM_EDITS[keyword]
    dicom_edit(ds, keyword, values[index % len(values)], vr)
    check_read(scratch(seed, dicom_bytes(ds)))


@FUZZ_SETTINGS
@given(seed=st.sampled_from(DICOM_FILE_SEEDS), syntax=st.sampled_from(TRANSFER_SYNTAXES))
def test_wrong_transfer_syntax_declaration_property(seeds, scratch, seed, syntax):
    check_read(scratch(seed, with_transfer_syntax(seeds[seed].read_bytes(), syntax)))


# --- the seeded mutation fuzzer ----------------------------------------------------------------------------


def _save_failure(name: str, data: dict[str, bytes], error: BaseException) -> Path:
    root = Path(os.environ.get("SGAD_FUZZ_SAVE") or tempfile.mkdtemp(prefix="sgad-fuzz-failures-"))
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in data.items():
        (folder / file_name).write_bytes(content)
    (folder / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
    return folder


def _run_case(tmp: Path, label: str, files: dict[str, bytes], folder: bool, split_4d: bool, failures: list) -> None:
    case = tmp / label
    case.mkdir()
    for file_name, content in files.items():
        (case / file_name).write_bytes(content)
    target = case if folder else case / next(iter(files))
    try:
        check_read(target, split_4d=split_4d)
    except BaseException as err:  # every wrong outcome is collected, not just the first (and a decoder's
        if isinstance(err, (KeyboardInterrupt, SystemExit)):  # Rust panic is a BaseException)
            raise
        failures.append(f"{label}: {type(err).__name__}: {str(err)[:300]} -> {_save_failure(label, files, err)}")
    finally:
        shutil.rmtree(case, ignore_errors=True)


def _assert_no_failures(failures: list[str]) -> None:
    assert not failures, f"{len(failures)} inputs broke a reader (inputs saved, see README in {CORPUS}):\n" + "\n".join(
        failures[:20]
    )


def nifti_case(plain: bytes, seed: str, rng: random.Random) -> dict[str, bytes]:
    """One to three stacked NIfTI mutations, gzipped half the time (and the gzip damaged some of those)."""
    data = plain
    for _ in range(rng.randint(1, 3)):
        data = nifti_mutation(data, rng) or data[:1]
    gzipped = rng.random() < 0.5
    if gzipped:
        data = _gzip(data)
        if rng.random() < 0.4:
            data = gzip_damage(data, rng.choice(GZIP_DAMAGE), rng.random())
    return {seed + (".gz" if gzipped else ""): data}


def dicom_file_case(original: bytes, seed: str, rng: random.Random) -> dict[str, bytes]:
    """One or two stacked DICOM mutations: structural edits, VR swaps, byte damage."""
    data = original
    for _ in range(rng.randint(1, 2)):
        try:
            data = (
                dicom_structural(data, rng)
                if rng.random() < 0.5
                else (swap_vr(data, rng) if rng.random() < 0.2 else raw_mutation(data, rng, header=1024))
            )
        except Exception:  # the previous mutation left nothing pydicom can parse: damage the bytes instead
            data = raw_mutation(data, rng, header=1024)
    return {seed: data or b"\0"}


def series_case(originals: dict[str, bytes], rng: random.Random) -> dict[str, bytes]:
    """One or two files of a series damaged: mismatched sizes, positions, UIDs, truncation; a duplicate slice."""
    files = dict(originals)
    for _ in range(rng.randint(1, 2)):
        name = rng.choice(sorted(files))
        try:
            files[name] = (
                dicom_structural(files[name], rng)
                if rng.random() < 0.6
                else raw_mutation(files[name], rng, header=1200)
            )
        except Exception:
            files[name] = raw_mutation(files[name], rng, header=1200)
        files[name] = files[name] or b"\0"
    if rng.random() < 0.1:
        files["extra.dcm"] = files[rng.choice(sorted(files))]
    return files


@pytest.mark.parametrize("seed", NIFTI_SEEDS)
def test_mutation_fuzzer_nifti(seeds, tmp_path, seed):
    rng = random.Random(f"nifti:{seed}")
    plain = seeds[seed].read_bytes()
    failures: list[str] = []
    for case in range(CASES_PER_SEED):
        files = nifti_case(plain, seed, rng)
        _run_case(tmp_path, f"{seed}-{case:04d}", files, False, seed == "four_d.nii", failures)
    _assert_no_failures(failures)


@pytest.mark.parametrize("seed", DICOM_FILE_SEEDS)
def test_mutation_fuzzer_dicom_file(seeds, tmp_path, seed):
    rng = random.Random(f"dicom:{seed}")
    original = seeds[seed].read_bytes()
    failures: list[str] = []
    for case in range(CASES_PER_SEED):
        _run_case(tmp_path, f"{seed}-{case:04d}", dicom_file_case(original, seed, rng), False, False, failures)
    _assert_no_failures(failures)


def test_mutation_fuzzer_dicom_series(seeds, tmp_path):
    rng = random.Random("dicom:series")
    originals = {p.name: p.read_bytes() for p in sorted(seeds["series_ct"].iterdir())}
    failures: list[str] = []
    for case in range(CASES_PER_SEED * 2):
        _run_case(tmp_path, f"series-{case:04d}", series_case(originals, rng), True, False, failures)
    _assert_no_failures(failures)


def test_a_batch_survives_a_folder_of_broken_files(seeds, tmp_path):
    """discover_scans over a folder of many damaged scans lists them all; the intact ones still load."""
    rng = random.Random("batch")
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy2(seeds["float.nii.gz"], folder / "good.nii.gz")
    shutil.copytree(seeds["series_ct"], folder / "good_series")
    nifti_seeds = [rng.choice(NIFTI_SEEDS) for _ in range(12)]
    for k, seed in enumerate(nifti_seeds):
        data = nifti_mutation(nifti_mutation(seeds[seed].read_bytes(), rng), rng)
        # every other file is also cut inside its header: whatever else the mutations did, it cannot load
        (folder / f"bad{k:02d}_{seed}").write_bytes(data if k % 2 else data[: rng.randint(1, 340)])
        dicom_seed = rng.choice(["single_mr.dcm", "enhanced.dcm", "classic_mf.dcm"])
        (folder / f"bad{k:02d}_{dicom_seed}").write_bytes(raw_mutation(seeds[dicom_seed].read_bytes(), rng, 1024))
    with bounded():
        sources = sgad_med.discover_scans(folder)
    listed = {path for source in sources for path in source.paths}
    assert listed == {p for p in folder.rglob("*") if p.is_file()}  # every file is in some source
    outcomes = {}
    for source in sources:
        if source.skip_reason:
            continue
        with bounded():
            try:
                outcomes[source.path] = _check_scan(sgad_med.load_scan(source), source.path)
            except SGADError as err:
                outcomes[source.path] = _check_error(err, source.path)
    assert outcomes[folder / "good.nii.gz"] == "ok" and outcomes[folder / "good_series"] == "ok"
    assert all(
        outcomes[folder / f"bad{k:02d}_{seed}"] == "ScanReadError" for k, seed in enumerate(nifti_seeds) if k % 2 == 0
    )


# --- the regression corpus ---------------------------------------------------------------------------------


def _corpus_entries() -> list[tuple[str, dict]]:
    manifest = CORPUS / "expected.json"
    if not manifest.exists():
        return []
    return sorted(json.loads(manifest.read_text()).items())


@pytest.mark.parametrize(("name", "expected"), _corpus_entries(), ids=[n for n, _ in _corpus_entries()])
def test_regression_corpus(name, expected):
    """Inputs that once broke a reader: each now gives the outcome recorded for it in expected.json."""
    target = CORPUS / name
    outcome = check_read(target, split_4d=expected.get("split_4d", False))[0]
    assert outcome == expected["outcome"], f"{name} (once {expected['was']}): {outcome}, expected {expected['outcome']}"


def test_regression_corpus_is_small_and_complete():
    entries = dict(_corpus_entries())
    files = [p for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("README.md", "expected.json")]
    assert (CORPUS / "README.md").is_file()
    assert all(p.stat().st_size < 50_000 for p in files), [p.name for p in files if p.stat().st_size >= 50_000]
    assert sum(p.stat().st_size for p in files) < 1_000_000
    listed = {(CORPUS / name).resolve() for name in entries}
    for path in files:  # every file is replayed: directly, or as part of a listed series folder
        assert path.resolve() in listed or path.parent.resolve() in listed, f"{path} is not in expected.json"
    assert all((CORPUS / name).exists() for name in entries)
