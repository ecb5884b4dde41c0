"""Slice artifacts: corrupt chosen axial slices of a volume and say exactly which, how and how strongly.

The detector and the restorer learn from volumes in which some slices were damaged on purpose; training and
evaluation need the truth. Every transform here therefore follows TorchIO's pattern: a random transform only
*samples* parameters (the kind, the slices, the severity and an integer seed) and hands them to a deterministic
twin, so every corruption is reproducible from its record.

- :data:`ARTIFACTS` maps a kind name to a deterministic function ``(slice2d, severity, rng) -> slice2d``; the
  result depends only on its inputs and on the state of ``rng``.
- :class:`SliceArtifact` (the deterministic twin) applies one kind to given slices with a given severity and seed.
- :class:`RandSliceArtifact` picks a kind, some slices, a severity and a seed, then calls the twin.
- :class:`SliceArtifactd` / :class:`RandSliceArtifactd` are the dictionary forms; they also write a per-slice
  label array ``data[f"{key}_slice_labels"]`` (float32, length ``D``, 1 where a slice was corrupted).

Each call records what it did as a dict ``{"kind", "slices", "severity", "seed", "params"}`` (``params``: one dict
per corrupted slice, the values the artifact function drew), kept in ``transform.last_record`` and appended to
the list in ``img.meta["sgad_artifacts"]`` when the image is a :class:`~monai.data.MetaTensor`. That list is
stored as a JSON string so that batches still collate; read it with :func:`artifact_records`.

Conventions: images are ``[C, H, W, D]`` float intensities in [0, 1], slice axis last. Only the chosen slices
change; every other voxel is bit-for-bit the float32 input. All channels of a slice get the same artifact (the
same parameters). Outputs are float32 and stay in [0, 1]: artifacts that can overshoot clip, and for
``saturation`` the clipping *is* the artifact. Severity lies in [0, 1]; its strength grows monotonically with it
(amplitudes, sizes or fractions are linear in ``severity``), and at 0.5 the damage is plainly visible.

The k-space artifacts (``spike``, ``motion``, ``ghosting``, ``gibbs``) work on the 2D FFT of each slice.
``spike`` keeps the real part (a conjugate-symmetric spike pair leaves the image real, giving herringbone
stripes); ``motion``, ``ghosting`` and ``gibbs`` return the magnitude of the inverse FFT, as an MR scanner
reconstructs a magnitude image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "ARTIFACTS",
    "ARTIFACT_KINDS",
    "ARTIFACTS_META_KEY",
    "apply_slice_artifact",
    "artifact_records",
    "gibbs_keep_fraction",
    "slice_labels",
    "SliceArtifact",
    "SliceArtifactd",
    "RandSliceArtifact",
    "RandSliceArtifactd",
]

ARTIFACTS_META_KEY = "sgad_artifacts"
"""Key of ``img.meta`` holding the records (a JSON list of dicts; see :func:`artifact_records`)."""

ArtifactFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
_Params = dict[str, Any]


# ----------------------------------------------------------------------------------------------------------- helpers
def _fg_mask(s: np.ndarray) -> np.ndarray:
    """Foreground of a slice: voxels above 10% of its maximum (everything when the slice is empty)."""
    peak = float(s.max()) if s.size else 0.0
    if peak <= 0.0:
        return np.ones(s.shape, dtype=bool)
    return s > 0.1 * peak


def _fg_point(s: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A random foreground pixel ``(row, col)``."""
    rows, cols = np.nonzero(_fg_mask(s))
    i = int(rng.integers(rows.size))
    return int(rows[i]), int(cols[i])


def _box(center: int, half: int, size: int) -> slice:
    return slice(max(center - half, 0), min(center + half + 1, size))


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates in [-1, 1]."""
    h, w = shape
    y = np.linspace(-1.0, 1.0, h)[:, None]
    x = np.linspace(-1.0, 1.0, w)[None, :]
    return y, x


def _freqs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """FFT frequencies (cycles per pixel, in [-0.5, 0.5)) along rows and columns."""
    h, w = shape
    return np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _sign(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]))


# ------------------------------------------------------------------------------------------------ artifact functions
# Each ``_a_<kind>(s, severity, rng) -> (out, params)``: ``s`` a float64 2D slice, ``out`` float64 (unclipped where
# noted), ``params`` the values drawn (JSON-friendly). The public registry drops ``params``.


def _a_spike(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """k-space spike (herringbone): a conjugate pair of spikes at a random frequency; amplitude ~ severity."""
    h, w = s.shape
    radius = rng.uniform(0.1, 0.4)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    u, v = int(round(radius * h * np.sin(angle))), int(round(radius * w * np.cos(angle)))
    if u == 0 and v == 0:
        v = 1
    amplitude = 0.05 + 0.3 * sev  # peak-to-mean of the stripes, in intensity units
    phase = rng.uniform(0.0, 2.0 * np.pi)
    k = np.fft.fft2(s)
    spike = amplitude * h * w / 2.0 * np.exp(1j * phase)
    k[u % h, v % w] += spike
    k[-u % h, -v % w] += np.conj(spike)
    out = np.real(np.fft.ifft2(k))
    return _clip(out), {"u": u, "v": v, "amplitude": amplitude, "phase": phase}


def _a_motion(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Motion: a random subset of phase-encode lines (rows of k-space) gets a translation phase ramp."""
    h, w = s.shape
    fraction = 0.1 + 0.4 * sev
    max_shift = 1.0 + 6.0 * sev
    lines = np.nonzero(rng.random(h) < fraction)[0]
    if lines.size == 0:
        lines = np.array([int(rng.integers(h))])
    shifts = rng.uniform(-max_shift, max_shift, size=(lines.size, 2))
    ky, kx = _freqs(s.shape)
    k = np.fft.fft2(s)
    ramp = np.exp(-2j * np.pi * (ky[lines] * shifts[:, :1] + kx * shifts[:, 1:]))
    k[lines] *= ramp
    out = np.abs(np.fft.ifft2(k))
    return _clip(out), {"lines": lines.tolist(), "shifts": shifts.round(4).tolist(), "fraction": fraction}


def _a_ghosting(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """N/2 ghost: every other k-space line along a random axis scaled by ``1 - alpha`` and phase-shifted."""
    axis = int(rng.integers(2))
    alpha = 0.1 + 0.5 * sev
    theta = _sign(rng) * sev * np.pi / 3.0
    k = np.fft.fft2(s)
    index = (slice(1, None, 2), slice(None)) if axis == 0 else (slice(None), slice(1, None, 2))
    k[index] *= (1.0 - alpha) * np.exp(1j * theta)
    out = np.abs(np.fft.ifft2(k))
    return _clip(out), {"axis": axis, "alpha": alpha, "theta": theta}


def _a_rician(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Rician noise burst: magnitude of the slice plus complex Gaussian noise; sigma ~ severity."""
    sigma = 0.02 + 0.13 * sev
    re = s + rng.normal(0.0, sigma, s.shape)
    im = rng.normal(0.0, sigma, s.shape)
    return _clip(np.sqrt(re * re + im * im)), {"sigma": sigma}


def _a_signal_loss(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Signal loss: the whole slice scaled down by ``1 - (0.15 + 0.75 severity)``."""
    factor = 1.0 - (0.15 + 0.75 * sev)
    return s * factor, {"factor": factor}


def _a_stripes(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Bright/dark stripes: a few bands (rows or columns) offset by +-amplitude."""
    axis = int(rng.integers(2))
    size = s.shape[axis]
    n = int(rng.integers(2, 5))
    width = max(1, int(round(0.06 * size)))
    amplitude = 0.1 + 0.4 * sev
    starts = rng.integers(0, max(size - width, 1), size=n)
    signs = rng.choice([-1.0, 1.0], size=n)
    profile = np.zeros(size)
    for start, sign in zip(starts, signs):
        profile[start : start + width] = sign * amplitude
    out = s + (profile[:, None] if axis == 0 else profile[None, :])
    return _clip(out), {
        "axis": axis,
        "starts": starts.tolist(),
        "signs": signs.tolist(),
        "width": width,
        "amplitude": amplitude,
    }


def _a_zipper(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Zipper: one to three adjacent lines of alternating bright/dark pixels."""
    axis = int(rng.integers(2))
    size, length = s.shape[axis], s.shape[1 - axis]
    width = 1 + int(round(2 * sev))
    amplitude = 0.1 + 0.6 * sev
    start = int(rng.integers(int(0.1 * size), max(int(0.9 * size) - width, int(0.1 * size) + 1)))
    teeth = amplitude * np.where(np.arange(length) % 2 == 0, 1.0, -1.0)
    out = s.copy()
    if axis == 0:
        out[start : start + width, :] += teeth[None, :]
    else:
        out[:, start : start + width] += teeth[:, None]
    return _clip(out), {"axis": axis, "start": start, "width": width, "amplitude": amplitude}


def _a_dropout(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Partial dropout: a rectangle centred in the foreground set to 0 (half-sides ~ severity)."""
    h, w = s.shape
    cy, cx = _fg_point(s, rng)
    hy = max(1, int(round((0.08 + 0.22 * sev) * h)))
    hx = max(1, int(round((0.08 + 0.22 * sev) * w)))
    out = s.copy()
    out[_box(cy, hy, h), _box(cx, hx, w)] = 0.0
    return out, {"center": [cy, cx], "half_size": [hy, hx]}


def _a_bias(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Bias jump: a smooth quadratic multiplicative field ``1 + amplitude * p(y, x)``, ``max |p| = 1``."""
    y, x = _grid(s.shape)
    coeffs = rng.normal(size=5)
    poly = coeffs[0] * y + coeffs[1] * x + coeffs[2] * y * y + coeffs[3] * x * x + coeffs[4] * x * y
    poly = poly / max(float(np.abs(poly).max()), 1e-8)
    amplitude = 0.2 + 0.8 * sev
    return _clip(s * (1.0 + amplitude * poly)), {"coeffs": coeffs.round(6).tolist(), "amplitude": amplitude}


def gibbs_keep_fraction(severity: float | np.ndarray) -> float | np.ndarray:
    """The share of each k-space axis the Gibbs artifact keeps at ``severity``: ``0.8 - 0.6 severity``."""
    return 0.8 - 0.6 * severity


def _a_gibbs(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Gibbs ringing: k-space truncated to a centred box keeping :func:`gibbs_keep_fraction` of each axis."""
    keep = gibbs_keep_fraction(sev)
    ky, kx = _freqs(s.shape)
    mask = (np.abs(ky) <= keep / 2.0) & (np.abs(kx) <= keep / 2.0)
    out = np.abs(np.fft.ifft2(np.fft.fft2(s) * mask))
    return _clip(out), {"keep": keep}


def _a_checkerboard(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """GAN checkerboard: a +-amplitude checker pattern of period 2 or 4 (transposed-convolution stride)."""
    stride = int(rng.choice([2, 4]))
    cell = stride // 2
    i = np.arange(s.shape[0])[:, None] // cell
    j = np.arange(s.shape[1])[None, :] // cell
    amplitude = 0.04 + 0.2 * sev
    pattern = np.where((i + j) % 2 == 0, 1.0, -1.0)
    return _clip(s + amplitude * pattern), {"stride": stride, "amplitude": amplitude}


def _a_contrast_inversion(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Local contrast inversion: in a foreground patch, ``x -> a + b - x`` (``a, b``: the patch's min and max)."""
    h, w = s.shape
    cy, cx = _fg_point(s, rng)
    half = max(1, int(round((0.1 + 0.25 * sev) * min(h, w))))
    box = (_box(cy, half, h), _box(cx, half, w))
    out = s.copy()
    patch = out[box]
    a, b = float(patch.min()), float(patch.max())
    out[box] = a + b - patch
    return out, {"center": [cy, cx], "half_size": half, "a": a, "b": b}


def _a_saturation(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Intensity drift/saturation: slice scaled up by ``1.2 + 1.6 severity`` and clipped (the clipping is the point)."""
    gain = 1.2 + 1.6 * sev
    return _clip(s * gain), {"gain": gain}


def _a_blob(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Hallucinated blob: a smooth bright or dark Gaussian centred in the foreground."""
    h, w = s.shape
    cy, cx = _fg_point(s, rng)
    sigma = (0.05 + 0.1 * sev) * min(h, w)
    amplitude = _sign(rng) * (0.15 + 0.5 * sev)
    yy = np.arange(h)[:, None] - cy
    xx = np.arange(w)[None, :] - cx
    blob = amplitude * np.exp(-(yy * yy + xx * xx) / (2.0 * sigma * sigma))
    return _clip(s + blob), {"center": [cy, cx], "sigma": sigma, "amplitude": amplitude}


def _a_shift(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Geometric shift: slice translated by ``1 + 5 severity`` pixels in a random direction, zero-filled."""
    distance = 1.0 + 5.0 * sev
    angle = rng.uniform(0.0, 2.0 * np.pi)
    dy, dx = int(round(distance * np.sin(angle))), int(round(distance * np.cos(angle)))
    if dy == 0 and dx == 0:
        dx = 1
    h, w = s.shape
    out = np.zeros_like(s)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = s[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out, {"dy": dy, "dx": dx}


def _a_intensity_jump(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Through-plane intensity jump: the slice offset by +-(0.05 + 0.3 severity)."""
    offset = _sign(rng) * (0.05 + 0.3 * sev)
    return _clip(s + offset), {"offset": offset}


def _a_border(s: np.ndarray, sev: float, rng: np.random.Generator) -> tuple[np.ndarray, _Params]:
    """Border artifact (crop/pad seam): a band along one image edge brightened by ``0.2 + 0.6 severity``."""
    side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
    h, w = s.shape
    width = 1 + int(round(0.15 * sev * min(h, w)))
    amplitude = 0.2 + 0.6 * sev
    band = [
        (slice(0, width), slice(None)),
        (slice(h - width, h), slice(None)),
        (slice(None), slice(0, width)),
        (slice(None), slice(w - width, w)),
    ][side]
    out = s.copy()
    out[band] += amplitude
    return _clip(out), {"side": ["top", "bottom", "left", "right"][side], "width": width, "amplitude": amplitude}


_IMPLS: dict[str, Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, _Params]]] = {
    "spike": _a_spike,
    "motion": _a_motion,
    "ghosting": _a_ghosting,
    "rician": _a_rician,
    "signal_loss": _a_signal_loss,
    "stripes": _a_stripes,
    "zipper": _a_zipper,
    "dropout": _a_dropout,
    "bias": _a_bias,
    "gibbs": _a_gibbs,
    "checkerboard": _a_checkerboard,
    "contrast_inversion": _a_contrast_inversion,
    "saturation": _a_saturation,
    "blob": _a_blob,
    "shift": _a_shift,
    "intensity_jump": _a_intensity_jump,
    "border": _a_border,
}

ARTIFACT_KINDS: tuple[str, ...] = tuple(_IMPLS)
"""All artifact kinds, acquisition artifacts first, then GAN faults."""


def _checked_severity(severity: float) -> float:
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")
    return severity


def _checked_kind(kind: str) -> str:
    if kind not in _IMPLS:
        raise ValueError(f"unknown artifact kind {kind!r}; known kinds: {', '.join(ARTIFACT_KINDS)}")
    return kind


def _public(kind: str) -> ArtifactFn:
    impl = _IMPLS[kind]

    def artifact(slice2d: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
        s = np.asarray(slice2d, dtype=np.float64)
        if s.ndim != 2:
            raise ValueError(f"artifact {kind!r} needs a 2D slice, got shape {s.shape}")
        return impl(s, _checked_severity(severity), rng)[0].astype(np.float32)

    artifact.__name__ = f"{kind}_artifact"
    artifact.__doc__ = impl.__doc__
    return artifact


ARTIFACTS: dict[str, ArtifactFn] = {kind: _public(kind) for kind in ARTIFACT_KINDS}
"""Kind name -> deterministic function ``(slice2d [H, W], severity in [0, 1], rng) -> float32 slice [H, W]``."""


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


# ------------------------------------------------------------------------------------------------------- functional
def artifact_records(img: Any) -> list[dict[str, Any]]:
    """The artifact records an image carries (``[]`` for a plain array/tensor or an image without any).

    The records are kept in ``img.meta["sgad_artifacts"]`` as a JSON string, not a list: MONAI's collation
    stacks meta values across a batch and fails on lists of different lengths, while strings collate.

    Args:
        img: an image, usually a :class:`~monai.data.MetaTensor` returned by a transform of this module.

    Returns:
        The records, oldest first.
    """
    meta = getattr(img, "meta", None)
    raw = meta.get(ARTIFACTS_META_KEY) if isinstance(meta, Mapping) else None
    if raw is None:
        return []
    return list(json.loads(raw)) if isinstance(raw, str) else list(raw)


def slice_labels(depth: int, records: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None) -> np.ndarray:
    """Per-slice truth from artifact records.

    Args:
        depth: number of slices ``D``.
        records: one record, a list of records, or ``None`` (nothing corrupted).

    Returns:
        float32 array of length ``depth``, 1 at every slice some record corrupted, 0 elsewhere.
    """
    labels = np.zeros(int(depth), dtype=np.float32)
    if records is None:
        return labels
    if isinstance(records, Mapping):
        records = [records]
    for record in records:
        labels[np.asarray(record["slices"], dtype=np.int64)] = 1.0
    return labels


def apply_slice_artifact(
    img: NdarrayOrTensor, kind: str, slices: Sequence[int], severity: float, seed: int
) -> tuple[NdarrayOrTensor, dict[str, Any]]:
    """Corrupt the given slices of ``img`` with one artifact kind, deterministically.

    Slice ``k`` uses ``numpy.random.default_rng([seed, k])``, re-created for every channel, so all channels of a
    slice get the same parameters and the result does not depend on which other slices are corrupted.

    Args:
        img: ``[C, H, W, D]`` intensities in [0, 1], slice axis last (array, tensor or MetaTensor).
        kind: a key of :data:`ARTIFACTS`.
        slices: indices along the last axis (negative indices count from the end; duplicates are ignored).
        severity: strength in [0, 1].
        seed: non-negative integer seed.

    Returns:
        ``(out, record)``: ``out`` float32 of the input's type and device, metadata kept (a MetaTensor gets the
        record appended to ``meta["sgad_artifacts"]`` when metadata tracking is on); ``record`` a dict with keys
        ``kind``, ``slices`` (sorted, non-negative), ``severity``, ``seed`` and ``params`` (one dict per slice).

    Raises:
        ValueError: bad kind, severity, seed, slice index, or an image that is not 4D.
    """
    kind = _checked_kind(kind)
    severity = _checked_severity(severity)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if len(img.shape) != 4:
        raise ValueError(f"slice artifacts need a [C, H, W, D] image, got shape {tuple(img.shape)}")
    depth = int(img.shape[-1])
    chosen: list[int] = []
    for k in slices:
        k = int(k)
        if not -depth <= k < depth:
            raise ValueError(f"slice index {k} out of range for {depth} slices")
        chosen.append(k % depth)
    chosen = sorted(set(chosen))

    tensor = convert_to_tensor(img, track_meta=get_track_meta())
    arr = tensor.detach().cpu().numpy().astype(np.float32, copy=True)  # type: ignore[union-attr]
    impl = _IMPLS[kind]
    params: list[dict[str, Any]] = []
    for k in chosen:
        slice_params: dict[str, Any] = {}
        for c in range(arr.shape[0]):
            rng = np.random.default_rng([seed, k])
            out2d, p = impl(arr[c, :, :, k].astype(np.float64), severity, rng)
            arr[c, :, :, k] = out2d.astype(np.float32)
            if c == 0:
                slice_params = _json_ready(p)
        params.append(slice_params)
    record = {"kind": kind, "slices": chosen, "severity": severity, "seed": seed, "params": params}

    out, *_ = convert_to_dst_type(arr, tensor, dtype=torch.float32)
    if isinstance(out, MetaTensor):
        out.meta = dict(out.meta)  # never share (and mutate) the input's dict
        out.meta[ARTIFACTS_META_KEY] = json.dumps([*artifact_records(tensor), record])
    if isinstance(img, np.ndarray):
        out = out.detach().cpu().numpy()
    return out, record


# --------------------------------------------------------------------------------------------------- array transforms
class SliceArtifact(Transform):
    """Deterministic slice artifact: one kind on given slices with a given severity and seed.

    The deterministic twin of :class:`RandSliceArtifact`: a record's ``kind``, ``slices``, ``severity`` and
    ``seed`` passed here reproduce the random call exactly.

    Args:
        kind: a key of :data:`ARTIFACTS`.
        slices: indices along the last (axial) axis to corrupt.
        severity: strength in [0, 1].
        seed: non-negative integer seed.

    Example:
        >>> img = torch.rand(1, 32, 32, 8)
        >>> out = SliceArtifact("spike", slices=[2, 5], severity=0.5, seed=0)(img)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, kind: str, slices: Sequence[int], severity: float = 0.5, seed: int = 0) -> None:
        self.kind = _checked_kind(kind)
        self.slices = [int(k) for k in slices]
        self.severity = _checked_severity(severity)
        self.seed = int(seed)
        self.last_record: dict[str, Any] | None = None

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Corrupt ``img`` ``[C, H, W, D]``; the record lands in ``self.last_record`` (and ``img.meta``)."""
        out, self.last_record = apply_slice_artifact(img, self.kind, self.slices, self.severity, self.seed)
        return out


class RandSliceArtifact(RandomizableTransform):
    """Random slice artifact: samples a kind, slices, a severity and a seed, then applies :class:`SliceArtifact`.

    Args:
        kinds: kinds to choose from (uniformly); ``None`` means all of :data:`ARTIFACT_KINDS`.
        prob: probability of corrupting anything at all.
        num_slices: ``(min, max)`` number of slices to corrupt (inclusive, capped at the depth), or one int.
        severity: ``(min, max)`` range to draw the severity from (uniform), or one float.

    After each call ``last_record`` holds the record (``None`` when nothing was done) and ``last_labels`` the
    float32 per-slice labels.

    Example:
        >>> t = RandSliceArtifact(kinds=["motion", "blob"], num_slices=(1, 2))
        >>> t.set_random_state(seed=0)
        >>> out = t(torch.rand(1, 32, 32, 8))
        >>> t.last_record["slices"], t.last_labels
    """

    backend = SliceArtifact.backend

    def __init__(
        self,
        kinds: Sequence[str] | str | None = None,
        prob: float = 1.0,
        num_slices: Sequence[int] | int = (1, 3),
        severity: Sequence[float] | float = (0.3, 0.7),
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        kinds = ARTIFACT_KINDS if kinds is None else [kinds] if isinstance(kinds, str) else kinds
        self.kinds = tuple(_checked_kind(k) for k in kinds)
        if not self.kinds:
            raise ValueError("kinds must name at least one artifact kind")
        lo_n, hi_n = (num_slices, num_slices) if isinstance(num_slices, int) else tuple(num_slices)
        if not 1 <= int(lo_n) <= int(hi_n):
            raise ValueError(f"num_slices needs 1 <= min <= max, got {num_slices}")
        self.num_slices = (int(lo_n), int(hi_n))
        lo_s, hi_s = (severity, severity) if isinstance(severity, (int, float)) else tuple(severity)
        lo_s, hi_s = _checked_severity(lo_s), _checked_severity(hi_s)
        if lo_s > hi_s:
            raise ValueError(f"severity range needs min <= max, got {severity}")
        self.severity = (lo_s, hi_s)
        self._params: dict[str, Any] | None = None
        self.last_record: dict[str, Any] | None = None
        self.last_labels: np.ndarray | None = None

    def randomize(self, data: int) -> None:  # type: ignore[override]
        """Draw the parameters for a volume of ``data`` slices (the depth)."""
        super().randomize(None)
        if not self._do_transform:
            self._params = None
            return
        depth = int(data)
        kind = self.kinds[int(self.R.randint(len(self.kinds)))]
        n = min(int(self.R.randint(self.num_slices[0], self.num_slices[1] + 1)), depth)
        slices = sorted(int(k) for k in self.R.choice(depth, size=n, replace=False))
        severity = float(self.R.uniform(*self.severity))
        seed = int(self.R.randint(0, 2**31 - 1))
        self._params = {"kind": kind, "slices": slices, "severity": severity, "seed": seed}

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Corrupt ``img`` ``[C, H, W, D]`` (or, with probability ``1 - prob``, return it as float32 unchanged).

        Args:
            img: intensities in [0, 1], slice axis last.
            randomize: draw new parameters; ``False`` reuses the last ones (on a volume of the same depth).
        """
        depth = int(img.shape[-1])
        if randomize:
            self.randomize(depth)
        if self._params is None:
            self.last_record = None
            self.last_labels = slice_labels(depth, None)
            out = convert_to_tensor(img, dtype=torch.float32, track_meta=get_track_meta())
            return out.numpy() if isinstance(img, np.ndarray) else out  # type: ignore[union-attr]
        out, self.last_record = apply_slice_artifact(img, **self._params)
        self.last_labels = slice_labels(depth, self.last_record)
        return out


# ---------------------------------------------------------------------------------------------- dictionary transforms
def _write_labels(d: dict[Hashable, Any], key: Hashable, postfix: str, labels: np.ndarray) -> None:
    """Write (or OR into an existing) per-slice label array ``d[f"{key}_{postfix}"]``."""
    label_key = f"{key}_{postfix}"
    if label_key in d:
        labels = np.maximum(np.asarray(d[label_key], dtype=np.float32), labels)
    d[label_key] = labels


class SliceArtifactd(MapTransform):
    """Dictionary form of :class:`SliceArtifact`; also writes ``data[f"{key}_{labels_postfix}"]``.

    Args:
        keys: keys of the images to corrupt (all get the same artifact).
        kind: a key of :data:`ARTIFACTS`.
        slices: indices along the last axis.
        severity: strength in [0, 1].
        seed: non-negative integer seed.
        labels_postfix: the label array is stored under ``f"{key}_{labels_postfix}"`` (OR-ed with one there).
        allow_missing_keys: don't raise for missing keys.
    """

    backend = SliceArtifact.backend

    def __init__(
        self,
        keys: KeysCollection,
        kind: str,
        slices: Sequence[int],
        severity: float = 0.5,
        seed: int = 0,
        labels_postfix: str = "slice_labels",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.artifact = SliceArtifact(kind, slices, severity, seed)
        self.labels_postfix = labels_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.artifact(d[key])
            _write_labels(d, key, self.labels_postfix, slice_labels(d[key].shape[-1], self.artifact.last_record))
        return d


class RandSliceArtifactd(RandomizableTransform, MapTransform):
    """Dictionary form of :class:`RandSliceArtifact`; also writes ``data[f"{key}_{labels_postfix}"]``.

    One draw per call, shared by all keys (same kind, slices, severity and seed), so co-registered images stay
    consistent; they must have the same depth. The label array is float32 of length ``D`` with ones exactly at
    the corrupted slices (zeros when nothing was done); an existing one is OR-ed, so stacked artifact
    transforms accumulate their truth.

    Args:
        keys: keys of the images to corrupt.
        kinds: kinds to choose from; ``None`` means all.
        prob: probability of corrupting anything at all.
        num_slices: ``(min, max)`` number of slices to corrupt, or one int.
        severity: ``(min, max)`` severity range, or one float.
        labels_postfix: suffix of the label key.
        allow_missing_keys: don't raise for missing keys.
    """

    backend = RandSliceArtifact.backend

    def __init__(
        self,
        keys: KeysCollection,
        kinds: Sequence[str] | str | None = None,
        prob: float = 1.0,
        num_slices: Sequence[int] | int = (1, 3),
        severity: Sequence[float] | float = (0.3, 0.7),
        labels_postfix: str = "slice_labels",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rand_artifact = RandSliceArtifact(kinds=kinds, prob=1.0, num_slices=num_slices, severity=severity)
        self.labels_postfix = labels_postfix
        self.last_record: dict[str, Any] | None = None

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSliceArtifactd:
        super().set_random_state(seed, state)
        self.rand_artifact.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        self.last_record = None
        first = True
        for key in self.key_iterator(d):
            depth = int(d[key].shape[-1])
            if not self._do_transform:
                d[key] = convert_to_tensor(d[key], dtype=torch.float32, track_meta=get_track_meta())
                _write_labels(d, key, self.labels_postfix, slice_labels(depth, None))
                continue
            d[key] = self.rand_artifact(d[key], randomize=first)
            first = False
            self.last_record = self.rand_artifact.last_record
            _write_labels(d, key, self.labels_postfix, slice_labels(depth, self.last_record))
        return d
