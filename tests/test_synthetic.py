"""The synthetic micrograph generator."""

import numpy as np
import pytest

from napari_kaizen.data import SynthParams, random_params, synthesize, synthesize_stack
from napari_kaizen.engines._common import median_diameter


def test_same_seed_same_field():
    a = synthesize(seed=5, shape=(96, 96))
    b = synthesize(seed=5, shape=(96, 96))
    np.testing.assert_array_equal(a.nuclei, b.nuclei)
    np.testing.assert_array_equal(a.cell_labels, b.cell_labels)
    c = synthesize(seed=6, shape=(96, 96))
    assert not np.array_equal(a.nucleus_labels, c.nucleus_labels)


def test_channels_are_paired_with_labels():
    f = synthesize(seed=1, shape=(192, 192), density=0.3)
    assert f.nuclei.shape == f.membrane.shape == f.label_free.shape == (192, 192)
    assert f.nuclei.dtype == np.uint16 and f.label_free.dtype == np.float32
    ids = np.unique(f.nucleus_labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))
    # Every nucleus lies inside the cell with its id.
    inside = f.nucleus_labels > 0
    assert np.array_equal(f.cell_labels[inside], f.nucleus_labels[inside])
    # Nuclei are brighter than background in the DAPI-like channel.
    assert f.nuclei[inside].mean() > 3 * f.nuclei[~(f.cell_labels > 0)].mean()
    # The membrane channel is brightest at cell borders.
    from skimage.segmentation import find_boundaries

    rim = find_boundaries(f.cell_labels, mode="inner")
    assert f.membrane[rim].mean() > f.membrane[(f.cell_labels > 0) & ~rim].mean()
    # The label-free channel carries the cells: it differs inside cells vs background.
    from scipy import ndimage as ndi

    lf = f.label_free.astype(np.float64)
    texture = ndi.gaussian_gradient_magnitude(lf, 1.5)
    far = ndi.distance_transform_edt(f.cell_labels == 0) > 6
    assert texture[f.cell_labels > 0].mean() > 1.5 * texture[far].mean()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_dtypes(dtype):
    f = synthesize(seed=2, shape=(64, 64), dtype=dtype)
    assert f.nuclei.dtype == np.dtype(dtype) and f.membrane.dtype == np.dtype(dtype)


def test_controls_act():
    sparse = synthesize(seed=3, shape=(256, 256), density=0.08)
    dense = synthesize(seed=3, shape=(256, 256), density=0.45, touching=1.0)
    assert dense.n_nuclei > 3 * sparse.n_nuclei
    big = synthesize(seed=3, shape=(256, 256), nucleus_diameter=30, density=0.2)
    assert 24 < median_diameter(big.nucleus_labels) < 36
    # Touching: the dense field has many nuclei in contact with another nucleus.
    from scipy import ndimage as ndi

    lab = dense.nucleus_labels
    grown = ndi.grey_dilation(lab, size=3)
    contacts = np.unique(lab[(grown != lab) & (lab > 0) & (grown > 0)])
    assert len(contacts) > 0.3 * dense.n_nuclei


def test_random_params_are_varied_and_valid():
    rng = np.random.default_rng(0)
    ps = [random_params(rng) for _ in range(20)]
    assert len({p.label_free for p in ps}) > 1 and len({p.dtype for p in ps}) > 1
    assert np.std([p.density for p in ps]) > 0.03
    for p in ps[:3]:
        synthesize(p, seed=1)


def test_stacks():
    z = synthesize_stack(seed=1, shape=(96, 96), n_planes=5, axis="z")
    assert z.nuclei.shape == (5, 96, 96) and z.nucleus_labels.shape == (5, 96, 96)
    counts = [len(np.unique(p)) - 1 for p in z.nucleus_labels]
    assert counts[2] >= max(counts[0], counts[-1])  # middle plane cuts the most nuclei
    t = synthesize_stack(seed=1, shape=(96, 96), n_planes=3, axis="t")
    assert t.nuclei.shape == (3, 96, 96)
    assert not np.array_equal(t.nucleus_labels[0], t.nucleus_labels[2])  # cells move


def test_bad_params():
    with pytest.raises(ValueError, match="dtype"):
        SynthParams(dtype="int7")
    with pytest.raises(ValueError, match="shape"):
        SynthParams(shape=(4, 4))
