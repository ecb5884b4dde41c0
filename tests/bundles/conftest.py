"""Tiny overrides so that every bundle config runs in seconds: small networks, few small slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

BUNDLES = REPO / "bundles"
HARMONIZATION = BUNDLES / "style_harmonization"


def tiny_training_overrides(bundle: Path, tmp_path: Path, **extra) -> dict:
    """What every bundle's train.json needs to run in seconds (8 mm volumes, a slice or two, one epoch), into
    ``tmp_path``; ``extra`` adds the bundle's own (its tiny network, its other anatomy ranges)."""
    return {
        "bundle_root": str(bundle),
        "spacing": 8.0,
        "train_anatomies": "$range(0, 2)",
        "val_anatomies": "$range(900, 901)",
        "styles_per_anatomy": 1,
        "slices_per_volume": 2,
        "volumes_per_batch": 1,
        "max_epochs": 1,
        "output_dir": str(tmp_path / "train_output"),
        "ckpt_dir": str(tmp_path / "models"),
        **extra,
    }


def tiny_harmonization_overrides(tmp_path: Path) -> dict:
    return tiny_training_overrides(HARMONIZATION, tmp_path, features=[4, 4, 8, 8, 16, 4], disc_channels=4,
                                   amp=False)


@pytest.fixture
def tiny_harmonization(tmp_path: Path) -> dict:
    return tiny_harmonization_overrides(tmp_path)
