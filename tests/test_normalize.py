"""The shared input normalisation: dtypes, NaN, constant, RGB, stacks, tiny images."""

import dataclasses

import numpy as np
import pytest

from napari_kaizen.engines._common import InputError, InputWarning, iter_planes, prepare_image, to_plane


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64,
                                   np.float16, np.float32, np.float64, bool])
def test_every_dtype_gives_float32_unit_range(dtype, rng):
    # A smooth ramp: contrast without noise (pure noise is deliberately not stretched).
    ramp = np.add.outer(np.arange(32.0), np.arange(32.0)) / 62.0
    if dtype is bool:
        img = ramp > 0.5
    else:
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        hi = min(1000, info.max) if info else 1000.0
        img = (ramp * hi).astype(dtype)
    out = prepare_image(img)
    assert out.dtype == np.float32 and out.shape == (32, 32)
    assert np.percentile(out, 1) == pytest.approx(0.0, abs=1e-3)
    assert np.percentile(out, 99.8) == pytest.approx(1.0, abs=1e-2)


def test_pure_noise_is_not_stretched_to_full_range(rng):
    """An empty field (noise only) stays dim; a field with objects spans [0, 1]."""
    noise = rng.normal(100.0, 5.0, (128, 128)).astype(np.float32)
    # p1..p99.8 of Gaussian noise spans 5.2 SDs, stretched to at least 8 SDs.
    assert np.percentile(prepare_image(noise), 99.8) < 0.75
    with_object = noise.copy()
    with_object[40:60, 40:60] += 200.0
    assert prepare_image(with_object).max() > 0.99


def test_empty_fields_are_recognised():
    """Empty twins of random fields are called empty, and not one field with nuclei is
    (including a strongly uneven background at high photon counts, whose ripples once
    passed for objects)."""
    from napari_kaizen.data import SynthParams, random_params, synthesize
    from napari_kaizen.engines._common.normalize import empty_field_message

    rng = np.random.default_rng(10_900)
    called_empty = []
    for k in range(8):
        p = random_params(rng, shape=(128, 128))
        # Empty: no nuclei, and none of the unlabelled debris / micronuclei either.
        empty = synthesize(SynthParams(**{**p.__dict__, "density": 0.0, "debris": 0.0, "micronuclei": 0.0}),
                           seed=10_900 + k)
        full = synthesize(p, seed=10_900 + k)
        message = empty_field_message(prepare_image(empty.nuclei))
        called_empty.append(message is not None and message.startswith("no objects"))
        if full.n_nuclei:
            assert empty_field_message(prepare_image(full.nuclei)) is None
    assert all(called_empty), called_empty


def test_dim_noisy_fields_and_small_crops_are_not_called_empty():
    """Regression: at 30 photons per pixel, plainly visible nuclei scored 5.6-6.4 noise SDs
    and were reported as an empty field; a crop a little larger than one nucleus has no
    background to measure against."""
    from napari_kaizen.data import SynthParams, synthesize
    from napari_kaizen.engines._common.normalize import empty_field_message

    p = SynthParams(shape=(256, 256), density=0.35, photons=30.0, read_noise=7.5,
                    background_unevenness=0.6, haze=0.15)
    for seed in (3, 4):
        field = synthesize(p, seed=seed)
        assert field.n_nuclei > 50
        assert empty_field_message(prepare_image(field.nuclei)) is None
        empty = synthesize(SynthParams(**{**p.__dict__, "density": 0.0}), seed=seed)
        assert empty_field_message(prepare_image(empty.nuclei)).startswith("no objects")
    crop = synthesize(SynthParams(shape=(128, 128), density=0.4), seed=3).nuclei[40:64, 40:64]
    assert empty_field_message(prepare_image(crop)) is None


def test_nan_and_inf_are_filled_with_a_warning(rng):
    img = rng.random((20, 20)).astype(np.float32)
    img[3, 4] = np.nan
    img[5, 6] = np.inf
    with pytest.warns(InputWarning, match="2 NaN"):
        out = prepare_image(img)
    assert np.isfinite(out).all()


def test_all_nan_is_refused():
    with pytest.raises(InputError, match="no finite pixels"):
        prepare_image(np.full((20, 20), np.nan))


def test_constant_image_is_refused_in_one_line():
    with pytest.raises(InputError, match="constant") as info:
        prepare_image(np.full((20, 20), 7, np.uint16))
    assert "\n" not in str(info.value)


def test_sparse_objects_on_flat_background_still_normalise():
    img = np.zeros((50, 50), np.uint16)
    img[10:12, 10:12] = 500  # fewer bright pixels than the 99.8th percentile sees
    out = prepare_image(img)
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0


def test_a_few_nuclei_on_a_wide_empty_field_are_normalised_by_their_brightness(rng):
    """Three nuclei on a 1024 x 1024 field: the 99.8th percentile is noise, and taking it as
    the top of the range stretched the noise to full range and the nuclei to 10; their
    small share of the field's variance also had it called noise without structure."""
    from napari_kaizen.engines._common.normalize import field_message, sparse_field

    yy, xx = np.mgrid[:1024, :1024]
    nuclei = np.zeros((1024, 1024), bool)
    for cy, cx in [(200, 300), (640, 150), (800, 820)]:
        nuclei |= np.hypot(yy - cy, xx - cx) < 8
    img = rng.normal(10.0, 2.0, nuclei.shape) + 100.0 * nuclei
    img = np.clip(np.round(img), 0, None).astype(np.uint16)
    assert sparse_field(img)
    out = prepare_image(img)
    assert 0.5 < np.median(out[nuclei]) < 1.2
    assert np.percentile(out[~nuclei], 99) < 0.1
    assert field_message(img) is None
    # A dense field is not sparse: its range is its own 1st-99.8th percentiles as before.
    grid = np.hypot((yy % 60) - 30, (xx % 60) - 30) < 8
    dense = np.clip(np.round(rng.normal(10.0, 2.0, grid.shape) + 100.0 * grid), 0, None).astype(np.uint16)
    assert not sparse_field(dense)
    lo, hi = np.percentile(dense.astype(np.float32), [1, 99.8])
    assert np.allclose(prepare_image(dense), (dense - lo) / (hi - lo), atol=1e-5)


def test_a_sparse_slide_is_decided_for_the_whole_image_from_crops(rng):
    """A tiled run decides once, from crops of the whole image, whether it is a few nuclei
    on a wide empty field; every tile (crowded or empty) then follows that decision and
    is normalised by the whole image's objects, not by its noise or by its own pixels."""
    from napari_kaizen.engines._common.normalize import (
        MIN_CONTRAST_SD,
        SPARSE_SHARE,
        WholeImageStats,
        pixels_standing_out,
        share_standing_out,
        sparse_field,
        whole_image_stats,
    )

    yy, xx = np.mgrid[:512, :512]
    blob = np.hypot(yy - 256, xx - 256) < 8
    empty = [rng.normal(10.0, 2.0, (512, 512)) for _ in range(8)]
    one = empty[0] + 100.0 * blob
    assert share_standing_out([one, *empty[1:]]) < SPARSE_SHARE
    objects = pixels_standing_out([one, *empty[1:]])
    assert blob.sum() * 0.8 <= objects.size <= blob.sum() * 2 and np.median(objects) > 60
    assert pixels_standing_out(empty).size == 0
    grid = np.hypot((yy % 60) - 30, (xx % 60) - 30) < 8
    crowded = rng.normal(10.0, 2.0, grid.shape) + 100.0 * grid
    assert share_standing_out([crowded, crowded]) > SPARSE_SHARE
    assert share_standing_out([crowded[:50, :50]]) is None  # too small to measure: no decision
    # Inside a tiled run a crowded tile of a sparse slide is treated as sparse, and
    # normalised by the slide's objects: the same scale in every tile.
    sample = np.concatenate([e.ravel()[::97] for e in empty]).astype(np.float32)
    stats = WholeImageStats(sample=sample, noise=2.0, sparse=True, sparse_objects=objects)
    with whole_image_stats(stats):
        assert sparse_field(crowded)
        out = prepare_image(crowded)
    top = np.percentile(objects, 99.8)
    lo = np.percentile(sample, 1)
    assert np.allclose(out, (crowded - lo) / (top - lo), atol=1e-4)
    with whole_image_stats(dataclasses.replace(stats, sparse=False, sparse_objects=None)):
        assert not sparse_field(one)
    # Not decided for the whole image (a label-free input): each array decides, and
    # tiles keep the shared range.
    with whole_image_stats(dataclasses.replace(stats, sparse=None, sparse_objects=None)):
        assert sparse_field(one) and not sparse_field(crowded)
        assert np.allclose(prepare_image(one), (one - lo) / (max(np.percentile(sample, 99.8), lo + MIN_CONTRAST_SD * 2.0) - lo),
                           atol=1e-4)


def test_rgb_needs_a_channel(rng):
    # Colour on a dark field (bright specks: a composite of fluorescence stains); a
    # colour picture of a bright field is read as its luminance (tests/test_polarity.py).
    rgb = (rng.random((20, 20, 3)) ** 3 * 255).astype(np.uint8)
    with pytest.raises(InputError, match="RGB"):
        prepare_image(rgb)
    assert prepare_image(rgb, channel=1).shape == (20, 20)
    with pytest.raises(InputError, match="channel 5"):
        prepare_image(rgb, channel=5)


def test_a_grey_image_stored_as_colour_is_read_as_grey(rng):
    """DSB2018's PNGs, ImageJ "RGB Color" exports, screenshots: one stain in equal channels."""
    grey = (rng.random((20, 20)) ** 3 * 200).astype(np.uint8)  # bright specks on a dark field
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_array_equal(prepare_image(rgba), prepare_image(grey))
    # A JPEG of a grey image: its channels differ by a grey level here and there.
    jpeg = np.dstack([grey, grey + (rng.random(grey.shape) < 0.3), grey]).astype(np.uint8)
    np.testing.assert_array_equal(prepare_image(jpeg), prepare_image(grey))
    assert [idx for idx, _ in iter_planes(rgba)] == [()]
    two_stains = rgba.copy()
    two_stains[..., 1] //= 2
    masked = rgba.copy()
    masked[:5, :, 3] = 0  # transparency is not part of a grey micrograph
    for colour, why in ((two_stains, "on a dark field: pick one channel.*--channel N.*channels differ"),
                        (masked, "its colours are one grey image but its transparency \\(alpha\\) varies.*--channel 0")):
        with pytest.raises(InputError, match=f"colour RGB.*{why}"):
            prepare_image(colour)
        with pytest.raises(InputError, match=f"colour RGB.*{why}"):
            list(iter_planes(colour))
    np.testing.assert_array_equal(prepare_image(masked, channel=0), prepare_image(grey))
    np.testing.assert_array_equal(prepare_image(two_stains, channel=1), prepare_image(grey // 2))


def test_stacks_need_a_plane(rng):
    stack = rng.random((4, 20, 20))
    with pytest.raises(InputError, match="stack of 4 planes"):
        prepare_image(stack)
    assert prepare_image(stack, plane=2).shape == (20, 20)
    with pytest.raises(InputError, match="outside"):
        prepare_image(stack, plane=9)
    assert [idx for idx, _ in iter_planes(rng.random((2, 3, 10, 10)))] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # A (z, c) hyperstack needs one index per leading axis, and the line says so.
    with pytest.raises(InputError, match=r"stack of 6 planes .* \(plane=\(i, j\), CLI --plane i,j, one index for each"):
        prepare_image(rng.random((2, 3, 20, 20)))


def test_three_8bit_planes_are_told_they_may_be_a_colour_slide_plain_as_tiled(rng):
    # tifffile writes any (3, H, W) array as three planes, so a colour slide stored
    # channels first reads as a stack; the tiled run's refusal said so, the plain one
    # did not (one hint, io.images.colour_slide_hint, for both).
    from napari_kaizen.io.zarr import squeeze_to_2d

    slide = (rng.random((3, 20, 20)) * 255).astype(np.uint8)
    for refuse in (lambda a: to_plane(a), lambda a: squeeze_to_2d(a, name="image")):
        with pytest.raises(InputError, match=r"three 8-bit channels: a colour slide\? --plane 1 takes its green one"):
            refuse(slide)
        with pytest.raises(InputError) as exc:
            refuse(slide.astype(np.uint16))  # 16-bit planes are fluorescence channels
        assert "colour slide" not in str(exc.value)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(10), "1 dimension"),
    (np.zeros((4, 4)), "too small"),
    (np.zeros((10, 10), complex), "complex"),
    (np.array([["a"] * 10] * 10), "dtype"),
    (None, "no image"),
])
def test_other_bad_inputs(bad, match):
    with pytest.raises(InputError, match=match):
        prepare_image(bad)


def test_a_plane_of_a_single_plane_is_refused(rng):
    # A plane index for a 2-D or colour image was ignored: the whole image ran.
    grey = rng.random((20, 20))
    colour = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    for image, channel, kind in ((grey, None, "2-D plane"), (colour, None, "2-D colour image"), (colour, 1, "2-D plane")):
        with pytest.raises(InputError, match=f"plane 2 was given but the image .* is a single {kind}, not a stack"):
            to_plane(image, channel=channel, plane=2)
    # An empty index (a 2-D image's index in iter_planes) is no plane.
    assert to_plane(grey, plane=()).shape == (20, 20)


def test_to_plane_returns_a_view_for_stacks(rng):
    stack = rng.random((3, 16, 16))
    assert np.shares_memory(to_plane(stack, plane=1), stack)
