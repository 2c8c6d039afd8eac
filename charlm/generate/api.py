"""One stream over a model: prime it with a prompt, then iterate over what it draws.

    gen = Generator(model, itos)
    gen.prime("ROMEO:")
    for tok in gen.generate(temperature=0.8, seed=1, max_new_chars=200, stop=["\\n\\n"]):
        print(tok.char, end="", flush=True)
    gen.finish_reason  # "length" or "stop"

A stream starts from the zero state, reads its prompt, and then draws one character per step.
An empty prompt starts from the zero state itself: the first character is drawn from
softmax(b_y / temperature), what the head says about a zero hidden state.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from charlm.generate.batch import Batch
from charlm.generate.draw import log_softmax
from charlm.generate.packing import PackedModel
from charlm.generate.settings import Completion, Distribution, SampleSettings, Token
from charlm.model import CharLSTM


class Generator:
    """One stream over a model: prime it with a prompt, then iterate over what it draws.

    The generator holds the recurrent state: a second generate() continues from where the
    first left off (after the last character drawn, stop string included), with new settings.
    """

    def __init__(self, model: CharLSTM, itos: Sequence[str], threads: int | None = None) -> None:
        self.packed = PackedModel(model, itos, threads)
        self._batch = Batch(self.packed, capacity=1)
        self._sid: int | None = None
        self.finish_reason: str | None = None
        self.seed: int | None = None

    @classmethod
    def from_packed(cls, packed: PackedModel) -> "Generator":
        """A generator sharing an already packed model (packing is done once per model)."""
        gen = cls.__new__(cls)
        gen.packed = packed
        gen._batch = Batch(packed, capacity=1)
        gen._sid, gen.finish_reason, gen.seed = None, None, None
        return gen

    def prime(self, prompt: str = "", drop_unknown: bool = False) -> None:
        """Reset to the zero state and read prompt (see Batch.add for unknown characters)."""
        sid = self._batch.add(prompt, None, drop_unknown)  # validates before we drop the old
        if self._sid is not None:
            self._batch.remove(self._sid)
        self._sid = sid
        self.finish_reason = None

    def generate(self, settings: SampleSettings | None = None, **overrides) -> Iterator[Token]:
        """Draw characters one at a time; overrides are SampleSettings fields.

        Settings are checked here, before the first character. When the iterator is
        exhausted, finish_reason is "length" or "stop" and seed the seed that was used.
        """
        settings = dataclasses.replace(settings or SampleSettings(), **overrides)
        if self._sid is None:
            self.prime("")
        self.finish_reason = None
        self.seed = self._batch.start(self._sid, settings)
        return self._run()

    def _run(self) -> Iterator[Token]:
        step = self._batch.step
        while True:
            for ev in step():
                yield from ev.tokens
                if ev.finish_reason:
                    self.finish_reason = ev.finish_reason
                    return

    def complete(self, prompt: str = "", settings: SampleSettings | None = None,
                 drop_unknown: bool = False, **overrides) -> Completion:
        """Prime with prompt and generate to the end, without streaming."""
        self.prime(prompt, drop_unknown)
        tokens = list(self.generate(settings, **overrides))
        return Completion("".join(t.char for t in tokens), tokens, self.finish_reason, self.seed)

    def distribution(self, prompt: str = "", temperature: float = 1.0,
                     drop_unknown: bool = False) -> Distribution:
        """The distribution of the character after prompt (leaves this generator's state be)."""
        return next_distribution(self.packed, prompt, temperature, drop_unknown)


def next_distribution(packed: PackedModel, prompt: str = "", temperature: float = 1.0,
                      drop_unknown: bool = False) -> Distribution:
    """softmax(logits / temperature) of the character after prompt; one-hot at temperature 0."""
    SampleSettings(temperature=temperature)  # validates
    batch = Batch(packed, capacity=1)
    batch.add(prompt, SampleSettings(temperature=0.0, seed=0, max_new_chars=1), drop_unknown)
    batch.step()
    z = batch.logits[0].astype(np.float64)
    if temperature == 0:
        probs = np.zeros_like(z)
        probs[np.argmax(z)] = 1.0
    else:
        with np.errstate(over="ignore"):
            scaled = z / temperature
            if not np.isfinite(scaled).all():
                # a tiny temperature: from the largest logit down, the others go to -inf
                # (whose exp is 0, the limit), never the largest to inf - inf = NaN
                scaled = (z - z.max()) / temperature
        probs = np.exp(log_softmax(scaled))
    return Distribution(probs, packed.itos, float(temperature))
