"""Reports: slices.csv, report.json, the figures, and report.html (escaped, links that resolve, images that load)."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import sgad_med.report as report_module
from sgad_med.io import Scan
from sgad_med.pipeline import Result
from sgad_med.report import SLICE_COLUMNS, write_run_report, write_scan_outputs
from tests.conftest import smooth_volume

EVIL = '<script>alert("x")</script>'


def _scan(volume: np.ndarray, scan_id: str) -> Scan:
    affine = torch.as_tensor(np.diag([0.9, 0.9, 2.5, 1.0]))
    return Scan(image=MetaTensor(torch.from_numpy(volume)[None], affine=affine), scan_id=scan_id, modality="MR")


def make_result(scan_id: str = "subject-01", harmonize: bool = True, depth: int = 7) -> Result:
    """A result of 7 slices: slice 2 damaged on arrival, slice 4 damaged by the GAN, both restored."""
    volume = smooth_volume(shape=(24, 20, depth), low=0.0, high=1000.0)
    scan = _scan(volume, scan_id)
    harmonized = scan.with_image(torch.from_numpy(volume * 0.9 + 20)[None]) if harmonize else None
    corrected_volume = (volume * 0.9 + 20) if harmonize else volume.copy()
    corrected_volume[:, :, 2] += 100.0  # the restorer changed the flagged slices
    corrected = scan.with_image(torch.from_numpy(corrected_volume)[None])
    input_scores = np.full(depth, 0.05)
    input_scores[2] = 0.93
    harmonized_scores = np.full(depth, 0.1)
    harmonized_scores[4] = 0.71
    scores = np.maximum(input_scores, harmonized_scores) if harmonize else input_scores
    flagged = scores >= 0.5
    cause = ["" for _ in range(depth)]
    cause[2] = "input"
    if harmonize:
        cause[4] = "harmonization"
    return Result(
        scan=scan,
        harmonized=harmonized,
        corrected=corrected,
        input_scores=input_scores,
        harmonized_scores=harmonized_scores if harmonize else None,
        scores=scores,
        flagged=flagged,
        restored=flagged.copy(),
        cause=cause,
        threshold=0.5,
        timings={"load": 0.1, "harmonize": 0.2, "detect": 0.05, "restore": 0.3, "total": 0.7},
        settings={"threshold": None, "harmonize": harmonize},
    )


def test_slices_csv_has_the_contract_columns_and_one_row_per_slice(tmp_path):
    result = make_result()
    written = write_scan_outputs(tmp_path, result, ["in/subject-01.nii.gz"], {"device": "cpu"})
    assert tmp_path / "slices.csv" in written
    with open(tmp_path / "slices.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == SLICE_COLUMNS
    body = rows[1:]
    assert [int(r[0]) for r in body] == list(range(7))
    for r in body:
        assert 0.0 <= float(r[1]) <= 1.0 and 0.0 <= float(r[4]) <= 1.0 and 0.0 <= float(r[5]) <= 1.0
        assert r[2] in ("0", "1") and r[3] in ("0", "1")
        assert r[6] in ("", "input", "harmonization", "both")
    assert [k for k, r in enumerate(body) if r[2] == "1"] == [2, 4]
    assert body[4][6] == "harmonization" and body[2][6] == "input"
    assert float(body[2][1]) == pytest.approx(0.93)


def test_slices_csv_leaves_harmonized_score_empty_when_skipped(tmp_path):
    write_scan_outputs(tmp_path, make_result(harmonize=False), ["x.nii.gz"], {})
    with open(tmp_path / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["harmonized_score"] == "" for r in rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(s["harmonized_score"] is None for s in report["slices"])
    assert report["counts"]["flagged_by_harmonization"] == 0


def test_report_json_is_strict_and_complete(tmp_path):
    result = make_result()
    settings = {"device": "cpu", "out": tmp_path, "nan": float("nan"), "array": np.array([1, 2]), "n": np.int64(3)}
    written = write_scan_outputs(tmp_path, result, ["in/subject-01.nii.gz"], settings)
    assert written[-1] == tmp_path / "report.json"  # last: the finished marker

    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON constant {token}")

    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=refuse)
    for key in (
        "scan_id",
        "inputs",
        "modality",
        "shape",
        "spacing",
        "settings",
        "versions",
        "timings",
        "counts",
        "threshold",
        "slices",
        "figures",
    ):
        assert key in report
    assert report["scan_id"] == "subject-01" and report["inputs"] == ["in/subject-01.nii.gz"]
    assert report["shape"] == [24, 20, 7] and report["spacing"] == pytest.approx([0.9, 0.9, 2.5])
    assert set(report["versions"]) == {"sgad_med", "torch", "monai", "python"}
    assert report["counts"] == {"slices": 7, "flagged": 2, "restored": 2, "flagged_by_harmonization": 1,
                                "fallback": 0}
    assert report["harmonization_fallback"] == "none"
    assert report["settings"]["nan"] is None and report["settings"]["array"] == [1, 2]
    assert report["settings"]["out"] == str(tmp_path)
    assert len(report["slices"]) == 7 and report["slices"][4]["cause"] == "harmonization"
    assert report["figures"]["slices_without_figure"] == 0
    assert not list(tmp_path.glob(".tmp-*"))


def test_figures_exist_for_flagged_slices_and_the_scores(tmp_path):
    written = write_scan_outputs(tmp_path, make_result(), ["x"], {})
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == ["scores.png", "slice_0002.png", "slice_0004.png"]
    for name in figures:
        path = tmp_path / "figures" / name
        assert path in written
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slice_figures_show_the_input_as_the_pipeline_normalized_it(tmp_path, monkeypatch):
    import sgad_med.report as report

    windows = []
    monkeypatch.setattr(report, "_slice_figure", lambda result, k, window, path: windows.append(window))
    result = make_result()
    write_scan_outputs(tmp_path, result, ["x"], {})  # no recorded normalization: the modality's default
    lo, hi = np.percentile(result.scan.image[0].numpy()[result.scan.image[0].numpy() != 0], [0.5, 99.5])
    assert np.allclose(windows[0], (lo, hi), rtol=1e-5)
    result.settings["normalization"] = {"kind": "mr_percentile", "lo": 10.0, "hi": 500.0}
    windows.clear()
    (tmp_path / "again").mkdir()
    write_scan_outputs(tmp_path / "again", result, ["x"], {})
    assert windows == [(10.0, 500.0), (10.0, 500.0)]


def test_slice_figures_are_capped(tmp_path, monkeypatch):
    import sgad_med.report as report_module

    monkeypatch.setattr(report_module, "MAX_SLICE_FIGURES", 1)
    write_scan_outputs(tmp_path, make_result(), ["x"], {})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["figures"]["slices_without_figure"] == 1 and report["figures"]["max_slice_figures"] == 1
    assert len(list((tmp_path / "figures").glob("slice_*.png"))) == 1


def _run(tmp_path: Path) -> Path:
    """An output folder of two finished scans, one failed and one skipped, with its report.html."""
    out = tmp_path / "out"
    entries = []
    for scan_id, harmonize in (("subject-01", True), ("dcm-0123456789abcdef", False)):
        (out / scan_id).mkdir(parents=True)
        write_scan_outputs(out / scan_id, make_result(scan_id, harmonize=harmonize), [f"in/{scan_id}"], {})
        entries.append(
            {
                "scan_id": scan_id,
                "inputs": [f"in/{scan_id}"],
                "status": "ok",
                "error": None,
                "n_slices": 7,
                "n_flagged": 2 if harmonize else 1,
                "n_restored": 2 if harmonize else 1,
                "dir": scan_id,
            }
        )
    entries.append(
        {
            "scan_id": f"bad{EVIL}",
            "inputs": [f"in/{EVIL}.nii.gz"],
            "status": "failed",
            "error": f"truncated file {EVIL} & more",
            "n_slices": None,
            "n_flagged": None,
            "n_restored": None,
            "dir": "bad",
        }
    )
    entries.append(
        {
            "scan_id": "rtstruct",
            "inputs": ["in/rt.dcm"],
            "status": "skipped",
            "error": "not an image",
            "n_slices": None,
            "n_flagged": None,
            "n_restored": None,
            "dir": "rtstruct",
        }
    )
    page = write_run_report(out, entries)
    assert page == out / "report.html"
    return page


def test_run_report_escapes_and_links_existing_figures(tmp_path):
    page = _run(tmp_path)
    text = page.read_text()
    assert "<script>" not in text  # neither the scan id nor the error became markup
    assert html.escape(f"truncated file {EVIL} & more", quote=False) in text or "&lt;script&gt;" in text
    assert "truncated file" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 2 + 3  # two score plots, three flagged slices
    for src in sources:
        assert not src.startswith(("/", "http", "file:"))
        assert (page.parent / unquote(html.unescape(src))).is_file()
    assert "subject-01/figures/slice_0004.png" in sources
    totals = re.search(r'<table id="totals">.*?</table>', text, re.S).group(0)
    cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", totals)]
    assert cells == ["4", "2", "1", "1", "14", "3", "3"]
    assert not list(page.parent.glob(".tmp-*"))


def test_template_ships_with_the_package():
    from importlib.resources import files

    assert files("sgad_med").joinpath("templates/report.html.j2").is_file()


CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)

# Appended to a copy of the page: once everything has loaded, write what each <img> did into the DOM.
_PROBE = """
<script>
window.addEventListener("load", function () {
  var out = document.createElement("pre");
  out.id = "img-probe";
  out.textContent = JSON.stringify(Array.from(document.images).map(function (img) {
    return {src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth};
  }));
  document.body.appendChild(out);
});
</script>
"""


def test_report_html_images_load_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip(
            "chromium not installed: the report.html browser check needs Debian's chromium package "
            "(.ci/run installs it)"
        )
    page = _run(tmp_path)
    probe = page.with_name("probe.html")
    # plus one image that cannot load, to show that the probe tells a broken image from a loaded one
    broken = '<img src="no-such-figure.png" alt="">'
    probe.write_text(page.read_text().replace("</body>", broken + _PROBE + "</body>"))
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="img-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe output from chromium (rc {done.returncode}): {done.stderr[-2000:]}"
    images = json.loads(html.unescape(match.group(1)))
    assert images[-1] == {"src": "no-such-figure.png", "complete": True, "width": 0}
    images = images[:-1]
    assert len(images) == 5
    for image in images:
        assert image["complete"] and image["width"] > 0, f"image did not load: {image['src']}"


def test_run_report_quotes_links_to_folders_with_odd_names(tmp_path):
    out = tmp_path / "out"
    (out / "scan #1").mkdir(parents=True)
    write_scan_outputs(out / "scan #1", make_result("scan #1"), ["in"], {})
    entry = {
        "scan_id": "scan #1",
        "inputs": ["in"],
        "status": "ok",
        "error": None,
        "n_slices": 7,
        "n_flagged": 2,
        "n_restored": 2,
        "dir": "scan #1",
    }
    text = write_run_report(out, [entry]).read_text()
    assert 'src="scan%20%231/figures/scores.png"' in text
    for src in re.findall(r'<img src="([^"]+)"', text):
        assert (out / unquote(html.unescape(src))).is_file()


def _scores_png(tmp_path: Path, score: float) -> bytes:
    one = np.array([score])
    # one slice, nothing flagged (threshold above the score): only the curves can tell the two figures apart
    result = dataclasses.replace(
        make_result(), input_scores=one, harmonized_scores=one, scores=one, flagged=np.array([False]), threshold=0.99
    )
    path = tmp_path / f"scores-{score}.png"
    report_module._scores_figure(result, path)
    return path.read_bytes()


def test_scores_figure_of_a_one_slice_scan_shows_its_score(tmp_path):
    # a line through one point draws nothing; with markers the score's height shows in the picture
    assert _scores_png(tmp_path, 0.1) != _scores_png(tmp_path, 0.9)


def test_slice_figure_shows_what_restoration_changed_beside_what_the_chain_changed(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    titles = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: titles.append([ax.get_title() for ax in fig.axes]))
    report_module._slice_figure(make_result(), 2, (0.0, 1000.0), tmp_path / "x.png")
    assert titles[0][:5] == ["input", "harmonized", "restored", "|corrected - harmonized|", "|corrected - input|"]
