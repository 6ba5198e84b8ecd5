"""BER-TLV for EMV (Book 3 Annex B): parse, find, encode, and Data Object Lists.

Pure functions, any thread, no I/O. Tags are upper-case hex strings ("9F26"); values
are bytes. The parse keeps order and duplicates (a PSE directory record holds several
61 entries), which is why this is not pyemv.tlv: that decodes into a dict and so drops
repeated tags, and it does not skip the 00/FF padding cards put between objects.
Errors are `TlvError` naming the offset (and tag when known); messages never hold
values, so they are safe to log.
"""
from __future__ import annotations

import functools
from types import MappingProxyType

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

__all__ = [
    "parse_flat",
    "Tlv", "TlvError", "parse", "find", "find_all", "flatten", "encode", "encode_nodes",
    "parse_dol", "build_dol", "dol_length", "split_dol", "NUMERIC_TAGS", "CN_TAGS",
]

MAX_TAG_BYTES = 3  # EMV tags are 1-3 bytes; longer is garbage
MAX_LENGTH_BYTES = 3  # 81 xx, 82 xxxx, 83 xxxxxx
MAX_DEPTH = 16  # templates nest 3-4 deep in practice
MAX_DOL_ITEM = 255  # DOL entries use one length byte in EMV
PADDING = (0x00, 0xFF)  # may appear before, between or after objects (Book 3 B.1)

# DOL fill rules (Book 3 5.4): format n is right-aligned and left-padded with 00 and
# truncated on the left; cn is right-padded with FF; everything else (b, an, ans) is
# left-aligned, right-padded with 00 and truncated on the right.
NUMERIC_TAGS = frozenset({
    "9F02", "9F03", "9F1A", "5F2A", "5F36", "9A", "9C", "9F21", "9F41", "9F15", "9F01",
    "5F24", "5F25", "5F28", "9F11", "9F3C", "9F3D", "9F42", "9F44", "5F34", "9F1B", "9F7A",
})
CN_TAGS = frozenset({"5A", "9F20"})


class TlvError(ValueError):
    """Malformed BER-TLV or DOL; the message names the offset and tag when known."""

    def __init__(self, message: str, offset: int, tag: str | None = None):
        where = f"offset {offset}" + (f", tag {tag}" if tag else "")
        super().__init__(f"{message} ({where})")
        self.offset = offset
        self.tag = tag


@dataclass(frozen=True)
class Tlv:
    """One data object. `children` is a tuple for constructed tags, None for primitive."""

    tag: str
    value: bytes  # raw value bytes (for a template: its encoded children)
    children: tuple["Tlv", ...] | None = None

    @property
    def constructed(self) -> bool:
        return self.children is not None

    def __repr__(self) -> str:  # lengths only: values may be card data
        inner = f", {len(self.children)} children" if self.children is not None else ""
        return f"Tlv({self.tag}, {len(self.value)} bytes{inner})"


def _is_constructed(tag: str) -> bool:
    return bool(int(tag[:2], 16) & 0x20)


def _read_tag(data: bytes, pos: int, base: int = 0) -> tuple[str, int]:
    start = pos
    if data[pos] & 0x1F != 0x1F:
        return data[pos:pos + 1].hex().upper(), pos + 1
    pos += 1
    while True:
        if pos >= len(data):
            raise TlvError("tag runs past the end", base + start)
        if pos - start >= MAX_TAG_BYTES:
            raise TlvError("tag too long", base + start)
        more = data[pos] & 0x80
        pos += 1
        if not more:
            return data[start:pos].hex().upper(), pos


def _read_length(data: bytes, pos: int, tag: str, base: int = 0) -> tuple[int, int]:
    if pos >= len(data):
        raise TlvError("missing length", base + pos, tag)
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > MAX_LENGTH_BYTES:
        raise TlvError(f"unsupported length form {first:02X}", base + pos, tag)
    if pos + 1 + count > len(data):
        raise TlvError("length runs past the end", base + pos, tag)
    return int.from_bytes(data[pos + 1:pos + 1 + count], "big"), pos + 1 + count


def _parse(data: bytes, base: int, depth: int) -> list[Tlv]:
    if depth > MAX_DEPTH:
        raise TlvError("templates nested too deep", base)
    nodes: list[Tlv] = []
    pos = 0
    while pos < len(data):
        if data[pos] in PADDING:
            pos += 1
            continue
        start = pos
        tag, pos = _read_tag(data, pos, base)
        length, pos = _read_length(data, pos, tag, base)
        if pos + length > len(data):
            raise TlvError(f"value of {length} bytes runs past the end", base + start, tag)
        value = bytes(data[pos:pos + length])
        children = tuple(_parse(value, base + pos, depth + 1)) if _is_constructed(tag) else None
        nodes.append(Tlv(tag, value, children))
        pos += length
    return nodes


def parse(data: bytes) -> list[Tlv]:
    """Parse a BER-TLV byte string into a list of nodes, templates recursively."""
    return _parse(bytes(data), 0, 0)


def _walk(nodes: Sequence[Tlv]) -> Iterator[Tlv]:
    for node in nodes:
        yield node
        if node.children is not None:
            yield from _walk(node.children)


def find_all(nodes: Sequence[Tlv], tag: str) -> list[Tlv]:
    """Every node with `tag`, depth first, in document order."""
    tag = tag.upper()
    return [n for n in _walk(nodes) if n.tag == tag]


def find(nodes: Sequence[Tlv], tag: str) -> Tlv | None:
    """The first node with `tag` anywhere in the tree, or None."""
    return next(iter(find_all(nodes, tag)), None)


@functools.lru_cache(maxsize=64)
def parse_flat(data: bytes) -> Mapping[str, bytes]:
    """flatten(parse(data)), read-only and cached: a host looks at the same field 55 several
    times per message (amount checks, cryptogram). TlvError as parse()."""
    return MappingProxyType(flatten(parse(bytes(data))))


def flatten(nodes: Sequence[Tlv]) -> dict[str, bytes]:
    """Primitive tags anywhere in the tree -> value; the first occurrence wins."""
    out: dict[str, bytes] = {}
    for node in _walk(nodes):
        if node.children is None:
            out.setdefault(node.tag, node.value)
    return out


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(raw) > MAX_LENGTH_BYTES:
        raise TlvError(f"value too long ({length} bytes)", 0)
    return bytes([0x80 | len(raw)]) + raw


def encode(tag: str, value: bytes) -> bytes:
    """One object: tag + minimal BER length + value (for a template, its encoded children)."""
    try:
        tag_bytes = bytes.fromhex(tag)
    except ValueError:
        raise TlvError("tag is not hex", 0, tag) from None
    if not tag_bytes or tag_bytes[0] in PADDING:  # parse would skip it as padding
        raise TlvError("not a well-formed tag", 0, tag)
    if _read_tag(tag_bytes, 0) != (tag.upper(), len(tag_bytes)):
        raise TlvError("not a well-formed tag", 0, tag)
    return tag_bytes + _encode_length(len(value)) + bytes(value)


def encode_nodes(nodes: Sequence[Tlv]) -> bytes:
    """Inverse of `parse` (minimal lengths, padding dropped)."""
    out = bytearray()
    for node in nodes:
        inner = encode_nodes(node.children) if node.children is not None else node.value
        out += encode(node.tag, inner)
    return bytes(out)


def parse_dol(data: bytes) -> list[tuple[str, int]]:
    """A Data Object List (PDOL 9F38, CDOL1 8C, ...): tags and lengths, no values."""
    data = bytes(data)
    dol: list[tuple[str, int]] = []
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_tag(data, pos)
        length, pos = _read_length(data, pos, tag)
        if length > MAX_DOL_ITEM:
            raise TlvError(f"DOL entry of {length} bytes", start, tag)
        dol.append((tag, length))
    return dol


def dol_length(dol: Sequence[tuple[str, int]]) -> int:
    return sum(length for _, length in dol)


def _fit(tag: str, value: bytes, length: int) -> bytes:
    if tag in NUMERIC_TAGS:
        return value[-length:].rjust(length, b"\x00") if length else b""
    pad = b"\xFF" if tag in CN_TAGS else b"\x00"
    return value[:length].ljust(length, pad)


def build_dol(dol: Sequence[tuple[str, int]], values: Mapping[str, bytes]) -> bytes:
    """Concatenate values for `dol`, padded or truncated per Book 3 5.4.

    Missing tags and constructed tags are filled with zeros.
    """
    out = bytearray()
    for tag, length in dol:
        value = values.get(tag)
        if value is None or _is_constructed(tag):
            out += bytes(length)
        else:
            out += _fit(tag, bytes(value), length)
    return bytes(out)


def split_dol(dol: Sequence[tuple[str, int]], data: bytes) -> dict[str, bytes]:
    """Cut DOL-related data back into tag -> value (the card's view of what was sent)."""
    if len(data) != dol_length(dol):
        raise TlvError(f"DOL data is {len(data)} bytes, list wants {dol_length(dol)}", 0)
    out: dict[str, bytes] = {}
    pos = 0
    for tag, length in dol:
        out.setdefault(tag, bytes(data[pos:pos + length]))
        pos += length
    return out
