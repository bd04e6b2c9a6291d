//! `wgpy._core.Netstack`: a userspace TCP/IP stack as a device's inside
//! (netstack/mod.rs). Connections and UDP ports are spliced to local
//! sockets the caller passes by descriptor (each call takes a copy, so the
//! caller closes its own); results arrive as event tuples when `event_fd`
//! is readable:
//! ("connected", id), ("failed", id, reason, timed_out),
//! ("accepted", port, id, (remote host, port), (local host, port)).

use std::sync::Arc;

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::netstack::{self, StackConfig, StackError, StackEvent, UDP_ADDR_LEN};

use super::convert::{addr_tuple, duration, ip_of};
use super::datapath::PyDatapath;
use super::errors::InvalidArgumentError;

#[pyclass(module = "wgpy._core", name = "Netstack", frozen)]
pub(crate) struct PyNetstack(pub(crate) Arc<netstack::Netstack>);

fn stack_error(e: StackError) -> PyErr {
    let msg = e.to_string();
    match e {
        StackError::InvalidAddress(_) | StackError::InvalidArgument(_) => {
            InvalidArgumentError::new_err(msg)
        }
        StackError::PortInUse(_) => PyOSError::new_err((libc::EADDRINUSE, msg)),
        StackError::NoFreePort => PyOSError::new_err((libc::EADDRNOTAVAIL, msg)),
        StackError::NoAddress(_) => PyOSError::new_err((libc::EAFNOSUPPORT, msg)),
        StackError::NotRunning => PyRuntimeError::new_err(msg),
        StackError::Io(io) => io.into(),
    }
}

fn event_tuple<'py>(py: Python<'py>, e: StackEvent) -> PyResult<Bound<'py, PyTuple>> {
    match e {
        StackEvent::Connected { id } => ("connected", id).into_pyobject(py),
        StackEvent::Failed {
            id,
            reason,
            timed_out,
        } => ("failed", id, reason, timed_out).into_pyobject(py),
        StackEvent::Accepted {
            port,
            id,
            remote,
            local,
        } => (
            "accepted",
            port,
            id,
            addr_tuple(&remote),
            addr_tuple(&local),
        )
            .into_pyobject(py),
    }
}

// The signature's default, written as a literal so Python sees it.
const _: () = assert!(netstack::DEFAULT_TCP_SEND_BUFFER == 65536);

#[pymethods]
impl PyNetstack {
    /// `addresses`: (address, prefix length) pairs, one per family at most.
    #[new]
    #[pyo3(signature = (addresses, mtu=1420, tcp_buffer=262144, tcp_send_buffer=65536))]
    fn new(
        addresses: Vec<(String, u8)>,
        mtu: usize,
        tcp_buffer: usize,
        tcp_send_buffer: usize,
    ) -> PyResult<Self> {
        let addresses = addresses
            .iter()
            .map(|(a, p)| Ok((ip_of(a)?, *p)))
            .collect::<PyResult<Vec<_>>>()?;
        let config = StackConfig {
            addresses,
            mtu,
            tcp_buffer,
            tcp_send_buffer,
        };
        Ok(Self(Arc::new(
            netstack::Netstack::new(config).map_err(stack_error)?,
        )))
    }

    /// Starts the stack's thread, sending through `datapath` (which must
    /// have been made by `Datapath.userspace` with this stack).
    fn start(&self, datapath: &PyDatapath) -> PyResult<()> {
        self.0.start(datapath.0.sender()).map_err(stack_error)
    }

    fn stop(&self, py: Python<'_>) {
        let stack = self.0.clone();
        py.allow_threads(move || stack.stop());
    }

    #[pyo3(signature = (host, port, fd=None, timeout=10.0))]
    fn connect(&self, host: &str, port: u16, fd: Option<i32>, timeout: f64) -> PyResult<u64> {
        let remote = std::net::SocketAddr::new(ip_of(host)?, port);
        self.0
            .connect(remote, fd, duration(timeout)?)
            .map_err(stack_error)
    }

    /// `prefix`: bytes sent on the connection before the socket's own.
    #[pyo3(signature = (id, fd, prefix=None))]
    fn attach(&self, id: u64, fd: i32, prefix: Option<&[u8]>) -> PyResult<()> {
        self.0
            .attach(id, fd, prefix.unwrap_or_default())
            .map_err(stack_error)
    }

    fn abort(&self, id: u64) {
        self.0.abort(id);
    }

    #[pyo3(signature = (port, backlog=128))]
    fn listen(&self, port: u16, backlog: usize) -> PyResult<u16> {
        self.0.listen(port, backlog).map_err(stack_error)
    }

    fn unlisten(&self, port: u16) {
        self.0.unlisten(port);
    }

    fn udp_bind(&self, port: u16, fd: i32) -> PyResult<u16> {
        self.0.udp_bind(port, fd).map_err(stack_error)
    }

    #[getter]
    fn event_fd(&self) -> i32 {
        self.0.event_fd()
    }

    #[pyo3(signature = (max=64))]
    fn take_events<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.0
            .take_events(max)
            .into_iter()
            .map(|e| event_tuple(py, e))
            .collect()
    }

    /// (TCP connections held, decrypted packets dropped for a full queue).
    fn stats(&self) -> (usize, u64) {
        let s = self.0.stats();
        (s.tcp_flows, s.inbound_dropped)
    }

    /// Bytes of the address prefix on every UDP datagram (udp_bind).
    #[classattr]
    const UDP_ADDR_LEN: usize = UDP_ADDR_LEN;

    /// Each TCP connection's send buffer unless the embedder says otherwise
    /// (why this size: rust/src/netstack/tcp.rs).
    #[classattr]
    const DEFAULT_TCP_SEND_BUFFER: usize = netstack::DEFAULT_TCP_SEND_BUFFER;
}
