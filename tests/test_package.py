"""The package's public surface: a sorted, complete `__all__`, and imports that stay light."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flagmetrics
from tests.processes import REPO


def isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, each alphabetically (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def imports(command: str) -> subprocess.CompletedProcess[str]:
    """Run one command of tests.workers.imports in a fresh interpreter, without flagmetrics settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("FLAGMETRICS_", "PROMETHEUS_MULTIPROC"))}
    return subprocess.run(
        [sys.executable, "-m", "tests.workers.imports", command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environ,
        timeout=60,
    )


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert flagmetrics.__all__ == sorted(flagmetrics.__all__, key=isort_key)
    for name in flagmetrics.__all__:
        assert getattr(flagmetrics, name) is not None, name
    assert sorted(dir(flagmetrics)) == sorted(flagmetrics.__all__)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="DoesNotExist"):
        flagmetrics.DoesNotExist  # noqa: B018


def test_importing_the_package_does_not_import_prometheus_client() -> None:
    """So that flagmetrics.gunicorn can set PROMETHEUS_MULTIPROC_DIR before prometheus_client loads."""
    result = imports("package")
    assert result.stdout.strip() == "False", result.stderr


def module_path(module_name: str) -> Path:
    """The source file of a flagmetrics module."""
    relative = Path(*module_name.split(".")[1:])
    package = REPO / "src" / "flagmetrics"
    return package / relative / "__init__.py" if (package / relative).is_dir() else package / f"{relative}.py"


def documented_by_source(module_name: str) -> dict[str, bool]:
    """A module's `__all__` read from its source, each name mapped to whether the module documents it.

    For flagmetrics.gunicorn, whose import has effects. A name is documented by a function or class
    with a docstring, or an assignment followed by a docstring.
    """
    tree = ast.parse(module_path(module_name).read_text())
    names: list[str] = []
    documented: set[str] = set()
    for node, after in zip(tree.body, [*tree.body[1:], None], strict=True):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and ast.get_docstring(node):
            documented.add(node.name)
        elif isinstance(node, ast.Assign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            for target in node.targets:
                documented.update(getattr(e, "id", "") for e in getattr(target, "elts", [target]))
    return {name: name in documented for name in names}


def documented_names(module_name: str) -> dict[str, bool]:
    """A public module's `__all__`, each name mapped to whether it has a docstring of its own."""
    if module_name == "flagmetrics.gunicorn":
        return documented_by_source(module_name)
    module = importlib.import_module(module_name)
    found = {}
    for name in module.__all__:
        value = getattr(module, name)
        found[name] = (inspect.isclass(value) or inspect.isfunction(value)) and bool(value.__doc__)
    return found


@pytest.mark.parametrize("module_name", ["flagmetrics", *flagmetrics.PUBLIC_MODULES])
def test_each_public_module_has_a_sorted_all(module_name: str) -> None:
    names = list(documented_names(module_name))
    assert names
    assert names == sorted(names, key=isort_key)


def test_every_public_name_is_documented() -> None:
    """Each public name is in the README, or has a docstring of its own."""
    readme = (REPO / "README.md").read_text()
    undocumented = [
        f"{module_name}.{name}"
        for module_name in ["flagmetrics", *flagmetrics.PUBLIC_MODULES]
        for name, own_doc in documented_names(module_name).items()
        if not own_doc and f"`{name}" not in readme
    ]
    assert not undocumented


def test_internal_modules_say_so() -> None:
    """Every module that is not public says in its first docstring line that it is internal."""
    package = REPO / "src" / "flagmetrics"
    public = {name.removeprefix("flagmetrics.") for name in flagmetrics.PUBLIC_MODULES}
    for path in sorted(package.rglob("*.py")):
        dotted = ".".join(path.relative_to(package).with_suffix("").parts)
        if dotted in public or dotted.startswith("stores.") or dotted in {"__init__", "__main__", "cli"}:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert doc.startswith("Internal:"), f"flagmetrics.{dotted}"


def test_the_local_store_path_does_not_import_redis() -> None:
    """redis-py is loaded only where the Redis store is used."""
    result = imports("local-store-path")
    assert result.stdout.split() == ["LocalStore", "False"], result.stderr


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads it from flagmetrics.__version__, and the installed metadata agrees."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert importlib.metadata.version("flagmetrics") == flagmetrics.__version__
