"""``./dev``, planned rather than run (``DEV_DRY_RUN=1``): ``run`` installs only what the
demo needs, ``test`` the rest, and mosquitto's system service is never started by the
install. The commands a plan would run are stubbed: a dry run must not call them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("python3", "apt-get", "sudo", "systemctl", "sh")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """``dev`` and ``pyproject.toml`` alone, as on a fresh box (no .venv)."""
    for name in ("dev", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in STUBS:  # each says it was called, and fails
        stub = stubs / name
        stub.write_text(f'#!/bin/bash\necho "{name} $*" >>"{tmp_path}/called"\nexit 1\n')
        stub.chmod(0o755)
    return tmp_path


def plan(checkout: Path, *args: str, missing: str = "") -> list[str]:
    env = {
        **os.environ,
        "PATH": f"{checkout / 'stubs'}:{os.environ['PATH']}",
        "DEV_DRY_RUN": "1",
        "DEV_ASSUME_MISSING": missing,
    }
    out = subprocess.run(
        ["/bin/bash", str(checkout / "dev"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    called = checkout / "called"
    # only the probe for python3-venv may run (python3 -c 'import venv, ensurepip')
    assert not called.exists() or set(called.read_text().splitlines()) <= {
        "python3 -c import venv, ensurepip"
    }, called.read_text()
    return out.stderr.splitlines()


def test_dev_run_installs_only_what_the_demo_needs(checkout: Path) -> None:
    assert os.access(ROOT / "dev", os.X_OK)  # README: ./dev run
    lines = plan(checkout, "run", missing="python3-venv mosquitto mbpoll")
    text = "\n".join(lines)
    assert "dev: apt packages for run: python3-venv" in lines
    assert "mosquitto" not in text
    assert "mbpoll" not in text
    assert "dev: would run: .venv/bin/python -m pip install -q -e ." in lines
    assert "[dev]" not in text  # no test tools
    assert lines[-1] == "dev: would run: .venv/bin/lockerd demo"


def test_dev_test_installs_the_rest_without_starting_mosquittos_service(checkout: Path) -> None:
    lines = plan(checkout, "test", "-q", missing="mosquitto mbpoll")
    assert "dev: apt packages for test: python3-venv mbpoll" in lines  # (python3 is a stub)
    held = next(i for i, x in enumerate(lines) if "exit 101" in x and "policy-rc.d" in x)
    installed = lines.index(
        "dev: would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends mosquitto"
    )
    released = lines.index("dev: would run: rm -f /usr/sbin/policy-rc.d")
    disabled = lines.index("dev: would run: systemctl disable --now mosquitto.service")
    assert held < installed < released < disabled
    assert "dev: would run: .venv/bin/python -m pip install -q -e .[dev]" in lines
    assert lines[-1] == "dev: would run: .venv/bin/python -m pytest -q"


def test_a_venv_with_the_dev_tools_serves_the_demo_as_it_is(checkout: Path) -> None:
    venv = checkout / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/bin/true")
    sha = subprocess.run(
        ["sha256sum", str(checkout / "pyproject.toml")], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    (venv / ".installed").write_text(f"{sha} dev\n")
    assert not any("pip install" in x for x in plan(checkout, "run"))
    (venv / ".installed").write_text(f"{sha} run\n")
    assert not any("pip install" in x for x in plan(checkout, "run"))
    assert "dev: would run: .venv/bin/python -m pip install -q -e .[dev]" in plan(checkout, "test")
