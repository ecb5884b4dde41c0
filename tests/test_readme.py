"""The README's commands are what CI runs, and the README's Python API script runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from sgad_med.pipeline import BUNDLE_NAMES
from tests.conftest import REPO

API_SCRIPT_MARKER = "sgad_med.SGADPipeline.from_bundles"


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _api_script(text: str) -> str:
    """The README's Python API script: the python block that builds the pipeline from the bundles."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if API_SCRIPT_MARKER in b]
    assert len(blocks) == 1, "the README holds one Python API script that runs the pipeline"
    return blocks[0]


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2, "the README starts with two commands: the main job and the tests"
    test_command = blocks[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_job_runs_the_pipeline_on_sample_data():
    main_job = _bash_blocks((REPO / "README.md").read_text())[0]
    assert main_job.endswith("sgad-med run sample_data --out results")
    assert 'pip install ".[dicom-codecs]"' in main_job


def test_readme_api_script_is_short_and_runs(tmp_path):
    """Runs the script exactly as printed, from a folder laid out like the repository root.

    Each bundle whose weights ship (``models/model.pt``) is used as shipped; a bundle without weights yet is
    replaced by a tiny untrained stand-in, so the script's code path is tested either way.
    """
    from tests.tiny_bundles import make_tiny_bundles

    script = _api_script((REPO / "README.md").read_text())
    code_lines = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code_lines) <= 10, "a ten-line script"

    stand_ins = make_tiny_bundles(tmp_path / "stand_ins")
    (tmp_path / "bundles").mkdir()
    for name in BUNDLE_NAMES.values():
        shipped = REPO / "bundles" / name
        source = shipped if (shipped / "models" / "model.pt").is_file() else stand_ins / name
        os.symlink(source, tmp_path / "bundles" / name)
    os.symlink(REPO / "sample_data", tmp_path / "sample_data")
    (tmp_path / "script.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\d+ of 40 slices flagged", result.stdout), result.stdout
    import nibabel as nib

    corrected = nib.load(tmp_path / "results" / "synthetic_mr_corrected.nii.gz")
    assert corrected.shape == nib.load(REPO / "sample_data" / "synthetic_mr.nii.gz").shape
    shutil.rmtree(tmp_path / "results")


def test_readme_installs_the_cpu_build_of_torch():
    """From PyPI, ``pip install torch`` on Linux is a CUDA build of several GB: both commands name the CPU index."""
    for command in _bash_blocks((REPO / "README.md").read_text())[:2]:
        assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in command
