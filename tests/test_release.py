"""Release: the sdist and wheel build, pass `twine check --strict`, hold the package, and the installed wheel serves.

The wheel is installed into a fresh venv that borrows this environment's dependencies but not its
flagmetrics, and gunicorn runs the Litestar example against it from a directory outside the source tree.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import email.parser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from email.message import Message
from pathlib import Path

import pytest

import flagmetrics
from examples.traffic import plan, send
from tests.helpers import Gunicorn, assert_scrape_is_true, landed
from tests.processes import LOOPBACK, REPO, children_of, clean_environ, free_port, pid_alive, stop_process, wait_for

pytestmark = pytest.mark.e2e

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE = REPO / "src" / "flagmetrics"
REPOSITORY_URL = "https://github.com/flagmetrics/flagmetrics"
USERS = 400
SCRAPES = 12
STEP_TIMEOUT_S = 60  # seconds any one command of a step (build, twine, venv, pip) may take

# Appended to the copy of gunicorn.conf.py: each worker, once it has loaded the app, writes where every
# flagmetrics module it imported comes from to $RELEASE_PROBE_DIR/<pid>.json.
PROBE = """

def post_worker_init(worker):
    import json, os, sys

    paths = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
             if name.split(".")[0] == "flagmetrics"}
    path = os.path.join(os.environ["RELEASE_PROBE_DIR"], f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as out:
        json.dump(paths, out)
    os.replace(path + ".tmp", path)
"""


def package_files() -> set[str]:
    """Every module of src/flagmetrics and its subpackages, and py.typed, as paths inside the package."""
    found = {path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    return {f"flagmetrics/{path.relative_to(PACKAGE).as_posix()}" for path in [*found, PACKAGE / "py.typed"]}


def run(
    args: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `STEP_TIMEOUT_S`, failing the test with its output if it fails."""
    command = [str(arg) for arg in args]
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def git_status() -> set[str] | None:
    """The repository's untracked and ignored entries (bytecode aside), or None outside a git checkout."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        return None
    status = run([git, "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=REPO).stdout
    return {line for line in status.splitlines() if line.startswith(("??", "!!")) and "__pycache__/" not in line}


@dataclass(frozen=True)
class Dists:
    """The sdist and wheel built from the repository, and what building added to its `git status`."""

    sdist: Path
    wheel: Path
    left_in_repository: set[str] | None

    def wheel_names(self) -> list[str]:
        """The wheel's members."""
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.namelist()

    def wheel_text(self, name: str) -> str:
        """One member of the wheel, as text."""
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.read(name).decode()

    def dist_info(self) -> str:
        """The wheel's .dist-info directory."""
        return f"flagmetrics-{flagmetrics.__version__}.dist-info"

    def sdist_names(self) -> list[str]:
        """The sdist's members, without its top directory."""
        with tarfile.open(self.sdist) as sdist:
            return [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """Build the sdist, then the wheel from that sdist (as `python -m build` does), into a temporary directory."""
    out = tmp_path_factory.mktemp("dist")
    before = git_status()
    # Without isolation: the build uses the hatchling the test extra installs instead of downloading one
    # into a fresh environment each run, so it needs no network and takes a second; `build` still checks
    # that the installed hatchling satisfies [build-system] requires. Building the wheel from the sdist
    # still catches a file the sdist lacks.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], cwd=out)
    after = git_status()
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    left = None if before is None or after is None else after - before
    return Dists(sdist=sdist, wheel=wheel, left_in_repository=left)


def wheel_metadata(dists: Dists) -> Message:
    """The wheel's METADATA, parsed."""
    return email.parser.Parser().parsestr(dists.wheel_text(f"{dists.dist_info()}/METADATA"))


# -- the artifacts ------------------------------------------------------------------------------------


def test_building_leaves_the_repository_as_it_was(dists: Dists) -> None:
    """No dist/, build/ or egg-info (nor anything else) appears in the repository."""
    if dists.left_in_repository is None:
        pytest.skip("not a git checkout")
    assert dists.left_in_repository == set()


def test_twine_check_strict_passes_on_sdist_and_wheel(dists: Dists) -> None:
    """PyPI would take both: valid metadata, and a README that renders."""
    result = run([sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel])
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_holds_every_module_and_nothing_else(dists: Dists) -> None:
    """Every src/flagmetrics module and py.typed, plus the dist-info: no tests, examples or bytecode."""
    names = dists.wheel_names()
    assert len(names) == len(set(names))
    info = dists.dist_info()
    assert {name for name in names if not name.startswith(f"{info}/")} == package_files()
    assert {f"{info}/{name}" for name in ("METADATA", "WHEEL", "RECORD", "entry_points.txt")} <= set(names)


def test_the_wheel_declares_the_console_script(dists: Dists) -> None:
    """`flagmetrics`, as pyproject.toml names it."""
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dists.wheel_text(f"{dists.dist_info()}/entry_points.txt"))
    assert (
        dict(entry_points["console_scripts"])
        == PYPROJECT["project"]["scripts"]
        == {"flagmetrics": "flagmetrics.cli:main"}
    )


def test_the_wheel_metadata_says_what_pyproject_says(dists: Dists) -> None:
    """Version (that of `flagmetrics.__version__`), license, classifiers, URLs, Python and README."""
    project = PYPROJECT["project"]
    metadata = wheel_metadata(dists)
    assert metadata["Name"] == "flagmetrics"
    assert metadata["Version"] == flagmetrics.__version__
    assert metadata["License-Expression"] == project["license"]
    assert metadata.get_all("Classifier") == project["classifiers"]
    assert metadata.get_all("Project-URL") == [f"{name}, {url}" for name, url in project["urls"].items()]
    assert metadata["Requires-Python"] == project["requires-python"]
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload() == (REPO / "README.md").read_text()


def test_the_wheel_and_sdist_ship_the_license(dists: Dists) -> None:
    """The license text is in both, and METADATA names it."""
    assert wheel_metadata(dists).get_all("License-File") == ["LICENSE"]
    assert f"{dists.dist_info()}/licenses/LICENSE" in dists.wheel_names()
    assert "LICENSE" in dists.sdist_names()


def test_the_sdist_holds_what_building_and_testing_need(dists: Dists) -> None:
    """The package, pyproject, README, changelog, tests and examples; no venv, caches or bytecode."""
    names = set(dists.sdist_names())
    needed = {"PKG-INFO", "pyproject.toml", "README.md", "CHANGELOG.md", "gunicorn.conf.py", "tests/conftest.py"}
    assert needed | {f"src/{name}" for name in package_files()} <= names
    assert {name for name in names if name.startswith("examples/")}
    junk = re.compile(r"(^|/)(\.venv|venv|\.git|__pycache__|\.\w+_cache|\.hypothesis|dist|build)(/|$)|\.py[cod]$")
    assert sorted(name for name in names if junk.search(name)) == []


def test_the_sdist_leaves_out_benchmark_results_and_images(dists: Dists) -> None:
    """Nothing a build or the tests do not need: no benchmarks and their results, docs images or CI script."""
    names = dists.sdist_names()
    assert [name for name in names if name.startswith(("benchmarks/", "docs/", ".ci/"))] == []


def test_the_changelog_has_a_section_for_this_version() -> None:
    """CHANGELOG.md: `## [Unreleased]` first, then `## [<version>] - <date>`, each with its link."""
    changelog = (REPO / "CHANGELOG.md").read_text()
    version = re.escape(flagmetrics.__version__)
    sections = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert sections[0] == "Unreleased"
    assert flagmetrics.__version__ in sections
    dated = re.search(rf"^## \[{version}\] - (\d{{4}}-\d{{2}}-\d{{2}})$", changelog, flags=re.MULTILINE)
    assert dated is not None
    date.fromisoformat(dated.group(1))
    for section in sections:
        assert re.search(rf"^\[{re.escape(section)}\]: {REPOSITORY_URL}/\S+$", changelog, flags=re.MULTILINE), section


# -- the wheel installed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A fresh venv holding the built wheel, with this environment's site-packages for the dependencies."""

    root: Path
    python: Path
    site_packages: Path
    environ: dict[str, str]


def install(wheel: Path, root: Path) -> Venv:
    """Install `wheel` (not editable, no dependencies) into a new venv at `root`."""
    run([sys.executable, "-m", "venv", "--without-pip", root])
    python = root / "bin" / "python"
    # No PYTHONPATH: clean_environ puts the repository on it, which is what this test must do without.
    environ = {k: v for k, v in clean_environ().items() if k != "PYTHONPATH"}
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], env=environ)
    site_packages = Path(purelib.stdout.strip()).resolve()
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "-q"]
    run([*pip, "install", "--no-deps", "--no-index", wheel], env=environ)
    # Plain path lines: the dependencies are found there, but the .pth files in those directories are
    # not processed, so this environment's editable flagmetrics is not on the path.
    outer = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    (site_packages / "outer_site_packages.pth").write_text("".join(f"{path}\n" for path in outer))
    return Venv(root=root, python=python, site_packages=site_packages, environ=environ)


@contextlib.contextmanager
def gunicorn_from(venv: Venv, app_dir: Path, probe_dir: Path, tmp_path: Path) -> Iterator[Gunicorn]:
    """Start `python -m gunicorn` of `venv` on the Litestar example from `app_dir`; stop it afterwards."""
    port = free_port()
    multiproc_dir = tmp_path / "multiproc"
    log = tmp_path / "gunicorn.log"
    environ = {
        **venv.environ,
        "BIND": f"{LOOPBACK}:{port}",
        "WEB_CONCURRENCY": "4",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "FLAGMETRICS_FLUSH_INTERVAL_S": "0.2",
        "RELEASE_PROBE_DIR": str(probe_dir),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [venv.python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "examples.app:app"],
            cwd=app_dir,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(proc=proc, port=port, workers=4, log=log, multiproc_dir=multiproc_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        workers = children_of(proc.pid)
        stop_process(proc, timeout_s=15)
        for pid in workers:  # a worker the master could not reap in time
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_the_installed_wheel_serves_the_fleet_truth_under_gunicorn(dists: Dists, tmp_path: Path) -> None:
    """The wheel in a fresh venv: its console script runs, and 4 gunicorn workers on it report exact figures."""
    venv = install(dists.wheel, tmp_path / "venv")
    where = run(
        [venv.python, "-c", "import flagmetrics; print(flagmetrics.__file__, flagmetrics.__version__)"],
        env=venv.environ,
    )
    module_file, version = where.stdout.split()
    assert Path(module_file).resolve().is_relative_to(venv.site_packages)
    assert version == flagmetrics.__version__
    assert run([venv.root / "bin" / "flagmetrics", "--version"], env=venv.environ).stdout.split() == [
        "flagmetrics",
        flagmetrics.__version__,
    ]

    app_dir = tmp_path / "app"
    shutil.copytree(REPO / "examples", app_dir / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    config = (REPO / "gunicorn.conf.py").read_text()
    assert "post_worker_init" not in config  # the probe must not replace a hook of the real configuration
    (app_dir / "gunicorn.conf.py").write_text(config + PROBE)

    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    with gunicorn_from(venv, app_dir, probe_dir, tmp_path) as app:

        def probed() -> set[int]:
            """The workers' pids once each live worker, and no other, has written its probe."""
            pids = {int(path.stem) for path in probe_dir.glob("*.json")}
            return pids if pids == set(app.worker_pids()) else set()

        pids = wait_for(probed, 15, "every worker to say where its flagmetrics comes from")
        assert len(pids) == 4
        for pid in pids:
            modules = json.loads((probe_dir / f"{pid}.json").read_text())
            assert {"flagmetrics", "flagmetrics.litestar", "flagmetrics.exporter"} <= set(modules), modules
            installed = {
                name: Path(path).resolve().is_relative_to(venv.site_packages) for name, path in modules.items()
            }
            assert {name: modules[name] for name, inside in installed.items() if not inside} == {}

        tally = asyncio.run(send(app.url, list(plan(USERS))))
        assert tally.failed_requests == 0, tally.failures
        assert any(reason == "ERROR" for _, reason, _ in tally.evaluations)
        wait_for(lambda: landed(tally, app), 15, "the workers' flushes to land")
        answered_by: set[str] = set()
        for scraped in range(100):
            if scraped >= SCRAPES and len(answered_by) >= 3:
                break
            response = app.scrape()
            assert response.status_code == 200
            answered_by.add(response.headers["x-flagmetrics-worker"])
            assert_scrape_is_true(tally, response.text)
        assert len(answered_by) >= 3, answered_by
        assert answered_by <= {str(pid) for pid in app.worker_pids()}
