"""Draws receipt ESC/POS bytes as the paper would look: a PIL image (the browser panel).

`render_escpos(raw, encoding)` is a pure function (any thread, no I/O but reading font files
once; fonts are cached). It interprets the subset firmware/receipts.py emits (python-escpos
`Dummy`, profile "default"): ESC @ init, ESC t code page, FS & / FS . Chinese mode on / off,
GS ! size, ESC ! print mode, ESC E bold, ESC a alignment, ESC - underline, LF, ESC d feed,
GS ( k QR code (store, size, error level, print), GS v 0 raster image, GS V cut, ESC p
drawer pulse (ignored). Text is CP437 outside Chinese mode, GB18030 in it; with
encoding "UTF-8" (a printer set to UTF-8) all text is UTF-8. A command outside the subset,
or one cut short, raises EscposError naming it and its byte offset.
Units: pixels of a 203 dpi head: 12 x 24 per half-width character (Font A), 384 dots across
58 mm paper (32 columns), 576 across 80 mm (48 columns).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from firmware.hal.render import find_cjk_font
from firmware.receipts import char_width

__all__ = ["render_escpos", "interpret", "Paper", "PrintedLine", "EscposError", "DOT_WIDTHS"]

CHAR_W, CHAR_H = 12, 24  # Font A, dots
DOT_WIDTHS = {32: 384, 48: 576}  # paper columns -> dots across
MONO_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
QR_LEVELS = {48: "L", 49: "M", 50: "Q", 51: "H"}  # GS ( k fn 69 argument
_ALIGN = {0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"}


class EscposError(ValueError):
    """Bytes the renderer cannot interpret; the text names the command and its offset."""


@dataclass(frozen=True)
class Style:
    bold: bool = False
    underline: bool = False
    width: int = 1  # character magnification, 1..8
    height: int = 1
    align: str = "left"


@dataclass(frozen=True)
class PrintedLine:
    """One printed element: kind "text" (with its decoded text), "qr" (its data), "image"
    (a raster image, text ""), "feed" (blank lines, text "") or "cut"."""

    kind: str
    text: str
    style: Style
    image: Image.Image | None = field(default=None, compare=False, repr=False)


@dataclass
class Paper:
    """What the bytes print, in order, and the receipt drawn from it."""

    lines: list[PrintedLine]
    image: Image.Image

    def texts(self) -> list[str]:
        return [line.text for line in self.lines if line.kind == "text"]


def render_escpos(raw: bytes, encoding: str = "GB18030", columns: int = 32) -> Paper:
    """`raw` drawn on paper `columns` characters wide (32 or 48): a mode "L" image."""
    if columns not in DOT_WIDTHS:
        raise ValueError(f"escpos: columns {columns} not in {tuple(DOT_WIDTHS)}")
    lines = interpret(raw, encoding)
    return Paper(lines, _draw(lines, DOT_WIDTHS[columns]))


# --- interpreting the bytes -------------------------------------------------------------


def interpret(raw: bytes, encoding: str = "GB18030") -> list[PrintedLine]:
    """The printed elements of `raw`, in order (EscposError for what is outside the subset)."""
    return _Interpreter(raw, encoding).run()


class _Interpreter:
    def __init__(self, raw: bytes, encoding: str):
        self.raw, self.pos, self.encoding = raw, 0, encoding
        self.style, self.chinese = Style(), False
        self.text = bytearray()
        self.qr_data, self.qr_size, self.qr_level = "", 3, "L"
        self.out: list[PrintedLine] = []

    def run(self) -> list[PrintedLine]:
        while self.pos < len(self.raw):
            byte = self.raw[self.pos]
            self.pos += 1
            if byte == 0x0A:
                self.flush(force=True)
            elif byte in (0x1B, 0x1C, 0x1D):
                self.command(byte)
            elif byte == 0x0D:
                continue
            else:
                self.text.append(byte)
        self.flush()
        return self.out

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.raw):
            raise EscposError(f"escpos: {what} cut short at byte {self.pos}")
        chunk = self.raw[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def flush(self, force: bool = False) -> None:
        """The text collected so far as a line (an empty LF prints a blank line)."""
        if self.text or force:
            self.out.append(PrintedLine("text", self.decode(bytes(self.text)), self.style))
        self.text.clear()

    def decode(self, data: bytes) -> str:
        if self.encoding == "UTF-8":
            return data.decode("utf-8", errors="replace")
        return data.decode("gb18030" if self.chinese else "cp437", errors="replace")

    def set(self, **changes) -> None:
        self.flush()
        self.style = replace(self.style, **changes)

    def command(self, prefix: int) -> None:
        start = self.pos - 1
        code = self.take(1, f"command at byte {start}")[0]
        name = {0x1B: "ESC", 0x1C: "FS", 0x1D: "GS"}[prefix] + f" {chr(code)!r}"
        handler = _COMMANDS.get((prefix, code))
        if handler is None:
            raise EscposError(f"escpos: {name} at byte {start} is not supported")
        handler(self, name)

    # ESC -----------------------------------------------------------------
    def esc_init(self, name):
        self.flush()
        self.style, self.chinese = Style(), False

    def esc_mode(self, name):  # ESC ! n: bit 3 bold, 4 double height, 5 double width, 7 underline
        n = self.take(1, name)[0]
        self.set(bold=bool(n & 8), height=2 if n & 16 else 1, width=2 if n & 32 else 1,
                 underline=bool(n & 128))

    def esc_bold(self, name):
        self.set(bold=bool(self.take(1, name)[0] & 1))

    def esc_underline(self, name):
        self.set(underline=self.take(1, name)[0] in (1, 2, 49, 50))

    def esc_align(self, name):
        n = self.take(1, name)[0]
        if n not in _ALIGN:
            raise EscposError(f"escpos: {name} alignment {n} at byte {self.pos - 1}")
        self.set(align=_ALIGN[n])

    def esc_feed(self, name):
        self.flush()
        self.out.append(PrintedLine("feed", "\n" * self.take(1, name)[0], self.style))

    def esc_one_arg(self, name):  # ESC t n (code page), ESC M n (font): nothing to draw
        self.take(1, name)

    def esc_drawer(self, name):  # ESC p m t1 t2: the cash drawer pulse
        self.take(3, name)

    # FS ------------------------------------------------------------------
    def fs_chinese_on(self, name):
        self.flush()
        self.chinese = True

    def fs_chinese_off(self, name):
        self.flush()
        self.chinese = False

    # GS ------------------------------------------------------------------
    def gs_size(self, name):
        n = self.take(1, name)[0]
        self.set(width=(n >> 4) + 1, height=(n & 15) + 1)

    def gs_cut(self, name):
        self.flush()
        mode = self.take(1, name)[0]
        if mode in (65, 66):  # feed n and cut
            self.take(1, name)
        self.out.append(PrintedLine("cut", "", self.style))

    def gs_raster(self, name):  # GS v 0 m xL xH yL yH d1...dk
        self.flush()
        head = self.take(6, name)
        if head[0] != 0x30:
            raise EscposError(f"escpos: {name} function {head[0]} at byte {self.pos - 6}")
        width_bytes, rows = head[2] + 256 * head[3], head[4] + 256 * head[5]
        data = self.take(width_bytes * rows, name + " image data")
        image = Image.frombytes("1", (8 * width_bytes, rows), bytes(b ^ 0xFF for b in data))
        self.out.append(PrintedLine("image", "", self.style, image.convert("L")))

    def gs_2d(self, name):  # GS ( k pL pH cn fn [parameters]: cn 49 = QR code
        if self.take(1, name) != b"k":
            raise EscposError(f"escpos: {name} at byte {self.pos - 3} is not GS ( k")
        size = int.from_bytes(self.take(2, name), "little")
        body = self.take(size, name)
        if len(body) < 2 or body[0] != 49:
            raise EscposError(f"escpos: {name} symbol {body[:1].hex()} is not a QR code")
        fn, args = body[1], body[2:]
        if fn == 67:  # module size in dots
            self.qr_size = args[0]
        elif fn == 69:
            self.qr_level = QR_LEVELS.get(args[0], "L")
        elif fn == 80:  # store: m = 48, then the data
            self.qr_data = args[1:].decode("utf-8", errors="replace")
        elif fn == 81:
            self.flush()
            self.out.append(PrintedLine("qr", self.qr_data, self.style,
                                        qr_image(self.qr_data, self.qr_size, self.qr_level)))


_E, _F, _G = 0x1B, 0x1C, 0x1D
_COMMANDS = {
    (_E, ord("@")): _Interpreter.esc_init, (_E, ord("!")): _Interpreter.esc_mode,
    (_E, ord("E")): _Interpreter.esc_bold, (_E, ord("-")): _Interpreter.esc_underline,
    (_E, ord("a")): _Interpreter.esc_align, (_E, ord("d")): _Interpreter.esc_feed,
    (_E, ord("t")): _Interpreter.esc_one_arg, (_E, ord("M")): _Interpreter.esc_one_arg,
    (_E, ord("p")): _Interpreter.esc_drawer,
    (_F, ord("&")): _Interpreter.fs_chinese_on, (_F, ord(".")): _Interpreter.fs_chinese_off,
    (_G, ord("!")): _Interpreter.gs_size, (_G, ord("V")): _Interpreter.gs_cut,
    (_G, ord("v")): _Interpreter.gs_raster, (_G, ord("(")): _Interpreter.gs_2d,
}


def qr_image(data: str, module: int, level: str) -> Image.Image:
    """The QR code a printer prints for `data`: `module` dots per module, a 4-module quiet
    zone, mode "L" (qrcode, installed with python-escpos)."""
    import qrcode

    levels = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M,
              "Q": qrcode.constants.ERROR_CORRECT_Q, "H": qrcode.constants.ERROR_CORRECT_H}
    code = qrcode.QRCode(border=4, box_size=max(module, 1), error_correction=levels[level])
    code.add_data(data)
    code.make(fit=True)
    return code.make_image().get_image().convert("L")


# --- drawing ------------------------------------------------------------------------------


def _draw(lines: list[PrintedLine], dots: int) -> Image.Image:
    """The elements stacked top to bottom on white paper `dots` wide."""
    blocks = [_block(line, dots) for line in lines]
    paper = Image.new("L", (dots, max(sum(b.height for b in blocks), 1)), 255)
    top = 0
    for line, block in zip(lines, blocks):
        paper.paste(block, (_x(line.style.align, block.width, dots), top))
        top += block.height
    return paper


def _block(line: PrintedLine, dots: int) -> Image.Image:
    if line.kind == "feed":
        return Image.new("L", (1, CHAR_H * len(line.text)), 255)
    if line.kind == "cut":
        cut = Image.new("L", (dots, CHAR_H), 255)
        ImageDraw.Draw(cut).line((0, CHAR_H // 2, dots, CHAR_H // 2), fill=128, width=1)
        return cut
    if line.kind in ("qr", "image"):
        return line.image if line.image.width <= dots else line.image.crop((0, 0, dots, line.image.height))
    return _text_block(line.text, line.style, dots)


def _text_block(text: str, style: Style, dots: int) -> Image.Image:
    """One text line: drawn on the character grid, then magnified (width, height) times."""
    cells = sum(char_width(ch) for ch in text)
    image = Image.new("L", (max(cells * CHAR_W, 1), CHAR_H), 255)
    draw = ImageDraw.Draw(image)
    x = 0
    for ch in text:
        font = _font(MONO_FONT if char_width(ch) == 1 else find_cjk_font())
        for dx in (0, 1) if style.bold else (0,):  # bold: struck twice, one dot apart
            draw.text((x + dx, CHAR_H - 3), ch, font=font, fill=0, anchor="ls")
        x += char_width(ch) * CHAR_W
    if style.underline:
        draw.line((0, CHAR_H - 2, image.width, CHAR_H - 2), fill=0, width=1)
    if (style.width, style.height) != (1, 1):
        image = image.resize((image.width * style.width, CHAR_H * style.height), Image.NEAREST)
    return image if image.width <= dots else image.crop((0, 0, dots, image.height))


def _x(align: str, width: int, dots: int) -> int:
    return {"left": 0, "center": (dots - width) // 2, "right": dots - width}[align]


@lru_cache(maxsize=4)
def _font(path: Path | None) -> ImageFont.FreeTypeFont:
    """A 20-pixel face for a 12 x 24 cell (Pillow's default font when `path` is missing)."""
    if path is None or not Path(path).is_file():
        return ImageFont.load_default(20)
    return ImageFont.truetype(str(path), 20)
