"""Training data: the MNI tissue template and the synthetic anatomy/style generator built on it."""

from __future__ import annotations

from sgad_med.data.mni import MNI_DIR_ENV, MNI_FILES, MNITemplate, find_mni_dir, load_mni_template
from sgad_med.data.synthetic import (
    FAMILIES,
    HELDOUT_ANATOMY_SEEDS,
    HELDOUT_GM_WM_CONTRAST,
    REFERENCE_STYLE,
    SPLITS,
    TISSUES,
    TRAIN_ANATOMY_SEEDS,
    TRAIN_MIN_GM_WM_CONTRAST,
    VALIDATION_GM_WM_CONTRAST,
    VALIDATION_LOW_GM_WM_CONTRAST,
    Anatomy,
    Style,
    SyntheticPairDataset,
    SyntheticStyleGenerator,
    render,
    sample_anatomy,
    sample_style,
    style_split,
)

__all__ = [
    "FAMILIES",
    "HELDOUT_ANATOMY_SEEDS",
    "HELDOUT_GM_WM_CONTRAST",
    "MNI_DIR_ENV",
    "MNI_FILES",
    "REFERENCE_STYLE",
    "SPLITS",
    "TISSUES",
    "TRAIN_ANATOMY_SEEDS",
    "TRAIN_MIN_GM_WM_CONTRAST",
    "VALIDATION_GM_WM_CONTRAST",
    "VALIDATION_LOW_GM_WM_CONTRAST",
    "Anatomy",
    "MNITemplate",
    "Style",
    "SyntheticPairDataset",
    "SyntheticStyleGenerator",
    "find_mni_dir",
    "load_mni_template",
    "render",
    "sample_anatomy",
    "sample_style",
    "style_split",
]
