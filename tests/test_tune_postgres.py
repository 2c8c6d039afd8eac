"""Two machines on one study, simulated honestly: a real PostgreSQL server on loopback, and two
`charlm tune` processes, each with its own --out, pointed at the same database URL."""

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_tune import TINY, words_text

from charlm.tune.study import quiet

IN_CI = os.environ.get("CI") == "true"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of our own in a temp dir, on 127.0.0.1, trusting local logins."""
    bindir = postgres_bin()
    if bindir is None:
        if IN_CI:
            pytest.fail("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); CI runs this")
    if not IN_CI:
        pytest.importorskip("psycopg", reason="the driver: pip install 'charlm[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="charlm-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: it runs as postgres
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "-A", "trust", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                    "-w", "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_study(postgres_url, tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(words_text(3000), encoding="utf-8")
    space = tmp_path / "space.toml"
    space.write_text(TINY, encoding="utf-8")
    trials = 6
    procs = []
    for machine in ("a", "b"):  # the same command on each, but for its own --out
        cmd = [sys.executable, "-m", "charlm.cli", "tune", str(corpus), "--space", str(space),
               "--trials", str(trials), "--steps-per-trial", "40", "--eval-every", "4",
               "--storage", postgres_url, "--study-name", "shared", "--out",
               str(tmp_path / machine)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        time.sleep(0.5)
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        with quiet():
            study = optuna.load_study(study_name="shared", storage=storage)
        every = study.trials  # read once: FrozenTrials, no connection needed after
    finally:
        storage.engine.dispose()  # close the pool's connections before the server goes
    numbers = [t.number for t in every]
    assert sorted(numbers) == list(range(len(numbers)))  # every trial number once
    ran = [set(map(int, re.findall(r"^trial (\d+) started", out, re.M))) for out, _ in outputs]
    print(f"\nstudy 'shared' on {postgres_url}: {len(numbers)} trials; "
          f"process a ran {sorted(ran[0])}, process b ran {sorted(ran[1])}")
    for t in every:
        print(f"  trial {t.number}: {t.state.name.lower()}"
              + (f" {t.value:.4f}" if t.value is not None else "")
              + f" on {'a' if t.number in ran[0] else 'b' if t.number in ran[1] else '-'}"
              + (" (not needed)" if t.user_attrs.get("surplus") else ""))
    assert all(ran), "both processes ran trials"
    assert not ran[0] & ran[1]  # no trial ran twice
    surplus = {t.number for t in every if t.user_attrs.get("surplus")}
    assert ran[0] | ran[1] | surplus == set(numbers)  # the union is the study
    finished = [t for t in every if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == trials and {t.number for t in finished} == ran[0] | ran[1]
    # each process's trials are in its own --out, on its own "machine"
    for machine, mine in zip("ab", ran, strict=True):
        folders = {int(p.name[len("trial-"):]) for p in (tmp_path / machine / "shared").iterdir()}
        assert folders == mine
