//! Health checks: one tokio task per checked (VIP, backend), jittered so a fleet does not probe
//! in lockstep, reporting each probe's outcome to the agent, which keeps the rise/fall state.
//! Direct probes are asynchronous (thousands of checks cost no thread each, and a UDP check
//! keeps one connected socket); tunnel probes use raw sockets on tokio's blocking pool.
//!
//! Probes: TCP connect; HTTP or HTTPS request (status and optional body substring, [`http`]);
//! UDP request and reply prefix; QUIC version negotiation ([`quic`]). With `tunnel`, the probe
//! goes to the VIP through the same encapsulation the balancer uses (IPIP or IP6IP6 to the
//! backend, from this host's address), so a backend whose decapsulation or VIP is missing fails
//! even while its own address answers. Through the tunnel a TCP or HTTP check is a handshake: a
//! SYN answered by a SYN-ACK (this host's kernel resets it).

use std::{
    hash::BuildHasher as _,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::mpsc,
};

use crate::config::{CheckKind, HealthCheck};

mod http;
mod quic;

/// Where a probe goes. VIPs that check the same backend the same way share one probe, unless
/// the probe depends on the VIP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub backend: IpAddr,
    /// The VIP's address, for the probes that depend on it: through the tunnel (sent to the
    /// VIP), and HTTP without a configured `host` (the VIP is the Host header).
    pub vip_address: Option<IpAddr>,
}

impl Target {
    pub fn new(vip_address: IpAddr, backend: IpAddr, check: &HealthCheck) -> Self {
        // Without a `host`, an HTTP check's Host header is the VIP's address.
        let depends_on_vip = check.tunnel || matches!(check.kind, CheckKind::Http { host: None, .. });
        Self { backend, vip_address: depends_on_vip.then_some(vip_address) }
    }

    fn vip(&self) -> Result<IpAddr, ProbeError> {
        self.vip_address.ok_or(ProbeError::NoVip)
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A socket operation failed: which step, and how.
    #[error("{step}: {error}")]
    Io { step: &'static str, error: std::io::Error },
    #[error("HTTP {step}: {error}")]
    Http { step: &'static str, error: String },
    #[error("TLS {0}")]
    Tls(String),
    #[error("status {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
    #[error("the body's first {read} bytes do not contain {needle:?}")]
    Body { needle: String, read: usize },
    #[error("reply does not start with the expected bytes")]
    Prefix,
    #[error("the reply is not a QUIC Version Negotiation packet answering the probe")]
    NotVersionNegotiation,
    #[error("the VIP answered the SYN with flags {0:#04x}, not SYN-ACK")]
    NotSynAck(u8),
    #[error("no {what} from {vip}:{port} through the tunnel to {backend}")]
    NoTunnelAnswer { what: &'static str, vip: IpAddr, port: u16, backend: IpAddr },
    #[error("no source address of the VIP's family")]
    NoSource,
    #[error("a probe through the tunnel needs the VIP's address")]
    NoVip,
    #[error("building the probe packet: {0}")]
    Build(String),
    #[error("the probe's task ended: {0}")]
    Task(String),
}

/// The [`ProbeError::Io`] of `step`.
fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    move |error| ProbeError::Io { step, error }
}

/// One probe's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The probe's id, as given to [`run`].
    pub probe: u64,
    pub ok: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Runs `check` against `target` forever, sending every outcome, marked `id`, to `report`.
pub async fn run(id: u64, target: Target, check: HealthCheck, report: mpsc::Sender<Outcome>) {
    let hasher = std::collections::hash_map::RandomState::new();
    // Start anywhere in the first interval; then probes start an interval (+/- 10%) apart on
    // the slot grid, however long each took, so a backend that stops answering is down at most
    // fall x (interval x 1.1 + PROBE_SLOT) + timeout after.
    let mut next = tokio::time::Instant::now() + check.interval.mul_f64(fraction(hasher.hash_one((&target, 0u32))));
    let mut kept = Kept::default();
    for round in 1u32.. {
        tokio::time::sleep_until(next).await;
        let start = Instant::now();
        let result = probe(&target, &check, &mut kept).await;
        if result.is_err() {
            // A new socket for the next probe: late replies to this one cannot reach it, and a
            // changed route or source address is picked up.
            kept.udp = None;
        }
        let outcome = Outcome {
            probe: id,
            ok: result.is_ok(),
            latency: start.elapsed(),
            error: result.err().map(|e| format!("{e:#}")),
        };
        if report.send(outcome).await.is_err() {
            return;
        }
        let jitter = 0.9 + 0.2 * fraction(hasher.hash_one((&target, round)));
        next = on_slot((next + check.interval.mul_f64(jitter)).max(tokio::time::Instant::now()));
    }
}

/// Probes start on a grid of this step, so that thousands of checks send in bursts and their
/// replies arrive in bursts: the agent wakes a few hundred times a second instead of once per
/// probe and reply, which is most of what probing costs.
const PROBE_SLOT: Duration = Duration::from_millis(10);

/// `at`, rounded up to the next [`PROBE_SLOT`] since the process's first call.
fn on_slot(at: tokio::time::Instant) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let slot = PROBE_SLOT.as_nanos();
    let rounded = since.div_ceil(slot) * slot;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

fn fraction(hash: u64) -> f64 {
    (hash % 10_000) as f64 / 10_000.0
}

/// What a check keeps from one probe to the next.
#[derive(Default)]
pub struct Kept {
    /// A UDP check's connected socket (a probe is then one send and one receive), dropped after
    /// a failed probe.
    udp: Option<UdpSocket>,
    /// An `https` check's TLS client (trust store and verifier).
    tls: Option<http::TlsClient>,
}

/// One probe, bounded by the check's timeout.
pub async fn probe(target: &Target, check: &HealthCheck, kept: &mut Kept) -> Result<(), ProbeError> {
    if check.tunnel {
        // Raw sockets, read with a deadline: on the blocking pool.
        let (t, c) = (target.clone(), check.clone());
        return tokio::task::spawn_blocking(move || tunnel_probe(&t, &c))
            .await
            .map_err(|e| ProbeError::Task(e.to_string()))?;
    }
    match tokio::time::timeout(check.timeout, direct_probe(target, check, kept)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(check.timeout)),
    }
}

fn tunnel_probe(target: &Target, check: &HealthCheck) -> Result<(), ProbeError> {
    match &check.kind {
        CheckKind::Tcp | CheckKind::Http { .. } => tunnel_syn(target, check),
        CheckKind::Udp { payload, expect_prefix } => tunnel_udp(target, check, payload, &expect(expect_prefix)),
        CheckKind::Quic => tunnel_udp(target, check, &quic::PROBE, &quic_answer),
    }
}

/// A probe of the backend's own address; the caller bounds it by the timeout.
async fn direct_probe(target: &Target, check: &HealthCheck, kept: &mut Kept) -> Result<(), ProbeError> {
    let addr = SocketAddr::new(target.backend, check.port);
    match &check.kind {
        CheckKind::Tcp => TcpStream::connect(addr).await.map(drop).map_err(io("connect")),
        CheckKind::Http { method, path, host, expect_status, expect_body, tls } => {
            let check = http::HttpCheck {
                method: *method,
                path,
                host: host.as_deref(),
                expect_status: *expect_status,
                expect_body: expect_body.as_deref(),
                tls: tls.as_ref(),
            };
            http::probe(addr, target.vip_address.unwrap_or(target.backend), &check, &mut kept.tls).await
        }
        CheckKind::Udp { payload, expect_prefix } => exchange(kept, addr, payload, &expect(expect_prefix)).await,
        CheckKind::Quic => exchange(kept, addr, &quic::PROBE, &quic_answer).await,
    }
}

/// Sends `payload` on the check's connected UDP socket (kept between probes) and judges the reply.
async fn exchange(
    kept: &mut Kept,
    addr: SocketAddr,
    payload: &[u8],
    judge: &(dyn Fn(&[u8]) -> Result<(), ProbeError> + Sync),
) -> Result<(), ProbeError> {
    let s = if let Some(s) = &mut kept.udp {
        s
    } else {
        let s = UdpSocket::bind(unspecified(addr.ip())).await.map_err(io("bind"))?;
        s.connect(addr).await.map_err(io("connect"))?;
        kept.udp.insert(s)
    };
    // No reply of an earlier probe can be waiting: a probe that failed (timed out) dropped the
    // socket, and the next one has a new port.
    let mut buf = [0u8; 2048];
    s.send(payload).await.map_err(io("send"))?;
    let n = s.recv(&mut buf).await.map_err(io("no reply"))?;
    judge(&buf[..n])
}

/// A udp check's judge: the reply starts with `prefix`.
fn expect(prefix: &[u8]) -> impl Fn(&[u8]) -> Result<(), ProbeError> + Sync + '_ {
    move |reply| if reply.starts_with(prefix) { Ok(()) } else { Err(ProbeError::Prefix) }
}

/// A quic check's judge.
fn quic_answer(reply: &[u8]) -> Result<(), ProbeError> {
    if quic::answers(reply) { Ok(()) } else { Err(ProbeError::NotVersionNegotiation) }
}

fn unspecified(like: IpAddr) -> SocketAddr {
    if like.is_ipv4() { "0.0.0.0:0".parse().expect("valid") } else { "[::]:0".parse().expect("valid") }
}

/// This host's source address towards `to`, as the kernel would choose it.
fn source_towards(to: IpAddr) -> Result<IpAddr, ProbeError> {
    let s = std::net::UdpSocket::bind(unspecified(to)).map_err(io("bind"))?;
    s.connect(SocketAddr::new(to, 9)).map_err(io("route towards the backend"))?;
    Ok(s.local_addr().map_err(io("local address"))?.ip())
}

/// Sends `inner` (an IP packet from this host to the VIP) to the backend inside an outer header
/// built by the kernel: a raw socket of protocol 4 (inner IPv4) or 41 (inner IPv6).
fn send_encapsulated(backend: IpAddr, inner_v4: bool, inner: &[u8]) -> Result<(), ProbeError> {
    let domain = if backend.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let protocol = Protocol::from(if inner_v4 { libc::IPPROTO_IPIP } else { libc::IPPROTO_IPV6 });
    let raw = Socket::new(domain, Type::RAW, Some(protocol)).map_err(io("raw socket (needs root)"))?;
    raw.send_to(inner, &SockAddr::from(SocketAddr::new(backend, 0))).map_err(io("send encapsulated probe"))?;
    Ok(())
}

/// The inner packet's source and a port for the probe's flow.
fn inner_source(target: &Target, vip: IpAddr) -> Result<(IpAddr, u16), ProbeError> {
    // The backend answers the inner source directly, so it must be this host's address of the
    // VIP's family, on the path towards the backend's segment.
    let source =
        if vip.is_ipv4() == target.backend.is_ipv4() { source_towards(target.backend)? } else { source_towards(vip)? };
    let port = 40_000 + (std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % 20_000) as u16;
    Ok((source, port))
}

fn tunnel_syn(target: &Target, check: &HealthCheck) -> Result<(), ProbeError> {
    let vip = target.vip()?;
    let (source, port) = inner_source(target, vip)?;
    let seq = 0x6c62_0001;
    let builder = match (source, vip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => return Err(ProbeError::NoSource),
    };
    let mut syn = Vec::new();
    builder
        .tcp(port, check.port, seq, 64_000)
        .syn()
        .write(&mut syn, &[])
        .map_err(|e| ProbeError::Build(e.to_string()))?;
    // Listen for the answer before asking.
    let domain = if vip.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let listener = Socket::new(domain, Type::RAW, Some(Protocol::TCP)).map_err(io("raw TCP socket (needs root)"))?;
    listener.set_read_timeout(Some(check.timeout)).map_err(io("set a timeout"))?;
    send_encapsulated(target.backend, vip.is_ipv4(), &syn)?;
    let deadline = Instant::now() + check.timeout;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < deadline {
        let Ok((n, from)) = listener.recv_from(&mut buf) else { break };
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        if from.as_socket().map(|a| a.ip()) != Some(vip) {
            continue;
        }
        // IPv4 raw sockets deliver the IP header, IPv6 ones only the TCP header.
        let tcp = if vip.is_ipv4() { &bytes[usize::from(bytes[0] & 0x0f) * 4..] } else { &bytes[..] };
        if tcp.len() < 20 {
            continue;
        }
        let (sport, dport) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]));
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let flags = tcp[13];
        if sport == check.port && dport == port && ack == seq.wrapping_add(1) {
            return if flags & 0x12 == 0x12 { Ok(()) } else { Err(ProbeError::NotSynAck(flags)) };
        }
    }
    Err(ProbeError::NoTunnelAnswer { what: "SYN-ACK", vip, port: check.port, backend: target.backend })
}

fn tunnel_udp(
    target: &Target,
    check: &HealthCheck,
    payload: &[u8],
    judge: &dyn Fn(&[u8]) -> Result<(), ProbeError>,
) -> Result<(), ProbeError> {
    let vip = target.vip()?;
    let (source, _) = inner_source(target, vip)?;
    // The reply comes back to a normal socket bound to the inner source.
    let socket = std::net::UdpSocket::bind(SocketAddr::new(source, 0)).map_err(io("bind probe socket"))?;
    socket.set_read_timeout(Some(check.timeout)).map_err(io("set a timeout"))?;
    let port = socket.local_addr().map_err(io("local address"))?.port();
    let builder = match (source, vip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => return Err(ProbeError::NoSource),
    };
    let mut datagram = Vec::new();
    builder.udp(port, check.port).write(&mut datagram, payload).map_err(|e| ProbeError::Build(e.to_string()))?;
    send_encapsulated(target.backend, vip.is_ipv4(), &datagram)?;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + check.timeout;
    while Instant::now() < deadline {
        let (n, from) = socket.recv_from(&mut buf).map_err(io("no reply through the tunnel"))?;
        if from == SocketAddr::new(vip, check.port) {
            return judge(&buf[..n]);
        }
    }
    Err(ProbeError::NoTunnelAnswer { what: "reply", vip, port: check.port, backend: target.backend })
}
