"""charlm tune's pieces without a study on disk: the space file, the draws, the tenths reported,
the options a trial's `charlm train` gets."""

import optuna
import pytest
import typer

from charlm.errors import CharlmError
from charlm.train import TrainConfig
from charlm.tune.config import TuneConfig
from charlm.tune.space import DEFAULT_SPACE, OPTIONS, load_space, suggest
from charlm.tune.study import quiet
from charlm.tune.trial import Tenths, train_options


def space_file(tmp_path, text: str):
    path = tmp_path / "space.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_space_searches_the_issue_options():
    assert set(DEFAULT_SPACE) == {"n_hidden", "n_layer", "cell", "lr", "dropout", "seq_len",
                                  "batch_size", "forget_bias"}
    assert load_space(None) == DEFAULT_SPACE


def test_file_entries_replace_the_default_one_by_one(tmp_path):
    space = load_space(space_file(tmp_path, """
n_hidden = { value = 64 }
lr = { low = 0.002, high = 0.02, log = true }
optimizer = { choices = ["adam", "rmsprop"] }
forget_bias = { choices = [0, 1] }
"""))
    assert space["n_hidden"].value == 64 and not space["n_hidden"].choices
    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (0.002, 0.02, True)
    assert space["optimizer"].choices == ("adam", "rmsprop")
    assert space["forget_bias"].choices == (0.0, 1.0)  # a float option takes integers as floats
    assert all(type(c) is float for c in space["forget_bias"].choices)
    assert space["cell"] == DEFAULT_SPACE["cell"]  # untouched


@pytest.mark.parametrize("text, message", [
    ("n_hiden = { value = 64 }", "unknown option 'n_hiden'"),
    ("lr = { low = 0.01, high = 0.001 }", "low (0.01) must be below high (0.001)"),
    ("lr = { low = 0.0, high = 0.1 }", "low 0.0 is outside (0, 1]"),
    ("dropout = { low = 0.1, high = 1.5 }", "high 1.5 is outside [0, 0.95]"),
    ("n_hidden = { choices = [64, 128.5] }", "choice must be an integer, got 128.5"),
    ("n_layer = { value = \"two\" }", "value must be a number, got 'two'"),
    ("cell = { choices = [\"lstm\", \"transformer\"] }", "'transformer' is not one of"),
    ("cell = { low = 1, high = 2 }", "cell takes choices or a value, not a range"),
    ("lr = { low = 0.001, high = 0.1, log = \"yes\" }", "log must be true or false"),
    ("lr = { low = 0.001, high = 0.1, step = 0.01, log = true }", "log or step, not both"),
    ("dropout = { low = 0.0, high = 0.5, log = true }", "a log range needs low > 0"),
    ("lr = { low = 0.001 }", "low needs a high"),
    ("lr = { value = 0.01, low = 0.001, high = 0.1 }", "exactly one of"),
    ("lr = { value = 0.01, scale = 2 }", "unknown key 'scale'"),
    ("lr = 0.01", "must be a table"),
    ("seq_len = { choices = [] }", "choices must be a list of 1 to 64 values"),
    ("seq_len = { choices = [50, 50] }", "choices repeat a value"),
    ("n_hidden = { value = 100000 }", "value 100000 is outside [1, 4096]"),
    ("lr = { low = 0.001, high = ", "not valid TOML"),
])
def test_a_bad_space_file_is_one_clear_error(tmp_path, text, message):
    path = space_file(tmp_path, text)
    with pytest.raises(CharlmError) as e:
        load_space(path)
    assert message in str(e.value)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_huge_space_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("# " + "x" * 70_000 + "\n", encoding="utf-8")
    with pytest.raises(CharlmError, match="at most 64 KB"):
        load_space(path)


def test_draws_stay_in_the_space_and_keep_fixed_values(tmp_path):
    space = load_space(space_file(tmp_path, """
n_layer = { low = 1, high = 3 }
n_embd = { value = 16 }
seq_len = { low = 20, high = 60, step = 20 }
grad_clip = { low = 0.5, high = 2.0 }
"""))
    with quiet():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = []
    for _ in range(40):
        trial = study.ask()
        p = suggest(trial, space)
        study.tell(trial, 1.0)
        seen.append(p)
        assert p["n_embd"] == 16 and "n_embd" not in trial.params  # fixed: not searched
        assert type(p["n_layer"]) is int and 1 <= p["n_layer"] <= 3
        assert p["seq_len"] in (20, 40, 60)
        assert 0.5 <= p["grad_clip"] <= 2.0
        assert 1e-3 <= p["lr"] <= 1e-2 and p["cell"] in ("lstm", "gru", "peephole", "coupled")
        assert p["n_hidden"] in (128, 192, 256, 384, 512)
    assert {p["n_layer"] for p in seen} == {1, 2, 3}


def test_tenths_report_the_best_loss_up_to_each_tenth():
    t = Tenths()
    t.add(0.05, 3.0)
    t.add(0.25, 2.5)
    t.add(0.27, 2.7)
    assert t.due(0.0) == []
    assert t.due(0.3) == [(1, 3.0), (2, 3.0), (3, 2.5)]
    assert t.due(0.3) == []  # once each
    t.add(0.55, 2.0)
    t.add(0.58, float("nan"))  # a NaN evaluation is no loss
    assert t.due(0.6) == [(4, 2.5), (5, 2.5), (6, 2.0)]
    assert t.due(1.0) == [(7, 2.0), (8, 2.0), (9, 2.0), (10, 2.0)]


def test_tenths_skip_the_tenths_before_the_first_loss():
    t = Tenths()
    assert t.due(0.35) == []
    t.add(0.4, 2.0)
    assert t.due(0.5) == [(4, 2.0), (5, 2.0)]


def test_train_options_read_back_by_charlm_train_as_drawn():
    from charlm.cli import app

    params = {"n_layer": 2, "lr": 0.0012345678901234567, "dropout": 1 / 3, "cell": "gru",
              "forget_bias": 0.0}
    args = train_options(params, TuneConfig(steps_per_trial=300))
    assert args[-4:] == ["--max-steps", "300", "--eval-every", "30"]
    assert "--max-minutes" not in args
    # charlm train's own parser, stopped before it trains
    cmd = typer.main.get_command(app).commands["train"]
    ctx = cmd.make_context("train", ["corpus.txt", *args])
    got = ctx.params
    assert got["lr"] == params["lr"] and got["dropout"] == params["dropout"]
    assert got["n_layer"] == 2 and got["cell"].value == "gru" and got["max_steps"] == 300
    assert got["eval_every"] == 30 and got["max_minutes"] == TrainConfig.max_minutes


def test_a_minutes_budget_and_the_default_budget():
    assert TuneConfig().minutes == 2.0 and TuneConfig().every == 100
    cfg = TuneConfig(minutes_per_trial=0.5, eval_every=7)
    assert "--max-minutes" in train_options({}, cfg) and cfg.every == 7
    assert "--max-steps" not in train_options({}, cfg)


@pytest.mark.parametrize("field, value, message", [
    ("trials", 0, "--trials"), ("workers", 10_000, "--workers"),
    ("study_name", "../x", "--study-name"), ("minutes_per_trial", float("nan"), "--minutes"),
    ("steps_per_trial", -1, "--steps-per-trial"),
])
def test_tune_options_are_bounded(field, value, message):
    with pytest.raises(CharlmError, match=message):
        TuneConfig(**{field: value}).validate()


def test_every_option_is_a_train_option():
    import inspect

    from charlm.cli import train

    assert set(OPTIONS) <= set(inspect.signature(train).parameters)


def pruned_at(study: optuna.Study, reports: dict[int, float]) -> int | None:
    """The first step at which the study's pruner stops a trial reporting these losses."""
    trial = study.ask()
    for step, value in reports.items():
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, min(reports.values()))
    return None


def test_the_median_pruner_spares_the_first_tenths_and_the_first_trials():
    from charlm.tune.study import make_pruner

    with quiet():
        study = optuna.create_study(pruner=make_pruner(TuneConfig()))
    worse = {k: 3.0 for k in range(1, 11)}
    for i in range(3):
        assert pruned_at(study, {k: 2.0 + i / 10 for k in range(1, 11)}) is None
    assert pruned_at(study, worse) is None  # three finished trials are too few to judge by
    # the median of the four finished ones at each tenth is 2.15 (2.0, 2.1, 2.2, 3.0)
    assert pruned_at(study, worse) == 3  # not in the first two tenths
    assert pruned_at(study, {k: 2.1 for k in range(1, 11)}) is None  # better than the median
    # five finished now (2.0, 2.1, 2.1, 2.2, 3.0): the median fell to 2.1, so 2.14 is pruned
    assert pruned_at(study, {1: 2.5, 2: 2.4, 3: 2.14, 4: 2.13}) == 3
    assert pruned_at(study, {1: 2.5, 2: 2.4, 3: 2.09, 4: 2.09}) is None


def test_the_other_pruners():
    from charlm.tune.study import make_pruner

    assert isinstance(make_pruner(TuneConfig(pruner="none")), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(TuneConfig(pruner="hyperband")), optuna.pruners.HyperbandPruner)
