"""Configuration: one TOML file -> frozen, validated dataclasses, read once at start.

Contract: `load_config()` runs at start-up on the main thread, before the event loop
exists; it blocks on one small file read and returns a frozen `Config` that nothing
re-reads. `read_tmk()` blocks on one small file read (call it at start or on a worker).
Every value is checked where it is read (Klipper's `getfloat('x', 4700., above=0.)`):
a wrong type (bool is not an int), a value out of range, a missing required key, an
unknown key or an unknown section raises `ConfigError` naming the file, the [section]
and the key. The dataclass fields of each section ARE the schema: a key that is not a
field is unknown. Units: timeouts in seconds (float), money in minor units (int).
Relative paths (in the file or in overrides) resolve against the config file's directory;
every path in the result is absolute. An empty optional path is `None`.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from firmware.money import CURRENCIES

__all__ = [
    "ConfigError", "Config", "TerminalConfig", "AcquirerConfig", "LimitsConfig",
    "TimeoutsConfig", "DevicesConfig", "PrinterConfig", "ReceiptConfig", "SecurityConfig",
    "LogConfig", "SimConfig", "OfflineConfig", "SafConfig", "load_config", "read_tmk",
]

log = logging.getLogger("kpos.config")


class ConfigError(ValueError):
    """Bad configuration; str() names the file, section and key, e.g.
    "config/terminal.toml: [acquirer] port: must be 1..65535, got 70000"."""


@dataclass(frozen=True)
class TerminalConfig:
    merchant_id: str  # field 42, exactly 15 letters or digits
    terminal_id: str  # field 41, exactly 8 letters or digits
    merchant_name: str  # 1..40 characters, printed on receipts
    merchant_name_zh: str  # "" when none
    currency: int  # ISO 4217 numeric, a key of firmware.money.CURRENCIES
    operator: str  # 2 digits
    data_dir: Path  # journal, receipts, keys
    language: str  # "en" | "zh": screens and receipts


@dataclass(frozen=True)
class AcquirerConfig:
    host: str
    port: int
    connect_timeout: float  # seconds
    response_timeout: float  # seconds
    tls: bool
    ca_file: Path | None  # set when tls
    cert_file: Path | None  # set when tls
    key_file: Path | None  # set when tls; mode 0600 or stricter (checked at connect)
    tls_server_name: str  # name the acquirer's certificate must carry; "" = host
    pin_sha256: str  # "" or 64 lower-case hex: SHA-256 of the server key's SubjectPublicKeyInfo
    echo_interval: float  # seconds between echo tests (0800 / 301) while the link is idle
    signon_interval: float  # seconds: sign on again (new keys, batch number check) this often


@dataclass(frozen=True)
class LimitsConfig:
    max_amount: int  # minor units
    pin_min: int  # digits
    pin_max: int  # digits


@dataclass(frozen=True)
class TimeoutsConfig:
    card: float  # seconds waiting for a card
    pin: float  # seconds waiting for PIN entry
    result: float  # seconds a result screen stays


@dataclass(frozen=True)
class DevicesConfig:
    card_reader: str  # "sim" | "pcsc"
    keypad: str  # "console" | "gpio" | "evdev"
    display: str  # "console" | "luma" | "hd44780"
    printer: str  # "sim" | "usb" | "serial" | "network" | "file"
    reader_name: str  # PC/SC reader name pattern (regex or substring); "" = first reader
    reader_contactless: str  # "auto" | "yes" | "no": is the PC/SC reader a contactless one
    magstripe: str  # "none" | "serial" | "wedge": magnetic stripe reader backend
    magstripe_port: str  # serial port of a "serial" reader (a pyserial URL also works)
    magstripe_baudrate: int
    scanner: str  # "none" | "serial" | "wedge" (evdev keyboard) | "sim": the QR/barcode scanner
    scanner_port: str  # "serial": port or pyserial URL; "wedge": its /dev/input/by-id/*-event-kbd
    scanner_baudrate: int
    display_kind: str  # luma panel: "st7789" | "ili9341" | "ssd1306"
    display_port: int  # SPI port (st7789, ili9341) or I2C bus (ssd1306, hd44780)
    display_address: int  # I2C address (0 = the kind's usual: 0x3C OLED, 0x27 HD44780)
    display_rotate: int  # quarter turns, 0..3
    display_cols: int  # hd44780 characters per line (16 or 20)
    display_rows: int  # hd44780 lines (2 or 4)
    pin_factory: str  # gpiozero pin factory: "lgpio" (Pi 5 and newer OS) | "rpigpio" | "mock"
    keypad_rows: tuple[int, ...]  # BCM pins of a "gpio" matrix keypad's rows
    keypad_cols: tuple[int, ...]  # ... and columns (3 or 4)
    keypad_map: str  # one character per key, row by row (firmware/hal/keypad.py LABELS)
    keypad_debounce: float  # seconds
    keypad_device: str  # evdev path of a USB keypad ("evdev")
    buzzer_pin: int  # BCM pin, 0 = none
    led_green: int  # BCM pin, 0 = none
    led_red: int  # BCM pin, 0 = none


@dataclass(frozen=True)
class EmvConfig:
    capk_file: Path  # CA public keys for offline data authentication (TOML, see config/capk.toml)
    terminal_type: str  # 9F35, 2 digits
    capabilities: str  # 9F33, 6 hex digits
    floor_limit: int  # minor units; 0 = every chip transaction goes online
    random_threshold: int  # minor units, random selection threshold
    random_target_percent: int  # 0..99
    random_max_percent: int  # random_target_percent..99
    tac_denial: str  # 10 hex digits
    tac_online: str
    tac_default: str
    contactless: bool  # accept taps
    contactless_limit: int  # minor units; a tap above it is refused ("insert card")
    cvm_limit: int  # minor units; a tap above it needs a CVM (online PIN)
    fallback: bool  # allow a swipe after a failed chip read (field 22 = 80x)


@dataclass(frozen=True)
class OfflineConfig:
    """When the terminal may approve without the host (firmware/offline.py decides)."""

    mode: str  # "prefer-online" (offline approval within the caps) | "require-online" (never)
    max_amount: int  # minor units: the largest single offline approval
    max_count: int  # offline approvals waiting for the acquirer, at most
    max_total: int  # minor units: their total, at most
    max_age: float  # seconds: no new offline approval while the oldest waiting one is older


@dataclass(frozen=True)
class SafConfig:
    """Store-and-forward of advices and reversals (firmware/saf.py)."""

    retry_first: float  # seconds: the first retry delay after a failed send
    retry_max: float  # seconds: the backoff never waits longer
    expire_after: float  # seconds: a queued item this old expires with an operator alert
    batch: int  # advices marked as attempted per journal commit while draining


@dataclass(frozen=True)
class JournalConfig:
    """Journal retention (firmware/journal.py)."""

    keep_days: int  # settled batches older than this are deleted at the next settlement;
    # 0: every settled batch but the newest (its report can still be reprinted)


@dataclass(frozen=True)
class OperatorsConfig:
    """Operator login (firmware/operators.py)."""

    login: bool  # operators log in with number and password (false: [terminal] operator, cashier)
    seed: bool  # on a first start with no operators, create the documented default ones
    max_failures: int  # wrong passwords in a row before the operator is locked out
    lockout: float  # seconds an operator stays locked out


@dataclass(frozen=True)
class WalletConfig:
    """Wallet QR payments (firmware/wallet.py, firmware/qrpay.py)."""

    limit: int  # minor units: the largest single QR payment
    poll_interval: float  # seconds between status queries while the customer confirms
    timeout: float  # seconds: cancel the payment when not completed by then


@dataclass(frozen=True)
class FeesConfig:
    """Merchant service fees (MDR) in basis points (1/100 of a percent: 60 = 0.60%).
    A fee is computed per transaction and rounded half up to the minor unit."""

    card_rate: int
    wechat_rate: int
    alipay_rate: int
    unionpay_qr_rate: int


@dataclass(frozen=True)
class RiskConfig:
    """Transaction limits and velocity rules (firmware/limits.py); amounts in minor units,
    0 = no such limit."""

    max_chip: int  # per transaction, by entry mode
    max_contactless: int
    max_swipe: int
    max_manual: int
    max_qr: int
    daily_chip: int  # per calendar day (terminal local time), by entry mode ...
    daily_contactless: int
    daily_swipe: int
    daily_manual: int
    daily_qr: int
    daily_wechat: int  # ... and by wallet
    daily_alipay: int
    daily_unionpay_qr: int
    velocity_window: float  # seconds
    velocity_count: int  # more than this many small transactions in the window trips the rule
    velocity_small: int  # a transaction at or under this amount is "small"
    velocity_total: int  # more than this total in the window trips the rule
    velocity_action: str  # "confirm" (a supervisor confirms) | "refuse"


@dataclass(frozen=True)
class PrinterConfig:
    encoding: str  # "GB18030" | "GBK" | "UTF-8"
    width: int  # characters per line: 32 (58 mm paper) | 48 (80 mm)
    copies: str  # "both" | "merchant" | "customer"
    usb_vendor: int | None  # parsed from "0x0416"; None when ""
    usb_product: int | None
    serial_port: str  # "" when unused
    baudrate: int
    host: str  # "" when unused
    port: int
    file: Path
    timeout: float  # seconds: connect, write and status answer of a usb/serial/network printer
    retry: float  # seconds between status checks while the printer is out of paper or offline


@dataclass(frozen=True)
class ReceiptConfig:
    footer: str  # "" for none; may hold "\n"
    drawer: bool  # kick the cash drawer (ESC/POS pulse through the printer) on a cash payment
    qr: str  # QR code content under each receipt, "" = none; RECEIPT_QR_FIELDS placeholders
    logo: Path | None  # the merchant's logo (PNG/BMP, <= 384 px wide), printed at the top


@dataclass(frozen=True)
class BasketConfig:
    """The checkout basket (firmware/basket.py)."""

    products: Path | None  # product catalog (TOML), None = no catalog: plain amounts only
    discount_percent: int  # a discount above this percent needs a supervisor (0..100)
    discount_amount: int  # minor units: a discount above this amount needs a supervisor


@dataclass(frozen=True)
class SettlementConfig:
    """How the acquirer credits the merchant (firmware/reports.py); the batch-full rule
    (firmware/app_menu.py)."""

    mode: str  # "T+1" (next day, [fees] rates) | "D0" (real time, d0_rate + d0_fixed)
    d0_rate: int  # basis points charged per D0 transaction (replaces the [fees] rate)
    d0_fixed: int  # minor units charged per D0 transaction on top
    max_batch_txns: int = 500  # card and QR transactions an open batch may hold, then they
    # are refused until it is settled (1..999: the 0500's field 48 counts in 3 digits)


@dataclass(frozen=True)
class BackupConfig:
    """`kpos backup` / `kpos restore` (firmware/backup.py)."""

    dir: Path | None  # where copies go (e.g. a USB stick's mount point); None = not set
    keep: int  # copies kept; older ones are deleted after a good copy


@dataclass(frozen=True)
class SecurityConfig:
    tmk_file: Path | None  # TMK as hex (simulator, development); None: only `kpos keys load`
    # (firmware.keyload: a key stored in <data_dir>/keys/tmk wins over this file)
    vault_key_file: Path  # defaults to <data_dir>/keys/vault.key
    pin_format: int = 0  # ISO 9564 PIN block: 0 (TDES working keys) or 4 (AES working keys)
    mac: str = "retail"  # "retail" (TDES keys), "cmac" (AES keys), "none" (legacy simulator)


@dataclass(frozen=True)
class LogConfig:
    level: str  # "DEBUG" | "INFO" | "WARNING" | "ERROR"
    file: Path | None  # None: stderr only


@dataclass(frozen=True)
class SimConfig:
    catalog: Path  # defaults to the packaged firmware/sim/catalog.toml
    acquirer_port: int  # 0: pick a free port
    ledger: Path  # defaults to <data_dir>/acquirer.db


@dataclass(frozen=True)
class Config:
    path: Path
    terminal: TerminalConfig
    acquirer: AcquirerConfig
    limits: LimitsConfig
    timeouts: TimeoutsConfig
    devices: DevicesConfig
    emv: EmvConfig
    offline: OfflineConfig
    saf: SafConfig
    operators: OperatorsConfig
    wallet: WalletConfig
    fees: FeesConfig
    risk: RiskConfig
    printer: PrinterConfig
    receipt: ReceiptConfig
    basket: BasketConfig
    settlement: SettlementConfig
    backup: BackupConfig
    security: SecurityConfig
    log: LogConfig
    journal: JournalConfig = JournalConfig(keep_days=90)
    sim: SimConfig | None = None  # None when the file has no [sim] section


# Section name -> its dataclass (the schema). Order is the build order.
_SECTIONS: dict[str, type] = {
    "terminal": TerminalConfig, "acquirer": AcquirerConfig, "limits": LimitsConfig,
    "timeouts": TimeoutsConfig, "devices": DevicesConfig, "emv": EmvConfig, "offline": OfflineConfig, "saf": SafConfig,
    "operators": OperatorsConfig, "wallet": WalletConfig, "fees": FeesConfig, "risk": RiskConfig,
    "printer": PrinterConfig,
    "receipt": ReceiptConfig, "basket": BasketConfig, "settlement": SettlementConfig,
    "backup": BackupConfig, "security": SecurityConfig, "log": LogConfig,
    "journal": JournalConfig, "sim": SimConfig,
}
_REQUIRED: Any = object()  # default meaning "the key must be present"
_HOST = r"[A-Za-z0-9._:-]{1,253}"
_HOST_RULE = "a host name or IP address"


def _kind(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table",
             list: "array"}
    return names.get(type(value), type(value).__name__)


def _alts(choices: tuple) -> str:
    return ", ".join(repr(c) for c in choices)


def _did_you_mean(word: str, known: list[str], fmt: str = "{!r}") -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {fmt.format(close[0])}?)" if close else ""


def _num(x: float) -> str:
    return f"{x:g}"


def _resolve(base: Path, value: str) -> Path:
    """Absolute, normalised path; relative values are taken from `base`. No symlinks followed."""
    return Path(os.path.normpath(base / Path(value).expanduser()))


class _Section:
    """One [section]'s raw values, read key by key with the check at the read."""

    def __init__(self, where: str, name: str, raw: dict[str, Any], base: Path):
        self.where, self.name, self.raw, self.base = where, name, raw, base
        known = [f.name for f in fields(_SECTIONS[name])]
        for key in raw:
            if key not in known:
                raise ConfigError(f"{where}: [{name}] unknown key {key!r}"
                                  f"{_did_you_mean(key, known)}")

    def error(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.where}: [{self.name}] {key}: {msg}")

    def _get(self, key: str, default: Any, types: tuple[type, ...], kind: str) -> Any:
        if key not in self.raw:
            if default is _REQUIRED:
                raise self.error(key, "required key missing")
            return default
        value = self.raw[key]
        if not isinstance(value, types) or isinstance(value, bool) != (bool in types):
            raise self.error(key, f"must be {kind}, got {_kind(value)} {value!r}")
        return value

    def str_(self, key: str, default: Any = _REQUIRED, *, choices: tuple = (),
             pattern: str = "", rule: str = "", maxlen: int = 0, need: str = "",
             multiline: bool = False) -> str:
        """A string. `pattern` must match unless the value and the default are both "";
        `need` says why it must not be empty (e.g. 'tls = true'), "" if it may be."""
        value = self._get(key, default, (str,), "a string")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {_alts(choices)}, got {value!r}")
        if need and not value:
            raise self.error(key, f"must be set when {need}")
        if pattern and (value or default != "") and not re.fullmatch(pattern, value):
            raise self.error(key, f"must be {rule}, got {value!r}")
        if maxlen and len(value) > maxlen:
            raise self.error(key, f"must be at most {maxlen} characters, got {len(value)}")
        if not all(ch.isprintable() or (multiline and ch == "\n") for ch in value):
            raise self.error(key, f"must not hold control characters, got {value!r}")
        return value

    def text(self, key: str, default: Any = _REQUIRED, *, minlen: int, maxlen: int) -> str:
        """Free text (any script), minlen..maxlen characters, not only blanks when minlen."""
        value = self.str_(key, default, maxlen=maxlen)
        if len(value.strip()) < minlen:
            raise self.error(key, f"must be {minlen}..{maxlen} characters, got {value!r}")
        return value

    def int_(self, key: str, default: Any = _REQUIRED, lo: int | None = None,
             hi: int | None = None, *, choices: tuple = (), span: str = "") -> int:
        value = self._get(key, default, (int,), "an integer")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {_alts(choices)}, got {value!r}")
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise self.error(key, f"must be {span or f'{lo}..{hi}'}, got {value}")
        return value

    def float_(self, key: str, default: Any, lo: float, hi: float, *,
               lo_open: bool = False) -> float:
        """A number (TOML int or float) in lo..hi; lo excluded when lo_open."""
        value = self._get(key, default, (int, float), "a number")
        ok = (value > lo if lo_open else value >= lo) and value <= hi  # False for nan
        if not ok:
            span = f"> {_num(lo)} and <= {_num(hi)}" if lo_open else f"{_num(lo)}..{_num(hi)}"
            raise self.error(key, f"must be {span}, got {value!r}")
        return float(value)

    def bool_(self, key: str, default: Any = _REQUIRED) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def path(self, key: str, default: Any = _REQUIRED, *, need: str = "") -> Path | None:
        """A path string (or os.PathLike from overrides), resolved; "" -> None unless needed."""
        value = os.fspath(self._get(key, default, (str, os.PathLike), "a path string"))
        if not value:
            if need or default is _REQUIRED:
                raise self.error(key, f"must be set when {need}" if need else "must not be empty")
            return None
        return _resolve(self.base, value)


def _terminal(s: _Section) -> TerminalConfig:
    return TerminalConfig(
        merchant_id=s.str_("merchant_id", pattern=r"[A-Za-z0-9]{15}",
                           rule="exactly 15 letters or digits"),
        terminal_id=s.str_("terminal_id", pattern=r"[A-Za-z0-9]{8}",
                           rule="exactly 8 letters or digits"),
        merchant_name=s.text("merchant_name", minlen=1, maxlen=40),
        merchant_name_zh=s.text("merchant_name_zh", "", minlen=0, maxlen=40),
        currency=s.int_("currency", 156, choices=tuple(CURRENCIES)),
        operator=s.str_("operator", "01", pattern=r"[0-9]{2}", rule="2 digits"),
        data_dir=_data_dir(s),
        language=s.str_("language", "en", choices=("en", "zh")),
    )


def _data_dir(s: _Section) -> Path:
    """The state directory: every other state path hangs off it, so "" is an error."""
    data_dir = s.path("data_dir", "/var/lib/kpos")
    if data_dir is None:
        raise s.error("data_dir", "must not be empty")
    return data_dir


def _acquirer(s: _Section) -> AcquirerConfig:
    host = s.str_("host", pattern=_HOST, rule=_HOST_RULE)
    port = s.int_("port", _REQUIRED, 1, 65535)
    connect_timeout = s.float_("connect_timeout", 5.0, 0, 60, lo_open=True)
    response_timeout = s.float_("response_timeout", 30.0, 0, 120, lo_open=True)
    tls = s.bool_("tls", False)
    need = "tls = true" if tls else ""
    return AcquirerConfig(
        host=host, port=port, connect_timeout=connect_timeout,
        response_timeout=response_timeout, tls=tls,
        ca_file=s.path("ca_file", "", need=need),
        cert_file=s.path("cert_file", "", need=need),
        key_file=s.path("key_file", "", need=need),
        tls_server_name=s.str_("tls_server_name", "", pattern=_HOST, rule=_HOST_RULE),
        pin_sha256=s.str_("pin_sha256", "", pattern=r"[0-9a-fA-F]{64}",
                          rule="64 hex digits (SHA-256)").lower(),
        echo_interval=s.float_("echo_interval", 60.0, 1, 3600),
        signon_interval=s.float_("signon_interval", 86_400.0, 60, 7 * 86_400),
    )


def _limits(s: _Section) -> LimitsConfig:
    pin_min = s.int_("pin_min", 4, 4, 12)
    return LimitsConfig(
        max_amount=s.int_("max_amount", 9_999_999, 1, 999_999_999_999),
        pin_min=pin_min,
        pin_max=s.int_("pin_max", 12, pin_min, 12, span=f"pin_min ({pin_min})..12"),
    )


def _timeouts(s: _Section) -> TimeoutsConfig:
    return TimeoutsConfig(
        card=s.float_("card", 60.0, 5, 300),
        pin=s.float_("pin", 60.0, 5, 300),
        result=s.float_("result", 5.0, 1, 60),
    )


def _devices(s: _Section) -> DevicesConfig:
    magstripe = s.str_("magstripe", "none", choices=("none", "serial", "wedge"))
    scanner = s.str_("scanner", "none", choices=("none", "serial", "wedge", "sim"))
    keypad = s.str_("keypad", choices=("console", "gpio", "evdev"))
    rows = _pins(s, "keypad_rows", "5,6,13,19", (4,))
    cols = _pins(s, "keypad_cols", "26,16,20,21", (3, 4))
    return DevicesConfig(  # no defaults: simulation is never picked silently
        card_reader=s.str_("card_reader", choices=("sim", "pcsc")),
        keypad=keypad,
        display=s.str_("display", choices=("console", "luma", "hd44780")),
        printer=s.str_("printer", choices=("sim", "usb", "serial", "network", "file")),
        reader_name=s.str_("reader_name", "", maxlen=200),
        reader_contactless=s.str_("reader_contactless", "auto", choices=("auto", "yes", "no")),
        magstripe=magstripe,
        magstripe_port=s.str_("magstripe_port", "", maxlen=200,
                              need='[devices] magstripe = "serial"' if magstripe == "serial" else ""),
        magstripe_baudrate=s.int_("magstripe_baudrate", 9600, choices=_BAUDS),
        scanner=scanner,
        scanner_port=s.str_("scanner_port", "", maxlen=200,
                            need=f'[devices] scanner = "{scanner}"'
                            if scanner in ("serial", "wedge") else ""),
        scanner_baudrate=s.int_("scanner_baudrate", 9600, choices=_BAUDS),
        display_kind=s.str_("display_kind", "ssd1306", choices=("st7789", "ili9341", "ssd1306")),
        display_port=s.int_("display_port", 1, 0, 10),
        display_address=s.int_("display_address", 0, 0, 0x77),
        display_rotate=s.int_("display_rotate", 0, 0, 3),
        display_cols=s.int_("display_cols", 20, choices=(16, 20)),
        display_rows=s.int_("display_rows", 4, choices=(2, 4)),
        pin_factory=s.str_("pin_factory", "lgpio", choices=("lgpio", "rpigpio", "mock")),
        keypad_rows=rows,
        keypad_cols=cols,
        keypad_map=s.str_("keypad_map", "123A456B789C*0#D"[:len(rows) * len(cols)]
                          if len(cols) == 4 else "123456789*0#"),
        keypad_debounce=s.float_("keypad_debounce", 0.02, 0.005, 0.2),
        keypad_device=s.str_("keypad_device", "", maxlen=200,
                             need='[devices] keypad = "evdev"' if keypad == "evdev" else ""),
        buzzer_pin=s.int_("buzzer_pin", 0, 0, 27),
        led_green=s.int_("led_green", 0, 0, 27),
        led_red=s.int_("led_red", 0, 0, 27),
    )


_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _pins(s: _Section, key: str, default: str, counts: tuple[int, ...]) -> tuple[int, ...]:
    """A list of BCM GPIO pins written "5,6,13,19": 2..27, distinct, `counts` of them."""
    text = s.str_(key, default, pattern=r"[0-9]{1,2}(,[0-9]{1,2})*",
                  rule="BCM pin numbers separated by commas, e.g. \"5,6,13,19\"")
    pins = tuple(int(p) for p in text.split(","))
    if len(pins) not in counts or len(set(pins)) != len(pins) or not all(2 <= p <= 27 for p in pins):
        raise s.error(key, f"must be {' or '.join(map(str, counts))} distinct pins 2..27, got {text!r}")
    return pins


_HEX = {5: (r"[0-9A-Fa-f]{10}", "10 hex digits"), 3: (r"[0-9A-Fa-f]{6}", "6 hex digits")}


def _emv(s: _Section) -> EmvConfig:
    def hexcode(key: str, default: str, size: int) -> str:
        pattern, rule = _HEX[size]
        return s.str_(key, default, pattern=pattern, rule=rule).upper()

    money = (0, 999_999_999_999)
    target = s.int_("random_target_percent", 0, 0, 99)
    contactless_limit = s.int_("contactless_limit", 500_000, *money)
    return EmvConfig(
        capk_file=s.path("capk_file", "capk.toml"),
        terminal_type=s.str_("terminal_type", "22", choices=("21", "22", "23", "24", "25", "26")),
        capabilities=hexcode("capabilities", "E0E8C0", 3),
        floor_limit=s.int_("floor_limit", 0, *money),
        random_threshold=s.int_("random_threshold", 0, *money),
        random_target_percent=target,
        random_max_percent=s.int_("random_max_percent", target, target, 99,
                                  span=f"random_target_percent ({target})..99"),
        tac_denial=hexcode("tac_denial", "0010000000", 5),
        tac_online=hexcode("tac_online", "D84004F800", 5),
        tac_default=hexcode("tac_default", "D84004A800", 5),
        contactless=s.bool_("contactless", True),
        contactless_limit=contactless_limit,
        cvm_limit=s.int_("cvm_limit", 100_000, 0, contactless_limit,
                         span=f"0..contactless_limit ({contactless_limit})"),
        fallback=s.bool_("fallback", True),
    )


def _offline(s: _Section) -> OfflineConfig:
    return OfflineConfig(
        mode=s.str_("mode", "prefer-online", choices=("prefer-online", "require-online")),
        max_amount=s.int_("max_amount", 30_000, 0, 999_999_999_999),
        max_count=s.int_("max_count", 50, 0, 10_000),
        max_total=s.int_("max_total", 300_000, 0, 999_999_999_999),
        max_age=s.float_("max_age", 86_400.0, 0, 30 * 86_400, lo_open=True),
    )


def _saf(s: _Section) -> SafConfig:
    retry_first = s.float_("retry_first", 5.0, 0, 3600, lo_open=True)
    return SafConfig(
        retry_first=retry_first,
        retry_max=s.float_("retry_max", 300.0, retry_first, 86_400),
        expire_after=s.float_("expire_after", 259_200.0, 0, 30 * 86_400, lo_open=True),
        batch=s.int_("batch", 50, 1, 1000),
    )


def _journal(s: _Section) -> JournalConfig:
    return JournalConfig(keep_days=s.int_("keep_days", 90, 0, 3650))


def _operators(s: _Section) -> OperatorsConfig:
    return OperatorsConfig(
        login=s.bool_("login", True),
        seed=s.bool_("seed", False),
        max_failures=s.int_("max_failures", 5, 1, 20),
        lockout=s.float_("lockout", 900.0, 0, 86_400, lo_open=True),
    )


def _wallet(s: _Section) -> WalletConfig:
    poll = s.float_("poll_interval", 3.0, 0, 60, lo_open=True)
    return WalletConfig(
        limit=s.int_("limit", 500_000, 1, 999_999_999_999),
        poll_interval=poll,
        timeout=s.float_("timeout", 60.0, poll, 600),
    )


def _fees(s: _Section) -> FeesConfig:
    def rate(key: str, default: int) -> int:
        return s.int_(key, default, 0, 10_000)

    return FeesConfig(card_rate=rate("card_rate", 60), wechat_rate=rate("wechat_rate", 38),
                      alipay_rate=rate("alipay_rate", 38),
                      unionpay_qr_rate=rate("unionpay_qr_rate", 38))


def _risk(s: _Section) -> RiskConfig:
    def money(key: str, default: int = 0) -> int:
        return s.int_(key, default, 0, 999_999_999_999)

    return RiskConfig(
        max_chip=money("max_chip"), max_contactless=money("max_contactless"),
        max_swipe=money("max_swipe"), max_manual=money("max_manual"),
        max_qr=money("max_qr"),
        daily_chip=money("daily_chip"), daily_contactless=money("daily_contactless"),
        daily_swipe=money("daily_swipe"), daily_manual=money("daily_manual"),
        daily_qr=money("daily_qr"), daily_wechat=money("daily_wechat"),
        daily_alipay=money("daily_alipay"), daily_unionpay_qr=money("daily_unionpay_qr"),
        velocity_window=s.float_("velocity_window", 600.0, 0, 86_400, lo_open=True),
        velocity_count=s.int_("velocity_count", 0, 0, 10_000),
        velocity_small=money("velocity_small", 1_000),
        velocity_total=money("velocity_total"),
        velocity_action=s.str_("velocity_action", "confirm", choices=("confirm", "refuse")),
    )


def _usb_id(s: _Section, key: str, need: str) -> int | None:
    value = s.str_(key, "", pattern=r"0x[0-9A-Fa-f]{1,4}", rule="a hex USB id like '0x0416'",
                   need=need)
    return int(value, 16) if value else None


def _printer(s: _Section, devices: DevicesConfig) -> PrinterConfig:
    backend = devices.printer

    def need(name: str) -> str:
        return f'[devices] printer = "{name}"' if backend == name else ""

    return PrinterConfig(
        encoding=s.str_("encoding", "GB18030", choices=("GB18030", "GBK", "UTF-8")),
        width=s.int_("width", 32, choices=(32, 48)),
        copies=s.str_("copies", "both", choices=("both", "merchant", "customer")),
        usb_vendor=_usb_id(s, "usb_vendor", need("usb")),
        usb_product=_usb_id(s, "usb_product", need("usb")),
        serial_port=s.str_("serial_port", "", need=need("serial")),
        baudrate=s.int_("baudrate", 9600, choices=_BAUDS),
        host=s.str_("host", "", pattern=_HOST, rule=_HOST_RULE, need=need("network")),
        port=s.int_("port", 9100, 1, 65535),
        file=s.path("file", "/dev/usb/lp0", need=need("file")),
        timeout=s.float_("timeout", 2.0, 0.1, 30),
        retry=s.float_("retry", 5.0, 0.1, 300),
    )


RECEIPT_QR_FIELDS = ("merchant_id", "terminal_id", "batch", "stan", "rrn", "amount")


def _receipt(s: _Section) -> ReceiptConfig:
    qr = s.str_("qr", "", maxlen=300)
    try:
        qr.format(**{name: "0" for name in RECEIPT_QR_FIELDS})
    except (KeyError, IndexError, ValueError) as exc:
        raise s.error("qr", f"placeholders may be {{{'}, {'.join(RECEIPT_QR_FIELDS)}}}, "
                            f"got {qr!r} ({exc})") from None
    return ReceiptConfig(footer=s.str_("footer", "", maxlen=200, multiline=True),
                         drawer=s.bool_("drawer", False), qr=qr, logo=s.path("logo", ""))


def _basket(s: _Section) -> BasketConfig:
    return BasketConfig(
        products=s.path("products", ""),
        discount_percent=s.int_("discount_percent", 10, 0, 100),
        discount_amount=s.int_("discount_amount", 5_000, 0, 999_999_999_999),
    )


def _settlement(s: _Section) -> SettlementConfig:
    return SettlementConfig(
        mode=s.str_("mode", "T+1", choices=("T+1", "D0")),
        d0_rate=s.int_("d0_rate", 70, 0, 10_000),
        d0_fixed=s.int_("d0_fixed", 0, 0, 100_000),
        max_batch_txns=s.int_("max_batch_txns", 500, 1, 999),
    )


def _backup(s: _Section) -> BackupConfig:
    return BackupConfig(dir=s.path("dir", ""), keep=s.int_("keep", 7, 1, 365))


def _security(s: _Section, terminal: TerminalConfig) -> SecurityConfig:
    pin_format = s.int_("pin_format", 0, choices=(0, 4))
    mac = s.str_("mac", "retail", choices=("retail", "cmac", "none"))
    rule = {0: "retail", 4: "cmac"}[pin_format]  # the MAC rule of the working keys' cipher
    if mac not in (rule, "none"):
        raise s.error("mac", f"must be {rule!r} or 'none' with pin_format = {pin_format}, got {mac!r}")
    return SecurityConfig(
        tmk_file=s.path("tmk_file", ""),
        vault_key_file=s.path("vault_key_file", "") or terminal.data_dir / "keys" / "vault.key",
        pin_format=pin_format,
        mac=mac,
    )


def _log(s: _Section) -> LogConfig:
    return LogConfig(
        level=s.str_("level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        file=s.path("file", ""),
    )


def _sim(s: _Section, terminal: TerminalConfig) -> SimConfig:
    from firmware.sim.catalog import default_catalog_path  # only simulator configs need it

    return SimConfig(
        catalog=s.path("catalog", "") or default_catalog_path(),
        acquirer_port=s.int_("acquirer_port", 0, 0, 65535),
        ledger=s.path("ledger", "") or terminal.data_dir / "acquirer.db",
    )


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: TOML syntax error: {exc}") from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`, tables merged key by key; neither input is changed."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_sections(raw: dict[str, Any], where: str) -> None:
    for name, value in raw.items():
        if name not in _SECTIONS:
            hint = _did_you_mean(name, list(_SECTIONS), "[{}]")
            raise ConfigError(f"{where}: unknown section [{name}]{hint}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {_kind(value)}")


def load_config(path: str | Path, *, overrides: dict | None = None) -> Config:
    """Read, merge `overrides` (nested dict) over the file, validate, freeze. Blocking."""
    where = str(path)
    path = Path(os.path.abspath(path))
    raw = _merge(_read_toml(path, where), overrides or {})
    _check_sections(raw, where)

    def section(name: str) -> _Section:
        return _Section(where, name, raw.get(name, {}), path.parent)

    terminal = _terminal(section("terminal"))
    devices = _devices(section("devices"))
    cfg = Config(
        path=path, terminal=terminal, acquirer=_acquirer(section("acquirer")),
        limits=_limits(section("limits")), timeouts=_timeouts(section("timeouts")),
        devices=devices, emv=_emv(section("emv")), offline=_offline(section("offline")),
        saf=_saf(section("saf")), operators=_operators(section("operators")),
        wallet=_wallet(section("wallet")), fees=_fees(section("fees")), risk=_risk(section("risk")),
        printer=_printer(section("printer"), devices),
        receipt=_receipt(section("receipt")), basket=_basket(section("basket")),
        settlement=_settlement(section("settlement")), backup=_backup(section("backup")),
        security=_security(section("security"), terminal),
        log=_log(section("log")), journal=_journal(section("journal")),
        sim=_sim(section("sim"), terminal) if "sim" in raw else None,
    )
    log.info("config %s: terminal %s merchant %s, acquirer %s:%d%s", where,
             terminal.terminal_id, terminal.merchant_id, cfg.acquirer.host, cfg.acquirer.port,
             " (simulator)" if cfg.sim else "")
    return cfg


def read_tmk(cfg: Config) -> bytes:
    """The terminal master key from security.tmk_file: 32 or 48 hex digits (16 or 24 bytes).

    Blank lines and lines starting with '#' are skipped. Blocking file read. Errors name
    the file and never echo the file's content. A file readable by every user is logged
    as a warning on a device config (one without [sim]).
    """
    path = cfg.security.tmk_file
    if path is None:
        raise ConfigError(f"{cfg.path}: [security] tmk_file: not set (a device loads its key "
                          "with `kpos keys load`)")
    where = f"{path}: [security] tmk_file"
    try:
        mode = path.stat().st_mode
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not ASCII text") from exc
    lines = (line.strip() for line in text.splitlines())
    digits = "".join(line for line in lines if line and not line.startswith("#"))
    if not re.fullmatch(r"[0-9A-Fa-f]*", digits):
        raise ConfigError(f"{where}: holds characters that are not hex digits")
    if len(digits) not in (32, 48):
        raise ConfigError(f"{where}: must hold 32 or 48 hex digits, found {len(digits)}")
    if cfg.sim is None and mode & 0o004:
        log.warning("%s: terminal master key file is readable by every user; chmod 600 it", path)
    return bytes.fromhex(digits)
