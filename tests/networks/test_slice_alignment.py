from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import camera
from skimage.registration import phase_cross_correlation
from skimage.transform import resize

from sgad_med.networks.slice_alignment import align_to_reference, phase_correlation_shift, translate


def _image() -> torch.Tensor:
    """A real photograph at slice size, with a zero border like a head in air."""
    img = np.zeros((96, 112), dtype=np.float32)
    img[8:-8, 8:-8] = resize(camera().astype(np.float32) / 255.0, (80, 96), anti_aliasing=True)
    return torch.from_numpy(img)


@pytest.mark.parametrize("dy, dx", [(3, -2), (-5, 0), (0, 6), (1, 1)])
def test_a_translation_is_found_and_undone(dy, dx):
    reference = _image()
    moving = translate(reference[None], torch.tensor([[-dy, -dx]]))  # displaced the other way
    shift = phase_correlation_shift(moving, reference[None])
    assert shift.tolist() == [[dy, dx]]
    # the convention skimage uses: the shift that registers moving to reference
    assert phase_cross_correlation(reference.numpy(), moving[0].numpy())[0].tolist() == [dy, dx]
    aligned = align_to_reference(moving, reference[None])[0]
    inner = (slice(8, -8), slice(8, -8))  # the rows and columns the displacement zero-filled lie outside it
    assert torch.equal(aligned[inner], reference[inner])


def test_no_shift_returns_the_image_bit_for_bit():
    image = _image()[None]
    assert phase_correlation_shift(image, image).tolist() == [[0, 0]]
    assert torch.equal(align_to_reference(image, image), image)


def test_a_weak_peak_is_not_trusted():
    # the reference is half the image and half the image one pixel off: like neighbouring slices whose anatomy
    # differs a little, the best peak barely beats zero shift
    image = _image()[None]
    reference = 0.5 * image + 0.5 * translate(image, torch.tensor([[1, 0]]))
    assert phase_correlation_shift(image, reference, min_peak_ratio=0.0).abs().sum() > 0
    assert phase_correlation_shift(image, reference).tolist() == [[0, 0]]


def test_displacements_beyond_max_shift_are_not_searched():
    reference = _image()[None]
    moving = translate(reference, torch.tensor([[0, -7]]))
    assert phase_correlation_shift(moving, reference, max_shift=8).tolist() == [[0, 7]]
    assert phase_correlation_shift(moving, reference, max_shift=4)[0, 1].abs() <= 4


def test_translate_fills_with_zeros_instead_of_wrapping():
    images = torch.arange(1.0, 13.0).reshape(1, 3, 4)
    moved = translate(images, torch.tensor([[1, -2]]))
    assert torch.equal(moved[0, 0], torch.zeros(4))
    assert torch.equal(moved[0, 1:, :2], images[0, :2, 2:])
    assert torch.equal(moved[0, :, 2:], torch.zeros(3, 2))


def test_each_image_of_a_batch_gets_its_own_shift():
    reference = _image()[None].repeat(2, 1, 1)
    moving = translate(reference, torch.tensor([[2, 0], [0, -3]]))
    assert phase_correlation_shift(moving, reference).tolist() == [[-2, 0], [0, 3]]


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        phase_correlation_shift(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))
