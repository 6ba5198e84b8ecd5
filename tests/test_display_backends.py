"""Display backends: luma (dummy device, and each panel kind over a recording serial
interface), the HD44780 text layout, and CharLcdDisplay through RPLCD's real CharLCD logic."""
from __future__ import annotations

import importlib.util

import pytest
from luma.core.device import dummy
from RPLCD.lcd import BaseCharLCD

from firmware.flows.types import LinkStatus, Screen
from firmware.hal import DeviceError
from firmware.hal.display_lcd import CharLcdDisplay, build_hd44780, layout
from firmware.hal.display_luma import LumaDisplay, build_luma
from firmware.hal.render import render

SALE = Screen("SALE", ("Amount", "CNY 12.50", "ENTER to confirm"))
IDLE = Screen("KPOS", ("Key in amount", "ONLINE  queued 0"))


@pytest.fixture
def shown():
    """Displays made by a test, closed at its end."""
    displays = []
    yield displays.append
    for display in displays:
        display.close()


# ---- luma ----

@pytest.mark.parametrize("width, height, mode", [(128, 64, "1"), (240, 240, "RGB"), (320, 240, "RGB")])
def test_luma_display_shows_the_rendered_frame(shown, width, height, mode):
    display = LumaDisplay(dummy(width=width, height=height, mode=mode))
    shown(display)
    display.show(SALE)
    assert display.flush(5)
    assert display.device.image.tobytes() == render(SALE, (width, height), mode=mode).tobytes()
    display.set_status(LinkStatus(False, 2))
    assert display.flush(5)
    expected = render(SALE, (width, height), mode=mode, status=LinkStatus(False, 2))
    assert display.device.image.tobytes() == expected.tobytes()
    display.show(IDLE, qr="https://pay.example.cn/o/1")
    assert display.flush(5)
    expected = render(IDLE, (width, height), mode=mode, status=LinkStatus(False, 2),
                      qr="https://pay.example.cn/o/1")
    assert display.device.image.tobytes() == expected.tobytes()


def test_luma_display_rotated_device_gets_its_logical_size(shown):
    display = LumaDisplay(dummy(width=320, height=240, rotate=1, mode="RGB"))
    shown(display)
    display.show(SALE)
    assert display.flush(5)
    assert display.fault == "" and display.device.size == (240, 320)  # drawn upright ...
    upright = render(SALE, (240, 320), mode="RGB")
    assert display.device.image.tobytes() == display.device.preprocess(upright).tobytes()


class FlakyDevice:
    """A luma-like device whose bus fails while `broken` is set."""

    size, mode = (128, 64), "1"

    def __init__(self):
        self.broken = True
        self.images = []

    def display(self, image):
        if self.broken:
            raise OSError("[Errno 121] Remote I/O error")
        self.images.append(image)

    def cleanup(self):
        pass


def test_a_failed_frame_sets_fault_and_the_next_screen_retries(shown):
    device = FlakyDevice()
    display = LumaDisplay(device)
    shown(display)
    display.show(SALE)
    assert display.flush(5)
    assert "Remote I/O error" in display.fault and device.images == []
    device.broken = False
    display.show(IDLE)
    assert display.flush(5)
    assert display.fault == "" and len(device.images) == 1


def test_close_stops_the_worker_and_releases_the_device():
    device = dummy(width=128, height=64, mode="1")
    display = LumaDisplay(device)
    display.show(SALE)
    display.close()
    assert not display._worker._thread.is_alive()
    assert device.image.getbbox() is None  # luma's cleanup clears the panel


class RecordingSerial:
    """A luma serial interface keeping what the driver sends."""

    def __init__(self):
        self.commands, self.sent = [], bytearray()

    def command(self, *cmd):
        self.commands.append(cmd)

    def data(self, data):
        self.sent.extend(data)

    def cleanup(self):
        pass


class FakeGPIO:
    """Enough of RPi.GPIO for luma.lcd's backlight."""

    BCM, OUT, HIGH, LOW = 11, 0, 1, 0

    def __init__(self):
        self.pins = {}

    def setmode(self, mode):
        pass

    def setwarnings(self, flag):
        pass

    def setup(self, pin, direction):
        self.pins[pin] = None

    def output(self, pin, value):
        self.pins[pin] = value

    def cleanup(self, *pins):
        pass


@pytest.mark.parametrize("kind, size, mode", [("st7789", (240, 240), "RGB"),
                                              ("ili9341", (320, 240), "RGB"),
                                              ("ssd1306", (128, 64), "1")])
def test_build_luma_each_kind_over_a_recording_interface(shown, kind, size, mode):
    serial, gpio = RecordingSerial(), FakeGPIO()
    display = build_luma(kind, interface=serial, gpio=gpio, cjk_fonts=())
    shown(display)
    assert (display.device.size, display.device.mode) == (size, mode)
    sent = len(serial.sent)  # the driver's power-on clear
    display.show(SALE)
    assert display.flush(5)
    frame = serial.sent[sent:]
    assert len(frame) >= size[0] * size[1] // 8 and any(frame)  # a frame with the title bar lit
    if kind != "ssd1306":
        assert gpio.pins[18] == FakeGPIO.HIGH  # backlight on


def test_build_luma_errors():
    with pytest.raises(DeviceError, match="kind 'st7735' not in"):
        build_luma("st7735")
    with pytest.raises(DeviceError, match="font file /nonexistent.ttf not found"):
        build_luma("ssd1306", font="/nonexistent.ttf", interface=RecordingSerial())
    with pytest.raises(DeviceError, match="display 'luma' ssd1306"):
        build_luma("ssd1306", port=97)  # no /dev/i2c-97


def test_build_luma_without_rpi_gpio_names_it():
    if importlib.util.find_spec("RPi") is not None:
        pytest.skip("RPi.GPIO is installed here")
    with pytest.raises(DeviceError, match="needs RPi"):
        build_luma("st7789", interface=RecordingSerial())


# ---- HD44780 ----

def test_layout_20x4():
    assert layout(SALE, 20, 4) == [
        "SALE                ",
        "Amount              ",
        "CNY 12.50           ",
        "ENTER to confirm    ",
    ]
    assert layout(Screen("APPROVED", ("Auth 123456",), tone="ok"), 20, 4,
                  LinkStatus(True, 3)) == [
        "APPROVED          *3",
        "Auth 123456         ",
        " " * 20,
        " " * 20,
    ]


def test_layout_16x2_keeps_the_amount_and_cuts():
    assert layout(SALE, 16, 2) == ["SALE            ", "CNY 12.50       "]
    long = Screen("VOID CONFIRM NOW", ("Original STAN 123456",))
    assert layout(long, 16, 2, LinkStatus(False)) == ["VOID CONFIR... !", "Original STAN..."]
    assert layout(long, 16, 2, LinkStatus(None, 120)) == ["VOID CONF... ?99", "Original STAN..."]
    assert layout(Screen("MENU", ("1 Sale", "2 Void")), 16, 2) == ["MENU            ",
                                                                   "1 Sale          "]


def test_layout_chinese_shows_question_marks():
    assert layout(Screen("交易成功", ("金额 CNY 1.00",)), 16, 2) == ["????            ",
                                                                "?? CNY 1.00     "]


class GlassLCD(BaseCharLCD):
    """RPLCD's own CharLCD logic over an emulated HD44780 DDRAM (what the glass shows)."""

    def __init__(self, cols, rows):
        self.data_bus_mode = 0x00  # LCD_4BITMODE
        self.ddram = bytearray(b" " * 0x80)
        self.address = 0
        self.closed = False
        super().__init__(cols=cols, rows=rows, charmap="A00")

    def _init_connection(self):
        pass

    def _close_connection(self):
        self.closed = True

    def _send_instruction(self, value):
        if value & 0x80:  # set DDRAM address
            self.address = value & 0x7F
        elif value == 0x01:  # clear display
            self.ddram[:] = b" " * 0x80
            self.address = 0

    def _send_data(self, value):
        self.ddram[self.address] = value
        self.address = (self.address + 1) & 0x7F

    def glass(self) -> list[str]:
        cols, rows = self.lcd.cols, self.lcd.rows
        offsets = [0x00, 0x40, cols, 0x40 + cols][:rows]
        return [self.ddram[o:o + cols].decode("ascii") for o in offsets]


@pytest.mark.parametrize("cols, rows", [(20, 4), (16, 2)])
def test_char_lcd_display_writes_the_layout(shown, cols, rows):
    lcd = GlassLCD(cols, rows)
    display = CharLcdDisplay(lcd, cols, rows)
    shown(display)
    display.show(SALE)
    assert display.flush(5)
    assert lcd.glass() == layout(SALE, cols, rows)
    display.set_status(LinkStatus(False, 1))
    display.show(IDLE)
    assert display.flush(5)
    assert lcd.glass() == layout(IDLE, cols, rows, LinkStatus(False, 1))
    assert lcd.glass()[0].endswith("!1")


def test_char_lcd_close_clears_and_closes():
    lcd = GlassLCD(20, 4)
    display = CharLcdDisplay(lcd)
    display.show(SALE)
    display.close()
    assert lcd.closed and lcd.glass() == [" " * 20] * 4


def test_char_lcd_size_checked():
    with pytest.raises(ValueError, match="size 40x1"):
        CharLcdDisplay(GlassLCD(20, 4), 40, 1)


def test_build_hd44780_errors():
    with pytest.raises(DeviceError, match="expander 'XYZ'"):
        build_hd44780("XYZ")
    with pytest.raises(DeviceError, match="size 24x2"):
        build_hd44780(cols=24, rows=2)
    with pytest.raises(DeviceError, match="I2C 97:0x27"):
        build_hd44780(port=97)  # no /dev/i2c-97
