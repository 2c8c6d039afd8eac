"""Where Chromium is missing, the browser test skips with a one-line reason naming what to
install; where CI requires it (CHARLM_REQUIRE_BROWSER=1, which .ci/run sets), it fails."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER_TESTS = [str(ROOT / "tests" / name)
                 for name in ("test_browser.py", "test_browser_handmade.py")]


def run_browser_test(tmp_path, **env) -> subprocess.CompletedProcess:
    """The browser tests in a child pytest pointed at a Chromium that is not there."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")},
           "CHARLM_CHROMIUM": str(tmp_path / "no-chromium"), **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           *BROWSER_TESTS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_chromium_the_test_skips_naming_what_to_install(tmp_path):
    r = run_browser_test(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^2 skipped in ", r.stdout, re.M), r.stdout
    lines = [s for s in r.stdout.splitlines() if s.startswith("SKIPPED")]
    assert len(lines) == 2, r.stdout
    for line in lines:  # each browser test, one line naming what to install
        assert line.endswith(f"the browser test needs Chromium at {tmp_path / 'no-chromium'}: "
                             "apt-get install chromium (or set CHARLM_CHROMIUM to a Chromium "
                             "binary)"), line


def test_where_ci_requires_chromium_a_skip_is_a_failure(tmp_path):
    r = run_browser_test(tmp_path, CHARLM_REQUIRE_BROWSER="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^2 errors in ", r.stdout, re.M), r.stdout  # failed in their fixture
    assert "CHARLM_REQUIRE_BROWSER=1 but the browser test needs Chromium at" in r.stdout
    assert "Traceback" not in r.stdout


def test_ci_requires_the_browser():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export CHARLM_REQUIRE_BROWSER=1$", ci, re.M)
