"""The library never imports the service: charlm/ stands alone, service/ builds on it."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the command line may start the service, importing it inside the command that does so
COMMAND_LINE = (ROOT / "charlm" / "cli.py", ROOT / "charlm" / "cli_groups.py")


def service_imports(path: Path) -> list[tuple[int, bool]]:
    """(line, inside a function) of each import of service or service.* in a source file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                names = [child.module or ""]
            else:
                names = []
            if any(n == "service" or n.startswith("service.") for n in names):
                found.append((child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_no_charlm_module_imports_the_service():
    sources = sorted((ROOT / "charlm").rglob("*.py"))
    assert set(COMMAND_LINE) <= set(sources) and len(sources) > 10
    for path in sources:
        for line, in_function in service_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            assert path in COMMAND_LINE, f"{where} imports service"
            assert in_function, f"{where} imports service when the command line loads"


def test_the_check_sees_imports_at_any_depth(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os, service.launch\nfrom service import create_app\n"
                   "from charlm import data\nfrom . import service\n"
                   "def serve():\n    if True:\n        from service.launch import run_serve\n")
    assert service_imports(src) == [(1, False), (2, False), (7, True)]


def test_importing_all_of_charlm_loads_no_service_module():
    code = ("import importlib, pkgutil, sys, charlm\n"
            "for m in pkgutil.walk_packages(charlm.__path__, 'charlm.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(len(sys.modules), sorted(n for n in sys.modules if n.split('.')[0] == "
            "'service'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    n_modules, service = out.stdout.split(maxsplit=1)
    assert int(n_modules) > 100 and service.strip() == "[]"
