import json

from monai.inferers import SimpleInferer

from sgad_med.inferers import FlipEnsembleInferer
from sgad_med.restorer import SliceRestorer
from tests.tiny_bundles import make_tiny_bundles


def test_from_bundle_calls_the_network_through_the_bundle_inferer(tmp_path):
    bundle = make_tiny_bundles(tmp_path) / "slice_restoration"
    assert isinstance(SliceRestorer.from_bundle(bundle, device="cpu").inferer, SimpleInferer)  # none named
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["inferer"] = {"_target_": "sgad_med.inferers.FlipEnsembleInferer", "flips": [[-1], [-2]]}
    config_file.write_text(json.dumps(config))
    restorer = SliceRestorer.from_bundle(bundle, device="cpu")
    assert isinstance(restorer.inferer, FlipEnsembleInferer) and restorer.inferer.flips == [(-1,), (-2,)]
    explicit = SimpleInferer()
    assert SliceRestorer.from_bundle(bundle, device="cpu", inferer=explicit).inferer is explicit
