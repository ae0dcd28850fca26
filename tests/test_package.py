"""The package's public surface: a sorted, complete `__all__`, and imports that stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flagmetrics
from tests.conftest import REPO


def isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest, each alphabetically (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


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
    code = "import sys, flagmetrics, flagmetrics.gunicorn; print('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
