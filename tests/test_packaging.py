"""The built distributions, and an installed smtpguard that owes nothing to the checkout.

The sdist is built from the checkout and the wheel from the sdist, as a release build
does (so a file missing from the sdist cannot reach the wheel, and no stale ``build/``
of the checkout either). The wheel goes into a fresh venv outside the tree, and every
command runs from a directory outside the tree. Measured on 2 cores: about 30 s, most of
it the two builds and the venv; the dependencies come from pip's cache when it has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from smtpguard.config import default_rules_dir, sample_config
from support.expected import SPEC, default_line
from support.mtclient import assert_pass, assert_reply
from support.service import UNTRUSTED_IP, Site, running

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: Top-level directories of the repository that are package data in the wheel.
DATA = {"rules": "smtpguard/data/rules", "conf": "smtpguard/data/conf"}
#: Build deps, the dependencies of a fresh venv: generous, but a hang must end.
PIP_TIMEOUT = 300
BUILD_SDIST = "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])"
#: Set here, they would make the installed command read the checkout or another config.
FOREIGN_ENV = ("PYTHONPATH", "PYTHONHOME", "SMTPGUARD_CONFIG")


def packages_under(src: Path) -> set[str]:
    return {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}


def files_under(top: Path) -> set[str]:
    return {
        str(p.relative_to(ROOT))
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


# --- the build configuration, no build ------------------------------------------------


def test_every_package_under_milter_is_listed() -> None:
    """The package list is explicit (the data mapping needs it): a new subpackage must
    be added there or the wheel would lack it."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert packages_under(ROOT / "milter") <= listed


def test_data_packages_map_the_top_level_directories() -> None:
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for top, inside in DATA.items():
        assert package_dir[inside.replace("/", ".")] == top


def test_editable_install_reads_the_checkout() -> None:
    """The test suite runs on an editable install: edits to rules/ count at once."""
    assert default_rules_dir() == ROOT / "rules"
    assert sample_config() == ROOT / "conf" / "smtpguard.toml"


# --- built and installed -------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    venv: Path
    #: Outside the tree: nothing may be found relative to the working directory.
    cwd: Path
    env: dict[str, str]

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / program), *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def smtpguard(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("smtpguard", *args)


def checked(argv: list[str], cwd: Path) -> None:
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"


def only(paths: Iterator[Path]) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    checked([sys.executable, "-c", BUILD_SDIST, str(out)], ROOT)
    sdist = only(out.glob("smtpguard-*.tar.gz"))
    checked(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(sdist)], out
    )
    return Dist(sdist, only(out.glob("smtpguard-*.whl")))


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    cwd = tmp_path_factory.mktemp("elsewhere")
    assert not venv.is_relative_to(ROOT)
    assert not cwd.is_relative_to(ROOT)
    checked([sys.executable, "-m", "venv", str(venv)], cwd)
    checked([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(dist.wheel)], cwd)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return Installed(venv, cwd, env)


@pytest.fixture(scope="module")
def installed_sample(installed: Installed) -> Path:
    result = installed.run(
        "python", "-c", "from smtpguard.config import sample_config; print(sample_config())"
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def installed_site(
    installed: Installed, installed_sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> Site:
    """The installed sample with the socket, directory and state in tmp and no user to
    drop to, written beside the sample so that its relative ``../rules/`` paths stay
    exactly as shipped."""
    tmp = tmp_path_factory.mktemp("packaged-site")
    site = Site(
        tmp,
        installed_sample.with_name("packaging-test.toml"),
        tmp / "smtpguard.sock",
        tmp / "directory.sqlite",
        tmp / "state.sqlite",
    )
    data: dict[str, Any] = tomllib.loads(installed_sample.read_text(encoding="utf-8"))
    assert data["replies"]["table"].startswith("../rules/")
    data["milter"] |= {"socket": f"unix:{site.socket}", "user": ""}
    data["directory"]["path"] = str(site.directory)
    data["state"]["path"] = str(site.state)
    site.config.write_text(tomli_w.dumps(data), encoding="utf-8")
    example = installed_sample.with_name("directory.example.toml")
    result = installed.smtpguard("-c", str(site.config), "directory", "import", str(example))
    assert result.returncode == 0, result.stderr
    return site


@pytest.mark.integration
def test_sdist_carries_the_project(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        top = dist.sdist.name.removesuffix(".tar.gz")
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    for directory in ("rules", "conf", "contrib", "docs"):
        assert files_under(ROOT / directory) <= names, directory
    for path in ("tests/test_packaging.py", "tests/support/mtclient.py", "tests/conftest.py"):
        assert path in names
    assert "milter/smtpguard/py.typed" in names


@pytest.mark.integration
def test_wheel_carries_rules_sample_conf_and_py_typed(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
    for top, inside in DATA.items():
        for path in (ROOT / top).glob("*.toml"):
            assert f"{inside}/{path.name}" in names
    assert "smtpguard/py.typed" in names
    # Nothing lands beside the package in site-packages (the old "lib/python3.X/rules").
    dist_info = f"smtpguard-{PYPROJECT['project']['version']}.dist-info"
    assert {n.split("/")[0] for n in names} == {"smtpguard", dist_info}


@pytest.mark.integration
def test_installed_package_reads_its_own_files(installed: Installed) -> None:
    result = installed.run(
        "python",
        "-c",
        "import smtpguard.config as c; print(c.__file__, c.default_rules_dir(), c.sample_config())",
    )
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(installed.venv), path
        assert Path(path).exists(), path


@pytest.mark.integration
def test_check_config_on_the_installed_sample(installed: Installed, installed_site: Site) -> None:
    result = installed.smtpguard("check-config", "--offline", str(installed_site.config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{installed_site.config}: OK")


@pytest.mark.integration
def test_replies_from_the_installed_table(installed: Installed, installed_site: Site) -> None:
    result = installed.smtpguard("-c", str(installed_site.config), "replies")
    assert result.returncode == 0, result.stderr
    code, xcode, _en, _zh = SPEC["helo_error"]
    assert f"{'helo_error':26} {code} {xcode} {default_line('helo_error')}" in result.stdout


@pytest.mark.integration
def test_explain_without_a_config(installed: Installed) -> None:
    """No config at all: the shipped explanations are found in the package."""
    result = installed.smtpguard("explain", "550 5.7.1 Relaying denied")
    assert result.returncode == 0, result.stderr
    assert "Category:   Relay denied [relay_denied]" in result.stdout


@pytest.mark.integration
def test_simulate_refuses_an_envelope(installed: Installed, installed_site: Site) -> None:
    result = installed.smtpguard(
        "-c",
        str(installed_site.config),
        "simulate",
        "--client",
        UNTRUSTED_IP,
        "--helo",
        "localhost",
        "--from",
        "a@sender.example",
        "--to",
        "alice@example.com",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    code, xcode, _en, _zh = SPEC["helo_error"]
    assert f"{code} {xcode} {default_line('helo_error')}   [helo_error]" in result.stdout
    assert "result: refused at MAIL FROM" in result.stdout


@pytest.mark.integration
def test_run_answers_a_session_with_a_table_reply(
    installed: Installed, installed_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installed service, its installed table and the directory imported from the
    installed example: an unknown local recipient gets mailbox_unavailable."""
    monkeypatch.chdir(installed.cwd)
    for name in FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    command = [str(installed.venv / "bin" / "smtpguard"), "-c", str(installed_site.config), "run"]
    with running(installed_site, command) as service, service.session() as s:
        assert_pass(s.connect(UNTRUSTED_IP))
        assert_pass(s.helo("mail.sender.example"))
        assert_pass(s.mail("<a@sender.example>"))
        assert_pass(s.rcpt("<alice@example.com>"))
        assert_reply(s.rcpt("<nobody@example.com>"), "mailbox_unavailable")
