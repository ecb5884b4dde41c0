from __future__ import annotations

import json
import shutil
import subprocess
import sys

from pydicom.data import get_testdata_file

from sgad_med.cli import main
from tests.conftest import SAMPLE_DATA


def test_info_lists_scans_and_marks_failures_without_stopping(tmp_path, nifti_file, capsys):
    shutil.copy2(nifti_file[0], tmp_path / "good.nii.gz")
    shutil.copy2(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "bad.nii.gz").write_bytes(b"broken")
    code = main(["info", str(tmp_path), "--json", "--quiet"])
    rows = {row["path"].split("/")[-1]: row for row in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert rows["good.nii.gz"]["status"] == "ok" and rows["good.nii.gz"]["shape"] == [24, 20, 9]
    assert rows["ct.dcm"]["modality"] == "CT" and rows["ct.dcm"]["shape"] == [128, 128, 1]
    assert rows["bad.nii.gz"]["status"] == "failed" and "bad.nii.gz" in rows["bad.nii.gz"]["error"]


def test_bad_usage_exits_2_and_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["info"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["info", str(tmp_path / "missing"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "does not exist" in out and "Traceback" not in out


def test_console_script_runs_info_on_sample_data():
    result = subprocess.run([sys.executable, "-m", "sgad_med.cli", "info", str(SAMPLE_DATA), "--json", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(row["status"] == "ok" for row in rows)
    by_name = {row["scan_id"]: row for row in rows}
    assert by_name["mni_icbm152_t1_tal_nlin_sym_09a_converted"]["shape"] == [197, 233, 189]
    assert sorted(row["modality"] for row in rows).count("CT") == 1


def test_train_and_evaluate_harmonizer_run_the_bundle_configs(tmp_path, capsys):
    import torch

    from sgad_med.networks import HarmonizationGenerator
    from tests.bundles.conftest import HARMONIZATION, tiny_harmonization_overrides

    bundle = tmp_path / "style_harmonization"
    shutil.copytree(HARMONIZATION / "configs", bundle / "configs")
    tiny = tiny_harmonization_overrides(tmp_path)
    tiny["dataset_dir"] = str(SAMPLE_DATA / "mni")
    sets = [f"{key}={json.dumps(value)}" for key, value in tiny.items() if key != "bundle_root"]
    code = main(["train", "harmonizer", "--bundle", str(bundle), *sum((["--set", s] for s in sets), [])])
    assert code == 0 and (tmp_path / "models" / "model.pt").exists()

    (bundle / "models").mkdir()
    shutil.copy2(tmp_path / "models" / "model.pt", bundle / "models" / "model.pt")  # the tiny run's generator
    torch.save(HarmonizationGenerator().state_dict(), bundle / "models" / "unet_model.pt")
    code = main(["evaluate", "harmonizer", "--bundle", str(bundle), "--out", str(tmp_path / "eval"),
                 "--set", "n_anatomies=1", "--set", "styles_per_anatomy=1", "--set", "spacing=8.0",
                 "--set", "reference_anatomies=$range(0, 1)", "--set", "real_scans=[]",
                 "--set", "n_stress_anatomies=1", "--set", f"dataset_dir={SAMPLE_DATA / 'mni'}",
                 *sum((["--set", s] for s in sets if s.startswith("generator=")), [])])
    assert code == 0
    results = json.loads((tmp_path / "eval" / "harmonization_evaluation.json").read_text())
    assert set(results["methods"]) == {"none", "histogram matching", "nyul-udupa", "oracle: tissue LUT + bias",
                                       "oracle: + guided filter", "edge-preserving GAN", "U-Net GAN (0.3.x)"}
    assert set(results["cross_style_ssim"]) == set(results["methods"]) - {"oracle: tissue LUT + bias",
                                                                          "oracle: + guided filter"}
    assert "SSIM(mask)" in capsys.readouterr().out


def test_errors_inside_bundle_configs_reach_the_user_as_clear_messages(tmp_path, capsys):
    from tests.bundles.conftest import HARMONIZATION

    bundle = tmp_path / "style_harmonization"
    shutil.copytree(HARMONIZATION / "configs", bundle / "configs")
    code = main(["train", "harmonizer", "--bundle", str(bundle), "--set", f"dataset_dir={tmp_path / 'nowhere'}",
                 "--set", "max_epochs=1"])
    err = capsys.readouterr().err
    assert code == 1 and "MNI ICBM152" in err and "Traceback" not in err
