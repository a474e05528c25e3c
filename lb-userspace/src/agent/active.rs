//! Active flows per backend, as least connections compares them.
//!
//! The data plane keeps the counts itself (`lb_common::flow::stage`): +1 when a flow becomes
//! active (a TCP flow's second packet, a UDP flow's first datagram), -1 when the client sends FIN
//! or RST or the entry is replaced. It cannot see flows that just stop (a UDP flow falling
//! silent, a TCP connection the server resets: under direct server return the server's packets
//! bypass the balancer) nor entries a full flow table evicts. So the agent recounts now and then
//! from the flow table itself, in a thread of its own (reading a large table takes a while and
//! must not hold up health checks or live changes): a flow counts while its entry is active, its
//! backend id still belongs to its VIP, and it sent a packet within its protocol's idle timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lb_common::{
    flow::{FlowKey, FlowState, stage},
    vip::{VipKey, find_vip, scheduler},
};

use crate::{
    config::Instance,
    dataplane::{BalancerMaps, DataplaneError, PinDir, monotonic_coarse_ns},
    reconcile::Current,
};

/// How often the agent recounts.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(5);
/// Largest share of a CPU recounts may take: a recount that took `t` is followed by none for
/// `t / RECOUNT_DUTY`. Reading and counting the flow table costs 500 to 700 ns per entry (`cargo
/// xtask bench`), so a table of a million entries is recounted every 10 to 14 s, not every 5 s.
pub const RECOUNT_DUTY: f64 = 0.05;

const IPPROTO_UDP: u8 = 17;

/// Idle times after which a flow stops counting.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleTimeouts {
    pub tcp_ns: u64,
    pub udp_ns: u64,
}

impl IdleTimeouts {
    pub fn of(instance: &Instance) -> Self {
        Self {
            tcp_ns: u64::from(instance.tcp_idle_timeout_secs) * 1_000_000_000,
            udp_ns: u64::from(instance.udp_idle_timeout_secs) * 1_000_000_000,
        }
    }
}

/// What a recount needs of the maps' contents, taken from the agent's copy after each change.
#[derive(Debug, Clone, Default)]
pub struct RecountPlan {
    /// VIP -> (its index, whether its TCP flows have packet times: least connections).
    pub vips: BTreeMap<VipKey, (u32, bool)>,
    /// Assigned backend id -> the index of its VIP, and its flows' UDP idle timeout in ns (the
    /// VIP's own, else the instance's: `Backend::udp_idle_timeout_ns`, as the data plane reads it).
    pub backends: BTreeMap<u32, (u32, u64)>,
    pub idle: IdleTimeouts,
}

impl RecountPlan {
    pub fn new(current: &Current, idle: IdleTimeouts) -> Self {
        Self {
            vips: current
                .vips
                .iter()
                .map(|(key, v)| (*key, (v.index, v.scheduling.scheduler == scheduler::LEAST_CONNECTIONS)))
                .collect(),
            backends: current
                .backends
                .iter()
                .map(|(id, b)| (*id, (u32::from(b.vip_index), b.udp_idle_timeout_ns(idle.udp_ns))))
                .collect(),
            idle,
        }
    }

    /// The backend id an entry counts for, if it counts as an active flow at `now_ns`.
    pub fn counts_for(&self, key: &FlowKey, state: &FlowState, now_ns: u64) -> Option<u32> {
        if state.stage != stage::ACTIVE {
            return None;
        }
        let (index, least_connections) = find_vip(key, |vip| self.vips.get(vip).copied())?;
        // An id freed and given to another VIP's backend: the data plane reschedules the flow.
        let id = u32::from(state.backend);
        let &(backend_vip, udp_ns) = self.backends.get(&id)?;
        if backend_vip != index {
            return None;
        }
        // UDP flows always have packet times; TCP flows only on least-connections VIPs, the
        // others count until their client ends them or the entry goes.
        let (timed, limit) =
            if key.protocol == IPPROTO_UDP { (true, udp_ns) } else { (least_connections, self.idle.tcp_ns) };
        (!timed || state.idle_ns(now_ns) <= limit).then_some(id)
    }
}

/// Recounts every assigned backend's active flows from the flow table and writes them, plus
/// what the data plane added or took off while the table was read. Returns the entries read.
pub fn recount(maps: &mut BalancerMaps, plan: &RecountPlan) -> Result<u64, DataplaneError> {
    let mut before = BTreeMap::new();
    for &id in plan.backends.keys() {
        before.insert(id, maps.active_flows(id)?);
    }
    let now = monotonic_coarse_ns();
    let mut counted: BTreeMap<u32, i64> = BTreeMap::new();
    let mut entries = 0;
    maps.for_each_flow(|key, state| {
        entries += 1;
        if let Some(id) = plan.counts_for(key, state, now) {
            *counted.entry(id).or_default() += 1;
        }
    })?;
    for (&id, &was) in &before {
        let meanwhile = maps.active_flows(id)? - was;
        maps.set_active_flows(id, counted.get(&id).copied().unwrap_or(0) + meanwhile)?;
    }
    Ok(entries)
}

/// Starts the recount thread on the maps pinned in `pins`, with the latest `plan`.
pub fn spawn(pins: PinDir, plan: Arc<Mutex<RecountPlan>>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("recount".into()).spawn(move || {
        let mut maps = None;
        loop {
            let started = Instant::now();
            if maps.is_none() {
                maps = BalancerMaps::open_pinned(&pins)
                    .inspect_err(|e| tracing::error!("recount: opening the pinned maps: {e}"))
                    .ok();
            }
            if let Some(m) = maps.as_mut() {
                let plan = plan.lock().map(|p| p.clone()).unwrap_or_default();
                match recount(m, &plan) {
                    Ok(entries) => tracing::debug!(entries, took = ?started.elapsed(), "recounted active flows"),
                    Err(e) => tracing::error!("recounting active flows failed: {e}"),
                }
            }
            std::thread::sleep(RECOUNT_EVERY.max(started.elapsed().mul_f64(1.0 / RECOUNT_DUTY)));
        }
    })
}

#[cfg(test)]
mod tests {
    use lb_common::{family, flow::FLOW_TRACKS_TIME};

    use super::*;

    fn key(protocol: u8, port: u16) -> FlowKey {
        FlowKey::new(family::IPV4, protocol, [1; 16], 1000, [2; 16], port)
    }

    fn vip(protocol: u8, port: u16) -> VipKey {
        VipKey::new(family::IPV4, [2; 16], port, protocol)
    }

    /// The instance's UDP idle timeout in the tests' plan.
    const UDP_NS: u64 = 30_000_000_000;

    fn plan() -> RecountPlan {
        RecountPlan {
            // VIP 0: TCP port 80, least connections; VIP 1: UDP port 53; VIP 2: every TCP port;
            // VIP 3: UDP port 7777, with its own idle timeout of an hour.
            vips: [
                (vip(6, 80), (0, true)),
                (vip(IPPROTO_UDP, 53), (1, false)),
                (vip(6, 0), (2, false)),
                (vip(IPPROTO_UDP, 7777), (3, false)),
            ]
            .into(),
            // Backend 3 serves VIP 0, 4 VIP 1, 5 VIP 2, 6 VIP 3.
            backends: [(3, (0, UDP_NS)), (4, (1, UDP_NS)), (5, (2, UDP_NS)), (6, (3, 3_600_000_000_000))].into(),
            idle: IdleTimeouts { tcp_ns: 900_000_000_000, udp_ns: UDP_NS },
        }
    }

    const NOW: u64 = 10_000_000_000_000;

    fn seen(backend: u16, ago_s: u64, s: u8) -> FlowState {
        FlowState::new(backend, 0, NOW - ago_s * 1_000_000_000, s, FLOW_TRACKS_TIME, 0)
    }

    #[test]
    fn active_entries_count_until_idle_past_their_protocols_timeout() {
        let p = plan();
        let (tcp, udp) = (key(6, 80), key(IPPROTO_UDP, 53));
        assert_eq!(p.counts_for(&tcp, &seen(3, 10, stage::ACTIVE), NOW), Some(3));
        assert_eq!(p.counts_for(&tcp, &seen(3, 899, stage::ACTIVE), NOW), Some(3));
        assert_eq!(p.counts_for(&tcp, &seen(3, 901, stage::ACTIVE), NOW), None);
        assert_eq!(p.counts_for(&tcp, &seen(3, 1, stage::OPENING), NOW), None, "one packet is no active flow");
        assert_eq!(p.counts_for(&tcp, &seen(3, 1, stage::ENDED), NOW), None);
        assert_eq!(p.counts_for(&udp, &seen(4, 29, stage::ACTIVE), NOW), Some(4));
        assert_eq!(p.counts_for(&udp, &seen(4, 31, stage::ACTIVE), NOW), None);
        // A VIP's own timeout replaces the instance's.
        let long = key(IPPROTO_UDP, 7777);
        assert_eq!(p.counts_for(&long, &seen(6, 3599, stage::ACTIVE), NOW), Some(6));
        assert_eq!(p.counts_for(&long, &seen(6, 3601, stage::ACTIVE), NOW), None);
        // An entry touched after `now` was read (another CPU) is not idle.
        assert_eq!(
            p.counts_for(&udp, &FlowState::new(4, 0, NOW + 5, stage::ACTIVE, FLOW_TRACKS_TIME, 0), NOW),
            Some(4)
        );
    }

    #[test]
    fn entries_are_matched_to_their_vip_as_the_data_plane_does() {
        let p = plan();
        // TCP port 81 falls to the all-ports VIP 2, which keeps no TCP packet times: no idle limit.
        assert_eq!(p.counts_for(&key(6, 81), &seen(5, 5000, stage::ACTIVE), NOW), Some(5));
        // Port 80 has its own VIP, whose TCP flows do go idle.
        assert_eq!(p.counts_for(&key(6, 80), &seen(3, 5000, stage::ACTIVE), NOW), None);
        // A backend id now serving another VIP: the entry is stale.
        assert_eq!(p.counts_for(&key(6, 81), &seen(3, 1, stage::ACTIVE), NOW), None);
        // No VIP at all (removed): not counted.
        assert_eq!(p.counts_for(&key(IPPROTO_UDP, 54), &seen(4, 1, stage::ACTIVE), NOW), None);
    }
}
