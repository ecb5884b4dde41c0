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
