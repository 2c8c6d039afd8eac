"""`charlm bench sample`: microseconds per generated character at batch 1, charlm and PyTorch
side by side, and the throughput of batches of concurrent streams.

Both sides produce characters one at a time the way a caller sees them: charlm through
Generator.generate (a Token per character), PyTorch as a stack of nn.LSTMCell stepped under
torch.no_grad with softmax, multinomial and .item(). Same shapes (n_embd = n_hidden, random
weights, vocabulary 65), same thread count, measured in blocks interleaved with each other so
machine noise hits both alike; each side's best block is reported.
"""

import json
import sys
import time
from collections.abc import Callable

import numba as nb

from charlm.generate import Batch, Generator, PackedModel, SampleSettings
from charlm.model import CharLSTM, ModelConfig

CONFIGS = ((2, 128), (2, 512))
VOCAB = 65
STREAMS = (8, 32)
ITOS = [chr(32 + v) for v in range(VOCAB)]  # printable ASCII from the space on
PROMPT = "ABRACADABRA, " * 4
ROUNDS = 5  # interleaved measurement rounds


def threads() -> int:
    """Threads both sides may use: numba's pool size (one per core unless configured)."""
    return nb.config.NUMBA_NUM_THREADS


def make_packed(n_layer: int, n_hidden: int) -> PackedModel:
    cfg = ModelConfig(vocab_size=VOCAB, n_embd=n_hidden, n_hidden=n_hidden, n_layer=n_layer,
                      dropout=0.0)
    return PackedModel(CharLSTM(cfg, seed=0), ITOS)


def charlm_sampler(packed: PackedModel) -> Callable[[int], None]:
    """run(n): draw n characters from one stream, continuing where the last run stopped."""
    gen = Generator.from_packed(packed)
    gen.prime(PROMPT)
    seed = iter(range(1 << 30))

    def run(n: int) -> None:
        for _ in gen.generate(temperature=1.0, seed=next(seed), max_new_chars=n):
            pass

    return run


def torch_sampler(n_layer: int, n_hidden: int) -> Callable[[int], None] | None:
    """The PyTorch equivalent of charlm_sampler, or None when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads())
    torch.manual_seed(0)
    emb = torch.nn.Embedding(VOCAB, n_hidden)
    cells = [torch.nn.LSTMCell(n_hidden, n_hidden) for _ in range(n_layer)]
    head = torch.nn.Linear(n_hidden, VOCAB)
    state = [(torch.zeros(1, n_hidden), torch.zeros(1, n_hidden)) for _ in range(n_layer)]
    x = torch.tensor([ITOS.index(PROMPT[-1])])

    def run(n: int) -> None:
        nonlocal x
        with torch.no_grad():
            for _ in range(n):
                inp = emb(x)
                for layer, cell in enumerate(cells):
                    state[layer] = cell(inp, state[layer])
                    inp = state[layer][0]
                probs = torch.softmax(head(inp), dim=-1)
                x = torch.multinomial(probs, 1)[0]
                ITOS[x.item()]  # the character a caller would stream

    return run


def us_per_char(run: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) / n * 1e6


def batch_chars_per_s(packed: PackedModel, n_streams: int, seconds: float = 0.5) -> float:
    """Characters per second of n_streams concurrent streams, each with its own seed."""
    batch = Batch(packed, capacity=n_streams)
    for k in range(n_streams):
        batch.add(PROMPT[k % 7 :], SampleSettings(seed=k, max_new_chars=1 << 40))
    for _ in range(5):  # warm-up
        batch.step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch.step()
        steps += 1
    return n_streams * steps / (time.perf_counter() - t0)


def run_sample_bench(json_out: bool = False, rounds: int = ROUNDS,
                     configs: tuple[tuple[int, int], ...] = CONFIGS,
                     streams: tuple[int, ...] = STREAMS) -> list[dict]:
    """Time charlm and (when importable) torch on each config; print and return the results."""
    results = []
    for n_layer, n_hidden in configs:
        packed = make_packed(n_layer, n_hidden)
        ours = charlm_sampler(packed)
        peer = torch_sampler(n_layer, n_hidden)
        # warm-up: compile (or load cached) kernels, touch every buffer, let torch plan
        us_per_char(ours, 200)
        # blocks of about 0.2 s of our time, interleaved with torch on as many characters
        block = max(50, int(0.2e6 / us_per_char(ours, 200)))
        if peer is not None:
            us_per_char(peer, 50)
        t_ours, t_peer = [], []
        for _ in range(rounds):
            t_ours.append(us_per_char(ours, block))
            if peer is not None:
                t_peer.append(us_per_char(peer, max(20, block // 8)))
        # the best block of each: the machine's own speed, least disturbed by other work
        ours_us = min(t_ours)
        peer_us = min(t_peer) if t_peer else None
        row = {"what": "sample", "n_layer": n_layer, "n_hidden": n_hidden,
               "charlm_us_per_char": round(ours_us, 2),
               "torch_us_per_char": round(peer_us, 2) if peer_us else None,
               "ratio": round(peer_us / ours_us, 2) if peer_us else None,
               "threads": packed.threads,
               "batch_chars_per_s": {str(n): round(batch_chars_per_s(packed, n))
                                     for n in streams}}
        results.append(row)
        if json_out:
            print(json.dumps(row), flush=True)
        else:
            peer_txt = (f"torch {peer_us:8.1f} us/char   ratio {row['ratio']:5.1f}"
                        if peer_us else "torch not importable")
            batched = "   ".join(f"{n} streams {cps:>9,} chars/s"
                                 for n, cps in row["batch_chars_per_s"].items())
            print(f"sample {n_layer}x{n_hidden:<4} batch 1: charlm {ours_us:7.1f} us/char   "
                  f"{peer_txt}   |   {batched}", flush=True)
    return results


if __name__ == "__main__":
    run_sample_bench(json_out="--json" in sys.argv)
