"""Invertible intensity normalization: CT HU windowing and MR robust-percentile scaling to [0, 1].

Every stage between ``normalize`` and ``denormalize`` (harmonization, detection, restoration) works on
intensities in [0, 1]. The forward transforms here map a scan's own units (HU for CT, the scanner's
arbitrary scale for MR) linearly onto [0, 1] and clip; the inverse maps [0, 1] back. Clipping loses
information, so the forward transform records exactly what it needs to undo itself:

- the linear parameters ``lo`` and ``hi`` (``lo -> 0``, ``hi -> 1``), rounded to float32 so that the
  forward and the inverse use the very same numbers;
- the voxels it clipped (``x < lo`` or ``x > hi``): their flat, C-order indices (int64) and original
  values (float32).

With both, ``denormalize(normalize(x))`` equals ``x`` up to float32 rounding (about ``1e-7 * (hi - lo)``),
far below any source's quantization step, so re-quantizing the output to the source's storage grid gives
back every stored value exactly.

The record exists in two forms:

1. a MONAI trace: the transforms are :class:`~monai.transforms.InvertibleTransform` and push the record as
   ``extra_info``, so ``transform.inverse(img01)``, ``Compose.inverse`` and ``Invertd`` work as usual;
2. a plain :class:`NormalizationParams` (``transform.last_params``, :func:`find_normalization_params`, or
   the functional pair :func:`normalize` / :func:`denormalize`), for denormalizing a *different* tensor of
   the same shape, such as a network's output, which carries no trace.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys, TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "DEFAULT_CT_WINDOW",
    "DEFAULT_MR_PERCENTILES",
    "NormalizationKind",
    "NormalizationParams",
    "CTWindowNormalize",
    "MRPercentileNormalize",
    "ScanNormalize",
    "CTWindowNormalized",
    "MRPercentileNormalized",
    "ScanNormalized",
    "normalize",
    "normalize_range",
    "denormalize",
    "mr_percentile_range",
    "modality_kind",
    "find_normalization_params",
    "quantization_step",
    "roundtrip_tolerance",
]

DEFAULT_CT_WINDOW: tuple[float, float] = (-1024.0, 3071.0)
"""The full 12-bit HU range scanners store (air at -1024 up to dense bone and contrast at 3071).

A narrow clinical window (soft tissue, lung) would give the networks more contrast but clip most of the body
and leave them blind to what lies outside it; the full range clips only what no tissue has: the padding
outside the reconstruction circle (-2048, -3024) and metal above 3071.
"""

DEFAULT_MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Robust percentiles of the MR foreground: the extremes (a few hot voxels, vessels, noise) are clipped."""

NormalizationKind = Literal["ct_window", "mr_percentile"]

_EXTRA_MARKER = "sgad_normalization"  # marks our entries among a MetaTensor's applied_operations
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


@dataclass
class NormalizationParams:
    """What one forward normalization did, enough to undo it exactly.

    Args:
        kind: ``"ct_window"`` or ``"mr_percentile"``.
        lo: the value (scan units) mapped to 0; float32-representable.
        hi: the value (scan units) mapped to 1; float32-representable, ``hi > lo``.
        clipped_index: int64 flat indices (C order over ``shape``) of the voxels that were clipped.
        clipped_values: float32 original values of those voxels, in the scan's units.
        shape: shape of the normalized array, channel dimension included.
    """

    kind: str
    lo: float
    hi: float
    clipped_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    clipped_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.kind = str(self.kind)
        self.lo = float(self.lo)
        self.hi = float(self.hi)
        self.clipped_index = np.asarray(_to_numpy(self.clipped_index), dtype=np.int64).reshape(-1)
        self.clipped_values = np.asarray(_to_numpy(self.clipped_values), dtype=np.float32).reshape(-1)
        self.shape = tuple(int(s) for s in _to_numpy(self.shape).reshape(-1)) if len(self.shape) else ()
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise ValueError(f"normalization needs finite lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.clipped_index.shape != self.clipped_values.shape:
            raise ValueError(
                f"clipped_index ({self.clipped_index.size}) and clipped_values ({self.clipped_values.size}) "
                "differ in length"
            )

    @property
    def scale(self) -> float:
        """``hi - lo``: scan units per unit of normalized intensity."""
        return self.hi - self.lo

    @property
    def n_clipped(self) -> int:
        """How many voxels the forward transform clipped."""
        return int(self.clipped_index.size)

    def to_dict(self, as_lists: bool = False) -> dict[str, Any]:
        """The record as a plain dict (also the ``extra_info`` of the MONAI trace).

        Args:
            as_lists: give the arrays as Python lists (JSON-serialisable, but large for many clipped voxels);
                by default they are numpy arrays (compact; fine for ``np.savez`` and ``torch.save``).

        Returns:
            ``{"kind", "lo", "hi", "clipped_index", "clipped_values", "shape"}``.
        """
        index, values = self.clipped_index, self.clipped_values
        return {
            "kind": self.kind,
            "lo": self.lo,
            "hi": self.hi,
            "clipped_index": index.tolist() if as_lists else index,
            "clipped_values": values.tolist() if as_lists else values,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizationParams:
        """Rebuild the record from :meth:`to_dict` output (lists, numpy arrays or tensors) or a trace's ``extra_info``.

        Args:
            data: the mapping to read.

        Returns:
            The params.
        """
        return cls(
            kind=data["kind"],
            lo=data["lo"],
            hi=data["hi"],
            clipped_index=data.get("clipped_index", np.zeros(0, dtype=np.int64)),
            clipped_values=data.get("clipped_values", np.zeros(0, dtype=np.float32)),
            shape=tuple(_to_numpy(data.get("shape", ())).reshape(-1).tolist()),
        )


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_float32_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    """A plain (non-Meta) float32 tensor view or copy of ``img``, on its device."""
    return convert_to_tensor(img, dtype=torch.float32, track_meta=False)


def _checked_range(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)`` rounded to float32; a degenerate range (``hi <= lo`` up to rounding) becomes ``(lo, lo + 1)``.

    A constant or all-zero image has ``lo == hi``; widening the range by one scan unit maps it to 0 without
    dividing by zero, and anything above ``lo + 1`` is clipped and recorded, so the inverse stays exact.
    """
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"intensity range must be finite, got ({lo}, {hi}); the image holds NaN or Inf")
    lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    if hi32 - lo32 <= 4 * _FLOAT32_EPS * max(abs(lo32), abs(hi32)) or hi32 <= lo32:
        hi32 = float(np.float32(lo32 + max(1.0, 8 * _FLOAT32_EPS * abs(lo32))))
    return lo32, hi32


def mr_percentile_range(
    img: NdarrayOrTensor,
    lower: float = DEFAULT_MR_PERCENTILES[0],
    upper: float = DEFAULT_MR_PERCENTILES[1],
    nonzero: bool = True,
) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of an image's intensities.

    Args:
        img: the image, any shape (all channels pooled, as MONAI's ``ScaleIntensityRangePercentiles`` does by default).
        lower: lower percentile in [0, 100].
        upper: upper percentile in [0, 100], ``upper > lower``.
        nonzero: compute over the nonzero voxels only. MR background is exactly zero in most files (masked or
            skull-stripped data; zero-filled reconstructions) and can be most of the volume; counting it would
            drag the lower percentile to 0 and make the range depend on the field of view. An image with no
            nonzero voxel falls back to all voxels.

    Returns:
        ``(lo, hi)`` in the image's units (may be equal for a constant image; see :func:`normalize_range`).
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    values = _as_float32_tensor(img).reshape(-1)
    if nonzero:
        foreground = values[values != 0]
        if foreground.numel() > 0:
            values = foreground
    if values.numel() == 0:
        raise ValueError("cannot compute percentiles of an empty image")
    # numpy: torch.quantile refuses inputs above 16M elements; both use linear interpolation
    lo, hi = np.percentile(values.detach().cpu().numpy(), [lower, upper])
    return float(lo), float(hi)


def modality_kind(modality: str) -> NormalizationKind:
    """Which normalization a modality gets: ``"CT"`` -> HU window; ``"MR"`` and ``"OT"`` -> percentiles.

    ``"OT"`` (unknown, e.g. a NIfTI without a modality) gets percentiles: they assume nothing about units.

    Args:
        modality: DICOM-style modality code, case-insensitive.

    Returns:
        ``"ct_window"`` or ``"mr_percentile"``.
    """
    code = str(modality).strip().upper()
    if code == "CT":
        return "ct_window"
    if code in ("MR", "OT"):
        return "mr_percentile"
    raise ValueError(f"no intensity normalization for modality {modality!r}; expected 'CT', 'MR' or 'OT'")


def normalize_range(
    img: NdarrayOrTensor, lo: float, hi: float, kind: str = "ct_window"
) -> tuple[NdarrayOrTensor, NormalizationParams]:
    """Map ``[lo, hi]`` linearly to ``[0, 1]``, clip, and record what is needed to undo it.

    Args:
        img: image in scan units, any shape; numpy array, tensor or MetaTensor, on any device.
        lo: value mapped to 0.
        hi: value mapped to 1. A degenerate range (``hi <= lo``, e.g. a constant image) becomes ``(lo, lo + 1)``.
        kind: recorded in the params (``"ct_window"`` or ``"mr_percentile"``).

    Returns:
        ``(img01, params)``: ``img01`` float32 in [0, 1], of the same container type as ``img`` (a MetaTensor
        keeps its metadata); ``params`` the :class:`NormalizationParams`.
    """
    lo, hi = _checked_range(lo, hi)
    x = _as_float32_tensor(img)
    flat = x.reshape(-1)
    clipped = torch.nonzero((flat < lo) | (flat > hi)).reshape(-1)
    params = NormalizationParams(
        kind=kind,
        lo=lo,
        hi=hi,
        clipped_index=clipped.cpu().numpy().astype(np.int64),
        clipped_values=flat[clipped].cpu().numpy().astype(np.float32),
        shape=tuple(x.shape),
    )
    y = ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)
    out = convert_to_dst_type(y, img, dtype=torch.float32)[0]
    return out, params


def normalize(
    img: NdarrayOrTensor,
    modality: str = "CT",
    window: Sequence[float] = DEFAULT_CT_WINDOW,
    lower: float = DEFAULT_MR_PERCENTILES[0],
    upper: float = DEFAULT_MR_PERCENTILES[1],
    nonzero: bool = True,
) -> tuple[NdarrayOrTensor, NormalizationParams]:
    """Normalize a scan to [0, 1] the way its modality calls for; the functional form of :class:`ScanNormalize`.

    Args:
        img: image in scan units (HU for CT), e.g. ``scan.image`` ``[C, H, W, D]``.
        modality: ``"CT"`` (HU window) or ``"MR"``/``"OT"`` (robust percentiles).
        window: CT window ``(lo, hi)`` in HU.
        lower: MR lower percentile.
        upper: MR upper percentile.
        nonzero: MR percentiles over nonzero voxels only (see :func:`mr_percentile_range`).

    Returns:
        ``(img01, params)`` as :func:`normalize_range`; no MONAI trace is pushed.
    """
    kind = modality_kind(modality)
    if kind == "ct_window":
        lo, hi = _checked_window(window)
    else:
        lo, hi = mr_percentile_range(img, lower, upper, nonzero)
    return normalize_range(img, lo, hi, kind)


def denormalize(
    img01: NdarrayOrTensor, params: NormalizationParams | Mapping[str, Any], restore_clipped: bool = True
) -> NdarrayOrTensor:
    """Map [0, 1] back to the scan's units: ``lo + img01 * (hi - lo)``, then optionally put the clipped voxels back.

    The map is linear and unclipped, so it applies to any tensor in normalized units, not only the one the
    params came from: a network's output, which has the same shape but no trace, is denormalized with the
    params of its input.

    ``restore_clipped``: the clipped voxels lay outside ``[lo, hi]``, the range the networks see; for them the
    networks can only output 0 or 1, and their original values are the best estimate there is. So the
    default writes them back, which also makes ``denormalize(normalize(x)) == x``. Set it to False to see
    exactly what a network produced everywhere (e.g. to measure how it treats saturated regions).

    Args:
        img01: image in normalized units; numpy array, tensor or MetaTensor, on any device.
        params: the record of the forward normalization (or its :meth:`NormalizationParams.to_dict`).
        restore_clipped: write the recorded original values back at the clipped voxels; needs
            ``img01.shape == params.shape``.

    Returns:
        float32 image in scan units, of the same container type as ``img01`` (a MetaTensor keeps its metadata).
    """
    if not isinstance(params, NormalizationParams):
        params = NormalizationParams.from_dict(params)
    y = _as_float32_tensor(img01)
    x = (y * params.scale + params.lo).contiguous()
    if restore_clipped and params.n_clipped:
        if tuple(x.shape) != params.shape:
            raise ValueError(
                f"cannot restore clipped voxels: image shape {tuple(x.shape)} differs from the normalized "
                f"shape {params.shape}; pass restore_clipped=False to map intensities only"
            )
        index = torch.as_tensor(params.clipped_index, device=x.device)
        x.view(-1)[index] = torch.as_tensor(params.clipped_values, device=x.device)
    return convert_to_dst_type(x, img01, dtype=torch.float32)[0]


def find_normalization_params(img: MetaTensor) -> NormalizationParams:
    """The params of the most recent normalization in a MetaTensor's trace (``applied_operations``), left in place.

    Args:
        img: a MetaTensor that went through one of this module's transforms.

    Returns:
        The params of the latest such transform.
    """
    for op in reversed(getattr(img, "applied_operations", None) or []):
        extra = op.get(TraceKeys.EXTRA_INFO) if isinstance(op, Mapping) else None
        if isinstance(extra, Mapping) and extra.get(_EXTRA_MARKER):
            return NormalizationParams.from_dict(extra)
    raise ValueError("no sgad_med intensity normalization in the image's applied_operations")


def quantization_step(dtype: np.dtype | torch.dtype | str | type, slope: float | None = 1.0) -> float:
    """The smallest difference a source can store, in scan units.

    Args:
        dtype: the stored (on-disk) voxel type: DICOM pixel data or the NIfTI data type.
        slope: DICOM RescaleSlope or NIfTI scl_slope (``None``, 0 or NaN mean 1).

    Returns:
        ``|slope|`` for integer storage; ``0.0`` for float storage (no grid: use a relative tolerance).
    """
    if isinstance(dtype, torch.dtype):
        is_integer = not (dtype.is_floating_point or dtype.is_complex)
    else:
        is_integer = np.issubdtype(np.dtype(dtype), np.integer) or np.issubdtype(np.dtype(dtype), np.bool_)
    if not is_integer:
        return 0.0
    if slope is None or not np.isfinite(slope) or slope == 0:
        return 1.0
    return float(abs(slope))


def roundtrip_tolerance(step: float, magnitude: float, rtol: float = 1e-5) -> float:
    """The largest round-trip error that loses nothing of the source.

    Args:
        step: the source's quantization step (:func:`quantization_step`, ``Scan.quantization_step``); 0 for float data.
        magnitude: the largest absolute value in the image (sets the scale of the float tolerance).
        rtol: relative tolerance for float data.

    Returns:
        ``step / 2`` for quantized data (an error below it re-quantizes to the stored value exactly);
        ``rtol * magnitude`` (at least the smallest normal float32) for float data.
    """
    if step > 0:
        return 0.5 * float(step)
    return max(rtol * abs(float(magnitude)), float(np.finfo(np.float32).tiny))


def _checked_window(window: Sequence[float]) -> tuple[float, float]:
    if len(window) != 2:
        raise ValueError(f"window must be (lo, hi), got {window!r}")
    lo, hi = float(window[0]), float(window[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"window must be finite with lo < hi, got {window!r}")
    return lo, hi


class _InvertibleNormalize(InvertibleTransform):
    """Shared forward/inverse machinery: subclasses say which range (and kind) an image gets."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, restore_clipped: bool = True) -> None:
        self.restore_clipped = restore_clipped
        self.last_params: NormalizationParams | None = None

    def _range(self, img: torch.Tensor, **kwargs: Any) -> tuple[float, float, NormalizationKind]:
        raise NotImplementedError

    def _forward(self, img: NdarrayOrTensor, **kwargs: Any) -> NdarrayOrTensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        lo, hi, kind = self._range(img, **kwargs)
        out, params = normalize_range(img, lo, hi, kind)
        self.last_params = params
        extra = params.to_dict()
        extra[_EXTRA_MARKER] = True
        self.push_transform(out, extra_info=extra)
        return out

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalize ``img`` (scan units) to [0, 1].

        Args:
            img: channel-first image ``[C, H, W, D]`` in scan units; numpy array, tensor or MetaTensor.

        Returns:
            float32 image in [0, 1]: a MetaTensor (metadata kept, trace pushed) when meta tracking is on
            (MONAI's default), else a tensor. The params are also in ``self.last_params``.
        """
        return self._forward(img)

    def inverse(self, data: NdarrayOrTensor) -> NdarrayOrTensor:
        """Undo the most recent application of this transform, using the trace on ``data``.

        Args:
            data: MetaTensor in normalized units carrying this transform's trace (the output itself, or e.g.
                a prediction given that trace by ``Invertd``). Clipped voxels are restored when
                ``self.restore_clipped`` is set (see :func:`denormalize`).

        Returns:
            float32 MetaTensor in scan units, trace entry popped.
        """
        transform = self.pop_transform(data)
        params = NormalizationParams.from_dict(transform[TraceKeys.EXTRA_INFO])
        return denormalize(data, params, restore_clipped=self.restore_clipped)


class CTWindowNormalize(_InvertibleNormalize):
    """Map a CT window ``[lo, hi]`` in HU linearly to [0, 1] and clip; invertible exactly.

    The voxels outside the window are recorded (indices and HU) and put back by :meth:`inverse`.

    Args:
        window: ``(lo, hi)`` in HU. Default :data:`DEFAULT_CT_WINDOW`, the full 12-bit range (-1024, 3071): it
            clips only what is not tissue (padding outside the reconstruction circle, metal), so few voxels
            are recorded and the networks see every tissue.
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back (see :func:`denormalize`).

    Example::

        norm = CTWindowNormalize()
        img01 = norm(scan.image)           # [0, 1], MetaTensor with a trace
        hu = norm.inverse(img01)           # == scan.image up to float32 rounding
    """

    def __init__(self, window: Sequence[float] = DEFAULT_CT_WINDOW, restore_clipped: bool = True) -> None:
        super().__init__(restore_clipped)
        self.window = _checked_window(window)

    def _range(self, img: torch.Tensor, **kwargs: Any) -> tuple[float, float, NormalizationKind]:
        return self.window[0], self.window[1], "ct_window"


class MRPercentileNormalize(_InvertibleNormalize):
    """Map the robust range of an MR image (foreground percentiles) linearly to [0, 1] and clip; invertible exactly.

    Args:
        lower: lower percentile (default 0.5).
        upper: upper percentile (default 99.5).
        nonzero: compute percentiles over nonzero voxels only (default True; see :func:`mr_percentile_range`).
            A constant or all-zero image gets the range ``(c, c + 1)`` and maps to 0, without dividing by zero.
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back (see :func:`denormalize`).
    """

    def __init__(
        self,
        lower: float = DEFAULT_MR_PERCENTILES[0],
        upper: float = DEFAULT_MR_PERCENTILES[1],
        nonzero: bool = True,
        restore_clipped: bool = True,
    ) -> None:
        super().__init__(restore_clipped)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper
        self.nonzero = nonzero

    def _range(self, img: torch.Tensor, **kwargs: Any) -> tuple[float, float, NormalizationKind]:
        lo, hi = mr_percentile_range(img, self.lower, self.upper, self.nonzero)
        return lo, hi, "mr_percentile"


class ScanNormalize(_InvertibleNormalize):
    """CT windowing for ``"CT"``, robust percentile scaling for ``"MR"`` and ``"OT"``; invertible exactly.

    Args:
        modality: default modality, used when ``__call__`` is not given one.
        window: CT window in HU (see :class:`CTWindowNormalize`).
        lower: MR lower percentile (see :class:`MRPercentileNormalize`).
        upper: MR upper percentile.
        nonzero: MR percentiles over nonzero voxels only.
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back (see :func:`denormalize`).
    """

    def __init__(
        self,
        modality: str | None = None,
        window: Sequence[float] = DEFAULT_CT_WINDOW,
        lower: float = DEFAULT_MR_PERCENTILES[0],
        upper: float = DEFAULT_MR_PERCENTILES[1],
        nonzero: bool = True,
        restore_clipped: bool = True,
    ) -> None:
        super().__init__(restore_clipped)
        if modality is not None:
            modality_kind(modality)  # fail early on an unknown code
        self.modality = modality
        self.ct = CTWindowNormalize(window)
        self.mr = MRPercentileNormalize(lower, upper, nonzero)

    def _range(self, img: torch.Tensor, **kwargs: Any) -> tuple[float, float, NormalizationKind]:
        modality = kwargs.get("modality") or self.modality
        if modality is None:
            raise ValueError("ScanNormalize needs a modality ('CT', 'MR' or 'OT'), at construction or per call")
        source = self.ct if modality_kind(modality) == "ct_window" else self.mr
        return source._range(img)

    @property
    def settings(self) -> dict[str, Any]:
        """What decides the mapping (CT window, MR percentiles): equal settings normalize a scan identically."""
        return {"window": list(self.ct.window), "lower": self.mr.lower, "upper": self.mr.upper,
                "nonzero": self.mr.nonzero}

    def normalize_with_params(
        self, img: NdarrayOrTensor, modality: str | None = None
    ) -> tuple[NdarrayOrTensor, NormalizationParams]:
        """Normalize ``img`` and return the params, pushing no trace and keeping no state.

        The form the inference runners use: one instance may serve several threads at once, which
        :attr:`last_params` could not.

        Args:
            img: image in scan units, e.g. ``scan.image`` ``[C, H, W, D]``.
            modality: ``"CT"``, ``"MR"`` or ``"OT"``; defaults to the one given at construction.

        Returns:
            ``(img01, params)`` as :func:`normalize_range`.
        """
        lo, hi, kind = self._range(convert_to_tensor(img, track_meta=False), modality=modality)
        return normalize_range(img, lo, hi, kind)

    def __call__(self, img: NdarrayOrTensor, modality: str | None = None) -> NdarrayOrTensor:  # type: ignore[override]
        """Normalize ``img`` for its modality.

        Args:
            img: channel-first image in scan units.
            modality: ``"CT"``, ``"MR"`` or ``"OT"``; defaults to the one given at construction.

        Returns:
            float32 image in [0, 1] (see :meth:`CTWindowNormalize.__call__`).
        """
        return self._forward(img, modality=modality)


class _NormalizeDict(MapTransform, InvertibleTransform):
    """Dictionary wrapper: one array transform applied per key; ``inverse`` pops each key's trace."""

    backend = _InvertibleNormalize.backend
    normalizer: _InvertibleNormalize

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.last_params: dict[Hashable, NormalizationParams] = {}

    def _apply(self, img: NdarrayOrTensor, data: Mapping[Hashable, Any]) -> NdarrayOrTensor:
        return self.normalizer(img)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Normalize every key present.

        Args:
            data: dictionary of channel-first images in scan units.

        Returns:
            A new dict with those images in [0, 1]; ``self.last_params`` maps each key to its params.
        """
        d = dict(data)
        self.last_params = {}
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key], d)
            self.last_params[key] = self.normalizer.last_params  # type: ignore[assignment]
        return d

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Map every key present back to scan units, from each MetaTensor's trace.

        Args:
            data: dictionary of MetaTensors in normalized units.

        Returns:
            A new dict with those images in scan units.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer.inverse(d[key])
        return d


class CTWindowNormalized(_NormalizeDict):
    """Dictionary-based wrapper of :class:`CTWindowNormalize`.

    Args:
        keys: keys of the images to normalize.
        window: ``(lo, hi)`` in HU, default :data:`DEFAULT_CT_WINDOW`.
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[float] = DEFAULT_CT_WINDOW,
        restore_clipped: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = CTWindowNormalize(window, restore_clipped)


class MRPercentileNormalized(_NormalizeDict):
    """Dictionary-based wrapper of :class:`MRPercentileNormalize`.

    Args:
        keys: keys of the images to normalize.
        lower: lower percentile (default 0.5).
        upper: upper percentile (default 99.5).
        nonzero: percentiles over nonzero voxels only (default True).
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = DEFAULT_MR_PERCENTILES[0],
        upper: float = DEFAULT_MR_PERCENTILES[1],
        nonzero: bool = True,
        restore_clipped: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = MRPercentileNormalize(lower, upper, nonzero, restore_clipped)


class ScanNormalized(_NormalizeDict):
    """Dictionary-based wrapper of :class:`ScanNormalize`; the modality is fixed or read from the dict.

    Args:
        keys: keys of the images to normalize.
        modality: fixed modality for every item; when None it is read from ``data[modality_key]``.
        modality_key: key holding the modality string (e.g. ``"modality"`` filled from ``Scan.modality``).
        window: CT window in HU.
        lower: MR lower percentile.
        upper: MR upper percentile.
        nonzero: MR percentiles over nonzero voxels only.
        restore_clipped: whether :meth:`inverse` writes the clipped voxels back.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality: str | None = None,
        modality_key: str = "modality",
        window: Sequence[float] = DEFAULT_CT_WINDOW,
        lower: float = DEFAULT_MR_PERCENTILES[0],
        upper: float = DEFAULT_MR_PERCENTILES[1],
        nonzero: bool = True,
        restore_clipped: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.normalizer = ScanNormalize(modality, window, lower, upper, nonzero, restore_clipped)

    def _apply(self, img: NdarrayOrTensor, data: Mapping[Hashable, Any]) -> NdarrayOrTensor:
        modality = self.normalizer.modality or data.get(self.modality_key)
        if modality is None:
            raise ValueError(
                f"ScanNormalized needs a modality: pass modality= or put it in data[{self.modality_key!r}]"
            )
        return self.normalizer(img, modality=str(modality))
