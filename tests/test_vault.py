"""Vault: AES-256-GCM sealing round trip, tamper and wrong-key detection, key file hygiene."""
import os
import stat

import pytest

from firmware.vault import BLOB_VERSION, KEY_SIZE, Vault, VaultError


@pytest.fixture
def key_path(tmp_path):
    return tmp_path / "state" / "vault.key"


@pytest.fixture
def vault(key_path):
    key_path.parent.mkdir()
    return Vault.open(key_path)


def test_round_trip(vault):
    plaintext = b'{"2":"6226090000000014"}'
    blob = vault.seal(plaintext, aad=b"txn:1")
    assert blob[0] == BLOB_VERSION
    assert plaintext not in blob
    assert vault.open_sealed(blob, aad=b"txn:1") == plaintext


def test_nonce_is_random(vault):
    assert vault.seal(b"same") != vault.seal(b"same")


def test_empty_plaintext_round_trip(vault):
    assert vault.open_sealed(vault.seal(b"")) == b""


@pytest.mark.parametrize("index", [1, 13, -1])  # nonce, ciphertext, tag
def test_tampered_blob_refused(vault, index):
    blob = bytearray(vault.seal(b"card data"))
    blob[index] ^= 0x01
    with pytest.raises(VaultError, match="authentication"):
        vault.open_sealed(bytes(blob))


def test_wrong_aad_refused(vault):
    blob = vault.seal(b"card data", aad=b"txn:1")
    with pytest.raises(VaultError):
        vault.open_sealed(blob, aad=b"txn:2")


def test_unknown_version_and_short_blob_refused(vault):
    blob = vault.seal(b"card data")
    with pytest.raises(VaultError, match="version 2"):
        vault.open_sealed(bytes([2]) + blob[1:])
    with pytest.raises(VaultError, match="too short"):
        vault.open_sealed(blob[:20])


def test_wrong_key_refused(vault, tmp_path):
    other = Vault.open(tmp_path / "other.key")
    blob = vault.seal(b"card data")
    with pytest.raises(VaultError):
        other.open_sealed(blob)


def test_key_file_created_0600_and_reused(vault, key_path):
    st = key_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == KEY_SIZE
    blob = vault.seal(b"card data")
    assert Vault.open(key_path).open_sealed(blob) == b"card data"
    assert os.listdir(key_path.parent) == ["vault.key"]  # no temp file left behind


def test_key_file_created_0600_despite_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        Vault.open(tmp_path / "k.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_other_readable_key_refused(vault, key_path, mode):
    key_path.chmod(mode)
    with pytest.raises(VaultError, match=str(key_path)):
        Vault.open(key_path)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_wrong_length_key_refused(tmp_path, size):
    path = tmp_path / "short.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(VaultError, match=f"{path}.*{size} bytes"):
        Vault.open(path)


def test_key_path_that_is_a_directory_refused(tmp_path):
    with pytest.raises(VaultError, match="not a regular file"):
        Vault.open(tmp_path)


def test_repr_hides_key(vault, key_path):
    assert key_path.read_bytes().hex() not in repr(vault)
