"""Every config of every bundle builds with monai.bundle.ConfigWorkflow and has the model-zoo properties."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from tests.bundles.conftest import BUNDLES

# layered configs run on top of train.json, as `--config_file "['train.json', '<layer>']"`
TRAIN_LAYERS = {"multi_gpu_train.json", "train_unpaired.json"}
# ... and on top of inference.json: overlays selecting other weights (the previous U-Net generator, the detector for
# sagittal and coronal slices)
INFERENCE_LAYERS = {"unet_generator.json", "planes.json"}
WORKFLOW_TYPES = {"train.json": "train", "inference.json": "inference", "evaluate.json": "inference"}
# experiment configs that are neither a training nor an inference workflow; each bundle's own tests run them
EXPERIMENTS = {"leave_one_out.json"}


def _configs() -> list[tuple[Path, str]]:
    found = []
    for bundle in sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir()):
        for config in sorted((bundle / "configs").glob("*.json")):
            if config.name != "metadata.json":
                found.append((bundle, config.name))
    return found


@pytest.mark.parametrize(("bundle", "name"), _configs(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_config_builds_and_has_the_required_properties(bundle, name):
    configs = bundle / "configs"
    if name in EXPERIMENTS:
        pytest.skip("an experiment config, run by the bundle's own tests")
    if name in TRAIN_LAYERS:
        if name == "multi_gpu_train.json":
            pytest.skip("needs a torch.distributed process group: run by the 2-process test instead")
        files, workflow_type = [str(configs / "train.json"), str(configs / name)], "train"
    elif name in INFERENCE_LAYERS:  # initialize() loads the overlay's checkpoint into the overlay's network_def
        files, workflow_type = [str(configs / "inference.json"), str(configs / name)], "inference"
    else:
        files, workflow_type = str(configs / name), WORKFLOW_TYPES[name]
    workflow = ConfigWorkflow(config_file=files, meta_file=str(configs / "metadata.json"),
                              workflow_type=workflow_type, bundle_root=str(bundle))
    workflow.initialize()
    assert not workflow.check_properties()


@pytest.mark.parametrize("bundle", sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir()),
                         ids=lambda p: p.name)
def test_bundle_layout_and_metadata(bundle):
    configs = bundle / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "network_data_format"):
        assert key in meta, key
    assert meta["version"] in meta["changelog"]
    for required in ("inference.json", "logging.conf", "metadata.json"):
        assert (configs / required).is_file(), required
    assert (bundle / "docs" / "README.md").is_file() and (bundle / "LICENSE").is_file()


def test_verify_net_in_out_passes_for_the_harmonization_bundle():
    bundle = BUNDLES / "style_harmonization"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
         "--meta_file", str(bundle / "configs" / "metadata.json"),
         "--config_file", str(bundle / "configs" / "inference.json"),
         "--bundle_root", str(bundle), "--n", "4", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified with no error" in result.stdout + result.stderr
