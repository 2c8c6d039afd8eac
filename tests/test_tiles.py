"""The register tile and the panel products of generation, against a NumPy fma chain."""

import numpy as np
import pytest

from charlm.sampling import add_rows, as_panels, pack_panels, unit_bounds
from charlm.tiles import PANEL, SHAPES, tile_shape


def fma_chain(X: np.ndarray, M: np.ndarray, z: np.ndarray) -> np.ndarray:
    """z + X M in float32 with one rounding per k, in order of k: what the tiles compute.

    A float32 product is exact in float64, so (x m + z) rounded to float64 and then to float32
    is the fused multiply-add in all but astronomically rare double-rounding cases; the data
    here is fixed, so a pass is a pass for good.
    """
    z = z.astype(np.float32).copy()
    for k in range(X.shape[1]):
        exact = X[:, k, None].astype(np.float64) * M[k].astype(np.float64) + z
        z = exact.astype(np.float32)
    return z


@pytest.mark.parametrize("B", [1, 2, 3, 4, 5, 6, 7, 11, 16, 33])
@pytest.mark.parametrize("K, width", [(40, 160), (256, 64), (7, 16), (13, 40), (20, 5)])
def test_add_rows_is_the_fma_chain(B, K, width):
    rng = np.random.default_rng(B * 1000 + K + width)
    M = rng.standard_normal((K, width)).astype(np.float32)
    # X as a strided view (one layer of a (B, L, K) state), as the step passes it
    X = rng.standard_normal((B, 3, K)).astype(np.float32)[:, 1]
    j0 = 8  # the product lands in columns j0 .. j0+width of wider rows; the rest stays
    z0 = rng.standard_normal((B, j0 + width + 24)).astype(np.float32)
    z = z0.copy()
    add_rows(X, as_panels(M), z, j0, width)
    want = fma_chain(X, M, z0[:, j0 : j0 + width])
    np.testing.assert_array_equal(z[:, j0 : j0 + width], want)
    np.testing.assert_array_equal(z[:, :j0], z0[:, :j0])
    np.testing.assert_array_equal(z[:, j0 + width :], z0[:, j0 + width :])
    # and within float32 rounding of the float64 product
    exact = z0[:, j0 : j0 + width].astype(np.float64) + X.astype(np.float64) @ M
    np.testing.assert_allclose(z[:, j0 : j0 + width], exact, rtol=1e-4, atol=1e-4)


def test_a_stream_sums_the_same_alone_or_in_any_batch():
    rng = np.random.default_rng(7)
    K, width = 64, 96
    Mp = as_panels(rng.standard_normal((K, width)).astype(np.float32))
    X = rng.standard_normal((13, K)).astype(np.float32)
    alone = np.zeros((13, width), np.float32)
    for n in range(13):
        add_rows(X[n : n + 1], Mp, alone[n : n + 1], 0, width)
    for B in range(1, 14):
        z = np.zeros((B, width), np.float32)
        add_rows(X[:B], Mp, z, 0, width)
        np.testing.assert_array_equal(z, alone[:B])


def test_every_batch_size_gets_a_compiled_tile_shape():
    for B in range(1, 200):
        r, q = tile_shape(B)
        assert (r, q) in SHAPES and r <= B
        # every stream block and every run of panels is a compiled shape too
        assert all((r2, q2) in SHAPES for r2 in range(1, r + 1) for q2 in range(1, q + 1))


def test_pack_panels_keeps_each_parts_columns_in_order():
    rng = np.random.default_rng(3)
    H, G = 40, 4  # parts of 32 and 8 units: 128 and 32 columns
    M = rng.standard_normal((5, G * H)).astype(np.float32)
    bounds = unit_bounds(H, 2)
    panels = pack_panels(M, bounds, G)
    for part, (u0, u1) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        cols = np.concatenate(list(panels[part]), axis=1)  # (K, n_panels * PANEL)
        w = G * (u1 - u0)
        np.testing.assert_array_equal(cols[:, :w], M[:, G * u0 : G * u1])
        assert not cols[:, w:].any() and cols.shape[1] % PANEL == 0
