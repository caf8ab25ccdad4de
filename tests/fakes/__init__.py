"""Scripted stand-ins for hardware libraries, so device code runs in tests without a GPU."""
