"""Generation against charlm.reference: distributions, controls, batching, reproducibility."""

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from charlm import reference
from charlm.errors import CharlmError
from charlm.generate import (
    Batch,
    Generator,
    PackedModel,
    SampleSettings,
    next_distribution,
)
from charlm.generate import batch as generate_batch
from charlm.model import CharLSTM, ModelConfig
from charlm.terminal import distribution_table, print_sample, visible
from charlm.warmup import warmup

ITOS = list("\n !',.:;?abcdefghijklmnopqrstuvwxyz")
# n_hidden 20 is one full block of 16 units and a partial one of 4
CFG = ModelConfig(vocab_size=len(ITOS), n_embd=8, n_hidden=20, n_layer=2, dropout=0.0)
PROMPT = "to be or not to be"


def make_model(scale: float = 2.0, seed: int = 0, **changes) -> CharLSTM:
    """A random model; scaling the weights up makes its distributions peakier than at init."""
    model = CharLSTM(ModelConfig(**{**CFG.to_dict(), **changes}), seed=seed)
    model.theta *= scale
    return model


@pytest.fixture(scope="module")
def model() -> CharLSTM:
    return make_model()


@pytest.fixture(scope="module")
def gen(model) -> Generator:
    return Generator(model, ITOS, threads=1)


def reference_probs(model: CharLSTM, text: str, temperature: float = 1.0) -> np.ndarray:
    """softmax(last logits / T) after text, from charlm.reference: independent of the kernels."""
    ids = [ITOS.index(ch) for ch in text]
    return reference.next_distribution(model.params, model.config.n_layer, model.config.cell,
                                       ids, temperature)


def allowed(p: np.ndarray, top_k: int, top_p: float, tol: float = 1e-6) -> set[int]:
    """Characters that top-k then top-p may keep, counting near ties at the boundary in."""
    order = np.argsort(-p, kind="stable")
    q = np.where(p >= p[order[(top_k or len(p)) - 1]] - tol, p, 0.0)
    q /= q.sum()
    before = np.cumsum(q[order]) - q[order]  # mass of the more probable characters
    return {int(v) for v, b in zip(order, before, strict=True) if q[v] > 0 and b < top_p + tol}


# --------------------------------------------------------------------------------------------
# distributions


@pytest.mark.parametrize("prompt", ["", "a", PROMPT, "the quick brown fox, " * 4])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.5])
def test_distribution_is_softmax_of_forward(model, gen, prompt, temperature):
    dist = gen.distribution(prompt, temperature)
    ref = reference_probs(model, prompt, temperature)
    np.testing.assert_allclose(dist.probs, ref, rtol=1e-4, atol=1e-7)
    assert dist.probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert dist.entropy == pytest.approx(-(ref * np.log(ref)).sum(), rel=1e-5)
    top = dist.top(5)
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert [ch for ch, _ in dist.top()] == [ITOS[v] for v in np.argsort(-dist.probs,
                                                                        kind="stable")]


def test_distribution_at_temperature_zero_is_one_hot(model, gen):
    dist = gen.distribution(PROMPT, 0.0)
    assert dist.probs.sum() == 1.0
    assert dist.probs[np.argmax(reference_probs(model, PROMPT))] == 1.0
    assert dist.entropy == 0.0


def test_entropy_of_a_known_distribution():
    from charlm.generate import Distribution

    d = Distribution(np.array([0.5, 0.25, 0.25, 0.0]), list("abcd"), 1.0)
    assert d.entropy == pytest.approx(1.5 * np.log(2))
    assert d.top(2) == [("a", 0.5), ("b", 0.25)]


# --------------------------------------------------------------------------------------------
# sampling controls


def test_temperature_zero_is_argmax_decoding(model, gen):
    out = gen.complete(PROMPT, temperature=0.0, max_new_chars=40, top_n=3)
    assert out.finish_reason == "length" and len(out.text) == 40
    exact = 0
    for k, tok in enumerate(out.tokens):
        ref = reference_probs(model, PROMPT + out.text[:k])
        chosen = ITOS.index(tok.char)
        assert ref[chosen] >= ref.max() - 1e-6  # argmax, up to float32 near-ties
        exact += chosen == np.argmax(ref)
        assert tok.logprob == pytest.approx(np.log(ref[chosen]), abs=1e-4)
        assert [ch for ch, _ in tok.top] == [ITOS[v] for v in np.argsort(-ref)[:3]]
        np.testing.assert_allclose([lp for _, lp in tok.top], np.sort(np.log(ref))[::-1][:3],
                                   atol=1e-4)
    assert exact >= 38


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.5), (5, 0.8), (1, 1.0)])
def test_top_k_and_top_p_stay_in_the_allowed_set(model, gen, top_k, top_p):
    seen_other = False
    for seed in range(4):
        out = gen.complete(PROMPT, temperature=1.5, top_k=top_k, top_p=top_p, seed=seed,
                           max_new_chars=25)
        for k, ch in enumerate(out.text):
            ref = reference_probs(model, PROMPT + out.text[:k], 1.5)
            v = ITOS.index(ch)
            assert v in allowed(ref, top_k, top_p), (seed, k, ch)
            seen_other |= v != np.argmax(ref)
    assert seen_other == (top_k != 1)  # it samples, except when only one character is kept


def test_draws_follow_the_distribution(model):
    """First characters of 3000 seeds against the probabilities, with and without top-k."""
    packed = PackedModel(model, ITOS, threads=1)
    for top_k, T in [(0, 1.0), (4, 0.7)]:
        batch = Batch(packed)
        for seed in range(3000):
            batch.add(PROMPT, SampleSettings(temperature=T, top_k=top_k, seed=seed,
                                             max_new_chars=1))
        events = batch.step()
        assert len(events) == 3000 and all(ev.finish_reason == "length" for ev in events)
        counts = np.bincount([ITOS.index(ev.tokens[0].char) for ev in events], None, len(ITOS))
        p = reference_probs(model, PROMPT, T)
        if top_k:
            p[np.argsort(-p)[top_k:]] = 0
            p /= p.sum()
        freq = counts / 3000
        assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / 3000) + 1e-9)


def test_seeded_generation_is_reproducible(model, gen):
    a = gen.complete(PROMPT, seed=11, max_new_chars=60)
    b = Generator(model, ITOS, threads=1).complete(PROMPT, seed=11, max_new_chars=60)
    assert a.text == b.text and a.tokens == b.tokens
    assert gen.complete(PROMPT, seed=12, max_new_chars=60).text != a.text
    fresh = gen.complete(PROMPT, max_new_chars=60)  # seed None draws one and reports it
    assert gen.complete(PROMPT, seed=fresh.seed, max_new_chars=60).text == fresh.text


def test_seeded_generation_is_reproducible_across_processes(gen):
    here = gen.complete(PROMPT, temperature=0.9, top_p=0.95, seed=2024, max_new_chars=80).text
    code = textwrap.dedent(f"""
        from charlm.generate import Generator
        from charlm.model import CharLSTM, ModelConfig
        model = CharLSTM(ModelConfig(**{CFG.to_dict()!r}), seed=0)
        model.theta *= 2.0
        out = Generator(model, {ITOS!r}).complete({PROMPT!r}, temperature=0.9, top_p=0.95,
                                                  seed=2024, max_new_chars=80)
        print(repr(out.text))
    """)
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert there == repr(here)


def test_stop_strings(gen):
    full = gen.complete(PROMPT, seed=5, max_new_chars=80).text
    stop = full[30:32]
    out = gen.complete(PROMPT, seed=5, max_new_chars=80, stop=[stop])
    assert out.finish_reason == "stop"
    assert out.text == full[: full.find(stop)] and stop not in out.text
    # several: the first to complete wins, and the text ends where it starts
    other = full[40:43]
    out = gen.complete(PROMPT, seed=5, max_new_chars=80, stop=(other, stop))
    assert out.text == full[: min(full.find(stop), full.find(other))]
    # a start of a stop string is held back, then released when it does not complete
    out = gen.complete(PROMPT, seed=5, max_new_chars=80, stop=[full[10] + "#", full[20:22] + "#"])
    assert (out.text, out.finish_reason) == (full, "length")
    # completing on the very last character is a stop
    out = gen.complete(PROMPT, seed=5, max_new_chars=80, stop=full[-3:])
    assert out.finish_reason == "stop" and out.text == full[: full.find(full[-3:])]


def test_continuing_equals_priming_with_the_text(gen):
    gen.prime(PROMPT)
    first = "".join(t.char for t in gen.generate(seed=3, max_new_chars=15))
    more = list(gen.generate(temperature=0.0, max_new_chars=10))
    again = gen.complete(PROMPT + first, temperature=0.0, max_new_chars=10)
    assert more == again.tokens


def test_zero_length_and_empty_prompt(model, gen):
    out = gen.complete(PROMPT, max_new_chars=0)
    assert (out.text, out.tokens, out.finish_reason) == ("", [], "length")
    out = gen.complete("", seed=1, max_new_chars=5)
    first = out.tokens[0]
    ref = reference_probs(model, "")  # softmax(by): the head on the zero state
    assert first.logprob == pytest.approx(np.log(ref[ITOS.index(first.char)]), abs=1e-5)
    assert len(out.text) == 5


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(temperature=float("nan")),
                                 dict(top_p=0.0), dict(top_p=1.01), dict(top_k=-1),
                                 dict(max_new_chars=-1), dict(seed=-3), dict(stop=[""]),
                                 dict(top_n=-2), dict(top_k=2.5)])
def test_bad_settings_raise_charlm_error(gen, bad):
    with pytest.raises(CharlmError, match=next(iter(bad))):
        SampleSettings(**bad)
    gen.prime(PROMPT)
    with pytest.raises(CharlmError):
        gen.generate(**bad)
    with pytest.raises(CharlmError):
        next_distribution(gen.packed, PROMPT, temperature=-1.0)


def test_unknown_characters(model, gen):
    with pytest.raises(CharlmError, match="'é', 'X', '\\\\t'"):
        gen.prime("héllo Xwé\tx")
    kept = gen.complete("héllo wörld", seed=4, max_new_chars=20, drop_unknown=True)
    assert kept.tokens == gen.complete("hllo wrld", seed=4, max_new_chars=20).tokens
    batch = Batch(gen.packed)
    with pytest.raises(CharlmError):
        batch.add("€", SampleSettings())
    assert len(batch) == 0


def test_bad_itos_and_threads(model):
    with pytest.raises(CharlmError, match="vocabulary"):
        PackedModel(model, ITOS[:-1])
    with pytest.raises(CharlmError, match="threads"):
        PackedModel(model, ITOS, threads=0)
    assert PackedModel(model, ITOS).threads == 1  # a small model stays in one core's cache


# --------------------------------------------------------------------------------------------
# batches


STREAMS = [
    (PROMPT, SampleSettings(temperature=0.8, seed=1, max_new_chars=30)),
    ("", SampleSettings(temperature=1.2, top_k=5, seed=2, max_new_chars=25)),
    ("abc", SampleSettings(temperature=0.0, max_new_chars=12, top_n=2)),
    ("hello, world", SampleSettings(top_p=0.7, seed=3, max_new_chars=40, stop=("e ", "s"))),
    ("x", SampleSettings(temperature=1.0, seed=4, max_new_chars=35)),
    ("what is it?", SampleSettings(temperature=2.0, top_k=10, top_p=0.9, seed=5,
                                   max_new_chars=20)),
]


def run_batch(packed: PackedModel, add_at: list[int], remove: dict[int, int]):
    """Stream k joins at step add_at[k]; stream k is removed after step remove[k] (if any)."""
    batch, texts, reasons, ids = Batch(packed, capacity=2), {}, {}, {}
    for t in range(100):
        for k, start in enumerate(add_at):
            if start == t:
                ids[batch.add(*STREAMS[k])] = k
        for ev in batch.step():
            k = ids[ev.stream]
            texts[k] = texts.get(k, ()) + ev.tokens
            if ev.finish_reason:
                reasons[k] = ev.finish_reason
                batch.remove(ev.stream)
        for sid, k in list(ids.items()):
            if remove.get(k) == t and sid in batch:
                batch.remove(sid)
    return texts, reasons


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_equals_single_stream(model, threads):
    packed = PackedModel(model, ITOS, threads=threads)
    solo = [Generator.from_packed(packed).complete(p, s) for p, s in STREAMS]
    texts, reasons = run_batch(packed, add_at=[0] * len(STREAMS), remove={})
    for k, out in enumerate(solo):
        assert texts[k] == tuple(out.tokens), k  # chars and log-probabilities, bit for bit
        assert reasons[k] == out.finish_reason
    # streams joining and leaving mid-way
    texts, reasons = run_batch(packed, add_at=[0, 3, 0, 7, 2, 11], remove={0: 9, 4: 20})
    for k, out in enumerate(solo):
        if k in (0, 4):
            assert out.tokens[: len(texts[k])] == list(texts[k]) and k not in reasons
        else:
            assert (texts[k], reasons[k]) == (tuple(out.tokens), out.finish_reason)
    assert reasons[3] == "stop"


@pytest.mark.parametrize("cell", ["lstm", "gru", "mlstm", "lnlstm"])
def test_a_prompt_read_apart_continues_as_one_read_in_the_batch(cell):
    model = make_model(cell=cell)
    packed = PackedModel(model, ITOS, threads=2)
    settings = SampleSettings(temperature=0.9, seed=5, max_new_chars=30)
    for prompt in (PROMPT, ""):
        primed = packed.read(prompt)
        assert primed.x == (ITOS.index(prompt[-1]) if prompt else -1)
        batch = Batch(packed)
        batch.add("ab", settings)  # a neighbour, so the stream is not alone
        sid = batch.add(primed, settings)
        tokens = []
        while sid in batch.running:
            for ev in batch.step():
                if ev.stream == sid:
                    tokens.extend(ev.tokens)
        assert tokens == Generator(model, ITOS, threads=1).complete(prompt, settings).tokens


@pytest.mark.parametrize("n_layer, n_hidden", [(1, 20), (3, 40), (2, 64)])
def test_threads_do_not_change_results(n_layer, n_hidden, monkeypatch):
    model = make_model(n_layer=n_layer, n_hidden=n_hidden)
    outs = [Generator(model, ITOS, threads=t).complete(PROMPT, seed=9, max_new_chars=40)
            for t in (1, 2, 3)]
    # switching between the threaded and the serial kernel at every step changes nothing
    monkeypatch.setattr(generate_batch, "PROBE_EVERY", 1)
    outs.append(Generator(model, ITOS, threads=2).complete(PROMPT, seed=9, max_new_chars=40))
    assert outs[0].tokens == outs[1].tokens == outs[2].tokens == outs[3].tokens
    ref = reference_probs(model, PROMPT + outs[0].text[:-1])
    assert outs[0].tokens[-1].logprob == pytest.approx(np.log(ref[ITOS.index(outs[0].text[-1])]),
                                                       abs=1e-4)


def test_the_kernel_choice_follows_the_timings_and_backs_off_only_from_bad_probes():
    from charlm.generate.batch import PROBE_EVERY, _Choice

    choice = _Choice(threaded=True)
    assert choice.next() == (False, True)  # the serial kernel is unknown: measure it first
    assert choice.record(False, True, 2.0) is True  # threaded unknown: try it
    assert choice.next() == (True, False) and choice.record(True, False, 1.0) is True
    # the serial kernel again every PROBE_EVERY steps
    runs = [choice.next() for _ in range(PROBE_EVERY - 2)]
    assert all(r == (True, False) for r in runs) and choice.next() == (False, True)
    # the serial probe wins: the choice flips, and the threaded kernel is probed as often
    assert choice.record(False, True, 0.5) is False and choice.every == PROBE_EVERY
    for _ in range(PROBE_EVERY - 1):
        assert choice.next() == (False, False)
        choice.record(False, False, 0.5)
    assert choice.next() == (True, True)
    # a threaded probe that only just loses is tried again as often ...
    assert choice.record(True, True, 0.8) is False and choice.every == PROBE_EVERY
    # ... one that loses by far (a busy machine) later and later
    choice.since = choice.every
    assert choice.next() == (True, True)
    assert choice.record(True, True, 5.0) is False and choice.every == 2 * PROBE_EVERY


def test_a_finished_stream_can_be_started_again(gen):
    batch = Batch(gen.packed)
    sid = batch.add("ab", SampleSettings(temperature=0.0, max_new_chars=3))
    while batch.running:
        batch.step()
    assert len(batch) == 1 and batch.running == []
    seed = batch.start(sid, SampleSettings(max_new_chars=2))
    assert batch.running == [sid] and batch.seed(sid) == seed
    events = batch.step() + batch.step()
    assert events[-1].finish_reason == "length"
    assert sum(len(ev.tokens) for ev in events) == 2


# --------------------------------------------------------------------------------------------
# for the command line and the service


def test_distribution_table_shows_characters_visibly(gen):
    from rich.console import Console

    assert (visible("\n"), visible(" "), visible("a"), visible("'")) == ("\\n", "' '", "a", "'")
    console = Console(record=True, width=100)
    console.print(distribution_table(gen.distribution(PROMPT), top_n=len(ITOS)))
    out = console.export_text()
    assert "\\n" in out and "' '" in out and "entropy" in out


def test_print_sample_streams_the_text(gen):
    buf = io.StringIO()
    out = print_sample(gen, PROMPT, SampleSettings(seed=1, max_new_chars=20), file=buf)
    assert buf.getvalue().rstrip("\n") == (PROMPT + out.text).rstrip("\n")


def test_warmup_runs():
    warmup()
