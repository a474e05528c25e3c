//! The configuration: a TOML file becomes types that cannot hold bad values.
//!
//! [`Config::parse`] reads the file (unknown fields are errors) and validates every value; each
//! problem is reported with the file, line and column, the field, what is wrong and what is
//! allowed. A file with any problem yields no [`Config`] at all, so nothing of it can be applied.
//!
//! Rooms: this file (the model types), `raw` (the file as serde reads it), `validate/` (the
//! validator), `admission` (`[vip.admission]`: its types and their validation), [`bgp`] (`[bgp]`
//! and `[vip.bgp]`: the same for announcing VIPs), `names` (enum
//! names, spelled once), `render` (back to TOML, for `lb config dump`), `data_plane` (the
//! configuration's values as the data plane holds them).

mod admission;
pub mod bgp;
mod data_plane;
mod names;
mod raw;
pub mod reference;
mod render;
mod validate;

pub use admission::{Admission, Prefix, RateLimit};
pub use names::Named;

use std::{
    collections::BTreeSet,
    fmt,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::Path,
};

use lb_common::capacity::{SEQUENCE_MAX_LEN, TABLES_PER_VIP};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// 1-based; 0 for a problem of the whole file (unreadable, too large).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`vip[1].backend[0].weight`), empty for syntax errors.
    pub field: String,
    pub message: String,
}

/// What `lb check --json` prints: whether a file is valid, what it holds, or its problems.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    pub file: String,
    pub valid: bool,
    /// VIPs and backends of a valid file (0 for an invalid one).
    pub vips: usize,
    pub backends: usize,
    pub problems: Vec<Problem>,
    /// Problems not listed (past the first hundred).
    pub omitted: usize,
}

impl CheckReport {
    pub fn of(path: &Path, loaded: &Result<Config, ConfigError>) -> Self {
        let file = path.display().to_string();
        match loaded {
            Ok(c) => Self {
                file,
                valid: true,
                vips: c.vips.len(),
                backends: c.backend_count(),
                problems: vec![],
                omitted: 0,
            },
            Err(e) => {
                Self { file, valid: false, vips: 0, backends: 0, problems: e.problems.clone(), omitted: e.omitted }
            }
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
    /// Problems not listed (past the first hundred).
    pub omitted: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                // A problem of the whole file.
                write!(f, "{}: ", self.source_name)?;
            } else {
                write!(f, "{}:{}:{}: ", self.source_name, p.line, p.column)?;
            }
            if !p.field.is_empty() {
                write!(f, "{}: ", p.field)?;
            }
            write!(f, "{}", p.message)?;
        }
        if self.omitted > 0 {
            write!(f, "\n{}: and {} more problems; fix these first", self.source_name, self.omitted)?;
        }
        Ok(())
    }
}

/// How the balancer program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver; fails if the driver has no XDP support.
    Native,
    /// In the kernel's generic path (any interface, about ten times slower).
    Generic,
    /// Native, falling back to generic with a logged warning.
    Auto,
}

impl Named for XdpMode {
    const NAMES: &'static [(&'static str, Self)] =
        &[("native", XdpMode::Native), ("generic", XdpMode::Generic), ("auto", XdpMode::Auto)];
    const WHAT: &'static str = "an XDP mode";
}

/// What an ICMP echo request to a VIP address gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcmpEcho {
    /// The balancer answers from the VIP.
    #[default]
    Reply,
    /// The balancer's kernel gets it.
    Pass,
    Drop,
}

impl Named for IcmpEcho {
    const NAMES: &'static [(&'static str, Self)] =
        &[("reply", IcmpEcho::Reply), ("pass", IcmpEcho::Pass), ("drop", IcmpEcho::Drop)];
    const WHAT: &'static str = "an echo policy";
}

impl IcmpEcho {
    /// The data plane's value (`lb_common::dataplane::icmp_echo`).
    pub fn data_plane_value(self) -> u8 {
        use lb_common::dataplane::icmp_echo;
        match self {
            IcmpEcho::Reply => icmp_echo::REPLY,
            IcmpEcho::Pass => icmp_echo::PASS,
            IcmpEcho::Drop => icmp_echo::DROP,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl Named for Protocol {
    const NAMES: &'static [(&'static str, Self)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
    const WHAT: &'static str = "a protocol";
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How new flows are given a backend (see docs/schedulers.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing of the 5-tuple.
    Maglev,
    /// Weighted Maglev consistent hashing of the client address's first `prefix_len` bits.
    SourceHash { prefix_len: u8 },
    /// New flows dealt to the backends in turn, one each.
    RoundRobin,
    /// New flows dealt in turn in proportion to weight, smoothly interleaved.
    WeightedRoundRobin,
    /// Power of two choices over a Maglev table: the candidate with fewer active flows per
    /// unit of weight wins.
    LeastConnections,
    /// Maglev, with weights the agent lowers for backends that answer their checks slower.
    LeastResponseTime,
}

impl Named for Scheduler {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("maglev", Scheduler::Maglev),
        ("source-hash", Scheduler::SourceHash { prefix_len: 0 }),
        ("round-robin", Scheduler::RoundRobin),
        ("weighted-round-robin", Scheduler::WeightedRoundRobin),
        ("least-connections", Scheduler::LeastConnections),
        ("least-response-time", Scheduler::LeastResponseTime),
    ];
    const WHAT: &'static str = "a scheduler";
}

/// How packets reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// IPIP / IP6IP6 encapsulation, direct server return.
    Ipip,
}

impl Named for Forwarding {
    const NAMES: &'static [(&'static str, Self)] = &[("ipip", Forwarding::Ipip)];
    const WHAT: &'static str = "an available forwarding mode";
}

/// What a VIP does when health checks would leave it without any backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Keep sending to the last healthy backends (and say so loudly).
    Open,
    /// Drop the VIP's traffic.
    Closed,
}

impl Named for FailureMode {
    const NAMES: &'static [(&'static str, Self)] = &[("open", FailureMode::Open), ("closed", FailureMode::Closed)];
    const WHAT: &'static str = "a failure mode";
}

/// An operator's say over one backend, whatever its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Up,
    /// No new flows; existing flows continue until they end or idle out.
    Drain,
    /// No traffic: pinned flows are moved on their next packet.
    Disabled,
}

impl Named for AdminState {
    const NAMES: &'static [(&'static str, Self)] =
        &[("up", AdminState::Up), ("drain", AdminState::Drain), ("disabled", AdminState::Disabled)];
    const WHAT: &'static str = "a backend state";
}

crate::serde_by_name!(AdminState, Protocol);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpMethod {
    Get,
    Head,
}

/// What a health check sends and expects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// A TCP connection (through the tunnel: a SYN answered by a SYN-ACK).
    Tcp,
    /// An HTTP request (over TLS with `tls`: kind `https`), answered with `expect_status` and,
    /// when set, a body containing `expect_body` within its first [`HTTP_BODY_LIMIT`] bytes.
    Http {
        method: HttpMethod,
        path: String,
        host: Option<String>,
        expect_status: u16,
        expect_body: Option<String>,
        tls: Option<Tls>,
    },
    /// A datagram, answered by one starting with `expect_prefix` (any answer when empty).
    Udp { payload: Vec<u8>, expect_prefix: Vec<u8> },
    /// A QUIC packet of a version no server speaks, answered by a Version Negotiation packet
    /// (`agent::health::quic`).
    Quic,
}

/// How much of a body an HTTP check reads looking for `expect_body`: the rest is not read, so a
/// backend streaming without end costs a probe no more than this.
pub const HTTP_BODY_LIMIT: usize = 64 * 1024;

/// The TLS side of an `https` check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tls {
    /// Sent as SNI, and the name the certificate must be valid for; None: the check's `host`,
    /// else the backend's address.
    pub server_name: Option<String>,
    /// Whether the certificate must chain to a trusted CA and be valid for the server name.
    /// Off, the probe still completes a TLS handshake (a backend without TLS fails).
    pub verify: bool,
    /// The CAs trusted: those of the configured `tls_ca_file`, read when the configuration is
    /// (DER), or None for the system's store.
    pub ca: Option<TrustedCas>,
}

/// The CA certificates of a PEM file, as read when the configuration was validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustedCas {
    pub file: std::path::PathBuf,
    pub certificates: Vec<Vec<u8>>,
}

/// A health check of the backends of a VIP (or of one backend).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub port: u16,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    /// Successes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that take an up backend down.
    pub fall: u32,
    /// Send the probe to the VIP through the same encapsulation as client traffic.
    pub tunnel: bool,
}

/// An IP prefix whose host part the data plane varies per flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePrefix<A> {
    pub network: A,
    pub host_bits: u8,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub instance: Instance,
    /// Announcing the VIPs over BGP; None: the balancer announces nothing.
    pub bgp: Option<bgp::Bgp>,
    pub vips: Vec<Vip>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Entries of the IPv4 flow table.
    pub flow_table_entries: u32,
    /// Entries of the IPv6 flow table.
    pub ipv6_flow_table_entries: u32,
    pub udp_idle_timeout_secs: u32,
    /// A TCP flow silent this long stops counting as active (it keeps its backend).
    pub tcp_idle_timeout_secs: u32,
    pub mtu: u16,
    pub encap_source_v4: SourcePrefix<Ipv4Addr>,
    pub encap_source_v6: SourcePrefix<Ipv6Addr>,
    pub fallback_mac: Option<[u8; 6]>,
    /// The agent's control socket (only root can open it).
    pub control_socket: std::path::PathBuf,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The secret key of the flow hash, the same on every balancer of a fleet; None: the public
    /// one (`lb_common::flow::PUBLIC_HASH_KEY`).
    pub flow_hash_key: Option<lb_common::flow::HashKey>,
    /// What ICMP echo requests to VIP addresses get.
    pub icmp_echo: IcmpEcho,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// A prime.
    pub table_size: u32,
    pub failure_mode: FailureMode,
    /// Most of the backends (percent, rounded down) that failing health checks may take out.
    pub max_ejected_percent: u8,
    /// A backend coming up ramps its weight over this time.
    pub slow_start: std::time::Duration,
    /// New flows per second past which the VIP is in flood mode on this balancer (new flows
    /// forwarded without flow-table entries, see `lb_common::flood`); 0: never.
    pub new_flow_budget: u32,
    /// Whom the VIP serves: source lists and per-source rates.
    pub admission: Admission,
    /// Attributes of the VIP address's route when `[bgp]` announces it.
    pub route: bgp::RouteAttributes,
    /// A UDP VIP's session key: flows are balanced and kept by these payload bytes instead of
    /// the 5-tuple (`lb_common::session`); `SessionKey::NONE`: by the 5-tuple.
    pub session_key: lb_common::session::SessionKey,
    /// A UDP VIP's own idle timeout (seconds), replacing the instance's for its flows.
    pub udp_idle_timeout_secs: Option<u16>,
    pub health: Option<HealthCheck>,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// 0 keeps the backend configured but gives it no new flows.
    pub weight: u32,
    pub state: AdminState,
    /// Overrides the VIP's health check for this backend.
    pub health: Option<HealthCheck>,
    /// On a QUIC VIP: the server id the backend puts in its connection ids (zero past the VIP's
    /// server id length).
    pub quic_server_id: Option<[u8; 8]>,
}

impl Vip {
    /// Table chunks (`lb_common::table`) the VIP's two tables take at most: a Maglev table has
    /// `table_size` entries, a round-robin sequence at most [`SEQUENCE_MAX_LEN`].
    pub fn table_chunks(&self) -> u32 {
        let entries = match self.scheduler {
            Scheduler::RoundRobin | Scheduler::WeightedRoundRobin => SEQUENCE_MAX_LEN,
            _ => self.table_size,
        };
        TABLES_PER_VIP * lb_common::table::chunks(entries)
    }

    /// The check that applies to `backend`.
    pub fn check_for<'a>(&'a self, backend: &'a Backend) -> Option<&'a HealthCheck> {
        backend.health.as_ref().or(self.health.as_ref())
    }
}

pub const DEFAULT_FLOW_TABLE_ENTRIES: u32 = lb_common::capacity::FLOW_TABLE_DEFAULT_ENTRIES;
pub const DEFAULT_IPV6_FLOW_TABLE_ENTRIES: u32 = lb_common::capacity::IPV6_FLOW_TABLE_DEFAULT_ENTRIES;
pub const FLOW_TABLE_ENTRIES: Range<i64> = 1024..(1 << 26) + 1;
pub const DEFAULT_UDP_IDLE_TIMEOUT_SECS: u32 = 30;
pub const UDP_IDLE_TIMEOUT_SECS: Range<i64> = 1..86_401;
/// A VIP's own UDP idle timeout: up to about 18 hours (the backend record's 16 bits).
pub const VIP_UDP_IDLE_TIMEOUT_SECS: Range<i64> = 1..65_536;
/// As long as IPVS keeps an established TCP connection without packets.
pub const DEFAULT_TCP_IDLE_TIMEOUT_SECS: u32 = 900;
pub const TCP_IDLE_TIMEOUT_SECS: Range<i64> = 1..604_801;
pub const DEFAULT_MTU: u16 = 1500;
pub const MTU: Range<i64> = 1280..9217;
pub const MAX_WEIGHT: i64 = 65_535;
pub const CHECK_INTERVAL_MS: Range<i64> = 50..60_001;
pub const CHECK_RISE_FALL: Range<i64> = 1..11;
pub const SLOW_START_SECS: Range<i64> = 0..3601;
pub const DEFAULT_MAX_EJECTED_PERCENT: u8 = 50;
/// The largest configuration file (8 MiB): several times what the largest configuration the
/// data plane can hold takes (every VIP, every backend, each with a check).
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

fn too_big() -> String {
    format!("is larger than {MAX_CONFIG_BYTES} bytes, more than a configuration can be; is it the right file?")
}

const MAX_NAME_LEN: usize = 32;
const MAX_INTERFACE_NAME_LEN: usize = 15;

impl Config {
    /// Reads and validates the file at `path`. A file over [`MAX_CONFIG_BYTES`] is refused
    /// before it is read.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source_name = path.display().to_string();
        let whole_file = |message: String| ConfigError {
            source_name: source_name.clone(),
            problems: vec![Problem { line: 0, column: 0, field: String::new(), message }],
            omitted: 0,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| whole_file(format!("cannot read: {e}")))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(whole_file(too_big()));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid_up_to = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..valid_up_to]).expect("valid up to there");
            let (line, column) = validate::end_position(valid);
            let byte = e.as_bytes()[valid_up_to];
            ConfigError {
                source_name: source_name.clone(),
                problems: vec![Problem {
                    line,
                    column,
                    field: String::new(),
                    message: format!("byte {byte:#04x} is not UTF-8 text: a configuration is a TOML text file"),
                }],
                omitted: 0,
            }
        })?;
        Config::parse(&text, &source_name)
    }

    /// Validates `text`; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError {
                source_name: source_name.to_string(),
                problems: vec![Problem { line: 0, column: 0, field: String::new(), message: too_big() }],
                omitted: 0,
            });
        }
        validate::parse(text, source_name)
    }

    /// Number of distinct backend addresses over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect::<BTreeSet<_>>().len()
    }
}

#[cfg(test)]
mod tests;
