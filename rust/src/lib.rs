//! wgpy's protocol core. Every module but this one is plain Rust; the PyO3
//! bindings below are compiled only with the `python` feature.

pub mod allowedips;
pub mod clock;
pub mod cookie;
pub mod crypto;
pub mod datapath;
pub mod error;
pub mod keys;
pub mod messages;
pub mod noise;
pub mod replay;
pub mod session;
pub mod tai64n;

pub use error::{Error, Result};

#[cfg(feature = "python")]
mod python {
    //! Thin wrappers: convert types, map `Error` to the exception classes,
    //! release the GIL for batch crypto. No protocol logic lives here.

    use std::net::{IpAddr, SocketAddr};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use pyo3::create_exception;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyTuple};

    use crate::clock::{Clock, ManualClock, SystemClock};
    use crate::cookie::CookieChecker as CoreCookieChecker;
    use crate::datapath;
    use crate::error::Error;
    use crate::keys;
    use crate::messages;
    use crate::noise::{self, Identity};
    use crate::session::{self, Keypair};
    use crate::tai64n::{Tai64N, TIMESTAMP_LEN};

    create_exception!(
        wgpy._core,
        ProtocolError,
        PyValueError,
        "Base class of every error wgpy raises for bad protocol input."
    );
    create_exception!(
        wgpy._core,
        MessageFormatError,
        ProtocolError,
        "A message has the wrong size, type or reserved bytes."
    );
    create_exception!(
        wgpy._core,
        InvalidKeyError,
        ProtocolError,
        "A key is malformed or gives an all-zero Diffie-Hellman result."
    );
    create_exception!(
        wgpy._core,
        AuthenticationError,
        ProtocolError,
        "A MAC or AEAD tag did not verify."
    );
    create_exception!(
        wgpy._core,
        ReplayError,
        ProtocolError,
        "A counter or handshake timestamp was already seen."
    );
    create_exception!(
        wgpy._core,
        RateLimitError,
        ProtocolError,
        "Handshake initiations from a peer arrive too fast."
    );
    create_exception!(
        wgpy._core,
        HandshakeStateError,
        ProtocolError,
        "A message does not fit the handshake's state, index or peer."
    );
    create_exception!(
        wgpy._core,
        SessionExpiredError,
        ProtocolError,
        "A keypair is too old or has used up its counters."
    );

    fn to_py(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Message(_) | Error::BufferTooSmall { .. } => MessageFormatError::new_err(msg),
            Error::InvalidKey(_) | Error::ZeroDh => InvalidKeyError::new_err(msg),
            Error::InvalidMac1 | Error::Decrypt => AuthenticationError::new_err(msg),
            Error::Replay | Error::ReplayedTimestamp => ReplayError::new_err(msg),
            Error::Flood => RateLimitError::new_err(msg),
            Error::WrongPeer
            | Error::UnexpectedMessage
            | Error::IndexMismatch
            | Error::UnexpectedCookie => HandshakeStateError::new_err(msg),
            Error::KeyExpired | Error::CounterExhausted => SessionExpiredError::new_err(msg),
            Error::InvalidPrefix { .. } => ProtocolError::new_err(msg),
        }
    }

    trait OrPy<T> {
        fn py_err(self) -> PyResult<T>;
    }

    impl<T> OrPy<T> for crate::Result<T> {
        fn py_err(self) -> PyResult<T> {
            self.map_err(to_py)
        }
    }

    fn key_bytes(b: &[u8]) -> PyResult<[u8; 32]> {
        b.try_into()
            .map_err(|_| InvalidKeyError::new_err(format!("a key is 32 bytes, got {}", b.len())))
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    fn duration(seconds: f64) -> PyResult<Duration> {
        Duration::try_from_secs_f64(seconds).map_err(|_| {
            PyValueError::new_err("time must be a finite, non-negative number of seconds")
        })
    }

    fn system_clock() -> Arc<dyn Clock> {
        static CLOCK: OnceLock<Arc<SystemClock>> = OnceLock::new();
        CLOCK.get_or_init(|| Arc::new(SystemClock::new())).clone()
    }

    fn clock_of(clock: Option<PyRef<'_, PyManualClock>>) -> Arc<dyn Clock> {
        match clock {
            Some(c) => c.0.clone(),
            None => system_clock(),
        }
    }

    fn socket_addr(addr: &Bound<'_, PyTuple>) -> PyResult<SocketAddr> {
        let host: String = addr.get_item(0)?.extract()?;
        let port: u16 = addr.get_item(1)?.extract()?;
        let ip: IpAddr = host
            .parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {host:?}")))?;
        Ok(SocketAddr::new(ip, port))
    }

    #[pyclass(module = "wgpy._core", name = "PrivateKey", frozen, eq)]
    #[derive(PartialEq)]
    struct PyPrivateKey(keys::PrivateKey);

    #[pymethods]
    impl PyPrivateKey {
        #[staticmethod]
        fn generate() -> Self {
            Self(keys::PrivateKey::generate())
        }

        #[staticmethod]
        fn from_base64(text: &str) -> PyResult<Self> {
            Ok(Self(keys::PrivateKey::from_base64(text).py_err()?))
        }

        #[staticmethod]
        fn from_bytes(data: &[u8]) -> PyResult<Self> {
            Ok(Self(keys::PrivateKey::from_bytes(key_bytes(data)?)))
        }

        fn to_base64(&self) -> String {
            self.0.to_base64().to_string()
        }

        fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.0.to_bytes()[..])
        }

        fn public_key(&self) -> PyPublicKey {
            PyPublicKey(self.0.public_key())
        }

        fn __repr__(&self) -> String {
            format!("PrivateKey(public_key={})", self.0.public_key().to_base64())
        }
    }

    #[pyclass(module = "wgpy._core", name = "PublicKey", frozen, eq, hash)]
    #[derive(PartialEq, Eq, Hash, Clone)]
    struct PyPublicKey(keys::PublicKey);

    #[pymethods]
    impl PyPublicKey {
        #[staticmethod]
        fn from_base64(text: &str) -> PyResult<Self> {
            Ok(Self(keys::PublicKey::from_base64(text).py_err()?))
        }

        #[staticmethod]
        fn from_bytes(data: &[u8]) -> PyResult<Self> {
            Ok(Self(keys::PublicKey::from_bytes(key_bytes(data)?)))
        }

        fn to_base64(&self) -> String {
            self.0.to_base64()
        }

        fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, self.0.as_bytes())
        }

        fn __str__(&self) -> String {
            self.0.to_base64()
        }

        fn __repr__(&self) -> String {
            format!("PublicKey('{}')", self.0.to_base64())
        }
    }

    #[pyclass(module = "wgpy._core", name = "PresharedKey", frozen, eq)]
    #[derive(PartialEq)]
    struct PyPresharedKey(keys::PresharedKey);

    #[pymethods]
    impl PyPresharedKey {
        #[staticmethod]
        fn generate() -> Self {
            Self(keys::PresharedKey::generate())
        }

        #[staticmethod]
        fn from_base64(text: &str) -> PyResult<Self> {
            Ok(Self(keys::PresharedKey::from_base64(text).py_err()?))
        }

        #[staticmethod]
        fn from_bytes(data: &[u8]) -> PyResult<Self> {
            Ok(Self(keys::PresharedKey::from_bytes(key_bytes(data)?)))
        }

        fn to_base64(&self) -> String {
            self.0.to_base64().to_string()
        }

        fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, self.0.as_bytes())
        }

        fn __repr__(&self) -> &'static str {
            "PresharedKey(<redacted>)"
        }
    }

    #[pyclass(module = "wgpy._core", name = "ManualClock", frozen)]
    struct PyManualClock(Arc<ManualClock>);

    #[pymethods]
    impl PyManualClock {
        #[new]
        #[pyo3(signature = (now=0.0, unix_time=1_700_000_000.0))]
        fn new(now: f64, unix_time: f64) -> PyResult<Self> {
            Ok(Self(Arc::new(ManualClock::new(
                duration(now)?,
                duration(unix_time)?,
            ))))
        }

        fn advance(&self, seconds: f64) -> PyResult<()> {
            self.0.advance(duration(seconds)?);
            Ok(())
        }

        fn set_unix_time(&self, seconds: f64) -> PyResult<()> {
            self.0.set_unix_time(duration(seconds)?);
            Ok(())
        }

        fn now(&self) -> f64 {
            secs(self.0.now())
        }

        fn unix_time(&self) -> f64 {
            secs(self.0.unix_time())
        }

        fn __repr__(&self) -> String {
            format!(
                "ManualClock(now={}, unix_time={})",
                secs(self.0.now()),
                secs(self.0.unix_time())
            )
        }
    }

    #[pyclass(module = "wgpy._core", name = "Session", frozen)]
    struct PySession {
        keypair: Arc<Keypair>,
        clock: Arc<dyn Clock>,
    }

    impl PySession {
        fn wrap(keypair: Keypair, clock: Arc<dyn Clock>) -> Self {
            Self {
                keypair: Arc::new(keypair),
                clock,
            }
        }
    }

    fn encrypt_into<'py>(
        py: Python<'py>,
        kp: &Keypair,
        packet: &[u8],
        mtu: usize,
        now: Duration,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let n = session::encrypted_len(packet.len(), mtu);
        let mut failure = None;
        let out = PyBytes::new_with(py, n, |buf| {
            let hdr = messages::TRANSPORT_HEADER_LEN;
            buf[hdr..hdr + packet.len()].copy_from_slice(packet);
            if let Err(e) = kp.seal_in_place(buf, packet.len(), mtu, now) {
                failure = Some(e);
            }
            Ok(())
        })?;
        match failure {
            Some(e) => Err(to_py(e)),
            None => Ok(out),
        }
    }

    #[pymethods]
    impl PySession {
        #[getter]
        fn local_index(&self) -> u32 {
            self.keypair.local_index
        }

        #[getter]
        fn remote_index(&self) -> u32 {
            self.keypair.remote_index
        }

        #[getter]
        fn is_initiator(&self) -> bool {
            self.keypair.is_initiator
        }

        #[getter]
        fn sending_counter(&self) -> u64 {
            self.keypair.sending_counter()
        }

        #[getter]
        fn age(&self) -> f64 {
            secs(self.clock.now().saturating_sub(self.keypair.birth))
        }

        #[getter]
        fn expired(&self) -> bool {
            self.keypair.is_expired(self.clock.now())
        }

        #[getter]
        fn needs_rekey(&self) -> bool {
            self.keypair.needs_rekey_on_send(self.clock.now())
        }

        #[getter]
        fn needs_rekey_on_receive(&self) -> bool {
            self.keypair.needs_rekey_on_receive(self.clock.now())
        }

        #[pyo3(signature = (packet, mtu=0))]
        fn encrypt<'py>(
            &self,
            py: Python<'py>,
            packet: &[u8],
            mtu: usize,
        ) -> PyResult<Bound<'py, PyBytes>> {
            encrypt_into(py, &self.keypair, packet, mtu, self.clock.now())
        }

        fn keepalive<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
            encrypt_into(py, &self.keypair, &[], 0, self.clock.now())
        }

        fn decrypt<'py>(&self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
            let plain = self.keypair.decrypt(message, self.clock.now()).py_err()?;
            Ok(PyBytes::new(py, &plain))
        }

        /// Encrypts each packet in order, without the GIL.
        #[pyo3(signature = (packets, mtu=0))]
        fn encrypt_many<'py>(
            &self,
            py: Python<'py>,
            packets: Vec<Vec<u8>>,
            mtu: usize,
        ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
            let kp = self.keypair.clone();
            let now = self.clock.now();
            let out: Result<Vec<Vec<u8>>, Error> =
                py.allow_threads(move || packets.iter().map(|p| kp.encrypt(p, mtu, now)).collect());
            Ok(out.py_err()?.iter().map(|m| PyBytes::new(py, m)).collect())
        }

        /// Decrypts each message without the GIL; `None` marks a dropped one.
        fn decrypt_many<'py>(
            &self,
            py: Python<'py>,
            messages: Vec<Vec<u8>>,
        ) -> Vec<Option<Bound<'py, PyBytes>>> {
            let kp = self.keypair.clone();
            let now = self.clock.now();
            let out: Vec<Option<Vec<u8>>> = py
                .allow_threads(move || messages.iter().map(|m| kp.decrypt(m, now).ok()).collect());
            out.into_iter()
                .map(|o| o.map(|p| PyBytes::new(py, &p)))
                .collect()
        }

        fn __repr__(&self) -> String {
            format!(
                "Session(local_index={:#010x}, remote_index={:#010x}, initiator={})",
                self.keypair.local_index,
                self.keypair.remote_index,
                if self.keypair.is_initiator {
                    "True"
                } else {
                    "False"
                }
            )
        }
    }

    #[pyclass(module = "wgpy._core", name = "Initiation", frozen)]
    struct PyInitiation(noise::ReceivedInitiation);

    #[pymethods]
    impl PyInitiation {
        #[getter]
        fn peer_public_key(&self) -> PyPublicKey {
            PyPublicKey(self.0.peer)
        }

        #[getter]
        fn sender_index(&self) -> u32 {
            self.0.sender
        }

        #[getter]
        fn timestamp<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
            PyBytes::new(py, &self.0.timestamp.0)
        }

        fn __repr__(&self) -> String {
            format!(
                "Initiation(peer_public_key={}, sender_index={:#010x})",
                self.0.peer.to_base64(),
                self.0.sender
            )
        }
    }

    #[pyfunction]
    fn open_initiation(private_key: &PyPrivateKey, message: &[u8]) -> PyResult<PyInitiation> {
        let identity = Identity::new(private_key.0.clone());
        Ok(PyInitiation(identity.open_initiation(message).py_err()?))
    }

    #[pyclass(module = "wgpy._core", name = "Handshake")]
    struct PyHandshake {
        inner: noise::Handshake,
        clock: Arc<dyn Clock>,
    }

    fn ephemeral_key(e: Option<PyRef<'_, PyPrivateKey>>) -> keys::PrivateKey {
        e.map(|k| k.0.clone())
            .unwrap_or_else(keys::PrivateKey::generate)
    }

    fn index_or_random(i: Option<u32>) -> u32 {
        i.unwrap_or_else(|| rand_core::RngCore::next_u32(&mut rand_core::OsRng))
    }

    #[pymethods]
    impl PyHandshake {
        #[new]
        #[pyo3(signature = (private_key, peer_public_key, preshared_key=None, *, clock=None))]
        fn new(
            private_key: &PyPrivateKey,
            peer_public_key: &PyPublicKey,
            preshared_key: Option<PyRef<'_, PyPresharedKey>>,
            clock: Option<PyRef<'_, PyManualClock>>,
        ) -> Self {
            let clock = clock_of(clock);
            let identity = Arc::new(Identity::new(private_key.0.clone()));
            let psk = preshared_key.map(|k| k.0.clone());
            Self {
                inner: noise::Handshake::new(identity, peer_public_key.0, psk, clock.clone()),
                clock,
            }
        }

        #[getter]
        fn public_key(&self) -> PyPublicKey {
            PyPublicKey(self.inner.local_public_key())
        }

        #[getter]
        fn peer_public_key(&self) -> PyPublicKey {
            PyPublicKey(self.inner.remote_public_key())
        }

        #[getter]
        fn pending_index(&self) -> Option<u32> {
            self.inner.pending_index()
        }

        #[getter]
        fn has_cookie(&self) -> bool {
            self.inner.has_cookie()
        }

        #[pyo3(signature = (preshared_key=None))]
        fn set_preshared_key(&mut self, preshared_key: Option<PyRef<'_, PyPresharedKey>>) {
            self.inner
                .set_preshared_key(preshared_key.map(|k| k.0.clone()));
        }

        fn clear(&mut self) {
            self.inner.clear();
        }

        #[pyo3(signature = (*, sender_index=None, ephemeral=None, timestamp=None))]
        fn create_initiation<'py>(
            &mut self,
            py: Python<'py>,
            sender_index: Option<u32>,
            ephemeral: Option<PyRef<'_, PyPrivateKey>>,
            timestamp: Option<&[u8]>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let ts = match timestamp {
                Some(t) => Tai64N(t.try_into().map_err(|_| {
                    PyValueError::new_err(format!("a TAI64N timestamp is {TIMESTAMP_LEN} bytes"))
                })?),
                None => Tai64N::from_unix(self.clock.unix_time()),
            };
            let msg = self
                .inner
                .create_initiation_with(ephemeral_key(ephemeral), index_or_random(sender_index), ts)
                .py_err()?;
            Ok(PyBytes::new(py, &msg))
        }

        fn consume_response(&mut self, message: &[u8]) -> PyResult<PySession> {
            let kp = self.inner.consume_response(message).py_err()?;
            Ok(PySession::wrap(kp, self.clock.clone()))
        }

        #[pyo3(signature = (initiation, *, sender_index=None, ephemeral=None))]
        fn respond<'py>(
            &mut self,
            py: Python<'py>,
            initiation: &PyInitiation,
            sender_index: Option<u32>,
            ephemeral: Option<PyRef<'_, PyPrivateKey>>,
        ) -> PyResult<(Bound<'py, PyBytes>, PySession)> {
            self.inner.consume_initiation(&initiation.0).py_err()?;
            let (msg, kp) = self
                .inner
                .create_response_with(ephemeral_key(ephemeral), index_or_random(sender_index))
                .py_err()?;
            Ok((
                PyBytes::new(py, &msg),
                PySession::wrap(kp, self.clock.clone()),
            ))
        }

        fn consume_cookie_reply(&mut self, message: &[u8]) -> PyResult<()> {
            self.inner.consume_cookie_reply(message).py_err()
        }

        fn __repr__(&self) -> String {
            format!(
                "Handshake(peer_public_key={})",
                self.inner.remote_public_key().to_base64()
            )
        }
    }

    #[pyclass(module = "wgpy._core", name = "CookieChecker")]
    struct PyCookieChecker(CoreCookieChecker);

    #[pymethods]
    impl PyCookieChecker {
        #[new]
        #[pyo3(signature = (public_key, *, clock=None))]
        fn new(public_key: &PyPublicKey, clock: Option<PyRef<'_, PyManualClock>>) -> Self {
            Self(CoreCookieChecker::new(&public_key.0, clock_of(clock)))
        }

        fn verify_mac1(&self, message: &[u8]) -> PyResult<bool> {
            match self.0.verify_mac1(message) {
                Ok(()) => Ok(true),
                Err(Error::InvalidMac1) => Ok(false),
                Err(e) => Err(to_py(e)),
            }
        }

        fn verify_mac2(&mut self, message: &[u8], source: &Bound<'_, PyTuple>) -> PyResult<bool> {
            match self.0.verify_mac2(message, &socket_addr(source)?) {
                Ok(ok) => Ok(ok),
                Err(Error::InvalidMac1) => Ok(false),
                Err(e) => Err(to_py(e)),
            }
        }

        fn create_reply<'py>(
            &mut self,
            py: Python<'py>,
            message: &[u8],
            source: &Bound<'_, PyTuple>,
        ) -> PyResult<Bound<'py, PyBytes>> {
            let reply = self
                .0
                .create_reply(message, &socket_addr(source)?)
                .py_err()?;
            Ok(PyBytes::new(py, &reply))
        }
    }

    type ActivityTuple = (u64, u64, f64, f64, f64, f64, f64, f64, u64);

    #[pyclass(module = "wgpy._core", name = "Datapath", frozen)]
    struct PyDatapath(Arc<datapath::Datapath>);

    fn addr_tuple<'py>(py: Python<'py>, a: &SocketAddr) -> PyResult<Bound<'py, PyTuple>> {
        (a.ip().to_string(), a.port()).into_pyobject(py)
    }

    fn ip_of(text: &str) -> PyResult<IpAddr> {
        text.parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {text:?}")))
    }

    fn ns_to_secs(ns: u64) -> f64 {
        ns as f64 / 1e9
    }

    fn event_tuple<'py>(py: Python<'py>, e: datapath::Event) -> PyResult<Bound<'py, PyTuple>> {
        use datapath::{Event as E, HandshakeReason as R};
        Ok(match e {
            E::Handshake {
                message,
                source,
                local,
            } => {
                let local = local.map(|(ip, ifindex)| (ip.to_string(), ifindex));
                (
                    "handshake",
                    PyBytes::new(py, &message),
                    addr_tuple(py, &source)?,
                    local,
                )
                    .into_pyobject(py)?
            }
            E::NeedHandshake { peer, reason } => {
                let reason = match reason {
                    R::NoKey => "no_key",
                    R::RekeyOnSend => "rekey_on_send",
                    R::RekeyOnReceive => "rekey_on_receive",
                };
                ("need_handshake", peer, reason).into_pyobject(py)?
            }
            E::KeyConfirmed { peer } => ("key_confirmed", peer).into_pyobject(py)?,
            E::EndpointChanged { peer, endpoint } => {
                ("endpoint", peer, addr_tuple(py, &endpoint)?).into_pyobject(py)?
            }
            E::Activity { peer } => ("activity", peer).into_pyobject(py)?,
            E::Unreachable { peer } => ("unreachable", peer).into_pyobject(py)?,
            E::TunClosed { error } => ("tun_closed", error).into_pyobject(py)?,
            E::SocketError { error } => ("socket_error", error).into_pyobject(py)?,
            E::Notice { message } => ("notice", message).into_pyobject(py)?,
        })
    }

    #[pymethods]
    impl PyDatapath {
        #[new]
        #[pyo3(signature = (tun_fd, mtu=1420, vnet_hdr=false, udp_offload=false))]
        fn new(tun_fd: i32, mtu: usize, vnet_hdr: bool, udp_offload: bool) -> PyResult<Self> {
            Ok(Self(Arc::new(datapath::Datapath::new(
                tun_fd,
                mtu,
                vnet_hdr,
                udp_offload,
            )?)))
        }

        fn start(&self) -> PyResult<()> {
            Ok(self.0.start()?)
        }

        fn stop(&self, py: Python<'_>) {
            let dp = self.0.clone();
            py.allow_threads(move || dp.stop());
        }

        fn set_sockets(&self, py: Python<'_>, fds: Vec<i32>) -> PyResult<()> {
            let dp = self.0.clone();
            Ok(py.allow_threads(move || dp.set_sockets(&fds))?)
        }

        #[getter]
        fn event_fd(&self) -> i32 {
            self.0.event_fd()
        }

        #[getter]
        fn mtu(&self) -> usize {
            self.0.mtu()
        }

        fn set_mtu(&self, mtu: usize) {
            self.0.set_mtu(mtu);
        }

        /// Helper threads sealing and opening large batches (WGPY_CRYPTO_THREADS).
        #[getter]
        fn crypto_helpers(&self) -> usize {
            self.0.crypto_helpers()
        }

        #[pyo3(signature = (max=1024))]
        fn take_events<'py>(
            &self,
            py: Python<'py>,
            max: usize,
        ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
            self.0
                .take_events(max)
                .into_iter()
                .map(|e| event_tuple(py, e))
                .collect()
        }

        #[getter]
        fn handshake_backlog(&self) -> usize {
            self.0.handshake_backlog()
        }

        /// (rx_dropped, tx_dropped, tx_no_route)
        fn counters(&self) -> (u64, u64, u64) {
            use std::sync::atomic::Ordering::Relaxed;
            let c = self.0.counters();
            (
                c.rx_dropped.load(Relaxed),
                c.tx_dropped.load(Relaxed),
                c.tx_no_route.load(Relaxed),
            )
        }

        fn add_peer(&self, peer: u64) -> PyResult<()> {
            Ok(self.0.add_peer(peer)?)
        }

        fn remove_peer(&self, peer: u64) -> PyResult<Vec<u32>> {
            Ok(self.0.remove_peer(peer)?)
        }

        #[pyo3(signature = (peer, endpoint=None, local=None))]
        fn set_endpoint(
            &self,
            peer: u64,
            endpoint: Option<&Bound<'_, PyTuple>>,
            local: Option<(String, u32)>,
        ) -> PyResult<()> {
            let addr = endpoint.map(socket_addr).transpose()?;
            let src = local
                .map(|(ip, ifindex)| ip_of(&ip).map(|ip| (ip, ifindex)))
                .transpose()?;
            Ok(self.0.set_endpoint(peer, addr, src)?)
        }

        fn endpoint<'py>(
            &self,
            py: Python<'py>,
            peer: u64,
        ) -> PyResult<Option<Bound<'py, PyTuple>>> {
            self.0
                .endpoint(peer)?
                .map(|e| addr_tuple(py, &e.addr))
                .transpose()
        }

        fn endpoint_source(&self, peer: u64) -> PyResult<Option<String>> {
            Ok(self
                .0
                .endpoint(peer)?
                .and_then(|e| e.src)
                .map(|(ip, _)| ip.to_string()))
        }

        fn clear_endpoint_source(&self, peer: u64) -> PyResult<()> {
            Ok(self.0.clear_endpoint_source(peer)?)
        }

        fn install_keypair(&self, peer: u64, session: &PySession) -> PyResult<Vec<u32>> {
            Ok(self.0.install_keypair(peer, session.keypair.clone())?)
        }

        fn expire_keypairs(&self, peer: u64) -> PyResult<()> {
            Ok(self.0.expire_keypairs(peer)?)
        }

        fn clear_keypairs(&self, peer: u64) -> PyResult<Vec<u32>> {
            Ok(self.0.clear_keypairs(peer)?)
        }

        fn has_sending_keypair(&self, peer: u64) -> PyResult<bool> {
            Ok(self.0.has_sending_keypair(peer)?)
        }

        fn flush_staged(&self, py: Python<'_>, peer: u64) -> PyResult<usize> {
            let dp = self.0.clone();
            Ok(py.allow_threads(move || dp.flush_staged(peer))?)
        }

        fn purge_staged(&self, peer: u64) -> PyResult<usize> {
            Ok(self.0.purge_staged(peer)?)
        }

        fn staged_count(&self, peer: u64) -> PyResult<usize> {
            Ok(self.0.staged_count(peer)?)
        }

        fn send_keepalive(&self, peer: u64) -> PyResult<()> {
            Ok(self.0.send_keepalive(peer)?)
        }

        fn send_handshake(&self, peer: u64, message: &[u8]) -> PyResult<()> {
            Ok(self.0.send_handshake(peer, message)?)
        }

        #[pyo3(signature = (destination, message, local=None))]
        fn send_to(
            &self,
            destination: &Bound<'_, PyTuple>,
            message: &[u8],
            local: Option<(String, u32)>,
        ) -> PyResult<()> {
            let src = local
                .map(|(ip, ifindex)| ip_of(&ip).map(|ip| (ip, ifindex)))
                .transpose()?;
            Ok(self.0.send_to(socket_addr(destination)?, src, message)?)
        }

        fn note_handshake_received(&self, peer: u64, size: usize) -> PyResult<()> {
            Ok(self.0.note_handshake_received(peer, size)?)
        }

        fn handshake_request_done(&self, peer: u64) -> PyResult<()> {
            Ok(self.0.handshake_request_done(peer)?)
        }

        /// Hold (stage) the packets of peers with no path instead of dropping them.
        fn set_hold_unreachable(&self, py: Python<'_>, on: bool) {
            let dp = self.0.clone();
            py.allow_threads(move || dp.set_hold_unreachable(on));
        }

        /// Holds the peer's packets; True if it was not held.
        fn hold(&self, peer: u64) -> PyResult<bool> {
            Ok(self.0.hold(peer)?)
        }

        /// Stops holding the peer's packets and sends the staged ones:
        /// (whether it was held, how many packets went).
        fn release(&self, py: Python<'_>, peer: u64) -> PyResult<(bool, usize)> {
            let dp = self.0.clone();
            Ok(py.allow_threads(move || dp.release(peer))?)
        }

        fn is_held(&self, peer: u64) -> PyResult<bool> {
            Ok(self.0.is_held(peer)?)
        }

        /// Sends from `local` (address, interface index) until the peer
        /// answers at it; False if the peer has no endpoint.
        fn pin_source(&self, peer: u64, local: (String, u32)) -> PyResult<bool> {
            let src = (ip_of(&local.0)?, local.1);
            Ok(self.0.pin_source(peer, src)?)
        }

        fn source_pinned(&self, peer: u64) -> PyResult<bool> {
            Ok(self.0.source_pinned(peer)?)
        }

        /// Byte counters and activity times (CLOCK_MONOTONIC seconds, 0.0 = never):
        /// (tx_bytes, rx_bytes, last_tx_auth, last_rx_auth, first_tx_data_since_rx,
        ///  first_rx_data_since_tx, last_rx_data, last_tx_data, invalid_source)
        fn activity(&self, peer: u64) -> PyResult<ActivityTuple> {
            let a = self.0.activity(peer)?;
            Ok((
                a.tx_bytes,
                a.rx_bytes,
                ns_to_secs(a.last_tx_auth),
                ns_to_secs(a.last_rx_auth),
                ns_to_secs(a.first_tx_data_since_rx),
                ns_to_secs(a.first_rx_data_since_tx),
                ns_to_secs(a.last_rx_data),
                ns_to_secs(a.last_tx_data),
                a.invalid_source,
            ))
        }

        /// Stop (False) or resume (True) polling the peer's activity; while
        /// not polling, the next authenticated packet raises an "activity" event.
        fn watch_activity(&self, peer: u64, watching: bool) -> PyResult<()> {
            Ok(self.0.watch_activity(peer, watching)?)
        }

        fn allowed_ip_insert(&self, ip: &str, cidr: u8, peer: u64) -> PyResult<()> {
            let ip = ip_of(ip)?;
            let mut t = self
                .0
                .allowed_ips()
                .write()
                .map_err(|_| PyValueError::new_err("lock poisoned"))?;
            t.insert(ip, cidr, peer).py_err()
        }

        /// Removes a prefix; with `peer`, only if that peer owns it.
        #[pyo3(signature = (ip, cidr, peer=None))]
        fn allowed_ip_remove(&self, ip: &str, cidr: u8, peer: Option<u64>) -> PyResult<bool> {
            let ip = ip_of(ip)?;
            let mut t = self
                .0
                .allowed_ips()
                .write()
                .map_err(|_| PyValueError::new_err("lock poisoned"))?;
            Ok(match peer {
                Some(p) => t.remove_for(ip, cidr, p),
                None => t.remove(ip, cidr).is_some(),
            })
        }

        fn allowed_ips_remove_peer(&self, peer: u64) -> PyResult<usize> {
            let mut t = self
                .0
                .allowed_ips()
                .write()
                .map_err(|_| PyValueError::new_err("lock poisoned"))?;
            Ok(t.remove_peer(peer))
        }

        fn allowed_ip_lookup(&self, ip: &str) -> PyResult<Option<u64>> {
            let ip = ip_of(ip)?;
            let t = self
                .0
                .allowed_ips()
                .read()
                .map_err(|_| PyValueError::new_err("lock poisoned"))?;
            Ok(t.lookup(ip))
        }

        fn allowed_ips(&self, peer: u64) -> PyResult<Vec<(String, u8)>> {
            let t = self
                .0
                .allowed_ips()
                .read()
                .map_err(|_| PyValueError::new_err("lock poisoned"))?;
            Ok(t.entries(peer)
                .into_iter()
                .map(|(ip, c)| (ip.to_string(), c))
                .collect())
        }
    }

    #[pyfunction]
    fn message_type(message: &[u8]) -> PyResult<u8> {
        messages::message_type(message).map_err(|e| to_py(e.into()))
    }

    #[pyfunction]
    fn receiver_index(message: &[u8]) -> PyResult<u32> {
        messages::receiver_index(message).map_err(|e| to_py(e.into()))
    }

    #[pyfunction]
    fn inner_packet_len(plaintext: &[u8]) -> Option<usize> {
        session::inner_packet_len(plaintext)
    }

    #[pymodule]
    #[pyo3(name = "_core")]
    fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        m.add_class::<PyPrivateKey>()?;
        m.add_class::<PyPublicKey>()?;
        m.add_class::<PyPresharedKey>()?;
        m.add_class::<PyManualClock>()?;
        m.add_class::<PyHandshake>()?;
        m.add_class::<PyInitiation>()?;
        m.add_class::<PySession>()?;
        m.add_class::<PyCookieChecker>()?;
        m.add_class::<PyDatapath>()?;
        m.add_function(wrap_pyfunction!(open_initiation, m)?)?;
        m.add_function(wrap_pyfunction!(message_type, m)?)?;
        m.add_function(wrap_pyfunction!(receiver_index, m)?)?;
        m.add_function(wrap_pyfunction!(inner_packet_len, m)?)?;
        m.add("ProtocolError", py.get_type::<ProtocolError>())?;
        m.add("MessageFormatError", py.get_type::<MessageFormatError>())?;
        m.add("InvalidKeyError", py.get_type::<InvalidKeyError>())?;
        m.add("AuthenticationError", py.get_type::<AuthenticationError>())?;
        m.add("ReplayError", py.get_type::<ReplayError>())?;
        m.add("RateLimitError", py.get_type::<RateLimitError>())?;
        m.add("HandshakeStateError", py.get_type::<HandshakeStateError>())?;
        m.add("SessionExpiredError", py.get_type::<SessionExpiredError>())?;
        m.add("REKEY_AFTER_MESSAGES", session::REKEY_AFTER_MESSAGES)?;
        m.add("REJECT_AFTER_MESSAGES", session::REJECT_AFTER_MESSAGES)?;
        m.add("REKEY_AFTER_TIME", secs(session::REKEY_AFTER_TIME))?;
        m.add("REJECT_AFTER_TIME", secs(session::REJECT_AFTER_TIME))?;
        m.add("REKEY_ATTEMPT_TIME", secs(session::REKEY_ATTEMPT_TIME))?;
        m.add("REKEY_TIMEOUT", secs(session::REKEY_TIMEOUT))?;
        m.add("KEEPALIVE_TIMEOUT", secs(session::KEEPALIVE_TIMEOUT))?;
        m.add(
            "COOKIE_SECRET_MAX_AGE",
            secs(crate::cookie::COOKIE_SECRET_MAX_AGE),
        )?;
        m.add("REPLAY_WINDOW_SIZE", crate::replay::WINDOW_SIZE)?;
        m.add("INITIATION_LEN", messages::INITIATION_LEN)?;
        m.add("RESPONSE_LEN", messages::RESPONSE_LEN)?;
        m.add("COOKIE_REPLY_LEN", messages::COOKIE_REPLY_LEN)?;
        m.add("TRANSPORT_MIN_LEN", messages::TRANSPORT_MIN_LEN)?;
        Ok(())
    }
}
