"""The Python API: charlm.train(), charlm.load(), and Model, a trained model to sample and score.

    import charlm
    model = charlm.train("my.txt", n_hidden=256, max_minutes=5)  # the CLI's options
    print(model.sample("ROMEO:", length=200, seed=1))
    model = charlm.load("checkpoints/best.npz")
    r = model.evaluate_dynamic(text)  # r.static_loss, r.dynamic_loss: Krause et al.'s adaptation

The options, their defaults and their checks are the command line's (TrainConfig, ModelConfig);
training shows the same progress bar (rich: a terminal, or a Jupyter notebook) and writes the
same checkpoints and metrics.jsonl to `out`.
"""

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

from charlm.dynamic import DynamicConfig, DynamicResult
from charlm.errors import CharlmError
from charlm.generate import Distribution, Generator, SampleSettings
from charlm.model import CharLSTM, ModelConfig
from charlm.train import LN2, TrainConfig

MODEL_OPTIONS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
SAMPLE_TEMPERATURE = 0.8  # `charlm sample`'s default, cooler than SampleSettings' 1.0


class Evaluation(NamedTuple):
    """A model's loss on a text."""

    loss: float  # mean nats per character predicted
    bits_per_char: float
    n_chars: int  # characters predicted (every known one but the first)
    skipped: int  # characters outside the vocabulary, left out


@dataclass(frozen=True)
class Info:
    """What a model is: its config, size, vocabulary and training."""

    config: ModelConfig
    n_params: int
    vocab: str  # every character it knows, in id order
    step: int  # training steps taken
    best_val_loss: float | None  # nats/char on its corpus's held-out tail
    corpus: str | None  # the name of the file it was trained on
    path: Path | None  # the checkpoint it was loaded from or saved to last
    meta: dict  # everything the checkpoint records (train_config, histories, init_from, ...)


class Model:
    """A trained model: sample, stream, score, save. Build one with charlm.train or charlm.load."""

    def __init__(self, model: CharLSTM, vocab: Sequence[str], meta: dict | None = None,
                 path: Path | None = None) -> None:
        self._model, self._vocab = model, list(vocab)
        self._meta = dict(meta or {})
        self._path = path
        self._packed = None  # generation's layout of the weights, made on first use

    def __repr__(self) -> str:
        c = self._model.config
        return (f"<charlm.Model {c.n_layer}x{c.n_hidden} {c.cell}, {len(self._vocab)} "
                f"characters, {self._model.n_params:,} parameters>")

    @property
    def info(self) -> Info:
        """The model's config, size, vocabulary and training record."""
        m = self._meta
        return Info(self._model.config, self._model.n_params, "".join(self._vocab),
                    int(m.get("step", 0)), m.get("best_val_loss"), m.get("corpus"), self._path,
                    m)

    def _generator(self) -> Generator:
        if self._packed is None:
            from charlm.generate import PackedModel

            self._packed = PackedModel(self._model, self._vocab)
        return Generator.from_packed(self._packed)

    def stream(self, prompt: str = "", length: int = 500, temperature: float = SAMPLE_TEMPERATURE,
               top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop: str | Sequence[str] = (), drop_unknown: bool = False) -> Iterator[str]:
        """Yield the characters that follow prompt, one at a time, as they are drawn.

        length: characters at most; temperature: 0 is greedy; top_k (0: all) and top_p (1: all)
        narrow the draw; the same seed gives the same text; generation ends before the first
        stop string, which is not yielded. A prompt character the model does not know is an
        error, or with drop_unknown left out. Bad settings raise CharlmError at once.
        """
        settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                  max_new_chars=length, stop=stop)
        gen = self._generator()
        gen.prime(prompt, drop_unknown)
        tokens = gen.generate(settings)
        return (tok.char for tok in tokens)

    def sample(self, prompt: str = "", length: int = 500,
               temperature: float = SAMPLE_TEMPERATURE, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, stop: str | Sequence[str] = (),
               drop_unknown: bool = False) -> str:
        """The text that follows prompt (without the prompt); the settings are stream()'s."""
        return "".join(self.stream(prompt, length, temperature, top_k, top_p, seed, stop,
                                   drop_unknown))

    def distribution(self, prompt: str = "", temperature: float = 1.0,
                     drop_unknown: bool = False) -> Distribution:
        """The next character's distribution after prompt: .top(n) gives the n most probable
        (char, probability) pairs, .probs every probability in vocabulary order, .entropy."""
        return self._generator().distribution(prompt, temperature, drop_unknown)

    def evaluate(self, text: str, batch_size: int = TrainConfig.batch_size,
                 seq_len: int = TrainConfig.seq_len) -> Evaluation:
        """The model's loss on text, in nats and bits per character, as `charlm eval` scores a
        file (characters outside the vocabulary are skipped and counted)."""
        from charlm.train import estimate_loss
        from charlm.vocab import Vocab

        if not isinstance(text, str):
            raise CharlmError(f"evaluate() takes a str, got {type(text).__name__}")
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CharlmError(f"{name} must be an integer >= 1, got {v!r}")
        ids = Vocab(self._vocab).encode(text, unknown="drop")
        if len(ids) < 2:
            raise CharlmError("the text has fewer than 2 characters the model knows")
        loss = estimate_loss(self._model, ids, batch_size, seq_len)
        return Evaluation(loss, loss / LN2, len(ids) - 1, len(text) - len(ids))

    def evaluate_dynamic(self, text: str, stats_text: str | None = None, *,
                         seg_len: int = DynamicConfig.seg_len, lr: float = DynamicConfig.lr,
                         decay: float = DynamicConfig.decay, eps: float = DynamicConfig.eps,
                         stats_chars: int = DynamicConfig.stats_chars,
                         stats_batch_size: int = DynamicConfig.stats_batch_size
                         ) -> DynamicResult:
        """Dynamic evaluation, as `charlm eval --dynamic`: the static and the dynamic loss of
        text (one stream, scored a segment of seg_len at a time, then adapted on it; see
        charlm/dynamic.py for the rule). stats_text: training text for the gradient
        statistics; None: the corpus this model was trained on (its training part), if that
        file is still there unchanged. This model's weights are not changed."""
        from charlm.dynamic import dynamic_evaluate, gradient_rms, statistics_ids
        from charlm.vocab import Vocab

        if not isinstance(text, str) or not isinstance(stats_text, (str, type(None))):
            raise CharlmError("evaluate_dynamic() takes text (and stats_text) as str")
        cfg = DynamicConfig(seg_len, lr, decay, eps, stats_chars, stats_batch_size)
        cfg.validate()
        ids = Vocab(self._vocab).encode(text, unknown="drop")
        if len(ids) < 2:
            raise CharlmError("the text has fewer than 2 characters the model knows")
        if stats_text is None:
            stats_ids, _ = statistics_ids(self._meta, self._vocab, hint="pass stats_text, "
                                          "text like the model's training text")
        else:
            stats_ids = Vocab(self._vocab).encode(stats_text, unknown="drop")
        rms, n_stats = gradient_rms(self._model, stats_ids, seg_len, stats_batch_size,
                                    stats_chars)
        return dynamic_evaluate(self._model, ids, rms, cfg, n_stats)

    def save(self, path: str | Path) -> Path:
        """Write the model for serving and sampling (`charlm export`'s copy: weights, config,
        vocabulary and history, no optimizer state) to path, atomically; returns the path."""
        from charlm.checkpoint import TRAIN_META, save_checkpoint

        path = Path(path)
        if path.suffix != ".npz":
            raise CharlmError(f"{path}: a checkpoint's name ends in .npz")
        keep = {k: v for k, v in self._meta.items()
                if k in TRAIN_META or k.startswith("corpus") or k == "init_from"}
        keep["rng_state"] = None
        save_checkpoint(path, self._model, self._vocab, keep)
        self._path = path
        return path


def load(path: str | Path | None = None) -> Model:
    """The model in a checkpoint file, or a directory's best.npz (else latest.npz). With no
    path, the newest model trained in ./checkpoints, else ./checkpoints/default.npz."""
    from charlm.checkpoint import default_checkpoint, find_checkpoint, load_checkpoint

    found = default_checkpoint() if path is None else find_checkpoint(path)
    ck = load_checkpoint(found)
    return Model(ck.model(), ck.vocab, ck.meta, found)


def train(corpus: str | Path | None = None, *, out: str | Path = "checkpoints",
          init_from: str | Path | None = None, resume: str | Path | None = None,
          encoding_errors: str = "strict", progress: bool = True, **options) -> Model:
    """Train a model as `charlm train` does, and return it (its best checkpoint's weights).

    corpus: a text file, a corpus name (`charlm corpus list`), or None for the offline
    default. options: the command's options by their Python names (n_layer, n_hidden, n_embd,
    cell, dropout, forget_bias, seq_len, batch_size, lr, optimizer, lr_decay, min_lr_frac,
    warmup_steps, grad_clip, val_frac, eval_every, max_steps, max_epochs, max_minutes, seed,
    dtype), with the same defaults: with no budget it trains 10 minutes. out: where latest.npz,
    best.npz and metrics.jsonl go. init_from: fine-tune from a trained model's weights (its
    shape; a conflicting shape option is an error). resume: continue a run exactly. progress:
    False trains silently. An interrupt (Ctrl-C, a notebook's stop button) ends training after
    the current step, and the model trained so far is returned.
    """
    unknown = sorted(set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS))
    if unknown:
        near = difflib.get_close_matches(unknown[0], MODEL_OPTIONS + TRAIN_OPTIONS, 1)
        raise TypeError(f"train() got an unexpected option {unknown[0]!r}"
                        + (f"; did you mean {near[0]!r}?" if near else ""))
    from charlm.checkpoint import load_checkpoint
    from charlm.run import run_training

    _check_types(options)
    model_cfg = ModelConfig(**{k: v for k, v in options.items() if k in MODEL_OPTIONS})
    cfg = TrainConfig(**{k: v for k, v in options.items() if k in TRAIN_OPTIONS})
    cfg.validate()
    console = progress_console(progress)
    trainer = run_training(None if corpus is None else str(corpus), model_cfg, cfg, Path(out),
                           None if resume is None else Path(resume), encoding_errors,
                           console=console, given=set(options),
                           init_from=None if init_from is None else Path(init_from))
    best = trainer.out / "best.npz"
    path = best if best.is_file() else trainer.out / "latest.npz"
    ck = load_checkpoint(path)
    return Model(ck.model(), ck.vocab, ck.meta, path)


def progress_console(progress: bool = True):
    """Where training reports: stderr in a terminal; in a notebook, rich's live display, which
    needs ipywidgets; without it, plain lines (rich would only warn and draw nothing)."""
    import importlib.util

    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        console = Console(stderr=True, quiet=not progress, force_jupyter=False)
    return console


def _check_types(options: dict) -> None:
    """Each option of the type of its default (an int where a float goes too): what the
    command line's parser does, so a value is never half-understood."""
    defaults = {f.name: f.default for cls in (ModelConfig, TrainConfig) for f in fields(cls)}
    for name, value in options.items():
        want = defaults[name]
        ok = (isinstance(value, (int, float)) if isinstance(want, float)
              else isinstance(value, type(want)))
        if not ok or isinstance(value, bool):
            raise CharlmError(f"{name} must be {type(want).__name__}, got {value!r}")
