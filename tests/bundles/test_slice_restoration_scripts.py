"""The slice_restoration bundle's analysis scripts (validate.py, probe_inputs.py, gibbs_sr_probe.py): pure parts."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from sgad_med.transforms.artifacts import ARTIFACTS, gibbs_keep_fraction
from tests.bundles.conftest import BUNDLES

SCRIPTS = BUNDLES / "slice_restoration" / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slice() -> np.ndarray:
    """A smooth test slice in [0.25, 0.75], so that a moderate spike is not clipped."""
    yy, xx = np.mgrid[:48, :40]
    return 0.25 + 0.3 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 300.0) + 0.2 * (np.abs(xx - 20) < 12)


def test_kspace_fusion_takes_a_spike_from_the_neighbours():
    probe, clean = _script("probe_inputs"), _slice()
    spiked = ARTIFACTS["spike"](clean, 0.5, np.random.default_rng(0))
    assert np.abs(spiked - clean).max() > 0.15
    np.testing.assert_allclose(probe.kspace_fusion(spiked, clean, 2.0), clean, atol=1e-6)


def test_intensity_matched_undoes_a_scaling_and_fills_clipped_pixels():
    probe, clean = _script("probe_inputs"), _slice()
    np.testing.assert_allclose(probe.intensity_matched(0.5 * clean, clean), clean, atol=1e-9)
    saturated = np.minimum(2.0 * clean, 1.0)
    np.testing.assert_allclose(probe.intensity_matched(saturated, clean), clean, atol=1e-9)


def test_repaired_is_the_restorers_repair_channel():
    probe, clean = _script("probe_inputs"), _slice().astype(np.float32)
    assert np.array_equal(probe.repaired(clean, clean), clean)  # nothing to repair: bit for bit
    spiked = ARTIFACTS["spike"](clean, 0.5, np.random.default_rng(0)).astype(np.float32)
    np.testing.assert_allclose(probe.repaired(spiked, clean), clean, atol=1e-4)


def test_validate_reads_network_options_from_a_weights_spec():
    validate = _script("validate")
    assert validate.network_options("w.pt") == ("w.pt", {"gate_residual": False, "align": False, "repair": False})
    assert validate.network_options("w.pt:align=True,repair=True,features=16-32-64-128-256-16") == (
        "w.pt", {"gate_residual": False, "align": True, "repair": True, "features": [16, 32, 64, 128, 256, 16]})
    with pytest.raises(SystemExit, match="unknown option"):
        validate.network_options("w.pt:features=wide")


def test_gibbs_probe_data_consistency_keeps_the_truncated_box_and_the_output_outside_it():
    probe = _script("gibbs_sr_probe")
    clean = torch.from_numpy(_slice())[None, None].float()
    keep = gibbs_keep_fraction(np.array([0.5]))
    truncated = probe.data_consistency(clean, torch.zeros_like(clean), keep)  # the box of the clean slice alone
    assert (truncated - clean).abs().max() > 0.01
    # the clean slice agrees with the truncated one inside the box, so it is its own consistent completion
    torch.testing.assert_close(probe.data_consistency(truncated, clean, keep), clean, atol=1e-5, rtol=0)
    # the box of the damage the artifact transform makes (before its magnitude and clip) is the probe's
    damaged = ARTIFACTS["gibbs"](_slice(), 0.5, np.random.default_rng(0))
    np.testing.assert_allclose(damaged, truncated[0, 0].numpy(), atol=1e-5)
