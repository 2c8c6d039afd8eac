r"""Dynamic evaluation (Krause et al. 2018): the model adapts its weights to a text as it reads it.

The text is read as one stream in segments s_1, s_2, ... of n characters, the recurrent state
carried from segment to segment. Each segment is scored first, with the weights as they are,
and only then does the model take one gradient step on that segment's mean loss L(s_i), so no
character is ever predicted by weights that have seen it. The step is the paper's "RMS with a
global decay prior" rule:

.. math::

    \mathrm{MS}_g = \frac{1}{N_b} \sum_{k=1}^{N_b} (\nabla L_k)^2, \qquad
    \mathrm{RMS}_{norm} = \frac{\sqrt{\mathrm{MS}_g}}{\mathrm{avg}(\sqrt{\mathrm{MS}_g})}

    \theta_i = \theta_{i-1} - \eta \frac{\nabla L(s_i)}{\sqrt{\mathrm{MS}_g} + \epsilon}
               + \lambda \min(\mathrm{RMS}_{norm}, 1/\lambda) \odot (\theta_g - \theta_{i-1})

MS_g is the mean squared gradient of N_b segment losses L_k of the trained model on training
text (batches of segments, the state carried, no dropout), computed once before the text is
read; avg is the mean over every parameter; theta_g are the trained weights, toward which the
decay term pulls the adapted ones (each parameter in proportion to its RMS gradient, so the
ones that move most are also pulled back most); the min keeps that pull from overshooting
theta_g, as the paper's code clips it. With eta = 0 nothing moves: the loss is the static one.

The weights live in a copy: the checkpoint the model came from is never written.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numba as nb
import numpy as np

from charlm.batches import Batcher, iter_eval
from charlm.errors import CharlmError
from charlm.kernels import LEAF
from charlm.limits import MAX_BATCH, MAX_SEQ_LEN
from charlm.model import CharLSTM, State

LN2 = math.log(2)
DIVERGED = 50.0  # nats/char on one segment: the adapted weights have blown up


@dataclass
class DynamicConfig:
    seg_len: int = 50  # n: characters per segment, scored then adapted on
    # eta and lambda tuned on a part of tinyshakespeare's held-out tail (README: Defaults)
    lr: float = 1e-4  # eta: the step on each segment's RMS-normalised gradient
    decay: float = 0.002  # lambda: the pull back toward the trained weights per segment
    eps: float = 2e-5  # epsilon (the paper code's): keeps steps finite where MS_g is ~0
    stats_chars: int = 200_000  # training characters MS_g is collected over (at most)
    stats_batch_size: int = 32  # parallel streams while collecting MS_g

    def validate(self) -> None:
        for f in fields(self):
            value, want = getattr(self, f.name), type(f.default)
            if not isinstance(value, (int, float) if want is float else want) \
                    or isinstance(value, bool):
                raise CharlmError(f"--{f.name.replace('_', '-')} must be "
                                  f"{'a number' if want is float else 'an integer'}, "
                                  f"got {str(value)[:40]!r}")
        if not 1 <= self.seg_len <= MAX_SEQ_LEN:
            raise CharlmError(f"--seg-len must be in [1, {MAX_SEQ_LEN:,}], got {self.seg_len}")
        if not 1 <= self.stats_batch_size <= MAX_BATCH:
            raise CharlmError(f"--stats-batch-size must be in [1, {MAX_BATCH:,}], "
                              f"got {self.stats_batch_size}")
        if self.stats_chars < 1:
            raise CharlmError(f"--stats-chars must be at least 1, got {self.stats_chars}")
        # beyond these the update is not an adaptation any more but a blow-up or a reset
        for name, lo, hi in (("lr", 0.0, 1.0), ("decay", 0.0, 1.0), ("eps", 1e-12, 1.0)):
            v = getattr(self, name)
            if not (math.isfinite(v) and lo <= v <= hi):
                raise CharlmError(f"--{name} must be in [{lo:g}, {hi:g}], got {v}")


@dataclass(frozen=True)
class DynamicResult:
    """Static and dynamic loss of a text, both over the same segments of one stream."""

    static_loss: float  # nats/char, the weights as trained
    dynamic_loss: float  # nats/char, the weights adapted segment by segment
    n_chars: int  # characters predicted
    stats_chars: int  # training characters the gradient statistics came from

    @property
    def static_bpc(self) -> float:
        return self.static_loss / LN2

    @property
    def dynamic_bpc(self) -> float:
        return self.dynamic_loss / LN2


@nb.njit(**LEAF)
def dynamic_update(theta, grad, theta_g, rms, decay_rate, lr, lam, eps):
    r"""One step of the RMS rule with a global decay prior, in place over flat vectors.

    .. math::

        \theta \leftarrow \theta - \eta\, g / (\mathrm{rms} + \epsilon)
                          + \lambda r \odot (\theta_g - \theta)

    decay_rate r is RMS_norm already clipped at 1/lambda by the caller.
    """
    for k in range(theta.shape[0]):
        theta[k] += lam * decay_rate[k] * (theta_g[k] - theta[k]) - lr * grad[k] / (rms[k] + eps)


def gradient_rms(model: CharLSTM, ids: np.ndarray, seg_len: int, batch_size: int,
                 max_chars: int) -> tuple[np.ndarray, int]:
    r"""sqrt(MS_g): the root mean square of the gradient of segment losses on ids.

    batch_size streams through ids, seg_len characters at a time, state carried, no dropout;
    each batch's gradient is of its mean loss. Stops after max_chars characters (at least one
    batch). Returns the flat RMS vector (float64) and the characters it saw.
    """
    B = max(1, min(batch_size, (len(ids) - 1) // seg_len))
    if (len(ids) - 1) // B < seg_len:
        raise CharlmError(f"the text for gradient statistics has {len(ids):,} characters the "
                          f"model knows: fewer than one segment of {seg_len} + 1")
    batcher = Batcher(ids, B, seg_len)
    n_batches = max(1, min(batcher.n_windows, max_chars // (B * seg_len)))
    ms = np.zeros(model.n_params, np.float64)
    state = model.zero_state(B)
    for _ in range(n_batches):
        x, y = batcher.next_batch()
        model.loss_and_grad(x, y, state)
        _accumulate_square(ms, model.grad)
    return np.sqrt(ms / n_batches), n_batches * B * seg_len


@nb.njit(**LEAF)
def _accumulate_square(ms, g):
    """ms += g^2, in float64 (a float32 sum over hundreds of batches would lose digits)."""
    for k in range(g.shape[0]):
        ms[k] += np.float64(g[k]) * np.float64(g[k])


def decay_rates(rms: np.ndarray, decay: float) -> np.ndarray:
    """RMS_norm = rms / mean(rms), clipped at 1/decay so the pull never overshoots theta_g."""
    mean = float(rms.mean())
    rate = rms / mean if mean > 0 else np.ones_like(rms)
    if decay > 0:
        np.minimum(rate, 1.0 / decay, out=rate)
    return rate


def dynamic_evaluate(model: CharLSTM, ids: np.ndarray, rms: np.ndarray, cfg: DynamicConfig,
                     stats_chars: int = 0, static: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> DynamicResult:
    """Static and dynamic loss of ids (one stream, cfg.seg_len at a time); model is not changed.

    rms: gradient_rms's vector for this model. static=False leaves the static pass out (its
    loss is then nan): a fifth of the work, for tuning. progress(done, total) is called after
    each segment with the characters predicted so far.
    """
    cfg.validate()
    if len(ids) < 2:
        raise CharlmError("the text has fewer than 2 characters the model knows")
    if rms.shape != (model.n_params,):
        raise CharlmError(f"gradient statistics for {rms.size:,} parameters, the model has "
                          f"{model.n_params:,}")
    if not np.isfinite(rms).all():
        raise CharlmError("the gradient statistics are not finite (the model's loss on the "
                          "statistics text is not)")
    # the adapted weights are a copy: the caller's model (and so its checkpoint) stays as trained
    adapted = CharLSTM(model.config, model.theta)
    dt = model.dtype.type
    theta_g = model.theta.copy()
    rate = decay_rates(rms, cfg.decay).astype(model.dtype)
    rms_t = rms.astype(model.dtype)
    static_total = dynamic_total = 0.0
    count, total = 0, len(ids) - 1
    static_state, state = model.zero_state(1), model.zero_state(1)
    for x, y in iter_eval(ids, 1, cfg.seg_len):
        if static:
            static_total += model.loss(x, y, static_state)
        before = State(state.h.copy(), state.c.copy())
        seg = adapted.loss(x, y, state)  # scored before it is learnt from
        dynamic_total += seg
        if cfg.lr > 0 or cfg.decay > 0:
            adapted.loss_and_grad(x, y, before)
            dynamic_update(adapted.theta, adapted.grad, theta_g, rms_t, rate, dt(cfg.lr),
                           dt(cfg.decay), dt(cfg.eps))
        count += y.size
        # uniform guessing costs log(V) ~ 4 nats; far past it the steps are blowing the
        # weights up, and every number after would be noise
        if not (seg / y.size < DIVERGED):
            raise CharlmError(f"dynamic evaluation diverged after {count:,} characters (a "
                              f"segment scored {seg / y.size:.3g} nats/char): try a lower --lr")
        if progress is not None:
            progress(count, total)
    return DynamicResult(static_total / count if static else float("nan"),
                         dynamic_total / count, count, stats_chars)


STATS_HINT = "give --stats FILE, a text like the model's training text (its training corpus)"


def statistics_ids(meta: dict, itos: list[str], path: str | None = None,
                   encoding_errors: str = "strict",
                   hint: str = STATS_HINT) -> tuple[np.ndarray, str]:
    """The training text MS_g is collected on, as ids of the model's vocabulary (unknown
    characters dropped), and where it came from.

    path: a text file, all of it. None: the corpus the checkpoint was trained on, if that file
    is still where training read it and unchanged (sha256), less its held-out tail
    (train_config's val_frac), as training split it. Anything else is a one-line error.
    """
    from pathlib import Path

    from charlm.data import file_sha256, read_text
    from charlm.vocab import Vocab

    if path is None:
        where = meta.get("corpus_path")
        if not isinstance(where, str) or not Path(where).is_file():
            raise CharlmError(f"dynamic evaluation needs gradient statistics from training "
                              f"text, and the checkpoint's corpus ({where}) is not there: {hint}")
        if file_sha256(Path(where)) != meta.get("corpus_sha256"):
            raise CharlmError(f"{where} has changed since the model was trained on it: {hint}")
        text = read_text(Path(where), "replace")
        val_frac = (meta.get("train_config") or {}).get("val_frac", 0.1)
        if not isinstance(val_frac, (int, float)) or not 0 <= val_frac <= 0.5:
            raise CharlmError(f"the checkpoint has bad metadata (val_frac is {val_frac!r})")
        text = text[: int(len(text) * (1 - val_frac))]  # the training part, as load_corpus cuts
        source = f"{where} (its first {1 - val_frac:.0%}, the training part)"
    else:
        text = read_text(Path(path), encoding_errors)
        source = str(path)
    return Vocab(itos).encode(text, unknown="drop"), source
