"""The README's commands are what CI runs, and the README's output sample is what the command prints."""

from __future__ import annotations

import re

from tests.conftest import REPO


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2, "the README starts with two commands: the main job and the tests"
    test_command = blocks[1]
    assert "pytest" in test_command
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_job_runs_on_sample_data():
    main_job = _bash_blocks((REPO / "README.md").read_text())[0]
    assert main_job.endswith("sgad-med info sample_data")
