"""Finding and loading the MNI ICBM152 tissue template."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sgad_med.data import mni
from sgad_med.data.mni import MNI_DIR_ENV, MNI_FILES, find_mni_dir, load_mni_template
from sgad_med.errors import InvalidScanDataError, NoScansFoundError, SGADError


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return find_mni_dir()


@pytest.fixture
def copy_dir(tmp_path: Path, real_dir: Path) -> Path:
    folder = tmp_path / "mni copy"
    folder.mkdir()
    for name in MNI_FILES.values():
        shutil.copy(real_dir / name, folder / name)
    return folder


@pytest.fixture
def no_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is found unless given: no env var, no repo copy, no nilearn."""
    monkeypatch.delenv(MNI_DIR_ENV, raising=False)
    monkeypatch.setattr(mni, "_repo_sample_dir", lambda: None)
    monkeypatch.setattr(mni, "_nilearn_data_dir", lambda: None)


def test_template_at_4mm_has_consistent_tissue_maps(real_dir: Path) -> None:
    t = load_mni_template(real_dir, spacing=4.0)
    assert t.shape == (49, 58, 47)
    np.testing.assert_allclose(np.diag(t.affine)[:3], 4.0)
    maps = [t.background, t.csf, t.gm, t.wm, t.other]
    for array in [t.t1, *maps]:
        assert array.dtype == np.float32 and array.shape == t.shape
        assert array.min() >= 0.0 and array.max() <= 1.0
        assert not array.flags.writeable  # shared through the cache
    np.testing.assert_allclose(sum(maps), 1.0, atol=1e-5)
    ml = {name: float(getattr(t, name).sum()) * 4.0**3 / 1000 for name in ("gm", "wm", "csf", "other")}
    assert 900 < ml["gm"] < 1100 and 600 < ml["wm"] < 750  # the template's brain (1 mm: 1008 / 670 ml)
    assert 100 < ml["csf"] < 400  # derived: sulci + ventricles
    assert 500 < ml["other"] < 1500  # derived: 10 mm skull/scalp shell
    # CSF lies inside the head: the background next to it is nil, and the shell surrounds the brain
    assert t.background[t.csf > 0.5].max() < 0.05
    assert t.other[t.wm > 0.5].max() < 0.05
    centre = tuple(n // 2 for n in t.shape)
    assert t.background[centre] == 0.0 and t.background[0, 0, 0] == pytest.approx(1.0)
    # the T1 agrees with the maps: WM brighter than GM brighter than CSF
    assert t.t1[t.wm > 0.8].mean() > t.t1[t.gm > 0.8].mean() > t.t1[t.csf > 0.8].mean()


def test_tissue_volumes_do_not_depend_on_spacing(real_dir: Path) -> None:
    coarse, fine = load_mni_template(real_dir, spacing=8.0), load_mni_template(real_dir, spacing=4.0)
    for name in ("gm", "wm", "other"):
        v8 = getattr(coarse, name).sum() * 512
        v4 = getattr(fine, name).sum() * 64
        assert abs(v8 - v4) / v4 < 0.08, name
    # both grids keep the field-of-view centre (1 mm grid: 197 x 233 x 189 from -98, -134, -72)
    for t in (coarse, fine):
        centre_mm = t.affine[:3, :3] @ ((np.array(t.shape) - 1) / 2) + t.affine[:3, 3]
        np.testing.assert_allclose(centre_mm, [0.0, -18.0, 22.0], atol=1e-6)


def test_cache_returns_same_object(real_dir: Path) -> None:
    assert load_mni_template(real_dir, spacing=4.0) is load_mni_template(str(real_dir) + "/", spacing=4.0)
    assert load_mni_template(real_dir, spacing=4.0) is not load_mni_template(real_dir, spacing=8.0)


def test_explicit_path_folder_or_file(copy_dir: Path, no_defaults: None) -> None:
    assert find_mni_dir(copy_dir) == copy_dir.resolve()
    assert find_mni_dir(copy_dir / MNI_FILES["gm"]) == copy_dir.resolve()
    t = load_mni_template(copy_dir, spacing=8.0)
    assert t.source_dir == copy_dir.resolve()
    assert t.shape == (25, 29, 24)


def test_env_var(copy_dir: Path, no_defaults: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MNI_DIR_ENV, str(copy_dir))
    assert find_mni_dir() == copy_dir.resolve()
    assert load_mni_template(spacing=8.0).source_dir == copy_dir.resolve()


def test_explicit_path_wins_over_env(copy_dir: Path, real_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MNI_DIR_ENV, str(copy_dir))
    assert find_mni_dir(real_dir) == real_dir.resolve()


def test_repo_copy_then_nilearn(copy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MNI_DIR_ENV, raising=False)
    monkeypatch.setattr(mni, "_repo_sample_dir", lambda: copy_dir)
    assert find_mni_dir() == copy_dir.resolve()
    nilearn_dir = mni._nilearn_data_dir()
    if nilearn_dir is None:
        pytest.skip("nilearn is not installed")
    monkeypatch.setattr(mni, "_repo_sample_dir", lambda: None)
    assert find_mni_dir() == nilearn_dir.resolve()
    assert (nilearn_dir / MNI_FILES["t1"]).is_file()


def test_nothing_found_raises_with_fix(no_defaults: None) -> None:
    with pytest.raises(NoScansFoundError) as info:
        load_mni_template()
    assert isinstance(info.value, SGADError)
    assert info.value.path is None
    message = str(info.value)
    assert "MNI ICBM152" in message and "not found" in message
    assert "path=" in message and MNI_DIR_ENV in message and MNI_FILES["gm"] in message


def test_wrong_explicit_path_or_env_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoScansFoundError, match="empty") as info:
        find_mni_dir(empty)
    assert info.value.path == str(empty)
    monkeypatch.setenv(MNI_DIR_ENV, str(empty))
    with pytest.raises(NoScansFoundError, match=MNI_DIR_ENV):
        find_mni_dir()  # a typo in the variable must not silently fall back to nilearn's copy


def test_maps_on_different_grids_are_refused(copy_dir: Path) -> None:
    wm = nib.load(copy_dir / MNI_FILES["wm"])
    small = nib.Nifti1Image(np.asarray(wm.dataobj)[:-1], wm.affine)
    nib.save(small, copy_dir / MNI_FILES["wm"])
    with pytest.raises(InvalidScanDataError, match="grid"):
        load_mni_template(copy_dir, spacing=8.0)


def test_bad_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        load_mni_template(spacing=0)
