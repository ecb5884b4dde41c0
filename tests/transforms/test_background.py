"""The body mask: background is dark and touches the in-plane border; dark places inside the body are not."""

from __future__ import annotations

import numpy as np

from sgad_med.transforms.background import background_level01, outside_body


def _head(depth: int = 7) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 28), indexing="ij")
    head = (x**2 + y**2 < 0.6).astype(np.float32) * 0.7
    head[(x**2 + y**2) < 0.05] = 0.0  # a dark ventricle inside
    return np.repeat(head[..., None], depth, axis=2)


def test_background_is_outside_the_head_and_the_ventricle_is_not():
    volume = _head()
    rng = np.random.default_rng(0)
    volume += (rng.random(volume.shape) < 0.01) * 0.5  # noise specks in the air
    mask = outside_body(volume, background_level01("MR"))
    assert mask[0, 0, 3] and not mask[16, 14, 3], "corner outside, ventricle inside"
    inside = _head()[..., 0] > 0
    assert not mask[..., 3][inside].any()


def test_a_damaged_slice_does_not_turn_its_body_into_background():
    volume = _head()
    volume[..., 3] = 0.0  # signal loss over a whole slice
    mask = outside_body(volume, background_level01("MR"))
    assert not mask[16, 20, 3], "the head of the dark slice stays body: its neighbours say so"
    assert mask[0, 0, 3]


def test_ct_air_level_is_minus_500_hu():
    assert np.isclose(background_level01("CT") * 4095.0 - 1024.0, -500.0)
