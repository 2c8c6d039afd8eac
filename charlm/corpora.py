"""Named corpora: the offline default built from Python's own source, and ones to download.

`pystdlib` needs no network: it is the .py source of the standard library of the Python that
runs charlm, so it is on every machine that can run us. It is built once and kept in the cache
directory (never in the repository: it is other people's text), as is every fetched corpus.
"""

import hashlib
import os
import platform
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from charlm.data import atomic_write, default_cache_dir, file_sha256
from charlm.errors import CharlmError

STDLIB_CAP_BYTES = 4 * 2**20  # the default corpus stops at the first file that would pass this
# parts of the standard library that are not everyday python: tests, the IDE, generated tables
STDLIB_SKIP = frozenset({
    "test", "tests", "idle_test", "idlelib", "turtledemo", "lib2to3", "encodings", "pydoc_data",
    "ensurepip", "site-packages", "dist-packages", "lib-dynload", "__pycache__", "__phello__",
})
DOWNLOAD_TIMEOUT = 30.0  # seconds without a byte before a download gives up


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    description: str
    url: str = ""  # where fetch gets it; empty: built locally
    sha256: str = ""  # of the file's bytes, checked on download
    size: int = 0  # bytes, when known in advance


CORPORA = {spec.name: spec for spec in (
    CorpusSpec("pystdlib", "the Python standard library's own .py source, built offline "
               "(the default)"),
    CorpusSpec("tinyshakespeare", "40,000 lines of Shakespeare, from Karpathy's char-rnn",
               "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
               "input.txt",
               "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1115394),
)}


@dataclass
class CorpusInfo:
    """One row of `list_corpora`."""

    name: str
    description: str
    size: int | None  # bytes, if known
    available: bool  # usable without a network
    path: Path  # where it is, or will be once built or fetched


def corpora_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "corpora"


def _spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise CharlmError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    return CORPORA[name]


def _local_path(name: str, cache_dir: Path | None = None) -> Path:
    if name == "pystdlib":  # the standard library changes between python versions
        return corpora_dir(cache_dir) / f"pystdlib-{platform.python_version()}.txt"
    return corpora_dir(cache_dir) / f"{name}.txt"


# -- the offline default ----------------------------------------------------------------------


def stdlib_files(root: Path | None = None) -> list[str]:
    """The standard library's .py files that go in the default corpus, as sorted relative paths."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP and not d.startswith("config-")]
        for f in filenames:
            # _sysconfigdata holds this machine's build settings, not code anyone wrote
            if f.endswith(".py") and not f.startswith("_sysconfigdata"):
                found.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(found)


def build_stdlib_corpus(dest: Path, root: Path | None = None,
                        cap_bytes: int = STDLIB_CAP_BYTES) -> Path:
    """Concatenate the standard library's source into dest, in sorted order, up to cap_bytes."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for rel in stdlib_files(root):
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):  # a distro may ship odd files: leave them out
            continue
        # the same bytes whatever the checkout's line endings; a blank line between files
        text = text.removeprefix("\ufeff").replace("\r\n", "\n").rstrip("\n") + "\n\n"
        data = text.encode("utf-8")
        if size + len(data) > cap_bytes:
            break
        parts.append(data)
        size += len(data)
    if not parts:
        raise CharlmError(f"found no Python source under {root} to build the default corpus from")
    with atomic_write(dest) as f:
        f.writelines(parts)
    return dest


def default_corpus(cache_dir: Path | None = None) -> Path:
    """The offline default corpus (pystdlib), built on first use and cached."""
    path = _local_path("pystdlib", cache_dir)
    if not path.is_file():
        build_stdlib_corpus(path)
    return path


# -- the registry -----------------------------------------------------------------------------


def list_corpora(cache_dir: Path | None = None) -> list[CorpusInfo]:
    """Every named corpus: what it is, its size, and whether it can be used offline."""
    rows = []
    for spec in CORPORA.values():
        path = _local_path(spec.name, cache_dir)
        here = path.is_file()
        size = path.stat().st_size if here else (spec.size or None)
        rows.append(CorpusInfo(spec.name, spec.description, size,
                               here or not spec.url, path))
    return rows


def resolve_corpus(name_or_path: str | Path | None = None,
                   cache_dir: Path | None = None) -> Path:
    """The file to train on: a path as given, a corpus name available here, or the default."""
    if name_or_path is None:
        return default_corpus(cache_dir)
    path = Path(name_or_path)
    if path.exists():
        return path  # load_corpus says what is wrong with it, if anything
    name = str(name_or_path)
    if name not in CORPORA:
        raise CharlmError(f"no such file or corpus: {name} (corpora: {', '.join(CORPORA)})")
    if name == "pystdlib":
        return default_corpus(cache_dir)
    local = _local_path(name, cache_dir)
    if not local.is_file():
        raise CharlmError(f"{name} is not downloaded yet: run `charlm corpus fetch {name}`")
    return local


# -- downloading ------------------------------------------------------------------------------


def _url(spec: CorpusSpec, url: str | None) -> str:
    env = f"CHARLM_CORPUS_URL_{spec.name.upper()}"
    return url or os.environ.get(env) or spec.url


def _download(name: str, url: str, out: BinaryIO, progress: bool) -> str:
    """Copy url into out, with a progress bar if asked; the sha256 of what arrived."""
    h = hashlib.sha256()
    columns = (TextColumn(name), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp, \
                Progress(*columns, console=Console(stderr=True), disable=not progress,
                         transient=True) as bar:
            total = int(resp.headers.get("Content-Length") or 0) or None
            task = bar.add_task("download", total=total)
            while block := resp.read(2**16):
                h.update(block)
                out.write(block)
                bar.advance(task, len(block))
    except urllib.error.HTTPError as e:
        e.close()
        raise CharlmError(f"could not download {name} from {url}: HTTP {e.code} {e.reason}"
                          ) from None
    except urllib.error.URLError as e:
        raise CharlmError(f"could not download {name} from {url}: {e.reason}; are you offline?"
                          ) from None
    except (TimeoutError, ConnectionError, HTTPException) as e:
        raise CharlmError(f"could not download {name} from {url}: "
                          f"{str(e) or type(e).__name__}; are you offline?") from None
    except ValueError as e:  # not a url urllib understands
        raise CharlmError(f"could not download {name} from {url}: {e}") from None
    return h.hexdigest()


def fetch(name: str, dest_dir: Path | None = None, url: str | None = None,
          progress: bool = True) -> Path:
    """Download a named corpus (checking its sha256) into dest_dir, by default the cache.

    The url defaults to the registry's, overridden by $CHARLM_CORPUS_URL_<NAME> or `url`.
    A file already there with the right sha256 is kept; nothing is left behind on failure.
    """
    spec = _spec(name)
    if not spec.url:  # built, not downloaded
        if dest_dir is None:
            return default_corpus()
        return build_stdlib_corpus(Path(dest_dir) / _local_path(name).name)
    dest = Path(dest_dir) / f"{name}.txt" if dest_dir else _local_path(name)
    if dest.is_file() and file_sha256(dest) == spec.sha256:
        return dest
    source = _url(spec, url)
    with atomic_write(dest) as f:
        got = _download(name, source, f, progress)
        if spec.sha256 and got != spec.sha256:
            raise CharlmError(f"{name} from {source} has sha256 {got[:16]}..., expected "
                              f"{spec.sha256[:16]}...; not kept")
    return dest
