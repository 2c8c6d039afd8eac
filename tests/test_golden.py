"""Seeded outputs equal, character for character and bit for bit, to those recorded in
tests/golden/golden.json (see tests/golden/record.py): generation alone and batched for every
cell, /next and /activations through the app, `charlm sample`, and short training runs."""

import json

import pytest
from golden.record import CELL_NAMES, GOLDEN, cli_sample, generation, service_next, training


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def same(got, want) -> bool:
    """got through the same JSON round trip as the recording, so floats compare exactly."""
    return json.loads(json.dumps(got, sort_keys=True)) == want


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_generation_is_unchanged(golden, cell):
    got = generation(cell)
    want = golden["generation"][cell]
    for key in want:
        assert same(got[key], want[key]), f"{cell}: {key} differs"


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_training_is_unchanged(golden, cell, tmp_path):
    got = training(cell, tmp_path)
    want = golden["training"][cell]
    assert same(got["train"], want["train"]) and same(got["val"], want["val"])
    assert got["params"] == want["params"]


def test_service_answers_are_unchanged(golden, tmp_path):
    got = service_next(tmp_path)
    for key, want in golden["service"].items():
        assert same(got[key], want), key


def test_sample_command_is_unchanged(golden):
    assert cli_sample() == golden["cli"]
