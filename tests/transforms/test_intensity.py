"""Invertible intensity normalization: range, dtype, metadata, exact round trips, MONAI inverse machinery."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from monai.data.meta_obj import set_track_meta
from monai.transforms import Compose, Invertd

from sgad_med.transforms import (
    DEFAULT_CT_WINDOW,
    CTWindowNormalize,
    CTWindowNormalized,
    MRPercentileNormalize,
    MRPercentileNormalized,
    NormalizationParams,
    ScanNormalize,
    ScanNormalized,
    denormalize,
    find_normalization_params,
    modality_kind,
    mr_percentile_range,
    normalize,
    quantization_step,
    roundtrip_tolerance,
)

AFFINE = torch.tensor(
    [[0.0, -0.8, 0.0, 10.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 5.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
)


def meta_image(array: np.ndarray) -> MetaTensor:
    """A float32 MetaTensor ``[C, H, W, D]`` with a non-trivial affine and some metadata, as ``load_scan`` gives."""
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32), affine=AFFINE.clone(), meta={"scan_id": "s-01"})


def ct_hu(shape=(1, 16, 12, 5), seed=0) -> np.ndarray:
    """Integer HU over the whole 12-bit range plus out-of-window padding (-3024, -2048) and metal (4000)."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1024, 3072, size=shape).astype(np.int16)
    flat = hu.reshape(-1)
    flat[:3] = [-1024, 3071, 0]
    flat[3:10] = -3024
    flat[10:12] = -2048
    flat[12:15] = 4000
    rng.shuffle(flat)
    return hu


def mr_raw(shape=(1, 20, 16, 6), seed=1) -> np.ndarray:
    """uint16 stored values with a zero background (a third of the volume) and a few bright outliers."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(200, 4000, size=shape).astype(np.uint16)
    raw[..., : shape[2] // 3, :] = 0
    raw.reshape(-1)[-5:] = 60000
    return raw


def assert_unit_float32(img01) -> None:
    values = torch.as_tensor(np.asarray(img01)) if isinstance(img01, np.ndarray) else img01
    assert values.dtype == torch.float32
    assert torch.isfinite(values).all()
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------- CT


def test_ct_window_maps_window_to_unit_range_and_clips():
    hu = meta_image(np.array([[[[-3024.0, -1024.0, 1023.5, 3071.0, 4000.0]]]]))
    norm = CTWindowNormalize()
    out = norm(hu)
    lo, hi = DEFAULT_CT_WINDOW
    expected = np.clip((hu.numpy() - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-7)
    params = norm.last_params
    assert (params.kind, params.lo, params.hi) == ("ct_window", lo, hi)
    np.testing.assert_array_equal(params.clipped_index, [0, 4])
    np.testing.assert_array_equal(params.clipped_values, [-3024.0, 4000.0])
    assert params.clipped_index.dtype == np.int64 and params.clipped_values.dtype == np.float32
    assert params.shape == (1, 1, 1, 5)


def test_ct_int16_round_trip_below_half_step_and_metadata_kept():
    hu = ct_hu()
    img = meta_image(hu)
    norm = CTWindowNormalize()
    out = norm(img)
    assert isinstance(out, MetaTensor)
    assert_unit_float32(out)
    assert torch.equal(out.affine, AFFINE) and out.meta["scan_id"] == "s-01"
    assert len(out.applied_operations) == 1
    assert norm.last_params.n_clipped == 12  # 7 x -3024, 2 x -2048, 3 x 4000

    back = norm.inverse(out)
    assert isinstance(back, MetaTensor) and back.dtype == torch.float32
    assert back.shape == img.shape and torch.equal(back.affine, AFFINE) and back.meta["scan_id"] == "s-01"
    assert len(back.applied_operations) == 0
    step = quantization_step(np.int16)
    error = float((back - img).abs().max())
    assert error < roundtrip_tolerance(step, 4000) == 0.5
    np.testing.assert_array_equal(np.round(back.numpy()).astype(np.int16), hu)  # re-quantizes exactly


def test_ct_dicom_slope_round_trip_requantizes_exactly():
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 8192, size=(1, 10, 10, 3)).astype(np.uint16)  # stored; HU = raw * 0.5 - 1024
    slope, intercept = 0.5, -1024.0
    hu = raw.astype(np.float64) * slope + intercept
    img = meta_image(hu)
    norm = CTWindowNormalize()
    back = norm.inverse(norm(img))
    step = quantization_step(np.uint16, slope)
    assert step == 0.5
    assert float((back - img).abs().max()) < 0.5 * step
    np.testing.assert_array_equal(np.round((back.numpy().astype(np.float64) - intercept) / slope), raw)


def test_custom_ct_window_and_invalid_windows():
    img = meta_image(ct_hu())
    norm = CTWindowNormalize(window=(-160, 240))
    out = norm(img)
    assert_unit_float32(out)
    inside = (img >= -160) & (img <= 240)
    assert norm.last_params.n_clipped == int((~inside).sum())
    assert float((norm.inverse(out) - img).abs().max()) < 0.5
    for bad in [(100.0, 100.0), (200.0, -200.0), (0.0, float("inf")), (1.0,)]:
        with pytest.raises(ValueError):
            CTWindowNormalize(window=bad)


# ---------------------------------------------------------------------------------------------------- MR


def test_mr_percentiles_use_nonzero_voxels():
    raw = mr_raw()
    values = raw.astype(np.float32) * np.float32(0.37) + np.float32(2.1)
    values[raw == 0] = 0.0
    foreground = values[values != 0]
    lo, hi = mr_percentile_range(torch.as_tensor(values))
    np.testing.assert_allclose([lo, hi], np.percentile(foreground, [0.5, 99.5]), rtol=1e-6)
    lo_all, _ = mr_percentile_range(values, nonzero=False)
    assert lo_all == 0.0 < lo  # the background would have pinned the lower percentile to 0

    norm = MRPercentileNormalize()
    out = norm(meta_image(values))
    assert_unit_float32(out)
    assert norm.last_params.kind == "mr_percentile"
    np.testing.assert_allclose([norm.last_params.lo, norm.last_params.hi], [lo, hi], rtol=1e-6)
    assert float(out[torch.as_tensor(values) == 0].max()) == 0.0  # background (below lo) clips to 0


def test_mr_float_slope_round_trip_requantizes_exactly():
    raw = mr_raw()
    slope, intercept = 0.37, 2.1
    scaled = raw.astype(np.float64) * slope + intercept
    img = meta_image(scaled)
    norm = MRPercentileNormalize()
    out = norm(img)
    assert norm.last_params.n_clipped > 0  # the outliers and the values below the lower percentile
    back = norm.inverse(out)
    step = quantization_step(np.uint16, slope)
    error = float((back - img).abs().max())
    assert error < step and error < roundtrip_tolerance(step, float(scaled.max()))
    np.testing.assert_array_equal(np.round((back.numpy().astype(np.float64) - intercept) / slope), raw)


def test_mr_random_float32_round_trip_relative_tolerance():
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=5.0, sigma=1.2, size=(1, 24, 20, 4)).astype(np.float32)
    img = meta_image(values)
    norm = MRPercentileNormalize(lower=1.0, upper=99.0)
    out = norm(img)
    assert_unit_float32(out)
    back = norm.inverse(out)
    tolerance = roundtrip_tolerance(quantization_step(np.float32), float(np.abs(values).max()), rtol=1e-5)
    assert float((back - img).abs().max()) < tolerance
    assert float(((back - img).abs() / img.abs()).max()) < 1e-5  # here also relative to each voxel


@pytest.mark.parametrize("normalizer", [MRPercentileNormalize(), CTWindowNormalize(), ScanNormalize("MR")])
@pytest.mark.parametrize("value", [0.0, 523.25, -7.0])
def test_constant_and_all_zero_images_do_not_divide_by_zero(normalizer, value):
    img = meta_image(np.full((1, 6, 5, 3), value, dtype=np.float32))
    out = normalizer(img)
    assert_unit_float32(out)
    params = normalizer.last_params
    assert params.hi > params.lo
    back = normalizer.inverse(out)
    assert torch.isfinite(back).all()
    assert float((back - img).abs().max()) <= 1e-4 * max(1.0, abs(value))


def test_mr_constant_foreground_on_zero_background():
    values = np.zeros((1, 8, 8, 2), dtype=np.float32)
    values[:, 2:6, 2:6] = 812.0
    img = meta_image(values)
    norm = MRPercentileNormalize()
    out = norm(img)
    assert_unit_float32(out)
    assert norm.last_params.lo == 812.0 and norm.last_params.hi == 813.0
    assert float(out.max()) == 0.0
    assert torch.equal(norm.inverse(out), img)  # background zeros were clipped, recorded and put back


def test_nan_image_is_refused():
    values = np.ones((1, 4, 4, 2), dtype=np.float32)
    values[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MRPercentileNormalize()(values)


def test_invalid_percentiles():
    for lower, upper in [(-1.0, 50.0), (50.0, 50.0), (10.0, 101.0)]:
        with pytest.raises(ValueError):
            MRPercentileNormalize(lower, upper)


# ---------------------------------------------------------------------------------------------- shapes, types


@pytest.mark.parametrize("shape", [(1, 9, 7, 1), (2, 9, 7, 4)])
def test_one_slice_and_two_channel_volumes(shape):
    hu = ct_hu(shape=shape, seed=5)
    img = meta_image(hu)
    for norm in (CTWindowNormalize(), MRPercentileNormalize()):
        out = norm(img)
        assert out.shape == img.shape
        assert_unit_float32(out)
        assert norm.last_params.shape == shape
        assert float((norm.inverse(out) - img).abs().max()) < 0.5


def test_non_contiguous_input_round_trips():
    hu = ct_hu(shape=(1, 5, 12, 16), seed=9)
    img = torch.as_tensor(hu, dtype=torch.float32).permute(0, 3, 2, 1)  # a strided view [1, 16, 12, 5]
    assert not img.is_contiguous()
    out, params = normalize(img, "CT")
    assert params.n_clipped > 0
    assert torch.equal(denormalize(out, params).round(), img)
    assert torch.equal(denormalize(out.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1), params).round(), img)


def test_numpy_and_plain_tensor_inputs():
    hu = ct_hu()
    out = CTWindowNormalize()(hu)  # as MONAI: numpy in -> MetaTensor out while meta tracking is on
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32

    out_np, params = normalize(hu, "CT")  # the functional pair keeps the container type
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    back_np = denormalize(out_np, params)
    assert isinstance(back_np, np.ndarray)
    np.testing.assert_array_equal(np.round(back_np), hu)

    set_track_meta(False)
    try:
        norm = CTWindowNormalize()
        plain = norm(torch.as_tensor(hu))
        assert type(plain) is torch.Tensor and plain.dtype == torch.float32
        assert norm.last_params is not None and norm.last_params.n_clipped == 12
        np.testing.assert_array_equal(denormalize(plain, norm.last_params).round().numpy(), hu)
    finally:
        set_track_meta(True)


# ------------------------------------------------------------------------------ denormalizing another tensor


def test_denormalize_network_output_is_linear_and_restores_clipped_optionally():
    hu = ct_hu()
    img = meta_image(hu)
    img01, params = normalize(img, "CT")
    assert isinstance(img01, MetaTensor) and len(img01.applied_operations) == 0  # functional: no trace
    prediction = img01.as_tensor() * 0.9  # a "network output": same shape, plain tensor, no trace
    lo, hi = params.lo, params.hi
    linear = lo + 0.9 * img01.as_tensor() * (hi - lo)

    raw = denormalize(prediction, params, restore_clipped=False)
    assert type(raw) is torch.Tensor
    torch.testing.assert_close(raw, linear, atol=1e-3, rtol=0)

    restored = denormalize(prediction, params)
    clipped = torch.zeros(img.numel(), dtype=torch.bool)
    clipped[torch.as_tensor(params.clipped_index)] = True
    clipped = clipped.reshape(img.shape)
    torch.testing.assert_close(restored[~clipped], linear[~clipped], atol=1e-3, rtol=0)
    assert torch.equal(restored[clipped], img.as_tensor()[clipped])  # original -3024 / -2048 / 4000 back

    with pytest.raises(ValueError, match="restore_clipped=False"):
        denormalize(prediction[..., :2], params)
    sliced = denormalize(prediction[..., :2], params, restore_clipped=False)  # a slice batch: linear only
    torch.testing.assert_close(sliced, linear[..., :2], atol=1e-3, rtol=0)


def test_params_serialise_and_come_back_from_the_trace():
    img = meta_image(ct_hu())
    norm = ScanNormalize()
    out = norm(img, modality="CT")
    params = find_normalization_params(out)
    assert params.n_clipped == norm.last_params.n_clipped == 12
    text = json.dumps(params.to_dict(as_lists=True))
    again = NormalizationParams.from_dict(json.loads(text))
    assert (again.kind, again.lo, again.hi, again.shape) == (params.kind, params.lo, params.hi, params.shape)
    np.testing.assert_array_equal(again.clipped_index, params.clipped_index)
    np.testing.assert_array_equal(again.clipped_values, params.clipped_values)
    assert torch.equal(denormalize(out, json.loads(text)), denormalize(out, params))
    assert len(out.applied_operations) == 1  # find_normalization_params leaves the trace in place
    with pytest.raises(ValueError):
        find_normalization_params(meta_image(ct_hu()))
    with pytest.raises(ValueError):
        NormalizationParams("ct_window", 1.0, 1.0)


# ---------------------------------------------------------------------------------------------- modality


def test_scan_normalize_picks_by_modality():
    assert modality_kind("CT") == "ct_window"
    assert modality_kind("mr") == modality_kind(" OT ") == "mr_percentile"
    with pytest.raises(ValueError):
        modality_kind("PT")
    with pytest.raises(ValueError):
        ScanNormalize("US")

    hu = meta_image(ct_hu())
    norm = ScanNormalize()
    norm(hu, modality="CT")
    assert (norm.last_params.kind, norm.last_params.lo, norm.last_params.hi) == ("ct_window", -1024.0, 3071.0)
    out = norm(hu, modality="OT")
    assert norm.last_params.kind == "mr_percentile"
    assert float((norm.inverse(out) - hu).abs().max()) < 0.5
    with pytest.raises(ValueError, match="modality"):
        norm(hu)
    assert ScanNormalize("MR")(hu).applied_operations[-1]["extra_info"]["kind"] == "mr_percentile"


def test_normalize_with_params_equals_the_functional_form_and_leaves_no_trace():
    hu = meta_image(ct_hu())
    norm = ScanNormalize(window=(-200.0, 400.0), lower=2.0, upper=98.0)
    for modality, expected in (("CT", normalize(hu, "CT", window=(-200.0, 400.0))),
                               ("MR", normalize(hu, "MR", lower=2.0, upper=98.0))):
        out, params = norm.normalize_with_params(hu, modality)
        assert torch.equal(out.as_tensor(), expected[0].as_tensor())
        assert (params.kind, params.lo, params.hi) == (expected[1].kind, expected[1].lo, expected[1].hi)
        assert len(out.applied_operations) == 0 and norm.last_params is None  # reentrant: no trace, no state
    assert norm.settings == {"window": [-200.0, 400.0], "lower": 2.0, "upper": 98.0, "nonzero": True}
    assert ScanNormalize().settings != norm.settings


# ---------------------------------------------------------------------------------------- dictionary forms


def test_dictionary_forms_and_inverse():
    hu = meta_image(ct_hu())
    mr = meta_image(mr_raw().astype(np.float32) * 0.37)
    data = {"image": hu, "mr": mr, "label": torch.ones(1)}
    ct_d = CTWindowNormalized(keys=["image", "missing"], allow_missing_keys=True)
    mr_d = MRPercentileNormalized(keys="mr")
    out = mr_d(ct_d(data))
    assert out["label"] is data["label"]
    assert_unit_float32(out["image"])
    assert_unit_float32(out["mr"])
    assert set(ct_d.last_params) == {"image"} and ct_d.last_params["image"].n_clipped == 12
    assert mr_d.last_params["mr"].kind == "mr_percentile"

    back = ct_d.inverse(mr_d.inverse(out))
    assert float((back["image"] - hu).abs().max()) < 0.5
    assert float((back["mr"] - mr).abs().max()) < 0.37 / 2
    assert torch.equal(back["image"].affine, AFFINE)
    with pytest.raises(KeyError):
        CTWindowNormalized(keys="missing")(data)


def test_scan_normalized_reads_modality_from_the_dict():
    hu = meta_image(ct_hu())
    norm = ScanNormalized(keys="image")
    out = norm({"image": hu, "modality": "CT"})
    assert norm.last_params["image"].kind == "ct_window"
    out_mr = norm({"image": hu, "modality": "MR"})
    assert norm.last_params["image"].kind == "mr_percentile"
    assert not torch.equal(out["image"], out_mr["image"])
    assert float((norm.inverse(out)["image"] - hu).abs().max()) < 0.5
    assert ScanNormalized(keys="image", modality="CT")({"image": hu})["image"].shape == hu.shape
    with pytest.raises(ValueError, match="modality"):
        norm({"image": hu})


def test_compose_inverse_and_invertd_on_a_prediction():
    hu = meta_image(ct_hu())
    pre = Compose([CTWindowNormalized(keys="image")])
    d = pre({"image": hu})
    assert float((pre.inverse(dict(d))["image"] - hu).abs().max()) < 0.5

    d = pre({"image": hu})
    params = find_normalization_params(d["image"])
    d["pred"] = MetaTensor(d["image"].as_tensor() * 0.9)  # a network output with no trace of its own
    inverted = Invertd(keys="pred", transform=pre, orig_keys="image")(d)["pred"]
    torch.testing.assert_close(inverted.as_tensor(), denormalize(d["pred"].as_tensor(), params), atol=0, rtol=0)
    assert torch.equal(inverted.affine, AFFINE)

    no_restore = Compose([CTWindowNormalized(keys="image", restore_clipped=False)])
    d = no_restore({"image": hu})
    d["pred"] = MetaTensor(d["image"].as_tensor() * 0.9)
    inverted = Invertd(keys="pred", transform=no_restore, orig_keys="image")(d)["pred"]
    expected = denormalize(d["pred"].as_tensor(), params, restore_clipped=False)
    torch.testing.assert_close(inverted.as_tensor(), expected, atol=0, rtol=0)


def test_collated_batch_decollates_and_inverts():
    norm = MRPercentileNormalize()
    images = [meta_image(mr_raw(seed=s).astype(np.float32)) for s in (1, 2)]
    outs = [norm(img) for img in images]
    assert outs[0].applied_operations[0]["extra_info"]["clipped_index"].shape != (0,)
    batch = list_data_collate(outs)
    assert batch.shape == (2, *images[0].shape)
    for item, original in zip(decollate_batch(batch), images, strict=True):
        assert float((norm.inverse(item) - original).abs().max()) < 0.5


# ---------------------------------------------------------------------------------------------- helpers


def test_quantization_step_and_tolerance():
    assert quantization_step(np.int16) == 1.0
    assert quantization_step("uint16", 0.37) == pytest.approx(0.37)
    assert quantization_step(np.int16, -2.0) == 2.0
    assert quantization_step(np.int32, 0.0) == quantization_step(np.uint8, None) == quantization_step(np.int8, np.nan)
    assert quantization_step(np.int8, np.nan) == 1.0
    assert quantization_step(np.float32, 0.5) == 0.0
    assert quantization_step(torch.int16) == 1.0 and quantization_step(torch.float64) == 0.0
    assert roundtrip_tolerance(1.0, 4000.0) == 0.5
    assert roundtrip_tolerance(0.0, 2000.0, rtol=1e-5) == pytest.approx(0.02)
    assert roundtrip_tolerance(0.0, 0.0) > 0.0


@pytest.mark.parametrize(
    "relative", ["dicom/CT_small.dcm", "dicom/MR_small.dcm", "synthetic_mr_series", "synthetic_mr.nii.gz"]
)
def test_round_trip_on_sample_scans_is_below_their_quantization_step(relative):
    """End to end on real files: load_scan -> normalize -> denormalize stays within half a stored step."""
    import sgad_med
    from tests.conftest import SAMPLE_DATA

    scan = sgad_med.load_scan(SAMPLE_DATA / relative)
    assert scan.quantization_step > 0
    img01, params = normalize(scan.image, modality=scan.modality)
    assert float(img01.min()) >= 0.0 and float(img01.max()) <= 1.0
    back = denormalize(img01, params)
    error = float((torch.as_tensor(back) - scan.image.as_tensor()).abs().max())
    assert error < 0.5 * scan.quantization_step
