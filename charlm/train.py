"""The training job: batches through the corpus, evaluates, checkpoints, and resumes exactly."""

import contextlib
import json
import math
import signal
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from charlm import checkpoint as ckpt
from charlm.batches import Batcher, iter_eval
from charlm.data import Corpus
from charlm.errors import CharlmError
from charlm.limits import MAX_BATCH, MAX_SEQ_LEN, check_fits, shape, train_bytes
from charlm.model import CharLSTM, ModelConfig, State
from charlm.optim import OPTIMIZERS, Adam, RMSprop, clip_grad_norm

LN2 = math.log(2)
LR_DECAYS = ("cosine", "linear", "constant")  # the learning-rate schedules of get_lr
DEFAULT_MINUTES = 10.0  # the budget when no --max-* is given


@dataclass
class TrainConfig:
    seq_len: int = 100  # characters per window: backprop runs this far back in time
    batch_size: int = 32  # parallel streams through the text
    lr: float = 4e-3  # peak learning rate
    optimizer: str = "adam"  # adam | rmsprop
    lr_decay: str = "cosine"  # cosine | linear | constant, from lr down to lr * min_lr_frac
    min_lr_frac: float = 0.1
    warmup_steps: int = 0  # linear warm-up to lr
    grad_clip: float = 5.0  # clip the global gradient norm to this; 0 disables
    val_frac: float = 0.1  # the tail of the corpus held out for validation
    eval_every: int = 250  # steps between evaluations (and checkpoints)
    log_every: int = 10  # steps between train-loss records in the history
    max_steps: int = 0  # stop after this many steps in all (0: no limit)
    max_epochs: float = 0.0  # stop after this many passes over the training text (0: no limit)
    max_minutes: float = 0.0  # stop after this much wall-clock time (0: no limit)
    seed: int = 1337

    def validate(self) -> None:
        for f in fields(self):  # a checkpoint's train_config reaches here too: types first
            value, want = getattr(self, f.name), type(f.default)
            if not isinstance(value, (int, float) if want is float else want) \
                    or isinstance(value, bool):
                raise CharlmError(f"--{f.name.replace('_', '-')} must be "
                                  f"{'a number' if want is float else want.__name__}, "
                                  f"got {str(value)[:40]!r}")
        positive = ("seq_len", "batch_size", "eval_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise CharlmError(f"--{name.replace('_', '-')} must be at least 1")
        for name, hi in (("seq_len", MAX_SEQ_LEN), ("batch_size", MAX_BATCH)):
            if getattr(self, name) > hi:
                raise CharlmError(f"--{name.replace('_', '-')} must be at most {hi:,}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise CharlmError(f"--lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise CharlmError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.lr_decay not in LR_DECAYS:
            raise CharlmError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}")
        if not 0 <= self.min_lr_frac <= 1:
            raise CharlmError("--min-lr-frac must be in [0, 1]")
        if not 0 <= self.val_frac <= 0.5:
            raise CharlmError(f"--val-frac must be in [0, 0.5], got {self.val_frac}")
        for name in ("warmup_steps", "max_steps", "max_epochs", "max_minutes", "grad_clip"):
            if getattr(self, name) < 0:
                raise CharlmError(f"--{name.replace('_', '-')} must not be negative")
        for name in ("max_epochs", "max_minutes", "grad_clip", "min_lr_frac", "val_frac"):
            if not math.isfinite(getattr(self, name)):
                raise CharlmError(f"--{name.replace('_', '-')} must be a finite number")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resume_options(cfg: TrainConfig, given: Collection[str], previous: ckpt.Checkpoint,
                   corpus: str | None = None) -> tuple[TrainConfig, str | None]:
    """The options and corpus of a run resumed from `previous`.

    Each option named in `given` (the ones the user typed) is cfg's; every other is the one the
    checkpoint was trained with (cfg's, for an option newer than the checkpoint). The corpus is
    the one named, else the one the checkpoint was trained on.
    """
    saved = previous.meta["train_config"]
    mine = {k: v for k, v in asdict(cfg).items() if k in given or k not in saved}
    if corpus is None:
        corpus = previous.meta.get("corpus_path")
    try:
        TrainConfig.from_dict(saved).validate()
    except CharlmError as e:
        raise CharlmError(f"the checkpoint's train_config is invalid: {e}".replace(
            "--", "", 1)) from None
    return TrainConfig.from_dict({**saved, **mine}), corpus


# the model options of `charlm train`; a checkpoint's model is what a resume continues
MODEL_OPTIONS = ("n_layer", "n_hidden", "n_embd", "cell", "dropout", "forget_bias", "dtype")
# the training options a resume cannot change: the batches, the optimizer's state, the RNG
FIXED_ON_RESUME = ("seq_len", "batch_size", "optimizer", "val_frac", "seed")


def check_resume_model(model_cfg: ModelConfig, given: Collection[str],
                       previous: ckpt.Checkpoint) -> None:
    """Refuse a model option typed with a resume (in `given`) that differs from the
    checkpoint's: the resumed run continues the checkpoint's model, whatever is typed."""
    for name in MODEL_OPTIONS:
        mine, theirs = getattr(model_cfg, name), getattr(previous.config, name)
        if name in given and mine != theirs:
            raise CharlmError(f"--{name.replace('_', '-')} cannot change on resume "
                              f"(checkpoint: {theirs})")


def get_lr(it: int, progress: float, cfg: TrainConfig) -> float:
    """Learning rate at step it: linear warm-up over warmup_steps, then a decay to
    lr * min_lr_frac as progress (the fraction of the budget used, in [0, 1]) goes to 1."""
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    progress = min(1.0, max(0.0, progress))
    min_lr = cfg.lr * cfg.min_lr_frac
    if cfg.lr_decay == "linear":
        return cfg.lr - (cfg.lr - min_lr) * progress
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))


def check_trainable(model_cfg: ModelConfig, cfg: TrainConfig) -> None:
    """A one-line CharlmError if the model's config is invalid, or training it at cfg's batch
    shape needs more memory than there is: checked before any array is allocated."""
    try:
        model_cfg.validate()
    except ValueError as e:
        raise CharlmError(str(e)) from None
    check_fits(f"training a {shape(model_cfg)} at {cfg.batch_size} x {cfg.seq_len}",
               train_bytes(model_cfg, cfg.seq_len, cfg.batch_size))


class NonFiniteLossError(CharlmError):
    """A step's loss was NaN or infinite; the step left the parameters as they were."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"the loss became {loss}; training stopped (try a lower --lr)")
        self.loss = loss

    def __reduce__(self):  # rebuilt from the loss when it crosses from a worker process
        return type(self), (self.loss,)


def train_step(model: CharLSTM, opt: Adam | RMSprop, x: np.ndarray, y: np.ndarray,
               state: State, lr: float, grad_clip: float,
               rng: np.random.Generator | None = None) -> float:
    """One training step on the window x -> y (both (B, T) ids); returns its loss, nats/char.

    Forward and backward (through dropout masks drawn from rng, when the model has dropout),
    a check that the loss is finite (NonFiniteLossError if not, before any update), clipping of the
    gradient's global norm to grad_clip (0: no clipping) and the optimizer's update at lr.
    state is advanced in place to the state after the window (truncated BPTT).
    """
    masks = None
    if model.config.dropout > 0:
        B, T = x.shape
        masks = model.sample_masks(model.workspace(T, B), rng)
    loss = model.loss_and_grad(x, y, state, masks)
    if not math.isfinite(loss):
        raise NonFiniteLossError(loss)
    clip_grad_norm(model.grad, grad_clip)
    opt.update(model.theta, model.grad, lr)
    return loss


def estimate_loss(model: CharLSTM, data: np.ndarray, batch_size: int, seq_len: int) -> float:
    """Mean nats/char over all of data, streams carrying state from window to window."""
    total, count, state, B = 0.0, 0, None, 0
    for x, y in iter_eval(data, batch_size, seq_len):
        if state is None or x.shape[0] != B:
            B = x.shape[0]
            state = model.zero_state(B)
        total += model.loss(x, y, state)
        count += y.size
    if count == 0:
        return float("nan")
    return total / count


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop after the current step; a second Ctrl-C
    stops at once (the last checkpoint on disk is whole: writes are atomic)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class Event:
    """What the trainer reports to its caller (the CLI draws it)."""

    kind: str  # start | step | eval | done
    step: int
    total_steps: int  # the budget in steps, or an estimate (0: not known yet)
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    chars_per_s: float = 0.0
    sample: str = ""
    message: str = ""


class Trainer:
    """Owns the model, optimizer, data streams and RNG, and everything a checkpoint must hold."""

    def __init__(self, corpus: Corpus, model_cfg: ModelConfig, cfg: TrainConfig, out: Path,
                 resume: ckpt.Checkpoint | None = None,
                 init_from: ckpt.Checkpoint | None = None) -> None:
        """A new run, or one resumed exactly from `resume`, or a new run whose weights start
        from `init_from` (fine-tuning: model_cfg must have its shape, see finetune.py)."""
        cfg.validate()
        if resume is not None and init_from is not None:
            raise CharlmError("--resume continues a run and --init-from starts one: give one")
        self.corpus, self.cfg, self.out = corpus, cfg, Path(out)
        self.vocab = corpus.vocab
        corpus.require_length(cfg.batch_size, cfg.seq_len)
        self.steps_per_epoch = max(1, (len(corpus.train) - 1) // (cfg.batch_size * cfg.seq_len))
        if resume is None:
            model_cfg = replace(model_cfg, vocab_size=self.vocab.vocab_size)  # not the caller's
            check_trainable(model_cfg, cfg)
            self.model = CharLSTM(model_cfg, seed=cfg.seed)
            self.init_from: dict | None = None  # where the weights came from, when fine-tuning
            self.transplant = None
            if init_from is not None:
                from charlm.finetune import init_weights

                self.transplant = init_weights(self.model, self.vocab.itos, init_from)
                where = init_from.path and str(Path(init_from.path).resolve())
                self.init_from = {"path": where, "sha256": init_from.sha256,
                                  "step": init_from.meta["step"],
                                  "corpus": init_from.meta.get("corpus")}
            self.opt = OPTIMIZERS[cfg.optimizer](self.model.n_params, self.model.dtype)
            self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
            self.batcher = Batcher(corpus.train, cfg.batch_size, cfg.seq_len)
            self.state = self.model.zero_state(cfg.batch_size)
            self.step = 0
            self.train_history: list[dict] = []
            self.val_history: list[dict] = []
            self.best_val_loss = float("inf")
            self.progress = 0.0  # fraction of the budget used: drives the lr schedule
            self.loss_window = [0.0, 0]  # train loss summed since the last record, and steps
            self.elapsed = 0.0  # seconds spent in run() so far, across resumes
        else:
            self._restore(resume)

    # -- checkpoint state ----------------------------------------------------------------------

    def _restore(self, c: ckpt.Checkpoint) -> None:
        meta = c.meta
        if "state_h" not in c.opt_state or c.rng() is None:
            raise CharlmError("the checkpoint has no training state (optimizer, RNG) to resume "
                              "from: it was exported for serving")
        if meta.get("corpus_sha256") != self.corpus.sha256:
            raise CharlmError(f"{self.corpus.name} is not the corpus this checkpoint was "
                              "trained on (sha256 differs)")
        if list(c.vocab) != list(self.vocab.itos):
            raise CharlmError("the checkpoint's vocabulary differs from this corpus's")
        saved = TrainConfig.from_dict(meta["train_config"])
        for name in FIXED_ON_RESUME:
            if getattr(saved, name) != getattr(self.cfg, name):
                raise CharlmError(f"--{name.replace('_', '-')} cannot change on resume "
                                  f"(checkpoint: {getattr(saved, name)})")
        self.model = c.model()
        self.opt = OPTIMIZERS[self.cfg.optimizer](self.model.n_params, self.model.dtype)
        state = self.model.zero_state(self.cfg.batch_size)
        # every array a resume reads, checked against what this model and optimizer keep
        want = {**{k: np.asarray(v) for k, v in self.opt.state().items()},
                "state_h": state.h, "state_c": state.c}
        for key, a in want.items():
            got = c.opt_state.get(key)
            if got is None:
                raise CharlmError(f"the checkpoint has no optimizer array {key!r} to resume "
                                  f"{self.cfg.optimizer} from")
            if got.shape != a.shape or got.dtype.kind != a.dtype.kind or (
                    a.dtype.kind == "f" and got.dtype != a.dtype):
                raise CharlmError(f"the checkpoint's {key} is {got.dtype} {got.shape} where "
                                  f"resuming needs {a.dtype} {a.shape}")
        if int(c.opt_state["step"]) < 0:
            raise CharlmError("the checkpoint's optimizer step is negative")
        self.opt.load_state({k: v for k, v in c.opt_state.items()
                             if not k.startswith("state_")})
        self.rng = c.rng()
        self.batcher = Batcher(self.corpus.train, self.cfg.batch_size, self.cfg.seq_len,
                               position=meta["data_position"])
        self.state = State(c.opt_state["state_h"].copy(), c.opt_state["state_c"].copy())
        self.step = int(meta["step"])
        self.train_history = list(meta["train_history"])
        self.val_history = list(meta["val_history"])
        self.best_val_loss = float(meta.get("best_val_loss") or "inf")
        self.progress = float(meta.get("progress", 0.0))
        self.loss_window = list(meta.get("loss_window", [0.0, 0]))
        elapsed, self.init_from = meta.get("elapsed_s", 0.0), meta.get("init_from")
        if (not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool)
                or not 0 <= elapsed < math.inf):
            raise CharlmError(f"the checkpoint has bad metadata (elapsed_s is {elapsed!r})")
        if not isinstance(self.init_from, (dict, type(None))):
            raise CharlmError("the checkpoint has bad metadata (init_from is not an object)")
        self.elapsed = float(elapsed)
        self.transplant = None

    def save(self, name: str) -> Path:
        path = self.out / f"{name}.npz"
        meta = {
            "train_config": asdict(self.cfg),
            "step": self.step,
            "epoch": self.batcher.epoch,
            "data_position": self.batcher.position,
            "rng_state": self.rng.bit_generator.state,
            "train_history": self.train_history,
            "val_history": self.val_history,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "progress": self.progress,
            "loss_window": self.loss_window,
            "elapsed_s": self.elapsed,
            "corpus": self.corpus.name,
            "corpus_path": str(self.corpus.path.resolve()),
            "corpus_sha256": self.corpus.sha256,
        }
        if self.init_from is not None:
            meta["init_from"] = self.init_from
        # the streams' recurrent state too: without it a resumed run would not be bit-exact
        arrays = {**self.opt.state(), "state_h": self.state.h, "state_c": self.state.c}
        ckpt.save_checkpoint(path, self.model, self.vocab.itos, meta, arrays)
        return path

    def _record(self, history: list[dict], row: dict) -> None:
        history.append(row)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # -- the loop ------------------------------------------------------------------------------

    def train_step(self, lr: float) -> float:
        x, y = self.batcher.next_batch()
        if self.batcher.wrapped:  # a new pass over the text: streams restart, so does state
            self.state.h[:] = 0
            self.state.c[:] = 0
        try:
            loss = train_step(self.model, self.opt, x, y, self.state, lr, self.cfg.grad_clip,
                              self.rng)
        except NonFiniteLossError as e:
            raise CharlmError(f"the loss became {e.loss} at step {self.step + 1}; training "
                              "stopped (try a lower --lr); the last good checkpoint is kept"
                              ) from None
        self.step += 1
        return loss

    def evaluate(self) -> float:
        if len(self.corpus.val) < 2:
            return float("nan")
        return estimate_loss(self.model, self.corpus.val, self.cfg.batch_size, self.cfg.seq_len)

    def sample(self, n: int = 200) -> str:
        from charlm.generate import Generator

        gen = Generator(self.model, self.vocab.itos)
        return "".join(t.char for t in gen.generate(max_new_chars=n, temperature=0.8,
                                                    seed=self.step))

    def _step_limit(self) -> int:
        """The step at which a step or epoch budget ends (0: none)."""
        limits = []
        if self.cfg.max_steps:
            limits.append(self.cfg.max_steps)
        if self.cfg.max_epochs:
            limits.append(math.ceil(self.cfg.max_epochs * self.steps_per_epoch))
        return min(limits) if limits else 0

    def run(self, stop: StopFlag | None = None) -> Iterator[Event]:
        """Train until a budget runs out or a stop is requested, yielding events."""
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        minutes = cfg.max_minutes
        limit = self._step_limit()
        if not limit and not minutes:
            minutes = DEFAULT_MINUTES
        if self.step == 0:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        else:  # the metrics file mirrors the checkpoint's history, nothing past it
            with open(self.out / "metrics.jsonl", "w", encoding="utf-8") as f:
                rows = sorted(self.train_history + self.val_history, key=lambda r: r["step"])
                f.writelines(json.dumps(row) + "\n" for row in rows)
        t_start = time.perf_counter()
        e0 = self.elapsed  # the plots' minutes axis runs on across a resume
        self._clock = lambda: e0 + time.perf_counter() - t_start
        deadline = t_start + minutes * 60 if minutes else math.inf
        p0 = self.progress

        def budget_used() -> float:
            # a step budget gives a schedule that depends on the step alone (so resumes are
            # bit-exact); a time budget follows the clock, continuing from where it stopped
            p = self.step / limit if limit else 0.0
            if minutes:
                p = max(p, p0 + (1 - p0) * (time.perf_counter() - t_start) / (minutes * 60))
            return min(p, 1.0)

        chars = cfg.batch_size * cfg.seq_len
        yield Event("start", self.step, limit)
        t_log, speed = time.perf_counter(), 0.0
        while True:
            if limit and self.step >= limit:
                break
            if time.perf_counter() >= deadline or (stop and stop.requested):
                break
            self.progress = budget_used()
            lr = get_lr(self.step, self.progress, cfg)
            loss = self.train_step(lr)
            self.loss_window = [self.loss_window[0] + loss, self.loss_window[1] + 1]
            if self.step % cfg.log_every == 0:
                now = time.perf_counter()
                loss_sum, loss_n = self.loss_window
                speed = loss_n * chars / max(now - t_log, 1e-9)
                self._record(self.train_history, {
                    "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                    "train_loss": loss_sum / loss_n, "lr": lr, "chars_per_s": round(speed),
                    "time_s": round(self._clock(), 3)})
                self.loss_window, t_log = [0.0, 0], time.perf_counter()
            yield Event("step", self.step, self.expected_steps(limit), train_loss=loss,
                        chars_per_s=speed)
            if self.step % cfg.eval_every == 0:
                yield self._eval_and_save(loss)
                t_log = time.perf_counter()  # evaluation time is not training speed
        yield self._eval_and_save(float("nan"), final=True)

    def expected_steps(self, limit: int = 0) -> int:
        """The step budget, or the steps a time budget will allow at the speed so far."""
        if limit:
            return limit
        return round(self.step / self.progress) if self.progress > 0.02 else 0

    def _eval_and_save(self, train_loss: float, final: bool = False) -> Event:
        if final and self.val_history and self.val_history[-1]["step"] == self.step:
            # just evaluated and saved at this very step
            return Event("done", self.step, self.step, val_loss=self.val_history[-1][
                "val_loss"], message=str(self.out / "latest.npz"))
        reached = self._clock()  # the loss is the model's at this time, however long it takes
        val = self.evaluate()
        self.elapsed = self._clock()
        if math.isfinite(val):
            self._record(self.val_history, {"step": self.step, "val_loss": val,
                                            "val_bpc": val / LN2,
                                            "time_s": round(reached, 3)})
        if math.isfinite(val) and val < self.best_val_loss:
            self.best_val_loss = val
            self.save("best")
        path = self.save("latest")
        return Event("done" if final else "eval", self.step,
                     self.step if final else self.expected_steps(),
                     train_loss=train_loss, val_loss=val, sample=self.sample(),
                     message=str(path))
