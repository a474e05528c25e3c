//! `[bgp]` and `[vip.bgp]`: how the balancer announces its VIPs through a BGP daemon (BIRD 2),
//! their types and their validation. The agent renders these into the daemon's configuration
//! (the `bgp` room), so every value that reaches that text is checked here to be one the daemon's
//! grammar reads as meant: addresses, numbers, and names and passwords of a safe alphabet.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    ops::Range,
    path::PathBuf,
    time::Duration,
};

use toml::Spanned;

use super::{raw, validate::Validator};

/// The daemon's control socket on Debian.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_DRAIN_GRACE_SECS: i64 = 30;
pub const DRAIN_GRACE_SECS: Range<i64> = 1..3601;
/// A data-centre fabric's usual hold time; BFD (on by default) detects a dead member sooner.
pub const DEFAULT_HOLD_TIME_SECS: i64 = 9;
pub const HOLD_TIME_SECS: Range<i64> = 3..65_536;
pub const DEFAULT_BFD_INTERVAL_MS: i64 = 100;
pub const BFD_INTERVAL_MS: Range<i64> = 10..10_001;
pub const DEFAULT_BFD_MULTIPLIER: i64 = 3;
pub const BFD_MULTIPLIER: Range<i64> = 1..256;
/// BIRD's symbols are at most 64 characters; the peer's protocol name is `lb_INSTANCE_NAME`.
const MAX_PROTOCOL_NAME_LEN: usize = 64;
const MAX_PASSWORD_LEN: usize = 80;

/// `[bgp]`: the balancer's BGP speaker (a BIRD 2 the agent drives) and its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    pub local_asn: u32,
    /// None: BIRD chooses (the lowest IPv4 address of the host).
    pub router_id: Option<Ipv4Addr>,
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// The next hop announced for IPv4 VIPs; None: the session's own address.
    pub next_hop_v4: Option<IpAddr>,
    pub next_hop_v6: Option<IpAddr>,
    /// Communities on every announced VIP.
    pub communities: Vec<Community>,
    /// How long `lb node drain` waits at most for new flows to stop.
    pub drain_grace: Duration,
    pub hold_time_secs: u16,
    pub bfd_interval: Duration,
    pub bfd_multiplier: u8,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Names the peer's BGP protocol in BIRD (`lb_INSTANCE_NAME`).
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    /// TCP MD5 signature.
    pub password: Option<String>,
    pub bfd: bool,
}

/// `[vip.bgp]`: attributes of the VIP address's route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAttributes {
    pub med: Option<u32>,
    /// Sent to internal (same AS) peers only, as BGP does.
    pub local_pref: Option<u32>,
    pub communities: Vec<Community>,
}

/// A standard (`ASN:VALUE`, 16 bits each) or large (`ASN:DATA1:DATA2`, 32 bits each) community.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Community {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "{a}:{b}"),
            Community::Large(a, b, c) => write!(f, "{a}:{b}:{c}"),
        }
    }
}

impl std::str::FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("\"{s}\" is not a community; write ASN:VALUE (16 bits each) or ASN:DATA1:DATA2 (large)");
        match parts[..] {
            [a, b] => Ok(Community::Standard(a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
            [a, b, c] => Ok(Community::Large(
                a.parse().map_err(|_| bad())?,
                b.parse().map_err(|_| bad())?,
                c.parse().map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }
}

impl Bgp {
    /// BIRD's name of `peer`'s BGP protocol on the balancer of `instance`.
    pub fn protocol_name(instance: &str, peer: &str) -> String {
        symbol(&format!("lb_{instance}_{peer}"))
    }
}

/// A name as a BIRD symbol: letters, digits and underscores.
pub fn symbol(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn asn(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(0) | Err(_) => Err(format!("{n} is not an AS number; use 1..=4294967295")),
        Ok(23456) => Err("23456 is AS_TRANS, which no speaker may use as its own; use your AS number".into()),
        Ok(a) => Ok(a),
    }
}

/// Communities in order, each once (so that two lists of the same communities compare equal).
fn communities(list: &[Spanned<String>]) -> Result<Vec<Community>, String> {
    let mut parsed = list.iter().map(|c| c.get_ref().parse()).collect::<Result<Vec<Community>, String>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// An absolute path of letters, digits and `/._-`: it is written into BIRD's configuration (as
/// a comment that `lb detach` reads), where anything else could end the comment.
fn socket_path(s: &str) -> Result<PathBuf, String> {
    let safe = s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
    if !s.starts_with('/') || !safe {
        return Err(format!("\"{}\" is not an absolute path of letters, digits and /._-", s.escape_default()));
    }
    Ok(PathBuf::from(s))
}

/// Suffixes of the names the agent gives BIRD's other protocols and filters
/// (`lb_INSTANCE_bfd`, ...), which a peer's protocol must not take.
const RESERVED_PEER_NAMES: [&str; 5] = ["bfd", "vips4", "vips6", "export4", "export6"];

impl Validator<'_> {
    pub(super) fn bgp(&mut self, raw: &raw::Bgp, instance: &str) -> Option<Bgp> {
        let local_asn = self.check(&raw.local_asn, "bgp.local_asn", |n| asn(*n));
        let router_id = self.optional(&raw.router_id, "bgp.router_id", None, |s| {
            s.parse::<Ipv4Addr>()
                .map(Some)
                .map_err(|_| format!("\"{s}\" is not a router id; write it as an IPv4 address"))
        });
        let bird_socket =
            self.optional(&raw.bird_socket, "bgp.bird_socket", PathBuf::from(DEFAULT_BIRD_SOCKET), |s| socket_path(s));
        let next_hop_v4 = self.optional(&raw.next_hop_v4, "bgp.next_hop_v4", None, |s| match s.parse::<IpAddr>() {
            Ok(a @ IpAddr::V4(_)) => Ok(Some(a)),
            _ => Err(format!("\"{s}\" is not an IPv4 address")),
        });
        let next_hop_v6 = self.optional(&raw.next_hop_v6, "bgp.next_hop_v6", None, |s| match s.parse::<IpAddr>() {
            Ok(a @ IpAddr::V6(_)) => Ok(Some(a)),
            _ => Err(format!("\"{s}\" is not an IPv6 address")),
        });
        let communities = self.optional(&raw.communities, "bgp.communities", Vec::new(), |c| communities(c));
        let drain_grace =
            self.ranged(&raw.drain_grace_secs, "bgp.drain_grace_secs", DRAIN_GRACE_SECS, DEFAULT_DRAIN_GRACE_SECS);
        let hold_time = self.ranged(&raw.hold_time_secs, "bgp.hold_time_secs", HOLD_TIME_SECS, DEFAULT_HOLD_TIME_SECS);
        let bfd_interval =
            self.ranged(&raw.bfd_interval_ms, "bgp.bfd_interval_ms", BFD_INTERVAL_MS, DEFAULT_BFD_INTERVAL_MS);
        let bfd_multiplier =
            self.ranged(&raw.bfd_multiplier, "bgp.bfd_multiplier", BFD_MULTIPLIER, DEFAULT_BFD_MULTIPLIER);
        let mut peers = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut addresses: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (i, p) in raw.peer.iter().enumerate() {
            let field = format!("bgp.peer[{i}]");
            let Some(peer) = self.peer(p.get_ref(), &field, instance) else { continue };
            if let Some(first) = addresses.insert(peer.address, i) {
                self.problem(
                    p.get_ref().address.span(),
                    &format!("{field}.address"),
                    format!("bgp.peer[{first}] already has address {}", peer.address),
                );
            }
            if let Some(first) = seen.insert(peer.name.clone(), i) {
                self.problem(
                    p.span(),
                    &format!("{field}.name"),
                    format!("bgp.peer[{first}] is already named \"{}\"; give each peer its own name", peer.name),
                );
            }
            peers.push(peer);
        }
        Some(Bgp {
            local_asn: local_asn?,
            router_id: router_id?,
            bird_socket: bird_socket?,
            next_hop_v4: next_hop_v4?,
            next_hop_v6: next_hop_v6?,
            communities: communities?,
            drain_grace: Duration::from_secs(drain_grace? as u64),
            hold_time_secs: hold_time? as u16,
            bfd_interval: Duration::from_millis(bfd_interval? as u64),
            bfd_multiplier: bfd_multiplier? as u8,
            peers,
        })
    }

    fn peer(&mut self, raw: &raw::Peer, field: &str, instance: &str) -> Option<Peer> {
        let address = self.check(&raw.address, &format!("{field}.address"), |s| {
            let address = super::validate::address(s)?;
            match address {
                IpAddr::V6(a) if a.is_unicast_link_local() => Err(format!(
                    "{a} is link-local, which BIRD peers with only through a named interface; use the router's \
                     global or unique local address"
                )),
                _ => Ok(address),
            }
        });
        let asn = self.check(&raw.asn, &format!("{field}.asn"), |n| asn(*n));
        let default_name = symbol(raw.address.get_ref());
        let name = self.optional(&raw.name, &format!("{field}.name"), default_name.clone(), |s| {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Err(format!("\"{s}\" is not a peer name; use letters, digits and '_'"))
            } else if RESERVED_PEER_NAMES.contains(&s.as_str()) {
                Err(format!("\"{s}\" names one of the agent's own BIRD protocols; choose another peer name"))
            } else {
                Ok(s.clone())
            }
        })?;
        let protocol = Bgp::protocol_name(instance, &name);
        if protocol.len() > MAX_PROTOCOL_NAME_LEN {
            let span = raw.name.as_ref().map_or(raw.address.span(), Spanned::span);
            self.problem(
                span,
                &format!("{field}.name"),
                format!("the peer's protocol name {protocol} is longer than BIRD's {MAX_PROTOCOL_NAME_LEN} characters; give the peer a shorter `name`"),
            );
        }
        let password = self.optional(&raw.password, &format!("{field}.password"), None, |s| {
            let printable = s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
            if printable && !s.is_empty() && s.len() <= MAX_PASSWORD_LEN {
                Ok(Some(s.clone()))
            } else {
                Err(format!(
                    "is not a usable TCP MD5 password: use 1 to {MAX_PASSWORD_LEN} printable ASCII characters \
                     without spaces, '\"' or '\\'"
                ))
            }
        });
        let bfd = raw.bfd.as_ref().is_none_or(|b| *b.get_ref());
        Some(Peer { name, address: address?, asn: asn?, password: password?, bfd })
    }

    pub(super) fn route_attributes(&mut self, raw: &raw::VipBgp, field: &str) -> Option<RouteAttributes> {
        let med = self.optional(&raw.med, &format!("{field}.med"), None, |n| {
            u32::try_from(*n).map(Some).map_err(|_| format!("{n} is out of range 0..=4294967295"))
        });
        let local_pref = self.optional(&raw.local_pref, &format!("{field}.local_pref"), None, |n| {
            u32::try_from(*n).map(Some).map_err(|_| format!("{n} is out of range 0..=4294967295"))
        });
        let communities =
            self.optional(&raw.communities, &format!("{field}.communities"), Vec::new(), |c| communities(c));
        Some(RouteAttributes { med: med?, local_pref: local_pref?, communities: communities? })
    }

    /// Every VIP address can be announced (a peer of its family), and the VIPs that share an
    /// address (one route) agree on its attributes.
    pub(super) fn announcements(&mut self, file: &raw::File, bgp: &Bgp, vips: &[super::Vip]) {
        let Some(raw_bgp) = &file.bgp else { return };
        for family_v6 in [false, true] {
            let peered = bgp.peers.iter().any(|p| p.address.is_ipv6() == family_v6);
            if let Some(vip) = vips.iter().find(|v| v.address.is_ipv6() == family_v6)
                && !peered
            {
                let family = if family_v6 { "IPv6" } else { "IPv4" };
                self.problem(
                    raw_bgp.span(),
                    "bgp.peer",
                    format!(
                        "VIP {} ({}) is {family}, but no [[bgp.peer]] has an {family} address to announce it to; \
                         add one (each family has its own sessions)",
                        vip.name, vip.address
                    ),
                );
            }
        }
        let mut first: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (i, vip) in vips.iter().enumerate() {
            if let Some(&j) = first.get(&vip.address) {
                if vip.route != vips[j].route {
                    let span =
                        file.vip.get(i).map_or(0..0, |v| v.get_ref().bgp.as_ref().map_or(v.span(), Spanned::span));
                    self.problem(
                        span,
                        &format!("vip[{i}].bgp"),
                        format!(
                            "VIP {} shares address {} (one route) with VIP {}, whose [vip.bgp] differs; give them the same",
                            vip.name, vip.address, vips[j].name
                        ),
                    );
                }
            } else {
                first.insert(vip.address, i);
            }
        }
    }
}
