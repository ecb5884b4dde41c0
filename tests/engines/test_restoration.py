"""Restoration training pieces: the loss, the batch preparation, a few SupervisedTrainer iterations, RestoreFolder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader

from sgad_med.data.corrupted import CorruptedSlices
from sgad_med.data.slices import collate_slices
from sgad_med.engines import RestorationLoss, prepare_restoration_batch
from sgad_med.errors import SGADError
from sgad_med.io import discover_scans
from sgad_med.networks import SliceRestorationNet
from sgad_med.restorer import RestoreFolder, SliceRestorer, flagged_slices
from tests.conftest import SAMPLE_DATA, smooth_volume

TINY = (4, 4, 8, 8, 16, 4)


def test_loss_is_zero_for_the_truth_and_grows_with_the_error():
    target = torch.rand(2, 1, 32, 32)
    loss = RestorationLoss(l1_weight=1.0, ssim_weight=0.2)
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-5)
    small, large = loss(target + 0.05, target).item(), loss(target + 0.2 * torch.randn_like(target), target).item()
    assert 0 < small < large


def test_loss_terms_are_weighted():
    target, pred = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    l1_only = RestorationLoss(l1_weight=1.0, ssim_weight=0.0)(pred, target)
    assert l1_only.item() == pytest.approx(torch.mean(torch.abs(pred - target)).item(), rel=1e-6)
    both = RestorationLoss(l1_weight=1.0, ssim_weight=1.0)(pred, target)
    assert both.item() > l1_only.item()
    with pytest.raises(ValueError):
        RestorationLoss(l1_weight=0.0, ssim_weight=0.0)


def test_keep_term_charges_the_pixels_taken_from_the_neighbours():
    network = SliceRestorationNet(context=2, features=TINY, gate_residual=True).train()
    stack = torch.rand(2, 5, 32, 32)
    pred = network(stack)
    plain = RestorationLoss()(pred, stack[:, 2:3])
    kept = RestorationLoss(keep_weight=0.5, network=network)(pred, stack[:, 2:3])
    assert kept.item() == pytest.approx(plain.item() + 0.5 * (1.0 - network.last_gate).mean().item(), rel=1e-5)
    kept.backward()  # the gate gets the keep term's gradient
    assert network.unet.final_conv.weight.grad is not None
    network.eval()
    network(stack)
    assert network.last_gate is None  # nothing held on to at inference
    with pytest.raises(RuntimeError, match="gate"):
        RestorationLoss(keep_weight=0.5, network=network)(pred, stack[:, 2:3])
    with pytest.raises(ValueError, match="gated"):
        RestorationLoss(keep_weight=0.5, network=SliceRestorationNet(context=2, features=TINY, gated=False))
    with pytest.raises(ValueError, match="keep_weight"):
        RestorationLoss(keep_weight=-1.0)
    assert "network" not in dict(RestorationLoss(keep_weight=0.5, network=network).named_children())


def test_gate_term_asks_to_keep_exactly_the_pixels_the_kept_slice_has_right():
    network = SliceRestorationNet(context=2, features=TINY, gate_residual=True).train()
    stack = torch.rand(2, 5, 32, 32)
    truth = stack[:, 2:3].clone()
    truth[:, :, :16] += 0.5  # the top half of slice k is damaged, the bottom half right
    pred = network(stack)
    plain = RestorationLoss()(pred, truth)
    gated = RestorationLoss(gate_weight=0.3, gate_tolerance=0.02, network=network)(pred, truth)
    keep_target = torch.zeros_like(truth)
    keep_target[:, :, 16:] = 1.0
    expected = torch.nn.functional.binary_cross_entropy(network.last_gate, keep_target)
    assert gated.item() == pytest.approx(plain.item() + 0.3 * expected.item(), rel=1e-4)
    gated.backward()
    assert network.unet.final_conv.weight.grad.abs().sum() > 0
    # with align the target follows the slice the gate keeps (re-registered), not slice k as given
    aligned = SliceRestorationNet(context=2, features=TINY, gate_residual=True, align=True).train()
    aligned(stack)
    assert aligned.last_kept is not None and aligned.last_kept.shape == truth.shape
    with pytest.raises(ValueError, match="gate_weight"):
        RestorationLoss(gate_weight=-0.1)
    with pytest.raises(ValueError, match="gated"):
        RestorationLoss(gate_weight=0.1, network=SliceRestorationNet(context=2, features=TINY, gated=False))


def test_gate_term_window_averages_the_error_so_noise_is_not_kept_pixel_by_pixel():
    network = SliceRestorationNet(context=2, features=TINY, gate_residual=True).train()
    stack = torch.rand(1, 5, 32, 32)
    truth = stack[:, 2:3].clone()
    truth[..., ::2, ::2] += 0.2  # a quarter of the pixels wrong, like noise: pixel by pixel 3/4 look right
    pred = network(stack)
    logits = network.last_gate_logits
    plain = RestorationLoss()(pred, truth).item()

    def gate_term(window: int) -> float:
        loss = RestorationLoss(gate_weight=1.0, gate_tolerance=0.02, gate_window=window, network=network)
        return loss(pred, truth).item() - plain

    keep_none = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)).item()
    assert gate_term(5) == pytest.approx(keep_none, rel=1e-4)  # averaged error >= 4/25 * 0.2 > 0.02: keep nothing
    assert gate_term(1) != pytest.approx(keep_none, rel=1e-2)
    with pytest.raises(ValueError, match="gate_window"):
        RestorationLoss(gate_window=4)


def test_gate_keep_better_also_keeps_where_the_slice_beats_the_alternative():
    network = SliceRestorationNet(context=2, features=TINY, gate_residual=True).train()
    stack = torch.rand(1, 5, 32, 32)
    pred = network(stack)
    kept, alternative = network.last_kept.detach(), network.last_alternative.detach()
    assert alternative.shape == kept.shape
    truth = kept + 0.1  # the slice is off by 0.1 everywhere: beyond the tolerance, so only "better" can keep it
    kept_error, alternative_error = (kept - truth).abs(), (alternative - truth).abs()
    better = (kept_error <= alternative_error).float()
    assert 0.1 < better.mean() < 0.9  # the untrained alternative is better in some pixels and worse in others
    plain = RestorationLoss()(pred, truth).item()
    logits = network.last_gate_logits
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def gate_term(keep_better: bool) -> float:
        loss = RestorationLoss(gate_weight=1.0, gate_tolerance=0.02, gate_keep_better=keep_better, network=network)
        return loss(pred, truth).item() - plain

    assert gate_term(True) == pytest.approx(bce(logits, better).item(), rel=1e-4)
    assert gate_term(False) == pytest.approx(bce(logits, torch.zeros_like(logits)).item(), rel=1e-4)
    with pytest.raises(ValueError, match="gate_residual"):
        RestorationLoss(gate_weight=0.1, gate_keep_better=True,
                        network=SliceRestorationNet(context=2, features=TINY, gate_residual=False))


def test_prepare_batch_feeds_the_damaged_stack_and_the_clean_slice():
    batch = {"image": torch.rand(3, 5, 16, 16), "clean": torch.rand(3, 1, 16, 16), "label": torch.ones(3, 1)}
    image, target = prepare_restoration_batch(batch, torch.device("cpu"))
    assert torch.equal(image, batch["image"]) and torch.equal(target, batch["clean"])
    with pytest.raises(KeyError, match="clean"):
        prepare_restoration_batch({"image": batch["image"], "label": batch["label"]})


def test_supervised_trainer_runs_a_few_iterations_and_the_loss_falls():
    torch.manual_seed(0)
    dataset = CorruptedSlices(range(0, 1), styles_per_anatomy=1, slices_per_volume=4, context=2, spacing=8.0,
                              corrupt_fraction=1.0, kinds=["intensity_jump"], severity=0.8, redraw=False,
                              mni_dir=SAMPLE_DATA / "mni")
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_slices)
    network = SliceRestorationNet(context=2, features=TINY)
    loss_fn = RestorationLoss()
    batch = collate_slices([dataset[0]])
    before = loss_fn(network(batch["image"]), batch["clean"]).item()
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=30, train_data_loader=loader, network=network,
                                optimizer=torch.optim.Adam(network.parameters(), lr=3e-3), loss_function=loss_fn,
                                prepare_batch=prepare_restoration_batch, decollate=False)
    trainer.run()
    assert trainer.state.iteration == 30
    assert np.isfinite(trainer.state.output["loss"].item())
    with torch.no_grad():
        after = loss_fn(network(batch["image"]), batch["clean"]).item()
    assert after < before


def test_flagged_slices_reads_a_slices_csv(tmp_path):
    good = tmp_path / "slices.csv"
    good.write_text("slice,score,flagged,restored\n0,0.1,0,0\n1,0.9,1,0\n2,0.2,0,0\n3,0.95,1,0\n")
    assert flagged_slices(good) == [1, 3]
    bad = tmp_path / "bad.csv"
    bad.write_text("index,score\n0,0.1\n")
    with pytest.raises(SGADError, match="flagged"):
        flagged_slices(bad)


@pytest.fixture
def scans_folder(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for k, depth in enumerate((9, 1)):
        nib.save(nib.Nifti1Image(smooth_volume(shape=(24, 20, depth), seed=k), np.eye(4)), folder / f"scan{k}.nii.gz")
    return folder


def test_restore_folder_restores_only_the_chosen_slices(scans_folder, tmp_path):
    torch.manual_seed(0)
    restorer = SliceRestorer(SliceRestorationNet(context=2, features=TINY), device="cpu")
    flagged = tmp_path / "flags" / "scan0"
    flagged.mkdir(parents=True)
    (flagged / "slices.csv").write_text("slice,score,flagged,restored\n" + "".join(
        f"{k},0.5,{int(k in (4, 5))},0\n" for k in range(9)))
    folder = RestoreFolder(discover_scans(scans_folder), restorer, tmp_path / "out", slices=[2, -1],
                           slices_dir=tmp_path / "flags")
    assert folder.run() == {}
    assert folder.restored == {"scan0": [4, 5], "scan1": [0]}  # scan1: slice 2 is outside, -1 is its only slice
    source = nib.load(scans_folder / "scan0.nii.gz").get_fdata()
    out = nib.load(tmp_path / "out" / "scan0_restored.nii.gz").get_fdata()
    changed = [k for k in range(9) if not np.array_equal(source[..., k], out[..., k])]
    assert set(changed) <= {4, 5} and changed
