"""The wheel as an edge box gets it (docs/install.md): built from this checkout,
installed into a fresh virtualenv outside it, and run there: ``lockerd --version``,
``python -m lockerd --version``, then ``lockerd demo`` played with ``lockerctl``.

The fresh venv takes lockerd from the wheel only; its dependencies come from the
running interpreter's site-packages through a path file (no network, and the
checkout's editable install is not seen: a path file's directories are added, their
own path files are not read)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PARCEL = re.compile(r"^parcel (\S+) size (\S+) deposit (\d+) pickup (\d+)$")


_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
# what the installed commands run with: nothing from this checkout or this test run
_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST"))}


def _run(*args: str | Path, cwd: Path, timeout: float = 120) -> str:
    out = subprocess.run(
        [str(a) for a in args],
        env=_CLEAN_ENV,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the bin directory of a fresh venv with it installed)."""
    where = tmp_path_factory.mktemp("wheel")
    # built from a copy of the tree (its symlinks kept): nothing is written into the
    # checkout, and no build/ left there by an earlier build can ship a removed module
    source = where / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    dist = where / "dist"
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", dist, source, cwd=where,
    )  # fmt: skip
    (wheel,) = dist.glob("lockerd-*.whl")
    venv = where / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=where)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    _run(*pip, "install", "-q", "--no-deps", wheel, cwd=where)
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=where
    )
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.strip()) / "lockerd-deps.pth").write_text("\n".join(deps) + "\n")
    return wheel, venv / "bin"


def test_the_wheel_installs_only_names_under_lockerd(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {"lockerd", f"lockerd-{VERSION}.dist-info"}
    assert "lockerd/demo/demo-hub.toml" in names  # the demo's config is package data
    assert not any(n.startswith(("lockerd/tests", "lockerd/bench", "tools/")) for n in names)


def test_the_installed_lockerd_reports_its_version(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_ = installed
    assert _run(bin_ / "lockerd", "--version", cwd=tmp_path).strip() == f"lockerd {VERSION}"
    assert _run(bin_ / "lockerctl", "--version", cwd=tmp_path).strip() == f"lockerctl {VERSION}"
    assert "lockerd-sim" in _run(bin_ / "lockerd-sim", "--help", cwd=tmp_path)
    out = _run(bin_ / "python", "-m", "lockerd", "--version", cwd=tmp_path)
    assert out.strip() == f"lockerd {VERSION}"
    where = _run(bin_ / "python", "-c", "import lockerd; print(lockerd.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(bin_.parent), where  # the wheel's, not ours
    for name in ("drivers", "simulator"):  # no top-level names to clash with others'
        probe = subprocess.run(
            [bin_ / "python", "-c", f"import {name}"],
            cwd=tmp_path,
            env=_CLEAN_ENV,
            capture_output=True,
            check=False,
        )
        assert probe.returncode != 0, f"the wheel installed a top-level {name}"


def test_the_installed_demo_runs_and_lockerctl_drives_it(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_ = installed
    state, api = tmp_path / "hub", tmp_path / "api.sock"
    demo = subprocess.Popen(
        [bin_ / "lockerd", "demo", "--state-dir", state, "--socket", api],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_CLEAN_ENV,
    )
    guard = threading.Timer(90, demo.kill)  # a demo that hangs fails the test, not CI
    guard.start()
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for line in demo.stdout:  # the demo prints its lines, then serves
            lines.append(line.rstrip("\n"))
            if lines[-1] == "serving until Ctrl-C":
                break
        else:
            raise AssertionError("the demo ended early:\n" + "\n".join(lines))
        keypad = Path(next(x.split()[2] for x in lines if x.startswith("keypad socket ")))
        assert f"{bin_ / 'lockerctl'} --socket {keypad} enter-code DEPOSIT-CODE" in "\n".join(
            lines
        )  # the commands it prints run the installed lockerctl
        status = json.loads(
            _run(bin_ / "lockerctl", "--socket", api, "--json", "status", cwd=tmp_path)
        )
        assert status["version"] == VERSION
        assert len(status["compartments"]) == 68
        deposit = next(m.group(3) for x in lines if (m := PARCEL.match(x)))
        opened = json.loads(
            _run(
                bin_ / "lockerctl",
                "--socket",
                keypad,
                "--json",
                "enter-code",
                deposit,
                cwd=tmp_path,
            )
        )
        assert opened["status"] == "opened", opened
    finally:
        demo.send_signal(signal.SIGINT)
        status_code = demo.wait(timeout=30)
        guard.cancel()
    assert status_code == 0
