"""MkDocs hooks of the documentation site: the settings table, and links to the repository's own files.

- `<!-- settings -->` in a page becomes the table of every `FLAGMETRICS_*` setting, made from the fields
  of `flagmetrics.config.Settings` and their docstrings, so the table cannot drift from the code.
- A `FLAGMETRICS_*` name in a page that is not a setting fails the strict build.
- A relative link from a page to a file outside `docs/` (`../examples/app.py`), which works when the
  Markdown is read on GitHub, becomes a link to that file on GitHub; a link to a file that does not
  exist fails the strict build.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import logging
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BLOB_URL = "https://github.com/flagmetrics/flagmetrics/blob/main/"
TREE_URL = "https://github.com/flagmetrics/flagmetrics/tree/main/"
SETTINGS_MARKER = "<!-- settings -->"
# Variables that are not settings of the library: the test suite's switch.
OTHER_VARIABLES = frozenset({"FLAGMETRICS_REQUIRE_REDIS"})

log = logging.getLogger("mkdocs.hooks.flagmetrics")

_LINK = re.compile(r"(\]\()(?!https?:|mailto:|#|/)([^)\s#]+)(#[^)\s]*)?(\))")
_VARIABLE = re.compile(r"\bFLAGMETRICS_[A-Z0-9_]*[A-Z0-9]\b")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill in the settings table, check the settings named, and point links out of docs/ at GitHub."""
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    known = {variable for variable, _, _ in settings()} | OTHER_VARIABLES
    for name in sorted(set(_VARIABLE.findall(markdown)) - known):
        log.warning(
            "Doc file '%s' names %s, which is not a setting of flagmetrics.config.Settings", page.file.src_uri, name
        )
    return _LINK.sub(lambda match: _repository_link(match, page.file.src_uri), markdown)


def _repository_link(match: re.Match[str], page_path: str) -> str:
    """The link unchanged when it stays in docs/, else the same file on GitHub."""
    opening, target, anchor, closing = match.group(1), match.group(2), match.group(3) or "", match.group(4)
    resolved = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_path), target))
    if resolved == "docs" or resolved.startswith("docs/"):
        return match.group(0)
    path = REPO / resolved
    if resolved.startswith("../") or not path.exists():
        log.warning("Doc file '%s' links to '%s', which is not a file of the repository", page_path, target)
        return match.group(0)
    base = TREE_URL if path.is_dir() else BLOB_URL
    return f"{opening}{base}{resolved}{anchor}{closing}"


@functools.cache
def settings() -> tuple[tuple[str, str, str], ...]:
    """Each setting as (variable, default, meaning), in the order of `Settings`' fields."""
    source = REPO / "src" / "flagmetrics" / "config.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings").body
    docstrings = {
        node.target.id: inspect.cleandoc(after.value.value)
        for node, after in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
        and isinstance(after.value.value, str)
    }
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    from flagmetrics.config import Settings

    rows = []
    for field in dataclasses.fields(Settings):
        meaning = docstrings.get(field.name)
        if meaning is None:
            log.warning("flagmetrics.config.Settings.%s has no docstring for the settings table", field.name)
            meaning = ""
        rows.append((f"FLAGMETRICS_{field.name.upper()}", _default(field.name, field.default), meaning))
    return tuple(rows)


def settings_table() -> str:
    """The Markdown table of every setting: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for variable, default, meaning in settings():
        text = " ".join(meaning.split()).replace("|", "\\|")
        lines.append(f"| `{variable}` | {default} | {text} |")
    return "\n".join(lines)


def _default(name: str, value: object) -> str:
    """A field's default as the table shows it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    if isinstance(value, int) and name.endswith("_bytes") and value % 2**20 == 0:
        return f"`{value}` ({value // 2**20} MiB)"
    return f"`{value}`"
