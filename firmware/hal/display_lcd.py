"""Character LCD backend: HD44780 (20x4, 16x2) through RPLCD, usually on an I2C backpack.

`layout(screen, cols, rows, status)` is the pure text layout of a Screen: the title on the
first row with a link glyph at its right end, then as many of the lines as fit (an amount
line is kept first when they do not all fit), each cut to `cols` ("..." marks a cut) and
padded with spaces; characters outside printable ASCII show as "?" (the HD44780 ROM has
no Chinese).

CharLcdDisplay keeps the Display contract (display_luma.FrameDisplay): `show` never
blocks; `set_status(LinkStatus)` (loop thread, non-blocking) puts the link glyph in the
title row from then on and redraws; its worker writes the rows through RPLCD's CharLCD
API (cursor_pos, write_string; RPLCD itself skips characters already on the glass). An
I2C backpack takes ~100 ms for a full 20x4 screen. `build_hd44780(...)` imports RPLCD
lazily; errors are DeviceError.
"""
from __future__ import annotations

from firmware.flows.types import LinkStatus, Screen, fit
from firmware.hal import DeviceError
from firmware.hal.display_luma import FrameDisplay
from firmware.hal.render import is_amount

__all__ = ["layout", "link_glyph", "CharLcdDisplay", "build_hd44780", "SIZES", "EXPANDERS"]

SIZES = ((20, 4), (16, 2), (20, 2), (16, 4))  # (cols, rows) of the HD44780 modules sold
EXPANDERS = ("PCF8574", "MCP23008", "MCP23017")  # RPLCD's I2C backpack chips


def link_glyph(status: LinkStatus | None) -> str:
    """"" without a status; "*" online, "!" offline, "?" not known yet; then the queue
    count when anything is queued ("!3")."""
    if status is None:
        return ""
    glyph = {True: "*", False: "!", None: "?"}[status.online]
    return glyph + (str(min(status.queued, 99)) if status.queued else "")


def layout(screen: Screen, cols: int, rows: int, status: LinkStatus | None = None) -> list[str]:
    """`rows` strings of exactly `cols` characters showing `screen` (see the module doc)."""
    glyph = link_glyph(status)
    title = fit(screen.title, cols - len(glyph) - 1) if glyph else fit(screen.title, cols)
    first = title.ljust(cols - len(glyph)) + glyph
    body = [_ascii(fit(line, cols)).ljust(cols) for line in _pick(screen.lines, rows - 1)]
    blank = [" " * cols] * (rows - 1 - len(body))
    return [_ascii(first), *body, *blank]


def _pick(lines: tuple[str, ...], room: int) -> list[str]:
    """The lines that fit `room` rows, in order; an amount line goes in before the others."""
    if len(lines) <= room:
        return list(lines)
    order = sorted(range(len(lines)), key=lambda i: not is_amount(lines[i]))
    return [lines[i] for i in sorted(order[:room])]


def _ascii(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


class CharLcdDisplay(FrameDisplay):
    """Shows screens on an RPLCD CharLCD (or anything with cursor_pos, write_string and
    close(clear=...)) of `cols` x `rows` characters."""

    def __init__(self, lcd, cols: int = 20, rows: int = 4, what: str = "display 'hd44780'"):
        if (cols, rows) not in SIZES:
            raise ValueError(f"{what}: size {cols}x{rows} not in {SIZES}")
        self.lcd = lcd
        self.cols, self.rows = cols, rows
        super().__init__(what)

    def _draw(self, screen, qr, status) -> None:
        for row, text in enumerate(layout(screen, self.cols, self.rows, status)):
            self.lcd.cursor_pos = (row, 0)
            self.lcd.write_string(text)

    def _release(self) -> None:
        self.lcd.close(clear=True)


def build_hd44780(i2c_expander: str = "PCF8574", address: int = 0x27, cols: int = 20,
                  rows: int = 4, port: int = 1, charmap: str = "A00") -> CharLcdDisplay:
    """A CharLcdDisplay on an I2C backpack: expander one of EXPANDERS, `address` its I2C
    address (0x27 or 0x3F for most PCF8574 boards), `port` the I2C bus (1 on a Pi)."""
    what = f"display 'hd44780' at I2C {port}:{address:#04x}"
    if i2c_expander not in EXPANDERS:
        raise DeviceError(f"{what}: expander {i2c_expander!r} not in {EXPANDERS}")
    if (cols, rows) not in SIZES:
        raise DeviceError(f"{what}: size {cols}x{rows} not in {SIZES}")
    try:
        from RPLCD.i2c import CharLCD
        lcd = CharLCD(i2c_expander, address, port=port, cols=cols, rows=rows, charmap=charmap,
                      auto_linebreaks=False)
    except ImportError as exc:
        raise DeviceError(f"{what} needs {exc.name or 'RPLCD'} (pip install kpos[pi]): {exc}") from exc
    except OSError as exc:  # no such bus, nothing answering at the address
        raise DeviceError(f"{what}: {exc}") from exc
    return CharLcdDisplay(lcd, cols, rows, what=what)
