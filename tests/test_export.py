"""sgad_med.export: TorchScript exports of the shipped networks load back, plug into the pipeline's components and
give the eager results; ONNX where the network allows it (tested only with onnx and onnxruntime installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgad_med.bundles import BundleError, load_bundle_network
from sgad_med.detector import SliceAnomalyDetector
from sgad_med.export import (
    ONNX_EXPORTABLE,
    export_metadata,
    export_onnx,
    export_torchscript,
    load_torchscript,
    onnx_available,
    runner_from_export,
)
from sgad_med.harmonizer import Harmonizer
from sgad_med.io import load_scan
from sgad_med.pipeline import BUNDLE_NAMES, SGADPipeline
from sgad_med.restorer import SliceRestorer
from tests.bundles.test_export import assert_same_outputs
from tests.conftest import REPO

# torch >= 2.10 deprecates torch.jit ("switch to torch.export"); TorchScript is what ckpt_export writes
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:DeprecationWarning")
BUNDLES = REPO / "bundles"
RUNNERS = {"harmonizer": Harmonizer, "detector": SliceAnomalyDetector, "restorer": SliceRestorer}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """The three shipped networks exported once for this module: ``{role: path}``."""
    folder = tmp_path_factory.mktemp("exports")
    return {role: export_torchscript(BUNDLES / name, folder / f"{name}.ts") for role, name in BUNDLE_NAMES.items()}


@pytest.mark.parametrize("role", sorted(BUNDLE_NAMES))
def test_an_export_loads_back_and_computes_what_the_eager_network_does(exports, role):
    name = BUNDLE_NAMES[role]
    scripted = load_torchscript(exports[role], device="cpu")
    assert isinstance(scripted, torch.jit.ScriptModule) and not scripted.training
    eager, _ = load_bundle_network(BUNDLES / name, "cpu")
    assert_same_outputs(name, scripted, eager)
    stored = export_metadata(exports[role])
    assert stored["metadata"]["version"] and stored["inference"]["network_def"]["_target_"].startswith("sgad_med.")


def test_the_pipeline_with_exported_components_gives_the_eager_results(exports, nifti_file):
    """Components built around the exports (the bundle's normalizer and inferer) are drop-in: same scores, flags and
    volumes. Threshold 0 flags every slice, so the restorer runs on all of them."""
    scan = load_scan(nifti_file[0])
    exported = {role: runner_from_export(RUNNERS[role], BUNDLES / BUNDLE_NAMES[role], exports[role], device="cpu")
                for role in RUNNERS}
    eager = {role: RUNNERS[role].from_bundle(BUNDLES / BUNDLE_NAMES[role], device="cpu") for role in RUNNERS}
    results = [SGADPipeline(c["harmonizer"], c["detector"], c["restorer"], threshold=0.0, device="cpu")(scan)
               for c in (exported, eager)]
    assert type(exported["restorer"].inferer) is type(eager["restorer"].inferer)  # the flip ensemble
    assert exported["detector"].threshold == eager["detector"].threshold
    ours, theirs = results
    assert ours.restored.all()
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-5)
    np.testing.assert_array_equal(ours.flagged, theirs.flagged)
    for a, b in ((ours.harmonized, theirs.harmonized), (ours.corrected, theirs.corrected)):
        torch.testing.assert_close(a.image.as_tensor(), b.image.as_tensor(), atol=1e-3, rtol=0)  # scan units


def test_the_previous_unet_generator_exports_too(tmp_path):
    path = export_torchscript(BUNDLES / "style_harmonization", tmp_path / "unet.ts", overlays=["unet_generator.json"])
    eager, _ = load_bundle_network(BUNDLES / "style_harmonization", "cpu", overlays=["unet_generator.json"])
    stacks = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load_torchscript(path, "cpu")(stacks), eager(stacks), atol=1e-4, rtol=0)


def test_loading_a_missing_or_foreign_file_names_it(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_torchscript(tmp_path / "absent.ts", "cpu")
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(BundleError, match="weights.pt.*TorchScript"):
        load_torchscript(foreign, "cpu")


def test_onnx_export_is_refused_for_networks_it_cannot_translate(tmp_path):
    for name in ("style_harmonization", "slice_restoration"):
        assert name not in ONNX_EXPORTABLE
        with pytest.raises(BundleError, match="no ONNX export"):
            export_onnx(BUNDLES / name, tmp_path / "x.onnx")


@pytest.mark.skipif(not onnx_available(), reason="onnx and onnxruntime are not installed (optional, not dependencies)")
def test_the_detector_encoder_in_onnx_runtime_matches_the_eager_encoder(tmp_path):
    import onnxruntime

    path = export_onnx(BUNDLES / "slice_anomaly_detection", tmp_path / "encoder.onnx", height=64, width=48)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    eager, _ = load_bundle_network(BUNDLES / "slice_anomaly_detection", "cpu")
    generator = torch.Generator().manual_seed(0)
    slices, previous, following = (torch.rand(5, 80, 56, generator=generator) for _ in range(3))  # other sizes
    (features,) = session.run(None, {"slices": slices.numpy(), "previous": previous.numpy(),
                                     "following": following.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(features, eager.encode(slices, previous, following).numpy(), atol=1e-4, rtol=0)


def test_the_shipped_encoder_export_matches_the_shipped_weights_and_scores_alike():
    """models/encoder.onnx is what the pipeline runs in ONNX Runtime: it must be an export of models/model.pt."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (the fast and test extras) is not installed")
    from sgad_med.export import matching_onnx_encoder

    bundle = BUNDLES / "slice_anomaly_detection"
    encoder = matching_onnx_encoder(bundle)
    assert encoder is not None and encoder.path == bundle / "models" / "encoder.onnx", (
        "encoder.onnx is missing or stale: re-export it with sgad_med.export.export_onnx after training")
    volume = torch.rand(40, 36, 12, generator=torch.Generator().manual_seed(0))
    eager = SliceAnomalyDetector.from_bundle(bundle, "cpu")
    fast = SliceAnomalyDetector.from_bundle(bundle, "cpu")
    assert fast.use_onnx_encoder(bundle) and fast.runtime == "onnxruntime" and eager.runtime == "torch"
    np.testing.assert_allclose(fast.score01(volume), eager.score01(volume), atol=1e-5)


def test_a_stale_encoder_export_is_never_used(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the fast and test extras) is not installed")
    import shutil

    bundle = tmp_path / "slice_anomaly_detection"
    shutil.copytree(BUNDLES / "slice_anomaly_detection", bundle)
    network, _ = load_bundle_network(bundle, "cpu")
    with torch.no_grad():
        next(network.parameters()).add_(0.01)  # other weights than the export was made from
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    detector = SliceAnomalyDetector.from_bundle(bundle, "cpu")
    assert not detector.use_onnx_encoder(bundle) and detector.runtime == "torch"
