"""The hub config: every problem at once, each with its place in the file and a fix."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from lockerd.cli import main as cli_main
from lockerd.cli.main import main
from lockerd.config import ConfigInvalid, Problem, load, parse

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
hub_id = "hub-0042"
simulated = true
compartments = [
  { label = "A01", size = "S", bus = "A", board = 0, channel = 1 },
  { label = "A02", size = "M", bus = "A", board = 0, channel = 2 },
  { label = "B01", size = "XL", bus = "B", board = 1, channel = 1 },
]

[[buses]]
name = "A"
port = "/dev/serial/by-id/usb-FTDI-A"

[[buses.boards]]
kind = "kerong-cu48"
address = 0
channels = 24

[[buses]]
name = "B"
port = "tcp://10.0.0.5:5000"
baudrate = 9600

[[buses.boards]]
kind = "modbus-relay"
address = 1
channels = 8
"""


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigInvalid) as info:
        parse(text, "hub.toml")
    return info.value.problems


def test_the_shipped_demo_hub_is_valid() -> None:
    cfg = load(ROOT / "lockerd" / "demo" / "demo-hub.toml")
    assert cfg.hub_id == "demo-hub"
    assert len(cfg.compartments) == 68
    assert {c.size for c in cfg.compartments} == {"S", "M", "L", "XL"}
    assert [b.name for b in cfg.buses] == ["A", "B", "C"]
    assert [b.kind for bus in cfg.buses for b in bus.boards] == [
        "kerong-cu48",
        "kerong-cu48",
        "modbus-relay",
        "kerong-cu16",
    ]


def test_a_good_config_parses_with_defaults() -> None:
    cfg = parse(GOOD)
    assert cfg.timers.poll_interval_s == 0.5
    assert cfg.buses[1].boards[0].kind == "modbus-relay"
    assert cfg.buses[0].gap_ms == 5.0  # the driver's own default, not a copy


def test_every_cross_check_is_reported_at_once_with_lines_and_fixes() -> None:
    text = GOOD.replace(
        '{ label = "A02", size = "M", bus = "A", board = 0, channel = 2 }',
        '{ label = "A01", size = "M", bus = "A", board = 0, channel = 1 }',
    ).replace(
        '{ label = "B01", size = "XL", bus = "B", board = 1, channel = 1 }',
        '{ label = "B01", size = "XL", bus = "B", board = 1, channel = 9 }',
    )
    found = problems(text)
    rendered = "\n".join(p.render("hub.toml") for p in found)
    assert [p.where for p in found] == [
        "compartments[0].label",
        "compartments[1].label",
        "compartments[1].channel",
        "compartments[2].channel",
    ]
    assert "label A01 is used twice" in rendered
    assert "A01 and A01 are both on bus A board 0 channel 1" in rendered
    assert "channel 9 is beyond the 8 channels of board 1 on bus B" in rendered
    assert "fix: check the wiring sheet" in rendered
    assert found[3].line == 7  # the line of that compartment in the file


@pytest.mark.parametrize(
    ("change", "where", "words"),
    [
        (('kind = "modbus-relay"', 'kind = "modbus-rtu9"'), "buses[1].boards[0]", "kind"),
        (
            ("address = 0\n", "address = 12\n"),
            "buses[0].boards[0].address",
            "less than or equal to 9",
        ),
        (
            ('bus = "B", board = 1', 'bus = "C", board = 1'),
            "compartments[2].bus",
            "no bus named 'C'",
        ),
        (
            ('bus = "B", board = 1', 'bus = "B", board = 4'),
            "compartments[2].board",
            "no board at address 4",
        ),
        (('size = "XL"', 'size = "XXL"'), "compartments[2].size", "'S', 'M', 'L' or 'XL'"),
        (('port = "tcp://10.0.0.5:5000"', 'port = "COM3"'), "buses[1].port", "absolute tty path"),
        (('name = "B"', 'name = "A"'), "buses[1].name", "used twice"),
        (('hub_id = "hub-0042"', 'hub_id = "Hub 42"'), "hub_id", "pattern"),
        (
            ("channels = 24", "channels = 24\nchanels = 3"),
            "buses[0].boards[0].chanels",
            "Extra inputs",
        ),
    ],
)
def test_each_mistake_names_its_place(change: tuple[str, str], where: str, words: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    found = problems(text)
    assert any(p.where.startswith(where) and words in p.message for p in found), found
    assert all(p.line is None or p.line > 0 for p in found)


def test_a_syntax_error_gives_its_line() -> None:
    (p,) = problems(GOOD.replace('name = "A"', 'name = "A'))
    assert p.where == "(syntax)"
    assert p.line == 11


def test_a_missing_or_open_key_file_stops_a_real_hub(tmp_path: Path) -> None:
    text = GOOD.replace("simulated = true", "simulated = false")
    text += f'\n[paths]\nstate_dir = "{tmp_path}"\n'
    (missing,) = problems(text)
    assert missing.where == "codes.key_file"
    assert "lockerd keygen" in missing.fix
    key = tmp_path / "keys" / "code-hmac.key"
    key.parent.mkdir()
    key.write_bytes(b"k" * 32)
    key.chmod(0o644)
    (loose,) = problems(text)
    assert "readable by others" in loose.message
    key.chmod(0o600)
    assert parse(text).key_path() == key


def test_an_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="cannot read"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigInvalid, match="not UTF-8"):
        load(bad)


def test_check_config_command_reports_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = ROOT / "lockerd" / "demo" / "demo-hub.toml"
    assert main(["check-config", str(good)]) == 0
    assert "ok: hub demo-hub, 3 bus(es), 4 board(s), 68 compartments" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("channel = 1 }", "channel = 99 }"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: compartments[0].channel: channel 99 is beyond the 24 channels" in err
    assert "the hub will not start" in err


def test_keygen_command_writes_a_private_key_once(tmp_path: Path) -> None:
    key = tmp_path / "k" / "code.key"
    assert main(["keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["keygen", str(key)]) == 1


def test_the_example_for_real_hardware_is_valid_once_its_key_exists(tmp_path: Path) -> None:
    text = (ROOT / "config" / "example-hub.toml").read_text()
    (missing,) = problems(text)
    assert missing.where == "codes.key_file"  # on a fresh box: the one thing to create
    text = text.replace('state_dir = "/var/lib/lockerd"', f'state_dir = "{tmp_path}"')
    assert main(["keygen", str(tmp_path / "keys" / "code-hmac.key")]) == 0
    cfg = parse(text)
    assert cfg.buses[1].port.startswith("tcp://")
    assert len(cfg.compartments) == 8


def test_a_hub_may_not_take_the_clouds_name_on_the_broker() -> None:
    text = (ROOT / "lockerd" / "demo" / "demo-hub.toml").read_text()
    text = text.replace('hub_id = "demo-hub"', 'hub_id = "cloud"')
    with pytest.raises(ConfigInvalid) as exc:
        parse(text, "hub.toml")
    assert [p.where for p in exc.value.problems] == ["hub_id"]


def test_socket_group_was_renamed_and_check_config_says_to_what() -> None:
    (p,) = problems(GOOD + '\n[paths]\nsocket_group = "lockerd"\n')
    assert p.where == "paths.socket_group"
    assert p.message == "socket_group was renamed technician_group"
    assert "technician_group" in p.fix
    assert "[[terminals]]" in p.fix
    assert p.line is not None


def test_each_terminal_has_a_socket_and_a_name_of_its_own() -> None:
    terminals = """
[paths]
socket = "/run/lockerd/api.sock"

[[terminals]]
name = "keypad:1"
socket = "/run/lockerd/keypad-1.sock"

[[terminals]]
name = "keypad:1"
socket = "/run/lockerd/api.sock"

[[terminals]]
name = "tech:alice"
socket = "/run/lockerd/alice.sock"
"""
    found = {(p.where, p.message.split(":")[0]) for p in problems(GOOD + terminals)}
    assert ("terminals[2].name", "Value error, tech") in found  # not a technician's name
    found = {(p.where, p.message) for p in problems(GOOD + terminals.replace("tech:", "kiosk:"))}
    assert found == {
        ("terminals[1].name", "terminal name 'keypad:1' is used twice"),
        (
            "terminals[1].socket",
            "socket /run/lockerd/api.sock is also the technician socket (paths.socket)",
        ),
    }


def test_the_api_bounds_have_defaults_and_limits() -> None:
    cfg = parse(GOOD)
    assert (cfg.api.max_connections, cfg.api.idle_timeout_s, cfg.api.read_timeout_s) == (
        32,
        300.0,
        5.0,
    )
    assert (cfg.api.technician_burst, cfg.api.technician_per_minute) == (20, 30.0)
    (p,) = problems(GOOD + "\n[api]\nmax_connections = 0\n")
    assert p.where == "api.max_connections"


# --------------------------------------------------------------------------- check-config


def real(tmp_path: Path, extra: str = "") -> str:
    """GOOD on real hardware: its state and sockets in ``tmp_path``."""
    text = GOOD.replace("simulated = true", "simulated = false")
    return (
        text
        + f'\n[paths]\nstate_dir = "{tmp_path}/state"\nsocket = "{tmp_path}/api.sock"\n'
        + extra
    )


def with_key(tmp_path: Path, data: bytes = b"k" * 32, mode: int = 0o600) -> Path:
    key = tmp_path / "state" / "keys" / "code-hmac.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(data)
    key.chmod(mode)
    return key


def test_a_type_error_does_not_hide_the_checks_across_parts() -> None:
    text = (
        GOOD.replace('port = "tcp://10.0.0.5:5000"', 'port = "tcp://10.0.0.5:5000"\ngap_ms = "x"')
        .replace(
            '{ label = "A02", size = "M", bus = "A", board = 0, channel = 2 }',
            '{ label = "A01", size = "M", bus = "A", board = 0, channel = 2 }',
        )
        .replace('bus = "B", board = 1, channel = 1', 'bus = "B", board = 1, channel = 9')
    ) + '\n[timers]\npoll_interval_s = "fast"\n'
    found = [(p.where, p.message) for p in problems(text)]
    assert found == [
        ("buses[1].gap_ms", "Input should be a valid number, unable to parse string as a number"),
        (
            "timers.poll_interval_s",
            "Input should be a valid number, unable to parse string as a number",
        ),
        # ... and, at once, what only the parts together show (on bus B, whose gap is wrong)
        ("compartments[0].label", "label A01 is used twice"),
        ("compartments[1].label", "label A01 is used twice"),
        ("compartments[2].channel", "channel 9 is beyond the 8 channels of board 1 on bus B"),
    ]


def test_a_part_that_could_not_be_read_raises_no_false_problem() -> None:
    """A board with a type error is not 'missing' for the compartments wired to it, nor
    a bus with an unreadable name for theirs."""
    text = GOOD.replace("channels = 24", "channels = [24]")
    assert [p.where for p in problems(text)] == ["buses[0].boards[0].channels"]
    text = GOOD.replace('name = "B"', "name = 2")
    assert [p.where for p in problems(text)] == ["buses[1].name"]


def test_check_config_finds_what_run_would_refuse_on_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_key(tmp_path, b"short", 0o600)
    (tmp_path / "not-a-dir").write_text("")
    text = real(
        tmp_path,
        'technician_group = "no-such-group-lockerd"\n'
        "[[terminals]]\n"
        'name = "keypad:1"\n'
        f'socket = "{tmp_path}/not-a-dir/keypad.sock"\n'
        'group = "no-such-kiosk-group"\n',
    )
    config = tmp_path / "hub.toml"
    config.write_text(text)
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s); the hub will not start" in err
    assert "codes.key_file: key file" in err
    assert "holds 5 bytes; a code key has at least 32" in err
    assert "paths.technician_group: the group no-such-group-lockerd does not exist" in err
    assert "fix: create it (groupadd --system no-such-group-lockerd" in err
    assert f"terminals[0].socket: the socket's directory: {tmp_path}/not-a-dir cannot" not in err
    assert (
        f"terminals[0].socket: the socket's directory: {tmp_path}/not-a-dir is not a directory"
        in err
    )
    # parse(), as `lockerd run` reads it, refuses the key too (it would not start)
    assert any("holds 5 bytes" in p.message for p in problems(text))


def test_check_config_refuses_a_socket_whose_directory_cannot_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_key(tmp_path)
    (tmp_path / "file").write_text("")
    text = real(tmp_path).replace(
        f'socket = "{tmp_path}/api.sock"', f'socket = "{tmp_path}/file/run/api.sock"'
    )
    config = tmp_path / "hub.toml"
    config.write_text(text)
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        f"paths.socket: the socket's directory: {tmp_path}/file/run cannot be created: "
        f"{tmp_path}/file is not a directory" in err
    )
    assert "RuntimeDirectory=lockerd" in err


def test_a_key_file_lockerd_run_would_refuse_is_a_problem(tmp_path: Path) -> None:
    """load_key's rules (lockerd/hub/codes.py), read here without importing the hub."""
    from lockerd.config import CODE_KEY_BYTES  # noqa: PLC0415
    from lockerd.hub.codes import KEY_BYTES, KeyFileError, load_key  # noqa: PLC0415

    assert CODE_KEY_BYTES == KEY_BYTES
    text = real(tmp_path)
    for data, mode in [(b"k" * 31, 0o600), (b"k" * 32, 0o640), (b"k" * 32, 0o604)]:
        key = with_key(tmp_path, data, mode)
        with pytest.raises(KeyFileError):
            load_key(key)
        assert [p.where for p in problems(text)] == ["codes.key_file"], (data, mode)
        key.unlink()
    key = with_key(tmp_path, b"k" * 32, 0o400)
    load_key(key)
    assert parse(text).key_path() == key
    key.unlink()
    key.mkdir()  # a directory where the key belongs: a problem, not a crash
    assert [p.where for p in problems(text)] == ["codes.key_file"]


def test_a_socket_path_too_long_to_bind_is_a_problem() -> None:
    long_dir = "/run/" + "x" * 120
    (p,) = problems(GOOD + f'\n[paths]\nsocket = "{long_dir}/api.sock"\n')
    assert p.where == "paths.socket"
    assert "a Unix socket's path has at most 107" in p.message


def test_risky_settings_are_warnings_and_strict_makes_them_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_key(tmp_path)
    text = (
        real(tmp_path)
        .replace('port = "/dev/serial/by-id/usb-FTDI-A"', 'port = "/dev/ttyUSB0"\ngap_ms = 1.0')
        .replace("baudrate = 9600", 'baudrate = 9600\nlocal_echo = "false"\nread_attempts = "3"')
        .replace("simulated = false", 'simulated = "no"')
    )
    config = tmp_path / "hub.toml"
    config.write_text(text)
    assert main(["check-config", str(config)]) == 0  # it starts: warnings only
    captured = capsys.readouterr()
    assert "ok: hub hub-0042" in captured.out
    assert "warning(s)" in captured.out
    err = captured.err
    assert (
        "buses[0].gap_ms: warning: gap_ms = 1 is below 3.5 characters at 19200 baud (1.82 ms)"
        in err
    )
    assert "buses[0].port: warning: /dev/ttyUSB0 is numbered in the order" in err
    assert "/dev/serial/by-id" in err
    assert (
        'buses[1].local_echo: warning: "false" is a string where a boolean belongs; '
        "it is read as false" in err
    )
    assert "fix: write local_echo = false, without quotes" in err
    assert 'buses[1].read_attempts: warning: "3" is a string where a number belongs' in err
    assert (
        'simulated: warning: "no" is a string where a boolean belongs; it is read as false' in err
    )
    assert main(["check-config", "--strict", str(config)]) == 1
    # every warning with its line in the file
    assert all(
        re.match(rf"{config}:\d+: ", line) for line in err.splitlines() if "warning:" in line
    )


def test_the_shipped_configs_have_no_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(ROOT / "lockerd" / "demo" / "demo-hub.toml")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_keygen_says_what_the_os_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main(["keygen", str(tmp_path / "file" / "code.key")]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"lockerd keygen: cannot write {tmp_path}/file/code.key: "
        f"{tmp_path}/file is not a directory\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["keygen"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("lockerd keygen: the following arguments are required: path")


# --------------------------------------------------------------------------------------
# issue 12: every problem has a fix; keygen refuses a made-up directory; plain, full help

TYPE_ERRORS = [
    ("baudrate = 9600", 'baudrate = "fast"', "buses[1].baudrate", "whole number"),
    ("channels = 8", "channels = 8.5", "buses[1].boards[0].channels", "whole number"),
    ('hub_id = "hub-0042"', "hub_id = 42", "hub_id", "double quotes"),
    ("simulated = true", "simulated = 3", "simulated", "true or false"),
    ('name = "B"', "name = []", "buses[1].name", "double quotes"),
    ("simulated = true", "simulated = true\n[timers]\npoll_interval_s = -1", "timers", "above 0"),
    ("simulated = true", "simulated = true\ntimers = 5", "timers", "a table"),
]


@pytest.mark.parametrize(
    ("old", "new", "where", "fix"), TYPE_ERRORS, ids=[t[1].splitlines()[-1] for t in TYPE_ERRORS]
)
def test_a_type_error_has_a_fix(old: str, new: str, where: str, fix: str) -> None:
    """Issue 12: `baudrate = "fast"` was reported without a fix: line."""
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert all(p.fix for p in found), found
    assert any(p.where.startswith(where) and fix in p.fix for p in found), found


def test_check_config_prints_a_fix_under_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    text = GOOD
    for old, new, _, _ in TYPE_ERRORS[:4]:
        text = text.replace(old, new, 1)
    bad.write_text(text)
    assert main(["check-config", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{bad}: 4 problem(s); the hub will not start"
    said = [n for n, line in enumerate(lines) if n and line.startswith(f"{bad}:")]
    assert len(said) == 4, lines
    assert all(lines[n + 1].startswith("    fix: ") for n in said), lines
    assert "buses[1].baudrate" in "\n".join(lines)


def test_keygen_refuses_a_directory_above_the_keys_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: `lockerd keygen /nonexistent/dir/k.key` exited 0 and made both."""
    key = tmp_path / "nonexistent" / "dir" / "k.key"
    assert main(["keygen", str(key)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"lockerd keygen: cannot write {key}: {tmp_path}/nonexistent does not exist "
        "(keygen makes at most the key's own directory: check the path)\n"
    )
    assert not (tmp_path / "nonexistent").exists()
    # the key's own directory, in one that exists, is made (0700) and said
    own = tmp_path / "keys" / "k.key"
    assert main(["keygen", str(own)]) == 0
    assert own.parent.stat().st_mode & 0o777 == 0o700
    assert f"in the new directory {own.parent}" in capsys.readouterr().out


def _every_parser() -> list[argparse.ArgumentParser]:
    found = [cli_main.parser(), cli_main.demo_parser()]
    for p in list(found):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                found += list(action.choices.values())
    return found


def test_every_argument_of_lockerd_has_help_in_plain_text() -> None:
    """Issue 12: `lockerd --help` showed ``lockerd``; run --config, --log-level,
    --mqtt-username... had no help."""
    for p in _every_parser():
        text = p.format_help()
        assert "``" not in text, p.prog
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (p.prog, action.dest)
            assert action.help != argparse.SUPPRESS, (p.prog, action.dest)


def test_lockerd_demo_help_lists_hardware_and_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["demo", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--hardware", "--once", "--log-level", "--mqtt-username", "--state-dir"):
        assert option in out, option
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--once"])
    assert refused.value.code == 2
    assert "--once goes with --hardware" in capsys.readouterr().err
