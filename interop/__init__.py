"""Real WireGuard peers for interop tests (see kernel_guest.py)."""
