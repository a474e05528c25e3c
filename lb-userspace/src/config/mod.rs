//! The configuration: a TOML file becomes types that cannot hold bad values.
//!
//! [`Config::parse`] reads the file (unknown fields are errors) and validates every value; each
//! problem is reported with the file, line and column, the field, what is wrong and what is
//! allowed. A file with any problem yields no [`Config`] at all, so nothing of it can be applied.

mod raw;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::Path,
};

use lb_common::{
    capacity::{MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_MAX_TABLE_SIZE, MAX_BACKENDS, MAX_VIPS},
    dataplane::{MAX_ENCAP_SRC_V4_HOST_BITS, MAX_ENCAP_SRC_V6_HOST_BITS},
    maglev::is_prime,
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How new flows are given a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing of the 5-tuple.
    Maglev,
}

/// How packets reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// IPIP / IP6IP6 encapsulation, direct server return.
    Ipip,
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
    pub flow_table_entries: u32,
    pub udp_idle_timeout_secs: u32,
    pub mtu: u16,
    pub encap_source_v4: SourcePrefix<Ipv4Addr>,
    pub encap_source_v6: SourcePrefix<Ipv6Addr>,
    pub fallback_mac: Option<[u8; 6]>,
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
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// 0 keeps the backend configured but gives it no new flows.
    pub weight: u32,
}

pub const DEFAULT_FLOW_TABLE_ENTRIES: u32 = lb_common::capacity::FLOW_TABLE_DEFAULT_ENTRIES;
pub const FLOW_TABLE_ENTRIES: Range<i64> = 1024..(1 << 26) + 1;
pub const DEFAULT_UDP_IDLE_TIMEOUT_SECS: u32 = 30;
pub const UDP_IDLE_TIMEOUT_SECS: Range<i64> = 1..86_401;
pub const DEFAULT_MTU: u16 = 1500;
pub const MTU: Range<i64> = 1280..9217;
pub const MAX_WEIGHT: i64 = 65_535;
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
            Some(m) => self.check(m, "instance.xdp_mode", |s| match s.as_str() {
                "native" => Ok(XdpMode::Native),
                "generic" => Ok(XdpMode::Generic),
                "auto" => Ok(XdpMode::Auto),
                other => Err(format!("\"{other}\" is not an XDP mode; use \"native\", \"generic\" or \"auto\"")),
            }),
        };
        let flow_table_entries = self.ranged(
            &raw.flow_table_entries,
            "instance.flow_table_entries",
            FLOW_TABLE_ENTRIES,
            i64::from(DEFAULT_FLOW_TABLE_ENTRIES),
        );
        let udp_idle_timeout_secs = self.ranged(
            &raw.udp_idle_timeout_secs,
            "instance.udp_idle_timeout_secs",
            UDP_IDLE_TIMEOUT_SECS,
            i64::from(DEFAULT_UDP_IDLE_TIMEOUT_SECS),
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
        Some(Instance {
            name: name?,
            interfaces,
            xdp_mode: xdp_mode?,
            flow_table_entries: flow_table_entries? as u32,
            udp_idle_timeout_secs: udp_idle_timeout_secs? as u32,
            mtu: mtu? as u16,
            encap_source_v4: encap_source_v4?,
            encap_source_v6: encap_source_v6?,
            fallback_mac: fallback_mac?,
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
        let protocol = self.check(&raw.protocol, &format!("{field}.protocol"), |s| match s.as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("\"{other}\" is not a protocol; use \"tcp\" or \"udp\"")),
        });
        let scheduler = match &raw.scheduler {
            None => Some(Scheduler::Maglev),
            Some(s) => self.check(s, &format!("{field}.scheduler"), |s| match s.as_str() {
                "maglev" => Ok(Scheduler::Maglev),
                other => Err(format!("\"{other}\" is not an available scheduler; use \"maglev\"")),
            }),
        };
        let forwarding = match &raw.forwarding {
            None => Some(Forwarding::Ipip),
            Some(s) => self.check(s, &format!("{field}.forwarding"), |s| match s.as_str() {
                "ipip" => Ok(Forwarding::Ipip),
                other => Err(format!("\"{other}\" is not an available forwarding mode; use \"ipip\"")),
            }),
        };
        let table_size = match &raw.table_size {
            None => Some(MAGLEV_DEFAULT_TABLE_SIZE),
            Some(t) => self.check(t, &format!("{field}.table_size"), |n| {
                let Ok(size) = u32::try_from(*n) else {
                    return Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"));
                };
                if !(3..=MAGLEV_MAX_TABLE_SIZE).contains(&size) {
                    Err(format!("{n} is out of range 3..={MAGLEV_MAX_TABLE_SIZE}"))
                } else if !is_prime(size) {
                    Err(format!("{n} is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537"))
                } else {
                    Ok(size)
                }
            }),
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
            if let (Some(address), Some(weight)) = (backend_address, weight) {
                backends.push(Backend { address, weight });
            }
        }
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
            backends,
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
