from __future__ import annotations

import numpy as np
import torch

from sgad_med.transforms.slices import foreground_slices


def test_foreground_slices_are_those_with_enough_anatomy():
    volume = np.zeros((20, 10, 4), dtype=np.float32)
    volume[:, :, 1] = 0.5  # full slice
    volume[:2, :, 2] = 0.5  # 10 % of the slice
    volume[:1, :, 3] = 0.5  # 5 %
    volume[:, :, 0] = 0.04  # everywhere, but below the foreground level
    np.testing.assert_array_equal(foreground_slices(volume), [False, True, True, False])
    np.testing.assert_array_equal(foreground_slices(torch.as_tensor(volume), min_fraction=0.05),
                                  [False, True, True, True])
    np.testing.assert_array_equal(foreground_slices(volume, threshold=0.01), [True, True, True, False])
