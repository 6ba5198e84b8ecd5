"""KPOS: bank card terminal firmware (package `firmware`, command `kpos`)."""

__version__ = "0.1.0"
