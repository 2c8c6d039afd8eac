"""`charlm bench train`: chars/s of full training steps, charlm and PyTorch side by side, and
the fraction of this machine's sgemm peak each reaches.

A step is the trainer's own (train.train_step: forward, backward, the finite-loss check,
global-norm clipping and Adam) on a batch of B x T characters. The PyTorch peer (nn.Embedding
-> nn.LSTM, nn.GRU or nn.RNN -> nn.Linear) runs in the same process on the same shapes and
thread count, in blocks interleaved with ours, so machine noise hits both alike. torch has no
peephole or coupled LSTM: those cells get no ratio. The peak is a large NumPy float32 matmul
timed in the same rounds; a step's FLOPs are counted from the shapes of its matrix products
(matmul_shapes).
"""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from charlm import kernels
from charlm.model import CELLS, CharLSTM, ModelConfig
from charlm.optim import Adam
from charlm.train import TrainConfig, train_step


class Shape(NamedTuple):
    """One timed configuration: the model's size and the window of a step."""

    n_layer: int
    n_hidden: int
    n_embd: int
    batch: int
    seq_len: int

    @property
    def label(self) -> str:
        """2x512/64/32x100: layers x units / embedding / batch x seq_len."""
        return f"{self.n_layer}x{self.n_hidden}/{self.n_embd}/{self.batch}x{self.seq_len}"


CONFIGS = ((2, 128), (2, 512))  # (n_layer, n_hidden) at --batch x --seq-len, embedding = units
TORCH_CELLS = {name: c.torch for name, c in CELLS.items() if c.torch}  # torch.nn's module
VOCAB = 65
LR, CLIP = 2e-3, 5.0
BATCH, SEQ_LEN = 50, 50  # the window of every timed step
ROUNDS = 5  # interleaved measurement rounds
# the shape people train: `charlm train`'s defaults
DEFAULT_SHAPE = Shape(ModelConfig.n_layer, ModelConfig.n_hidden, ModelConfig.n_embd,
                      TrainConfig.batch_size, TrainConfig.seq_len)
PEAK_N = 2048  # the peak's matmul: (PEAK_N, PEAK_N) @ (PEAK_N, PEAK_N) in float32, 17 GFLOP


def shapes_for(batch: int, seq_len: int, configs: tuple[tuple[int, int], ...] = CONFIGS,
               default_shape: bool = True) -> tuple[Shape, ...]:
    """The configurations at batch x seq_len (embedding as wide as the layers), and the default
    training shape."""
    shapes = tuple(Shape(n_layer, n_hidden, n_hidden, batch, seq_len)
                   for n_layer, n_hidden in configs)
    return shapes + ((DEFAULT_SHAPE,) if default_shape and DEFAULT_SHAPE not in shapes else ())


def matmul_shapes(shape: Shape, cell: str = "lstm") -> list[tuple[int, int, int, int]]:
    """(count, M, K, N) of every matrix product of one training step, M x K times K x N.

    N = B T rows, G H gate columns (G blocks of H units), V characters, E embedding:

    forward:   E W0 (V x E x GH: the first layer's input part is a row of this table), per layer
               above it x W (N x H x GH), per layer and step h U (B x H x GH, T times), the head
               (N x H x V);
    backward:  the head's dWy (H x N x V) and dX (N x V x H); per layer dz U^T (B x GH x H,
               T - 1 times: nothing flows back from before the window), dU (H x N x GH), and
               above the first, dW (H x N x GH) and dX (N x GH x H); the first layer's dW0 =
               E^T dEW (E x V x GH) and dE = dEW W0^T (V x GH x E).

    For a 2x512 LSTM at E 64, B 32, T 100 (N = 3200, GH = 2048) that is 9 products of
    3200 x 512 x 2048 (the same count of multiply-adds, whatever the order) less each layer's
    first dz U^T, 3 of the head's and 3 of the table's: 60.95 GFLOP a step. The elementwise
    gate math is not counted.
    """
    L, H, E, B, T = shape
    G, V, N = CELLS[cell].blocks, VOCAB, shape.batch * shape.seq_len
    GH = G * H
    out = [(1, V, E, GH), (1, N, H, V), (1, H, N, V), (1, N, V, H), (1, E, V, GH), (1, V, GH, E)]
    for layer in range(L):
        out += [(T, B, H, GH), (T - 1, B, GH, H), (1, H, N, GH)]
        if layer > 0:
            out += [(1, N, H, GH), (1, H, N, GH), (1, N, GH, H)]
    return out


def step_flops(shape: Shape, cell: str = "lstm") -> int:
    """FLOPs of one training step's matrix products: 2 per multiply-add (matmul_shapes)."""
    return sum(2 * count * m * k * n for count, m, k, n in matmul_shapes(shape, cell))


def sgemm_flops_per_s(n: int = PEAK_N) -> float:
    """FLOP/s of one (n, n) @ (n, n) float32 NumPy matmul on the BLAS threads we run with."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    return 2 * n**3 / (time.perf_counter() - t0)


def blas_threads() -> int:
    """Threads our BLAS uses (OpenBLAS honours OPENBLAS_NUM_THREADS, else one per core)."""
    return int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count() or 1)


def charlm_step(shape: Shape, cell: str = "lstm") -> Callable[[], float]:
    """Our training step at this shape (no dropout, as the peer)."""
    n_layer, n_hidden, n_embd, B, T = shape
    cfg = ModelConfig(vocab_size=VOCAB, n_embd=n_embd, n_hidden=n_hidden, n_layer=n_layer,
                      dropout=0.0, cell=cell)
    model = CharLSTM(cfg, seed=0)
    opt = Adam(model.n_params, model.dtype)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, VOCAB, (B, T)), rng.integers(0, VOCAB, (B, T))
    state = model.zero_state(B)

    def step() -> float:
        return train_step(model, opt, x, y, state, LR, CLIP)

    return step


def torch_step(shape: Shape, cell: str = "lstm") -> Callable[[], float] | None:
    """The equivalent PyTorch training step, or None when torch is not importable or has no
    such cell."""
    if cell not in TORCH_CELLS:
        return None
    try:
        import torch
    except ImportError:
        return None
    n_layer, n_hidden, n_embd, B, T = shape
    torch.set_num_threads(blas_threads())
    torch.manual_seed(0)
    emb = torch.nn.Embedding(VOCAB, n_embd)
    rnn = getattr(torch.nn, TORCH_CELLS[cell])(n_embd, n_hidden, n_layer, batch_first=True)
    head = torch.nn.Linear(n_hidden, VOCAB)
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=LR)
    x = torch.randint(0, VOCAB, (B, T))
    y = torch.randint(0, VOCAB, (B, T))
    state = None

    def step() -> float:
        nonlocal state
        out, state = rnn(emb(x), state)
        # truncated BPTT, as ours: (h, c) for the LSTM, h for the others
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    return step


def seconds_per_step(step: Callable[[], float], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def profile_charlm(shape: Shape, n: int, cell: str = "lstm") -> dict[str, float]:
    """Milliseconds per step spent in each kernel, by wrapping the kernel modules' functions."""
    totals: dict[str, float] = {}
    names = {kernels: ("linear_forward", "linear_backward", "gather_rows", "scatter_add_rows",
                       "softmax_cross_entropy"),
             **{sys.modules[c.forward.__module__]: (f"{name}_forward", f"{name}_backward")
                for name, c in CELLS.items()}}
    originals = {(module, name): getattr(module, name)
                 for module, module_names in names.items() for name in module_names}

    def timed(name, fn):
        def wrapper(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    step = charlm_step(shape, cell)
    step()
    try:
        for (module, name), fn in originals.items():
            setattr(module, name, timed(name, fn))
        total = seconds_per_step(step, n)
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    profile = {name: t / n * 1e3 for name, t in sorted(totals.items(), key=lambda kv: -kv[1])}
    profile["other (optimizer, clipping, dropout, python)"] = total * 1e3 - sum(profile.values())
    profile["total"] = total * 1e3
    return profile


def blas_ceiling(shape: Shape, cell: str = "lstm") -> float:
    """FLOP/s of the step's matrix products if each ran at NumPy's pace for its own shape (the
    small h U of a step cannot reach the large matmul's peak): the honest ceiling for a step."""
    rng = np.random.default_rng(0)
    seconds, flops = 0.0, 0
    for count, m, k, n in matmul_shapes(shape, cell):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        np.matmul(a, b, out=c)
        reps = max(1, min(count, int(2e9 / (2 * m * k * n + 1))))
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=c)
        seconds += (time.perf_counter() - t0) / reps * count
        flops += 2 * count * m * k * n
    return flops / seconds


def run_train_bench(batch: int = BATCH, seq_len: int = SEQ_LEN, rounds: int = ROUNDS,
                    json_out: bool = False, profile: bool = False,
                    shapes: tuple[Shape, ...] | None = None,
                    cells: tuple[str, ...] = tuple(CELLS)) -> list[dict]:
    """Time charlm and (when importable) torch on each cell and shape (default: shapes_for
    batch x seq_len, and the default training shape), with the sgemm peak in the same rounds;
    print and return the results."""
    shapes = shapes_for(batch, seq_len) if shapes is None else shapes
    results = []
    sgemm_flops_per_s()  # BLAS's threads and buffers, before the first timed peak
    for cell, shape in ((c, s) for c in cells for s in shapes):
        ours = charlm_step(shape, cell)
        peer = torch_step(shape, cell)
        # warm-up: compile (or load cached) kernels, touch every buffer, let torch plan
        warm = max(1, int(0.3 / seconds_per_step(ours, 1)))
        seconds_per_step(ours, warm)
        if peer is not None:
            seconds_per_step(peer, 2)
        # a block of about half a second per measurement
        block = max(1, int(0.5 / seconds_per_step(ours, 1)))
        t_ours, t_peer, peaks = [], [], []
        for _ in range(rounds):
            t_ours.append(seconds_per_step(ours, block))
            if peer is not None:
                t_peer.append(seconds_per_step(peer, block))
            peaks.append(max(sgemm_flops_per_s() for _ in range(2)))
        chars = shape.batch * shape.seq_len
        ours_cps = chars / statistics.median(t_ours)
        peer_cps = chars / statistics.median(t_peer) if t_peer else None
        peak, flops = statistics.median(peaks), step_flops(shape, cell)
        flops_per_s = flops * ours_cps / chars
        row = {"what": "train", "cell": cell, "shape": shape.label, "n_layer": shape.n_layer,
               "n_hidden": shape.n_hidden, "n_embd": shape.n_embd, "batch": shape.batch,
               "seq_len": shape.seq_len, "threads": blas_threads(),
               "chars_per_s": round(ours_cps),
               "torch_chars_per_s": round(peer_cps) if peer_cps else None,
               "ratio": round(ours_cps / peer_cps, 3) if peer_cps else None,
               "flops_per_step": flops, "flops_per_s": round(flops_per_s),
               "peak_flops_per_s": round(peak), "peak_fraction": round(flops_per_s / peak, 3),
               "torch_peak_fraction": (round(flops * peer_cps / chars / peak, 3) if peer_cps
                                       else None)}
        if profile:
            row["blas_ceiling_flops_per_s"] = round(blas_ceiling(shape, cell))
        results.append(row)
        if json_out:
            print(json.dumps(row), flush=True)
        else:
            peer_txt = (f"torch {peer_cps:>9,.0f} chars/s   ratio {row['ratio']:.2f}"
                        if peer_cps else "torch has no such cell" if cell not in TORCH_CELLS
                        else "torch not importable")
            print(f"train {cell:<8} {shape.label:<18} charlm {ours_cps:>9,.0f} chars/s   "
                  f"{peer_txt}   {flops_per_s / 1e9:6.1f} GFLOP/s = "
                  f"{row['peak_fraction']:.0%} of sgemm's {peak / 1e9:.1f}", flush=True)
        if profile:
            ceiling = row["blas_ceiling_flops_per_s"]
            print(f"    {'the products at NumPy pace for their shapes':<46} "
                  f"{ceiling / 1e9:8.1f} GFLOP/s  {ceiling / peak:5.0%} of peak")
            prof = profile_charlm(shape, block * 2, cell)
            for name, ms in prof.items():
                share = ms / prof["total"] * 100
                print(f"    {name:<46} {ms:8.2f} ms/step  {share:5.1f} %")
    return results
