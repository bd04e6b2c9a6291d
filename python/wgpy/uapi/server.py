"""The UAPI server: the socket `wg` talks to, and its lifetime.

The protocol itself is wgpy.uapi.protocol (sans I/O); this module only does
the I/O, applies set requests through wgpy.changes and serializes them.

- The socket is an AF_UNIX stream socket, /var/run/wireguard/IFACE.sock,
  made under umask 077 (srwx------) in a 0755 directory. The directory is
  refused unless it is a real directory (not a symlink) owned by root or the
  daemon's user, that neither group nor others may write: whoever can
  write it could put their own socket where `wg` looks. If the path exists,
  it is probed: a refused connection means a stale socket, which is
  replaced; an accepted one means the interface is in use. The socket is
  removed when serving stops (a daemon that dropped to a user who cannot
  write the directory cannot, and says so; wg(8) removes such a stale
  socket); the daemon exits when it is deleted (`wait_socket_removed`:
  inotify, else polling).
- Requests on all connections are serialized by the device's configuration
  lock (also taken by the registry sync): a get never sees half a set.
- Set requests over 1 MiB are parsed in a worker thread, so the device's own
  tasks keep running meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import socket
import stat
import struct
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from wgpy.changes import ChangeError, apply
from wgpy.uapi.protocol import RequestReader, errno_reply, format_get, parse_set

if TYPE_CHECKING:
    from wgpy.device import Device

log = logging.getLogger("wgpy.uapi")

RECEIVE_SIZE = 64 << 10
THREAD_PARSE_SIZE = 1 << 20
STALE_PROBE_TIMEOUT = 1.0
POLL_INTERVAL = 1.0
LISTEN_BACKLOG = 128


async def handle_set(device: Device, body: bytes, lock: trio.Lock) -> int:
    """Parses and applies one set request; returns the errno for the reply."""
    try:
        if len(body) > THREAD_PARSE_SIZE:
            change = await trio.to_thread.run_sync(parse_set, body)
        else:
            change = parse_set(body)
        async with lock:
            await apply(device, change)
    except ChangeError as e:
        log.warning("UAPI: set failed: %s", e)
        return -e.code
    except Exception:
        log.exception("UAPI: set failed unexpectedly")
        return -errno.EIO
    return 0


async def handle_get(device: Device, lock: trio.Lock) -> bytes | None:
    """The reply to a get, or None if the device cannot answer (closes the connection)."""
    try:
        async with lock:  # never between the steps of a set
            return format_get(device)
    except Exception:
        log.exception("UAPI: get failed unexpectedly")
        return None


async def serve_connection(device: Device, stream: trio.abc.Stream, lock: trio.Lock) -> None:
    """Answers requests on one connection until the client or a framing error ends it."""
    reader = RequestReader()
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                frame = reader.next_frame()
                if frame is None:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if data:
                        reader.feed(data)
                    else:
                        reader.feed_eof()
                    continue
                if frame.kind == "close":
                    return
                if frame.kind == "reply-and-close":
                    await stream.send_all(frame.reply)
                    return
                if frame.kind == "get":
                    reply = await handle_get(device, lock)
                    if reply is None:
                        return
                else:
                    reply = errno_reply(await handle_set(device, frame.body, lock))
                await stream.send_all(reply)


async def _serve_connection_logged(
    device: Device, stream: trio.abc.Stream, lock: trio.Lock
) -> None:
    # One connection's failure must never stop the server.
    try:
        await serve_connection(device, stream, lock)
    except Exception:
        log.exception("UAPI: connection failed")


def _file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _bind_private(sock: socket.socket, path: Path) -> None:
    """Binds with umask 077, as wireguard-go: the socket is srwx------ from the start."""
    old_umask = os.umask(0o077)
    try:
        sock.bind(os.fspath(path))
    finally:
        os.umask(old_umask)


def _check_not_served(path: Path) -> None:
    """Raises if `path` is a socket someone serves (or not a socket at all);
    a stale one (nobody listening) may be replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(STALE_PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("UAPI: replacing stale socket %s", path)
            return
        except (TimeoutError, BlockingIOError):
            pass  # a full backlog: someone serves it
    raise OSError(errno.EADDRINUSE, f"interface in use: {path} is served by another process")


def check_directory(directory: Path, owners: Collection[int] = ()) -> None:
    """Raises OSError unless `directory` is safe to serve from (see above)."""
    st = os.lstat(directory)
    allowed = {0, os.geteuid(), *owners}
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{directory} is not a directory (a symlink?)")
    if st.st_uid not in allowed:
        raise OSError(errno.EPERM, f"{directory} is owned by uid {st.st_uid}, not root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise OSError(errno.EPERM, f"{directory} is writable by others (mode {mode:04o})")


def remove_socket(path: Path, identity: tuple[int, int] | None, *, warn: bool = True) -> None:
    """Removes the socket file at `path` if it is still the one with `identity`."""
    if identity is None or _file_identity(path) != identity:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if warn:
            log.warning("UAPI: cannot remove %s (%s); wg removes it as stale", path, e.strerror)


def open_uapi_socket(
    path: str | os.PathLike[str], *, owners: Collection[int] = ()
) -> socket.socket:
    """Creates the listening UAPI socket at `path` (directory 0755, socket
    srwx------), replacing a stale one. Raises OSError (EADDRINUSE, "interface
    in use") if a live process serves that path.

    The socket is bound and listening under a temporary name first, then
    renamed into place: at `path` it accepts connections from the first
    moment. wg(8) unlinks a socket that refuses a connection (a stale one),
    so one seen between bind() and listen() would be deleted by any `wg`
    that looked just then.

    Separate from serve_uapi so a daemon can open it before it drops its
    privileges. `owners`: uids besides root and ours that may own the
    directory (the user the daemon will run as).
    """
    path = Path(path)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    check_directory(path.parent, owners)
    _check_not_served(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        _bind_private(sock, temporary)
        try:
            sock.listen(LISTEN_BACKLOG)
            os.rename(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_uapi(
    device: Device,
    path: str | os.PathLike[str],
    *,
    listener: socket.socket | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serves the UAPI for `device` at `path` until cancelled.

    `task_status.started(path)` is called once the socket accepts
    connections. `listener` is an already listening socket for `path` (from
    `open_uapi_socket`, e.g. opened before dropping privileges). Requests
    are serialized by `device.config_lock`. On exit the socket file is
    removed, unless it has been replaced by another one meanwhile.
    """
    path = Path(path)
    sock = listener if listener is not None else open_uapi_socket(path)
    identity = _file_identity(path)
    listening = trio.socket.from_stdlib_socket(sock)
    lock = device.config_lock
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                try:
                    conn, _ = await listening.accept()
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        raise
                    # Out of descriptors or memory: let current connections finish.
                    log.warning("UAPI: accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_serve_connection_logged, device, trio.SocketStream(conn), lock)
    finally:
        listening.close()
        remove_socket(path, identity)


# --- exiting when the socket file is deleted -----------------------------------------

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
IN_ATTRIB = 0x0000_0004  # unlink changes the link count: the first sign
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_IGNORED = 0x0000_8000  # the watch is gone
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


def _inotify_watch(path: bytes) -> int | None:
    """A non-blocking inotify fd watching `path`, or None if inotify is unavailable."""
    libc = _libc()
    if libc is None:
        return None
    fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, path, IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0:
        os.close(fd)
        return None
    return fd


def _drain_events(fd: int) -> int:
    """Reads every queued inotify event; returns their masks OR-ed together."""
    masks = 0
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return masks
        offset = 0
        while offset + _EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            masks |= mask
            offset += _EVENT_HEADER.size + length


async def wait_socket_removed(path: str | os.PathLike[str]) -> None:
    """Returns once the file at `path` is deleted, renamed or replaced by another.

    Uses inotify (IN_ATTRIB|IN_DELETE_SELF|IN_MOVE_SELF, re-checking the path
    after each event, as wireguard-go does), or polls every second if inotify
    is unavailable. Returns at once if there is no file.
    """
    name = os.fspath(path)
    fd = _inotify_watch(os.fsencode(name))  # before the first check, so no change is missed
    try:
        identity = _file_identity(name)
        while identity is not None and _file_identity(name) == identity:
            if fd is None:
                await trio.sleep(POLL_INTERVAL)
                continue
            await trio.lowlevel.wait_readable(fd)
            if _drain_events(fd) & IN_IGNORED:
                # The watch ended (file gone or filesystem unmounted): poll from now on.
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
                fd = None
    finally:
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
