"""Every bundle's metadata.json passes MONAI's ``verify_metadata`` against the vendored schema (no download)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.bundles.conftest import BUNDLES

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the [test] extra) runs MONAI's verify_metadata")
from monai.bundle import verify_metadata  # noqa: E402

SCHEMA = BUNDLES / "metadata_schema.json"
METADATA = sorted(BUNDLES.glob("*/configs/metadata.json"))


def test_all_four_bundles_have_metadata():
    assert {p.parents[1].name for p in METADATA} == {
        "style_harmonization",
        "slice_anomaly_detection",
        "slice_restoration",
        "sgad_pipeline",
    }


@pytest.mark.parametrize("metadata", METADATA, ids=lambda p: p.parents[1].name)
def test_metadata_passes_the_schema(metadata):
    # an existing --filepath is used as is: MONAI's download_url skips the download
    verify_metadata(meta_file=str(metadata), filepath=str(SCHEMA))


@pytest.mark.parametrize(
    "breakage",
    [
        ("drop value_range", lambda m: m["network_data_format"]["outputs"]["pred"].pop("value_range")),
        (
            "probabilities as logits",
            lambda m: m["network_data_format"]["outputs"]["pred"].update(type="probabilities", format="logits"),
        ),
        ("drop version", lambda m: m.pop("version")),
        ("value_range of one number", lambda m: m["network_data_format"]["inputs"]["image"].update(value_range=[0])),
    ],
    ids=lambda b: b[0],
)
def test_schema_refuses_broken_metadata(tmp_path, breakage):
    metadata = copy.deepcopy(json.loads(METADATA[0].read_text()))
    breakage[1](metadata)
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA))


def test_schema_file_is_what_the_docs_point_at():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "verify_metadata" in readme and "bundles/metadata_schema.json" in readme
