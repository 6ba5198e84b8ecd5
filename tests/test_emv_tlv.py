"""BER-TLV and DOL handling (firmware.emv.tlv)."""
import pytest

from firmware.emv import tlv
from firmware.emv.tlv import Tlv, TlvError


def test_parse_primitive_and_multibyte_tag():
    nodes = tlv.parse(bytes.fromhex("9C01009F02060000000123455F2A020156"))
    assert [(n.tag, n.value.hex()) for n in nodes] == [
        ("9C", "00"), ("9F02", "000000012345"), ("5F2A", "0156")]
    assert not any(n.constructed for n in nodes)


def test_parse_three_byte_tag():
    nodes = tlv.parse(bytes.fromhex("DF8101020102"))
    assert nodes == [Tlv("DF8101", b"\x01\x02")]


def test_nested_templates_and_find():
    data = bytes.fromhex("6F1A840E315041592E5359532E4444463031A5088801015F2D027A68")
    nodes = tlv.parse(data)
    assert [n.tag for n in nodes] == ["6F"]
    assert [c.tag for c in nodes[0].children] == ["84", "A5"]
    assert tlv.find(nodes, "88").value == b"\x01"
    assert tlv.find(nodes, "5f2d").value == b"zh"
    assert tlv.find(nodes, "9F38") is None
    assert tlv.encode_nodes(nodes) == data


def test_duplicates_are_kept_in_order():
    entry = lambda aid: tlv.encode("61", tlv.encode("4F", bytes.fromhex(aid)))
    record = tlv.encode("70", entry("A0000003330101") + entry("A0000000031010"))
    found = tlv.find_all(tlv.parse(record), "4F")
    assert [n.value.hex().upper() for n in found] == ["A0000003330101", "A0000000031010"]
    assert tlv.flatten(tlv.parse(record))["4F"].hex().upper() == "A0000003330101"


@pytest.mark.parametrize("length, prefix", [(5, "05"), (127, "7F"), (128, "8180"),
                                             (255, "81FF"), (256, "820100"), (70000, "83011170")])
def test_length_forms_round_trip(length, prefix):
    value = bytes(range(256)) * (length // 256) + bytes(length % 256)
    encoded = tlv.encode("9F4B", value)
    assert encoded[2:2 + len(prefix) // 2].hex().upper() == prefix
    assert tlv.parse(encoded) == [Tlv("9F4B", value)]


def test_padding_between_objects_is_skipped():
    nodes = tlv.parse(bytes.fromhex("00009A03260501FFFF9C0100"))
    assert [(n.tag, n.value.hex()) for n in nodes] == [("9A", "260501"), ("9C", "00")]


@pytest.mark.parametrize("hexdata, offset, tag", [
    ("9F", 0, None),                 # tag runs past the end
    ("9A03260501" "5F", 5, None),    # second tag cut short
    ("9A", 1, "9A"),                 # no length byte
    ("9A0526", 0, "9A"),             # value overruns
    ("9A8201", 1, "9A"),             # long length runs past the end
    ("9A80", 1, "9A"),               # indefinite length is not BER-TLV for EMV
    ("9A84000000010000", 1, "9A"),   # 4 length bytes
    ("9FFFFF7F0100", 0, None),       # tag longer than 3 bytes
    ("7005" "A5039A0526", 4, "9A"),  # error inside a template: absolute offset
])
def test_malformed_input_names_offset(hexdata, offset, tag):
    with pytest.raises(TlvError) as info:
        tlv.parse(bytes.fromhex(hexdata))
    assert info.value.offset == offset
    assert info.value.tag == tag
    assert f"offset {offset}" in str(info.value)


def test_nesting_depth_is_bounded():
    data = b"\x9A\x00"
    for _ in range(40):
        data = tlv.encode("70", data)
    with pytest.raises(TlvError, match="nested too deep"):
        tlv.parse(data)


def test_encode_rejects_bad_tags():
    for bad in ("9F", "XY", "", "9F0201"):
        with pytest.raises(TlvError):
            tlv.encode(bad, b"\x00")


def test_repr_hides_values():
    node = tlv.parse(bytes.fromhex("5A086226090000000014"))[0]
    assert "622609" not in repr(node) and "8 bytes" in repr(node)


def test_parse_dol():
    dol = tlv.parse_dol(bytes.fromhex("9F66049F02065F2A029A039C01DF810102"))
    assert dol == [("9F66", 4), ("9F02", 6), ("5F2A", 2), ("9A", 3), ("9C", 1), ("DF8101", 2)]
    assert tlv.dol_length(dol) == 18


def test_parse_dol_malformed():
    with pytest.raises(TlvError) as info:
        tlv.parse_dol(bytes.fromhex("9F0206" "9F"))
    assert info.value.offset == 3
    with pytest.raises(TlvError, match="DOL entry"):
        tlv.parse_dol(bytes.fromhex("9F02820200"))


def test_build_dol_fill_rules():
    dol = [("9F02", 6), ("9F1A", 2), ("9F37", 4), ("9F1E", 10), ("5A", 10), ("9F4E", 3)]
    values = {
        "9F02": bytes.fromhex("012345"),           # n: left-padded with zeros
        "9F1A": bytes.fromhex("00000156"),         # n too long: leftmost bytes dropped
        "9F37": bytes.fromhex("0102030405"),       # b too long: rightmost bytes dropped
        "9F1E": b"KPOS",                           # an: right-padded with zeros
        "5A": bytes.fromhex("6226090000000014"),   # cn: right-padded with FF
    }                                              # 9F4E missing: zeros
    out = tlv.build_dol(dol, values)
    assert out.hex().upper() == (
        "000000012345" "0156" "01020304" "4B504F53000000000000"
        "6226090000000014FFFF" "000000")
    assert tlv.split_dol(dol, out)["9F1E"] == b"KPOS" + bytes(6)


def test_build_dol_constructed_tag_is_zeros():
    assert tlv.build_dol([("70", 3)], {"70": b"\x9A\x01\x01"}) == bytes(3)


def test_split_dol_length_mismatch():
    with pytest.raises(TlvError, match="DOL data is 2 bytes"):
        tlv.split_dol([("9F02", 6)], b"\x00\x00")
