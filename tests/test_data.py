"""Reading, encoding, splitting, caching and batching a corpus (charlm.data)."""

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from charlm import data
from charlm.batches import Batcher, iter_eval
from charlm.data import load_corpus, read_text
from charlm.errors import CharlmError
from charlm.vocab import Vocab

UNICODE = "héllo → 世界 🎉\n"


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Keep every test's cache out of the user's ~/.cache."""
    d = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE_DIR", str(d))
    return d


# -- read_text ------------------------------------------------------------------------------


def test_read_text_roundtrips_unicode(tmp_path):
    assert read_text(write(tmp_path / "c.txt", UNICODE)) == UNICODE


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.txt", "no such file: "),
    (lambda d: d, "is a directory, not a file"),
    (lambda d: write(d / "empty.txt", b""), "empty.txt is empty"),
])
def test_bad_files_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    for load in (read_text, load_corpus):
        with pytest.raises(CharlmError, match=message) as e:
            load(path)
        assert "\n" not in str(e.value)


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "open", denied, raising=False)
    with pytest.raises(CharlmError, match=r"could not read .*c.txt: Permission denied"):
        read_text(path)
    with pytest.raises(CharlmError, match="Permission denied"):
        load_corpus(path)


def test_invalid_utf8_names_the_byte_and_offset(tmp_path):
    raw = "ok é\n".encode() * 300 + b"\xff" + b"tail"
    path = write(tmp_path / "corpus.txt", raw)
    want = (f"{path} is not valid UTF-8: byte 0xff at offset {len(raw) - 5} "
            "(use --encoding-errors replace to go on)")
    with pytest.raises(CharlmError) as e:
        read_text(path)
    assert str(e.value) == want
    with pytest.raises(CharlmError) as e:
        load_corpus(path)
    assert str(e.value) == want


def test_invalid_utf8_offset_is_exact_across_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_BYTES", 7)
    raw = "日本語テキスト".encode() * 20 + b"\xe6\x97" + b"abc"  # a truncated character
    path = write(tmp_path / "c.txt", raw)
    with pytest.raises(CharlmError, match=f"byte 0xe6 at offset {len(raw) - 5} "):
        load_corpus(path)


def test_replace_mode_goes_on(tmp_path):
    path = write(tmp_path / "c.txt", b"ab\xffcd\xe2\x82")
    assert read_text(path, encoding_errors="replace") == "ab\ufffdcd\ufffd"
    c = load_corpus(path, val_frac=0, encoding_errors="replace")
    assert c.vocab.decode(c.train) == "ab\ufffdcd\ufffd"
    with pytest.raises(CharlmError, match="strict or replace"):
        read_text(path, encoding_errors="ignore")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_reading_in_pieces_decodes_like_the_whole(tmp_path, monkeypatch, chunk):
    rng = np.random.default_rng(chunk)
    text = "".join(rng.choice(list("ab é→世界🎉\n"), 400))
    raw = bytearray(text.encode())
    for i in rng.integers(0, len(raw), 12):  # sprinkle bad bytes, some inside characters
        raw[i] = int(rng.choice([0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xFF]))
    path = write(tmp_path / "c.txt", bytes(raw))
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk)
    pieces = list(data._pieces(path, "replace"))
    assert "".join(t for _, t in pieces) == bytes(raw).decode("utf-8", "replace")
    starts = [start for start, _ in pieces]
    assert starts[0] == 0 and starts == sorted(set(starts)) and starts[-1] < len(raw)


# -- Vocab ----------------------------------------------------------------------------------


def test_vocab_roundtrip_on_non_ascii_text():
    v = Vocab.from_text(UNICODE)
    assert v.itos == sorted(set(UNICODE))
    assert v.stoi == {c: i for i, c in enumerate(v.itos)}
    assert v.vocab_size == len(set(UNICODE))
    ids = v.encode(UNICODE)
    assert ids.dtype == np.uint8 and len(ids) == len(UNICODE)
    assert ids.tolist() == [v.stoi[c] for c in UNICODE]
    assert v.decode(ids) == UNICODE
    assert v.decode(ids.tolist()) == UNICODE
    assert v.decode([]) == ""
    assert Vocab(v.itos) == v


@pytest.mark.parametrize("n, dtype", [(256, np.uint8), (257, np.uint16), (65536, np.uint16),
                                      (65537, np.int32)])
def test_ids_are_compact(n, dtype):
    chars = [chr(c) for c in range(0x20000, 0x20000 + n)]
    v = Vocab(chars)
    ids = v.encode(chars[-1] + chars[0])
    assert ids.dtype == dtype and ids.tolist() == [n - 1, 0]


def test_unknown_characters_error_or_drop():
    v = Vocab.from_text("abc")
    with pytest.raises(CharlmError, match=r"2 characters not in the vocabulary: 'é', '🎉'$"):
        v.encode("aébc🎉é")
    assert v.decode(v.encode("aébc🎉é", unknown="drop")) == "abc"
    assert v.unknown_chars("aébc🎉é") == ["é", "🎉"]
    assert v.unknown_chars("cab") == []
    with pytest.raises(CharlmError, match=r"and 5 more$"):
        v.encode("".join(chr(0x400 + i) for i in range(15)))


def test_bad_vocabularies_and_ids():
    with pytest.raises(CharlmError, match="one character"):
        Vocab(["a", "bc"])
    with pytest.raises(CharlmError, match="twice"):
        Vocab(["a", "b", "a"])
    v = Vocab(["a", "b"])
    for bad in ([2], [-1], [0.5]):
        with pytest.raises(ValueError):
            v.decode(bad)


# -- load_corpus ----------------------------------------------------------------------------


def test_split_is_the_tail_and_vocab_is_the_training_text(tmp_path):
    text = "abcabcabca" * 9 + "abcxyzxyzz"  # 100 chars; x, y, z only in the last 10
    path = write(tmp_path / "c.txt", text)
    c = load_corpus(path, val_frac=0.1)
    assert c.vocab.itos == ["a", "b", "c"]
    assert c.vocab.decode(c.train) == text[:90]
    assert c.vocab.decode(c.val) == "abc"
    assert (c.n_chars, c.val_dropped, c.n_val) == (100, 7, 10)
    assert c.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert c.name == "c.txt" and not c.cached


def test_split_matches_nanogpt_on_non_ascii_text(tmp_path):
    text = UNICODE * 37
    c = load_corpus(write(tmp_path / "c.txt", text), val_frac=0.25)
    n = len(text)
    assert len(c.train) == int(n * 0.75) and len(c.val) == n - int(n * 0.75)
    assert c.vocab.decode(c.train) + c.vocab.decode(c.val) == text


def test_val_frac_zero_means_no_validation(tmp_path):
    c = load_corpus(write(tmp_path / "c.txt", UNICODE), val_frac=0)
    assert len(c.val) == 0 and c.vocab.decode(c.train) == UNICODE


@pytest.mark.parametrize("val_frac", [-0.1, 0.6, float("nan")])
def test_bad_val_frac(tmp_path, val_frac):
    with pytest.raises(CharlmError, match=r"val_frac must be in \[0, 0.5\]"):
        load_corpus(write(tmp_path / "c.txt", "abc"), val_frac=val_frac)


def test_in_pieces_equals_in_one_go(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("ab é→世界🎉\n"), 5000)) + "ΩΩ"  # Ω only in validation
    path = write(tmp_path / "c.txt", text)
    whole = load_corpus(path, val_frac=0.2)
    monkeypatch.setattr(data, "CHUNK_BYTES", 5)
    pieces = load_corpus(path, val_frac=0.2)
    assert pieces.vocab == whole.vocab
    assert np.array_equal(pieces.train, whole.train) and np.array_equal(pieces.val, whole.val)
    assert pieces.val_dropped == whole.val_dropped == 2


def test_require_length(tmp_path):
    c = load_corpus(write(tmp_path / "corpus.txt", "x" * 134), val_frac=0.1)
    with pytest.raises(CharlmError) as e:
        c.require_length(50, 50)
    assert str(e.value) == ("corpus.txt has 120 training characters; one batch needs at least "
                            "2,501 (batch 50 x seq_len 50 + 1)")
    c.require_length(7, 17)  # 7 * 17 + 1 = 120


def test_large_corpora_are_cached_and_memory_mapped(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setattr(data, "CACHE_MIN_BYTES", 0)
    monkeypatch.setattr(data, "CHUNK_BYTES", 16)
    text = UNICODE * 50 + "ΩΩ"
    path = write(tmp_path / "c.txt", text)
    first = load_corpus(path, val_frac=0.1)
    files = sorted(p.suffix for p in (cache_dir / "encoded").iterdir())
    assert files == [".json", ".npy"]  # no temporary files left
    assert first.cached and isinstance(first.train, np.memmap)

    def no_encoding(*args):
        raise AssertionError("encoded again")

    with monkeypatch.context() as m:
        m.setattr(data, "_plan", no_encoding)
        second = load_corpus(path, val_frac=0.1)
    assert second.cached and isinstance(second.val, np.memmap)
    assert second.vocab == first.vocab and second.val_dropped == first.val_dropped == 2
    assert second.vocab.decode(second.train) + second.vocab.decode(second.val) == text[:-2]
    other = load_corpus(path, val_frac=0.2)  # other options, another cache entry
    assert len(other.val) == len(text) - int(len(text) * 0.8) - 2
    assert len(list((cache_dir / "encoded").iterdir())) == 4


def test_unwritable_cache_falls_back_to_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_MIN_BYTES", 0)
    blocker = write(tmp_path / "blocker", "a file where the cache dir should be")
    c = load_corpus(write(tmp_path / "c.txt", UNICODE * 5), cache_dir=blocker / "x")
    assert not c.cached and c.vocab.decode(c.train) + c.vocab.decode(c.val) == UNICODE * 5


# -- Batcher --------------------------------------------------------------------------------


def positions(n: int) -> np.ndarray:
    """Data whose ids are their own positions, so batches show where they came from."""
    return np.arange(n, dtype=np.int32)


def test_batches_are_contiguous_streams():
    B, T, n = 3, 4, 40
    b = Batcher(positions(n), B, T)
    L = (n - 1) // B  # 13 chars per stream, 3 windows of 4
    assert (b.stream_len, b.n_windows) == (L, 3)
    x0, y0 = b.next_batch()
    assert x0.shape == y0.shape == (B, T) and x0.dtype == np.int64
    assert np.array_equal(y0, x0 + 1)
    assert x0[:, 0].tolist() == [0, L, 2 * L]
    x1, y1 = b.next_batch()
    assert np.array_equal(x1[:, 0], x0[:, -1] + 1)  # each row goes on where it stopped
    assert np.array_equal(x1[:, 0], y0[:, -1])
    assert not b.wrapped and b.epoch == 0
    b.next_batch()
    x3, _ = b.next_batch()  # a new epoch: back to the start
    assert b.wrapped and b.epoch == 1 and np.array_equal(x3, x0)
    b.next_batch()
    assert not b.wrapped


def test_batcher_resumes_exactly():
    data_ = np.random.default_rng(0).integers(0, 60, 1000).astype(np.uint8)
    a = Batcher(data_, 5, 7)
    for _ in range(40):  # past a wrap (28 windows an epoch)
        a.next_batch()
    saved = dict(a.position)
    b = Batcher(data_, 5, 7, position=saved)
    for _ in range(50):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert (a.epoch, a.wrapped) == (b.epoch, b.wrapped)


def test_batcher_rejects_a_position_for_other_data():
    p = Batcher(positions(100), 2, 5).position
    with pytest.raises(CharlmError, match="does not fit"):
        Batcher(positions(100), 3, 5, position=p)
    with pytest.raises(CharlmError, match="does not fit"):
        Batcher(positions(100), 2, 5, position={**p, "window": 99})
    with pytest.raises(CharlmError, match="not a data position"):
        Batcher(positions(100), 2, 5, position={"epoch": 0})


def test_batcher_needs_one_batch():
    Batcher(positions(2 * 5 + 1), 2, 5)
    with pytest.raises(CharlmError, match="needs at least 11 "):
        Batcher(positions(10), 2, 5)


# -- iter_eval ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 5, 37, 101, 200, 201, 997])
def test_iter_eval_predicts_every_character_once(n):
    B, T = 8, 10
    seen = np.zeros(n, int)
    prev_rows, prev_end = None, None
    for x, y in iter_eval(positions(n), B, T):
        assert np.array_equal(y, x + 1) and x.shape[0] <= B and x.shape[1] <= T
        if x.shape[0] == prev_rows:  # same streams: each row continues where it stopped
            assert np.array_equal(x[:, 0], prev_end + 1)
        else:  # new streams, as from a zero state
            assert prev_rows is None or prev_rows == 1
        prev_rows, prev_end = x.shape[0], x[:, -1]
        np.add.at(seen, y.ravel(), 1)
    assert seen[1:].tolist() == [1] * max(n - 1, 0)


def test_iter_eval_keeps_full_batches_when_it_can():
    shapes = [x.shape for x, _ in iter_eval(positions(8 * 25 + 1), 8, 10)]
    assert shapes == [(8, 10), (8, 10), (8, 5)]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARLM_CACHE_DIR", str(tmp_path / "mine"))
    assert data.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CHARLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "charlm"


# -- atomic_write -----------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="directories are fsynced on POSIX only")
def test_atomic_write_syncs_the_file_then_its_directory(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "sub" / "out.bin"
    with data.atomic_write(path) as f:
        f.write(b"whole")
    assert synced == ["file", "dir"]
    assert path.read_bytes() == b"whole" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


def test_atomic_write_leaves_the_old_file_when_the_block_fails(tmp_path):
    path = write(tmp_path / "out.bin", b"old")
    with pytest.raises(RuntimeError), data.atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_file_sha256_of_a_path_or_the_rest_of_an_open_file(tmp_path):
    raw = bytes(range(256)) * 5000  # several read blocks
    path = write(tmp_path / "f.bin", raw)
    assert data.file_sha256(path) == data.file_sha256(str(path)) == hashlib.sha256(raw).hexdigest()
    with open(path, "rb") as f:
        f.seek(1000)
        assert data.file_sha256(f) == hashlib.sha256(raw[1000:]).hexdigest()
    with pytest.raises(CharlmError, match=r"could not read .*missing"):
        data.file_sha256(tmp_path / "missing")
