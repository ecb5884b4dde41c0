"""Per-slice statistics against the neighbouring slices: shared by the classical baseline and the detector."""

from __future__ import annotations

import numpy as np
import pytest

from sgad_med.evaluation.detection import validation_volumes
from sgad_med.transforms.artifacts import apply_slice_artifact
from sgad_med.transforms.slice_statistics import (
    BASELINE_FEATURES,
    TEXTURE_FEATURES,
    classical_slice_scores,
    robust_neighbour_z,
    slice_features,
    texture_slice_scores,
)
from tests.conftest import SAMPLE_DATA


@pytest.fixture(scope="module")
def volume() -> dict:
    """A clean synthetic scan at 8 mm (seconds, not minutes), with its head slices."""
    return validation_volumes(range(900, 901), spacing=8.0, mni_dir=SAMPLE_DATA / "mni")[0]


def test_robust_neighbour_z_singles_out_an_outlier():
    values = 1.0 + 0.01 * np.sin(np.arange(30))
    values[12] += 1.0
    z = robust_neighbour_z(values, window=4)
    assert np.argmax(np.abs(z)) == 12
    assert abs(z[12]) > 10 * np.abs(np.delete(z, 12)).max()


@pytest.mark.parametrize("kind", ["rician", "spike", "intensity_jump"])
def test_baseline_scores_an_obviously_corrupted_slice_above_its_clean_neighbours(volume, kind):
    volume, head = volume["volume"], volume["head"]
    k = int(np.flatnonzero(head)[len(np.flatnonzero(head)) // 2])
    corrupted, _ = apply_slice_artifact(volume[None], kind, [k], 0.75, seed=3)
    scores = classical_slice_scores(np.asarray(corrupted)[0])
    assert scores.shape == (volume.shape[-1],)
    neighbours = scores[k - 3:k + 4][np.arange(7) != 3]
    assert scores[k] > 2 * neighbours.max()
    assert slice_features(volume).shape == (volume.shape[-1], len(BASELINE_FEATURES))


def test_texture_scores_see_ringing_and_ignore_an_intensity_jump(volume):
    """The detector's neighbour score: Gibbs ringing stands out in texture; a slice-wide brightness jump, which
    the full baseline flags, moves the texture statistics much less (the network finds those kinds itself)."""
    volume, head = volume["volume"], volume["head"]
    k = int(np.flatnonzero(head)[len(np.flatnonzero(head)) // 2])
    neighbours = np.r_[k - 3:k, k + 1:k + 4]
    ringing = np.asarray(apply_slice_artifact(volume[None], "gibbs", [k], 0.75, seed=3)[0])[0]
    texture = texture_slice_scores(ringing)
    assert texture[k] > 2 * texture[neighbours].max()
    np.testing.assert_array_equal(texture, classical_slice_scores(ringing, features=TEXTURE_FEATURES))

    jump = np.clip(volume.copy(), 0, 1)
    jump[..., k] = np.clip(jump[..., k] * 1.15, 0, 1)
    full, texture = classical_slice_scores(jump), texture_slice_scores(jump)
    assert full[k] > 2 * full[neighbours].max()
    assert texture[k] < full[k] / 2
    assert (classical_slice_scores(volume) >= texture_slice_scores(volume) - 1e-12).all(), "a max over a subset"


def test_unknown_statistics_are_refused(volume):
    with pytest.raises(ValueError, match="subset"):
        classical_slice_scores(volume["volume"], features=("noise", "loudness"))
    with pytest.raises(ValueError, match="subset"):
        classical_slice_scores(volume["volume"], features=())


def test_the_baseline_and_the_detector_share_one_implementation():
    import sgad_med.detector
    import sgad_med.evaluation.detection
    import sgad_med.transforms.slice_statistics

    module = sgad_med.transforms.slice_statistics
    assert sgad_med.evaluation.detection.classical_slice_scores is module.classical_slice_scores
    assert sgad_med.detector.texture_slice_scores is module.texture_slice_scores
