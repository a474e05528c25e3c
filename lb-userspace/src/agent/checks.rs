//! The agent's health checking: one probe per distinct (target, check), shared by every
//! (VIP, backend) pair that checks a backend the same way, and each outcome counted for those
//! pairs. A failed probe is not held against a backend while the interface towards it is down,
//! and makes the kernel learn the backend's MAC anew (a replaced host keeps its address).

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    time::Instant,
};

use tokio::task::JoinHandle;

use super::{
    Agent,
    health::{self, Outcome, Target},
};
use crate::{
    config::HealthCheck,
    reconcile::policy::{Health, HealthKey},
};

/// One running probe. VIPs that check a backend the same way share it (see
/// [`health::Target`]): 40 VIPs on the same 100 backends make 100 probes, not 4000, and
/// each outcome counts for every pair.
pub(super) struct Probe {
    target: Target,
    check: HealthCheck,
    pub(super) task: JoinHandle<()>,
    pairs: Vec<HealthKey>,
}

impl Agent {
    /// Starts and stops probes to match the configuration; a (VIP, backend) pair no longer
    /// checked forgets its health.
    pub(super) fn sync_checks(&mut self) {
        let mut wanted: HashMap<(Target, HealthCheck), Vec<HealthKey>> = HashMap::new();
        for vip in &self.config.vips {
            for b in &vip.backends {
                if let Some(check) = vip.check_for(b) {
                    let target = Target::new(vip.address, b.address, check);
                    wanted.entry((target, check.clone())).or_default().push((vip.name.clone(), b.address));
                }
            }
        }
        let pairs: BTreeSet<HealthKey> = wanted.values().flatten().cloned().collect();
        self.health.retain(|key, _| pairs.contains(key));
        self.probes.retain(|_, probe| {
            if let Some(pairs) = wanted.remove(&(probe.target.clone(), probe.check.clone())) {
                probe.pairs = pairs;
                true
            } else {
                probe.task.abort();
                false
            }
        });
        for ((target, check), pairs) in wanted {
            let id = self.next_probe;
            self.next_probe += 1;
            let task = tokio::spawn(health::run(id, target.clone(), check.clone(), self.outcomes.clone()));
            self.probes.insert(id, Probe { target, check, task, pairs });
        }
    }

    /// Counts a probe's outcome for each (VIP, backend) pair that shares the probe; whether a
    /// pair's health changed (the caller then applies).
    pub(super) fn record(&mut self, outcome: Outcome) -> bool {
        let Some(backend) = self.probes.get(&outcome.probe).map(|p| p.target.backend) else { return false };
        if !outcome.ok && self.egress_down(backend) {
            return false;
        }
        if outcome.ok {
            if !self.links_down.is_empty() {
                tracing::info!("probes pass again: the interface towards the backends is back");
                self.links_down.clear();
            }
        } else {
            self.forget_neighbour(backend);
        }
        let Some(probe) = self.probes.get(&outcome.probe) else { return false };
        let now = Instant::now();
        let mut changed = false;
        for pair in &probe.pairs {
            if !self.health.contains_key(pair) {
                // Once per pair: the first outcome.
                self.health.insert(pair.clone(), Health::default());
            }
            let Some(health) = self.health.get_mut(pair) else { continue };
            health.last_latency = Some(outcome.latency);
            if let Some(e) = &outcome.error {
                health.last_error = Some(e.clone());
            }
            match health.record(outcome.ok, &probe.check, now) {
                Some(true) => tracing::info!(vip = %pair.0, %backend, "backend is up"),
                Some(false) => tracing::warn!(
                    vip = %pair.0,
                    %backend,
                    error = outcome.error.as_deref().unwrap_or(""),
                    "backend is down"
                ),
                None => continue,
            }
            changed = true;
        }
        changed
    }

    /// Whether the interface towards `backend` is down, so that its failed probe is not held
    /// against it: when the balancer's own link goes, every backend would otherwise be marked
    /// down and every established flow moved. Logged once per interface and outage.
    fn egress_down(&mut self, backend: IpAddr) -> bool {
        match self.next_hops.egress_down(backend) {
            Ok(Some(ifindex)) => {
                if self.links_down.insert(ifindex) {
                    tracing::warn!(
                        ifindex,
                        "the interface towards the backends is down: failed probes through it are not counted"
                    );
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(%backend, error = %e, "reading the egress interface's state failed");
                false
            }
        }
    }

    /// After a failed probe, the backend's neighbour entry is deleted (if it has been settled
    /// a while, see [`crate::host::nexthop::NextHops::forget_neighbour`]) so that the next probe (and packet) learns
    /// its MAC anew. A backend replaced by a host with another MAC is then found by the next
    /// probe, instead of after the kernel's own reachability timers (up to a minute, during
    /// which it is down).
    fn forget_neighbour(&mut self, backend: IpAddr) {
        match self.next_hops.forget_neighbour(backend) {
            Ok(Some(neighbour)) => {
                tracing::info!(%backend, %neighbour, "a probe failed: the neighbour entry is resolved anew");
                // Until then packets go by the FIB, which resolves it too.
                self.refresh_next_hops();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%backend, error = %e, "forgetting the neighbour entry failed"),
        }
    }
}
