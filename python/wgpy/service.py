"""How the daemon fits into a system: where its log goes, and readiness.

Logs:
- LOG_LEVEL=verbose|debug|info|error|silent sets wgpy's own verbosity
  (default error); libraries stay at warnings.
- Every record has a level and the logger's name; file and terminal lines
  also carry an ISO 8601 timestamp.
- The sink: `--log-file FILE` (appended, created 0640) if given; else, in
  the foreground, stderr (with syslog priority prefixes `<N>` instead of a
  timestamp when stderr is the journal, JOURNAL_STREAM, which timestamps
  itself); else, detached, syslog at /dev/log (or WGPY_SYSLOG), which
  journald serves on systemd machines, facility daemon, tag `wgpy[PID]`.
- Sinks are opened before privileges are dropped, so the daemon can keep
  writing to them as any user.

Readiness (sd_notify): under systemd `Type=notify` (NOTIFY_SOCKET set),
`READY=1` is sent once the UAPI socket serves, and `STOPPING=1` when the
daemon shuts down. The notification socket is opened at start, so a
privilege drop does not lose it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.handlers
import os
import socket
import sys

LOG_LEVELS = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 1,
}
SYSLOG_ENV = "WGPY_SYSLOG"
DEFAULT_SYSLOG = "/dev/log"
FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMESTAMPED = "%(asctime)s " + FORMAT
# journald's (and syslog's) priorities for Python's levels.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class TimestampedFormatter(logging.Formatter):
    """ISO 8601 local time with milliseconds: handovers take milliseconds."""

    def __init__(self) -> None:
        super().__init__(TIMESTAMPED)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        at = datetime.datetime.fromtimestamp(record.created).astimezone()
        return at.isoformat(timespec="milliseconds")


class JournalFormatter(logging.Formatter):
    """`<priority>` before each line, which journald reads as the level."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def log_level() -> int:
    return LOG_LEVELS.get(os.environ.get("LOG_LEVEL", "error").lower(), logging.ERROR)


def syslog_address() -> str:
    return os.environ.get(SYSLOG_ENV, DEFAULT_SYSLOG)


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def _file_handler(path: str) -> logging.Handler:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    handler.setFormatter(TimestampedFormatter())
    return handler


def _syslog_handler() -> logging.Handler:
    # SysLogHandler ignores a missing syslog (and would drop every record):
    # look first, so the caller can say so.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(syslog_address())
    except OSError:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(syslog_address())
    handler = logging.handlers.SysLogHandler(
        syslog_address(), facility=logging.handlers.SysLogHandler.LOG_DAEMON
    )
    handler.ident = f"wgpy[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_journal():
        handler.setFormatter(JournalFormatter(FORMAT))
    else:
        handler.setFormatter(TimestampedFormatter())
    return handler


def configure_logging(*, detached: bool, log_file: str | None) -> str | None:
    """Sends the log to its sink (see above). Raises OSError if the file
    cannot be opened; returns a warning if the daemon is detached and no
    syslog listens (its log is then discarded)."""
    warning = None
    handler: logging.Handler
    if log_file is not None:
        handler = _file_handler(log_file)
    elif detached:
        try:
            handler = _syslog_handler()
        except OSError as e:
            handler = logging.NullHandler()
            warning = (
                f"no syslog at {syslog_address()} ({e.strerror or e}): the daemon's log is "
                "discarded (use --log-file FILE)"
            )
    else:
        handler = _stderr_handler()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("wgpy").setLevel(log_level())
    return warning


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        address = os.environ.get("NOTIFY_SOCKET")
        if not address or address[0] not in "/@":
            return
        if address[0] == "@":
            address = "\0" + address[1:]  # the abstract namespace
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            logging.getLogger("wgpy").warning("cannot reach NOTIFY_SOCKET: %s", e)
            return
        self._sock = sock

    def notify(self, message: str) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(message.encode())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
