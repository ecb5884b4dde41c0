"""The style_harmonization bundle's training configs run (paired, unpaired, resumed, 2-process DDP)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import HARMONIZATION, run_two_cpu_processes
from tests.conftest import smooth_volume

CONFIGS = HARMONIZATION / "configs"


def _train(overrides: dict, *layers: str) -> ConfigWorkflow:
    files = [str(CONFIGS / "train.json"), *(str(CONFIGS / layer) for layer in layers)]
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **overrides)
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return workflow


def test_paired_training_runs_saves_the_best_generator_and_learns(tiny_harmonization, tmp_path):
    tiny_harmonization["max_epochs"] = 2
    workflow = _train(tiny_harmonization)
    trainer = workflow.train__trainer if hasattr(workflow, "train__trainer") else workflow.parser.get_parsed_content(
        "train#trainer")
    assert trainer.state.iteration == 4
    output = trainer.state.output
    assert np.isfinite(output["g_loss"]) and np.isfinite(output["d_loss"])
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "grid_head.weight" in weights  # the edge-preserving generator (train.json's network_def)
    assert (tmp_path / "train_output" / "checkpoint_final.pt").exists()


def test_training_is_deterministic_under_a_seed(tiny_harmonization, tmp_path):
    first = dict(tiny_harmonization)
    second = dict(tiny_harmonization, output_dir=str(tmp_path / "again"), ckpt_dir=str(tmp_path / "again_models"))
    _train(first)
    _train(second)
    a = torch.load(tmp_path / "train_output" / "checkpoint_final.pt", weights_only=True)["generator"]
    b = torch.load(tmp_path / "again" / "checkpoint_final.pt", weights_only=True)["generator"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_resumes_from_a_checkpoint(tiny_harmonization, tmp_path):
    from ignite.engine import Events

    _train(tiny_harmonization)
    saved = torch.load(tmp_path / "train_output" / "checkpoint_final.pt", weights_only=True)
    resumed = dict(tiny_harmonization, resume_from=str(tmp_path / "train_output" / "checkpoint_final.pt"),
                   output_dir=str(tmp_path / "resumed"), seed=7)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **resumed)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    at_start = {}

    def capture(engine):  # runs after the CheckpointLoader, which was attached first
        at_start.update({k: v.clone() for k, v in engine.generator.state_dict().items()})
        at_start["lr"] = engine.g_optimizer.param_groups[0]["lr"]

    trainer.add_event_handler(Events.STARTED, capture)
    workflow.run()
    assert all(torch.equal(at_start[k], v) for k, v in saved["generator"].items())
    assert "state" in saved["g_optimizer"] and saved["g_optimizer"]["state"], "optimizer moments are resumed too"


def _learning_rates_by_iteration(overrides: dict, *layers: str) -> list[tuple[float, float]]:
    """(generator lr, discriminator lr) after every iteration of a run of ``train.json`` (+ ``layers``)."""
    from ignite.engine import Events

    files = [str(CONFIGS / "train.json"), *(str(CONFIGS / layer) for layer in layers)]
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    rates = []
    # registered after the bundle's handlers, so it sees the lr the scheduler has just set
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: rates.append(
        (engine.g_optimizer.param_groups[0]["lr"], engine.d_optimizer.param_groups[0]["lr"])))
    workflow.run()
    return rates


def test_learning_rate_decays_linearly_to_the_end_factor_and_is_constant_at_one(tiny_harmonization):
    tiny_harmonization["max_epochs"] = 2  # 4 iterations
    constant = _learning_rates_by_iteration(dict(tiny_harmonization, lr_end_factor=1.0))
    assert constant == [(5e-4, 5e-4)] * 4

    decayed = _learning_rates_by_iteration(dict(tiny_harmonization))  # the default: linear decay to 0
    expected = [5e-4 * (1 - step / 4) for step in range(1, 5)]  # per iteration, reaching 0 at the last one
    assert np.allclose([g for g, _ in decayed], expected, atol=1e-12)
    assert np.allclose([d for _, d in decayed], expected, atol=1e-12)


def test_unpaired_training_decays_the_learning_rate_too(tiny_harmonization, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    for k in range(2):
        nib.save(nib.Nifti1Image(smooth_volume(shape=(24, 28, 10), seed=k), affine), str(site / f"s{k}.nii.gz"))
    overrides = dict(tiny_harmonization, source_dir=str(site), reference_dir=str(site), lr_end_factor=0.5)
    rates = _learning_rates_by_iteration(overrides, "train_unpaired.json")
    assert rates and np.isclose(rates[-1][0], 2.5e-4) and np.isclose(rates[-1][1], 2.5e-4)
    assert all(a[0] > b[0] for a, b in zip(rates, rates[1:]))


def test_unpaired_training_runs_on_folders_of_scans(tiny_harmonization, tmp_path):
    for site, seed in (("site_a", 1), ("site_b", 2)):
        folder = tmp_path / site
        folder.mkdir()
        for k in range(2):
            volume = smooth_volume(shape=(24, 28, 10), seed=seed * 10 + k)
            nib.save(nib.Nifti1Image(volume if site == "site_a" else volume.max() - volume, np.eye(4)),
                     folder / f"scan{k}.nii.gz")
    overrides = dict(tiny_harmonization, source_dir=str(tmp_path / "site_a"), reference_dir=str(tmp_path / "site_b"))
    workflow = _train(overrides, "train_unpaired.json")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    # two generators (there and back), each its own network, as in CycleGAN
    assert trainer.generator is not trainer.generator_back
    assert not {id(p) for p in trainer.generator.parameters()} & {id(p) for p in trainer.generator_back.parameters()}
    output = trainer.state.output
    assert np.isfinite(output["cycle"]) and np.isfinite(output["g_loss"])
    assert (tmp_path / "models" / "model_unpaired.pt").exists()


def test_multi_gpu_config_runs_with_two_cpu_processes(tiny_harmonization, tmp_path):
    run_two_cpu_processes(CONFIGS, tiny_harmonization, port=29533)
    assert (tmp_path / "models" / "model.pt").exists()
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in weights), "DDP wrapper must not leak into the shipped weights"
