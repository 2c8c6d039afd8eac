"""charlm.seq2seq: its gradients against central differences, its forward pass against
charlm.reference, and the two toy tasks it must learn."""

import subprocess
import sys

import numpy as np
import pytest

from charlm import reference
from charlm.seq2seq import LSTM_RNN, echo_task, numbers_task


def task(loss: str, head: bool, ids: bool, seed: int = 0):
    """A small net with every weight random, and a sequence of 5 steps for it."""
    net = LSTM_RNN(0.1, 3, 4, 3 if loss == "xent" else 2, loss=loss, head=head, seed=seed)
    rng = np.random.default_rng(seed)
    for p in net.params.values():
        p[:] = rng.uniform(-0.9, 0.9, p.shape)
    inputs = rng.integers(0, 3, 5) if ids else rng.standard_normal((5, 3))
    targets = rng.integers(0, 3, 5) if loss == "xent" else rng.uniform(-1, 1, (5, 2))
    return net, inputs, targets


@pytest.mark.parametrize("loss", ["mse", "xent"])
@pytest.mark.parametrize("head", [True, False])
@pytest.mark.parametrize("ids", [True, False])
def test_gradients_match_finite_differences(loss, head, ids):
    net, inputs, targets = task(loss, head, ids)  # without a head, y_t is h_t[:out_dim]
    _, grads = net.loss_and_grad(inputs, targets)
    assert set(grads) == set(net.params) == (
        {"W0", "U0", "b0", "Wy", "by"} if head else {"W0", "U0", "b0"})
    eps = 1e-6
    for name, p in net.params.items():
        num = np.zeros_like(p)
        for k in np.ndindex(p.shape):
            old = p[k]
            p[k] = old + eps
            up = net.loss_and_grad(inputs, targets)[0]
            p[k] = old - eps
            down = net.loss_and_grad(inputs, targets)[0]
            p[k] = old
            num[k] = (up - down) / (2 * eps)
        assert np.abs(num).max() > 1e-4, name  # the check sees this tensor at all
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-8, err_msg=name)


def test_forward_is_the_reference_lstm_on_one_hot_ids():
    """Ids in, a head out: exactly the character model of charlm.reference with E = I."""
    net, inputs, _ = task("xent", head=True, ids=True)
    params = {"E": np.eye(3), **net.params}
    h0 = np.zeros((1, 1, 4))
    logits, _, _ = reference.forward(params, 1, inputs[None], h0, h0)
    y, _ = net.forward(inputs)
    np.testing.assert_allclose(y, logits[0], rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss must be one of mse, xent"):
        LSTM_RNN(0.1, 3, 4, 2, loss="l1")
    with pytest.raises(ValueError, match="out_dim 5 > h_dim 4"):
        LSTM_RNN(0.1, 3, 4, 5, head=False)


def test_the_number_sequence_is_learned_to_within_0_01():
    lines = []
    net, inputs, targets = numbers_task(log=lines.append)
    y = net.predict(inputs)
    assert y.shape == (4, 1)
    assert np.abs(y - targets).max() < 0.01
    losses = [float(line.split()[-1]) for line in lines]
    assert losses[0] > 0.1 and losses[-1] < 1e-4 and len(lines) == 11


def test_the_delayed_echo_is_learned_exactly():
    lines = []
    net, inputs, targets = echo_task(log=lines.append)
    np.testing.assert_array_equal(net.predict(inputs), targets)
    assert (targets[2:] == inputs[:-2]).all()
    losses = [float(line.split()[-1]) for line in lines]
    assert losses[0] > 16 * np.log(4) * 0.9 and losses[-1] < 0.2  # from chance to sure


def test_the_demo_prints_the_loss_as_it_learns():
    run = subprocess.run([sys.executable, "-m", "charlm.seq2seq"], capture_output=True,
                         text=True, check=True, timeout=120)
    out = run.stdout.splitlines()
    assert out[0].startswith("numbers:") and out[12].startswith("predicted")
    assert out[13].startswith("echo:") and out[-1].startswith("predicted")
    want = out[-1].split("wanted")[1]
    assert out[-1].split("wanted")[0].removeprefix("predicted").strip() == want.strip()
    assert sum(line.startswith("iter") for line in out) == 22
