"""Checkpoints: round trips, every kind of damaged file, no unpickling, and crash-safe writes."""

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from charlm import __version__
from charlm.checkpoint import (
    BEST,
    LATEST,
    META,
    checkpoint_sha256,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig
from charlm.optim import Adam

ROOT = Path(__file__).resolve().parent.parent
CFG = ModelConfig(vocab_size=5, n_embd=3, n_hidden=4, n_layer=2)
VOCAB = ["\n", "a", "é", "世", "🎉"]


def make_model(seed: int = 0, cfg: ModelConfig = CFG) -> CharLSTM:
    model = CharLSTM(cfg, seed=seed)
    # random everywhere, biases too, so a misplaced tensor cannot go unnoticed
    model.theta[:] = np.random.default_rng(seed).standard_normal(model.n_params)
    return model


def make_meta(rng: np.random.Generator) -> dict:
    return {
        "train_config": {"lr": 2e-3, "optimizer": "adam", "seq_len": 50},
        "step": 1200,
        "epoch": 3,
        "data_position": {"offset": 12345, "order": [3, 1, 2]},
        "rng_state": rng.bit_generator.state,
        "train_history": [{"step": 100, "loss": 2.5}, {"step": 200, "loss": 2.25}],
        "val_history": [{"step": 200, "loss": 2.375}],
        "best_val_loss": 2.375,
        "corpus_sha256": hashlib.sha256(b"corpus").hexdigest(),
    }


def make_opt(model: CharLSTM) -> dict[str, np.ndarray]:
    opt = Adam(model.n_params, model.dtype)
    rng = np.random.default_rng(7)
    opt.m[:] = rng.standard_normal(model.n_params)
    opt.v[:] = rng.random(model.n_params)
    opt.step = 1200
    return opt.state()


@pytest.fixture
def saved(tmp_path):
    """A complete checkpoint on disk, with what went into it."""
    model, rng = make_model(), np.random.default_rng(42)
    rng.random(10)  # a state other than the seed's
    meta, opt = make_meta(rng), make_opt(model)
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, model, VOCAB, meta, opt)
    return path, model, meta, opt, rng


def expect_error(path: Path, fragment: str) -> str:
    with pytest.raises(CharlmError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and fragment in msg, msg
    return msg


def rewrite(path: Path, change) -> None:
    """Rewrite a checkpoint's raw arrays (meta decoded to a dict) through change(arrays, meta)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays[META].tobytes())
    change(arrays, meta)
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# round trips


def test_round_trip_restores_everything(saved):
    path, model, meta, opt, rng = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == CFG
    assert ckpt.vocab == VOCAB
    assert ckpt.theta.dtype == np.float32
    assert ckpt.theta.tobytes() == model.theta.tobytes()  # bit-identical
    assert ckpt.model().theta.tobytes() == model.theta.tobytes()
    assert ckpt.opt_state.keys() == opt.keys()
    for key, a in opt.items():
        assert ckpt.opt_state[key].dtype == a.dtype
        assert ckpt.opt_state[key].tobytes() == a.tobytes()
    for key, value in meta.items():
        assert ckpt.meta[key] == value, key
    assert ckpt.meta["format"] == "charlm-checkpoint" and ckpt.meta["format_version"] == 1
    assert ckpt.meta["config"] == CFG.to_dict() and ckpt.meta["vocab"] == VOCAB
    assert ckpt.meta["charlm_version"] == __version__
    assert ckpt.meta["created"].endswith("+00:00")
    assert ckpt.sha256 == checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_restored_optimizer_and_rng_continue_identically(saved):
    path, model, _, opt, rng = saved
    ckpt = load_checkpoint(path)
    # PCG64's state is a 128-bit int: it must survive JSON exactly
    assert ckpt.meta["rng_state"]["state"]["state"] > 2**64
    assert ckpt.meta["rng_state"] == rng.bit_generator.state
    assert np.array_equal(ckpt.rng().random(20), rng.random(20))
    restored = Adam(ckpt.theta.size, ckpt.theta.dtype)
    restored.load_state(ckpt.opt_state)
    assert restored.step == 1200 and np.array_equal(restored.m, opt["m"])


def test_round_trip_float64_without_optimizer_fills_defaults(tmp_path):
    cfg = ModelConfig(vocab_size=3, n_embd=2, n_hidden=3, n_layer=1, dropout=0.0,
                      dtype="float64")
    model, path = make_model(1, cfg), tmp_path / "m.npz"
    save_checkpoint(path, model, list("xyz"), {"best_val_loss": np.float32(1.5)})
    ckpt = load_checkpoint(path)
    assert ckpt.theta.dtype == np.float64 and ckpt.theta.tobytes() == model.theta.tobytes()
    assert ckpt.opt_state == {} and ckpt.rng() is None
    assert ckpt.meta["step"] == 0 and ckpt.meta["train_history"] == []
    assert ckpt.meta["best_val_loss"] == 1.5 and type(ckpt.meta["best_val_loss"]) is float


def test_resave_a_loaded_checkpoint(saved):
    # the trainer's resume: load, train on, save with the loaded meta updated
    path = saved[0]
    ckpt = load_checkpoint(path)
    model = ckpt.model()
    model.theta *= 2
    save_checkpoint(path, model, ckpt.vocab, {**ckpt.meta, "step": 1300}, ckpt.opt_state)
    again = load_checkpoint(path)
    assert again.meta == {**ckpt.meta, "step": 1300, "created": again.meta["created"]}
    assert again.theta.tobytes() == model.theta.tobytes()
    assert again.sha256 != ckpt.sha256


def test_save_writes_exactly_the_path_given(tmp_path):
    path = tmp_path / "sub" / "no_extension"
    save_checkpoint(path, make_model(), VOCAB, {})
    assert sorted(p.name for p in path.parent.iterdir()) == ["no_extension"]
    assert load_checkpoint(path).vocab == VOCAB


def test_save_refuses_what_load_would_reject(saved):
    path, model, meta, opt, _ = saved
    before = path.read_bytes()
    bad = make_model(3)
    bad.params["Wy"][0, 0] = np.nan
    cases = [
        (model, VOCAB[:4], "vocab of 4 characters"),
        (model, ["a", "a", "b", "c", "d"], "more than once"),
        (bad, VOCAB, "non-finite values (NaN or inf) in param/Wy"),
    ]
    for m, vocab, fragment in cases:
        with pytest.raises(CharlmError, match="refusing to write") as info:
            save_checkpoint(path, m, vocab, meta, opt)
        assert fragment in str(info.value)
    with pytest.raises(CharlmError, match="opt/junk"):
        save_checkpoint(path, model, VOCAB, meta, {"junk": np.array(["x"], object)})
    with pytest.raises(TypeError, match="cannot go in checkpoint metadata"):
        save_checkpoint(path, model, VOCAB, {"train_config": {"f": object()}})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.npz"]


# files that are not checkpoints, or damaged ones


def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nope.npz", "does not exist")
    expect_error(tmp_path, "is a directory")


def test_not_checkpoints(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello, I am not an npz\n")
    expect_error(text, "not a charlm checkpoint (not an npz archive)")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    expect_error(empty, "not an npz archive")
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    expect_error(npy, "not an npz archive")
    plain = tmp_path / "plain.npz"
    np.savez(plain, x=np.zeros(3))
    expect_error(plain, "is not a charlm checkpoint (no metadata)")
    other_zip = tmp_path / "other.npz"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "hi")
    expect_error(other_zip, "no metadata")
    raw_meta = tmp_path / "raw_meta.npz"
    with zipfile.ZipFile(raw_meta, "w") as z:
        z.writestr("__meta__", b"{}")  # not .npy, so np.load hands back bytes
    expect_error(raw_meta, "not a charlm checkpoint ('__meta__' is not an array)")


@pytest.mark.parametrize("change, fragment", [
    (lambda a, m: m.update(format="something-else"), "not a charlm checkpoint (wrong format"),
    (lambda a, m: m.pop("format"), "wrong format tag"),
    (lambda a, m: m.update(format_version=2), "format version 2; this charlm reads version 1"),
    (lambda a, m: m.update(format_version="1"), "format version '1'"),
    (lambda a, m: m.update(format_version=True), "format version True"),
    (lambda a, m: m.pop("config"), "no config"),
    (lambda a, m: m["config"].update(dropout=1.5), "invalid config (dropout must be in [0, 1)"),
    (lambda a, m: m["config"].update(dtype="float16"), "invalid config (dtype must be"),
    (lambda a, m: m["config"].update(n_layer="2"), "invalid config (n_layer is '2')"),
    (lambda a, m: m["config"].update(n_layer=True), "invalid config (n_layer is True)"),
    (lambda a, m: m["config"].pop("n_hidden"), "invalid config (no n_hidden)"),
    (lambda a, m: m["config"].update(colour="red"), "invalid config (unknown colour)"),
    (lambda a, m: m["config"].update(forget_bias="1"), "invalid config (forget_bias is '1')"),
    (lambda a, m: m["config"].update(forget_bias=float("inf")), "forget_bias must be a finite"),
    (lambda a, m: m.update(config=[1, 2]), "invalid config (not an object)"),
    (lambda a, m: m.update(vocab=list("abcd")), "vocab of 4 characters for vocab_size 5"),
    (lambda a, m: m.update(vocab=list("abcdd")), "'d' in it more than once"),
    (lambda a, m: m.update(vocab=["ab", "c", "d", "e", "f"]), "not a list of single characters"),
    (lambda a, m: m.update(vocab=[1, 2, 3, 4, 5]), "not a list of single characters"),
    (lambda a, m: m.update(vocab="abcde"), "not a list of single characters"),
    (lambda a, m: m.update(step="12"), "bad metadata (step is str)"),
    (lambda a, m: m.update(train_history=[1.5]), "bad metadata (train_history"),
    (lambda a, m: m.update(rng_state={"bit_generator": "os.system"}), "bad rng_state"),
    (lambda a, m: m["rng_state"]["state"].pop("inc"), "bad rng_state"),
    (lambda a, m: a.pop("param/by"), "missing arrays (param/by)"),
    (lambda a, m: a.update(junk=np.zeros(2)), "unexpected arrays (junk)"),
    (lambda a, m: a.update({"param/W1": np.zeros((4, 15), np.float32)}),
     "param/W1 of shape (4, 15) where its config needs (4, 16)"),
    (lambda a, m: a.update({"param/E": a["param/E"].astype(np.float64)}),
     "param/E of dtype float64 where its config needs float32"),
    (lambda a, m: a.update({"param/E": a["param/E"].astype(">f4")}), "param/E of dtype >f4"),
    (lambda a, m: a["param/U1"].__setitem__((1, 2), np.nan), "non-finite values (NaN or inf) in"
                                                             " param/U1"),
    (lambda a, m: a["param/by"].__setitem__(0, -np.inf), "non-finite values (NaN or inf) in"),
    (lambda a, m: a["opt/v"].__setitem__(0, np.nan), "non-finite values (NaN or inf) in opt/v"),
    (lambda a, m: a.update({"opt/m": np.array(["x"])}), "opt/m of dtype <U1"),
])
def test_bad_contents(saved, change, fragment):
    path = saved[0]
    rewrite(path, change)
    expect_error(path, fragment)


def test_a_checkpoint_from_before_forget_bias_loads_with_1(saved):
    path = saved[0]
    rewrite(path, lambda a, m: m["config"].pop("forget_bias"))
    assert load_checkpoint(path).config.forget_bias == 1.0  # what such models were made with
    assert load_checkpoint(Path(__file__).parent.parent / "checkpoints" / "default.npz")


def test_unreadable_metadata(saved):
    path = saved[0]
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for raw, fragment in [(b"{not json", "unreadable metadata"),
                          (b"\xff\xfe", "unreadable metadata"),
                          (b"[" * 100_000, "unreadable metadata"),
                          (b'["a list"]', "wrong format tag")]:
        np.savez(path, **{**arrays, META: np.frombuffer(raw, np.uint8)})
        expect_error(path, fragment)
    np.savez(path, **{**arrays, META: np.zeros(3, np.float32)})
    expect_error(path, "metadata is not a byte string")


def test_truncated_anywhere(saved, tmp_path):
    path = saved[0]
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    offsets = sorted({*range(0, len(data), 97), 1, 4, len(data) // 2, len(data) - 22,
                      len(data) - 1})
    for n in offsets:
        cut.write_bytes(data[:n])
        expect_error(cut, "")


def test_flipped_bytes_in_the_data(saved, tmp_path):
    path = saved[0]
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    bad = tmp_path / "bad.npz"
    for info in infos:
        # stored, not compressed: the member's bytes follow its local header, whose name and
        # extra field lengths sit at bytes 26 and 28 (its extra field is not the directory's)
        at = info.header_offset
        n_name, n_extra = struct.unpack("<HH", data[at + 26 : at + 30])
        start = at + 30 + n_name + n_extra
        assert data[start : start + 6] == b"\x93NUMPY"
        for at in (start + 5, start + info.file_size // 2, start + info.file_size - 1):
            flipped = bytearray(data)
            flipped[at] ^= 0x20
            bad.write_bytes(bytes(flipped))
            expect_error(bad, "is corrupted or truncated")


def test_flipped_bytes_anywhere_never_load_wrong_data(saved, tmp_path):
    path, model = saved[0], saved[1]
    data, bad = path.read_bytes(), tmp_path / "bad.npz"
    rng = random.Random(0)
    errors = 0
    for at in rng.sample(range(len(data)), min(400, len(data))):
        flipped = bytearray(data)
        flipped[at] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(flipped))
        try:
            ckpt = load_checkpoint(bad)
        except CharlmError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            errors += 1
        else:  # a byte zip never checks (a timestamp, say): the contents must be untouched
            assert ckpt.theta.tobytes() == model.theta.tobytes() and ckpt.vocab == VOCAB
    assert errors > 300


def test_object_array_is_never_unpickled(saved, tmp_path):
    path = saved[0]
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key in ("param/E", "opt/m", "junk", META):
        evil = {**arrays, key: np.array([Exploit()], dtype=object)}
        with open(path, "wb") as f:
            np.savez(f, allow_pickle=True, **evil)
        expect_error(path, "")
        assert not marker.exists()


# crash safety


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def previous(saved):
    """An existing checkpoint, its bytes, and a different model to try to write over it."""
    path = saved[0]
    return path, path.read_bytes(), make_model(seed=9)


def assert_untouched(path: Path, before: bytes, model: CharLSTM) -> None:
    assert path.read_bytes() == before
    assert load_checkpoint(path).theta.tobytes() == model.theta.tobytes()
    assert listing(path.parent) == [path.name]


def test_crash_halfway_through_the_write(previous, saved, monkeypatch):
    path, before, other = previous

    def half_then_crash(f, *args, **kwargs):
        f.write(before[: len(before) // 2])
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(np, "savez", half_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, other, VOCAB, {})
    monkeypatch.undo()
    assert_untouched(path, before, saved[1])


def test_interrupt_before_the_rename(previous, saved, monkeypatch):
    path, before, other = previous

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, other, VOCAB, {})
    monkeypatch.undo()
    assert_untouched(path, before, saved[1])


def test_os_error_is_a_one_line_error(previous, saved, monkeypatch):
    path, before, other = previous

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CharlmError, match=r"cannot write .*ckpt.npz: .*No space left on device"):
        save_checkpoint(path, other, VOCAB, {})
    monkeypatch.undo()
    assert_untouched(path, before, saved[1])


def test_first_write_crashing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda src, dst: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_checkpoint(tmp_path / "latest.npz", make_model(), VOCAB, {})
    assert listing(tmp_path) == []


WRITER = """
import sys
import numpy as np
from charlm.checkpoint import save_checkpoint
from charlm.model import CharLSTM, ModelConfig
model = CharLSTM(ModelConfig(vocab_size=5, n_embd=8, n_hidden=96, n_layer=2))
step = int(sys.argv[2])
while True:
    model.theta[:] = step
    save_checkpoint(sys.argv[1], model, list("abcde"), {"step": step})
    if step == int(sys.argv[2]):
        print("ready", flush=True)
    step += 1
"""


def test_kill_9_mid_write_leaves_a_whole_checkpoint(tmp_path):
    path, rng, start = tmp_path / LATEST, random.Random(0), 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)],
                                stdout=subprocess.PIPE, env=env, cwd=ROOT)
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            proc.kill()  # SIGKILL: no cleanup runs
            proc.wait()
            proc.stdout.close()
        ckpt = load_checkpoint(path)
        step = ckpt.meta["step"]
        assert step >= start and np.all(ckpt.theta == step)
        start = step + 1
    # a kill can strand a temp file, never damage the checkpoint or look like one
    assert all(name == LATEST or name.startswith(f".{LATEST}.") for name in listing(tmp_path))


# finding checkpoints


def test_find_checkpoint(tmp_path):
    model = make_model()
    with pytest.raises(CharlmError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
    with pytest.raises(CharlmError, match="does not exist"):
        find_checkpoint(tmp_path / "missing.npz")
    save_checkpoint(tmp_path / LATEST, model, VOCAB, {})
    assert find_checkpoint(tmp_path) == tmp_path / LATEST
    save_checkpoint(tmp_path / BEST, model, VOCAB, {})
    assert find_checkpoint(tmp_path) == tmp_path / BEST
    assert find_checkpoint(tmp_path / LATEST) == tmp_path / LATEST
    assert find_checkpoint(str(tmp_path)) == tmp_path / BEST
