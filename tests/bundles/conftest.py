"""Tiny overrides so that every bundle config runs in seconds: small networks, few small slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

BUNDLES = REPO / "bundles"
HARMONIZATION = BUNDLES / "style_harmonization"


def tiny_harmonization_overrides(tmp_path: Path) -> dict:
    return {
        "bundle_root": str(HARMONIZATION),
        "features": [4, 4, 8, 8, 16, 4],
        "disc_channels": 4,
        "spacing": 8.0,
        "train_anatomies": "$range(0, 2)",
        "val_anatomies": "$range(900, 901)",
        "styles_per_anatomy": 1,
        "slices_per_volume": 2,
        "volumes_per_batch": 1,
        "max_epochs": 1,
        "amp": False,
        "output_dir": str(tmp_path / "train_output"),
        "ckpt_dir": str(tmp_path / "models"),
    }


@pytest.fixture
def tiny_harmonization(tmp_path: Path) -> dict:
    return tiny_harmonization_overrides(tmp_path)
