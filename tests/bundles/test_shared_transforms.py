"""The top-level transforms/ fragments: every bundle takes its scan normalization from one file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sgad_med
from sgad_med.bundles import BundleError, shared_transform
from sgad_med.detector import SliceAnomalyDetector
from sgad_med.errors import SGADError
from sgad_med.evaluation.heldout import check_protocol_normalization
from sgad_med.harmonizer import Harmonizer
from sgad_med.pipeline import SGADPipeline
from sgad_med.restorer import SliceRestorer
from sgad_med.transforms import ScanNormalize
from tests.bundles.conftest import BUNDLES
from tests.conftest import REPO, smooth_volume
from tests.tiny_bundles import make_tiny_bundles

FRAGMENT = REPO / "transforms" / "scan_normalization.json"
SHARED = "$sgad_med.bundles.shared_transform(@bundle_root, 'scan_normalization', 'normalizer')"
# the classes that normalize scans and so must be handed the shared normalizer when a config builds them
NORMALIZING = {"sgad_med.harmonizer.Harmonizer", "sgad_med.restorer.SliceRestorer",
               "sgad_med.detector.SliceAnomalyDetector", "sgad_med.data.slices.HarmonizationSlices",
               "sgad_med.data.slices.ScanSlices", "sgad_med.data.corrupted.CorruptedSlices",
               "sgad_med.data.slice_runs.SliceRunVolumes"}
RUNNERS = {"style_harmonization": Harmonizer, "slice_anomaly_detection": SliceAnomalyDetector,
           "slice_restoration": SliceRestorer}


def _dicts(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


def _fragment_settings(path: Path = FRAGMENT) -> dict:
    fragment = json.loads(path.read_text())
    lower, upper = fragment["mr_percentiles"]
    return {"window": fragment["ct_window"], "lower": lower, "upper": upper, "nonzero": fragment["mr_nonzero"]}


@pytest.mark.parametrize("config", sorted(BUNDLES.glob("*/configs/*.json")), ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_no_bundle_config_defines_its_own_normalization(config):
    content = json.loads(config.read_text())
    if "normalizer" in content:
        assert content["normalizer"] == SHARED
    for node in _dicts(content):
        target = str(node.get("_target_", ""))
        assert "Normalize" not in target, f"{config} builds its own {target}"
        if target in NORMALIZING:
            assert node.get("normalizer") == "@normalizer", f"{config}: {target} not given the shared normalizer"


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_each_bundle_normalizes_as_the_shared_fragment_says(name):
    normalizer = shared_transform(BUNDLES / name, "scan_normalization", "normalizer")
    assert isinstance(normalizer, ScanNormalize)
    assert normalizer.settings == _fragment_settings()
    # the shipped fragment is what the evaluation protocols assume
    assert normalizer.settings == ScanNormalize().settings


def _repo_copy_with_tiny_bundles(root: Path, ct_window: list[float]) -> Path:
    """``root/transforms`` (the fragment with another CT window) and ``root/bundles`` (tiny bundles using it)."""
    (root / "transforms").mkdir(parents=True)
    fragment = json.loads(FRAGMENT.read_text())
    fragment["ct_window"] = ct_window
    (root / "transforms" / FRAGMENT.name).write_text(json.dumps(fragment))
    bundles = make_tiny_bundles(root / "bundles")
    for name in RUNNERS:
        config_file = bundles / name / "configs" / "inference.json"
        config = {"imports": ["$import sgad_med"], **json.loads(config_file.read_text()), "normalizer": SHARED}
        config_file.write_text(json.dumps(config))
    return bundles


def _ct_scan() -> sgad_med.Scan:
    data = smooth_volume(shape=(24, 20, 7), low=-300.0, high=900.0)
    return sgad_med.Scan(image=sgad_med.io.scan.MetaTensor(torch.as_tensor(data)[None]), scan_id="ct", modality="CT")


def test_editing_the_fragment_changes_every_bundle_and_mixed_normalizations_are_refused(tmp_path):
    bundles = _repo_copy_with_tiny_bundles(tmp_path, [-200.0, 400.0])
    scan = _ct_scan()
    for name, runner in RUNNERS.items():
        loaded = runner.from_bundle(bundles / name, device="cpu")
        assert loaded.normalizer.settings["window"] == [-200.0, 400.0]
        volume01, params = loaded.normalize_scan(scan)
        assert (params.lo, params.hi) == (-200.0, 400.0)
        expected = ((scan.image[0] + 200.0) / 600.0).clamp(0.0, 1.0)
        assert torch.allclose(volume01, expected, atol=1e-6)

    pipeline = SGADPipeline.from_bundles(bundles, device="cpu")
    result = pipeline(scan)
    assert result.settings["normalization"]["window"] == [-200.0, 400.0]
    assert (result.settings["normalization"]["lo"], result.settings["normalization"]["hi"]) == (-200.0, 400.0)

    # a harmonizer normalizing with the defaults does not fit a detector and restorer that do not
    with pytest.raises(SGADError, match="normalizes scans differently"):
        SGADPipeline(Harmonizer(pipeline.harmonizer.network, device="cpu"), pipeline.detector, pipeline.restorer,
                     device="cpu")
    # and the evaluation protocols (cases normalized with the defaults) refuse to score the edited ones
    with pytest.raises(SGADError, match="evaluation protocol"):
        check_protocol_normalization(pipeline.detector)
    check_protocol_normalization(Harmonizer(pipeline.harmonizer.network, device="cpu"))


def test_a_missing_fragment_or_key_is_a_clear_error(tmp_path):
    bundle = tmp_path / "bundles" / "some_bundle"
    bundle.mkdir(parents=True)
    with pytest.raises(BundleError, match="no_such_fragment.json.*shared transform fragment not found"):
        shared_transform(bundle, "no_such_fragment", "normalizer")
    (tmp_path / "transforms").mkdir()
    shutil.copy(FRAGMENT, tmp_path / "transforms" / FRAGMENT.name)
    with pytest.raises(BundleError, match="has no 'no_such_key'"):
        shared_transform(bundle, "scan_normalization", "no_such_key")
    # a bundle folder copied away from the repository finds the checkout's fragment
    lone = tmp_path / "elsewhere" / "bundles" / "lone_bundle"
    lone.mkdir(parents=True)
    assert shared_transform(lone, "scan_normalization", "normalizer").settings == ScanNormalize().settings
