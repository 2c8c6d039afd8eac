"""`charlm bench train`: chars/s of full training steps, charlm and PyTorch side by side.

A step is the trainer's own (train.train_step: forward, backward, the finite-loss check,
global-norm clipping and Adam) on a batch of B x T characters. The PyTorch peer (nn.Embedding
-> nn.LSTM, nn.GRU or nn.RNN -> nn.Linear) runs in the same process on the same shapes and
thread count, in blocks interleaved with ours, so machine noise hits both alike. torch has no
peephole or coupled LSTM: those cells get no ratio.
"""

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from charlm import kernels
from charlm.model import CELLS, CharLSTM, ModelConfig
from charlm.optim import Adam
from charlm.train import train_step

CONFIGS = ((2, 128), (2, 512))
TORCH_CELLS = {name: c.torch for name, c in CELLS.items() if c.torch}  # torch.nn's module
VOCAB = 65
LR, CLIP = 2e-3, 5.0
BATCH, SEQ_LEN = 50, 50  # the window of every timed step
ROUNDS = 5  # interleaved measurement rounds


def blas_threads() -> int:
    """Threads our BLAS uses (OpenBLAS honours OPENBLAS_NUM_THREADS, else one per core)."""
    return int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count() or 1)


def charlm_step(n_layer: int, n_hidden: int, B: int, T: int,
                cell: str = "lstm") -> Callable[[], float]:
    cfg = ModelConfig(vocab_size=VOCAB, n_embd=n_hidden, n_hidden=n_hidden, n_layer=n_layer,
                      dropout=0.0, cell=cell)
    model = CharLSTM(cfg, seed=0)
    opt = Adam(model.n_params, model.dtype)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, VOCAB, (B, T)), rng.integers(0, VOCAB, (B, T))
    state = model.zero_state(B)

    def step() -> float:
        return train_step(model, opt, x, y, state, LR, CLIP)

    return step


def torch_step(n_layer: int, n_hidden: int, B: int, T: int,
               cell: str = "lstm") -> Callable[[], float] | None:
    """The equivalent PyTorch training step, or None when torch is not importable or has no
    such cell."""
    if cell not in TORCH_CELLS:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(blas_threads())
    torch.manual_seed(0)
    emb = torch.nn.Embedding(VOCAB, n_hidden)
    rnn = getattr(torch.nn, TORCH_CELLS[cell])(n_hidden, n_hidden, n_layer, batch_first=True)
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


def profile_charlm(n_layer: int, n_hidden: int, B: int, T: int, n: int,
                   cell: str = "lstm") -> dict[str, float]:
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

    step = charlm_step(n_layer, n_hidden, B, T, cell)
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


def run_train_bench(batch: int = BATCH, seq_len: int = SEQ_LEN, rounds: int = ROUNDS,
                    json_out: bool = False, profile: bool = False,
                    configs: tuple[tuple[int, int], ...] = CONFIGS,
                    cells: tuple[str, ...] = tuple(CELLS)) -> list[dict]:
    """Time charlm and (when importable) torch on each cell and config; print and return the
    results."""
    results = []
    for cell, (n_layer, n_hidden) in ((c, nh) for c in cells for nh in configs):
        ours = charlm_step(n_layer, n_hidden, batch, seq_len, cell)
        peer = torch_step(n_layer, n_hidden, batch, seq_len, cell)
        # warm-up: compile (or load cached) kernels, touch every buffer, let torch plan
        warm = max(1, int(0.3 / seconds_per_step(ours, 1)))
        seconds_per_step(ours, warm)
        if peer is not None:
            seconds_per_step(peer, 2)
        # a block of about half a second per measurement
        block = max(1, int(0.5 / seconds_per_step(ours, 1)))
        t_ours, t_peer = [], []
        for _ in range(rounds):
            t_ours.append(seconds_per_step(ours, block))
            if peer is not None:
                t_peer.append(seconds_per_step(peer, block))
        chars = batch * seq_len
        ours_cps = chars / statistics.median(t_ours)
        peer_cps = chars / statistics.median(t_peer) if t_peer else None
        row = {"what": "train", "cell": cell, "n_layer": n_layer, "n_hidden": n_hidden,
               "batch": batch,
               "seq_len": seq_len, "charlm_chars_per_s": round(ours_cps),
               "torch_chars_per_s": round(peer_cps) if peer_cps else None,
               "ratio": round(ours_cps / peer_cps, 3) if peer_cps else None}
        results.append(row)
        if json_out:
            print(json.dumps(row), flush=True)
        else:
            peer_txt = (f"torch {peer_cps:>9,.0f} chars/s   ratio {row['ratio']:.2f}"
                        if peer_cps else "torch has no such cell" if cell not in TORCH_CELLS
                        else "torch not importable")
            print(f"train {cell:<8} {n_layer}x{n_hidden:<4} batch {batch} x seq_len {seq_len}: "
                  f"charlm {ours_cps:>9,.0f} chars/s   {peer_txt}", flush=True)
        if profile:
            prof = profile_charlm(n_layer, n_hidden, batch, seq_len, block * 2, cell)
            for name, ms in prof.items():
                share = ms / prof["total"] * 100
                print(f"    {name:<46} {ms:8.2f} ms/step  {share:5.1f} %")
    return results
