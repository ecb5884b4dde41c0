"""Regenerate sample_data/ deterministically: python sample_data/make_sample_data.py

Copies the MNI ICBM152 maps (from nilearn, or SGAD_MED_MNI_DIR) and pydicom's MR_small.dcm and CT_small.dcm,
then renders two synthetic scans from the MNI anatomy in non-reference styles: a 40-slice DICOM MR series
written by sgad_med's own writer, and a NIfTI volume of the same kind. Run twice, it writes the same bytes.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.data import get_testdata_file

from sgad_med.data import MNI_FILES, SyntheticStyleGenerator, find_mni_dir, load_mni_template
from sgad_med.io import write_new_series

HERE = Path(__file__).resolve().parent
SLICES = 40  # central axial slices kept from the 2 mm synthetic volume
ACQUIRED = datetime.datetime(2026, 1, 1, 12, 0, 0)


def central_slices(volume: np.ndarray, affine: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``count`` axial slices around the middle, moving the affine's origin to the first kept slice."""
    start = (volume.shape[2] - count) // 2
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.array([0, 0, start]) + affine[:3, 3]
    return volume[:, :, start : start + count], shifted


def main(out: Path = HERE) -> None:
    mni_dir = out / "mni"
    mni_dir.mkdir(parents=True, exist_ok=True)
    source_dir = find_mni_dir(None if not (mni_dir / MNI_FILES["t1"]).exists() else mni_dir)
    for name in MNI_FILES.values():
        if (source_dir / name).resolve() != (mni_dir / name).resolve():
            shutil.copy2(source_dir / name, mni_dir / name)

    dicom_dir = out / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    for name in ("MR_small.dcm", "CT_small.dcm"):
        shutil.copy2(get_testdata_file(name), dicom_dir / name)

    generator = SyntheticStyleGenerator(template=load_mni_template(mni_dir, spacing=2.0), seed=0)
    # Held-out anatomies and styles: nothing in sample_data is a training example.
    t2_style = generator.style(style_seed=1, split="heldout", family="t2")
    t2, affine = central_slices(generator.volume(10_000, t2_style), generator.anatomy(10_000).affine, SLICES)
    write_new_series(
        t2 * 1000.0, affine, out / "synthetic_mr_series", modality="MR",
        series_description=f"synthetic {t2_style.name} (MNI anatomy 10000)",
        uid_seed="sgad-med sample_data synthetic_mr_series", acquired=ACQUIRED, overwrite=True,
    )

    pd_style = generator.style(style_seed=2, split="heldout", family="pd")
    pd, affine = central_slices(generator.volume(10_001, pd_style), generator.anatomy(10_001).affine, SLICES)
    image = nib.Nifti1Image(np.rint(pd * 4000).astype(np.int16), affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, out / "synthetic_mr.nii.gz")
    print(f"wrote {out}: MNI maps, 2 pydicom files, a {SLICES}-slice DICOM series ({t2_style.name}), "
          f"a NIfTI volume ({pd_style.name})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    main(parser.parse_args().out)
