"""SGADPipeline: the flow of one scan, with stub components whose behaviour is known, and with tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sgad_med
from sgad_med.errors import SGADError
from sgad_med.pipeline import CAUSES, Result, SGADPipeline
from tests.conftest import oblique_affine, smooth_volume
from tests.tiny_bundles import make_tiny_bundles, tiny_components

INPUT_DAMAGED, GAN_DAMAGED = 2, 6


class StubHarmonizer:
    """Harmonization that darkens every slice a little and wrecks one (as a faulty GAN would)."""

    def __init__(self, damage: int | None = GAN_DAMAGED) -> None:
        self.damage, self.batch_size, self.progress, self.device = damage, 4, False, torch.device("cpu")

    def harmonize01(self, volume01: torch.Tensor) -> torch.Tensor:
        out = volume01 * 0.9
        if self.damage is not None:
            out[..., self.damage] = 1.0  # saturated slice: the stub detector's idea of an anomaly
        return out


class StubDetector:
    """Score of a slice: the fraction of its voxels at the top of the range (1.0)."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold, self.batch_size, self.progress, self.device = threshold, 4, False, torch.device("cpu")

    def score01(self, volume01: torch.Tensor, harmonized: bool = False) -> np.ndarray:
        return (torch.as_tensor(volume01) >= 1.0).float().mean(dim=(0, 1)).numpy()


class StubRestorer:
    """Restores a slice as the mean of its two neighbours."""

    def __init__(self) -> None:
        self.batch_size, self.progress, self.device = 4, False, torch.device("cpu")
        self.calls: list[list[int]] = []

    def restore01(self, volume01: torch.Tensor, slices) -> torch.Tensor:
        self.calls.append([int(k) for k in slices])
        out = volume01.clone()
        depth = volume01.shape[-1]
        for k in slices:
            out[..., k] = 0.5 * (volume01[..., max(k - 1, 0)] + volume01[..., min(k + 1, depth - 1)])
        return out


class Painter(StubHarmonizer):
    """A harmonizer that paints a bright square of ``value`` into slice GAN_DAMAGED (a structure the input lacks)."""

    def __init__(self, value: float) -> None:
        super().__init__(damage=None)
        self.value = value

    def harmonize01(self, volume01: torch.Tensor) -> torch.Tensor:
        out = volume01 * 0.9
        out[5:12, 5:12, GAN_DAMAGED] = self.value
        return out


@pytest.fixture
def clean_scan(damaged_scan) -> sgad_med.Scan:
    """The damaged scan with its damaged slice replaced by its neighbour: nothing arrived damaged."""
    data = damaged_scan.image.numpy().copy()
    data[..., INPUT_DAMAGED] = data[..., INPUT_DAMAGED - 1]
    return damaged_scan.with_image(torch.as_tensor(data))


@pytest.fixture
def damaged_scan() -> sgad_med.Scan:
    """An MR-like scan whose slice INPUT_DAMAGED arrived saturated (all voxels far above the rest)."""
    data = smooth_volume(shape=(24, 20, 9), low=100.0, high=900.0)
    data[..., INPUT_DAMAGED] = 5000.0
    image = sgad_med.io.scan.MetaTensor(torch.as_tensor(data)[None], affine=torch.as_tensor(oblique_affine()))
    return sgad_med.Scan(image=image, scan_id="damaged", modality="MR")


def _stub_pipeline(**options) -> SGADPipeline:
    return SGADPipeline(StubHarmonizer(), StubDetector(), StubRestorer(), device=None, **options)


def test_result_fields_flags_causes_and_only_flagged_slices_restored(damaged_scan):
    # the smooth test volume has no body, so its dark corners would count as background: off for exact checks
    result = _stub_pipeline(keep_background=False)(damaged_scan)
    assert isinstance(result, Result)
    depth = damaged_scan.shape[-1]
    for name in ("input_scores", "harmonized_scores", "scores", "flagged", "restored"):
        assert getattr(result, name).shape == (depth,), name
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert np.array_equal(result.scores, np.maximum(result.input_scores, result.harmonized_scores))
    assert result.flagged_slices == [INPUT_DAMAGED, GAN_DAMAGED]
    # the slice the GAN damaged takes the safe fallback instead of restoration from harmonized neighbours
    assert result.restored.tolist() == [k == INPUT_DAMAGED for k in range(depth)]
    assert result.fallback.tolist() == [k == GAN_DAMAGED for k in range(depth)]
    assert result.fallback_scope == "slices"
    assert set(result.cause) <= set(CAUSES)
    # Arrived damaged (the stub harmonizer dims it below saturation, so only the input score flags it).
    assert result.cause[INPUT_DAMAGED] == "input"
    # Normal in the input, anomalous after harmonization: the GAN did it.
    assert result.cause[GAN_DAMAGED] == "harmonization"
    assert all(c == "" for k, c in enumerate(result.cause) if k not in (INPUT_DAMAGED, GAN_DAMAGED))
    assert result.threshold == 0.5
    assert {"normalize", "harmonize", "detect", "restore", "denormalize", "total"} <= set(result.timings)

    # Geometry and units of the input; unflagged slices exactly as harmonized, flagged ones restored.
    for scan in (result.harmonized, result.corrected):
        assert scan.shape == damaged_scan.shape and np.allclose(scan.affine, damaged_scan.affine)
    harmonized, corrected = result.harmonized.image.numpy(), result.corrected.image.numpy()
    unflagged = ~result.flagged
    assert np.array_equal(corrected[..., unflagged], harmonized[..., unflagged])
    assert not np.allclose(corrected[..., GAN_DAMAGED], harmonized[..., GAN_DAMAGED])
    # the fallback is the input slice through the scan's input -> harmonized table (here: x 0.9, in [0, 1] units)
    original = damaged_scan.image.numpy()
    fallback_slice = corrected[..., GAN_DAMAGED].ravel()
    with_input = np.corrcoef(fallback_slice, original[..., GAN_DAMAGED].ravel())[0, 1]
    neighbours = 0.5 * (harmonized[..., GAN_DAMAGED - 1] + harmonized[..., GAN_DAMAGED + 1]).ravel()
    assert with_input > 0.99 and with_input > np.corrcoef(fallback_slice, neighbours)[0, 1]
    expected = 0.5 * (harmonized[..., INPUT_DAMAGED - 1] + harmonized[..., INPUT_DAMAGED + 1])
    assert np.allclose(corrected[..., INPUT_DAMAGED], expected, rtol=1e-4, atol=1e-2)
    assert result.settings["harmonize"] is True and result.settings["restore_policy"] == "flagged"


def test_restorer_works_on_the_harmonized_volume_and_only_on_flagged_slices(damaged_scan):
    pipeline = _stub_pipeline()
    pipeline(damaged_scan)
    assert pipeline.restorer.calls == [[INPUT_DAMAGED]]
    unsafe = _stub_pipeline(fallback=False, keep_background=False)  # exact values: see the first test
    result = unsafe(damaged_scan)
    assert unsafe.restorer.calls == [[INPUT_DAMAGED, GAN_DAMAGED]] and not result.fallback.any()
    harmonized = result.harmonized.image.numpy()
    expected = 0.5 * (harmonized[..., GAN_DAMAGED - 1] + harmonized[..., GAN_DAMAGED + 1])
    assert np.allclose(result.corrected.image.numpy()[..., GAN_DAMAGED], expected, rtol=1e-4, atol=1e-2)


class WreckingHarmonizer(StubHarmonizer):
    """A harmonizer that damages most slices of the scan, each in its own way (saturation and invented blobs)."""

    def harmonize01(self, volume01: torch.Tensor) -> torch.Tensor:
        out = volume01 * 0.9
        out[..., 1:] = 1.0
        return out


def test_a_scan_the_harmonizer_wrecked_falls_back_to_the_input_bit_for_bit(clean_scan):
    scan = clean_scan
    data = scan.image.numpy()
    pipeline = SGADPipeline(WreckingHarmonizer(), StubDetector(), StubRestorer(), device=None, keep_background=False)
    result = pipeline(scan)
    assert result.fallback_scope == "scan" and result.fallback.all() and not result.restored.any()
    assert pipeline.restorer.calls == []
    assert np.array_equal(result.corrected.image.numpy(), scan.image.numpy())
    wrecked = result.harmonized.image.numpy()[..., 1:]
    assert np.ptp(wrecked) < 1e-3 < np.ptp(data[..., 1:])  # harmonized.nii.gz still shows the damage


def test_fallback_keeps_the_input_anatomy_where_the_harmonizer_invented_some(clean_scan):
    """A harmonizer paints a bright square into one slice: the corrected slice has the input's edges only."""
    result = SGADPipeline(Painter(1.0), StubDetector(threshold=0.08), StubRestorer(), device=None)(clean_scan)
    assert result.cause[GAN_DAMAGED] == "harmonization" and result.fallback[GAN_DAMAGED]
    corrected, original = result.corrected.image.numpy()[0], clean_scan.image.numpy()[0]
    gradient = [np.hypot(*np.gradient(v[..., GAN_DAMAGED])) for v in (corrected, original)]
    assert np.corrcoef(gradient[0].ravel(), gradient[1].ravel())[0, 1] > 0.99


def test_no_harmonize_detects_and_restores_the_input(damaged_scan):
    pipeline = SGADPipeline(None, StubDetector(), StubRestorer(), harmonize=False, device=None)
    result = pipeline(damaged_scan)
    assert result.harmonized is None and result.harmonized_scores is None
    assert result.flagged_slices == [INPUT_DAMAGED]
    assert result.cause[INPUT_DAMAGED] == "input"
    original, corrected = damaged_scan.image.numpy(), result.corrected.image.numpy()
    keep = ~result.flagged
    assert np.array_equal(corrected[..., keep], original[..., keep])  # bit for bit, clipped voxels included
    assert corrected[..., INPUT_DAMAGED].max() < 1000.0


def test_threshold_override_and_restore_policy_none(damaged_scan):
    result = _stub_pipeline(threshold=0.0)(damaged_scan)
    assert result.flagged.all() and result.threshold == 0.0
    assert result.settings["threshold_source"] == "override"

    result = _stub_pipeline(restore_policy="none")(damaged_scan)
    assert result.flagged_slices == [INPUT_DAMAGED, GAN_DAMAGED] and not result.restored.any()
    assert np.array_equal(result.corrected.image.numpy(), result.harmonized.image.numpy())


def test_bad_options_are_clear_errors():
    with pytest.raises(SGADError, match="threshold"):
        _stub_pipeline(threshold=1.5)
    with pytest.raises(SGADError, match="restore policy"):
        _stub_pipeline(restore_policy="everything")
    with pytest.raises(SGADError, match="harmonizer"):
        SGADPipeline(None, StubDetector(), StubRestorer())


def test_tiny_networks_run_end_to_end_on_a_nifti_scan(nifti_file):
    harmonizer, detector, restorer = tiny_components()
    pipeline = SGADPipeline(harmonizer, detector, restorer, threshold=0.0, device="cpu", batch_size=4)
    result = pipeline(nifti_file[0])  # a path is loaded first
    scan = result.scan
    assert "load" in result.timings and result.flagged.all() and result.restored.all()
    assert result.corrected.shape == scan.shape == (24, 20, 9)
    assert np.isfinite(result.corrected.image.numpy()).all()
    assert all(c.batch_size == 4 for c in (harmonizer, detector, restorer))


def test_from_bundles_loads_the_three_bundles_and_names_a_missing_one(tmp_path):
    bundles = make_tiny_bundles(tmp_path / "bundles")
    pipeline = SGADPipeline.from_bundles(bundles, device="cpu", threshold=0.3)
    assert pipeline.threshold == 0.3 and pipeline.harmonizer is not None
    only_detect = SGADPipeline.from_bundles(bundles, device="cpu", harmonize=False, restore_policy="none")
    assert only_detect.harmonizer is None and only_detect.restorer is None
    with pytest.raises(SGADError, match="not found"):
        SGADPipeline.from_bundles(tmp_path / "nowhere")
    (bundles / "slice_restoration" / "models" / "model.pt").unlink()
    with pytest.raises(SGADError, match="model.pt"):
        SGADPipeline.from_bundles(bundles, device="cpu")


def test_a_slice_damaged_before_and_after_harmonization_has_cause_both(damaged_scan):
    pipeline = SGADPipeline(StubHarmonizer(damage=INPUT_DAMAGED), StubDetector(), StubRestorer(), device=None)
    result = pipeline(damaged_scan)
    assert result.flagged_slices == [INPUT_DAMAGED] and result.cause[INPUT_DAMAGED] == "both"


def test_the_structure_check_catches_a_painted_slice_the_detector_missed(clean_scan):
    """Opt-in (min_structure): a structure no scan-wide intensity mapping explains sends the slice to the
    fallback even when the detector scores it clean; off by default, the slice stays as harmonized."""
    scan = clean_scan
    checked = SGADPipeline(Painter(0.95), StubDetector(threshold=0.99), StubRestorer(), device=None, min_structure=0.8)
    result = checked(scan)
    assert not result.flagged.any() and result.fallback.tolist() == [k == GAN_DAMAGED for k in range(9)]
    assert result.structure[GAN_DAMAGED] < 0.8 < np.nanmin(np.delete(result.structure, GAN_DAMAGED))
    default = SGADPipeline(Painter(0.95), StubDetector(threshold=0.99), StubRestorer(), device=None)(scan)
    assert not default.fallback.any()
    assert np.array_equal(default.corrected.image.numpy(), default.harmonized.image.numpy())


def test_the_structure_check_is_off_by_default_even_for_slices_whose_edges_anticorrelate(damaged_scan):
    """Gradient correlations can be negative: 'off' (min_structure 0) must not mean 'below 0 falls back'."""

    class Inverter(StubHarmonizer):
        def harmonize01(self, volume01):
            out = volume01 * 0.9
            out[..., GAN_DAMAGED] = torch.flip(out[..., GAN_DAMAGED], dims=(0, 1))  # edges moved elsewhere
            return out

    result = SGADPipeline(Inverter(), StubDetector(threshold=0.99), StubRestorer(), device=None)(damaged_scan)
    assert result.structure is None and not result.fallback.any() and result.fallback_scope == "none"


@pytest.mark.parametrize(("plane", "axis"), [("sagittal", 0), ("coronal", 1)])
def test_damage_to_one_slice_of_a_sagittal_or_coronal_series_is_flagged_on_that_slice(tmp_path, plane, axis):
    from sgad_med.io.dicom_write import write_new_series
    from tests.io.test_slice_axis import PLANE_AFFINES

    volume = smooth_volume(shape=(24, 20, 9), low=100.0, high=900.0)
    volume[:, :, 5] = 5000.0  # the fifth acquired slice arrived saturated
    write_new_series(volume, PLANE_AFFINES[plane](3.0), tmp_path / plane, modality="MR")
    scan = sgad_med.load_scan(tmp_path / plane)
    result = _stub_pipeline(harmonize=False)(scan)
    assert result.slice_axis.index == axis and result.slice_axis.plane == plane
    assert len(result.scores) == 9 and result.flagged_slices == [5]  # that slice, in the acquired plane
    corrected, original = result.corrected.image.numpy()[0], scan.image.numpy()[0]
    assert np.array_equal(np.delete(corrected, 5, axis=axis), np.delete(original, 5, axis=axis))
    expected = 0.5 * (original.take(4, axis=axis) + original.take(6, axis=axis))
    assert np.allclose(corrected.take(5, axis=axis), expected, rtol=1e-4, atol=0.5)


def test_background_is_kept_bit_for_bit_in_both_outputs():
    """A head in zero background: the harmonizer raises the floor (as the shipped one did, 0 -> 64)."""
    x, y = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 20), indexing="ij")
    head = np.where(x**2 + y**2 < 0.5, smooth_volume(shape=(24, 20, 9), low=200.0, high=900.0)[..., 0], 0.0)
    data = np.repeat(head[..., None], 9, axis=2).astype(np.float32)
    scan = sgad_med.Scan(image=sgad_med.io.scan.MetaTensor(torch.as_tensor(data)[None], affine=torch.eye(4)),
                         scan_id="head", modality="MR")

    class FloorRaiser(StubHarmonizer):
        def harmonize01(self, volume01):
            return volume01 * 0.8 + 0.1

    result = SGADPipeline(FloorRaiser(), StubDetector(), StubRestorer(), device=None)(scan)
    outside = data == 0
    for volume in (result.harmonized, result.corrected):
        assert np.array_equal(volume.image.numpy()[0][outside], data[outside])
    assert not np.array_equal(result.harmonized.image.numpy()[0][~(data == 0)], data[~(data == 0)])
    assert result.background is not None and result.background[0, 0, 0] and not result.background[12, 10, 4]
    off = SGADPipeline(FloorRaiser(), StubDetector(), StubRestorer(), device=None, keep_background=False)(scan)
    assert (off.harmonized.image.numpy()[0][outside] > 0).all(), "without it, the floor is raised"
