"""The python-escpos "usb" printer backend against a fake USB printer on pyusb's own backend
layer (usb.backend.IBackend): one device, one configuration, one interface with a bulk OUT
and a bulk IN endpoint; what comes out on OUT goes to the FakeEscpos of
test_printer_escpos, whose DLE EOT answers come back on IN. The transport-neutral printer
tests (paper out before and inside a job, status states) run over it there, through the
`link` fixture; these are the USB-only ones."""
from __future__ import annotations

import errno
from array import array
from types import SimpleNamespace

import pytest
import usb.backend
import usb.backend.libusb1
from usb.core import USBError, USBTimeoutError

from firmware.hal import DeviceError
from firmware.hal.printer import OFFLINE, PrinterError
from firmware.hal.printer_escpos import build_escpos
from firmware.receipts import render_lines
from test_printer_escpos import ASK, RECEIPT, TIMEOUT, FakeEscpos, printer_config

VENDOR, PRODUCT = 0x0416, 0x5011  # Xprinter XP-58, the config/terminal.toml example
OUT_EP, IN_EP = 0x03, 0x81  # its endpoints; python-escpos would guess 0x01 and 0x82
USB_CFG = printer_config(usb_vendor=VENDOR, usb_product=PRODUCT)
NOT_FOUND = "USB printer 0416:5011 not found: check the cable and the udev rule (boot/99-kpos.rules)"


def _descriptor(**fields) -> SimpleNamespace:
    return SimpleNamespace(bLength=0, extra_descriptors=[], **fields)


DEVICE = _descriptor(bDescriptorType=1, bcdUSB=0x0200, bDeviceClass=0, bDeviceSubClass=0,
                     bDeviceProtocol=0, bMaxPacketSize0=64, idVendor=VENDOR, idProduct=PRODUCT,
                     bcdDevice=0x0100, iManufacturer=0, iProduct=0, iSerialNumber=0,
                     bNumConfigurations=1, address=5, bus=1, port_number=2, port_numbers=(2,),
                     speed=2)
CONFIGURATION = _descriptor(bDescriptorType=2, wTotalLength=32, bNumInterfaces=1,
                            bConfigurationValue=1, iConfiguration=0, bmAttributes=0xC0,
                            bMaxPower=50)
INTERFACE = _descriptor(bDescriptorType=4, bInterfaceNumber=0, bAlternateSetting=0,
                        bNumEndpoints=2, bInterfaceClass=7, bInterfaceSubClass=1,
                        bInterfaceProtocol=2, iInterface=0)  # printer class, bidirectional
ENDPOINTS = [_descriptor(bDescriptorType=5, bEndpointAddress=address, bmAttributes=2,  # bulk
                         wMaxPacketSize=64, bInterval=0, bRefresh=0, bSynchAddress=0)
             for address in (OUT_EP, IN_EP)]


class UsbPrinter(usb.backend.IBackend):
    """A pyusb backend holding one USB thermal printer, driven by the test.

    `plugged` False: not enumerated, and I/O on an open handle fails with ENODEV, as after
    an unplug. `denied` True: opening fails with EACCES, as without the udev rule.
    `out` is every byte written to the OUT endpoint; `opens` counts device opens;
    `timeouts` holds the millisecond timeouts bulk transfers were given.
    """

    def __init__(self):
        super().__init__()
        self.fake = FakeEscpos()
        self.plugged = True
        self.denied = False
        self.opens = 0
        self.out = bytearray()
        self.timeouts: set[int] = set()
        self._answers = bytearray()  # status bytes waiting on the IN endpoint

    def enumerate_devices(self):
        return ["xp58"] if self.plugged else []

    def get_device_descriptor(self, dev):
        return DEVICE

    def get_configuration_descriptor(self, dev, config):
        return CONFIGURATION

    def get_interface_descriptor(self, dev, intf, alt, config):
        if (intf, alt) != (0, 0):
            raise IndexError(f"no interface {intf}, {alt}")  # how pyusb learns the count
        return INTERFACE

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        return ENDPOINTS[ep]

    def open_device(self, dev):
        if self.denied:
            raise USBError("Access denied (insufficient permissions)", -3, errno.EACCES)
        self.opens += 1
        return self.opens

    def close_device(self, dev_handle):
        pass

    def set_configuration(self, dev_handle, config_value):
        self._check_plugged()

    def get_configuration(self, dev_handle):
        self._check_plugged()
        return CONFIGURATION.bConfigurationValue

    def claim_interface(self, dev_handle, intf):
        self._check_plugged()

    def release_interface(self, dev_handle, intf):
        pass

    def reset_device(self, dev_handle):
        self._check_plugged()
        self._answers.clear()

    def bulk_write(self, dev_handle, ep, intf, data, timeout):
        self._check_plugged()
        assert ep == OUT_EP, f"write to endpoint {ep:#x}"
        self.timeouts.add(timeout)
        self.out += bytes(data)
        self._answers += self.fake.feed(bytes(data))
        return len(data)

    def bulk_read(self, dev_handle, ep, intf, buff, timeout):
        self._check_plugged()
        assert ep == IN_EP, f"read from endpoint {ep:#x}"
        self.timeouts.add(timeout)
        if not self._answers:
            raise USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
        count = min(len(buff), len(self._answers))
        buff[:count] = array("B", self._answers[:count])  # pyusb reads into an array
        del self._answers[:count]
        return count

    def _check_plugged(self) -> None:
        if not self.plugged:
            raise USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


def usb_link():
    """(fake USB printer, EscposPrinter on it): the `link` fixture's "usb" transport."""
    device = UsbPrinter()
    return device, build_escpos(USB_CFG, "usb", timeout=TIMEOUT, usb_backend=device)


@pytest.fixture
def usb_printer():
    device, printer = usb_link()
    yield device, printer
    printer.close()


def test_builds_without_opening():
    device, printer = usb_link()
    assert printer.device == "usb 0416:5011" and printer.query and device.opens == 0


def test_receipt_goes_to_the_bulk_out_endpoint(usb_printer):
    device, printer = usb_printer
    raw = render_lines([("normal", "TOTAL            RMB 12.34")])
    printer.print_receipt(raw, "preview", "b000001-s000001-merchant")
    check = ASK[1] + ASK[4]
    assert bytes(device.out) == check + raw + check
    assert raw.startswith(b"\x1b@")  # ESC @ init
    assert b"TOTAL            RMB 12.34\n" in raw
    assert raw.endswith(b"\x1dV\x00")  # GS V 0 full cut
    assert device.timeouts == {round(TIMEOUT * 1000)}  # writes and status reads, in ms


def test_missing_device_is_offline_with_a_hint(usb_printer):
    device, printer = usb_printer
    device.plugged = False
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1")
    assert exc.value.reason == OFFLINE and printer.hint == NOT_FOUND
    assert device.out == b"" and device.opens == 0


def test_unplugged_is_offline_then_prints_when_back(usb_printer):
    device, printer = usb_printer
    printer.print_receipt(RECEIPT, "preview", "r1-merchant")
    device.plugged = False  # the open handle now fails: ENODEV
    with pytest.raises(PrinterError) as exc:
        printer.print_receipt(RECEIPT, "preview", "r1-customer")
    assert exc.value.reason == OFFLINE and printer.hint == NOT_FOUND
    assert printer.status() == OFFLINE and printer.hint == NOT_FOUND  # still gone: not found
    device.plugged = True
    printer.print_receipt(RECEIPT, "preview", "r1-customer")
    assert bytes(device.fake.data) == RECEIPT * 2 and printer.hint == ""


def test_permission_denied_names_the_group_and_the_udev_rule(usb_printer):
    device, printer = usb_printer
    device.denied = True
    assert printer.status() == OFFLINE
    assert printer.hint == ("USB printer 0416:5011: permission denied: the service user needs "
                            "group kpos and the udev rule (boot/99-kpos.rules)")
    device.denied = False
    assert printer.status() == "ok" and printer.hint == ""


def test_other_usb_failure_is_offline_without_a_hint(usb_printer):
    device, printer = usb_printer
    device.fake.state = "silent"  # the IN endpoint times out
    assert printer.status() == OFFLINE and printer.hint == ""


def test_no_libusb_is_a_device_error(monkeypatch):
    monkeypatch.setattr(usb.backend.libusb1, "get_backend", lambda *args, **kwargs: None)
    with pytest.raises(DeviceError, match="libusb-1.0"):
        build_escpos(USB_CFG, "usb")
