"""Fine-tuning: a new run on another text that starts from a trained model's weights.

As char-rnn's -init_from and nanoGPT's init_from: the weights come from the checkpoint, the
optimizer, schedule, step count and data position start afresh. The vocabulary is the new
training text's, as in every run: a character the model knew keeps its embedding row (E), head
column (Wy) and head bias (by); a character new to it gets the rows a new model would; one the
new text lacks is dropped.
"""

from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np

from charlm.checkpoint import Checkpoint
from charlm.errors import CharlmError
from charlm.model import CharLSTM, ModelConfig, param_shapes, split_views

SHAPE = ("n_layer", "n_hidden", "n_embd", "cell", "dtype")  # fixed by the checkpoint's weights
VOCAB_TENSORS = ("E", "Wy", "by")  # the tensors with a row (or column) per character


@dataclass(frozen=True)
class Transplant:
    """What init_weights did with the vocabularies."""

    known: int  # characters of the new text the model knew: their rows kept
    new: list[str]  # characters new to the model: fresh rows
    dropped: list[str]  # characters of the model the new text lacks


def finetune_config(ck: Checkpoint, model_cfg: ModelConfig, given: Collection[str]) -> ModelConfig:
    """The model config of a run initialised from ck: ck's shape, model_cfg's dropout if given.

    An option in `given` (the ones the user typed) that contradicts the checkpoint is an error:
    its shape cannot change, and --forget-bias sets initial weights, which ck replaces.
    """
    base = ck.config
    for name in (*SHAPE, "forget_bias"):
        mine, theirs = getattr(model_cfg, name), getattr(base, name)
        if name in given and mine != theirs:
            flag = f"--{name.replace('_', '-')}"
            if name == "forget_bias":
                raise CharlmError(f"{flag} sets the initial weights, which --init-from replaces")
            raise CharlmError(f"{flag} {mine} conflicts with --init-from: the model's shape "
                              f"comes from its checkpoint ({name} {theirs})")
    return replace(base, dropout=model_cfg.dropout if "dropout" in given else base.dropout)


def init_weights(model: CharLSTM, itos: list[str], ck: Checkpoint) -> Transplant:
    """Copy ck's weights into model, a new model over the vocabulary itos.

    Every tensor but the vocabulary's is copied whole; E's rows, Wy's columns and by's entries
    are copied for the characters both vocabularies hold, and the model's own (fresh) values
    stay for the others.
    """
    if any(getattr(model.config, n) != getattr(ck.config, n) for n in SHAPE):
        raise CharlmError("the model's shape differs from the checkpoint's")
    src = split_views(ck.theta, param_shapes(ck.config))
    old = {ch: i for i, ch in enumerate(ck.vocab)}
    dst_ids = np.array([i for i, ch in enumerate(itos) if ch in old], np.int64)
    src_ids = np.array([old[itos[i]] for i in dst_ids], np.int64)
    for name, p in model.params.items():
        if name == "E":
            p[dst_ids] = src["E"][src_ids]
        elif name == "Wy":
            p[:, dst_ids] = src["Wy"][:, src_ids]
        elif name == "by":
            p[dst_ids] = src["by"][src_ids]
        else:
            p[:] = src[name]
    mine = set(itos)
    return Transplant(len(dst_ids), [ch for ch in itos if ch not in old],
                      [ch for ch in ck.vocab if ch not in mine])
