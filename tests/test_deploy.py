"""What a PaaS deploys: requirements.txt and .python-version agree with pyproject.toml, and a
built wheel, installed into a fresh virtual environment outside the checkout, serves the
playground.

`python tests/test_deploy.py` writes requirements.txt from pyproject.toml.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT = 1200  # seconds: a fresh environment installs numpy, numba, scipy, flask, ...
BOOT_TIMEOUT = 600  # numba compiles the kernels afresh in the new environment, on a busy machine

try:
    import tomllib
except ModuleNotFoundError:  # python 3.10
    import tomli as tomllib


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements() -> str:
    """requirements.txt as it must read: pyproject.toml's dependencies, one a line."""
    head = ("# generated from pyproject.toml's [project] dependencies by "
            "`python tests/test_deploy.py`;\n"
            "# a Python buildpack (Heroku's, Render's, ...) installs these before the "
            "Procfile runs\n")
    return head + "".join(f"{dep}\n" for dep in pyproject()["project"]["dependencies"])


def test_requirements_are_pyprojects():
    assert (ROOT / "requirements.txt").read_text(encoding="utf-8") == requirements(), \
        "requirements.txt is stale: run `python tests/test_deploy.py`"


def test_python_pin_is_one_numba_and_charlm_support():
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet

    pin = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    assert pin.count(".") == 1, "major.minor, so the platform takes the latest patch release"
    assert pin in SpecifierSet(pyproject()["project"]["requires-python"])
    numba = metadata("numba")
    assert pin in SpecifierSet(numba["Requires-Python"])
    assert f"Programming Language :: Python :: {pin}" in numba.get_all("Classifier")


def test_every_package_is_in_the_wheel_list():
    """A new subpackage of charlm/ must be named in pyproject.toml, or the wheel lacks it."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("charlm/**/__init__.py")}
    assert found <= listed, sorted(found - listed)
    assert "charlm_service" in listed and "service" not in listed
    assert pyproject()["tool"]["setuptools"]["package-dir"] == {"charlm_service": "service"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: dict | None = None) -> tuple[int, str, bytes]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def test_wheel_serves_the_playground_outside_the_checkout(tmp_path, checkpoint_dir, client):
    # build from a copy of the sources, so the checkout gets no build/ or egg-info
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "checkpoints"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=PIP_TIMEOUT,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("charlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ROOT.glob("service/**/*"):
        if f.is_file() and "__pycache__" not in f.parts:
            assert "charlm_service/" + f.relative_to(ROOT / "service").as_posix() in names
    assert not any(n.startswith("service/") for n in names)
    assert {"charlm_service/static/index.html", "charlm_service/gunicorn.conf.py"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)],
                   check=True, timeout=PIP_TIMEOUT, capture_output=True)
    # away from the checkout, only the installed copy can be imported: as charlm_service
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHARLM_", "PYTHON"))}
    probe = subprocess.run(
        [venv / "bin" / "python", "-c", "import charlm, charlm_service, importlib.util; "
         "print(charlm.__file__, charlm_service.__file__, importlib.util.find_spec('service'))"],
        cwd=away, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in probe[:2]) and probe[2] == "None", probe

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen([venv / "bin" / "charlm", "serve", str(checkpoint_dir),
                               "--port", str(port)], cwd=away, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        status, ctype, page = get(base + "/")
        assert status == 200 and ctype.startswith("text/html")
        assert b"<title>charlm playground</title>" in page
        status, ctype, script = get(base + "/playground/app.js")
        assert status == 200 and script == (ROOT / "service" / "static" / "app.js").read_bytes()
        ask = {"inputs": "The ", "parameters": {"max_new_tokens": 40, "seed": 11}}
        status, _, answer = get(base + "/generate", ask)
        text = json.loads(answer)["generated_text"]
        assert len(text) == 40
        # the installed copy writes what the checkout's own app writes for the same request
        assert text == client.post("/generate", json=ask).get_json()["generated_text"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            log.close()


if __name__ == "__main__":
    (ROOT / "requirements.txt").write_text(requirements(), encoding="utf-8")
    print("wrote", ROOT / "requirements.txt")
