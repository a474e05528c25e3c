//! Active flows per backend, as least connections compares them.
//!
//! The data plane keeps the counts itself (`lb_common::flow::stage`): +1 when a flow becomes
//! active (a TCP client acknowledges the handshake, a UDP flow sends its first datagram), -1 when
//! the client sends FIN or RST or the entry is replaced. It cannot see flows that just stop (a
//! UDP flow falling silent, a TCP connection the server resets: under direct server return the
//! server's packets bypass the balancer) nor entries a full flow table evicts. So the agent
//! recounts now and then from the flow table itself: a flow counts while its entry is active
//! and it sent a packet within its protocol's idle timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use lb_common::{
    flow::{FlowKey, FlowState, stage},
    vip::VipKey,
};

use crate::dataplane::{BalancerMaps, DataplaneError};

/// How often the agent recounts.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(5);
/// Largest share of the agent's time recounts may take: a recount that took `t` is followed by
/// none for `t / RECOUNT_DUTY`. Reading the flow table costs about 440 ns per entry (`cargo xtask
/// bench`), so a table of a million entries is recounted every 10 s rather than every 5 s.
pub const RECOUNT_DUTY: f64 = 0.05;

const IPPROTO_UDP: u8 = 17;

/// Idle times after which a flow stops counting.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeouts {
    pub tcp_ns: u64,
    pub udp_ns: u64,
}

/// Whether the flow-table entry `state` of `key` counts as an active flow at `now_ns`. `timed`:
/// whether the data plane keeps the flow's packet times (UDP flows, TCP flows of
/// least-connections VIPs); other TCP flows count until their client ends them or the entry goes.
pub fn counts(key: &FlowKey, state: &FlowState, now_ns: u64, idle: IdleTimeouts, timed: bool) -> bool {
    if state.stage != stage::ACTIVE {
        return false;
    }
    let limit = if key.protocol == IPPROTO_UDP { idle.udp_ns } else { idle.tcp_ns };
    !timed || now_ns.saturating_sub(state.last_seen_ns) <= limit
}

/// Recounts every backend's active flows from the flow table and writes the counts of the
/// backend ids `assigned` (ids not in it are left alone: they are zeroed when cleared).
/// `least_connections`: the VIPs whose TCP flows have packet times. Returns the entries seen.
pub fn recount(
    maps: &mut BalancerMaps,
    assigned: impl IntoIterator<Item = u32>,
    least_connections: &BTreeSet<VipKey>,
    idle: IdleTimeouts,
) -> Result<u64, DataplaneError> {
    let now = monotonic_coarse_ns();
    let mut per_backend: BTreeMap<u32, i64> = BTreeMap::new();
    let mut entries = 0;
    maps.for_each_flow(|key, state| {
        entries += 1;
        let timed = key.protocol == IPPROTO_UDP || {
            let mut vip = VipKey {
                addr: key.dst_addr,
                port: key.dst_port,
                protocol: key.protocol,
                family: key.family,
                _pad: [0; 4],
            };
            least_connections.contains(&vip) || {
                vip.port = [0; 2];
                least_connections.contains(&vip)
            }
        };
        if counts(key, state, now, idle, timed) {
            *per_backend.entry(state.backend).or_default() += 1;
        }
    })?;
    for id in assigned {
        maps.set_active_flows(id, per_backend.get(&id).copied().unwrap_or(0))?;
    }
    Ok(entries)
}

/// The clock of the data plane's flow times (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::family;

    use super::*;

    #[test]
    fn active_entries_count_until_idle_past_their_protocols_timeout() {
        let idle = IdleTimeouts { tcp_ns: 900_000_000_000, udp_ns: 30_000_000_000 };
        let tcp = FlowKey::new(family::IPV4, 6, [1; 16], 1000, [2; 16], 80);
        let udp = FlowKey::new(family::IPV4, IPPROTO_UDP, [1; 16], 1000, [2; 16], 53);
        let now = 1_000_000_000_000;
        let seen = |ago_s: u64, s: u8| FlowState::new(3, 0, now - ago_s * 1_000_000_000, s);
        assert!(counts(&tcp, &seen(10, stage::ACTIVE), now, idle, true));
        assert!(counts(&tcp, &seen(899, stage::ACTIVE), now, idle, true));
        assert!(!counts(&tcp, &seen(901, stage::ACTIVE), now, idle, true));
        assert!(counts(&tcp, &seen(901, stage::ACTIVE), now, idle, false), "untimed TCP counts until it ends");
        assert!(!counts(&tcp, &seen(1, stage::OPENING), now, idle, true), "a SYN alone is not an active flow");
        assert!(!counts(&tcp, &seen(1, stage::ENDED), now, idle, false));
        assert!(counts(&udp, &seen(29, stage::ACTIVE), now, idle, true));
        assert!(!counts(&udp, &seen(31, stage::ACTIVE), now, idle, true));
        // An entry touched after `now` was read (another CPU) is not idle.
        assert!(counts(&udp, &FlowState::new(3, 0, now + 5, stage::ACTIVE), now, idle, true));
    }
}
