"""Bounds on the sizes an outsider controls: a model's shape, and the memory it will take.

A checkpoint's config or a command line's options can ask for any size; these are checked
before any array is allocated, so a bad size costs an error message, not the machine's memory.
"""

import os

from charlm.errors import CharlmError

MAX_LAYERS = 64
MAX_HIDDEN = 16384
MAX_EMBD = 16384
MAX_VOCAB = 0x110000  # every Unicode code point
# 8 GiB of float32 weights: far beyond what trains on a CPU, far below what a bad config asks
MAX_PARAMS = 2**31 - 1
MAX_BATCH = 2**20  # streams per training batch, and characters per window
MAX_SEQ_LEN = 2**20
MAX_INT64 = 2**63 - 1  # what a count may be when it reaches a kernel as int64

_SIZES = {"vocab_size": MAX_VOCAB, "n_embd": MAX_EMBD, "n_hidden": MAX_HIDDEN,
          "n_layer": MAX_LAYERS}


def check_model_size(cfg) -> None:
    """ValueError unless every size of cfg (a ModelConfig with a known cell) is in bounds.

    The parameter count is arithmetic on the sizes (nothing is built), so a config that says
    n_layer = 10**7 or n_hidden = 10**12 is refused with what it would need, at once.
    """
    for name in _SIZES:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    n = n_params(cfg)
    if n > MAX_PARAMS:
        raise ValueError(f"a {shape(cfg)} has {n:,} parameters, over the limit of "
                         f"{MAX_PARAMS:,}: training it needs {gib(n * 4 * _itemsize(cfg))}")
    for name, hi in _SIZES.items():
        if getattr(cfg, name) > hi:
            raise ValueError(f"{name} must be at most {hi:,}, got {getattr(cfg, name):,}")


def shape(cfg) -> str:
    """A model's shape as the messages say it: "2x512 lstm"."""
    return f"{cfg.n_layer}x{cfg.n_hidden} {cfg.cell}"


def n_params(cfg) -> int:
    """The number of parameters of a config, computed from its sizes (no shapes built)."""
    from charlm.cells import CELLS

    cell = CELLS[cfg.cell]
    V, E, H, L, G = cfg.vocab_size, cfg.n_embd, cfg.n_hidden, cfg.n_layer, cell.blocks
    extras = sum((x.rows or 1) * H for x in cell.extras)
    first = E * G * H + H * G * H + G * H + extras
    upper = 2 * H * G * H + G * H + extras
    return V * E + first + (L - 1) * upper + H * V + V


def train_bytes(cfg, seq_len: int, batch_size: int) -> int:
    """About the memory training takes: weights, gradients and two optimizer moments, and one
    workspace of (seq_len, batch_size) (model.Workspace's buffers)."""
    from charlm.cells import CELLS

    cell = CELLS[cfg.cell]
    T, B, V, H, L = seq_len, batch_size, cfg.vocab_size, cfg.n_hidden, cfg.n_layer
    GH = cell.blocks * H
    Hc = H if cell.has_c else 0
    per_layer = T * B * GH + (T + 1) * B * (H + Hc) + 2 * T * B * H + len(cell.buffers) * T * B * H
    work = L * per_layer + 2 * V * GH + T * B * V + T * B * GH + T * B * H + 2 * B * H
    return (4 * n_params(cfg) + work) * _itemsize(cfg) + 16 * T * B


def available_bytes() -> int | None:
    """The memory this process may still take: MemAvailable, or a cgroup's limit if lower."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if os.environ.get("CHARLM_MEMORY_LIMIT"):  # for tests, and for machines shared by jobs
        try:
            found.append(int(os.environ["CHARLM_MEMORY_LIMIT"]))
        except ValueError:
            raise CharlmError("CHARLM_MEMORY_LIMIT must be a whole number of bytes, got "
                              f"{os.environ['CHARLM_MEMORY_LIMIT'][:40]!r}") from None
    return min(found) if found else None


def check_fits(what: str, need: int) -> None:
    """CharlmError if `need` bytes (for `what`) are more than this machine has available."""
    have = available_bytes()
    if have is not None and need > have:
        raise CharlmError(f"{what} needs {gib(need)}; {gib(have)} is available")


def gib(n: int) -> str:
    if n >= 2**60:
        return f"{n / 2**30:.2g} GiB"
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def _itemsize(cfg) -> int:
    return 8 if cfg.dtype == "float64" else 4
