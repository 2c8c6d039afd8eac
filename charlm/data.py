"""The corpus: reading it and encoding it as compact integer ids (batches.py cuts it up).

The last val_frac of the characters is the validation text (nanoGPT's split) and the rest is the
training text. The vocabulary is the sorted set of characters (Unicode code points, not bytes)
of the training text only, so a character that occurs only in the validation text has no id:
it is dropped from the validation stream and counted in `Corpus.val_dropped`, and the
validation loss is over the characters the model can predict.

A corpus is read and encoded a piece at a time into one compact integer array; large ones
(over CACHE_MIN_BYTES) are encoded once into a .npy file in the cache directory, keyed by the
sha256 of the file's bytes and the options, and memory-mapped from there on.
"""

import contextlib
import glob
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charlm.errors import CharlmError
from charlm.vocab import Vocab, code_points, from_code_points

CHUNK_BYTES = 2**18  # read and encode this much at a time: small pieces keep peak memory low
CACHE_MIN_BYTES = 16 * 2**20  # corpora larger than this are encoded once into the cache
CACHE_FORMAT = 1  # bump when the cached files change meaning
ENCODING_ERRORS = ("strict", "replace")
MAX_CODE = 0x10FFFF  # the largest unicode code point


def default_cache_dir() -> Path:
    """$CHARLM_CACHE_DIR, else $XDG_CACHE_HOME/charlm, else ~/.cache/charlm."""
    if os.environ.get("CHARLM_CACHE_DIR"):
        return Path(os.environ["CHARLM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charlm"


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at path, whole, only if the block ends without an exception.

    The bytes go to a temp file beside path (.NAME.PID.XXXXXXXX.tmp), which is fsynced and
    renamed over path; then the directory is fsynced too. A crash leaves the previous file whole
    (and a stray temp file), never a partial one; the next successful write of the same file
    removes the temp files that writers no longer running left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; corpora and checkpoints need not be
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    remove_stale_temps(path)
    if os.name == "posix":
        # make the rename itself durable; some filesystems refuse, and it has happened anyway
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files of atomic writes of path whose writer is gone (a killed write);
    a write still running, in this process or another, keeps its own. The removed paths."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, and belongs to someone else
        return True
    return True


def file_sha256(file: Path | BinaryIO) -> str:
    """The sha256 of a file's bytes, as hex. A path is opened and read whole; an open binary
    file is read from where it stands to its end, so a caller can hash the very file it goes
    on to read (a file replaced in between cannot make the two disagree)."""
    if not isinstance(file, (str, os.PathLike)):
        h = hashlib.sha256()
        while block := file.read(CHUNK_BYTES):
            h.update(block)
        return h.hexdigest()
    try:
        with open(file, "rb") as f:
            return file_sha256(f)
    except OSError as e:
        raise CharlmError(f"could not read {file}: {e.strerror or e}") from None


# -- reading ----------------------------------------------------------------------------------


def _check_file(path: Path) -> int:
    """The size of path in bytes, or a CharlmError saying why it cannot be read as a corpus."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise CharlmError(f"no such file: {path}") from None
    except OSError as e:
        raise CharlmError(f"could not read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CharlmError(f"{path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise CharlmError(f"{path} is not a regular file")
    if st.st_size == 0:
        raise CharlmError(f"{path} is empty")
    return st.st_size


def _check_errors(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise CharlmError(f"encoding errors must be strict or replace, got {encoding_errors!r}")


def _decode(raw: bytes | memoryview, offset: int, path: Path, errors: str) -> str:
    """raw (which starts at byte `offset` of path) as text; bad UTF-8 is a one-line error."""
    try:
        return str(raw, "utf-8", errors)
    except UnicodeDecodeError as e:
        at = offset + e.start
        raise CharlmError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at offset "
                          f"{at} (use --encoding-errors replace to go on)") from None


def read_text(path: Path, encoding_errors: str = "strict") -> str:
    """The whole of a UTF-8 file; encoding_errors="replace" turns bad bytes into U+FFFD."""
    path = Path(path)
    _check_errors(encoding_errors)
    _check_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CharlmError(f"could not read {path}: {e.strerror or e}") from None
    if not raw:
        raise CharlmError(f"{path} is empty")
    return _decode(raw, 0, path, encoding_errors)


def _cut(buf: bytes) -> int:
    """Where to split buf so that no UTF-8 sequence straddles the split (0: read more first)."""
    # a sequence starts at any byte that is not a continuation byte 0b10xxxxxx; cutting before
    # one decodes exactly as the whole would, bad bytes included. a sequence has at most three
    # continuation bytes, so four in a row at the end means the last one is a stray.
    for i in range(len(buf) - 1, max(len(buf) - 4, 0) - 1, -1):
        if buf[i] & 0xC0 != 0x80:
            return i
    return len(buf) if len(buf) >= 4 else 0


def _pieces(path: Path, errors: str) -> Iterator[tuple[int, str]]:
    """(offset in bytes, text) of successive pieces of the file, cut between characters."""
    try:
        with open(path, "rb") as f:
            start, pending = 0, b""
            while True:
                block = f.read(CHUNK_BYTES)
                buf = pending + block
                if not block:
                    if buf:
                        yield start, _decode(buf, start, path, errors)
                    return
                cut = _cut(buf)
                if cut == 0:
                    pending = buf
                    continue
                yield start, _decode(memoryview(buf)[:cut], start, path, errors)
                start, pending = start + cut, buf[cut:]
    except OSError as e:
        raise CharlmError(f"could not read {path}: {e.strerror or e}") from None


# -- the corpus -------------------------------------------------------------------------------


def too_short_message(name: str, n: int, batch_size: int, seq_len: int) -> str:
    need = batch_size * seq_len + 1
    return (f"{name} has {n:,} training characters; one batch needs at least {need:,} "
            f"(batch {batch_size} x seq_len {seq_len} + 1)")


@dataclass(eq=False)
class Corpus:
    """An encoded corpus: training and validation ids, the vocabulary, and where they came from."""

    path: Path
    train: np.ndarray  # ids of the first 1 - val_frac of the characters
    val: np.ndarray  # ids of the rest, less the val_dropped ones outside the vocabulary
    vocab: Vocab  # the training text's characters
    sha256: str  # of the file's raw bytes
    n_chars: int  # characters in the file
    val_dropped: int  # validation characters left out: they never occur in the training text
    cached: bool = False  # train and val are memory-mapped from the cache directory

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_val(self) -> int:
        """Characters in the validation tail, dropped ones included."""
        return len(self.val) + self.val_dropped

    def require_length(self, batch_size: int, seq_len: int) -> None:
        """A CharlmError unless the training text fills at least one batch."""
        if len(self.train) < batch_size * seq_len + 1:
            raise CharlmError(too_short_message(self.name, len(self.train), batch_size, seq_len))


@dataclass
class _Plan:
    """What the first passes over a file learn, so the last can write ids straight out."""

    n_chars: int
    n_train: int
    vocab: Vocab
    val_dropped: int

    @property
    def n_ids(self) -> int:
        return self.n_chars - self.val_dropped


def _changed(path: Path) -> CharlmError:
    return CharlmError(f"{path} changed while it was being read")


def _plan(path: Path, val_frac: float, errors: str) -> _Plan:
    # one pass to count the characters, so we know where validation starts; one to find the
    # training text's characters and count the validation ones. nothing is kept per piece:
    # many small arrays kept between big temporary ones fragment the heap badly.
    n = sum(len(text) for _, text in _pieces(path, errors))
    n_train = int(n * (1 - val_frac))  # nanoGPT's int(n * 0.9)
    in_train = np.zeros(MAX_CODE + 1, bool)
    val_counts = np.zeros(MAX_CODE + 1, np.int64)
    pos = 0
    for _, text in _pieces(path, errors):
        codes = code_points(text)
        cut = min(max(n_train - pos, 0), len(codes))
        in_train[codes[:cut]] = True
        if cut < len(codes):
            val_counts += np.bincount(codes[cut:], minlength=MAX_CODE + 1)
        pos += len(codes)
    if pos != n:
        raise _changed(path)
    vocab = Vocab(list(from_code_points(np.flatnonzero(in_train))))
    return _Plan(n, n_train, vocab, int(val_counts[~in_train].sum()))


def _encoded(path: Path, plan: _Plan, errors: str) -> Iterator[np.ndarray]:
    """The ids of the file piece by piece, less the validation characters outside the vocab."""
    pos = 0
    for _, text in _pieces(path, errors):
        ids = plan.vocab.ids(code_points(text))
        cut = min(max(plan.n_train - pos, 0), len(ids))
        val = ids[cut:]
        if (ids[:cut] < 0).any():
            raise _changed(path)
        yield ids[:cut].astype(plan.vocab.dtype)
        yield val[val >= 0].astype(plan.vocab.dtype)
        pos += len(ids)
    if pos != plan.n_chars:
        raise _changed(path)


def _check_val_frac(val_frac: float) -> None:
    if not 0 <= val_frac <= 0.5:
        raise CharlmError(f"val_frac must be in [0, 0.5], got {val_frac}")


def _in_memory(path: Path, digest: str, val_frac: float, errors: str) -> Corpus:
    plan = _plan(path, val_frac, errors)
    ids = np.empty(plan.n_ids, plan.vocab.dtype)
    k = 0
    for part in _encoded(path, plan, errors):
        ids[k : k + len(part)] = part
        k += len(part)
    return Corpus(path, ids[: plan.n_train], ids[plan.n_train :], plan.vocab, digest,
                  plan.n_chars, plan.val_dropped)


def _write_cache(path: Path, digest: str, val_frac: float, errors: str, entry: Path) -> None:
    """Encode path straight into entry.npy, then write entry.json, which marks it complete."""
    plan = _plan(path, val_frac, errors)
    header = {"descr": np.lib.format.dtype_to_descr(plan.vocab.dtype), "fortran_order": False,
              "shape": (plan.n_ids,)}
    with atomic_write(entry.with_suffix(".npy")) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for part in _encoded(path, plan, errors):
            f.write(part.tobytes())
    meta = {"format": CACHE_FORMAT, "sha256": digest, "itos": plan.vocab.itos,
            "n_chars": plan.n_chars, "n_train": plan.n_train, "val_dropped": plan.val_dropped}
    with atomic_write(entry.with_suffix(".json")) as f:
        f.write(json.dumps(meta).encode())


def _read_cache(path: Path, digest: str, entry: Path) -> Corpus | None:
    """The corpus memory-mapped from a complete cache entry, or None if there is none."""
    try:
        meta = json.loads(entry.with_suffix(".json").read_text(encoding="utf-8"))
        ids = np.load(entry.with_suffix(".npy"), mmap_mode="r")
        vocab = Vocab(meta["itos"])
        n_train, n_chars, dropped = meta["n_train"], meta["n_chars"], meta["val_dropped"]
    except (OSError, ValueError, KeyError, TypeError, CharlmError):
        return None
    if (meta.get("format") != CACHE_FORMAT or meta.get("sha256") != digest
            or ids.shape != (n_chars - dropped,) or ids.dtype != vocab.dtype):
        return None
    return Corpus(path, ids[:n_train], ids[n_train:], vocab, digest, n_chars, dropped, True)


def load_corpus(path: Path, val_frac: float = 0.1, encoding_errors: str = "strict",
                cache_dir: Path | None = None) -> Corpus:
    """Read, split and encode a UTF-8 corpus; large ones come memory-mapped from the cache."""
    path = Path(path)
    _check_val_frac(val_frac)
    _check_errors(encoding_errors)
    size = _check_file(path)
    digest = file_sha256(path)
    if size <= CACHE_MIN_BYTES:
        return _in_memory(path, digest, val_frac, encoding_errors)
    key = hashlib.sha256(f"{digest} {val_frac!r} {encoding_errors}".encode()).hexdigest()
    entry = Path(cache_dir or default_cache_dir()) / "encoded" / key
    corpus = _read_cache(path, digest, entry)
    if corpus is None:
        try:
            _write_cache(path, digest, val_frac, encoding_errors, entry)
        except OSError:  # the cache is not writable: do without it
            return _in_memory(path, digest, val_frac, encoding_errors)
        corpus = _read_cache(path, digest, entry)
    if corpus is None:  # written but unreadable: should not happen, but never fail for it
        corpus = _in_memory(path, digest, val_frac, encoding_errors)
    return corpus
