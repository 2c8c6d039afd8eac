"""The README stays true: its code references point at the lines they quote, and CI runs its
test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_code_references_quote_their_lines():
    refs = re.findall(r"\| `([\w/]+\.py):(\d+)` \| `(.+?)` \|", README)
    assert len(refs) >= 20
    for path, line, code in refs:
        lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
        assert lines[int(line) - 1].strip() == code.strip(), (path, line, code)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "quick-start: tests" in ci
    assert re.search(r"<!-- quick-start: tests -->\n```sh\n.*pytest", README)
