"""Draws a Screen into a PIL image for a graphic display (luma backends and tests).

`render(...)` is a pure function of its arguments (any thread, no I/O but reading font files
once; fonts are cached). It never raises for text: a character the chosen font lacks is
drawn as "?". Layout, top to bottom: a title bar (filled; on RGB coloured by the screen's
tone: info blue, ok green, error red), the screen's lines (the first one that reads as an
amount, "CNY 12.50", drawn large when there is room), an optional status bar (ONLINE /
OFFLINE / CONNECTING and the store-and-forward queue count). An optional QR code takes a
square on the right of the body. Sizes are pixels; mode "1" (monochrome OLED) or "RGB".
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from firmware.flows.types import LCD_ROWS, LinkStatus, Screen
from firmware.money import CURRENCIES

__all__ = ["render", "find_cjk_font", "is_amount", "status_text", "CJK_FONTS", "MODES"]

MODES = ("1", "RGB")

# Where Debian / Raspberry Pi OS packages put CJK fonts (fonts-noto-cjk, fonts-wqy-*, arphic).
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)

_AMOUNT = re.compile(rf"(?:{'|'.join(alpha for alpha, _ in CURRENCIES.values())}) -?\d+(?:\.\d+)?")
_TONE_RGB = {"info": (0, 70, 160), "ok": (0, 130, 0), "error": (190, 0, 0)}
_LINK_RGB = {True: (0, 200, 0), False: (230, 40, 40), None: (160, 160, 160)}
_MIN_FONT = 6  # pixels: a line is shrunk to fit the width, never below this
_MARGIN = 2  # pixels left of the text


def find_cjk_font(paths=CJK_FONTS) -> Path | None:
    """The first of `paths` that exists (None: Chinese text falls back to "?")."""
    return next((Path(p) for p in paths if Path(p).is_file()), None)


def is_amount(line: str) -> bool:
    """The line is a money amount as the flows show it: "CNY 12.50", "JPY 500"."""
    return _AMOUNT.fullmatch(line.strip()) is not None


def status_text(status: LinkStatus) -> str:
    word = {True: "ONLINE", False: "OFFLINE", None: "CONNECTING"}[status.online]
    return f"{word}  Q:{status.queued}" + (f"  !{status.alerts}" if status.alerts else "")


def render(screen: Screen, size: tuple[int, int] = (128, 64), *, mode: str = "1",
           status: LinkStatus | None = None, qr: str | None = None,
           font: str | Path | None = None, cjk_font: str | Path | None = None) -> Image.Image:
    """`screen` drawn on a `size` (width, height) image of `mode`. `font`: a TrueType path
    (None: Pillow's default font); `cjk_font`: the font for lines the first one cannot draw."""
    if mode not in MODES:
        raise ValueError(f"render: mode {mode!r} not in {MODES}")
    width, height = size
    image = Image.new(mode, size)
    draw = ImageDraw.Draw(image)
    fg = (255, 255, 255) if mode == "RGB" else 255
    rows = 1 + LCD_ROWS + (status is not None)
    row_h = max(height // rows, _MIN_FONT + 2)
    fonts = (font, cjk_font)
    title_bg = _TONE_RGB[screen.tone] if mode == "RGB" else fg
    draw.rectangle((0, 0, width - 1, row_h - 1), fill=title_bg)
    _text(draw, (0, 0, width, row_h), screen.title, fonts, fill=fg if mode == "RGB" else 0)
    body_bottom = height - row_h if status is not None else height
    text_w = width
    if qr:
        side = min(body_bottom - row_h, width // 2)
        text_w = width - side - 1
        _draw_qr(image, qr, (text_w + 1, row_h, side))
    _body(draw, screen.lines, (row_h, body_bottom, text_w), row_h, fonts, fg)
    if status is not None:
        top = height - row_h
        draw.line((0, top, width - 1, top), fill=fg)
        colour = _LINK_RGB[status.online] if mode == "RGB" else fg
        _text(draw, (0, top + 1, width, row_h - 1), status_text(status), fonts, fill=colour)
    return image


def _body(draw, lines, box, row_h, fonts, fg) -> None:
    """The lines from box top down; the first amount gets two rows when the lines leave room."""
    top, bottom, width = box
    amounts = [i for i, line in enumerate(lines) if is_amount(line)]
    big = amounts[0] if amounts and len(lines) < LCD_ROWS else None
    for i, line in enumerate(lines):
        h = min(2 * row_h if i == big else row_h, bottom - top)
        if h <= 0:
            return
        _text(draw, (0, top, width, h), line, fonts, fill=fg)
        top += h


def _text(draw, box, text, fonts, fill) -> None:
    """`text` in the box (x, y, w, h): the largest font size that fits both, from the first
    of `fonts` that has all its glyphs (else the last usable one, missing glyphs as "?")."""
    x, y, w, h = box
    face = _face_for(text, fonts)
    shown = "".join(ch if _has_glyph(_font(face, 12), ch) else "?" for ch in text)
    size = max(h - 2, _MIN_FONT)
    while size > _MIN_FONT and _font(face, size).getlength(shown) > w - _MARGIN:
        size -= 1
    font = _font(face, size)
    ascent, descent = font.getmetrics()
    draw.text((x + _MARGIN, y + max((h - ascent - descent) // 2, 0)), shown, font=font, fill=fill)


def _face_for(text: str, fonts) -> str | Path | None:
    """The first of `fonts` (None = Pillow's default) that draws every character of `text`;
    failing that the last one given (the CJK font when there is one)."""
    font, cjk_font = fonts
    faces = [font] if cjk_font is None else [font, cjk_font]
    return next((face for face in faces if all(_has_glyph(_font(face, 12), ch) for ch in text)),
                faces[-1])


@lru_cache(maxsize=64)
def _font(face: str | Path | None, size: int) -> ImageFont.FreeTypeFont:
    if face is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(face), size)


@lru_cache(maxsize=4096)
def _has_glyph(font: ImageFont.FreeTypeFont, ch: str) -> bool:
    """The font has a glyph for `ch`: its mask differs from the missing-glyph (.notdef) one."""
    if ch.isspace():
        return True
    try:
        return bytes(font.getmask(ch)) != bytes(font.getmask("\U0010ffff"))
    except (UnicodeError, OSError, ValueError):
        return False


def _draw_qr(image: Image.Image, text: str, box: tuple[int, int, int]) -> None:
    """A QR code of `text` (qrcode, installed with python-escpos) scaled into the square at
    (x, y) of side `side`: dark modules on a light square with a quiet zone."""
    import qrcode

    x, y, side = box
    code = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(text)
    code.make(fit=True)
    matrix = code.get_matrix()
    light = (255, 255, 255) if image.mode == "RGB" else 255
    modules = Image.new("1", (len(matrix), len(matrix)), 255)
    modules.putdata([0 if dark else 255 for row in matrix for dark in row])
    scale = max(side // len(matrix), 1)
    ImageDraw.Draw(image).rectangle((x, y, x + side - 1, y + side - 1), fill=light)
    offset = (side - scale * len(matrix)) // 2
    scaled = modules.resize((scale * len(matrix),) * 2, Image.NEAREST).convert(image.mode)
    image.paste(scaled, (x + max(offset, 0), y + max(offset, 0)))
