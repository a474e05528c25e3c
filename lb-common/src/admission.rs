//! Admission: which packets to a VIP are served at all. Decided before the flow table takes a new
//! flow, so refused traffic never evicts anyone's entry. The data plane's stages, in order:
//!
//! 1. Source lists, per VIP ([`SourceListKey`], an LPM trie): the longest listed prefix that holds
//!    the client's address allows or denies it; an address no prefix holds gets the VIP's
//!    [`AdmissionPolicy::unlisted`] verdict (deny once the VIP has an allow list). Every packet,
//!    established flows' too, so a deny entry cuts an attacker's open flows at once.
//! 2. Anti-spoofing ([`is_spoofed_source`], and any VIP address as a source), for new flows: a
//!    source no client can have.
//! 3. Per-source rates, per VIP: token buckets ([`Gcra`]) per client prefix (a /32, a /64, as
//!    configured) for packets (every packet) and for new flows, kept in a bounded LRU map, so a
//!    random-source flood recycles buckets instead of growing them.
//! 4. The VIP's new-flow budget (flood mode, [`crate::flood`]): past it, new flows are forwarded
//!    without a flow-table entry.
//!
//! Each refusal is counted under its own [`crate::counters::Reason`] and in the VIP's traffic.

use crate::{assert_layout, capacity::MAX_VIPS, counters::Reason, dataplane::DataplaneConfig, family, userspace_pod};

/// The reasons admission refuses a packet for, each counted per VIP too (the balancer's
/// `REFUSALS` counters, at [`refusal_slot`]), so an operator sees which VIP is under attack.
pub const REFUSALS: [Reason; 4] =
    [Reason::DropSourceDenied, Reason::DropSpoofedSource, Reason::DropSourcePacketRate, Reason::DropSourceFlowRate];

/// Entries of the per-VIP refusal counters.
pub const REFUSAL_COUNTERS: u32 = MAX_VIPS * REFUSALS.len() as u32;

/// The counter of VIP `vip_index`'s refusals for `reason`, if admission refuses for it.
#[inline(always)]
pub fn refusal_slot(vip_index: u32, reason: Reason) -> Option<u32> {
    let stage = match reason {
        Reason::DropSourceDenied => 0,
        Reason::DropSpoofedSource => 1,
        Reason::DropSourcePacketRate => 2,
        Reason::DropSourceFlowRate => 3,
        _ => return None,
    };
    Some(vip_index * REFUSALS.len() as u32 + stage)
}

/// Which admission stages a VIP runs ([`crate::vip::VipInfo::admission`]); a VIP without any
/// pays for none.
pub mod checks {
    /// The VIP has source lists (or denies unlisted sources).
    pub const SOURCE_LISTS: u8 = 1;
    /// Per-source packet rate.
    pub const PACKET_RATE: u8 = 2;
    /// Per-source new-flow rate.
    pub const FLOW_RATE: u8 = 4;
    /// The stages that apply to packets of established flows too: their backend record carries
    /// these ([`crate::backend::Backend::admission`]), as their packets take no VIP lookup.
    pub const ESTABLISHED: u8 = SOURCE_LISTS | PACKET_RATE;
}

/// A source list's verdict (the value of a [`SourceListKey`] entry, and
/// [`AdmissionPolicy::unlisted`]).
pub mod verdict {
    /// The source is served.
    pub const ALLOW: u32 = 1;
    /// The source's packets are dropped.
    pub const DENY: u32 = 2;
}

/// A rate limit as the generic cell rate algorithm keeps it: one time per bucket (the
/// theoretical arrival time, TAT) instead of a token count, so the data plane needs no division.
/// A packet at `now` conforms while the TAT is at most `tolerance_ns` ahead of `now`; each
/// conforming packet moves the TAT `interval_ns` on. This is a token bucket of `rate` tokens per
/// second holding `burst` tokens.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gcra {
    /// Nanoseconds per token; 0: no limit.
    pub interval_ns: u64,
    /// `(burst - 1) * interval_ns`, at least [`CLOCK_TICK_NS`]: how far ahead of the clock the TAT
    /// may run.
    pub tolerance_ns: u64,
}
assert_layout!(Gcra, size = 16, interval_ns = 0, tolerance_ns = 8);

/// Highest rate a [`Gcra`] can express: one token per nanosecond.
pub const MAX_RATE_PER_SECOND: u64 = 1_000_000_000;

/// The data plane reads the coarse clock for rate buckets (30 ns a packet cheaper than the
/// precise one, `cargo xtask bench`), which moves a jiffy at a time: 10 ms at the lowest tick
/// rate Linux builds with (HZ=100). A bucket's tolerance is at least that, or a limit would
/// admit no more than its burst per tick: a burst is at least what the rate allows in 10 ms.
pub const CLOCK_TICK_NS: u64 = 10_000_000;

impl Gcra {
    /// `per_second` tokens per second (at most [`MAX_RATE_PER_SECOND`]; 0: no limit), `burst`
    /// tokens at once (at least 1).
    pub const fn new(per_second: u64, burst: u64) -> Self {
        if per_second == 0 {
            return Self { interval_ns: 0, tolerance_ns: 0 };
        }
        let interval_ns = 1_000_000_000 / per_second;
        let burst = if burst == 0 { 1 } else { burst };
        let tolerance_ns = (burst - 1) * interval_ns;
        Self { interval_ns, tolerance_ns: if tolerance_ns < CLOCK_TICK_NS { CLOCK_TICK_NS } else { tolerance_ns } }
    }

    /// Whether the limit is on (a non-zero rate).
    #[inline(always)]
    pub const fn is_limited(&self) -> bool {
        self.interval_ns != 0
    }

    /// Whether a packet at `now` conforms to the limit of a bucket at `tat`; takes its token if so.
    #[inline(always)]
    pub fn admit(&self, tat: &mut u64, now: u64) -> bool {
        let from = if *tat > now { *tat } else { now };
        if from - now > self.tolerance_ns {
            return false;
        }
        *tat = from + self.interval_ns;
        true
    }
}

/// A VIP's admission settings (the balancer's `ADMISSION` array, by VIP index).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AdmissionPolicy {
    /// Packets per source prefix.
    pub packet_rate: Gcra,
    /// New flows per source prefix.
    pub flow_rate: Gcra,
    /// The mask that cuts an IPv4 client address to its rate bucket's prefix. Masks rather than
    /// prefix lengths: the data plane masks without a branch.
    pub source_mask_v4: [u8; 4],
    /// The [`verdict`] of a source that no list prefix holds.
    pub unlisted: u32,
    /// The stages this VIP runs ([`checks`]).
    pub checks: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 7],
    /// The mask that cuts an IPv6 client address to its rate bucket's prefix.
    pub source_mask_v6: [u8; 16],
}
assert_layout!(
    AdmissionPolicy,
    size = 64,
    packet_rate = 0,
    flow_rate = 16,
    source_mask_v4 = 32,
    unlisted = 36,
    checks = 40,
    _pad = 41,
    source_mask_v6 = 48
);

impl AdmissionPolicy {
    /// A policy with the given limits and list default, with rate buckets per IPv4 /
    /// `source_prefix_v4` and IPv6 / `source_prefix_v6`; its [`checks`] follow from them and from
    /// whether the VIP has list entries (`listed`).
    pub fn new(
        packet_rate: Gcra,
        flow_rate: Gcra,
        unlisted: u32,
        listed: bool,
        source_prefix_v4: u8,
        source_prefix_v6: u8,
    ) -> Self {
        let mut checks = 0;
        if listed || unlisted == verdict::DENY {
            checks |= checks::SOURCE_LISTS;
        }
        if packet_rate.is_limited() {
            checks |= checks::PACKET_RATE;
        }
        if flow_rate.is_limited() {
            checks |= checks::FLOW_RATE;
        }
        let v4 = masked([0xff; 16], source_prefix_v4.min(32));
        Self {
            packet_rate,
            flow_rate,
            source_mask_v4: [v4[0], v4[1], v4[2], v4[3]],
            unlisted,
            checks,
            _pad: [0; 7],
            source_mask_v6: masked([0xff; 16], source_prefix_v6),
        }
    }

    /// Cuts a `family` client address to its rate bucket's prefix, in place (IPv4 addresses
    /// keep their zeros past the first 4 bytes).
    #[inline(always)]
    pub fn cut_to_source_prefix(&self, family: u8, addr: &mut [u8; 16]) {
        let mut i = 0;
        if family == family::IPV4 {
            while i < 4 {
                addr[i] &= self.source_mask_v4[i];
                i += 1;
            }
        } else {
            while i < 16 {
                addr[i] &= self.source_mask_v6[i];
                i += 1;
            }
        }
    }
}

/// The data of a source-list key (an LPM trie key is a prefix length and this): the VIP index
/// and family, which every lookup matches whole ([`SOURCE_LIST_FIXED_BITS`]), then the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceListKey {
    /// Big-endian, as the trie matches bytes from the first one on.
    pub vip_index: [u8; 4],
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Client address (prefix), network byte order, IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}
assert_layout!(SourceListKey, size = 21, vip_index = 0, family = 4, addr = 5);

/// Bits of a [`SourceListKey`] before the address.
pub const SOURCE_LIST_FIXED_BITS: u32 = 40;

impl SourceListKey {
    /// The key of `addr` (of `family`) in the source lists of the VIP with index `vip_index`.
    #[inline(always)]
    pub const fn new(vip_index: u32, family: u8, addr: [u8; 16]) -> Self {
        Self { vip_index: vip_index.to_be_bytes(), family, addr }
    }
}

/// Key of a per-source rate bucket: the VIP and the client's address cut to the VIP's bucket
/// prefix ([`masked`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceBucketKey {
    /// Client address, network byte order, cut to the VIP's bucket prefix
    /// ([`AdmissionPolicy::cut_to_source_prefix`]).
    pub addr: [u8; 16],
    /// Index of the VIP whose limits the bucket counts against.
    pub vip_index: u16,
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero: it is part of the key the map compares.
    pub _pad: [u8; 5],
}
assert_layout!(SourceBucketKey, size = 24, addr = 0, vip_index = 16, family = 18, _pad = 19);

impl SourceBucketKey {
    /// The key of `addr`'s bucket for VIP index `vip_index`; the caller cuts `addr` to the prefix.
    #[inline(always)]
    pub const fn new(vip_index: u16, family: u8, addr: [u8; 16]) -> Self {
        Self { addr, vip_index, family, _pad: [0; 5] }
    }
}

/// A client prefix's rate buckets for one VIP: the [`Gcra`] arrival times.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceBucket {
    /// The packet-rate bucket's TAT ([`AdmissionPolicy::packet_rate`]), in coarse-clock ns.
    pub packets_tat: u64,
    /// The new-flow-rate bucket's TAT ([`AdmissionPolicy::flow_rate`]), in coarse-clock ns.
    pub flows_tat: u64,
}
assert_layout!(SourceBucket, size = 16, packets_tat = 0, flows_tat = 8);
userspace_pod!(AdmissionPolicy, SourceListKey, SourceBucketKey, SourceBucket);

/// `addr` with every bit past the first `prefix_len` cleared.
#[inline(always)]
pub fn masked(addr: [u8; 16], prefix_len: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = (prefix_len as usize).saturating_sub(8 * i).min(8);
        out[i] = if bits == 0 { 0 } else { addr[i] & (0xff << (8 - bits)) };
        i += 1;
    }
    out
}

/// Whether `addr` (of `family`) cannot be a client's address: unspecified, loopback, multicast,
/// IPv4 broadcast and reserved (240/4), IPv4-mapped IPv6, or one of this balancer's own
/// encapsulation source prefixes (`config`). A VIP address is refused too, by the caller, which
/// knows them.
#[inline(always)]
pub fn is_spoofed_source(family: u8, addr: &[u8; 16], config: &DataplaneConfig) -> bool {
    if family == family::IPV4 {
        let first = addr[0];
        // 0/8 "this network", 127/8 loopback, 224/4 multicast, 240/4 reserved and broadcast.
        if first == 0 || first == 127 || first >= 224 {
            return true;
        }
        let word = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        return in_encap_prefix(word, u32::from_be_bytes(config.encap_src_v4), config.encap_src_v4_host_bits);
    }
    let high = u64::from_be_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
    let low = u64::from_be_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]);
    // :: unspecified, ::1 loopback, ::ffff:0:0/96 IPv4-mapped, ff00::/8 multicast.
    if (high == 0 && (low <= 1 || low >> 32 == 0xffff)) || addr[0] == 0xff {
        return true;
    }
    let p = config.encap_src_v6;
    let prefix_high = u64::from_be_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
    let prefix_low = u64::from_be_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
    // Only the last word has host bits (at most 32).
    let host: u64 =
        if config.encap_src_v6_host_bits >= 32 { 0xffff_ffff } else { (1u64 << config.encap_src_v6_host_bits) - 1 };
    high == prefix_high && (low ^ prefix_low) & !host == 0
}

/// Whether the last address word `word` is in an encapsulation prefix whose last word is
/// `prefix` with `host_bits` host bits.
#[inline(always)]
const fn in_encap_prefix(word: u32, prefix: u32, host_bits: u8) -> bool {
    let host: u32 = if host_bits >= 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
    (word ^ prefix) & !host == 0
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn refusal_slots_follow_the_list() {
        for (stage, reason) in REFUSALS.iter().enumerate() {
            assert_eq!(refusal_slot(3, *reason), Some(3 * 4 + stage as u32));
        }
        assert_eq!(refusal_slot(0, Reason::DropNoBackend), None);
        assert_eq!(refusal_slot(MAX_VIPS - 1, Reason::DropSourceFlowRate), Some(REFUSAL_COUNTERS - 1));
    }

    #[test]
    fn gcra_admits_a_burst_then_the_rate() {
        // 10 per second, bursts of 3: three at once, then one each 100 ms.
        let limit = Gcra::new(10, 3);
        let mut tat = 0;
        let t0 = 1_000_000_000;
        assert!((0..3).all(|_| limit.admit(&mut tat, t0)));
        assert!(!limit.admit(&mut tat, t0), "the burst is spent");
        assert!(!limit.admit(&mut tat, t0 + 99_000_000));
        assert!(limit.admit(&mut tat, t0 + 100_000_000));
        assert!(!limit.admit(&mut tat, t0 + 100_000_000));
        // A second idle refills the whole burst, no more.
        let later = t0 + 2_000_000_000;
        assert!((0..3).all(|_| limit.admit(&mut tat, later)));
        assert!(!limit.admit(&mut tat, later));
        // A refused packet takes no token.
        let mut tat = 0;
        let one = Gcra::new(1, 1);
        assert!(one.admit(&mut tat, t0));
        assert!(!one.admit(&mut tat, t0 + 500_000_000));
        assert!(one.admit(&mut tat, t0 + 1_000_000_000));
    }

    #[test]
    fn unlimited_gcra_is_off() {
        assert!(!Gcra::new(0, 5).is_limited());
        assert_eq!(Gcra::new(MAX_RATE_PER_SECOND, 1), Gcra { interval_ns: 1, tolerance_ns: CLOCK_TICK_NS });
        // A burst below a clock tick's worth is a tick's worth: 10,000/s for 10 ms is 100.
        let fast = Gcra::new(10_000, 5);
        let (mut tat, t0) = (0, 1_000_000_000);
        assert_eq!((0..200).filter(|_| fast.admit(&mut tat, t0)).count(), 101);
    }

    #[test]
    fn policy_checks_follow_its_settings() {
        let none = AdmissionPolicy::new(Gcra::default(), Gcra::default(), verdict::ALLOW, false, 32, 64);
        assert_eq!(none.checks, 0);
        let deny_unlisted = AdmissionPolicy::new(Gcra::default(), Gcra::default(), verdict::DENY, false, 32, 64);
        assert_eq!(deny_unlisted.checks, checks::SOURCE_LISTS);
        let all = AdmissionPolicy::new(Gcra::new(100, 10), Gcra::new(5, 1), verdict::ALLOW, true, 24, 48);
        assert_eq!(all.checks, checks::SOURCE_LISTS | checks::PACKET_RATE | checks::FLOW_RATE);
        let cut = |policy: &AdmissionPolicy, family: u8, mut addr: [u8; 16]| {
            policy.cut_to_source_prefix(family, &mut addr);
            addr
        };
        let a4 = [198, 18, 7, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(cut(&all, family::IPV4, a4)[..4], [198, 18, 7, 0]);
        let a6 = v6("fd00:1:2:3:4:5:6:7");
        assert_eq!(cut(&all, family::IPV6, a6), v6("fd00:1:2::"));
        assert_eq!(cut(&none, family::IPV6, a6), v6("fd00:1:2:3::"));
    }

    #[test]
    fn masked_keeps_the_prefix_only() {
        let a = [198, 18, 7, 255, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(masked(a, 0), [0; 16]);
        assert_eq!(masked(a, 24)[..4], [198, 18, 7, 0]);
        assert_eq!(masked(a, 28)[..4], [198, 18, 7, 0xf0]);
        assert_eq!(masked(a, 128), a);
        assert_eq!(masked(a, 64)[8..], [0; 8]);
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn spoofed_sources() {
        let config = DataplaneConfig {
            encap_src_v4: [198, 18, 200, 0],
            encap_src_v4_host_bits: 8,
            encap_src_v6: v6("fd00:200::"),
            encap_src_v6_host_bits: 16,
            ..DataplaneConfig::default()
        };
        for bad in
            [[0, 0, 0, 0], [0, 1, 2, 3], [127, 0, 0, 1], [224, 0, 0, 5], [239, 1, 1, 1], [255; 4], [198, 18, 200, 9]]
        {
            assert!(is_spoofed_source(family::IPV4, &v4(bad), &config), "{bad:?}");
        }
        for good in [[198, 18, 0, 10], [198, 18, 201, 1], [1, 1, 1, 1], [223, 255, 255, 255]] {
            assert!(!is_spoofed_source(family::IPV4, &v4(good), &config), "{good:?}");
        }
        for bad in ["::", "::1", "ff02::1", "::ffff:198.18.0.10", "fd00:200::2", "fd00:200::ffff"] {
            assert!(is_spoofed_source(family::IPV6, &v6(bad), &config), "{bad}");
        }
        for good in ["fd00::10", "fd00:200::1:2", "fd00:200::1:0:0", "2001:db8::1", "::2"] {
            assert!(!is_spoofed_source(family::IPV6, &v6(good), &config), "{good}");
        }
    }
}
