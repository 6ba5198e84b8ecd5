"""Terminal master key (TMK): loaded from a TR-31 key block, stored sealed, read at start.

Contract: plain functions for `kpos keys` and the terminal's start; blocking file I/O
(small files), main thread or a worker. The TMK arrives as a TR-31 key block (psec.tr31)
under a key block protection key (KBPK, the key-injection officer's transport key: a hex
file, or clear components XORed, each checked against the check value on its form).
A block is accepted only when its MAC verifies under the KBPK and its header says: key
usage K0 (key encryption / master key), the algorithm the config needs (pin_format 0:
TDES "T" in a version B block; pin_format 4: AES "A" in a version D block), mode of use
B or D (the terminal decrypts working keys), exportability N or E (never S), and a key
length of that algorithm. Anything else raises KeyLoadError; nothing is stored then.
The TMK is stored at <data_dir>/keys/tmk (TMK_NAME), mode 0600, written atomically,
sealed under the device vault key (firmware.vault) with its metadata as associated data:
the file alone (a copied SD card file) does not give the key. Which key the terminal
uses (`terminal_master_key`): the stored one when present, else the hex `[security]
tmk_file` (simulator and development configs), else a KeyLoadError saying how to load one.
Key check values (KCV, 4 bytes shown as 8 hex digits): TDES: TDES-ECB of 8 zero bytes;
AES: AES-CMAC of 16 zero bytes. Errors and output never contain a clear key or component.
Key change (docs/acquirer-protocol.md §3): a response whose 60.3 is a sign-on code
(KEY_CHANGE_CODES) to a request that was not a sign-on asks the terminal to sign on again.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from cryptography.utils import CryptographyDeprecationWarning
from psec import tr31

from firmware import keys
from firmware.config import Config, read_tmk
from firmware.files import write_private
from firmware.mac import aes_cmac
from firmware.vault import Vault, VaultError

__all__ = [
    "KeyLoadError", "StoredTmk", "TMK_NAME", "KEY_CHANGE_CODES", "tmk_algorithm", "check_value",
    "unwrap_tmk", "kbpk_from_components", "ask_components", "read_hex_key", "store_tmk",
    "stored_tmk", "open_stored_tmk", "terminal_master_key", "make_test_block",
    "key_change_requested", "load_command", "status_command", "make_test_block_command",
]

TMK_NAME = "tmk"  # <data_dir>/keys/tmk
USAGE_KEK = "K0"  # TR-31 key usage: key encryption or wrapping (the master key)
MODES = ("B", "D")  # both directions, or decrypt / unwrap only
EXPORTABLE = ("N", "E")  # not exportable; exportable under a trusted key only
VERSION = {"T": "B", "A": "D"}  # algorithm -> the TR-31 key block version that carries it
KEY_LENGTHS = {"T": (16, 24), "A": (16, 24, 32)}
NAMES = {"T": "TDES", "A": "AES"}
KEY_CHANGE_CODES = ("001", "003", "004")  # 60.3 sign-on codes (FIELD-NOTES: UnionPay 60.3)
_SIGNON_60_3 = slice(8, 11)
_AAD = b"kpos tmk v1 "  # + the metadata JSON: a seal opens only with its own metadata


class KeyLoadError(Exception):
    """A key could not be loaded, stored or read; `reason` is short and holds no key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StoredTmk:
    """What `kpos keys status` shows of the stored TMK (never the key)."""

    algorithm: str  # "T" | "A"
    length: int  # bytes
    kcv: str  # 8 hex digits
    loaded_at: str  # ISO 8601, local time of the load


def tmk_algorithm(cfg: Config) -> str:
    """The TR-31 algorithm the config's TMK must have: "T" (pin_format 0) or "A" (4)."""
    return "A" if cfg.security.pin_format == 4 else "T"


def check_value(key: bytes, algorithm: str) -> str:
    """The key's KCV as 8 upper-case hex digits (see the module docstring)."""
    raw = aes_cmac(key, bytes(16)) if algorithm == "A" else keys.kcv(key)
    return raw[:keys.KCV_LEN].hex().upper()


def _psec(call: Callable, *args):
    """psec.tr31's TDES goes through cryptography's deprecated names: silence that only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return call(*args)


def unwrap_tmk(kbpk: bytes, block: str, algorithm: str) -> bytes:
    """The TMK from a TR-31 key block, after every check of the module docstring."""
    block = block.strip()
    try:
        header, key = _psec(tr31.unwrap, bytes(kbpk), block)
    except tr31.HeaderError:
        raise KeyLoadError("key block header is not valid TR-31") from None
    except tr31.KeyBlockError as exc:
        if "MAC" in str(exc) and "match" in str(exc):
            raise KeyLoadError("key block authentication failed") from None
        raise KeyLoadError("key block malformed or key block protection key unusable") from None
    want = (("key usage", header.key_usage, (USAGE_KEK,)),
            ("algorithm", header.algorithm, (algorithm,)),
            ("key block version", header.version_id, (VERSION[algorithm],)),
            ("mode of use", header.mode_of_use, MODES),
            ("exportability", header.exportability, EXPORTABLE))
    for what, value, allowed in want:
        if value not in allowed:
            raise KeyLoadError(f"{what} {value}, expected {' or '.join(allowed)}"
                               f" (a {NAMES[algorithm]} master key, usage K0)")
    if len(key) not in KEY_LENGTHS[algorithm]:
        raise KeyLoadError(f"key length {len(key)} bytes, expected "
                           f"{' or '.join(map(str, KEY_LENGTHS[algorithm]))} for {NAMES[algorithm]}")
    return key


def kbpk_from_components(components: Sequence[bytes], form_kcvs: Sequence[str],
                         algorithm: str) -> bytes:
    """XOR of clear KBPK components, each first checked against the KCV on its form
    (6 or more hex digits, a prefix of the 8 shown)."""
    if len(components) < 2 or len(form_kcvs) != len(components):
        raise KeyLoadError("at least 2 components, each with the check value on its form")
    size = len(components[0])
    kbpk = bytes(size)
    for number, (part, form) in enumerate(zip(components, form_kcvs), 1):
        if len(part) != size or size not in KEY_LENGTHS[algorithm]:
            raise KeyLoadError(f"component {number}: {len(part)} bytes, all must be "
                               f"{' or '.join(map(str, KEY_LENGTHS[algorithm]))}")
        form = form.strip().upper()
        if len(form) < 6 or not check_value(part, algorithm).startswith(form):
            raise KeyLoadError(f"component {number}: check value does not match its form")
        kbpk = bytes(a ^ b for a, b in zip(kbpk, part))
    return kbpk


def ask_components(count: int, algorithm: str, *, secret: Callable[[str], str],
                   ask: Callable[[str], str], say: Callable[[str], None]) -> bytes:
    """Read `count` components without echo (`secret`, e.g. getpass), show each one's KCV
    and ask for the KCV on its form (`ask`); the XORed KBPK (kbpk_from_components)."""
    parts, forms = [], []
    for number in range(1, count + 1):
        part = _hex_key(secret(f"KBPK component {number} of {count} (hex, not shown): "),
                        f"component {number}")
        say(f"component {number} KCV: {check_value(part, algorithm) if len(part) in KEY_LENGTHS[algorithm] else '?'}")
        parts.append(part)
        forms.append(ask(f"KCV on the form of component {number}: "))
    return kbpk_from_components(parts, forms, algorithm)


def _hex_key(text: str, what: str) -> bytes:
    digits = "".join(line.strip() for line in text.splitlines()
                     if line.strip() and not line.strip().startswith("#"))
    digits = re.sub(r"\s", "", digits)
    if not digits or len(digits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        raise KeyLoadError(f"{what}: not an even number of hex digits")  # never echo it
    return bytes.fromhex(digits)


def read_hex_key(path: Path, what: str = "key file") -> bytes:
    """A key from a hex text file ('#' lines and whitespace skipped)."""
    try:
        return _hex_key(Path(path).read_text("ascii"), f"{path}: {what}")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyLoadError(f"{path}: {what}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _tmk_path(cfg: Config) -> Path:
    return cfg.terminal.data_dir / "keys" / TMK_NAME


def _aad(meta: dict) -> bytes:
    return _AAD + json.dumps(meta, sort_keys=True).encode()


def store_tmk(cfg: Config, tmk: bytes, algorithm: str, *, now: datetime) -> StoredTmk:
    """Seal `tmk` under the vault key and write it atomically (mode 0600)."""
    info = StoredTmk(algorithm, len(tmk), check_value(tmk, algorithm),
                     now.isoformat(timespec="seconds"))
    meta = info.__dict__.copy()
    path = _tmk_path(cfg)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        vault = Vault.open(cfg.security.vault_key_file)
        text = json.dumps({**meta, "sealed": vault.seal(tmk, aad=_aad(meta)).hex()})
        write_private(path, text.encode())
    except (OSError, VaultError) as exc:
        raise KeyLoadError(f"{path}: cannot store: {getattr(exc, 'strerror', None) or exc}") from None
    return info


def _read_stored(cfg: Config) -> tuple[StoredTmk, bytes] | None:
    path = _tmk_path(cfg)
    try:
        doc = json.loads(path.read_text("ascii"))
        info = StoredTmk(doc["algorithm"], int(doc["length"]), doc["kcv"], doc["loaded_at"])
        return info, bytes.fromhex(doc["sealed"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyLoadError(f"{path}: stored master key unreadable ({type(exc).__name__})") from None


def stored_tmk(cfg: Config) -> StoredTmk | None:
    """The stored TMK's metadata (no unsealing), None when none is stored."""
    found = _read_stored(cfg)
    return found[0] if found else None


def open_stored_tmk(cfg: Config) -> bytes | None:
    """The stored TMK, unsealed and checked against its KCV; None when none is stored."""
    found = _read_stored(cfg)
    if found is None:
        return None
    info, sealed = found
    try:
        tmk = Vault.open(cfg.security.vault_key_file).open_sealed(sealed, aad=_aad(info.__dict__))
    except VaultError:
        raise KeyLoadError(f"{_tmk_path(cfg)}: stored master key does not open "
                           "(another device's vault key, or tampered)") from None
    if check_value(tmk, info.algorithm) != info.kcv:
        raise KeyLoadError(f"{_tmk_path(cfg)}: stored master key fails its check value")
    return tmk


def terminal_master_key(cfg: Config) -> bytes:
    """The TMK the terminal uses: stored (kpos keys load) first, else [security] tmk_file."""
    tmk = open_stored_tmk(cfg)
    if tmk is not None:
        return tmk
    if cfg.security.tmk_file is None:
        raise KeyLoadError("no terminal master key: load one with `kpos keys load`")
    return read_tmk(cfg)


def make_test_block(tmk: bytes, algorithm: str = "T", kbpk: bytes | None = None,
                    *, usage: str = USAGE_KEK) -> tuple[str, bytes]:
    """TEST TOOL: `tmk` in a TR-31 block (usage K0, mode D, not exportable) under `kbpk`
    (random when None, the length of `tmk`): (block, kbpk)."""
    kbpk = kbpk or (keys.random_key() if algorithm == "T" else os.urandom(32))
    header = tr31.Header(VERSION[algorithm], usage, algorithm, "D", "00", "N")
    return _psec(tr31.wrap, kbpk, header, tmk), kbpk


def key_change_requested(request: dict, response: dict) -> bool:
    """True when the acquirer asks for a new sign-on (module docstring)."""
    return (str(request.get("60", ""))[_SIGNON_60_3] not in KEY_CHANGE_CODES
            and str(response.get("60", ""))[_SIGNON_60_3] in KEY_CHANGE_CODES)


# ---- kpos keys ---------------------------------------------------------------------------

def load_command(cfg: Config, block: str, kbpk: bytes, *, now: datetime,
                 say: Callable[[str], None] = print) -> int:
    """`kpos keys load`: check, store, show the KCV. 0 loaded, 1 refused (reason shown)."""
    algorithm = tmk_algorithm(cfg)
    try:
        tmk = unwrap_tmk(kbpk, block, algorithm)
        info = store_tmk(cfg, tmk, algorithm, now=now)
    except KeyLoadError as exc:
        say(f"refused: {exc.reason}; nothing stored")
        return 1
    say(f"terminal master key loaded: {NAMES[algorithm]} {info.length} bytes, KCV {info.kcv}")
    say(f"stored sealed in {_tmk_path(cfg)}")
    return 0


def status_command(cfg: Config, *, say: Callable[[str], None] = print) -> int:
    """`kpos keys status`: which master key the terminal uses, its KCV, when loaded."""
    try:
        info = stored_tmk(cfg)
        if info is not None:
            open_stored_tmk(cfg)  # it must open on this device
            say(f"tmk: stored {_tmk_path(cfg)}: {NAMES.get(info.algorithm, '?')} {info.length} "
                f"bytes, KCV {info.kcv}, loaded {info.loaded_at} (in use)")
        if cfg.security.tmk_file is not None:
            tmk = read_tmk(cfg)
            use = "in use" if info is None else "not used: the stored key wins"
            say(f"tmk_file: {cfg.security.tmk_file}: {len(tmk)} bytes, KCV "
                f"{check_value(tmk, 'T')} ({use})")
        elif info is None:
            say("tmk: none (load one with `kpos keys load`)")
            return 1
    except Exception as exc:  # KeyLoadError, ConfigError: both say what is wrong
        say(f"tmk: {getattr(exc, 'reason', exc)}")
        return 1
    say("working keys: delivered at each sign-on, never stored (see the terminal's log)")
    return 0


def make_test_block_command(cfg: Config, out: Path, kbpk_out: Path, *,
                            say: Callable[[str], None] = print) -> int:
    """`kpos keys make-test-block`: the simulator's TMK for this terminal id in a TR-31 block
    (out) under a new random KBPK (kbpk_out, hex, 0600). TEST KEYS ONLY."""
    from firmware.sim.catalog import default_catalog_path, load_catalog
    catalog = load_catalog(cfg.sim.catalog if cfg.sim else default_catalog_path())
    tmk = catalog.terminal_keys.get(cfg.terminal.terminal_id)
    if tmk is None:
        say(f"no simulator key for terminal {cfg.terminal.terminal_id}")
        return 1
    algorithm = "A" if catalog.pin_format(cfg.terminal.terminal_id) == 4 else "T"
    block, kbpk = make_test_block(tmk, algorithm)
    Path(out).write_text(block + "\n", "ascii")
    write_private(Path(kbpk_out), f"# TEST KBPK ONLY\n{kbpk.hex().upper()}\n".encode())
    say(f"TEST block for terminal {cfg.terminal.terminal_id}: {out} (TMK KCV "
        f"{check_value(tmk, algorithm)}), KBPK {kbpk_out} (KCV {check_value(kbpk, algorithm)})")
    return 0
