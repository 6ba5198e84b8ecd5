"""Operator store on real SQLite files: input rules, scrypt hashes, login and lockout with an
injected clock, the last admin, two connections at once; and `kpos operator`."""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import sqlite3
import stat
import threading
from datetime import datetime, timedelta

import pytest

from firmware import operators
from firmware.cli import main as kpos
from firmware.operators import OPERATORS_NAME, OperatorError, OperatorStore

from conftest import SIM_TOML


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2024, 5, 1, 9, 0, 0)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    with OperatorStore(tmp_path / OPERATORS_NAME, now=clock, max_failures=3, lockout=900) as s:
        s.add("99", "admin", "12345678", "Boss")
        s.add("01", "cashier", "0000", "Li")
        yield s


def stored_hash(path, number: str) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT password FROM operator WHERE number = ?", (number,)).fetchone()[0]


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


# ---- store ----

def test_file_is_private_and_list_shows_no_hash(tmp_path, store):
    assert stat.S_IMODE((tmp_path / OPERATORS_NAME).stat().st_mode) == 0o600
    listed = store.list()
    assert [(o.number, o.role, o.name, o.failures) for o in listed] == [
        ("01", "cashier", "Li", 0), ("99", "admin", "Boss", 0)]
    assert "scrypt" not in repr(listed)
    assert not store.empty()


def test_scrypt_parameters_read_back(tmp_path, store):
    store.add("02", "cashier", "0000")
    path = tmp_path / OPERATORS_NAME
    first, second = stored_hash(path, "01"), stored_hash(path, "02")
    _, algo, params, salt, key = first.split("$")
    assert algo == "scrypt" and params == "ln=14,r=8,p=1"
    salt, key = unb64(salt), unb64(key)
    assert len(salt) == 16 and len(key) == 32
    assert hashlib.scrypt(b"0000", salt=salt, n=2**14, r=8, p=1, dklen=32) == key
    assert first.split("$")[3] != second.split("$")[3]  # same password, its own salt


def test_weaker_hash_is_upgraded_at_login(tmp_path, store):
    path = tmp_path / OPERATORS_NAME
    salt = bytes(range(16))
    key = hashlib.scrypt(b"4321", salt=salt, n=2**10, r=8, p=1, dklen=32)
    weak = "$scrypt$ln=10,r=8,p=1${}${}".format(
        *(base64.b64encode(b).decode().rstrip("=") for b in (salt, key)))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE operator SET password = ? WHERE number = '01'", (weak,))
    assert store.verify("01", "4321").ok
    assert stored_hash(path, "01").startswith("$scrypt$ln=14,r=8,p=1$")
    assert store.verify("01", "4321").ok and not store.verify("01", "0000").ok


@pytest.mark.parametrize("number, role, password, name, message", [
    ("1", "cashier", "0000", "", "2 digits"),
    ("100", "cashier", "0000", "", "2 digits"),
    ("a1", "cashier", "0000", "", "2 digits"),
    ("02", "boss", "0000", "", "role must be one of cashier, supervisor, admin"),
    ("02", "cashier", "123", "", "4 to 12 digits"),
    ("02", "cashier", "1234567890123", "", "4 to 12 digits"),
    ("02", "cashier", "12a4", "", "4 to 12 digits"),
    ("02", "cashier", "0000", "x" * 21, "at most 20"),
    ("02", "cashier", "0000", "tab\there", "printable"),
])
def test_bad_input_is_refused_with_a_clear_message(store, number, role, password, name, message):
    with pytest.raises(OperatorError, match=message):
        store.add(number, role, password, name)
    assert [o.number for o in store.list()] == ["01", "99"]


def test_existing_number_is_refused(store):
    with pytest.raises(OperatorError, match="operator 01 already exists"):
        store.add("01", "supervisor", "9999")


def test_right_password_logs_in_and_resets_failures(store, clock):
    assert store.verify("01", "1111").reason == "Wrong password (2 left)"
    clock.advance(60)
    outcome = store.verify("01", "0000")
    assert (outcome.ok, outcome.role, outcome.operator, outcome.reason) == (True, "cashier", "01", "")
    op = store.list()[0]
    assert op.failures == 0 and op.last_login_at == "2024-05-01T09:01:00"


def test_lockout_after_max_failures_and_release_by_the_clock(store, clock):
    assert store.verify("01", "1").reason == "Wrong password (2 left)"
    assert store.verify("01", "2").reason == "Wrong password (1 left)"
    assert store.verify("01", "3").reason == "Locked 15 min"
    assert store.verify("01", "0000") == operators.LoginOutcome(False, reason="Locked 15 min",
                                                                operator="01")
    clock.advance(6 * 60 + 30)
    assert store.verify("01", "0000").reason == "Locked 9 min"
    assert store.list()[0].state(clock()) == "locked 9 min"
    clock.advance(8 * 60 + 30)
    assert store.verify("01", "1").reason == "Wrong password (2 left)"  # counting starts again
    assert store.list()[0].state(clock()) == "1 failure"
    assert store.verify("01", "0000").ok
    assert store.list()[0].state(clock()) == "ok"


def test_unknown_operator_spends_one_scrypt_and_a_locked_one_none(store, monkeypatch):
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(operators.hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert store.verify("42", "0000").reason == "No such operator"
    assert store.verify("4", "0000").reason == "No such operator"
    assert len(calls) == 2
    for _ in range(3):
        store.verify("01", "9")
    calls.clear()
    assert store.verify("01", "0000").reason == "Locked 15 min"
    assert calls == []


def test_passwd_replaces_the_password_and_ends_a_lockout(store):
    for _ in range(3):
        store.verify("01", "9")
    store.passwd("01", "24680")
    assert not store.verify("01", "0000").ok
    assert store.verify("01", "24680").ok
    with pytest.raises(OperatorError, match="no operator 07"):
        store.passwd("07", "24680")


def test_the_last_admin_stays(store):
    with pytest.raises(OperatorError, match="cannot remove operator 99: the last admin"):
        store.remove("99")
    with pytest.raises(OperatorError, match="cannot demote operator 99: the last admin"):
        store.set_role("99", "supervisor")
    store.set_role("01", "admin")
    store.set_role("99", "supervisor")
    assert store.verify("99", "12345678").role == "supervisor"
    store.remove("99")
    assert [o.number for o in store.list()] == ["01"]
    with pytest.raises(OperatorError, match="no operator 99"):
        store.remove("99")


def test_seed_defaults_only_on_an_empty_store(tmp_path):
    with OperatorStore(tmp_path / OPERATORS_NAME) as s:
        assert s.empty()
        assert s.seed_defaults() is True
        assert [(o.number, o.role, o.name) for o in s.list()] == [
            ("00", "supervisor", "Supervisor"), ("01", "cashier", "Cashier"), ("99", "admin", "Admin")]
        assert [s.verify(no, pw).ok for no, pw in (("00", "123456"), ("01", "0000"),
                                                   ("99", "12345678"))] == [True] * 3
        assert s.seed_defaults() is False


def test_logs_never_hold_a_password_or_hash(store, caplog):
    caplog.set_level(logging.DEBUG, logger="kpos")
    store.add("03", "supervisor", "97531")
    store.verify("03", "86420")
    store.verify("03", "97531")
    store.passwd("03", "11223344")
    assert "operator 03 logged in (supervisor)" in caplog.text
    for secret in ("97531", "86420", "11223344", "scrypt"):
        assert secret not in caplog.text


def test_concurrent_adds_from_two_connections(tmp_path):
    path = tmp_path / OPERATORS_NAME
    OperatorStore(path).close()
    barrier, results = threading.Barrier(4), {}

    def add(number: str, tag: str) -> None:
        with OperatorStore(path) as s:
            barrier.wait(timeout=5)
            try:
                s.add(number, "cashier", "0000")
                results[tag] = "ok"
            except OperatorError as exc:
                results[tag] = str(exc)

    threads = [threading.Thread(target=add, args=args)
               for args in (("10", "a"), ("11", "b"), ("12", "c1"), ("12", "c2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["ok", "ok", "ok", "operator 12 already exists"]
    with OperatorStore(path) as s:
        assert [o.number for o in s.list()] == ["10", "11", "12"]


def test_use_from_another_thread_is_refused(store):
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, store.list))
    worker.start()
    worker.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)


def _catch(errors: list, call) -> None:
    try:
        call()
    except Exception as exc:
        errors.append(exc)


def test_a_file_that_is_not_a_database_is_an_error(tmp_path):
    path = tmp_path / OPERATORS_NAME
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OperatorError, match="cannot open"):
        OperatorStore(path)


# ---- kpos operator ----

def run_cli(capsys, monkeypatch, tmp_path, *args: str, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = kpos(["operator", *args, "--config", str(SIM_TOML), "--data-dir", str(tmp_path / "d")])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_add_list_passwd_remove(capsys, monkeypatch, tmp_path):
    cli = lambda *a, stdin="": run_cli(capsys, monkeypatch, tmp_path, *a, stdin=stdin)  # noqa: E731
    assert cli("add", "99", "--role", "admin", "--password-stdin", stdin="12345678\n")[:2] == (
        0, "operator 99 added (admin)\n")
    assert cli("add", "05", "--role", "cashier", "--name", "Wang", "--password-stdin",
               stdin="2468\n")[0] == 0
    code, out, _ = cli("list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NO", "ROLE", "NAME", "STATE", "LAST", "LOGIN"]
    assert rows[1] == ["05", "cashier", "Wang", "ok", "-"] and rows[2][:2] == ["99", "admin"]
    assert cli("passwd", "05", "--password-stdin", stdin="97531\n")[0] == 0
    with OperatorStore(tmp_path / "d" / OPERATORS_NAME) as s:
        assert s.verify("05", "97531").ok and not s.verify("05", "2468").ok
    assert cli("remove", "05")[:2] == (0, "operator 05 removed\n")
    code, _, err = cli("remove", "99")
    assert (code, err) == (2, "kpos operator: cannot remove operator 99: the last admin\n")


@pytest.mark.parametrize("args, stdin, message", [
    (("add", "01", "--role", "cashier", "--password-stdin"), "12\n", "4 to 12 digits"),
    (("add", "01", "--role", "chief", "--password-stdin"), "1234\n", "role must be one of"),
    (("add", "1", "--role", "cashier", "--password-stdin"), "1234\n", "2 digits"),
])
def test_cli_bad_input_exits_2_with_one_line(capsys, monkeypatch, tmp_path, args, stdin, message):
    code, out, err = run_cli(capsys, monkeypatch, tmp_path, *args, stdin=stdin)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_cli_password_typed_twice_must_match(capsys, monkeypatch, tmp_path):
    typed = iter(["1357", "1358"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    code, _, err = run_cli(capsys, monkeypatch, tmp_path, "add", "01", "--role", "cashier")
    assert (code, err) == (2, "kpos operator: the passwords do not match\n")
    typed = iter(["1357", "1357"])
    assert run_cli(capsys, monkeypatch, tmp_path, "add", "01", "--role", "cashier")[0] == 0


def test_cli_list_without_a_store_exits_2(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, monkeypatch, tmp_path, "list")
    assert code == 2 and "operators.db not found" in err
    assert not (tmp_path / "d" / OPERATORS_NAME).exists()
