from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sgad_med.networks.slice_repair import desaturate, despike
from sgad_med.transforms.artifacts import ARTIFACTS

MNI_T1 = Path(__file__).parents[2] / "sample_data" / "mni" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def _slices() -> tuple[torch.Tensor, torch.Tensor]:
    """Axial slice k of the MNI T1 template at 2 mm (as the restorer sees a brain) on the [0, 1] scale, and the
    mean of slices k - 1 and k + 1; 99 x 117 pixels (the repairs must not assume a square)."""
    volume = np.asarray(nib.load(MNI_T1).dataobj, dtype=np.float32)[::2, ::2, 84:97:2]
    volume = np.clip(volume / np.percentile(volume, 99.5), 0.0, 1.0)
    slices = torch.from_numpy(np.ascontiguousarray(volume.transpose(2, 0, 1)))
    return slices[3], 0.5 * (slices[2] + slices[4])


def _psnr(image: torch.Tensor, truth: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((image.clamp(0, 1) - truth) ** 2).mean()))


def _damaged(kind: str, slice_k: torch.Tensor, severity: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(ARTIFACTS[kind](slice_k.numpy().copy(), severity, np.random.default_rng(seed)))


@pytest.mark.parametrize("severity", [0.2, 0.5])
def test_despike_removes_a_k_space_spike(severity):
    truth, reference = _slices()
    spiked = _damaged("spike", truth, severity, seed=3)
    repaired = despike(spiked[None], reference[None])[0]
    assert _psnr(spiked, truth) < 25.0
    assert _psnr(repaired, truth) > _psnr(spiked, truth) + 10.0
    assert _psnr(repaired, truth) > _psnr(reference, truth) + 5.0  # far better than interpolating


def test_desaturate_divides_out_the_gain_and_bounds_the_clipped_pixels():
    truth, reference = _slices()
    saturated = _damaged("saturation", truth, 0.5, seed=0)  # gain 2.0, then clipped
    repaired = desaturate(saturated[None], reference[None])[0]
    unclipped = saturated < 0.999
    torch.testing.assert_close(repaired[unclipped], truth[unclipped], atol=0.02, rtol=0.0)
    assert (repaired[~unclipped] >= 0.5 - 1e-6).all()  # a clipped pixel was at least 1 / gain
    assert _psnr(repaired, truth) > _psnr(reference, truth) + 2.0  # the clipped half is bounded, not known


@pytest.mark.parametrize("kind", [None, "rician", "gibbs", "motion", "blob", "signal_loss"])
def test_slices_without_a_spike_or_saturation_pass_bit_for_bit(kind):
    truth, reference = _slices()
    slice_k = truth if kind is None else _damaged(kind, truth, 0.5, seed=1)
    assert torch.equal(despike(slice_k[None], reference[None])[0], slice_k)
    assert torch.equal(desaturate(slice_k[None], reference[None])[0], slice_k)


def test_each_slice_of_a_batch_is_judged_alone():
    truth, reference = _slices()
    batch = torch.stack([truth, _damaged("spike", truth, 0.5, seed=2), _damaged("saturation", truth, 0.5, seed=2)])
    references = reference.expand(3, *reference.shape)
    despiked = despike(batch, references)
    assert torch.equal(despiked[0], batch[0]) and torch.equal(despiked[2], batch[2])
    assert not torch.equal(despiked[1], batch[1])
    desaturated = desaturate(batch, references)
    assert torch.equal(desaturated[:2], batch[:2])
    assert not torch.equal(desaturated[2], batch[2])


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        despike(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        desaturate(torch.zeros(8, 8), torch.zeros(8, 8))
