"""MONAI transforms of sgad_med (array forms and dictionary ``d`` forms)."""

from __future__ import annotations

from sgad_med.transforms.intensity import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MR_PERCENTILES,
    CTWindowNormalize,
    CTWindowNormalized,
    MRPercentileNormalize,
    MRPercentileNormalized,
    NormalizationKind,
    NormalizationParams,
    ScanNormalize,
    ScanNormalized,
    denormalize,
    find_normalization_params,
    modality_kind,
    mr_percentile_range,
    normalize,
    normalize_range,
    quantization_step,
    roundtrip_tolerance,
)

__all__ = [
    "DEFAULT_CT_WINDOW",
    "DEFAULT_MR_PERCENTILES",
    "NormalizationKind",
    "NormalizationParams",
    "CTWindowNormalize",
    "CTWindowNormalized",
    "MRPercentileNormalize",
    "MRPercentileNormalized",
    "ScanNormalize",
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

from sgad_med.transforms.artifacts import (  # noqa: E402
    ARTIFACT_KINDS,
    ARTIFACTS,
    ARTIFACTS_META_KEY,
    RandSliceArtifact,
    RandSliceArtifactd,
    SliceArtifact,
    SliceArtifactd,
    apply_slice_artifact,
    artifact_records,
    slice_labels,
)

__all__ += [
    "ARTIFACTS",
    "ARTIFACT_KINDS",
    "ARTIFACTS_META_KEY",
    "apply_slice_artifact",
    "artifact_records",
    "slice_labels",
    "SliceArtifact",
    "SliceArtifactd",
    "RandSliceArtifact",
    "RandSliceArtifactd",
]
