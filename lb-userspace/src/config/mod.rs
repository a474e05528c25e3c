//! The configuration: a TOML file becomes types that cannot hold bad values.
//!
//! [`Config::parse`] reads the file (unknown fields are errors) and validates every value; each
//! problem is reported with the file, line and column, the field, what is wrong and what is
//! allowed. A file with any problem yields no [`Config`] at all, so nothing of it can be applied.

mod admission;
mod data_plane;
mod names;
mod raw;
mod render;

pub use admission::{Admission, Prefix, RateLimit};
pub use names::Named;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::Path,
};

use lb_common::{
    capacity::{
        MAGLEV_MAX_TABLE_SIZE, MAX_BACKENDS, MAX_SOURCE_LIST_ENTRIES, MAX_TABLE_CHUNKS, MAX_VIPS, SEQUENCE_MAX_LEN,
        TABLE_CHUNK_ENTRIES, TABLES_PER_VIP,
    },
    dataplane::{MAX_ENCAP_SRC_V4_HOST_BITS, MAX_ENCAP_SRC_V6_HOST_BITS},
    maglev::{default_table_size, is_prime},
};
use toml::Spanned;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`vip[1].backend[0].weight`), empty for syntax errors.
    pub field: String,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.source_name, p.line, p.column)?;
            if !p.field.is_empty() {
                write!(f, "{}: ", p.field)?;
            }
            write!(f, "{}", p.message)?;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
}

/// What a health check sends and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection (through the tunnel: a SYN answered by a SYN-ACK).
    Tcp,
    Http {
        method: HttpMethod,
        path: String,
        host: Option<String>,
        expect_status: u16,
        expect_body: Option<String>,
    },
    /// A datagram, answered by one starting with `expect_prefix` (any answer when empty).
    Udp {
        payload: Vec<u8>,
        expect_prefix: Vec<u8>,
    },
}

/// A health check of the backends of a VIP (or of one backend).
#[derive(Debug, Clone, PartialEq, Eq)]
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
const MAX_NAME_LEN: usize = 32;
const MAX_INTERFACE_NAME_LEN: usize = 15;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: path.display().to_string(),
            problems: vec![Problem { line: 0, column: 0, field: String::new(), message: format!("cannot read: {e}") }],
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates `text`; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let mut v = Validator { text, problems: Vec::new() };
        let file: raw::File = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => {
                v.problem(e.span().unwrap_or(0..0), "", e.message().to_string());
                return Err(ConfigError { source_name: source_name.to_string(), problems: v.problems });
            }
        };
        let config = v.config(file);
        if v.problems.is_empty() {
            Ok(config.expect("no problems means a complete config"))
        } else {
            Err(ConfigError { source_name: source_name.to_string(), problems: v.problems })
        }
    }

    /// Number of distinct backend addresses over all VIPs.
    pub fn backend_count(&self) -> usize {
        self.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect::<BTreeSet<_>>().len()
    }
}

struct Validator<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, field: &str, message: String) {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        self.problems.push(Problem { line, column, field: field.to_string(), message });
    }

    /// `value` if `check` accepts it, else records the problem it names.
    fn check<T, U>(
        &mut self,
        value: &Spanned<T>,
        field: &str,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match check(value.get_ref()) {
            Ok(u) => Some(u),
            Err(message) => {
                self.problem(value.span(), field, message);
                None
            }
        }
    }

    fn config(&mut self, file: raw::File) -> Option<Config> {
        let instance = self.instance(file.instance.get_ref());
        let mut vips = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut keys: BTreeMap<(IpAddr, u16, Protocol), usize> = BTreeMap::new();
        let (mut table_chunks, mut tables_full) = (0, false);
        let (mut listed, mut lists_full) = (0, false);
        for (i, raw_vip) in file.vip.iter().enumerate() {
            let field = format!("vip[{i}]");
            let Some(vip) = self.vip(raw_vip.get_ref(), &field) else { continue };
            if let Some(first) = names.insert(vip.name.clone(), i) {
                self.problem(
                    raw_vip.get_ref().name.span(),
                    &format!("{field}.name"),
                    format!("\"{}\" is already the name of vip[{first}]; VIP names must be unique", vip.name),
                );
            }
            if let Some(first) = keys.insert((vip.address, vip.port, vip.protocol), i) {
                self.problem(
                    raw_vip.span(),
                    &field,
                    format!("vip[{first}] already serves {} port {} {}", vip.address, vip.port, vip.protocol),
                );
            }
            listed += vip.admission.listed();
            if listed > MAX_SOURCE_LIST_ENTRIES as usize && !lists_full {
                lists_full = true;
                self.problem(
                    raw_vip.get_ref().admission.as_ref().map_or(raw_vip.span(), |a| a.span()),
                    &format!("{field}.admission"),
                    format!(
                        "with this VIP the source lists hold {listed} prefixes, more than the \
                         {MAX_SOURCE_LIST_ENTRIES} supported for all VIPs together"
                    ),
                );
            }
            table_chunks += vip.table_chunks();
            if table_chunks > MAX_TABLE_CHUNKS && !tables_full {
                tables_full = true;
                let span = raw_vip.get_ref().table_size.as_ref().map_or(raw_vip.span(), |t| t.span());
                self.problem(
                    span,
                    &format!("{field}.table_size"),
                    format!(
                        "with this VIP the tables need {table_chunks} chunks of {TABLE_CHUNK_ENTRIES} entries \
                         (two tables per VIP), more than the {MAX_TABLE_CHUNKS} supported; give VIPs with many \
                         backends a smaller table_size"
                    ),
                );
            }
            vips.push(vip);
        }
        if file.vip.len() > MAX_VIPS as usize {
            self.problem(
                file.vip[MAX_VIPS as usize].span(),
                &format!("vip[{}]", MAX_VIPS),
                format!("{} VIPs, at most {MAX_VIPS} are supported", file.vip.len()),
            );
        }
        let config = Config { instance: instance?, vips };
        if config.backend_count() > MAX_BACKENDS as usize {
            self.problem(
                0..0,
                "vip",
                format!("{} distinct backends, at most {MAX_BACKENDS} are supported", config.backend_count()),
            );
        }
        Some(config)
    }

    fn instance(&mut self, raw: &raw::Instance) -> Option<Instance> {
        let name = self.check(&raw.name, "instance.name", |s| name(s));
        let mut interfaces = Vec::new();
        if raw.interfaces.get_ref().is_empty() {
            self.problem(
                raw.interfaces.span(),
                "instance.interfaces",
                "lists no interface; name at least one to attach to".into(),
            );
        }
        for (i, iface) in raw.interfaces.get_ref().iter().enumerate() {
            if let Some(n) = self.check(iface, &format!("instance.interfaces[{i}]"), |s| interface_name(s)) {
                interfaces.push(n);
            }
        }
        let xdp_mode = match &raw.xdp_mode {
            None => Some(XdpMode::Auto),
            Some(m) => self.check(m, "instance.xdp_mode", |s| XdpMode::parse(s)),
        };
        let flow_table_entries = self.ranged(
            &raw.flow_table_entries,
            "instance.flow_table_entries",
            FLOW_TABLE_ENTRIES,
            i64::from(DEFAULT_FLOW_TABLE_ENTRIES),
        );
        let ipv6_flow_table_entries = self.ranged(
            &raw.ipv6_flow_table_entries,
            "instance.ipv6_flow_table_entries",
            FLOW_TABLE_ENTRIES,
            i64::from(DEFAULT_IPV6_FLOW_TABLE_ENTRIES),
        );
        let udp_idle_timeout_secs = self.ranged(
            &raw.udp_idle_timeout_secs,
            "instance.udp_idle_timeout_secs",
            UDP_IDLE_TIMEOUT_SECS,
            i64::from(DEFAULT_UDP_IDLE_TIMEOUT_SECS),
        );
        let tcp_idle_timeout_secs = self.ranged(
            &raw.tcp_idle_timeout_secs,
            "instance.tcp_idle_timeout_secs",
            TCP_IDLE_TIMEOUT_SECS,
            i64::from(DEFAULT_TCP_IDLE_TIMEOUT_SECS),
        );
        let mtu = self.ranged(&raw.mtu, "instance.mtu", MTU, i64::from(DEFAULT_MTU));
        let encap_source_v4 = self.check(&raw.encap_source_v4, "instance.encap_source_v4", |s| {
            let (network, len) = prefix::<Ipv4Addr>(s)?;
            let min_len = 32 - MAX_ENCAP_SRC_V4_HOST_BITS;
            if !(min_len..=32).contains(&len) {
                return Err(format!("prefix length /{len} is out of range /{min_len}../32 (at most {MAX_ENCAP_SRC_V4_HOST_BITS} host bits vary per flow)"));
            }
            Ok(SourcePrefix { network, host_bits: 32 - len })
        });
        let encap_source_v6 = self.check(&raw.encap_source_v6, "instance.encap_source_v6", |s| {
            let (network, len) = prefix::<Ipv6Addr>(s)?;
            let min_len = 128 - MAX_ENCAP_SRC_V6_HOST_BITS;
            if !(min_len..=128).contains(&len) {
                return Err(format!("prefix length /{len} is out of range /{min_len}../128 (at most {MAX_ENCAP_SRC_V6_HOST_BITS} host bits vary per flow)"));
            }
            Ok(SourcePrefix { network, host_bits: 128 - len })
        });
        let fallback_mac = match &raw.fallback_mac {
            None => Some(None),
            Some(m) => self.check(m, "instance.fallback_mac", |s| mac(s).map(Some)),
        };
        let control_socket = match &raw.control_socket {
            None => Some(std::path::PathBuf::from(format!("/run/lb/{}.sock", raw.name.get_ref()))),
            Some(p) => self.check(p, "instance.control_socket", |s| {
                if s.starts_with('/') {
                    Ok(std::path::PathBuf::from(s))
                } else {
                    Err(format!("\"{s}\" is not an absolute path"))
                }
            }),
        };
        let metrics_address = match &raw.metrics_address {
            None => Some(None),
            Some(a) => self.check(a, "instance.metrics_address", |s| {
                s.parse::<std::net::SocketAddr>()
                    .map(Some)
                    .map_err(|_| format!("\"{s}\" is not an address and port such as 127.0.0.1:9100"))
            }),
        };
        let icmp_echo = match &raw.icmp_echo {
            None => Some(IcmpEcho::default()),
            Some(m) => self.check(m, "instance.icmp_echo", |s| IcmpEcho::parse(s)),
        };
        let flow_hash_key = match &raw.flow_hash_key {
            None => Some(None),
            Some(k) => self.check(k, "instance.flow_hash_key", |s| hash_key(s).map(Some)),
        };
        Some(Instance {
            name: name?,
            interfaces,
            xdp_mode: xdp_mode?,
            flow_table_entries: flow_table_entries? as u32,
            ipv6_flow_table_entries: ipv6_flow_table_entries? as u32,
            udp_idle_timeout_secs: udp_idle_timeout_secs? as u32,
            tcp_idle_timeout_secs: tcp_idle_timeout_secs? as u32,
            mtu: mtu? as u16,
            encap_source_v4: encap_source_v4?,
            encap_source_v6: encap_source_v6?,
            fallback_mac: fallback_mac?,
            control_socket: control_socket?,
            metrics_address: metrics_address?,
            flow_hash_key: flow_hash_key?,
            icmp_echo: icmp_echo?,
        })
    }

    /// An optional integer in `range`, `default` when absent.
    fn ranged(&mut self, value: &Option<Spanned<i64>>, field: &str, range: Range<i64>, default: i64) -> Option<i64> {
        match value {
            None => Some(default),
            Some(v) => self.check(v, field, |n| {
                if range.contains(n) {
                    Ok(*n)
                } else {
                    Err(format!("{n} is out of range {}..={}", range.start, range.end - 1))
                }
            }),
        }
    }

    fn vip(&mut self, raw: &raw::Vip, field: &str) -> Option<Vip> {
        let name = self.check(&raw.name, &format!("{field}.name"), |s| name(s));
        let vip_address = self.check(&raw.address, &format!("{field}.address"), |s| address(s));
        let port = self.check(&raw.port, &format!("{field}.port"), |p| {
            u16::try_from(*p).map_err(|_| format!("{p} is out of range 0..=65535 (0 serves every port)"))
        });
        let protocol = self.check(&raw.protocol, &format!("{field}.protocol"), |s| Protocol::parse(s));
        let max_prefix: i64 = if vip_address.is_some_and(|a| a.is_ipv6()) { 128 } else { 32 };
        let scheduler = match &raw.scheduler {
            None => Some(Scheduler::Maglev),
            // A source hash takes the whole address unless `source_prefix_len` says otherwise.
            Some(s) => self.check(s, &format!("{field}.scheduler"), |s| match Scheduler::parse(s)? {
                Scheduler::SourceHash { .. } => Ok(Scheduler::SourceHash { prefix_len: max_prefix as u8 }),
                other => Ok(other),
            }),
        };
        let scheduler = match (&raw.source_prefix_len, scheduler) {
            (None, s) => s,
            (Some(p), Some(Scheduler::SourceHash { .. })) => self
                .check(p, &format!("{field}.source_prefix_len"), |n| {
                    if (0..=max_prefix).contains(n) {
                        Ok(*n as u8)
                    } else {
                        Err(format!("{n} is out of range 0..={max_prefix}"))
                    }
                })
                .map(|prefix_len| Scheduler::SourceHash { prefix_len }),
            (Some(p), Some(_)) => {
                self.problem(
                    p.span(),
                    &format!("{field}.source_prefix_len"),
                    "applies only to scheduler = \"source-hash\"".into(),
                );
                None
            }
            (Some(_), None) => None,
        };
        let forwarding = match &raw.forwarding {
            None => Some(Forwarding::Ipip),
            Some(s) => self.check(s, &format!("{field}.forwarding"), |s| Forwarding::parse(s)),
        };
        // Without a size, the VIP's table gets one from its backends (below).
        let table_size = match &raw.table_size {
            None => Some(None),
            Some(t) => self.check(t, &format!("{field}.table_size"), |n| {
                let Ok(size) = u32::try_from(*n) else {
                    return Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"));
                };
                if !(3..=MAGLEV_MAX_TABLE_SIZE).contains(&size) {
                    Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"))
                } else if !is_prime(size) {
                    Err(format!("{n} is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537"))
                } else {
                    Ok(Some(size))
                }
            }),
        };
        let failure_mode = match &raw.failure_mode {
            None => Some(FailureMode::Open),
            Some(m) => self.check(m, &format!("{field}.failure_mode"), |s| FailureMode::parse(s)),
        };
        let max_ejected_percent = self.ranged(
            &raw.max_ejected_percent,
            &format!("{field}.max_ejected_percent"),
            0..101,
            i64::from(DEFAULT_MAX_EJECTED_PERCENT),
        );
        let slow_start_secs =
            self.ranged(&raw.slow_start_secs, &format!("{field}.slow_start_secs"), SLOW_START_SECS, 0);
        let new_flow_budget =
            self.ranged(&raw.new_flow_budget, &format!("{field}.new_flow_budget"), 0..1_000_000_001, 0);
        let vip_port = raw.port.get_ref();
        let vip_health = match &raw.health {
            None => Some(None),
            Some(h) => self.health(h, &format!("{field}.health"), *vip_port).map(Some),
        };
        if scheduler == Some(Scheduler::LeastResponseTime)
            && raw.health.is_none()
            && let Some(s) = &raw.scheduler
        {
            self.problem(
                s.span(),
                &format!("{field}.scheduler"),
                "least-response-time needs a [vip.health] check to measure response times".into(),
            );
        }
        let admission = match &raw.admission {
            None => Some(Admission::default()),
            Some(a) => self.admission(a, &format!("{field}.admission"), vip_address),
        };
        let mut backends = Vec::new();
        let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (i, b) in raw.backend.iter().enumerate() {
            let bfield = format!("{field}.backend[{i}]");
            let backend_address = self.check(&b.get_ref().address, &format!("{bfield}.address"), |s| address(s));
            let weight = match &b.get_ref().weight {
                None => Some(1),
                Some(w) => self.check(w, &format!("{bfield}.weight"), |w| {
                    if (0..=MAX_WEIGHT).contains(w) {
                        Ok(*w as u32)
                    } else {
                        Err(format!("{w} is out of range 0..={MAX_WEIGHT} (0 = no new flows)"))
                    }
                }),
            };
            if let Some(a) = backend_address
                && let Some(first) = seen.insert(a, i)
            {
                self.problem(
                    b.get_ref().address.span(),
                    &format!("{bfield}.address"),
                    format!("{a} is already {field}.backend[{first}]"),
                );
            }
            let state = match &b.get_ref().state {
                None => Some(AdminState::Up),
                Some(s) => self.check(s, &format!("{bfield}.state"), |s| AdminState::parse(s)),
            };
            let health = match &b.get_ref().health {
                None => Some(None),
                Some(h) => self.health(h, &format!("{bfield}.health"), *vip_port).map(Some),
            };
            if let (Some(address), Some(weight), Some(state), Some(health)) = (backend_address, weight, state, health) {
                backends.push(Backend { address, weight, state, health });
            }
        }
        let table_size = table_size.map(|size| size.unwrap_or_else(|| default_table_size(raw.backend.len())));
        if let (Some(size), true) = (table_size, backends.len() as u64 > u64::from(table_size.unwrap_or(u32::MAX))) {
            self.problem(
                raw.backend[0].span(),
                &format!("{field}.backend"),
                format!("{} backends do not fit a table of {size} entries", backends.len()),
            );
        }
        Some(Vip {
            name: name?,
            address: vip_address?,
            port: port?,
            protocol: protocol?,
            scheduler: scheduler?,
            forwarding: forwarding?,
            table_size: table_size?,
            failure_mode: failure_mode?,
            max_ejected_percent: max_ejected_percent? as u8,
            slow_start: std::time::Duration::from_secs(slow_start_secs? as u64),
            new_flow_budget: new_flow_budget? as u32,
            admission: admission?,
            health: vip_health?,
            backends,
        })
    }

    fn health(&mut self, raw: &Spanned<raw::Health>, field: &str, vip_port: i64) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let port = match &h.port {
            Some(p) => self.check(p, &format!("{field}.port"), |p| match u16::try_from(*p) {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{p} is out of range 1..=65535")),
            }),
            None if vip_port > 0 => u16::try_from(vip_port).ok(),
            None => {
                self.problem(raw.span(), field, "an all-ports VIP's check needs a `port`".into());
                None
            }
        };
        let interval = self.ranged(&h.interval_ms, &format!("{field}.interval_ms"), CHECK_INTERVAL_MS, 1000);
        let timeout = match (&h.timeout_ms, interval) {
            (Some(t), Some(i)) => self.check(t, &format!("{field}.timeout_ms"), |t| {
                if (10..=i).contains(t) {
                    Ok(*t)
                } else {
                    Err(format!("{t} is out of range 10..={i} (at most the interval)"))
                }
            }),
            (None, Some(i)) => Some((i / 2).max(10)),
            (_, None) => None,
        };
        let rise = self.ranged(&h.rise, &format!("{field}.rise"), CHECK_RISE_FALL, 2);
        let fall = self.ranged(&h.fall, &format!("{field}.fall"), CHECK_RISE_FALL, 3);
        let tunnel = h.tunnel.as_ref().map(|t| *t.get_ref()).unwrap_or(false);
        let http_only = [
            ("method", h.method.is_some()),
            ("path", h.path.is_some()),
            ("host", h.host.is_some()),
            ("expect_status", h.expect_status.is_some()),
            ("expect_body", h.expect_body.is_some()),
        ];
        let udp_only = [("payload_hex", h.payload_hex.is_some()), ("expect_prefix_hex", h.expect_prefix_hex.is_some())];
        let kind_name = h.kind.get_ref().as_str();
        let misplaced: Vec<&str> = match kind_name {
            "tcp" => http_only.iter().chain(udp_only.iter()).filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            "http" => udp_only.iter().filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            "udp" => http_only.iter().filter(|(_, set)| *set).map(|(n, _)| *n).collect(),
            _ => Vec::new(),
        };
        if !misplaced.is_empty() {
            self.problem(
                raw.span(),
                field,
                format!("{} do(es) not apply to a {kind_name} check", misplaced.join(", ")),
            );
        }
        let kind = match kind_name {
            "tcp" => Some(CheckKind::Tcp),
            "http" => {
                let method = match &h.method {
                    None => Some(HttpMethod::Get),
                    Some(m) => self.check(m, &format!("{field}.method"), |m| match m.as_str() {
                        "GET" => Ok(HttpMethod::Get),
                        "HEAD" => Ok(HttpMethod::Head),
                        other => Err(format!("\"{other}\" is not a check method; use \"GET\" or \"HEAD\"")),
                    }),
                };
                let path = match &h.path {
                    None => Some("/".to_string()),
                    Some(p) => self.check(p, &format!("{field}.path"), |p| {
                        if p.starts_with('/') && !p.contains(char::is_whitespace) {
                            Ok(p.clone())
                        } else {
                            Err(format!("\"{p}\" is not a request path (starts with /, no spaces)"))
                        }
                    }),
                };
                let host = match &h.host {
                    None => Some(None),
                    Some(v) => self.check(v, &format!("{field}.host"), |v| {
                        if !v.is_empty() && !v.contains(char::is_whitespace) {
                            Ok(Some(v.clone()))
                        } else {
                            Err(format!("\"{v}\" is not a host name"))
                        }
                    }),
                };
                let expect_status = self.ranged(&h.expect_status, &format!("{field}.expect_status"), 100..600, 200);
                let expect_body = h.expect_body.as_ref().map(|b| b.get_ref().clone());
                Some(CheckKind::Http {
                    method: method?,
                    path: path?,
                    host: host?,
                    expect_status: expect_status? as u16,
                    expect_body,
                })
            }
            "udp" => {
                let payload = match &h.payload_hex {
                    None => {
                        self.problem(raw.span(), field, "a udp check needs `payload_hex`, the datagram to send".into());
                        None
                    }
                    Some(p) => self.check(p, &format!("{field}.payload_hex"), |p| {
                        hex(p).and_then(|b| if b.is_empty() { Err("is empty".into()) } else { Ok(b) })
                    }),
                };
                let expect_prefix = match &h.expect_prefix_hex {
                    None => Some(Vec::new()),
                    Some(p) => self.check(p, &format!("{field}.expect_prefix_hex"), |p| hex(p)),
                };
                Some(CheckKind::Udp { payload: payload?, expect_prefix: expect_prefix? })
            }
            other => {
                self.problem(
                    h.kind.span(),
                    &format!("{field}.kind"),
                    format!("\"{other}\" is not a check kind; use \"tcp\", \"http\" or \"udp\""),
                );
                None
            }
        };
        Some(HealthCheck {
            kind: kind?,
            port: port?,
            interval: std::time::Duration::from_millis(interval? as u64),
            timeout: std::time::Duration::from_millis(timeout? as u64),
            rise: rise? as u32,
            fall: fall? as u32,
            tunnel,
        })
    }
}

fn name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("\"{s}\" is not a valid name; use 1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_'"))
    }
}

fn interface_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_INTERFACE_NAME_LEN || s.contains(['/', ' ', '\0']) {
        Err(format!(
            "\"{s}\" is not a valid interface name (1 to {MAX_INTERFACE_NAME_LEN} characters, no '/' or spaces)"
        ))
    } else {
        Ok(s.to_string())
    }
}

fn address(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>().map_err(|_| format!("\"{s}\" is not an IPv4 or IPv6 address"))
}

fn prefix<A: std::str::FromStr>(s: &str) -> Result<(A, u8), String> {
    let (addr, len) =
        s.split_once('/').ok_or_else(|| format!("\"{s}\" is not a prefix; write it as ADDRESS/LENGTH"))?;
    let addr = addr.parse::<A>().map_err(|_| format!("\"{addr}\" is not an address of the prefix's family"))?;
    let len = len.parse::<u8>().map_err(|_| format!("\"{len}\" is not a prefix length"))?;
    Ok((addr, len))
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("\"{s}\" is not hexadecimal bytes (pairs of 0-9, a-f)"));
    }
    Ok((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked")).collect())
}

/// A flow hash key: 32 hexadecimal digits (128 bits), not all zero.
fn hash_key(s: &str) -> Result<lb_common::flow::HashKey, String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if digits.len() != 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("is not 32 hexadecimal digits (a 128-bit key); make one with \
                    `od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'` and give every balancer of the fleet the same"
            .into());
    }
    let key = [
        u64::from_str_radix(&digits[..16], 16).expect("checked"),
        u64::from_str_radix(&digits[16..], 16).expect("checked"),
    ];
    if key == [0, 0] {
        return Err("is all zeros, which is no secret; use random digits".into());
    }
    Ok(key)
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("\"{s}\" is not a MAC address; write it as 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
