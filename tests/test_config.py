"""Tests for firmware.config: shipped files, schema drift, every kind of error, read_tmk.

Real files only: the shipped config/*.toml and TOML files written under tmp_path.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from firmware import config as config_mod
from firmware.config import Config, ConfigError, load_config, read_tmk
from firmware.sim.catalog import default_catalog_path, load_catalog

REPO = Path(__file__).resolve().parent.parent
TERMINAL_TOML = REPO / "config" / "terminal.toml"
SIM_TOML = REPO / "config" / "sim.toml"
SHIPPED = [TERMINAL_TOML, SIM_TOML]

# Only the required keys (and what a "usb" printer needs): everything else takes its default.
MINIMAL = {
    "terminal": {"merchant_id": "123456789012345", "terminal_id": "ABCD1234",
                 "merchant_name": "测试商店 Test"},
    "acquirer": {"host": "localhost", "port": 5000},
    "devices": {"card_reader": "pcsc", "keypad": "gpio", "display": "luma", "printer": "usb"},
    "printer": {"usb_vendor": "0x0416", "usb_product": "0x5011"},
    "security": {"tmk_file": "keys/tmk.key"},
}
TMK_HEX = "C1D0F8FB4958670DBA40AB1F3752EF0D"


def to_toml(doc: dict) -> str:
    """Tiny TOML writer for tables of strings, ints, floats and bools (JSON literals are TOML)."""
    out = []
    for section, values in doc.items():
        out.append(f"[{section}]")
        out += [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


def write(path: Path, doc: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else to_toml(doc), encoding="utf-8")
    return path


def minimal(**changes: dict) -> dict:
    """MINIMAL with some sections updated, e.g. minimal(acquirer={"port": 1})."""
    doc = copy.deepcopy(MINIMAL)
    for section, values in changes.items():
        doc.setdefault(section, {}).update(values)
    return doc


def field_names(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields(config_mod._SECTIONS[section])}


# --- shipped files -----------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.path == path
    assert cfg.terminal.data_dir.is_absolute() and cfg.security.vault_key_file.is_absolute()
    # a device loads its TMK with `kpos keys load`; the simulator ships a TEST key file
    assert (cfg.security.tmk_file is None) == (cfg.sim is None)
    assert cfg.security.tmk_file is None or cfg.security.tmk_file.is_absolute()


def test_terminal_toml_is_a_real_device():
    cfg = load_config(TERMINAL_TOML)
    assert cfg.sim is None
    d = cfg.devices
    assert (d.card_reader, d.keypad, d.display, d.printer) == ("pcsc", "gpio", "luma", "usb")
    assert (d.magstripe, d.magstripe_port) == ("serial", "/dev/ttyACM0")
    assert cfg.emv.capk_file == TERMINAL_TOML.parent / "capk.toml"
    assert (cfg.emv.floor_limit, cfg.emv.cvm_limit, cfg.emv.contactless_limit) == (0, 100000, 500000)
    assert cfg.terminal.data_dir == Path("/var/lib/kpos")
    assert cfg.security.tmk_file is None  # loaded with `kpos keys load` into the data dir
    assert cfg.security.vault_key_file == Path("/var/lib/kpos/keys/vault.key")
    assert (cfg.acquirer.host, cfg.acquirer.port) == ("acquirer.example.net", 5000)
    assert (cfg.printer.usb_vendor, cfg.printer.usb_product) == (0x0416, 0x5011)


def test_sim_toml_is_the_simulator():
    cfg = load_config(SIM_TOML)
    catalog = load_catalog(cfg.sim.catalog)
    d = cfg.devices
    assert (d.card_reader, d.keypad, d.display, d.printer, d.magstripe) == ("sim", "console", "console", "sim", "none")
    assert (cfg.terminal.merchant_id, cfg.terminal.terminal_id) == ("898310048990001", "10000001")
    assert cfg.terminal.merchant_name == "KPOS DEMO STORE"
    assert (cfg.acquirer.host, cfg.acquirer.port) == ("127.0.0.1", 5000)
    assert cfg.acquirer.response_timeout == 10.0
    assert cfg.terminal.data_dir == REPO / ".kpos-sim"
    assert cfg.sim.catalog == default_catalog_path()
    assert cfg.sim.ledger == REPO / ".kpos-sim" / "acquirer.db"
    assert cfg.sim.acquirer_port == 0
    assert read_tmk(cfg) == catalog.terminal_keys[cfg.terminal.terminal_id]


def test_sim_tmk_file_says_it_is_a_test_key():
    lines = (REPO / "config" / "sim-tmk.key").read_text().splitlines()
    assert lines[0].startswith("#") and "TEST KEY" in lines[0]
    assert lines[1:] == [TMK_HEX]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_dataclass_key_is_in_the_shipped_file(path):
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    device_sections = [s for s in config_mod._SECTIONS if s != "sim"]
    assert set(raw) - {"sim"} == set(device_sections)
    for section in device_sections:
        assert set(raw[section]) == field_names(section), section


def test_sim_keys_in_sim_toml_and_documented_in_terminal_toml():
    raw = tomllib.loads(SIM_TOML.read_text(encoding="utf-8"))
    assert set(raw["sim"]) == field_names("sim")
    commented = set(re.findall(r"^# (\w+) = ", TERMINAL_TOML.read_text(), re.M))
    assert field_names("sim") <= commented
    assert "sim" not in tomllib.loads(TERMINAL_TOML.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_key_line_follows_a_comment(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\w+ = ", line):
            assert lines[i - 1].startswith("#"), f"{path.name}:{i + 1}: {line}"


def test_defaults_match_terminal_toml(tmp_path):
    """terminal.toml shows the defaults: a file with only required keys loads the same."""
    shipped = load_config(TERMINAL_TOML)
    cfg = load_config(write(tmp_path / "min.toml", minimal(
        terminal={"data_dir": "/var/lib/kpos"})))
    for section in ("limits", "timeouts", "printer", "receipt", "log", "journal"):
        assert getattr(cfg, section) == getattr(shipped, section), section
    assert cfg.emv.capk_file == tmp_path / "capk.toml"  # relative to the config file
    assert dataclasses.replace(cfg.emv, capk_file=shipped.emv.capk_file) == shipped.emv
    assert dataclasses.replace(cfg.acquirer, host="acquirer.example.net") == shipped.acquirer
    terminal = cfg.terminal
    assert (terminal.currency, terminal.operator, terminal.language) == (156, "01", "en")
    assert cfg.terminal.merchant_name_zh == ""
    assert cfg.security.vault_key_file == shipped.security.vault_key_file
    assert cfg.sim is None


# --- errors ------------------------------------------------------------------------------

def test_error_message_format(tmp_path):
    path = write(tmp_path / "t.toml", minimal(acquirer={"port": 70000}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: [acquirer] port: must be 1..65535, got 70000"


@pytest.mark.parametrize("overrides, message", [
    ({"acquirer": {"prot": 5000}}, "[acquirer] unknown key 'prot' (did you mean 'port'?)"),
    ({"timeouts": {"pim": 30}}, "[timeouts] unknown key 'pim' (did you mean 'pin'?)"),
    ({"printer": {"zzz": 1}}, "[printer] unknown key 'zzz'"),
    ({"acquire": {"port": 1}}, "unknown section [acquire] (did you mean [acquirer]?)"),
    ({"colour": {}}, "unknown section [colour]"),
    ({"port": 5000}, "unknown section [port]"),
    ({"limits": 5}, "[limits] must be a table, got integer"),
])
def test_unknown_keys_and_sections(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "t.toml", MINIMAL), overrides=overrides)
    assert str(err.value).endswith(": " + message)


def test_unknown_key_in_file_is_named_even_when_it_hides_a_required_one(tmp_path):
    doc = minimal()
    doc["acquirer"] = {"host": "localhost", "prot": 5000}
    hint = r"\[acquirer\] unknown key 'prot' \(did you mean 'port'\?\)"
    with pytest.raises(ConfigError, match=hint):
        load_config(write(tmp_path / "t.toml", doc))


@pytest.mark.parametrize("section, key, value, message", [
    ("acquirer", "port", 0, "must be 1..65535, got 0"),
    ("acquirer", "connect_timeout", 0, "must be > 0 and <= 60, got 0"),
    ("acquirer", "response_timeout", 120.5, "must be > 0 and <= 120, got 120.5"),
    ("limits", "max_amount", 0, "must be 1..999999999999, got 0"),
    ("limits", "max_amount", 10**12, "must be 1..999999999999, got 1000000000000"),
    ("limits", "pin_min", 3, "must be 4..12, got 3"),
    ("limits", "pin_max", 13, "must be pin_min (4)..12, got 13"),
    ("timeouts", "card", 4, "must be 5..300, got 4"),
    ("timeouts", "pin", 301, "must be 5..300, got 301"),
    ("timeouts", "result", 0.5, "must be 1..60, got 0.5"),
    pytest.param("timeouts", "card", 10**400, "must be 5..300, got 10000", id="card-huge"),
    ("terminal", "currency", 999, "must be one of 156, 344, 446, 840, 978, 392, got 999"),
    ("terminal", "merchant_id", "12345", "must be exactly 15 letters or digits, got '12345'"),
    ("terminal", "terminal_id", "ABCD-123", "must be exactly 8 letters or digits"),
    ("terminal", "merchant_name", "  ", "must be 1..40 characters"),
    ("terminal", "merchant_name", "商" * 41, "must be at most 40 characters, got 41"),
    ("terminal", "operator", "1", "must be 2 digits, got '1'"),
    ("terminal", "language", "fr", "must be one of 'en', 'zh', got 'fr'"),
    ("acquirer", "host", "", "must be a host name or IP address, got ''"),
    ("devices", "printer", "laser", "must be one of 'sim', 'usb', 'serial', 'network', 'file'"),
    ("printer", "width", 40, "must be one of 32, 48, got 40"),
    ("printer", "usb_vendor", "0416", "must be a hex USB id like '0x0416', got '0416'"),
    ("printer", "baudrate", 9601, "must be one of 1200"),
    ("receipt", "footer", "a\tb", "must not hold control characters"),
    ("security", "pin_format", 3, "must be one of 0, 4, got 3"),
    ("security", "mac", "cbc", "must be one of 'retail', 'cmac', 'none', got 'cbc'"),
    ("security", "mac", "cmac", "must be 'retail' or 'none' with pin_format = 0, got 'cmac'"),
    ("journal", "keep_days", -1, "must be 0..3650, got -1"),
    ("journal", "keep_days", 3651, "must be 0..3650, got 3651"),
    ("settlement", "max_batch_txns", 1000, "must be 1..999, got 1000"),
])
def test_bad_values_name_key_and_range(tmp_path, section, key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "t.toml", minimal(**{section: {key: value}})))
    assert f"[{section}] {key}: {message}" in str(err.value)


def test_security_pin_format_and_mac(tmp_path):
    cfg = load_config(write(tmp_path / "t.toml", minimal()))
    assert (cfg.security.pin_format, cfg.security.mac) == (0, "retail")
    aes = minimal(security={"tmk_file": "keys/tmk.key", "pin_format": 4, "mac": "cmac"})
    cfg = load_config(write(tmp_path / "a.toml", aes))
    assert (cfg.security.pin_format, cfg.security.mac) == (4, "cmac")
    with pytest.raises(ConfigError, match=r"\[security\] mac: must be 'cmac' or 'none' with pin_format = 4"):
        load_config(write(tmp_path / "b.toml", minimal(security={"tmk_file": "k", "pin_format": 4})))


def test_pin_max_below_pin_min(tmp_path):
    with pytest.raises(ConfigError, match=r"\[limits\] pin_max: must be pin_min \(6\)..12, got 5"):
        load_config(write(tmp_path / "t.toml", minimal(limits={"pin_min": 6, "pin_max": 5})))


@pytest.mark.parametrize("section, key, value, message", [
    ("acquirer", "port", "5000", "must be an integer, got string '5000'"),
    ("acquirer", "port", True, "must be an integer, got boolean True"),
    ("acquirer", "tls", 1, "must be true or false, got integer 1"),
    ("acquirer", "tls", "true", "must be true or false, got string 'true'"),
    ("acquirer", "connect_timeout", "5", "must be a number, got string '5'"),
    ("limits", "max_amount", 100.5, "must be an integer, got float 100.5"),
    ("terminal", "merchant_id", 123456789012345, "must be a string, got integer"),
    ("terminal", "currency", "156", "must be an integer, got string '156'"),
    ("terminal", "data_dir", 5, "must be a path string, got integer 5"),
])
def test_wrong_types(tmp_path, section, key, value, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "t.toml", minimal(**{section: {key: value}})))
    assert f"[{section}] {key}: {message}" in str(err.value)


@pytest.mark.parametrize("section, key", [
    ("terminal", "merchant_id"), ("terminal", "terminal_id"), ("terminal", "merchant_name"),
    ("acquirer", "host"), ("acquirer", "port"), ("devices", "card_reader"),
    ("devices", "printer"),
])
def test_missing_required_key(tmp_path, section, key):
    doc = minimal()
    del doc[section][key]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "t.toml", doc))
    assert str(err.value).endswith(f": [{section}] {key}: required key missing")


def test_missing_required_section(tmp_path):
    doc = minimal()
    del doc["acquirer"]
    with pytest.raises(ConfigError, match=r"\[acquirer\] host: required key missing"):
        load_config(write(tmp_path / "t.toml", doc))


@pytest.mark.parametrize("backend, key", [
    ("usb", "usb_vendor"), ("serial", "serial_port"), ("network", "host"), ("file", "file"),
])
def test_printer_backend_needs_its_settings(tmp_path, backend, key):
    doc = minimal(devices={"printer": backend})
    doc["printer"] = {key: ""}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "t.toml", doc))
    assert f'[printer] {key}: must be set when [devices] printer = "{backend}"' in str(err.value)


def test_tls_needs_ca_cert_and_key(tmp_path):
    path = write(tmp_path / "t.toml", minimal(acquirer={"tls": True}))
    with pytest.raises(ConfigError, match=r"\[acquirer\] ca_file: must be set when tls = true"):
        load_config(path)
    files = {"ca_file": "tls/ca.pem", "cert_file": "tls/me.pem", "key_file": "/etc/k.pem"}
    cfg = load_config(path, overrides={"acquirer": files})
    assert cfg.acquirer.tls is True
    assert cfg.acquirer.ca_file == tmp_path / "tls" / "ca.pem"
    assert cfg.acquirer.cert_file == tmp_path / "tls" / "me.pem"
    assert cfg.acquirer.key_file == Path("/etc/k.pem")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: cannot read: "):
        load_config(path)


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path / "bad.toml", '[acquirer]\nhost = "x"\nport = = 5\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: TOML syntax error: ")
    assert "line 3" in str(err.value)


# --- overrides and paths -----------------------------------------------------------------

def test_overrides_merge_over_the_file(tmp_path):
    overrides = {"acquirer": {"port": 45678}, "terminal": {"data_dir": tmp_path / "state"},
                 "sim": {"acquirer_port": 45678}}
    before = copy.deepcopy(overrides)
    cfg = load_config(SIM_TOML, overrides=overrides)
    assert cfg.acquirer.port == 45678
    assert cfg.acquirer.host == "127.0.0.1" and cfg.acquirer.response_timeout == 10.0
    assert cfg.terminal.data_dir == tmp_path / "state"
    assert cfg.terminal.terminal_id == "10000001"
    assert cfg.sim.acquirer_port == 45678
    assert cfg.sim.ledger == tmp_path / "state" / "acquirer.db"
    assert cfg.security.vault_key_file == tmp_path / "state" / "keys" / "vault.key"
    assert overrides == before
    assert load_config(SIM_TOML).acquirer.port == 5000


def test_overrides_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"\[acquirer\] port: must be an integer"):
        load_config(SIM_TOML, overrides={"acquirer": {"port": "45678"}})


def test_relative_paths_resolve_against_the_config_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's dir: the cwd must not matter
    doc = minimal(terminal={"data_dir": "../state"}, log={"file": "logs/kpos.log"},
                  sim={"catalog": "cards.toml"})
    cfg = load_config(write(tmp_path / "etc" / "kpos.toml", doc))
    assert cfg.terminal.data_dir == tmp_path / "state"
    assert cfg.security.tmk_file == tmp_path / "etc" / "keys" / "tmk.key"
    assert cfg.security.vault_key_file == tmp_path / "state" / "keys" / "vault.key"
    assert cfg.log.file == tmp_path / "etc" / "logs" / "kpos.log"
    assert cfg.sim.catalog == tmp_path / "etc" / "cards.toml"
    assert cfg.sim.ledger == tmp_path / "state" / "acquirer.db"


def test_config_is_frozen():
    cfg = load_config(SIM_TOML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.acquirer.port = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.terminal = None
    assert cfg.acquirer.port == 5000


# --- read_tmk ----------------------------------------------------------------------------

def tmk_config(tmp_path: Path, content: str | bytes, *, sim: bool = False, mode: int = 0o600):
    key = tmp_path / "keys" / "tmk.key"
    key.parent.mkdir(exist_ok=True)
    key.write_bytes(content.encode() if isinstance(content, str) else content)
    key.chmod(mode)
    doc = minimal(sim={}) if sim else minimal()
    return load_config(write(tmp_path / "t.toml", doc))


@pytest.mark.parametrize("content, key", [
    (TMK_HEX, bytes.fromhex(TMK_HEX)),
    (f"# TEST KEY\n\n  {TMK_HEX.lower()}  \n", bytes.fromhex(TMK_HEX)),
    ("0123456789ABCDEF" * 3 + "\n", bytes.fromhex("0123456789ABCDEF" * 3)),
])
def test_read_tmk_good(tmp_path, content, key):
    assert read_tmk(tmk_config(tmp_path, content)) == key


@pytest.mark.parametrize("content, message", [
    (TMK_HEX[:-2], "must hold 32 or 48 hex digits, found 30"),
    (TMK_HEX + "00", "must hold 32 or 48 hex digits, found 34"),
    ("# only a comment\n", "must hold 32 or 48 hex digits, found 0"),
    (TMK_HEX[:-2] + "ZZ", "holds characters that are not hex digits"),
    ("C1D0 F8FB 4958 670D BA40 AB1F 3752 EF0D", "holds characters that are not hex digits"),
    (b"\xc1\xd0" * 16, "not ASCII text"),
], ids=["short", "long", "empty", "not-hex", "spaced", "binary"])
def test_read_tmk_bad(tmp_path, content, message):
    cfg = tmk_config(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        read_tmk(cfg)
    assert str(err.value) == f"{cfg.security.tmk_file}: [security] tmk_file: {message}"
    assert "C1D0" not in str(err.value)  # key material is never echoed


def test_read_tmk_missing_file(tmp_path):
    cfg = load_config(write(tmp_path / "t.toml", MINIMAL))
    where = re.escape(str(cfg.security.tmk_file))
    with pytest.raises(ConfigError, match=rf"^{where}: .*cannot read"):
        read_tmk(cfg)


@pytest.mark.parametrize("sim, mode, warned", [
    (False, 0o644, True), (False, 0o600, False), (True, 0o644, False),
])
def test_read_tmk_warns_on_world_readable_device_key(tmp_path, caplog, sim, mode, warned):
    cfg = tmk_config(tmp_path, TMK_HEX, sim=sim, mode=mode)
    with caplog.at_level(logging.WARNING, logger="kpos.config"):
        read_tmk(cfg)
    assert any("readable by every user" in r.getMessage() for r in caplog.records) is warned
    assert all(TMK_HEX.lower() not in r.getMessage().lower() for r in caplog.records)
    assert os.stat(cfg.security.tmk_file).st_mode & 0o777 == mode


# --- [devices] reader / magstripe and [emv] ----------------------------------------------

def test_serial_magstripe_needs_a_port(tmp_path):
    with pytest.raises(ConfigError, match=r"\[devices\] magstripe_port: must be set when"):
        load_config(SIM_TOML, overrides={"devices": {"magstripe": "serial"}})


def test_wedge_scanner_needs_its_input_device():
    with pytest.raises(ConfigError, match=r'\[devices\] scanner_port: must be set when .*"wedge"'):
        load_config(SIM_TOML, overrides={"devices": {"scanner": "wedge"}})
    path = "/dev/input/by-id/usb-GM65-event-kbd"
    cfg = load_config(SIM_TOML, overrides={"devices": {"scanner": "wedge", "scanner_port": path}})
    assert (cfg.devices.scanner, cfg.devices.scanner_port) == ("wedge", path)


@pytest.mark.parametrize("override, message", [
    ({"tac_online": "D84004F8"}, r"\[emv\] tac_online: .*10 hex digits"),
    ({"capabilities": "E0E8C0FF"}, r"\[emv\] capabilities: .*6 hex digits"),
    ({"cvm_limit": 600000}, r"\[emv\] cvm_limit: .*contactless_limit \(500000\)"),
    ({"random_target_percent": 50, "random_max_percent": 20}, r"random_max_percent: .*random_target_percent \(50\)"),
    ({"terminal_type": "99"}, r"\[emv\] terminal_type"),
])
def test_emv_section_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SIM_TOML, overrides={"emv": override})


def test_emv_hex_codes_are_upper_cased():
    cfg = load_config(SIM_TOML, overrides={"emv": {"tac_denial": "00100000ab"}})
    assert cfg.emv.tac_denial == "00100000AB"


def test_tmk_file_is_optional_and_read_tmk_says_how_to_load_a_key(tmp_path):
    cfg = load_config(write(tmp_path / "t.toml", minimal(security={"tmk_file": ""})))
    assert cfg.security.tmk_file is None  # a device loads its key: kpos keys load
    with pytest.raises(ConfigError, match=r"\[security\] tmk_file: not set .*kpos keys load"):
        read_tmk(cfg)
