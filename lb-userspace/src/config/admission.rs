//! `[vip.admission]`: whom a VIP serves, before anything else (`lb_common::admission`): source
//! allow and deny lists, and per-source rates of packets and of new flows.

use std::{collections::BTreeMap, fmt, net::IpAddr, ops::Range};

use lb_common::capacity::MAX_SOURCE_LIST_ENTRIES;
use toml::Spanned;

use super::{raw, validate::Validator};

/// An IP prefix: its network address (host bits zero) and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub network: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    /// ADDRESS/LENGTH with no host bits set, or one address.
    fn from_str(s: &str) -> Result<Self, String> {
        source_prefix(s)
    }
}

/// A rate limit: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// A VIP's admission settings. The default admits everyone, unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Sources served; when not empty, every other source is denied.
    pub allow: Vec<Prefix>,
    /// Sources refused. Where an allow and a deny prefix both hold a source, the longer decides.
    pub deny: Vec<Prefix>,
    /// Packets per source prefix (every packet of the VIP, established flows' too).
    pub packets: Option<RateLimit>,
    /// New flows per source prefix.
    pub new_flows: Option<RateLimit>,
    /// Leading bits of an IPv4 client address that share a rate bucket.
    pub source_prefix_v4: u8,
    /// Leading bits of an IPv6 client address that share a rate bucket.
    pub source_prefix_v6: u8,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            packets: None,
            new_flows: None,
            source_prefix_v4: DEFAULT_SOURCE_PREFIX_V4,
            source_prefix_v6: DEFAULT_SOURCE_PREFIX_V6,
        }
    }
}

impl Admission {
    /// Whether the VIP serves everyone, unlimited.
    pub fn admits_all(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.packets.is_none() && self.new_flows.is_none()
    }

    /// Prefixes in either list.
    pub fn listed(&self) -> usize {
        self.allow.len() + self.deny.len()
    }
}

/// One client per bucket for IPv4; IPv6 hosts get a /64 each, so a /64 is one client.
pub const DEFAULT_SOURCE_PREFIX_V4: u8 = 32;
pub const DEFAULT_SOURCE_PREFIX_V6: u8 = 64;
pub const RATE_PER_SECOND: Range<i64> = 1..100_000_001;
pub const BURST: Range<i64> = 1..100_000_001;

impl Validator<'_> {
    /// `raw` for a VIP at `vip_address` (None: the address was invalid; family checks are skipped).
    pub(super) fn admission(
        &mut self,
        raw: &Spanned<raw::Admission>,
        field: &str,
        vip_address: Option<IpAddr>,
    ) -> Option<Admission> {
        let a = raw.get_ref();
        let mut seen: BTreeMap<Prefix, String> = BTreeMap::new();
        let allow = self.prefix_list(&a.allow, &format!("{field}.allow"), vip_address, &mut seen);
        let deny = self.prefix_list(&a.deny, &format!("{field}.deny"), vip_address, &mut seen);
        let packets =
            self.rate_limit(&a.packets_per_second, &a.packet_burst, field, "packets_per_second", "packet_burst");
        let new_flows = self.rate_limit(
            &a.new_flows_per_second,
            &a.new_flow_burst,
            field,
            "new_flows_per_second",
            "new_flow_burst",
        );
        let source_prefix_v4 = self.ranged(
            &a.source_prefix_v4,
            &format!("{field}.source_prefix_v4"),
            1..33,
            i64::from(DEFAULT_SOURCE_PREFIX_V4),
        );
        let source_prefix_v6 = self.ranged(
            &a.source_prefix_v6,
            &format!("{field}.source_prefix_v6"),
            1..129,
            i64::from(DEFAULT_SOURCE_PREFIX_V6),
        );
        Some(Admission {
            allow: allow?,
            deny: deny?,
            packets: packets?,
            new_flows: new_flows?,
            source_prefix_v4: source_prefix_v4? as u8,
            source_prefix_v6: source_prefix_v6? as u8,
        })
    }

    fn prefix_list(
        &mut self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
        field: &str,
        vip_address: Option<IpAddr>,
        seen: &mut BTreeMap<Prefix, String>,
    ) -> Option<Vec<Prefix>> {
        let Some(list) = raw else { return Some(Vec::new()) };
        let mut prefixes = Some(Vec::new());
        for (i, entry) in list.get_ref().iter().enumerate() {
            let entry_field = format!("{field}[{i}]");
            let parsed = self.check(entry, &entry_field, |s| {
                let prefix = source_prefix(s)?;
                if let Some(vip) = vip_address
                    && vip.is_ipv4() != prefix.network.is_ipv4()
                {
                    let (vip_family, other) = if vip.is_ipv4() { ("IPv4", "IPv6") } else { ("IPv6", "IPv4") };
                    return Err(format!(
                        "{s} is an {other} prefix, but the VIP {vip} is {vip_family}: its clients are {vip_family}"
                    ));
                }
                if let Some(first) = seen.get(&prefix) {
                    return Err(format!("{prefix} is already {first}"));
                }
                Ok(prefix)
            });
            match (parsed, prefixes.as_mut()) {
                (Some(p), Some(all)) => {
                    seen.insert(p, entry_field);
                    all.push(p);
                }
                _ => prefixes = None,
            }
        }
        if list.get_ref().len() > MAX_SOURCE_LIST_ENTRIES as usize {
            self.problem(
                list.span(),
                field,
                format!("{} prefixes, at most {MAX_SOURCE_LIST_ENTRIES} are supported", list.get_ref().len()),
            );
            return None;
        }
        prefixes
    }

    /// A rate and its burst: `Some(None)` when neither is set, `None` after a problem.
    #[allow(clippy::option_option, reason = "absent and invalid differ, as everywhere in the validator")]
    fn rate_limit(
        &mut self,
        rate: &Option<Spanned<i64>>,
        burst: &Option<Spanned<i64>>,
        field: &str,
        rate_name: &str,
        burst_name: &str,
    ) -> Option<Option<RateLimit>> {
        if rate.is_none() {
            if let Some(b) = burst {
                self.problem(
                    b.span(),
                    &format!("{field}.{burst_name}"),
                    format!("a burst needs a rate: set {rate_name} too"),
                );
                return None;
            }
            return Some(None);
        }
        let per_second = self.ranged(rate, &format!("{field}.{rate_name}"), RATE_PER_SECOND, 0)?;
        // One second's worth by default: a client may send its whole second's allowance at once.
        let burst = self.ranged(burst, &format!("{field}.{burst_name}"), BURST, per_second)?;
        Some(Some(RateLimit { per_second: per_second as u32, burst: burst as u32 }))
    }
}

/// A prefix as written: ADDRESS/LENGTH with no host bits set, or one address.
fn source_prefix(s: &str) -> Result<Prefix, String> {
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (s, None),
    };
    let network: IpAddr =
        addr.parse().map_err(|_| format!("\"{s}\" is not a prefix; write it as ADDRESS/LENGTH or ADDRESS"))?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("\"{len}\" is not a prefix length of {s} (0..={max})")),
        },
    };
    let masked = mask(network, len);
    if masked != network {
        return Err(format!("{s} has host bits set; the prefix is {masked}/{len}"));
    }
    Ok(Prefix { network, len })
}

/// `addr` with all bits past `len` cleared.
pub fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}
