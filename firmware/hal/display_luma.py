"""Graphic display backend: luma.lcd (ST7789, ILI9341) and luma.oled (SSD1306) over SPI or I2C.

Display contract (firmware/hal/display.py): `show(screen)` runs on the loop and never
blocks; it hands the screen to a ScreenWorker, whose daemon thread renders it (render.py)
and sends it to the panel (tens of ms over SPI). Only the newest screen is drawn: one that
arrives while a frame is being sent replaces any screen still waiting. A failed frame is
logged with the device, sets `fault`, and the next screen tries again. `set_status(status)`
(loop thread, non-blocking; the terminal calls it after each change of the link or of the
store-and-forward queue) sets the status bar and redraws the last screen. `close()` (loop
thread) stops the worker within about a second and releases the panel.

`build_luma(kind, ...)` imports luma lazily; a missing library, GPIO module or bus is a
DeviceError naming the display.
"""
from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path
from typing import Callable

from firmware.flows import zh
from firmware.flows.types import LinkStatus, Screen
from firmware.hal import DeviceError
from firmware.hal.render import CJK_FONTS, find_cjk_font, render

__all__ = ["LumaDisplay", "FrameDisplay", "ScreenWorker", "build_luma", "KINDS", "LANGS"]

log = logging.getLogger("kpos.display")

# kind -> (module, class, usual bus, package to install)
KINDS = {
    "st7789": ("luma.lcd.device", "st7789", "spi", "luma.lcd"),
    "ili9341": ("luma.lcd.device", "ili9341", "spi", "luma.lcd"),
    "ssd1306": ("luma.oled.device", "ssd1306", "i2c", "luma.oled"),
}
BUSES = ("spi", "i2c")
LANGS = ("en", "zh")


class ScreenWorker:
    """A daemon thread calling `draw(frame)` for the newest submitted frame.

    `submit` (any thread) never blocks. `flush(timeout)` waits until every submitted frame
    is drawn (True) or the timeout passes (False). `fault` is "" while frames draw, else
    the last error, short, for the operator.
    """

    def __init__(self, draw: Callable[[object], None], name: str, what: str):
        self.fault = ""
        self._draw = draw
        self._what = what
        self._cond = threading.Condition()
        self._pending: object | None = None
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, frame: object) -> None:
        with self._cond:
            self._pending = frame
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending is not None)
                if self._stop:
                    return
                frame, self._pending, self._busy = self._pending, None, True
            self._draw_one(frame)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _draw_one(self, frame: object) -> None:
        try:
            self._draw(frame)
        except Exception as exc:  # any driver error: log it, keep the worker alive
            if not self.fault:
                log.warning("%s: frame not shown: %s", self._what, exc, exc_info=True)
            self.fault = f"display error: {exc}"[:60]
        else:
            self.fault = ""


class FrameDisplay:
    """The Display contract over a ScreenWorker; a backend gives `_draw(screen, qr, status)`
    (worker thread, may block) and `_release()` (close, after the worker stopped)."""

    def __init__(self, what: str):
        self._status: LinkStatus | None = None
        self._last: tuple[Screen, str | None] | None = None
        self._worker = ScreenWorker(lambda frame: self._draw(*frame), "kpos-display", what)

    @property
    def fault(self) -> str:
        return self._worker.fault

    def show(self, screen: Screen, *, qr: str | None = None) -> None:
        """Loop thread, non-blocking. `qr`: text for a QR code beside the lines (graphic only)."""
        self._last = (screen, qr)
        self._worker.submit((screen, qr, self._status))

    def set_status(self, status: LinkStatus | None) -> None:
        """Loop thread: the status bar from now on (None: none); redraws the last screen."""
        self._status = status
        if self._last is not None:
            screen, qr = self._last
            self.show(screen, qr=qr)

    def flush(self, timeout: float) -> bool:
        """Wait until the screens shown so far are on the panel (tests, shutdown)."""
        return self._worker.flush(timeout)

    def close(self) -> None:
        self._worker.close()
        self._release()

    def _draw(self, screen: Screen, qr: str | None, status: LinkStatus | None) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class LumaDisplay(FrameDisplay):
    """Shows screens on a luma device (anything with `size`, `mode`, `display(image)`,
    `cleanup()`: a real panel or luma.core.device.dummy). lang "zh": screens are drawn
    in Chinese (firmware.flows.zh.translate, on the worker thread); "en": as given."""

    def __init__(self, device, *, font: str | Path | None = None,
                 cjk_font: str | Path | None = None, what: str = "display", lang: str = "en"):
        if lang not in LANGS:
            raise ValueError(f"{what}: lang {lang!r} not in {LANGS}")
        self.device = device
        self._fonts = {"font": font, "cjk_font": cjk_font}
        self._translate = zh.translate if lang == "zh" else None
        super().__init__(what)

    def _draw(self, screen, qr, status) -> None:
        if self._translate is not None:
            screen = self._translate(screen)
        image = render(screen, self.device.size, mode=self.device.mode, status=status, qr=qr,
                       **self._fonts)
        self.device.display(image)

    def _release(self) -> None:
        self.device.cleanup()


def build_luma(kind: str, *, bus: str | None = None, port: int | None = None,
               address: int = 0x3C, spi_device: int = 0, width: int | None = None,
               height: int | None = None, rotate: int = 0, font: str | None = None,
               cjk_fonts=CJK_FONTS, gpio=None, interface=None, lang: str = "en") -> LumaDisplay:
    """A LumaDisplay on a `kind` panel (KINDS). bus: "spi" | "i2c" (None: the kind's usual);
    port: SPI port (default 0) or I2C bus (default 1); address: I2C address; rotate: 0..3
    quarter turns; gpio: an RPi.GPIO-compatible module (None: luma imports RPi.GPIO);
    interface: a ready luma serial interface (tests pass luma.core.interface.serial.noop());
    lang: "en" | "zh" (LANGS), the language screens are drawn in."""
    if kind not in KINDS:
        raise DeviceError(f"display 'luma': kind {kind!r} not in {tuple(KINDS)}")
    if lang not in LANGS:
        raise DeviceError(f"display 'luma': lang {lang!r} not in {LANGS}")
    module, cls, usual_bus, package = KINDS[kind]
    what = f"display 'luma' {kind}"
    if font is not None and not Path(font).is_file():
        raise DeviceError(f"{what}: font file {font} not found")
    size = {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    try:
        from luma.core.error import Error as LumaError
    except ImportError as exc:
        raise DeviceError(f"{what} needs the luma.core package (pip install kpos[pi]): {exc}") from exc
    try:
        serial = interface or _interface(bus or usual_bus, port, address, spi_device, gpio)
        device_cls = getattr(importlib.import_module(module), cls)
        extra = {"gpio": gpio} if gpio is not None and package == "luma.lcd" else {}
        device = device_cls(serial, rotate=rotate, **size, **extra)
    except ImportError as exc:
        raise DeviceError(f"{what} needs {exc.name or package} (pip install kpos[pi]): {exc}") from exc
    except (OSError, LumaError, ValueError) as exc:
        raise DeviceError(f"{what}: {exc}") from exc
    return LumaDisplay(device, font=font, cjk_font=find_cjk_font(cjk_fonts), what=what, lang=lang)


def _interface(bus: str, port: int | None, address: int, spi_device: int, gpio):
    from luma.core.interface import serial

    if bus == "i2c":
        return serial.i2c(port=1 if port is None else port, address=address)
    if bus == "spi":
        return serial.spi(port=0 if port is None else port, device=spi_device, gpio=gpio)
    raise ValueError(f"bus {bus!r} not in {BUSES}")
