"""The small GEMM of the recurrent loops: z += X M for a batch of streams, M stored as panels.

Generation runs it for every layer of every step; training for h_{t-1} U and dz_t U^T inside
the time loops (matmul), where BLAS would pack U afresh at every step: the panels are packed
once per window instead (as_panels_into).

A step of B streams multiplies a (B, K) block of inputs by each (K, G H) weight matrix. Written
as numba loops, every pass over k loads and stores the accumulators z from memory: numba
cannot tell LLVM that z does not alias M, so the sums never stay in registers, and the loads
and stores, not the arithmetic, set the pace (about 55 GF/s on one core). `microkernel` is the
classic GEMM micro-kernel instead, written directly in LLVM IR: R streams x Q panels of 16
columns are held in 2RQ ymm registers (at most 12) while k runs over the whole of K, and
each step of k loads the panels' row once for all R streams: about 90 GF/s on the same core,
the FMA units' pace.

Tuned for x86-64 with AVX2 and FMA (Zen 3, and Intel since Haswell): 16 ymm registers of 8
float32, two to a panel. Where numba compiles for a CPU with AVX-512 the vectors are 16 wide,
one zmm register to a panel, and a call holds up to 24 of the 32 (R = 8 streams x Q = 3
panels): twice the FMA width, measured 1.5-2.4x the ymm kernel's pace at B = 32 on a loaded
2-core Xeon (and the same bits: the vector width does not change any element's chain). LLVM
compiles the same IR for any CPU numba targets: without AVX the vectors are split into SSE
parts, and without FMA each fused multiply-add becomes a call to libm's
fmaf, so the results are the same bit for bit, only slower (a test builds it for a generic
x86-64 without either and compares).

The weights are stored as panels (as_panels): panel p holds columns 16p .. 16p+15 of M as a
contiguous (K, 16) block, so a micro-kernel reads one stretch of memory and the panel stays in
L1 while the stream blocks take turns.

Each output element is one chain of fused multiply-adds in order of k,

    z <- fma(x_0, m_0, z);  z <- fma(x_1, m_1, z);  ...;  z <- fma(x_{K-1}, m_{K-1}, z)

whatever R and Q are. `microkernel_reference` is that definition in plain numba loops, and the
tests hold the micro-kernel to it, bit for bit, on every shape it is compiled for; add_rows runs
the same chain one element at a time for columns that do not fill a panel, so a stream's sums
do not depend on what else is in its tile.
"""

import numba as nb
import numpy as np
from llvmlite import binding as ll
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.extending import intrinsic, overload

from charlm.kernels import MATVEC


def avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F: the host's, unless NUMBA_CPU_NAME names
    another (then its NUMBA_CPU_FEATURES say)."""
    if config.CPU_NAME and config.CPU_NAME != "host":
        return "+avx512f" in (config.CPU_FEATURES or "")
    return bool(ll.get_host_cpu_features().get("avx512f", False))


PANEL = 16  # columns per panel: two AVX vectors of float32, or one AVX-512 vector
LANES = 16 if avx512() else 8  # float32 per vector register
VECS = PANEL // LANES  # vector registers per panel row
# vector accumulators one call may hold (VECS R Q), leaving registers for the panel row and x
MAX_ACC = 24 if LANES == 16 else 12
MAX_ROWS = 8 if LANES == 16 else 6  # streams per call
MAX_PANELS = 4  # panels per call (one stream: 8 independent chains hide the FMA latency)
# the (streams, panels) shapes `microkernel` is compiled for
SHAPES = tuple((r, q) for r in range(1, MAX_ROWS + 1)
               for q in range(1, MAX_PANELS + 1) if VECS * r * q <= MAX_ACC)

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)  # one vector register of float32
_I32 = ir.IntType(32)


@nb.njit(cache=True)
def micro_shape(B: int) -> tuple[int, int]:
    """Streams and panels per micro-kernel call for a batch of B: stream blocks as even as can
    be, and as many panels as the accumulators allow."""
    blocks = -(-B // MAX_ROWS)
    r = -(-B // blocks)
    return r, min(MAX_PANELS, MAX_ACC // (VECS * r))


@intrinsic
def microkernel(typingctx, X, Mp, z):
    r"""z[:R, :16 Q] += X[:R, :K] @ [Mp[0] | .. | Mp[Q-1]], summed over k in order.

    .. math::  z_{n, 16 q + j} \leftarrow \mathrm{fma}(X_{nk}, M^{(q)}_{kj}, z_{n, 16q + j})
               \quad k = 0, 1, \ldots, K-1

    Parameters
    ----------
    X : (R, K) float32 inputs, any strides.
    Mp : (Q, K, 16) float32 panels, each C-contiguous (a slice of as_panels_into' output).
    z : (R, 16 Q) float32 accumulators, contiguous along each row.

    (R, Q) must be one of SHAPES (micro_shape gives one); any other shape does nothing.
    """
    ok = (isinstance(X, types.Array) and X.ndim == 2 and X.dtype == types.float32
          and isinstance(Mp, types.Array) and Mp.ndim == 3 and Mp.dtype == types.float32
          and isinstance(z, types.Array) and z.ndim == 2
          and z.dtype == types.float32)
    if not ok:
        return None
    sig = types.void(X, Mp, z)

    def codegen(context, builder, sig, args):
        xa, ma, za = (context.make_array(t)(context, builder, v)
                      for t, v in zip(sig.args, args, strict=True))
        R, K = cgutils.unpack_tuple(builder, xa.shape, 2)
        Q = cgutils.unpack_tuple(builder, ma.shape, 3)[0]
        x_n, x_k = cgutils.unpack_tuple(builder, xa.strides, 2)  # strides are in bytes
        m_q, m_k, _ = cgutils.unpack_tuple(builder, ma.strides, 3)
        z_n, _ = cgutils.unpack_tuple(builder, za.strides, 2)
        byte = ir.IntType(8).as_pointer()
        xb, mb, zb = (builder.bitcast(a.data, byte) for a in (xa, ma, za))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        undef = ir.Constant(_VEC, ir.Undefined)
        splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)

        def const(v):
            return ir.Constant(cgutils.intp_t, v)

        def at(base, offset, ty):  # a typed pointer offset bytes into base
            return builder.bitcast(builder.gep(base, [offset]), ty.as_pointer())

        def add(*terms):
            total = terms[0]
            for t in terms[1:]:
                total = builder.add(total, t)
            return total

        # one straight-line body per shape, chosen by a switch on 8 R + Q
        done = builder.append_basic_block("micro.done")
        other = builder.append_basic_block("micro.other")
        switch = builder.switch(add(builder.mul(R, const(8)), Q), other)
        with builder.goto_block(other):
            builder.branch(done)
        for r, q in SHAPES:
            body = builder.append_basic_block(f"micro.{r}x{q}")
            switch.add_case(const(8 * r + q), body)
            with builder.goto_block(body):
                # the accumulators: allocas that LLVM promotes to registers
                acc = {}
                for n in range(r):
                    for col in range(0, PANEL * q, LANES):
                        offset = add(builder.mul(const(n), z_n), const(4 * col))
                        slot = cgutils.alloca_once(builder, _VEC)
                        builder.store(builder.load(at(zb, offset, _VEC), align=4), slot)
                        acc[n, col] = (slot, offset)
                with cgutils.for_range(builder, K) as loop:
                    k = loop.index
                    row = builder.mul(k, m_k)
                    m = {col: builder.load(at(mb, add(builder.mul(const(col // PANEL), m_q),
                                                      row, const(4 * (col % PANEL))), _VEC),
                                           align=4)
                         for col in range(0, PANEL * q, LANES)}
                    for n in range(r):
                        xnk = builder.load(at(xb, add(builder.mul(const(n), x_n),
                                                      builder.mul(k, x_k)), _F32), align=4)
                        xnk = builder.shuffle_vector(
                            builder.insert_element(undef, xnk, ir.Constant(_I32, 0)), undef,
                            splat)
                        for col, mv in m.items():
                            slot = acc[n, col][0]
                            builder.store(builder.call(fma, [xnk, mv, builder.load(slot)]), slot)
                for slot, offset in acc.values():
                    builder.store(builder.load(slot), at(zb, offset, _VEC), align=4)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c rounded once, in float32: what `microkernel` computes for every element."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return types.float32(a, b, c), codegen


@nb.njit(cache=True)
def microkernel_reference(X, Mp, z):
    r"""What microkernel computes, as plain loops: one fma chain per element, in order of k.

    .. math::  z_{n, 16 q + j} \leftarrow \mathrm{fma}(X_{nk}, M^{(q)}_{kj}, z_{n, 16 q + j})
    """
    for n in range(X.shape[0]):
        for q in range(Mp.shape[0]):
            for j in range(PANEL):
                acc = z[n, PANEL * q + j]
                for k in range(X.shape[1]):
                    acc = fma(X[n, k], Mp[q, k, j], acc)
                z[n, PANEL * q + j] = acc


def as_panels(M: np.ndarray, n_panels: int | None = None) -> np.ndarray:
    """(K, W) -> (n_panels, K, PANEL): M's columns in contiguous panels of PANEL, the layout
    the micro-kernel reads; columns past W (a last partial panel, or whole panels up to n_panels)
    are zeros that are never read."""
    K, W = M.shape
    n_panels = max(-(-W // PANEL), 1) if n_panels is None else n_panels
    padded = np.zeros((K, n_panels * PANEL), np.float32)
    padded[:, :W] = M
    return np.ascontiguousarray(padded.reshape(K, n_panels, PANEL).transpose(1, 0, 2))


@nb.njit(**MATVEC)
def add_rows(X, Mp, z, j0, width):
    r"""z[n, j0:j0+width] += X[n] M[:, :width] for every stream n, with M stored as panels.

    .. math::  z_{n,j_0+j} \mathrel{+}= \sum_k X_{nk} M_{kj}
               \quad \text{(one fused multiply-add per k, in order of k)}

    Whole panels go through the micro-kernel, a block of streams and a few panels at a time,
    panel by panel so that a panel stays in L1 while the blocks of streams take turns. A last,
    partial panel goes through it too, into a row of PANEL accumulators of which only its
    columns are copied back (summed one at a time, its few columns cost as much as 28 whole
    panels: 0.96 against 0.45 ms for 32 x 1824 x 456 and x 448). The micro-kernel sums each
    element with the same chain of fmas in order of k, so every element comes out the same
    whatever the batch.

    Parameters
    ----------
    X : (B, K) the inputs of the B streams (a strided view is fine: only scalars are read).
    Mp : (n_panels, K, PANEL) the columns of a (K, width) matrix M (see as_panels).
    z : (B, *) accumulators, each row contiguous.
    """
    B, K = X.shape
    r, q = micro_shape(B)
    full = width // PANEL
    for p0 in range(0, full, q):
        p1 = min(p0 + q, full)
        c0, c1 = j0 + PANEL * p0, j0 + PANEL * p1
        for n in range(0, B, r):
            microkernel(X[n : n + r], Mp[p0:p1], z[n : n + r, c0:c1])
    rest = width - PANEL * full
    if rest > 0:
        c0 = j0 + PANEL * full
        r1, _ = micro_shape(B)  # (r1, 1) is one of SHAPES: one panel needs fewer accumulators
        acc = np.zeros((r1, PANEL), np.float32)  # columns past rest sum to what is never read
        for n in range(0, B, r1):
            m = min(r1, B - n)
            acc[:m, :rest] = z[n : n + m, c0 : c0 + rest]
            microkernel(X[n : n + m], Mp[full : full + 1], acc[:m])
            z[n : n + m, c0 : c0 + rest] = acc[:m, :rest]


@nb.njit(cache=True, nogil=True)
def as_panels_into(M, Mp):
    """as_panels into a buffer: Mp[p, k, j] = M[k, PANEL p + j], zeros past M's columns.

    M may be any 2-D view (training packs U^T as U.T). A buffer of zero panels (float64 models,
    which do not use panels) is left as it is.
    """
    K, W = M.shape
    for p in range(Mp.shape[0]):
        for k in range(K):
            for j in range(PANEL):
                col = PANEL * p + j
                Mp[p, k, j] = M[k, col] if col < W else 0


def matmul(X, M, Mp, Y):
    """Y = X M for the time loops of training, with M's panels Mp (as_panels_into) in float32."""
    np.dot(X, M, Y)


@overload(matmul, jit_options=MATVEC)
def _matmul_overload(X, M, Mp, Y):
    if isinstance(X, types.Array) and X.dtype == types.float32:
        # the micro-kernel reads the panels packed once per window; BLAS (sgemm) would pack
        # all of M again at every step, which costs about as much as the product at B = 32
        def matmul_panels(X, M, Mp, Y):
            Y[:] = 0
            add_rows(X, Mp, Y, 0, Y.shape[1])

        return matmul_panels
    # float64 is for gradient checks: BLAS's dgemm
    return lambda X, M, Mp, Y: np.dot(X, M, Y)
