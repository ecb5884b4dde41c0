"""Each network bundle exports to TorchScript with ``monai.bundle ckpt_export`` as its docs/README.md says, and the
export computes what the eager network computes."""

from __future__ import annotations

import re
import shlex

import pytest
import torch
from monai.bundle import ckpt_export

from sgad_med.bundles import load_bundle_network
from tests.bundles.conftest import BUNDLES
from tests.conftest import REPO

# torch >= 2.10 deprecates torch.jit ("switch to torch.export"); TorchScript is what ckpt_export writes
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:DeprecationWarning")
NETWORK_BUNDLES = ("style_harmonization", "slice_anomaly_detection", "slice_restoration")
ATOL = 1e-4


def damaged_stacks(depth: int = 5, height: int = 48, width: int = 40) -> torch.Tensor:
    """Four 2.5D stacks whose centre slice is shifted, saturated, spiked or clean: every branch of the restorer's
    repairs runs (re-registration, desaturation, spike removal, none)."""
    generator = torch.Generator().manual_seed(0)
    anatomy = torch.rand(1, 1, height, width, generator=generator).repeat(4, depth, 1, 1) * 0.5
    stacks = anatomy + 0.01 * torch.rand(4, depth, height, width, generator=generator)
    c = depth // 2
    stacks[0, c] = torch.roll(stacks[0, c], (3, -2), (0, 1))
    stacks[1, c] = (stacks[1, c] * 2.5).clamp(0, 1)
    rows, cols = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    stacks[2, c] = (stacks[2, c] + 0.3 * torch.cos(2 * torch.pi * (10 * rows / height + 7 * cols / width))).clamp(0, 1)
    return stacks


def assert_same_outputs(name: str, scripted: torch.nn.Module, eager: torch.nn.Module) -> None:
    """The exported network called as the pipeline calls the eager one gives the eager outputs (within ATOL)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if name == "style_harmonization":
            stacks = torch.rand(3, 3, 40, 48, generator=generator)
            torch.testing.assert_close(scripted(stacks), eager(stacks), atol=ATOL, rtol=0)
            assert scripted.context == eager.context
        elif name == "slice_anomaly_detection":
            volumes = torch.rand(1, 6, 48, 40, generator=generator)
            logits = eager(volumes)
            torch.testing.assert_close(scripted(volumes), logits, atol=ATOL, rtol=0)
            slices = volumes[0]
            torch.testing.assert_close(scripted.encode(slices, slices.roll(1, 0), slices.roll(-1, 0)),
                                       eager.encode(slices, slices.roll(1, 0), slices.roll(-1, 0)), atol=ATOL, rtol=0)
            features = torch.rand(1, 6, eager.n_features, generator=generator)
            torch.testing.assert_close(scripted.sequence_logits(features), eager.sequence_logits(features),
                                       atol=ATOL, rtol=0)
            torch.testing.assert_close(scripted.calibrated_probability(logits), eager.calibrated_probability(logits))
            assert float(scripted.threshold) == float(eager.threshold)
        else:
            for stacks in (torch.rand(3, 5, 48, 40, generator=generator), damaged_stacks()):
                torch.testing.assert_close(scripted(stacks), eager(stacks), atol=ATOL, rtol=0)
            assert scripted.context == eager.context


def docs_export_command(name: str) -> list[str]:
    """The ``ckpt_export`` command of the bundle's docs/README.md "Export" section, as argv."""
    text = (BUNDLES / name / "docs" / "README.md").read_text()
    section = text.split("## Export", 1)[1]
    command = re.search(r"```(?:bash)?\n(python -m monai\.bundle ckpt_export.*?)\n```", section, re.S)
    assert command is not None, f"{name}: no ckpt_export command in the Export section"
    return shlex.split(command.group(1).replace("\\\n", " "))


@pytest.mark.parametrize("name", NETWORK_BUNDLES)
def test_the_docs_export_command_gives_torchscript_matching_the_eager_network(name, tmp_path, monkeypatch):
    """``monai.bundle.ckpt_export`` called with the documented arguments (from the repository root), only
    ``--filepath`` sent to tmp_path; the export holds the bundle's configs and computes what the eager network does."""
    argv = docs_export_command(name)
    assert argv[:5] == ["python", "-m", "monai.bundle", "ckpt_export", "network_def"]
    options = dict(zip(argv[5::2], argv[6::2]))
    assert all(key.startswith("--") for key in options) and len(argv[5:]) == 2 * len(options)
    kwargs = {key[2:]: value for key, value in options.items()}
    assert "use_trace" not in kwargs, "the networks script; tracing would freeze shapes and data-dependent branches"
    kwargs["filepath"] = str(tmp_path / "model.ts")
    monkeypatch.chdir(REPO)
    ckpt_export(net_id="network_def", **kwargs)
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(kwargs["filepath"], map_location="cpu", _extra_files=extra)
    assert extra["metadata.json"] and extra["inference.json"], "the bundle's configs are stored in the export"
    eager, _ = load_bundle_network(BUNDLES / name, "cpu")
    assert_same_outputs(name, scripted, eager)
