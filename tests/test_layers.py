"""The package's layering (../shared/DESIGN.md, Layout): the import-linter contracts of
pyproject.toml hold, and no import cycle exists between modules (imports inside functions
included: a deferred import that closes a loop is still a loop).

Each check is also run on a copy of the package with one bad import planted, so that a contract
or a cycle search that silently checks nothing would fail here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

import grimp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each
    sorted: every import cycle lies inside one of them."""
    modules = sorted(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    imported = lambda m: iter(sorted(graph.find_modules_directly_imported_by(m)))

    def visit(root: str) -> None:
        # iterative DFS: (module, iterator over what it imports)
        work = [(root, imported(root))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append(
                        (target, iter(sorted(graph.find_modules_directly_imported_by(target))))
                    )
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return cycles


def _run(root: str, code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that finds the package `xmodal` under `root` (grimp reads
    the package this process would import, so a planted copy needs its own process)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.path.dirname(__file__)])}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def _package_cycles(root: str) -> list[list[str]]:
    code = (
        "import json, grimp, test_layers; g = grimp.build_graph('xmodal', cache_dir=None); "
        "print(json.dumps(test_layers.import_cycles(g, g.modules)))"
    )
    result = _run(root, code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _lint_imports(root: str) -> subprocess.CompletedProcess:
    """import-linter with this repository's contracts on the package found under `root`."""
    config = os.path.join(REPO, "pyproject.toml")
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={config!r}, no_cache=True))"
    )
    return _run(root, code)


def _copy_package(tmp_path) -> str:
    root = str(tmp_path / "src")
    shutil.copytree(
        os.path.join(REPO, "xmodal"),
        os.path.join(root, "xmodal"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return root


def test_layer_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_running_up_breaks_the_contracts(tmp_path):
    root = _copy_package(tmp_path)
    schema = os.path.join(root, "xmodal", "data", "schema.py")
    with open(schema, "a") as f:
        f.write("\n\ndef _up():\n    from xmodal.runtime import sharding  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert "xmodal.data.schema -> xmodal.runtime.sharding" in result.stdout


def test_the_package_has_no_import_cycle():
    assert _package_cycles(REPO) == []


def test_a_planted_loop_is_found(tmp_path):
    root = _copy_package(tmp_path)
    records = os.path.join(root, "xmodal", "data", "records.py")
    with open(records, "a") as f:  # records <- tokenizer already; a deferred import back
        f.write("\n\ndef _back():\n    from xmodal.data import tokenizer  # noqa\n")
    cycles = _package_cycles(root)
    assert any({"xmodal.data.records", "xmodal.data.tokenizer"} <= set(c) for c in cycles), cycles
