"""The screen renderer (firmware/hal/render.py): layout regions, tones, amount, status bar,
QR code and the font fallback, checked on pixels and against reference renders."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageChops

from firmware.flows.types import LinkStatus, Screen
from firmware.hal.render import find_cjk_font, is_amount, render, status_text

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
SALE = Screen("SALE", ("Amount", "CNY 12.50", "ENTER to confirm"))


def lit(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many pixels in `box` are not black."""
    region = image.crop(box).convert("L")
    return sum(1 for value in region.tobytes() if value)


@pytest.mark.parametrize("size, mode", [((128, 64), "1"), ((240, 240), "RGB"), ((320, 240), "RGB")])
def test_size_mode_and_title_bar(size, mode):
    width, height = size
    image = render(SALE, size, mode=mode)
    assert image.size == size and image.mode == mode
    row_h = height // 5
    assert lit(image, (0, 0, width, row_h)) > width * row_h // 2  # a filled bar
    assert lit(image, (0, row_h, width, height)) < width * (height - row_h) // 4  # dark body


def test_same_screen_same_pixels_and_lines_are_drawn():
    assert render(SALE).tobytes() == render(SALE).tobytes()
    blank = render(Screen("SALE"))
    assert lit(blank, (0, 13, 128, 64)) == 0
    one = render(Screen("SALE", ("Amount",)))
    other = render(Screen("SALE", ("Cancel",)))
    assert lit(one, (0, 13, 128, 25)) > 10
    assert ImageChops.difference(one, other).getbbox() is not None
    assert lit(one, (0, 25, 128, 64)) == 0  # nothing below the one line


@pytest.mark.parametrize("tone, colour", [("info", (0, 70, 160)), ("ok", (0, 130, 0)),
                                          ("error", (190, 0, 0))])
def test_tone_colours_the_title_bar_on_rgb(tone, colour):
    image = render(Screen("DECLINED", ("Code 51",), tone=tone), (240, 240), mode="RGB")
    assert image.getpixel((238, 2)) == colour


def test_amount_is_drawn_large():
    def text_height(line: str) -> int:
        image = render(Screen("SALE", (line,)))
        box = image.crop((0, 12, 128, 64)).getbbox()
        return box[3] - box[1]

    assert text_height("CNY 12.50") > 1.5 * text_height("XYZ 12.50")


def test_amount_shares_the_rows_when_four_lines():
    lines = ("Amount", "CNY 12.50", "Tip", "ENTER")
    image = render(Screen("SALE", lines))
    assert lit(image, (0, 52, 128, 64)) > 0  # the fourth line still shown


@pytest.mark.parametrize("line, expected", [
    ("CNY 12.50", True), ("USD -3.00", True), ("JPY 500", True), ("  CNY 1.00  ", True),
    ("CNY", False), ("12.50", False), ("Amount CNY 1.00", False), ("XYZ 1.00", False),
])
def test_is_amount(line, expected):
    assert is_amount(line) is expected


def test_status_bar():
    assert status_text(LinkStatus(True, 3)) == "ONLINE  Q:3"
    assert status_text(LinkStatus(False, 0, alerts=2)) == "OFFLINE  Q:0  !2"
    assert status_text(LinkStatus(None)) == "CONNECTING  Q:0"
    screen = Screen("KPOS", ("Key in amount",))
    bare = render(screen, (240, 240), mode="RGB")
    online = render(screen, (240, 240), mode="RGB", status=LinkStatus(True, 3))
    offline = render(screen, (240, 240), mode="RGB", status=LinkStatus(False, 3))
    assert lit(bare, (0, 200, 240, 240)) == 0
    colours = {colour for _, colour in online.crop((0, 200, 240, 240)).getcolors(10000)}
    assert (0, 200, 0) in colours
    colours = {colour for _, colour in offline.crop((0, 200, 240, 240)).getcolors(10000)}
    assert (230, 40, 40) in colours and (0, 200, 0) not in colours


@pytest.mark.parametrize("size, mode", [((240, 240), "RGB"), ((128, 64), "1")])
def test_qr_code_matches_the_qrcode_matrix(size, mode):
    import qrcode

    text = "https://pay.example.cn/o/20261122-000123"
    image = render(Screen("SCAN TO PAY", ("CNY 12.50",)), size, mode=mode, qr=text)
    code = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(text)
    code.make(fit=True)
    inner = [row[1:-1] for row in code.get_matrix()[1:-1]]  # the border row/column is light
    width, height = size
    row_h = height // 5
    side = min(height - row_h, width // 2)  # a square flush right, under the title bar
    square = image.crop((width - side, row_h, width, row_h + side)).convert("L")
    assert lit(square, (0, 0, side, 1)) == side  # its light quiet zone
    dark = ImageChops.invert(square)
    left, top, x1, y1 = dark.getbbox()  # the dark modules
    scale = (x1 - left) / len(inner)
    assert scale >= 1 and (y1 - top) / len(inner) == scale
    sampled = [[dark.getpixel((int(left + (c + 0.5) * scale), int(top + (r + 0.5) * scale))) > 127
                for c in range(len(inner))] for r in range(len(inner))]
    assert sampled == inner


def test_chinese_without_a_cjk_font_shows_question_marks():
    chinese = Screen("交易成功", ("金额 CNY 12.50", "请取卡"), tone="ok")
    marks = Screen("????", ("?? CNY 12.50", "???"), tone="ok")
    for size, mode in (((128, 64), "1"), ((240, 240), "RGB")):
        assert render(chinese, size, mode=mode).tobytes() == render(marks, size, mode=mode).tobytes()


@pytest.mark.skipif(not DEJAVU.is_file(), reason="DejaVu fonts not installed")
def test_second_font_draws_what_the_first_lacks():
    """The cjk_font slot is used for a line the main font cannot draw (DejaVu stands in for a
    CJK font here: it has Cyrillic, Pillow's default font does not)."""
    screen = Screen("ПРИВЕТ", ("Сумма",))
    marks = render(Screen("??????", ("?????",)))
    drawn = render(screen, cjk_font=DEJAVU)
    assert drawn.tobytes() != marks.tobytes()
    assert render(screen).tobytes() == marks.tobytes()
    assert render(screen, font=DEJAVU).tobytes() == drawn.tobytes()


@pytest.mark.skipif(find_cjk_font() is None, reason="no CJK font installed (fonts-noto-cjk)")
def test_chinese_with_the_installed_cjk_font():
    screen = Screen("交易成功", ("请取卡",))
    drawn = render(screen, (240, 240), mode="RGB", cjk_font=find_cjk_font())
    assert drawn.tobytes() != render(Screen("????", ("???",)), (240, 240), mode="RGB").tobytes()


def test_find_cjk_font(tmp_path):
    second = tmp_path / "wqy-microhei.ttc"
    second.write_bytes(b"font")
    assert find_cjk_font((tmp_path / "missing.ttc", second)) == second
    assert find_cjk_font((tmp_path / "missing.ttc",)) is None


def test_bad_mode():
    with pytest.raises(ValueError, match="mode 'L'"):
        render(SALE, mode="L")
