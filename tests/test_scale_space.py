"""The size estimate's filters: the same numbers as scipy's, by a faster road."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_kaizen.engines._common.scale import _convex_enough, _Spectrum


@pytest.mark.parametrize("shape", [(300, 257), (40, 64), (20, 30)])
def test_fourier_filters_are_scipys_gaussians(shape):
    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(rng.random(shape).astype(np.float32), 1.0)
    sigmas = [1.8, 2.5, 3.9, 6.0]
    spectrum = _Spectrum(img, max(int(4 * s + 0.5) for s in sigmas))
    for s in sigmas:
        log = -(s * s) * ndi.gaussian_laplace(img, s)
        blur = ndi.gaussian_filter(img, s)
        got_log, got_blur = spectrum.filtered(s, laplacian=True), spectrum.filtered(s, laplacian=False)
        assert got_log.shape == got_blur.shape == shape
        assert np.abs(got_log - log).max() <= 1e-5 * np.abs(log).max()
        assert np.abs(got_blur - blur).max() <= 1e-5 * np.abs(blur).max()
    with pytest.raises(ValueError, match="reaches"):
        _Spectrum(img, 4).filtered(3.0, laplacian=True)


def test_convexity_by_the_octave_bound_is_regionprops_solidity():
    from skimage.measure import regionprops

    rng = np.random.default_rng(1)
    regions = 0
    for _ in range(60):
        mask = ndi.gaussian_filter(rng.random((60, 60)), rng.uniform(1, 4)) > rng.uniform(0.5, 0.6)
        for prop in regionprops(ndi.label(mask)[0]):
            regions += 1
            for level in (0.8, 0.9, 0.95):
                assert _convex_enough(prop, level) == (not prop.solidity < level)
    assert regions > 200
