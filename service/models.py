"""The served models: each checkpoint of the configured directory, loaded, warmed, with an engine.

Loading can run in a background thread, so that /health says 503 until every model is ready.
"""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from charlm.checkpoint import Checkpoint, load_checkpoint
from charlm.errors import CharlmError
from charlm.generate import PackedModel
from charlm.warmup import warmup

from .engine import Engine
from .errors import ApiError

log = logging.getLogger(__name__)


@dataclass
class Served:
    """One loaded model: its name, checkpoint, packed weights and engine."""

    name: str
    path: Path
    ckpt: Checkpoint
    packed: PackedModel
    engine: Engine
    created: int  # the file's mtime, as OpenAI's "created"

    def card(self) -> dict:
        """The model card: what it is, how it was trained, and which file it is."""
        meta, cfg = self.ckpt.meta, self.ckpt.config
        val = meta["val_history"]
        return {
            "name": self.name,
            "file": self.path.name,
            "sha256": self.ckpt.sha256,
            "vocab": "".join(self.ckpt.vocab),
            "vocab_size": cfg.vocab_size,
            "n_params": int(self.ckpt.theta.size),
            "config": cfg.to_dict(),
            "step": meta["step"],
            "epoch": meta["epoch"],
            "best_val_loss": meta["best_val_loss"],
            "last_val_loss": val[-1].get("val_loss") if val else None,
            "corpus": meta.get("corpus"),
            "corpus_sha256": meta["corpus_sha256"],
            "charlm_version": meta.get("charlm_version"),
            "checkpoint_created": meta.get("created"),
            "kernel_threads": self.packed.threads,
        }


def discover(source: Path) -> dict[str, Path]:
    """name -> checkpoint file: the file itself, or each *.npz directly inside the directory.

    A symlink that leads outside the directory is skipped: a name only ever resolves to a file
    inside the configured directory.
    """
    if source.is_file():
        return {source.stem: source}
    if not source.is_dir():
        raise CharlmError(f"checkpoint path {source} does not exist")
    root = source.resolve()
    found = {}
    for p in sorted(source.glob("*.npz")):
        if p.name.startswith(".") or not p.is_file():
            continue
        if not p.resolve().is_relative_to(root):
            log.warning("skipping %s: it links outside %s", p, source)
            continue
        found[p.stem] = p
    if not found:
        raise CharlmError(f"no *.npz checkpoint in {source}")
    return found


class Models:
    """The models of one app, loaded once; ready is set when all of them can generate."""

    def __init__(self, source: str | Path, default: str | None = None,
                 kernel_threads: int | None = None) -> None:
        self.source = Path(source)
        self.kernel_threads = kernel_threads
        self.requested_default = default
        self.models: dict[str, Served] = {}
        self.default: str | None = None
        self.skipped: dict[str, str] = {}  # file name -> why it is not served
        self.error: str | None = None  # why nothing is served
        self.ready = threading.Event()
        self.load_seconds: float | None = None

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="charlm-load", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Load, pack, warm and start every model; problems go to .error and .skipped."""
        t0 = time.perf_counter()
        try:
            self._load()
        except CharlmError as e:
            self.error = str(e)
            log.error("not serving: %s", e)
            return
        except Exception as e:  # not a bad file: say so, and stay unhealthy
            self.error = f"loading failed: {type(e).__name__}: {e}"
            log.exception("not serving")
            return
        self.load_seconds = time.perf_counter() - t0
        log.info("serving %s (default %s) after %.1f s", ", ".join(self.models), self.default,
                 self.load_seconds)
        self.ready.set()

    def _load(self) -> None:
        for name, path in discover(self.source).items():
            try:
                ckpt = load_checkpoint(path)
                model = ckpt.model()
                packed = PackedModel(model, ckpt.vocab, self.kernel_threads)
            except CharlmError as e:
                # named by the file, not its absolute path: /info shows this
                self.skipped[path.name] = str(e).replace(str(path), path.name)
                log.error("skipping %s: %s", path, e)
                continue
            # a cold compile would cost the first request half a minute
            warmup((model.config.cell,), (model.config.dtype,), train=False)
            engine = Engine(packed, name)
            self.models[name] = Served(name, path, ckpt, packed, engine,
                                       int(path.stat().st_mtime))
        if not self.models:
            raise CharlmError(f"no loadable checkpoint in {self.source}: "
                              + "; ".join(self.skipped.values()))
        want = self.requested_default
        if want and want not in self.models:
            raise CharlmError(f"the default model {want!r} is not among "
                              f"{', '.join(self.models)}")
        self.default = want or ("default" if "default" in self.models else next(iter(self.models)))

    def require_ready(self) -> None:
        """503 until every model is loaded and warmed (or for good, if loading failed)."""
        if not self.ready.is_set():
            raise ApiError(503, self.error or "the model is still loading; retry shortly",
                           "unavailable", {"Retry-After": "1"})

    def ready_models(self) -> list[Served]:
        self.require_ready()
        return list(self.models.values())

    def get(self, name: str | None) -> Served:
        """The model called name (None: the default); 503 while loading, 404 if unknown."""
        self.require_ready()
        if name is None:
            return self.models[self.default]
        # names are looked up, never joined to a path: only discovered files can be reached
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"unknown model {name!r}; models: {', '.join(self.models)}",
                           "model_not_found")
        return served

    @property
    def active(self) -> int:
        return sum(s.engine.active for s in self.models.values())
