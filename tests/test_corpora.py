"""Named corpora: the offline default, the registry, and fetching over HTTP (charlm.corpora)."""

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest

from charlm import corpora
from charlm.corpora import default_corpus, fetch, list_corpora, resolve_corpus
from charlm.data import default_cache_dir, load_corpus
from charlm.errors import CharlmError

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Keep every test's cache out of the user's ~/.cache, and the URL as registered."""
    d = tmp_path / "cache"
    monkeypatch.setenv("CHARLM_CACHE_DIR", str(d))
    monkeypatch.delenv("CHARLM_CORPUS_URL_TINYSHAKESPEARE", raising=False)
    return d


@pytest.fixture
def shakespeare() -> bytes:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent (the shared corpora sit beside the repository)")
    return SHAKESPEARE.read_bytes()


@pytest.fixture
def serve():
    """serve(body) -> the URL of an HTTP server on 127.0.0.1 answering /input.txt with body."""
    servers = []

    def start(body: bytes) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/input.txt":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the test output quiet
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/input.txt"

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the offline default --------------------------------------------------------------------


def test_default_corpus_is_deterministic_and_cached(tmp_path, monkeypatch):
    a = default_corpus(tmp_path / "one")
    b = default_corpus(tmp_path / "two")
    assert a != b and a.read_bytes() == b.read_bytes()
    assert a.name.startswith("pystdlib-") and a.parent == tmp_path / "one" / "corpora"
    size = a.stat().st_size
    assert 1_000_000 < size <= corpora.STDLIB_CAP_BYTES
    text = a.read_text(encoding="utf-8")
    assert "def " in text and "import " in text and "\r\n" not in text
    assert [p.name for p in a.parent.iterdir()] == [a.name]  # no temporary files left

    def no_build(*args):
        raise AssertionError("built again")

    monkeypatch.setattr(corpora, "build_stdlib_corpus", no_build)
    assert default_corpus(tmp_path / "one") == a


def test_stdlib_files_skip_tests_and_tables():
    files = corpora.stdlib_files()
    assert files == sorted(files) and "argparse.py" in files
    parts = {part for f in files for part in f.split("/")[:-1]}
    assert not parts & {"test", "tests", "idlelib", "site-packages", "encodings"}


def test_build_stops_at_the_cap(tmp_path):
    root = tmp_path / "lib"
    (root / "test").mkdir(parents=True)
    for name, body in [("a.py", "x = 1\r\n"), ("b.py", "y = 2\n"), ("c.py", "z = 3\n" * 10)]:
        (root / name).write_text(body, newline="")
    (root / "test" / "t.py").write_text("skipped\n")
    (root / "bad.py").write_bytes(b"\xff not utf-8\n")
    dest = corpora.build_stdlib_corpus(tmp_path / "out.txt", root=root, cap_bytes=20)
    assert dest.read_text() == "x = 1\n\ny = 2\n\n"


# -- the registry ---------------------------------------------------------------------------


def test_registered_sha256_is_the_shared_file(shakespeare):
    spec = corpora.CORPORA["tinyshakespeare"]
    assert hashlib.sha256(shakespeare).hexdigest() == spec.sha256
    assert len(shakespeare) == spec.size
    assert len(shakespeare.decode("utf-8")) == 1_115_394


def test_list_corpora(cache_dir):
    rows = {r.name: r for r in list_corpora()}
    assert set(rows) == {"pystdlib", "tinyshakespeare"}
    assert rows["pystdlib"].available  # built offline whenever it is wanted
    assert not rows["tinyshakespeare"].available
    assert rows["tinyshakespeare"].size == 1_115_394
    assert rows["tinyshakespeare"].path == cache_dir / "corpora" / "tinyshakespeare.txt"
    assert all(r.description for r in rows.values())


def test_resolve_corpus(tmp_path, cache_dir):
    assert default_cache_dir() == cache_dir
    mine = tmp_path / "mine.txt"
    mine.write_text("hello")
    assert resolve_corpus(mine) == mine
    assert resolve_corpus(str(mine)) == mine
    assert resolve_corpus(None) == resolve_corpus("pystdlib") == default_corpus()
    with pytest.raises(CharlmError, match="charlm corpus fetch tinyshakespeare"):
        resolve_corpus("tinyshakespeare")
    local = cache_dir / "corpora" / "tinyshakespeare.txt"
    local.write_text("pretend")
    assert resolve_corpus("tinyshakespeare") == local
    with pytest.raises(CharlmError, match=r"no such file or corpus: nope.txt \(corpora: pystdlib"):
        resolve_corpus("nope.txt")


def test_the_default_corpus_loads(cache_dir):
    c = load_corpus(resolve_corpus(None))
    assert c.vocab.vocab_size > 60 and c.val_dropped >= 0 and len(c.train) > 1_000_000


# -- fetch ----------------------------------------------------------------------------------


def test_fetch_from_a_local_server(tmp_path, serve, shakespeare, cache_dir):
    url = serve(shakespeare)
    dest = fetch("tinyshakespeare", url=url, progress=False)
    assert dest == cache_dir / "corpora" / "tinyshakespeare.txt"
    assert dest.read_bytes() == shakespeare
    assert resolve_corpus("tinyshakespeare") == dest
    assert [r.available for r in list_corpora() if r.name == "tinyshakespeare"] == [True]
    # a second fetch keeps the good file (the url now fails: it is not asked)
    assert fetch("tinyshakespeare", url=f"http://127.0.0.1:{free_port()}/x") == dest


def test_fetch_url_from_the_environment(tmp_path, serve, shakespeare, monkeypatch):
    monkeypatch.setenv("CHARLM_CORPUS_URL_TINYSHAKESPEARE", serve(shakespeare))
    dest = fetch("tinyshakespeare", dest_dir=tmp_path / "here", progress=True)
    assert dest == tmp_path / "here" / "tinyshakespeare.txt"
    assert dest.read_bytes() == shakespeare


def assert_nothing_left(d: Path) -> None:
    assert not d.exists() or list(d.iterdir()) == []


def test_fetch_rejects_the_wrong_bytes(tmp_path, serve, shakespeare):
    url = serve(shakespeare.replace(b"Citizen", b"Citizan", 1))
    with pytest.raises(CharlmError, match=r"has sha256 [0-9a-f]+\.\.\., expected 86c4e6aa"):
        fetch("tinyshakespeare", dest_dir=tmp_path / "d", url=url, progress=False)
    assert_nothing_left(tmp_path / "d")


def test_fetch_404(tmp_path, serve):
    url = serve(b"whatever").replace("input.txt", "missing.txt")
    with pytest.raises(CharlmError, match=r"could not download tinyshakespeare from .*: HTTP 404"):
        fetch("tinyshakespeare", dest_dir=tmp_path / "d", url=url, progress=False)
    assert_nothing_left(tmp_path / "d")


def test_fetch_offline(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/input.txt"
    with pytest.raises(CharlmError) as e:
        fetch("tinyshakespeare", dest_dir=tmp_path / "d", url=url, progress=False)
    message = str(e.value)
    assert message.startswith(f"could not download tinyshakespeare from {url}: ")
    assert message.endswith("; are you offline?") and "\n" not in message
    assert_nothing_left(tmp_path / "d")


def test_fetch_unknown_name(tmp_path):
    with pytest.raises(CharlmError, match="unknown corpus 'war-and-peace'"):
        fetch("war-and-peace", dest_dir=tmp_path)
