"""The published contract against the code: docs/asyncapi.json is what lockerd/cloud/contract.py
generates, its schemas accept what the hub accepts and refuse what it refuses, and the
worked examples of docs/cloud-guide.md are real (computed here, verified by the hub's
own Verifier)."""

from __future__ import annotations

import ast
import contextlib
import copy
import difflib
import enum
import inspect
import json
import re
import shutil
import subprocess
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import lockerd
from lockerd.cli import cloudctl
from lockerd.cloud import contract as c
from lockerd.cloud import link as cloud
from lockerd.cloud.link import Verifier
from lockerd.config import Cloud, Codes, HubConfig, Paths, ThrottlePolicy
from lockerd.hub import domain as d
from lockerd.hub import vocab
from lockerd.hub.codes import CodeHasher, Throttle, load_key
from lockerd.hub.jsonsafe import clean
from lockerd.hub.service import Status
from lockerd.hub.store import ALARM_EVENTS, TELEMETRY_EVENTS
from lockerd.hub.vocab import REPLY_STATUSES
from tests.support.contract_check import validate_message
from tests.support.hubs import make_hub
from tests.support.waiting import eventually
from tools import asyncapi

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "cloud-guide.md"
HUB_MODELS: dict[str, type[BaseModel]] = {
    "reply": c.Reply,
    "evt": c.EventMessage,
    "status": c.Status,
    "state": c.StateSnapshot,
}
SKEW = float(Cloud.model_fields["command_skew_s"].default)
LIFE = float(Cloud.model_fields["command_max_life_s"].default)


def parse(kind: str, payload: Any) -> Any:
    """What the code does with a message of this kind (the hub parses commands with
    COMMAND; the cloud can parse the rest with the same models)."""
    if kind == "cmd":
        return c.COMMAND.validate_python(payload)
    return HUB_MODELS[kind].model_validate(payload)


def doc() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(asyncapi.DOC_PATH.read_text(encoding="utf-8")))


def example(key: str, index: int = 0) -> dict[str, Any]:
    return copy.deepcopy(asyncapi.examples()[key][index][1])


# ======================================================================================
# (a) the committed document is the generated one
# ======================================================================================


def test_the_committed_document_is_what_the_code_generates() -> None:
    path = asyncapi.DOC_PATH
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    generated = asyncapi.render(asyncapi.document())
    if committed != generated:
        diff = difflib.unified_diff(
            committed.splitlines(), generated.splitlines(), "committed", "generated", n=1
        )
        pytest.fail(
            "docs/asyncapi.json differs from lockerd/cloud/contract.py: run "
            "`python -m tools.asyncapi` and commit docs/asyncapi.json\n"
            + "\n".join(list(diff)[:40]),
            pytrace=False,
        )


def test_check_mode_fails_on_a_stale_file_and_passes_once_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "asyncapi.json"
    out.write_text('{"asyncapi": "2.6.0"}\n')
    assert asyncapi.main(["--check", "--out", str(out)]) == 1
    assert "python -m tools.asyncapi" in capsys.readouterr().err
    assert asyncapi.main(["--out", str(out)]) == 0
    assert asyncapi.main(["--check", "--out", str(out)]) == 0
    assert out.read_text().endswith("}\n")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_in_the_document_resolves() -> None:
    d = doc()
    refs = _refs(d)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        assert not ref.startswith("#/$defs"), f"{ref}: pydantic's $defs were not rewritten"
        node: Any = d
        for part in ref[2:].split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_the_document_covers_every_command_and_message() -> None:
    d = doc()
    assert set(d["channels"]) == {"cmd", "reply", "evt", "status", "state"}
    types = set(asyncapi.command_models())
    assert types == set(d["channels"]["cmd"]["messages"])
    assert set(c.SIGNED) <= types
    for name in c.SIGNED:
        assert "signature" in d["components"]["messages"][name]["description"]
    for channel in d["channels"].values():
        assert channel["address"].startswith("{prefix}/{hub}/")
    qos = {op["channel"]["$ref"]: op["bindings"]["mqtt"] for op in d["operations"].values()}
    assert qos["#/channels/cmd"] == {"qos": 1, "retain": False, "bindingVersion": "0.2.0"}
    assert qos["#/channels/status"]["retain"] is True
    assert qos["#/channels/state"]["retain"] is True
    assert qos["#/channels/evt"]["retain"] is False
    will = d["servers"]["broker"]["bindings"]["mqtt"]["lastWill"]
    assert will["topic"] == "{prefix}/{hub}/status"
    assert (will["qos"], will["retain"]) == (1, True)


# ======================================================================================
# (b) valid messages pass both the models and the schemas; invalid ones fail both
# ======================================================================================


def _kinds() -> dict[str, str]:
    """message key -> channel (kind)"""
    return {m: ch for ch, v in doc()["channels"].items() for m in v["messages"]}


def test_every_message_has_examples_valid_for_the_model_and_the_schema() -> None:
    d = doc()
    kinds = _kinds()
    for key, message in d["components"]["messages"].items():
        assert message["examples"], f"{key} has no example"
        for ex in message["examples"]:
            parse(kinds[key], ex["payload"])
            validate_message(kinds[key], ex["payload"])


def test_messages_the_hub_builds_match_the_schema() -> None:
    """As the hub serialises them (model_dump_json), defaults included."""
    for kind, model in HUB_MODELS.items():
        key = "event" if kind == "evt" else kind
        for _, payload in asyncapi.examples()[key]:
            built = model.model_validate(payload)
            validate_message(kind, built.model_dump_json())
    reply = c.Reply(
        id="unknown", hub="hub-0042", type="unknown", ok=False, status="quarantined", at=1.5
    )
    validate_message("reply", reply.model_dump(mode="json"))


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def go(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = m
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value

    return go


def _drop(field: str) -> Mutation:
    def go(m: dict[str, Any]) -> None:
        del m[field]

    return go


INVALID: list[tuple[str, str, Mutation]] = [
    ("cmd", "parcel.cancel", _drop("id")),
    ("cmd", "parcel.cancel", _set("id", "")),
    ("cmd", "parcel.cancel", _set("id", "an id with spaces")),
    ("cmd", "parcel.cancel", _set("id", "x" * 65)),
    ("cmd", "parcel.cancel", _set("id", "cmd-1004\n")),
    ("cmd", "parcel.cancel", _drop("hub")),
    ("cmd", "parcel.cancel", _set("note", "extra field")),
    ("cmd", "parcel.cancel", _set("issued_at", "tomorrow")),
    ("cmd", "parcel.cancel", _set("issued_at", -1)),
    ("cmd", "parcel.cancel", _set("issued_at", 1.5)),
    ("cmd", "parcel.cancel", _set("type", "parcel.teleport")),
    ("cmd", "parcel.reserve", _set("deposit_code_hash", "D" * 64)),
    ("cmd", "parcel.reserve", _set("pickup_code_hash", "a" * 63)),
    ("cmd", "parcel.reserve", _set("pickup_code_hash", "g" * 64)),
    ("cmd", "parcel.reserve", _set("pickup_code_hash", "a" * 64 + "\n")),
    ("cmd", "parcel.reserve", _set("size", "XXL")),
    ("cmd", "parcel.reserve", _set("pickup_window_s", 0)),
    ("cmd", "parcel.reserve", _set("kind", "return")),
    ("cmd", "parcel.reserve", _drop("deposit_until")),
    ("cmd", "parcel.recall", _set("recall_code_hash", None)),
    ("cmd", "codes.bulk", _set("reservations.1.deposit_code_hash", "nothex")),
    ("cmd", "codes.bulk", _set("reservations.0.code", "40185327")),
    ("cmd", "codes.bulk", _set("reservations", {})),
    ("cmd", "compartment.open", _set("compartment", "a5")),
    ("cmd", "compartment.open", _set("reason", "")),
    ("cmd", "compartment.open", _set("expires_at", "soon")),
    ("cmd", "compartment.set_service", _set("in_service", "maybe")),
    ("reply", "reply", _drop("at")),
    ("reply", "reply", _set("id", "")),
    ("reply", "reply", _set("ok", "perhaps")),
    ("reply", "reply", _set("result", [])),
    ("reply", "reply", _set("extra", 1)),
    ("evt", "event", _set("seq", 0)),
    ("evt", "event", _drop("seq")),
    ("evt", "event", _set("data", ["a"])),
    ("status", "status", _set("state", "away")),
    ("status", "status", _set("boot_seq", 0)),
    ("state", "state", _set("alarms", -1)),
    ("state", "state", _set("compartments.0.state", "broken")),
    ("state", "state", _set("compartments.1.colour", "red")),
]


@pytest.mark.parametrize(
    ("kind", "key", "mutate"),
    INVALID,
    ids=[f"{k}-{i}" for i, (_, k, _m) in enumerate(INVALID)],
)
def test_an_invalid_message_is_refused_by_the_model_and_the_schema(
    kind: str, key: str, mutate: Mutation
) -> None:
    message = example(key)
    mutate(message)
    with pytest.raises(ValidationError):
        parse(kind, message)
    with pytest.raises(AssertionError, match=r"does not match|not one of the contract"):
        validate_message(kind, message)


LAX: list[tuple[str, str, Mutation]] = [
    ("cmd", "parcel.cancel", _set("issued_at", "1767225600")),
    ("cmd", "parcel.cancel", _set("issued_at", True)),
    ("cmd", "compartment.set_service", _set("in_service", "true")),
    ("cmd", "parcel.reserve", _set("accessible", 1)),
    ("reply", "reply", _set("ok", "yes")),
    ("evt", "event", _set("seq", "42")),
]


@pytest.mark.parametrize(
    ("kind", "key", "mutate"), LAX, ids=[f"{k}-{i}" for i, (_, k, _m) in enumerate(LAX)]
)
def test_what_the_schema_refuses_the_model_refuses_too(
    kind: str, key: str, mutate: Mutation
) -> None:
    message = example(key)
    mutate(message)
    with pytest.raises(AssertionError):
        validate_message(kind, message)
    with pytest.raises(ValidationError):
        parse(kind, message)


ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
hashes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
times = st.integers(min_value=0, max_value=4_102_444_800)  # (the contract: before 2100)
labels = st.from_regex(r"[A-Z]{1,3}[0-9]{1,3}", fullmatch=True)
sizes = st.sampled_from(["S", "M", "L", "XL"])
envelope = {"id": ids, "hub": st.just("hub-0042"), "issued_at": times}
optional = {"expires_at": times | st.none(), "sig": st.text(max_size=90) | st.none()}
reservation = st.fixed_dictionaries(
    {
        "parcel": ids,
        "size": sizes,
        "deposit_code_hash": hashes,
        "pickup_code_hash": hashes,
        "deposit_from": times,
        "deposit_until": times,
    },
    optional={
        "recall_code_hash": hashes | st.none(),
        "pickup_window_s": st.integers(min_value=1, max_value=90 * 86_400),
        "accessible": st.booleans(),
        "kind": st.sampled_from(["delivery", "return"]),
    },
)


def _command(type_: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"type": st.just(type_), **envelope, **fields}, optional=optional)


commands = st.one_of(
    _command("parcel.cancel", parcel=ids),
    _command("parcel.update_codes", parcel=ids),
    _command("parcel.update_codes", parcel=ids, deposit_code_hash=hashes, pickup_code_hash=hashes),
    _command("parcel.recall", parcel=ids, recall_code_hash=hashes),
    _command("compartment.open", compartment=labels, reason=st.text(min_size=1, max_size=500)),
    _command("compartment.set_service", compartment=labels, in_service=st.booleans()),
    _command("sync.request"),
    _command("codes.bulk", reservations=st.lists(reservation, max_size=3)),
    st.builds(
        lambda cmd, r, t: {**cmd, **{k: v for k, v in r.items() if k != "kind"}, "type": t},
        _command("x"),
        reservation,
        st.sampled_from(["parcel.reserve", "return.reserve"]),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands)
def test_generated_commands_pass_the_model_and_the_schema(cmd: dict[str, Any]) -> None:
    parsed = parse("cmd", cmd)
    validate_message("cmd", cmd)
    validate_message("cmd", parsed.model_dump(mode="json"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands, st.data())
def test_a_command_missing_a_required_field_or_with_an_extra_one_fails_both(
    cmd: dict[str, Any], data: st.DataObject
) -> None:
    schema = doc()["components"]["schemas"][type(parse("cmd", cmd)).__name__]
    if data.draw(st.booleans(), label="drop a required field"):
        del cmd[data.draw(st.sampled_from(schema["required"]), label="field")]
    else:
        extra = data.draw(st.text(min_size=1, max_size=10), label="extra")
        if extra in schema["properties"]:
            return
        cmd[extra] = 1
    with pytest.raises(ValidationError):
        parse("cmd", cmd)
    with pytest.raises(AssertionError):
        validate_message("cmd", cmd)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
seconds = st.floats(min_value=0, max_value=2e9, allow_nan=False)
type_names = st.from_regex(c.TYPE_PATTERN, fullmatch=True)
hub_messages = st.one_of(
    st.builds(
        c.Reply,
        id=ids,
        hub=st.just("hub-0042"),
        type=type_names,
        ok=st.booleans(),
        status=st.sampled_from(REPLY_STATUSES),
        message=st.text(max_size=20),
        result=st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        duplicate=st.booleans(),
        at=seconds,
    ),
    st.builds(
        lambda event, seq, id_, at: c.EventMessage.model_validate(
            {**event, "seq": seq, "id": id_, "at": at}
        ),
        st.sampled_from([payload for _, payload in asyncapi.event_examples()]),
        seq=st.integers(min_value=1, max_value=2**53),
        id_=st.uuids().map(str),
        at=seconds,
    ),
    st.builds(
        c.Status,
        hub=st.just("hub-0042"),
        state=st.sampled_from(["online", "offline"]),
        boot_seq=st.integers(min_value=1, max_value=2**31),
        at=seconds,
        version=st.text(max_size=10),
    ),
    st.builds(
        c.StateSnapshot,
        hub=st.just("hub-0042"),
        at=seconds,
        alarms=st.integers(min_value=0, max_value=1000),
        compartments=st.lists(
            st.builds(
                c.CompartmentState,
                label=labels,
                size=sizes,
                state=st.sampled_from(
                    ["free", "occupied", "in_use", "attention", "out_of_service"]
                ),
                door_open=st.booleans(),
            ),
            max_size=4,
        ),
    ),
)


@settings(max_examples=100, deadline=None)
@given(hub_messages)
def test_generated_hub_messages_match_the_schema(message: BaseModel) -> None:
    kind = {v: k for k, v in HUB_MODELS.items()}[type(message)]
    validate_message(kind, message.model_dump_json())


# ======================================================================================
# (c), (d) the guide's worked examples are real
# ======================================================================================


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def test_the_guide_quotes_the_worked_example_exactly() -> None:
    text = guide()
    w = asyncapi.worked_example()
    missing = [name for name, value in w.quoted().items() if value not in text]
    assert not missing, f"docs/cloud-guide.md no longer quotes: {', '.join(missing)}"
    # and quotes nothing stale: every key, hash, signature and time in it is the example's
    known_hex = {w.code_key.hex(), w.code_hash, w.seed.hex(), w.public_key.hex()}
    assert set(re.findall(r"\b[0-9a-f]{64}\b", text)) <= known_hex | {w.canonical_sha256}
    assert set(re.findall(r"[A-Za-z0-9+/]{86}==", text)) == {w.sig}
    times = {str(w.command["issued_at"]), str(w.command["expires_at"])}
    # the refusal for time it quotes is the hub's, for the example ten minutes late
    assert asyncapi.expired_message() in text
    times.add(str(asyncapi.EXAMPLE_TIME + 600))
    assert set(re.findall(r"\b1[0-9]{9}\b", text)) <= times


def test_the_worked_code_hash_is_the_hubs() -> None:
    w = asyncapi.worked_example()
    hasher = CodeHasher(w.code_key)
    assert hasher.hash(w.code) == w.code_hash
    assert hasher.hash("4018-5327") == w.code_hash  # the guide says dashes are dropped
    assert hasher.matches(w.code, w.code_hash)


def _python_snippet(text: str) -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the guide should have exactly one Python snippet"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/cloud-guide.md", "exec"), namespace)
    return namespace


def test_the_guides_python_snippet_computes_the_worked_example() -> None:
    w = asyncapi.worked_example()
    snippet = _python_snippet(guide())
    assert snippet["code_hash"](w.code_key, w.code) == w.code_hash
    assert snippet["code_hash"](w.code_key, "4018 5327") == w.code_hash
    assert snippet["sign"](w.command, w.seed) == w.signed
    assert snippet["sign"](w.signed, w.seed) == w.signed  # an old sig is not signed over


def test_the_guides_signed_command_verifies_with_the_hubs_verifier() -> None:
    text = guide()
    w = asyncapi.worked_example()
    (pem,) = re.findall(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", text, re.S)
    key = load_pem_public_key(pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    signed = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if '"sig"' in b]
    assert len(signed) == 1
    raw = json.loads(signed[0])  # as the hub receives it
    assert raw == w.signed
    cmd = parse("cmd", raw)
    assert cmd.type in c.SIGNED
    verifier = Verifier(raw["hub"], key, SKEW, LIFE)
    assert verifier.refusal(raw, cmd, w.now) is None
    assert verifier.refusal(raw, cmd, raw["issued_at"] - SKEW) is None
    assert verifier.refusal(raw, cmd, raw["expires_at"] + SKEW) is None
    assert verifier.refusal(raw, cmd, raw["expires_at"] + SKEW + 1) == "expired"
    assert verifier.refusal(raw, cmd, raw["issued_at"] - SKEW - 1) == "not_yet_valid"
    tampered = {**raw, "compartment": "A06"}
    assert verifier.refusal(tampered, parse("cmd", tampered), w.now) == "bad_signature"
    reordered = json.loads(json.dumps(dict(reversed(list(raw.items())))))
    assert verifier.refusal(reordered, cmd, w.now) is None  # key order on the wire is free
    unsigned = {k: v for k, v in raw.items() if k != "sig"}
    assert verifier.refusal(unsigned, parse("cmd", unsigned), w.now) == "unsigned"
    assert Verifier(raw["hub"], None, SKEW, LIFE).refusal(raw, cmd, w.now) == "no_command_key"


def _reasons() -> set[str]:
    """Every refusal reason the hub can send: the Verifier's (a reason it returns, alone
    or with its message), and those lockerd.cloud.link passes to ``_refuse`` itself."""
    reasons = set()
    verifier = ast.parse(textwrap.dedent(inspect.getsource(Verifier)))
    for node in ast.walk(verifier):
        if not isinstance(node, ast.Return):
            continue
        value = node.value
        if isinstance(value, ast.Tuple) and value.elts:
            value = value.elts[0]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            reasons.add(value.value)
    for node in ast.walk(ast.parse(inspect.getsource(cloud))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_refuse"
        ):
            given = [k.value for k in node.keywords if k.arg == "reason"] + node.args[4:5]
            reasons.update(
                g.value for g in given if isinstance(g, ast.Constant) and isinstance(g.value, str)
            )
    return reasons


def test_the_guide_lists_every_refusal_reason_and_the_defaults() -> None:
    text = guide()
    reasons = _reasons()
    assert {"malformed", "wrong_hub", "retained", "unsigned", "expired"} <= reasons
    missing = sorted(r for r in reasons if f"| `{r}` |" not in text)
    assert not missing, f"docs/cloud-guide.md's refusal table lacks {missing}"
    assert f"(default {LIFE:g} s)" in text
    assert f"(default {SKEW:g} s)" in text
    days = Cloud.model_fields["session_expiry_s"].default / 86_400
    assert f"(default {days:g} days)" in text
    assert f"(default `{Cloud.model_fields['prefix'].default}`)" in text


# ======================================================================================
# (e) signed grants: the canonical bytes of the big codes.bulk, and the lifetimes
# ======================================================================================

EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(asyncapi.EXAMPLE_SEED)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _command("codes.bulk", reservations=st.lists(reservation, max_size=4)),
    st.booleans(),
    st.data(),
)
def test_a_bulk_validated_from_its_bytes_has_the_canonical_bytes_of_its_json(
    cmd: dict[str, Any], indent: bool, data: st.DataObject
) -> None:
    """The big codes.bulk is validated straight from its bytes, no dict built: its
    canonical bytes then come from the model (``canonical_model``), and they are
    exactly ``canonical`` of what ``json.loads`` makes of the same bytes, whichever
    optional fields were sent (an explicit ``null`` or default included), in any key
    order, with non-ASCII escaped or not."""
    items = list(cmd.items())
    order = data.draw(st.permutations(items), label="key order")
    body = json.dumps(
        dict(order), indent=2 if indent else None, ensure_ascii=data.draw(st.booleans())
    ).encode()
    model = c.COMMAND.validate_json(body)
    assert isinstance(model, c.CodesBulk)
    assert c.canonical_model(model) == c.canonical(json.loads(body))


def _bulk(n: int, **extra: Any) -> dict[str, Any]:
    t = asyncapi.EXAMPLE_TIME
    one = example("codes.bulk")["reservations"][0]
    return {
        "id": "bulk-1",
        "type": "codes.bulk",
        "hub": "hub-0042",
        "issued_at": t,
        "expires_at": t + 86_400,
        "reservations": [
            {**one, "parcel": f"P-{i}", "pickup_code_hash": f"{i:064x}", **extra} for i in range(n)
        ],
    }


@pytest.mark.parametrize(
    "extra", [{}, {"recall_code_hash": None, "accessible": False, "kind": "delivery"}]
)
def test_the_big_bulk_fast_path_verifies_exactly_what_was_signed(extra: dict[str, Any]) -> None:
    key = EXAMPLE_KEY.public_key()
    verifier = Verifier("hub-0042", key, SKEW, LIFE, 7 * 86_400)
    now = asyncapi.EXAMPLE_TIME + 10
    signed = c.sign(_bulk(400, **extra), EXAMPLE_KEY)
    body = json.dumps(signed).encode()
    assert len(body) > cloud.BIG
    fast = cloud._valid_bulk(body)  # what the hub does with a big codes.bulk
    assert fast is not None
    assert verifier.refusal(None, fast, now) is None
    assert verifier.refusal(json.loads(body), fast, now) is None  # the same bytes either way
    tampered = json.loads(body)
    tampered["reservations"][7]["pickup_code_hash"] = "f" * 64
    fast = cloud._valid_bulk(json.dumps(tampered).encode())
    assert fast is not None
    assert verifier.refusal(None, fast, now) == "bad_signature"
    dropped = {**signed, "reservations": signed["reservations"][:-1]}
    fast = cloud._valid_bulk(json.dumps(dropped).encode())
    assert fast is not None
    assert verifier.refusal(None, fast, now) == "bad_signature"


def test_grants_may_live_longer_than_a_door_opened_now() -> None:
    key = EXAMPLE_KEY.public_key()
    grant_life = float(Cloud.model_fields["grant_max_life_s"].default)
    assert grant_life == 7 * 86_400  # as long as the broker keeps the hub's session
    verifier = Verifier("hub-0042", key, SKEW, LIFE, grant_life)
    t = asyncapi.EXAMPLE_TIME
    reserve = {k: v for k, v in example("parcel.reserve").items() if k != "sig"}
    opening = {k: v for k, v in asyncapi.worked_example().command.items() if k != "sig"}
    for body, life, reason in [
        (reserve, grant_life, None),
        (reserve, grant_life + 1, "lifetime_too_long"),
        (opening, LIFE, None),
        (opening, LIFE + 1, "lifetime_too_long"),
        (opening, grant_life, "lifetime_too_long"),  # an open is never sent ahead
    ]:
        signed = c.sign({**body, "expires_at": t + int(life)}, EXAMPLE_KEY)
        assert verifier.refusal(signed, parse("cmd", signed), t + 10) == reason, (body, life)
    # every signed grant needs expires_at, as an open does
    bare = c.sign({k: v for k, v in reserve.items() if k != "expires_at"}, EXAMPLE_KEY)
    assert verifier.refusal(bare, parse("cmd", bare), t) == "no_expiry"


def test_every_command_that_grants_or_opens_is_signed_and_the_rest_say_why_not() -> None:
    assert {
        "parcel.reserve",
        "return.reserve",
        "parcel.update_codes",
        "parcel.recall",
        "codes.bulk",
        "compartment.open",
    } == c.SIGNED
    assert c.OPENS_NOW <= c.SIGNED
    # the examples of the document are signed as the cloud must sign them
    key = EXAMPLE_KEY.public_key()
    verifier = Verifier("hub-0042", key, SKEW, LIFE, 7 * 86_400)
    for name in c.SIGNED:
        for _, payload in asyncapi.examples()[name]:
            cmd = parse("cmd", payload)
            assert verifier.refusal(payload, cmd, payload["issued_at"]) is None, name
    assert set(asyncapi.command_models()) - c.SIGNED == {
        "parcel.cancel",
        "compartment.set_service",
        "sync.request",
    }


# ======================================================================================
# (f) one home per vocabulary: every event the hub emits is in the contract
# ======================================================================================

LOCKERD = Path(lockerd.__file__).resolve().parent
# where each closed vocabulary of the contract comes from: the hub's own enums
ENUM_VOCABULARIES: list[tuple[Any, type[enum.Enum]]] = [
    (c.SizeClass, d.Size),
    (c.PurposeName, d.Purpose),
    (c.KindName, d.Kind),
    (c.CompartmentStateName, d.CompartmentState),
]


def test_every_event_type_has_a_data_model_and_every_model_a_type() -> None:
    assert len(set(vocab.EVENT_TYPES)) == len(vocab.EVENT_TYPES)
    assert list(c.EVENT_DATA) == list(vocab.EVENT_TYPES)
    assert list(c.EVENT_MODELS) == list(vocab.EVENT_TYPES)
    for type_, model in c.EVENT_MODELS.items():
        assert model.model_fields["data"].annotation is c.EVENT_DATA[type_]
        assert typing.get_args(model.model_fields["type"].annotation) == (type_,)
        assert issubclass(model, c.EventMessage)  # what the link builds, narrowed
        assert c.EVENT_DATA[type_].__doc__, f"{type_}: say when it is sent"
    assert set(vocab.EVENT_TYPES) >= vocab.ALARM_KINDS
    assert set(vocab.EVENT_TYPES) >= vocab.TELEMETRY_KINDS
    assert not vocab.ALARM_KINDS & vocab.TELEMETRY_KINDS  # an alarm is never dropped


def test_the_vocabularies_are_the_ones_the_code_uses() -> None:
    # the store's lists of alarms and telemetry are the vocabulary's
    assert set(ALARM_EVENTS) == set(vocab.ALARM_KINDS)
    assert set(TELEMETRY_EVENTS) == set(vocab.TELEMETRY_KINDS)
    # the service's outcomes, the link's refusals
    assert set(typing.get_args(Status)) == set(vocab.OUTCOME_STATUSES)
    assert _reasons() == set(vocab.REFUSAL_REASONS)
    assert set(vocab.REFUSAL_REASONS) <= set(vocab.REPLY_STATUSES)
    assert set(vocab.OUTCOME_STATUSES) <= set(vocab.REPLY_STATUSES)
    assert set(vocab.REPLY_STATUSES) >= vocab.OK_STATUSES | vocab.UNPUBLISHED_STATUSES
    for literal, enum_ in ENUM_VOCABULARIES:
        assert typing.get_args(literal) == tuple(m.value for m in enum_), enum_


def test_the_document_has_every_event_reply_status_and_correlation() -> None:
    d_ = doc()
    schemas = d_["components"]["schemas"]
    event = schemas["Event"]
    assert event["discriminator"] == "type"
    members = [schemas[r["$ref"].rsplit("/", 1)[1]] for r in event["oneOf"]]
    assert [m["properties"]["type"]["const"] for m in members] == list(vocab.EVENT_TYPES)
    for m in members:
        data = schemas[m["properties"]["data"]["$ref"].rsplit("/", 1)[1]]
        assert data["additionalProperties"] is False
    assert schemas["Command"]["discriminator"] == "type"
    messages = d_["components"]["messages"]
    assert messages["event"]["payload"] == {"$ref": "#/components/schemas/Event"}
    examples = [ex["payload"]["type"] for ex in messages["event"]["examples"]]
    assert examples == list(vocab.EVENT_TYPES)  # one example of every event
    assert schemas["Reply"]["properties"]["status"]["enum"] == list(vocab.REPLY_STATUSES)
    assert d_["info"]["version"] == c.CONTRACT_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", c.CONTRACT_VERSION)
    correlation = {"$ref": "#/components/correlationIds/commandId"}
    for name in [*asyncapi.command_models(), "reply"]:
        assert messages[name]["correlationId"] == correlation, name
    assert d_["components"]["correlationIds"]["commandId"]["location"] == "$message.payload#/id"


def test_the_guide_lists_every_event_and_reply_status() -> None:
    text = guide()
    assert asyncapi.event_table() in text, (
        "docs/cloud-guide.md's table of events is stale: paste tools.asyncapi.event_table()"
    )
    published = set(vocab.REPLY_STATUSES) - vocab.UNPUBLISHED_STATUSES
    missing = sorted(s for s in published if f"| `{s}` |" not in text)
    assert not missing, f"docs/cloud-guide.md's reply statuses lack {missing}"


def _strings(node: ast.expr | None, assigned: dict[str, list[ast.expr]]) -> set[str] | None:
    """The string constants an expression can evaluate to (a literal, a conditional
    expression, a dict's values, a name assigned those in the same function); ``None``
    when it is not made of such."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        a, b = _strings(node.body, assigned), _strings(node.orelse, assigned)
        return None if a is None or b is None else a | b
    if isinstance(node, ast.Dict):
        values = [_strings(v, assigned) for v in node.values]
        return None if not values or None in values else set().union(*values)  # type: ignore[arg-type]
    if isinstance(node, ast.Subscript):
        return _strings(node.value, assigned)
    if isinstance(node, ast.Name) and assigned.get(node.id):
        found = [_strings(v, {**assigned, node.id: []}) for v in assigned[node.id]]
        return None if None in found else set().union(*found)  # type: ignore[arg-type]
    return None


def _event_calls() -> tuple[dict[str, set[str]], list[str]]:
    """Every ``Event(...)`` / ``d.Event(...)`` with arguments in lockerd/: the event types
    it can emit (type -> where), and the calls whose type could not be read."""
    emitted: dict[str, set[str]] = {}
    unreadable: list[str] = []
    seen: set[tuple[str, int, int]] = set()
    for path in sorted(LOCKERD.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(LOCKERD.parent).as_posix()
        scopes: list[ast.AST] = [tree]
        scopes += [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for scope in scopes:
            assigned: dict[str, list[ast.expr]] = {}
            for n in ast.walk(scope):
                if isinstance(n, ast.Assign):
                    for t in n.targets:
                        if isinstance(t, ast.Name):
                            assigned.setdefault(t.id, []).append(n.value)
                elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.value:
                    assigned.setdefault(n.target.id, []).append(n.value)
            for n in ast.walk(scope):
                if not isinstance(n, ast.Call) or (rel, n.lineno, n.col_offset) in seen:
                    continue
                f = n.func
                name = (
                    f.id
                    if isinstance(f, ast.Name)
                    else f.attr
                    if isinstance(f, ast.Attribute)
                    else ""
                )
                first = (
                    n.args[0]
                    if n.args
                    else next((k.value for k in n.keywords if k.arg == "type"), None)
                )
                if name != "Event" or first is None:  # (asyncio.Event() has no arguments)
                    continue
                seen.add((rel, n.lineno, n.col_offset))
                where = f"{rel}:{n.lineno}"
                if isinstance(first, ast.Attribute) and first.attr == "type":
                    continue  # an event made again from another (the store cleans data)
                types = _strings(first, assigned)
                if not types:
                    unreadable.append(where)
                    continue
                for type_ in types:
                    emitted.setdefault(type_, set()).add(where)
    return emitted, unreadable


def test_every_event_the_code_emits_is_in_the_vocabulary_and_the_contract() -> None:
    emitted, unreadable = _event_calls()
    assert not unreadable, f"event types the scan cannot read (use a literal): {unreadable}"
    unknown = {t: sorted(w) for t, w in emitted.items() if t not in vocab.EVENT_TYPES}
    assert not unknown, f"events emitted but not in lockerd/hub/vocab.py: {unknown}"
    unused = sorted(set(vocab.EVENT_TYPES) - set(emitted))
    assert not unused, f"event types in the vocabulary that nothing emits: {unused}"
    modules = {w.split(":")[0] for where in emitted.values() for w in where}
    assert {"lockerd/hub/domain.py", "lockerd/cloud/link.py", "lockerd/hub/monitor.py"} <= modules


def test_the_scan_finds_what_it_should() -> None:
    code = textwrap.dedent(
        """
        def f(x):
            kind = "a" if x else "b"
            kinds = {1: "c", 2: "d"}
            e = d.Event(kind, {})
            g = Event(kinds[x], {})
            h = asyncio.Event()
            return Event("e"), Event(type="f"), Event(x.type), Event(str(x))
        """
    )
    tree = ast.parse(code)
    (func,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assigned: dict[str, list[ast.expr]] = {}
    for n in ast.walk(func):
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name):
            assigned.setdefault(n.targets[0].id, []).append(n.value)
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call) and n.args]
    got = [_strings(n.args[0], assigned) for n in calls]
    assert {"a", "b"} in got
    assert {"c", "d"} in got
    assert {"e"} in got
    assert None in got  # Event(str(x)) is reported as unreadable


def _json_round_trip(data: dict[str, Any]) -> str:
    return json.dumps(clean(data))


def test_every_domain_event_matches_its_data_model() -> None:
    """The pure rules, through every path that makes an event."""
    t = 1_000_000.0
    comp = d.Compartment("A01", d.Size.M)
    parcel = d.Parcel("P1", d.Kind.DELIVERY, d.Size.M, deposit_from=t - 1, has_recall_code=True)
    ret = d.Parcel("R1", d.Kind.RETURN, d.Size.M, deposit_from=t - 1)
    changes: list[d.Change] = []

    def deposit(p: d.Parcel, occupied: bool | None = None) -> tuple[d.Parcel, d.Compartment]:
        start = d.start(p, d.Purpose.DEPOSIT, comp, t, actor="keypad:1")
        opened = d.door_opened(start.compartment or comp, t)
        assert start.parcel is not None
        assert opened.compartment is not None
        shut = d.door_shut(opened.compartment, start.parcel, t, occupied=occupied)
        changes.extend([start, opened, shut])
        assert shut.parcel is not None
        assert shut.compartment is not None
        return shut.parcel, shut.compartment

    stored, full = deposit(parcel)
    deposit(ret)
    deposit(parcel, occupied=False)  # deposit_abandoned
    for p, purpose, occupied in [
        (stored, d.Purpose.COLLECT, None),
        (stored, d.Purpose.COLLECT, True),  # collect_not_taken
    ]:
        start = d.start(p, purpose, full, t, actor="keypad:2")
        assert start.compartment is not None
        assert start.parcel is not None
        opened = d.door_opened(start.compartment, t)
        assert opened.compartment is not None
        changes += [
            start,
            opened,
            d.door_shut(opened.compartment, start.parcel, t, occupied=occupied),
        ]
        changes.append(d.left_open(opened.compartment, t + 1000, 120))
        for rule in (d.open_not_seen, d.not_pulsed, d.interrupted):
            changes.append(rule(start.compartment, start.parcel, t))
    r_stored, r_full = deposit(ret)
    collect = d.start(r_stored, d.Purpose.COLLECT, r_full, t)
    assert collect.compartment is not None
    assert collect.parcel is not None
    opened = d.door_opened(collect.compartment, t)
    assert opened.compartment is not None
    changes += [collect, opened, d.door_shut(opened.compartment, collect.parcel, t)]
    expired = d.expire(stored, (stored.collect_until or t) + 1)
    changes.append(expired)
    lapsing = d.Parcel("P9", d.Kind.DELIVERY, d.Size.S, deposit_from=t, deposit_until=t + 1)
    changes.append(d.expire(lapsing, t + 2))  # reservation_expired
    assert expired.parcel is not None
    recall = d.technician_recall(expired.parcel, full, t, actor="tech")
    assert recall.compartment is not None
    assert recall.parcel is not None
    opened = d.door_opened(recall.compartment, t)
    assert opened.compartment is not None
    changes += [recall, opened, d.door_shut(opened.compartment, recall.parcel, t)]
    service = d.service_open(full, t, actor="tech", reason="cleaning")
    assert service.compartment is not None
    opened = d.door_opened(service.compartment, t)
    assert opened.compartment is not None
    changes += [service, opened, d.door_shut(opened.compartment, None, t, occupied=False)]
    changes += [
        d.service_open(comp, t, actor="tech", reason="empty one"),
        d.door_opened(comp, t),  # forced
        d.door_opened(full, t),
        d.occupancy_seen(comp, True),
        d.occupancy_seen(full, False),
        d.cancel(parcel),
        d.set_service(comp, False, actor="tech"),
        d.inspected(comp, holds_parcel=False, actor="tech"),
    ]
    seen: set[str] = set()
    for change in changes:
        for e in change.events:
            c.EVENT_DATA[e.type].model_validate_json(_json_round_trip(e.data))
            seen.add(e.type)
    domain_types = {t for t, w in _event_calls()[0].items() if any("domain.py" in x for x in w)}
    assert seen == domain_types, sorted(domain_types ^ seen)


async def test_events_the_hub_really_emits_match_the_contract(tmp_path: Path) -> None:
    """Flows through the service, the store and the door monitor on the simulator; every
    outbox row, made into the event the cloud link publishes, is valid for the union
    and for the published document."""
    async with contextlib.AsyncExitStack() as stack:
        hub = await make_hub(stack, tmp_path)
        s = hub.service
        s.throttle = Throttle(
            ThrottlePolicy(free_attempts=100, alarm_after=3, hub_wide_per_hour=3, base_delay_s=1)
        )
        h = hub.hasher.hash

        def parcel(pid: str, kind: d.Kind = d.Kind.DELIVERY) -> d.Parcel:
            now = hub.now[0]
            return d.Parcel(
                pid,
                kind,
                d.Size.M,
                deposit_from=now - 10,
                deposit_until=now + 86_400,
                collect_window_s=3600,
            )

        def events() -> list[str]:
            return [r.type for r in hub.store.outbox(limit=10_000)]

        async def visit(code: str, channel: int, pid: str, state: d.ParcelState) -> None:
            out = await s.enter_code(code, "keypad:1")
            assert out.status == "opened", out
            hub.board.close_door(channel)
            await eventually(lambda: hub.parcel(pid) is state, what=f"{pid} {state}")

        codes = {d.Purpose.DEPOSIT: h("11112222"), d.Purpose.COLLECT: h("33334444")}
        assert (await s.reserve(parcel("P1"), codes, actor="cloud:c1")).status == "ok"
        await visit("11112222", 2, "P1", d.ParcelState.STORED)
        new = {d.Purpose.COLLECT: h("55556666")}
        assert (await s.set_codes("P1", new, actor="cloud:c2")).status == "ok"
        await visit("55556666", 2, "P1", d.ParcelState.COLLECTED)
        r_codes = {d.Purpose.DEPOSIT: h("12121212"), d.Purpose.COLLECT: h("34343434")}
        assert (await s.reserve(parcel("R1", d.Kind.RETURN), r_codes, actor="c")).status == "ok"
        await visit("12121212", 2, "R1", d.ParcelState.STORED)
        await visit("34343434", 2, "R1", d.ParcelState.COLLECTED)
        p2 = {d.Purpose.DEPOSIT: h("77778888"), d.Purpose.COLLECT: h("99990000")}
        assert (await s.reserve(parcel("P2"), p2, actor="cloud:c3")).status == "ok"
        assert (await s.cancel("P2", actor="cloud:c4")).status == "ok"
        for n in range(4):
            await s.enter_code(f"0000000{n}", "keypad:2")
            hub.now[0] += 2
        hub.now[0] += 3700  # past the guessing window: no more waiting
        hub.board.faults.jammed.add(3)
        p3 = {d.Purpose.DEPOSIT: h("24682468"), d.Purpose.COLLECT: h("13571357")}
        assert (await s.reserve(parcel("P3"), p3, actor="cloud:c5")).status == "ok"
        assert (await s.enter_code("24682468", "keypad:1")).status == "opened"  # A02
        hub.board.close_door(2)
        await eventually(lambda: hub.parcel("P3") is d.ParcelState.STORED, what="P3 stored")
        hub.now[0] += 3601
        await s.tick()  # P3 expires
        (out,) = await s.empty_expired(actor="tech:ana")
        assert out.status == "opened"
        hub.board.close_door(2)
        await eventually(lambda: hub.parcel("P3") is d.ParcelState.RECALLED, what="recalled")
        hub.board.faults.jammed.clear()
        assert (await s.open_compartment("A01", actor="tech:ana", reason="cleaning")).status
        hub.board.close_door(1)
        await eventually(lambda: "service_door_shut" in events(), what="service shut")
        hub.board.faults.jammed.add(3)
        assert (await s.open_compartment("A03", actor="tech:ana", reason="x")).status == "jammed"
        hub.board.open_door(4)
        await eventually(lambda: "forced_open" in events(), what="forced open")
        hub.board.close_door(4)

        def shut(label: str) -> bool:
            comp = hub.store.compartment(label)
            return comp is not None and not comp.door_open

        await eventually(lambda: shut("A04"), what="A04 seen shut")
        await eventually(lambda: hub.state("A04") is d.CompartmentState.ATTENTION, what="look")
        assert (await s.inspect("A04", False, actor="tech:ana")).status == "ok"
        assert (await s.set_service("A01", False, actor="tech:ana")).status == "ok"
        p4 = {d.Purpose.DEPOSIT: h("86428642"), d.Purpose.COLLECT: h("75317531")}
        assert (await s.reserve(parcel("P4"), p4, actor="cloud:c6")).status == "ok"
        assert (await s.enter_code("86428642", "keypad:1")).status == "opened"
        hub.now[0] += 1000
        await s.tick()  # left open
        hub.store.quarantine("cloud", "cmd-9", "ValueError: x", b"{}", now=hub.now[0])
        hub.store.outbox_quota = 1  # past the quota and the ceiling at once
        assert (await s.inspect("A04", False, actor="tech:ana")).status == "ok"

        rows = hub.store.outbox(limit=10_000)
        link: Any = SimpleNamespace(hub="hub-0042")
        for row in rows:
            body = cloud.CloudLink._event_json(link, row)
            event = c.EVENT.validate_json(body)
            assert event.type == row.type
            validate_message("evt", body)
        seen = {r.type for r in rows}
        assert {
            "parcel_reserved",
            "parcel_codes_changed",
            "parcel_cancelled",
            "parcel_expired",
            "deposited",
            "return_deposited",
            "collected",
            "return_collected",
            "recalled",
            "door_open_requested",
            "door_opened",
            "door_shut",
            "service_door_shut",
            "door_jammed",
            "door_left_open",
            "forced_open",
            "compartment_service",
            "compartment_inspected",
            "code_guessing",
            "code_guessing_hub_wide",
            "message_quarantined",
            "outbox_quota_reached",
            "outbox_full",
        } <= seen, sorted(seen)


# ======================================================================================
# What the guide promises (issue 12): times, strict types, keys
# ======================================================================================


def test_issued_at_is_a_json_integer_and_nothing_else() -> None:
    for bad in ("1767225600", 1767225600.0, True, None):
        message = {**example("parcel.cancel"), "issued_at": bad}
        with pytest.raises(ValidationError):
            parse("cmd", message)
        with pytest.raises(ValidationError):  # as the hub reads the bytes of a big one
            c.COMMAND.validate_json(json.dumps(message))
    # the guide once said a string was accepted
    text = guide()
    assert "do not rely on that" not in text
    assert (
        '`"issued_at": "1767225600"`\n(a string) or `1767225600.0` (a float) is `malformed`' in text
    )


def _verifier() -> Verifier:
    w = asyncapi.worked_example()
    key = load_pem_public_key(w.public_key_pem.encode())
    assert isinstance(key, Ed25519PublicKey)
    grant = float(Cloud.model_fields["grant_max_life_s"].default)
    return Verifier(w.command["hub"], key, SKEW, LIFE, grant)


def test_a_refusal_for_time_says_which_time_never_the_signature() -> None:
    w = asyncapi.worked_example()
    verifier = _verifier()
    raw = w.signed
    cmd = parse("cmd", raw)
    issued, expires = raw["issued_at"], raw["expires_at"]
    late = verifier.check(raw, cmd, expires + SKEW + 100)
    assert late is not None
    assert late[0] == "expired"
    assert late[1].startswith(f"expires_at ({expires}) passed 130 s ago by the hub's clock")
    early = verifier.check(raw, cmd, issued - SKEW - 50)
    assert early is not None
    assert early[0] == "not_yet_valid"
    assert early[1].startswith(f"issued_at ({issued}) is 80 s ahead of the hub's clock")
    key = Ed25519PrivateKey.from_private_bytes(w.seed)
    backwards = c.sign({**w.command, "expires_at": issued - 1}, key)
    found = verifier.check(backwards, parse("cmd", backwards), w.now)
    assert found == (
        "expired",
        f"expires_at ({issued - 1}) is before issued_at ({issued}): the command was never valid",
    )
    grant = example("parcel.recall")
    grant = c.sign({**grant, "expires_at": grant["issued_at"] + 8 * 86_400}, key)
    found = verifier.check(grant, parse("cmd", grant), grant["issued_at"])
    assert found is not None
    assert found[0] == "lifetime_too_long"
    assert "a parcel.recall may live at most 604800 s (the hub's grant_max_life_s)" in found[1]
    for refusal in (late, early, found):
        assert "signature" not in refusal[1]
    # a signature that does not verify is said to be one
    tampered = {**raw, "compartment": "A06"}
    bad = verifier.check(tampered, parse("cmd", tampered), w.now)
    assert bad is not None
    assert bad[0] == "bad_signature"
    assert "signature does not verify" in bad[1]


def test_an_unsigned_command_is_held_only_to_an_expires_at_it_gives() -> None:
    verifier = _verifier()
    base = example("sync.request")  # issued_at 1767225600
    t = base["issued_at"]
    for message, now, want in [
        (base, t + 10 * 86_400, None),  # no expires_at: whenever it comes
        (base, t - 86_400, None),  # issued_at is not checked on an unsigned command
        ({**base, "expires_at": t + 60}, t + 60 + SKEW, None),
        ({**base, "expires_at": t + 60}, t + 61 + SKEW, "expired"),
        ({**base, "expires_at": t + 30 * 86_400}, t, None),  # no lifetime limit
        ({**base, "expires_at": t - 1}, t, "expired"),
    ]:
        found = verifier.times(parse("cmd", message), now, signed=False)
        assert (found[0] if found else None) == want, (message, now)


def test_a_reservation_without_a_window_leaves_it_to_the_hub() -> None:
    schema = c.Reservation.model_json_schema()["properties"]["pickup_window_s"]
    assert schema["default"] is None  # not 72 h of the contract's own
    assert "pickup_window_h" in schema["description"]
    assert "pickup_window_h" in guide()


def test_the_guides_key_commands_make_keys_the_hub_and_lockerctl_cloud_take(
    tmp_path: Path,
) -> None:
    """The OpenSSL commands the guide gives a cloud team make a command key pair the
    hub verifies with, and a code key the hub and lockerctl cloud read."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl here")
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", guide(), re.S) if "openssl genpkey" in b]
    subprocess.run(["bash", "-euc", block], cwd=tmp_path, check=True, timeout=60)
    public = cloud.load_command_key(tmp_path / "cloud-commands.pub")
    private = cloudctl.load_signing_key(tmp_path / "cloud-commands.key")
    signed = c.sign(example("compartment.open"), private)
    verifier = Verifier("hub-0042", public, SKEW, LIFE)
    assert verifier.refusal(signed, parse("cmd", signed), signed["issued_at"]) is None
    code_key = tmp_path / "hub-0042-code-hmac.key"
    assert code_key.stat().st_mode & 0o777 == 0o600
    assert len(load_key(code_key)) == 32
    # and the paths it names are the config's defaults
    text = guide()
    assert f"`{Cloud.model_fields['command_key_file'].default}`" in text
    assert f"`{Codes.model_fields['key_file'].default}`" in text
    assert f"`{Paths.model_fields['state_dir'].default}`" in text


def test_the_guide_states_the_limits_and_defaults_a_client_needs() -> None:
    text = guide()
    kb = Cloud.model_fields["max_packet_kb"].default
    assert f"`cloud.max_packet_kb` of the hub's config (default {kb}\nKiB" in text
    coalesce = Cloud.model_fields["state_coalesce_s"].default
    assert f"`cloud.state_coalesce_s` (default {coalesce:g} s)" in text
    assert f"`{HubConfig.model_fields['hub_id'].metadata[0].pattern}`" in text
    assert "deduplicate them by `id`" in text
    assert "event catalogue" in text
