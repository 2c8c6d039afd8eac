"""The GEMM micro-kernel and the panel products of generation, against their definition: a NumPy
fma chain, and the micro-kernel's own plain-loop reference, bit for bit."""

import numba as nb
import numpy as np
import pytest

from charlm.gemm import (
    MAX_ROWS,
    PANEL,
    SHAPES,
    add_rows,
    as_panels,
    as_panels_into,
    matmul,
    micro_shape,
    microkernel,
    microkernel_reference,
)
from charlm.generate.packing import pack_panels, unit_bounds


def fma_chain(X: np.ndarray, M: np.ndarray, z: np.ndarray) -> np.ndarray:
    """z + X M in float32 with one rounding per k, in order of k: what the micro-kernel computes.

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


def test_every_batch_size_gets_a_compiled_micro_kernel_shape():
    for B in range(1, 200):
        r, q = micro_shape(B)
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


@nb.njit
def run_microkernel(X, Mp, z):
    microkernel(X, Mp, z)


def test_the_micro_kernel_is_its_definition_on_every_shape():
    rng = np.random.default_rng(11)
    for r, q in SHAPES:
        for K in (1, 5, 64):
            X = rng.standard_normal((r, 2, K)).astype(np.float32)[:, 1]  # strided, as the step
            Mp = rng.standard_normal((q, K, PANEL)).astype(np.float32)
            z0 = rng.standard_normal((r, PANEL * q)).astype(np.float32)
            fast, slow = z0.copy(), z0.copy()
            run_microkernel(X, Mp, fast)
            microkernel_reference(X, Mp, slow)
            np.testing.assert_array_equal(fast, slow, err_msg=f"shape {r}x{q}, K {K}")
            M = np.concatenate(list(Mp), axis=1)
            np.testing.assert_array_equal(slow, fma_chain(X, M, z0))


def test_a_shape_it_was_not_compiled_for_leaves_z_alone():
    r = MAX_ROWS + 1  # no compiled shape has that many streams
    z = np.ones((r, PANEL), np.float32)
    run_microkernel(np.ones((r, 3), np.float32), np.ones((1, 3, PANEL), np.float32), z)
    assert (z == 1).all()


GENERIC_CPU = """
import re
import numba as nb
import numpy as np
from charlm.gemm import add_rows, as_panels

rng = np.random.default_rng(5)
X = rng.standard_normal((5, 33)).astype(np.float32)
M = rng.standard_normal((33, 40)).astype(np.float32)
z = np.zeros((5, 40), np.float32)
add_rows(X, as_panels(M), z, 0, 40)
np.save("out.npy", z)
fresh = nb.njit(cache=False)(add_rows.py_func)
sig = fresh.compile("(float32[:, ::1], float32[:, :, ::1], float32[:, ::1], int64, int64)")
asm = fresh.inspect_asm(fresh.signatures[0])
print(len(re.findall(r"vfmadd|ymm", asm)))
"""


def test_the_micro_kernel_works_without_avx_or_fma(tmp_path):
    """Built for a generic x86-64 (SSE2 only, no FMA instruction) it computes the same bits."""
    import os
    import platform
    import subprocess
    import sys

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the generic build is an x86-64 one")
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", GENERIC_CPU], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"  # no fma and no 256-bit register in the generic code
    rng = np.random.default_rng(5)
    X = rng.standard_normal((5, 33)).astype(np.float32)
    M = rng.standard_normal((33, 40)).astype(np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"),
                                  fma_chain(X, M, np.zeros((5, 40), np.float32)))


@pytest.mark.parametrize("B, K, W", [(32, 40, 160), (7, 20, 80), (3, 80, 20)])
def test_training_matmul_is_the_fma_chain_in_float32_and_blas_in_float64(B, K, W):
    """matmul, the recurrent product of training: h U and dz U^T (M a transposed view, and a
    last partial panel when W is not a multiple of 16) through panels packed into a buffer."""
    rng = np.random.default_rng(B)
    X = rng.standard_normal((B, K)).astype(np.float32)
    U = rng.standard_normal((W, K)).astype(np.float32)
    M = U.T  # a strided view, as training passes U.T
    Mp = np.full((-(-W // PANEL), K, PANEL), np.nan, np.float32)  # every slot is written
    as_panels_into(M, Mp)
    np.testing.assert_array_equal(Mp, as_panels(np.ascontiguousarray(M)))
    Y = np.full((B, W), np.nan, np.float32)  # overwritten, not accumulated into
    nb.njit(lambda X, M, Mp, Y: matmul(X, M, Mp, Y))(X, M, Mp, Y)
    np.testing.assert_array_equal(Y, fma_chain(X, M, np.zeros((B, W), np.float32)))
    X64, M64 = X.astype(np.float64), M.astype(np.float64)
    Y64 = np.full((B, W), np.nan)
    nb.njit(lambda X, M, Mp, Y: matmul(X, M, Mp, Y))(X64, M64, Mp[:0], Y64)
    np.testing.assert_allclose(Y64, X64 @ M64, rtol=1e-12, atol=1e-12)
