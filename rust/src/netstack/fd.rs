//! The system calls on local sockets that the netstack thread makes: all
//! non-blocking, none raising SIGPIPE (MSG_NOSIGNAL), each returning the
//! io::Error the kernel gave.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

fn check(rc: isize) -> io::Result<usize> {
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into a live buffer.
    check(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the kernel reads at most buf.len() bytes from a live buffer.
    check(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) })
}

/// Sends one datagram made of two parts (a header and a payload).
pub(crate) fn send_parts(fd: RawFd, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is valid; we then point it at `iov`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: msg points at two live iovecs the kernel only reads.
    check(unsafe { libc::sendmsg(fd, &msg, flags) })
}

/// No more data from us (the peer reads end of file).
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: no pointers; an error (already shut, not connected) is harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Closes a TCP socket with a reset rather than a FIN (SO_LINGER 0), so
/// its peer sees the connection fail rather than end.
pub(crate) fn close_with_reset(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live linger struct of the size given; failure (not
    // a TCP socket) leaves an ordinary close, which is what we want then.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(fd);
}

pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an error on a local socket means it is unusable.
pub(crate) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
