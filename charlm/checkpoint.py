"""Checkpoints: one .npz per checkpoint holding the weights, optimizer state and JSON metadata.

Layout: "param/<name>" for each tensor of param_shapes, "opt/<key>" for the optimizer state, and
"__meta__", the metadata as UTF-8 JSON bytes in a uint8 array. Nothing is pickled, so loading an
untrusted file cannot run code. Writes are atomic: a crash leaves the previous checkpoint whole.
"""

import copy
import itertools
import json
from dataclasses import MISSING, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np

from charlm import __version__
from charlm.data import atomic_write, file_sha256
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig, param_shapes

FORMAT = "charlm-checkpoint"
VERSION = 1
META = "__meta__"
# ModelConfig fields newer than VERSION 1's first checkpoints, with the value those were made
# with (stated here: ModelConfig's default may change, what old models were made with cannot)
ADDED_CONFIG = {"forget_bias": 1.0}
LATEST, BEST = "latest.npz", "best.npz"  # the trainer's two checkpoints in its output directory
DEFAULT = "default.npz"  # the model a checkout ships, used when no trained one is found

# what the trainer records; a key it leaves out is saved with this default
TRAIN_META = {
    "train_config": {},  # the training options, as given
    "step": 0,  # optimizer steps taken
    "epoch": 0,
    "data_position": None,  # where the data loader resumes, any JSON value
    "rng_state": None,  # np.random.Generator(...).bit_generator.state
    "train_history": [],  # [{"step": ..., "loss": ...}, ...]
    "val_history": [],
    "best_val_loss": None,
    "corpus_sha256": None,
}
META_TYPES = {
    "train_config": dict, "step": int, "epoch": int, "rng_state": (dict, type(None)),
    "train_history": list, "val_history": list, "best_val_loss": (int, float, type(None)),
    "corpus_sha256": (str, type(None)),
}
# what describes the model itself, kept by `charlm export`; a key left out is saved as None
MODEL_META = {
    "unit_names": None,  # optional: per layer, a name for each unit (n_layer lists of n_hidden)
}
MAX_UNIT_NAME = 80  # characters in one unit's name
BIT_GENERATORS = {name: getattr(np.random, name)
                  for name in ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")}


@dataclass
class Checkpoint:
    """A loaded checkpoint: what rebuilds the model, and what resumes its training."""

    config: ModelConfig
    vocab: list[str]  # itos: the character of each token id
    theta: np.ndarray  # flat parameters in param_shapes order, config.dtype
    meta: dict  # all the metadata: format, config, vocab, TRAIN_META keys, charlm_version, created
    opt_state: dict[str, np.ndarray]  # empty when saved without an optimizer
    sha256: str = ""  # of the file's bytes, as read
    path: Path | None = None  # the file it was read from

    def model(self) -> CharLSTM:
        return CharLSTM(self.config, theta=self.theta)

    @property
    def unit_names(self) -> list[list[str]] | None:
        """Per layer, each unit's name, or None when the checkpoint names none."""
        return self.meta["unit_names"]

    def rng(self) -> np.random.Generator | None:
        """A Generator in the saved state, or None if no state was saved."""
        state = self.meta["rng_state"]
        return None if state is None else _generator(state)


class _ContentError(Exception):
    """What is wrong with a checkpoint's contents, phrased to follow its path."""


def save_checkpoint(path: Path | str, model: CharLSTM, vocab: list[str], meta: dict,
                    opt_state: dict[str, np.ndarray] | None = None) -> None:
    """Write model, vocab, meta (TRAIN_META keys) and opt_state to path, atomically."""
    path = Path(path)
    full = {
        **copy.deepcopy(TRAIN_META), **MODEL_META, **meta,
        "format": FORMAT, "format_version": VERSION, "config": model.config.to_dict(),
        "vocab": list(vocab), "charlm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    blob = json.dumps(full, default=_jsonable).encode("utf-8")
    arrays = {META: np.frombuffer(blob, np.uint8)}
    arrays.update({f"param/{name}": p for name, p in model.params.items()})
    arrays.update({f"opt/{key}": np.asarray(a) for key, a in (opt_state or {}).items()})
    # check what we write exactly as a load would, so every saved checkpoint loads
    try:
        _build(arrays)
    except _ContentError as e:
        raise CharlmError(f"refusing to write {path}: it {e}") from None
    try:
        with atomic_write(path) as f:  # a file object: np.savez adds .npz to a bare name
            np.savez(f, allow_pickle=False, **arrays)
    except OSError as e:
        raise CharlmError(f"cannot write {path}: {_oneline(e)}") from None


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and validate a checkpoint; any problem is a one-line CharlmError naming the file."""
    path = Path(path)
    arrays, sha256 = _read(path)
    try:
        ckpt = _build(arrays)
    except _ContentError as e:
        raise CharlmError(f"{path} {e}") from None
    ckpt.sha256 = sha256
    ckpt.path = path
    return ckpt


def checkpoint_sha256(path: Path | str) -> str:
    """The sha256 of a checkpoint file, for the model card."""
    with _open(Path(path)) as f:
        return file_sha256(f)


def find_checkpoint(path_or_dir: Path | str) -> Path:
    """A file is itself; a directory means its best.npz, else its latest.npz."""
    p = Path(path_or_dir)
    if p.is_dir():
        for name in (BEST, LATEST):
            if (p / name).is_file():
                return p / name
        raise CharlmError(f"no checkpoint in {p} (no {BEST} or {LATEST})")
    if not p.exists():
        raise CharlmError(f"{p} does not exist")
    return p


def default_checkpoint(directory: Path | str = "checkpoints") -> Path:
    """The model to use when none is named: the newest one trained in directory, else its
    default.npz (the model a checkout ships).

    A run is the directory itself or a folder in it (its best.npz, else latest.npz, as
    `charlm train --out` writes them); any other *.npz in it counts too (an export). Where
    there is no checkpoint at all, the CharlmError says what to run.
    """
    d = Path(directory)
    if d.is_dir():
        found = [p for p in d.glob("*.npz") if p.name not in (BEST, LATEST, DEFAULT)]
        # a checkpoints folder holds a handful of runs; a huge one is not worth walking
        for run in [d, *itertools.islice((p for p in d.iterdir() if p.is_dir()), 1000)]:
            found += [run / name for name in (BEST, LATEST) if (run / name).is_file()][:1]
        found = [p for p in found if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        if (d / DEFAULT).is_file():
            return d / DEFAULT
    raise CharlmError(f"no checkpoint in {d}: train one with `charlm train` (it writes "
                      f"{d / BEST}), or name a checkpoint file")


def _read(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """Every array in the file and the file's sha256, or a CharlmError saying why not."""
    with _open(path) as f:
        if f.read(4) != b"PK\x03\x04":
            raise CharlmError(f"{path} is not a charlm checkpoint (not an npz archive)")
        # one open file for hash and arrays, so a concurrent replace cannot mix two files
        f.seek(0)
        sha256 = file_sha256(f)
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                if META not in npz.files:
                    raise _ContentError("is not a charlm checkpoint (no metadata)")
                arrays = {key: npz[key] for key in npz.files}
        except _ContentError as e:
            raise CharlmError(f"{path} {e}") from None
        except Exception as e:  # whatever the bytes make zipfile or numpy raise, it's damage
            raise CharlmError(f"{path} is corrupted or truncated ({_oneline(e)})") from None
    for key, a in arrays.items():
        if not isinstance(a, np.ndarray):  # np.load hands back members not ending .npy as bytes
            raise CharlmError(f"{path} is not a charlm checkpoint ({key!r} is not an array)")
    return arrays, sha256


def _open(path: Path):
    """path opened for reading, or a CharlmError saying why it can't be."""
    if path.is_dir():
        raise CharlmError(f"{path} is a directory, not a checkpoint file")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CharlmError(f"{path} does not exist") from None
    except OSError as e:
        raise CharlmError(f"cannot read {path}: {_oneline(e)}") from None


def _build(arrays: dict[str, np.ndarray]) -> Checkpoint:
    """Validate the arrays of a checkpoint and assemble it, or raise _ContentError."""
    meta = _meta(arrays[META])
    cfg = _config(meta["config"])
    vocab = _vocab(meta["vocab"], cfg.vocab_size)
    for key, default in {**TRAIN_META, **MODEL_META}.items():
        meta.setdefault(key, copy.deepcopy(default))
    for key, types in META_TYPES.items():
        value = meta[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise _ContentError(f"has bad metadata ({key} is {type(value).__name__})")
    for key in ("train_history", "val_history"):
        if not all(isinstance(row, dict) for row in meta[key]):
            raise _ContentError(f"has bad metadata ({key} holds something other than objects)")
    _unit_names(meta["unit_names"], cfg)
    if meta["rng_state"] is not None:
        try:
            _generator(meta["rng_state"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise _ContentError(f"has a bad rng_state ({_oneline(e)})") from None

    shapes = param_shapes(cfg)
    wanted = {f"param/{name}" for name in shapes}
    missing = sorted(wanted - arrays.keys())
    extra = sorted(k for k in arrays if k not in wanted and k != META and not k.startswith("opt/"))
    if missing:
        raise _ContentError(f"is missing arrays ({', '.join(missing)})")
    if extra:
        raise _ContentError(f"has unexpected arrays ({', '.join(extra)})")
    dtype = np.dtype(cfg.dtype)
    for name, shape in shapes.items():
        key, a = f"param/{name}", arrays[f"param/{name}"]
        if a.shape != shape:
            raise _ContentError(f"has {key} of shape {a.shape} where its config needs {shape}")
        if a.dtype != dtype:
            raise _ContentError(f"has {key} of dtype {a.dtype} where its config needs {dtype}")
        if not np.isfinite(a).all():
            raise _ContentError(f"has non-finite values (NaN or inf) in {key}")
    theta = np.concatenate([arrays[f"param/{name}"].ravel() for name in shapes])

    opt_state = {}
    for key, a in arrays.items():
        if not key.startswith("opt/"):
            continue
        if a.dtype.kind not in "biuf":
            raise _ContentError(f"has {key} of dtype {a.dtype}, which no optimizer keeps")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise _ContentError(f"has non-finite values (NaN or inf) in {key}")
        opt_state[key.removeprefix("opt/")] = a
    return Checkpoint(cfg, vocab, theta, meta, opt_state)


def _meta(raw: np.ndarray) -> dict:
    """The metadata dict, checked for our format tag and version."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _ContentError("is not a charlm checkpoint (metadata is not a byte string)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 and bad JSON are both ValueErrors
        raise _ContentError(f"has unreadable metadata ({_oneline(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _ContentError("is not a charlm checkpoint (wrong format tag)")
    version = meta.get("format_version")
    if type(version) is not int or version != VERSION:  # type(): True == 1 and 1.0 == 1
        raise _ContentError(f"has format version {version!r}; this charlm reads version {VERSION}")
    for key in ("config", "vocab"):
        if key not in meta:
            raise _ContentError(f"has no {key} in its metadata")
    return meta


def _config(d: object) -> ModelConfig:
    """A validated ModelConfig from its JSON form, with every field present and well typed."""
    if not isinstance(d, dict):
        raise _ContentError("has an invalid config (not an object)")
    known = {f.name: f for f in fields(ModelConfig)}
    d = {**ADDED_CONFIG, **d}  # a checkpoint from before a field was made with its old value
    missing, extra = sorted(known.keys() - d.keys()), sorted(d.keys() - known.keys())
    if missing:
        raise _ContentError(f"has an invalid config (no {', '.join(missing)})")
    if extra:
        raise _ContentError(f"has an invalid config (unknown {', '.join(extra)})")
    for name, value in d.items():
        default = known[name].default
        if default is MISSING:
            continue
        want = (int, float) if isinstance(default, float) else type(default)
        if not isinstance(value, want) or isinstance(value, bool):
            raise _ContentError(f"has an invalid config ({name} is {value!r})")
    cfg = ModelConfig(**d)
    try:
        cfg.validate()
    except ValueError as e:
        raise _ContentError(f"has an invalid config ({_oneline(e)})") from None
    return cfg


def _vocab(vocab: object, vocab_size: int) -> list[str]:
    """The vocab, checked to be vocab_size distinct single characters."""
    if not isinstance(vocab, list) or not all(isinstance(ch, str) and len(ch) == 1
                                              for ch in vocab):
        raise _ContentError("has a vocab that is not a list of single characters")
    if len(vocab) != vocab_size:
        raise _ContentError(f"has a vocab of {len(vocab)} characters for vocab_size {vocab_size}")
    if len(set(vocab)) != len(vocab):
        dup = next(ch for ch in vocab if vocab.count(ch) > 1)
        raise _ContentError(f"has a vocab with {dup!r} in it more than once")
    return vocab


def _unit_names(names: object, cfg: ModelConfig) -> None:
    """None, or n_layer lists of n_hidden names, each 1 to MAX_UNIT_NAME printable characters."""
    if names is None:
        return
    want = f"{cfg.n_layer} lists (one per layer) of {cfg.n_hidden} names"
    if not isinstance(names, list) or not all(isinstance(layer, list) for layer in names):
        raise _ContentError(f"has bad unit_names (not {want})")
    if len(names) != cfg.n_layer or any(len(layer) != cfg.n_hidden for layer in names):
        got = ", ".join(str(len(layer)) for layer in names[:8]) or "none"
        raise _ContentError(f"has bad unit_names ({len(names)} lists of {got} names where its "
                            f"config needs {want})")
    for layer in names:
        for name in layer:
            if not (isinstance(name, str) and 0 < len(name) <= MAX_UNIT_NAME
                    and name.isprintable()):
                raise _ContentError(f"has bad unit_names ({_oneline(ValueError(repr(name)))} is "
                                    f"not 1 to {MAX_UNIT_NAME} printable characters)")


def _generator(state: dict) -> np.random.Generator:
    """A Generator restored from bit_generator.state (only numpy's own bit generators)."""
    bit_generator = BIT_GENERATORS[state["bit_generator"]]()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _jsonable(x: object) -> object:
    """json.dumps fallback: numpy scalars and arrays (a loss is often np.float32), paths."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, PurePath):
        return str(x)
    raise TypeError(f"{type(x).__name__} cannot go in checkpoint metadata")


def _oneline(e: BaseException) -> str:
    """An exception's message on one short line, fit for a CharlmError."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
