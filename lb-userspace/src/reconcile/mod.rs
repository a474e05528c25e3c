//! Reconcile: desired state (configuration refined by health and policy) + current state (read
//! from the maps) -> the map operations that turn one into the other, in an order that never
//! breaks a flow (see [`plan`]).
//!
//! Pure: no maps, no syscalls, so every decision has a host test. Ids are stable: a backend of a
//! VIP keeps its id (so flow-table entries and counters stay valid) and a VIP keeps its index for
//! as long as they stay configured.
//!
//! Rooms: this file (desired and current state, the operations, the planner) and [`policy`]
//! (health, admin states, guard rails and slow start turned into desired state).

pub mod policy;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{
    addr::to_key,
    admission::{AdmissionPolicy, Gcra, verdict},
    backend::Backend,
    capacity::{MAX_BACKENDS, MAX_VIPS},
    dataplane::DataplaneConfig,
    maglev::{MaglevBackend, MaglevError, build_table},
    sequence::{SequenceMember, smooth_sequence},
    session::SessionKey,
    vip::VipKey,
};

use crate::config::{Admission, RateLimit, Scheduler, Vip};

/// What the maps should hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub dataplane: DataplaneConfig,
    pub vips: Vec<DesiredVip>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVip {
    pub key: VipKey,
    pub name: String,
    pub scheduler: Scheduler,
    pub table_size: u32,
    /// New flows per CPU per flood window ([`flood_budget`]).
    pub new_flow_budget: u32,
    pub admission: VipAdmission,
    pub session_key: SessionKey,
    /// The VIP's own UDP idle timeout in seconds; 0: the instance's.
    pub udp_idle_timeout_secs: u16,
    pub backends: Vec<DesiredBackend>,
}

/// A VIP's admission as the maps hold it (`lb_common::admission`): its policy and its source
/// lists. The default admits everyone, unlimited, and runs no admission stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipAdmission {
    pub policy: AdmissionPolicy,
    /// Listed prefix -> `lb_common::admission::verdict`.
    pub lists: BTreeMap<ListedPrefix, u32>,
}

/// A source-list prefix in the maps' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedPrefix {
    pub family: u8,
    /// The network address (host bits zero).
    pub addr: [u8; 16],
    pub len: u8,
}

impl VipAdmission {
    pub fn from_config(admission: &Admission) -> Self {
        if admission.admits_all() {
            return Self::default();
        }
        let rate = |limit: Option<RateLimit>| {
            limit.map_or(Gcra::default(), |l| Gcra::new(u64::from(l.per_second), u64::from(l.burst)))
        };
        let mut lists = BTreeMap::new();
        for (prefixes, verdict) in [(&admission.allow, verdict::ALLOW), (&admission.deny, verdict::DENY)] {
            for p in prefixes {
                let (family, addr) = to_key(p.network);
                lists.insert(ListedPrefix { family, addr, len: p.len }, verdict);
            }
        }
        // An allow list makes every source it does not name a stranger.
        let unlisted = if admission.allow.is_empty() { verdict::ALLOW } else { verdict::DENY };
        let policy = AdmissionPolicy::new(
            rate(admission.packets),
            rate(admission.new_flows),
            unlisted,
            !lists.is_empty(),
            admission.source_prefix_v4,
            admission.source_prefix_v6,
        );
        Self { policy, lists }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredBackend {
    pub address: IpAddr,
    /// Weight in the Maglev table; 0 keeps it out of the table (no new flows).
    pub weight: u32,
    /// Whether flows already pinned to it continue (up, draining) or move (down, disabled).
    pub keeps_flows: bool,
    /// Its QUIC server id (zero past the VIP's server id length), on a QUIC VIP.
    pub quic_server_id: Option<[u8; 8]>,
}

/// How the data plane reads a table built for `scheduler`, with flood budget `new_flow_budget`
/// (per CPU per window) and admission stages `admission`.
pub fn scheduling(scheduler: Scheduler, new_flow_budget: u32, admission: u8) -> Scheduling {
    let (scheduler, source_prefix_len) = scheduler.data_plane();
    Scheduling { scheduler, source_prefix_len, new_flow_budget, admission, session_key: SessionKey::NONE }
}

/// The data plane's flood budget for `vip`: its new flows per second, per CPU per window.
pub fn flood_budget(vip: &Vip) -> u32 {
    // The data plane's per-CPU maps have one value per possible CPU; traffic spreads over them.
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u32);
    lb_common::flood::window_budget(vip.new_flow_budget, cpus)
}

/// How a VIP's table is read by the data plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduling {
    /// One of `lb_common::vip::scheduler`.
    pub scheduler: u8,
    pub source_prefix_len: u8,
    /// New flows per CPU per flood window (`lb_common::flood::window_budget`); 0: no flood mode.
    pub new_flow_budget: u32,
    /// The admission stages the VIP runs (`lb_common::admission::checks`).
    pub admission: u8,
    /// A UDP VIP's session key (`lb_common::session`); `SessionKey::NONE`: the 5-tuple.
    pub session_key: SessionKey,
}

/// A VIP's live table as the maps hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipTable {
    pub index: u32,
    pub scheduling: Scheduling,
    /// Backend ids: a Maglev table, or a round-robin sequence.
    pub table: Vec<u32>,
}

/// What the maps hold now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    pub dataplane: DataplaneConfig,
    /// Backend id -> record, for assigned ids.
    pub backends: BTreeMap<u32, Backend>,
    pub vips: BTreeMap<VipKey, VipTable>,
    /// VIP index -> admission, where it is not the default.
    pub admission: BTreeMap<u32, VipAdmission>,
    /// VIP index -> its QUIC server ids (server id -> backend id), for QUIC VIPs.
    pub quic_servers: BTreeMap<u32, BTreeMap<[u8; 8], u32>>,
}

impl Current {
    /// The state after `op`, as the data plane handle carries it out (the agent keeps its copy
    /// this way instead of reading every map back after each change).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::SetDataplane(d) => self.dataplane = *d,
            Op::SetBackend { id, backend } => {
                self.backends.insert(*id, *backend);
            }
            Op::InstallVip { key, vip } => {
                self.vips.insert(*key, vip.clone());
            }
            Op::RemoveVip { key } => {
                self.vips.remove(key);
            }
            Op::ClearBackend { id } => {
                self.backends.remove(id);
            }
            Op::SetAdmission { index, admission } => {
                if *admission == VipAdmission::default() {
                    self.admission.remove(index);
                } else {
                    self.admission.insert(*index, admission.clone());
                }
            }
            Op::SetQuicServers { index, servers } => {
                if servers.is_empty() {
                    self.quic_servers.remove(index);
                } else {
                    self.quic_servers.insert(*index, servers.clone());
                }
            }
        }
    }
}

/// One change to the maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    SetDataplane(DataplaneConfig),
    SetBackend {
        id: u32,
        backend: Backend,
    },
    InstallVip {
        key: VipKey,
        vip: VipTable,
    },
    RemoveVip {
        key: VipKey,
    },
    ClearBackend {
        id: u32,
    },
    /// VIP `index`'s admission policy and source lists (the default clears them).
    SetAdmission {
        index: u32,
        admission: VipAdmission,
    },
    /// VIP `index`'s QUIC server ids: server id -> backend id (none clears them).
    SetQuicServers {
        index: u32,
        servers: BTreeMap<[u8; 8], u32>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReconcileError {
    #[error("more than {MAX_BACKENDS} backends over all VIPs")]
    TooManyBackends,
    #[error("more than {MAX_VIPS} VIPs")]
    TooManyVips,
    #[error("VIP {vip}: {source}")]
    Maglev { vip: String, source: MaglevError },
}

/// The operations that make `current` match `desired`, in this order: instance settings;
/// admission policies and source lists (in place before a new VIP or a record asks for them);
/// backend records that are new or may keep flows again; tables; records whose flows must now
/// move (after no table points at them, so no new flow lands on a record that sheds it);
/// removed VIPs and then their admission; records nothing uses any more.
/// The tables built for each VIP's last members, so that a plan builds only the tables whose
/// members, weights, size or scheduler changed: a health change of one backend rebuilds its
/// VIPs' tables, not every VIP's (a Maglev table of 1021 slots and 100 backends is about a
/// hundred thousand steps, and an agent with thousands of checks decides often).
#[derive(Debug, Default)]
pub struct TableCache {
    built: HashMap<String, (Scheduler, u32, Vec<MaglevBackend>, Vec<u32>)>,
}

impl TableCache {
    fn table(&mut self, vip: &DesiredVip, members: Vec<MaglevBackend>) -> Result<Vec<u32>, ReconcileError> {
        if let Some((scheduler, size, built_for, table)) = self.built.get(&vip.name)
            && (*scheduler, *size) == (vip.scheduler, vip.table_size)
            && *built_for == members
        {
            return Ok(table.clone());
        }
        let table = backend_table(vip, &members)?;
        self.built.insert(vip.name.clone(), (vip.scheduler, vip.table_size, members, table.clone()));
        Ok(table)
    }
}

/// The operations that bring `current` to `desired`, building every table afresh.
pub fn plan(desired: &Desired, current: &Current) -> Result<Vec<Op>, ReconcileError> {
    plan_cached(desired, current, &mut TableCache::default())
}

/// As [`plan`], with the tables of members seen before taken from `cache`.
pub fn plan_cached(desired: &Desired, current: &Current, cache: &mut TableCache) -> Result<Vec<Op>, ReconcileError> {
    cache.built.retain(|name, _| desired.vips.iter().any(|v| v.name == *name));
    let mut ops = Vec::new();
    if desired.dataplane != current.dataplane {
        ops.push(Op::SetDataplane(desired.dataplane));
    }

    let indexes = vip_indexes(desired, current)?;

    let no_admission = VipAdmission::default();
    for (vip, &index) in desired.vips.iter().zip(&indexes) {
        if current.admission.get(&index).unwrap_or(&no_admission) != &vip.admission {
            ops.push(Op::SetAdmission { index, admission: vip.admission.clone() });
        }
    }

    // Backend ids: one per (VIP, address), kept while configured.
    let existing: BTreeMap<(u16, u8, [u8; 16]), u32> =
        current.backends.iter().map(|(id, b)| ((b.vip_index, b.family, b.addr), *id)).collect();
    let mut free_id = (0..MAX_BACKENDS).filter(|id| !current.backends.contains_key(id));
    let (mut keep_again, mut shed) = (Vec::new(), Vec::new());
    let mut wanted_ids = BTreeSet::new();
    let mut tables = Vec::new();
    let mut quic = Vec::new();
    for (vip, &index) in desired.vips.iter().zip(&indexes) {
        let mut members = Vec::new();
        let mut servers = BTreeMap::new();
        for b in &vip.backends {
            let (family, addr) = to_key(b.address);
            let record = Backend::new(family, addr, index as u16, vip.key.tag())
                .with_weight(b.weight)
                .keeping_flows(b.keeps_flows)
                .with_admission(vip.admission.policy.checks)
                .with_udp_idle_timeout(vip.udp_idle_timeout_secs);
            let id = if let Some(&id) = existing.get(&(index as u16, family, addr)) {
                let now = current.backends[&id];
                if now != record {
                    if b.keeps_flows {
                        keep_again.push(Op::SetBackend { id, backend: record });
                    } else {
                        shed.push(Op::SetBackend { id, backend: record });
                    }
                }
                id
            } else {
                let id = free_id.next().ok_or(ReconcileError::TooManyBackends)?;
                keep_again.push(Op::SetBackend { id, backend: record });
                id
            };
            wanted_ids.insert(id);
            if let Some(server_id) = b.quic_server_id {
                servers.insert(server_id, id);
            }
            members.push(MaglevBackend { addr, family, weight: b.weight, id });
        }
        if current.quic_servers.get(&index).unwrap_or(&BTreeMap::new()) != &servers {
            quic.push(Op::SetQuicServers { index, servers });
        }
        let table = cache.table(vip, members)?;
        let how = Scheduling {
            session_key: vip.session_key,
            ..scheduling(vip.scheduler, vip.new_flow_budget, vip.admission.policy.checks)
        };
        let live = VipTable { index, scheduling: how, table };
        if current.vips.get(&vip.key) != Some(&live) {
            tables.push(Op::InstallVip { key: vip.key, vip: live });
        }
    }
    // Server ids name records that exist by then, and stop naming records before they go.
    ops.extend(keep_again);
    ops.extend(tables);
    ops.extend(quic);
    ops.extend(shed);
    let desired_keys: BTreeSet<VipKey> = desired.vips.iter().map(|v| v.key).collect();
    for (key, vip) in current.vips.iter().filter(|(k, _)| !desired_keys.contains(k)) {
        ops.push(Op::RemoveVip { key: *key });
        if current.admission.contains_key(&vip.index) {
            ops.push(Op::SetAdmission { index: vip.index, admission: VipAdmission::default() });
        }
        if current.quic_servers.contains_key(&vip.index) {
            ops.push(Op::SetQuicServers { index: vip.index, servers: BTreeMap::new() });
        }
    }
    for id in current.backends.keys().filter(|id| !wanted_ids.contains(id)) {
        ops.push(Op::ClearBackend { id: *id });
    }
    Ok(ops)
}

/// Each desired VIP's index: kept while configured; new VIPs take the lowest free ones.
fn vip_indexes(desired: &Desired, current: &Current) -> Result<Vec<u32>, ReconcileError> {
    let used: BTreeSet<u32> = current.vips.values().map(|v| v.index).collect();
    let mut free_index = (0..MAX_VIPS).filter(|i| !used.contains(i));
    desired
        .vips
        .iter()
        .map(|vip| match current.vips.get(&vip.key) {
            Some(live) => Ok(live.index),
            None => free_index.next().ok_or(ReconcileError::TooManyVips),
        })
        .collect()
}

/// The table of backend ids the VIP's scheduler reads: a Maglev table, or a round-robin
/// sequence.
fn backend_table(vip: &DesiredVip, members: &[MaglevBackend]) -> Result<Vec<u32>, ReconcileError> {
    match vip.scheduler {
        Scheduler::Maglev
        | Scheduler::SourceHash { .. }
        | Scheduler::LeastConnections
        | Scheduler::LeastResponseTime => {
            match build_table(members, vip.table_size) {
                Ok(table) => Ok(table),
                // No backend with a weight: the VIP stays and drops its traffic (drop_no_backend).
                Err(MaglevError::NoBackends) => Ok(Vec::new()),
                Err(source) => Err(ReconcileError::Maglev { vip: vip.name.clone(), source }),
            }
        }
        Scheduler::RoundRobin | Scheduler::WeightedRoundRobin => {
            let equal = vip.scheduler == Scheduler::RoundRobin;
            let sequence: Vec<SequenceMember> = members
                .iter()
                .map(|m| SequenceMember {
                    addr: m.addr,
                    family: m.family,
                    weight: if equal { u32::from(m.weight > 0) } else { m.weight },
                    id: m.id,
                })
                .collect();
            Ok(smooth_sequence(&sequence))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use lb_common::vip::scheduler as vip_scheduler;

    fn config(vips: &str) -> Config {
        let text = format!(
            "[instance]\nname = \"t\"\ninterfaces = [\"eth0\"]\nencap_source_v4 = \"198.18.200.0/24\"\n\
             encap_source_v6 = \"fd00:200::/112\"\n{vips}"
        );
        Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn vip(name: &str, address: &str, port: u16, backends: &[(&str, u32)]) -> String {
        let mut s = format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"tcp\"\ntable_size = 251\n"
        );
        for (a, w) in backends {
            s += &format!("[[vip.backend]]\naddress = \"{a}\"\nweight = {w}\n");
        }
        s
    }

    /// What the agent's policy makes of `config` with no health known yet: the one path from a
    /// configuration to desired state, shared with `lb plan`.
    fn desired(config: &Config) -> Desired {
        policy::desired(config)
    }

    fn apply(current: &mut Current, ops: &[Op]) {
        for op in ops {
            current.apply(op);
        }
    }

    #[test]
    fn first_apply_creates_everything_in_a_safe_order() {
        let c = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)])
                + &vip("b", "fd00:100::1", 80, &[("fd00::21", 1)])),
        );
        let ops = plan(&desired(&c), &Current::default()).unwrap();
        assert!(matches!(ops[0], Op::SetDataplane(_)));
        let first_install = ops.iter().position(|o| matches!(o, Op::InstallVip { .. })).unwrap();
        let last_backend = ops.iter().rposition(|o| matches!(o, Op::SetBackend { .. })).unwrap();
        assert!(last_backend < first_install, "backends must exist before tables point at them: {ops:?}");
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::SetBackend { .. })).count(), 3);
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::InstallVip { .. })).count(), 2);
    }

    #[test]
    fn applying_twice_changes_nothing() {
        let c = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 2)]));
        let mut current = Current::default();
        let ops = plan(&desired(&c), &current).unwrap();
        apply(&mut current, &ops);
        assert_eq!(plan(&desired(&c), &current).unwrap(), vec![]);
    }

    #[test]
    fn ids_and_indexes_stay_stable_across_changes() {
        let before = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.23", 1)])),
        );
        let mut current = Current::default();
        let ops = plan(&desired(&before), &current).unwrap();
        apply(&mut current, &ops);
        let ids_before = current.backends.clone();
        let index_b = current.vips.iter().find(|(k, _)| k.addr[3] == 2).unwrap().1.index;

        // Remove VIP a and backend .21; add backend .24 to b.
        let after = config(&vip("b", "198.18.100.2", 80, &[("198.18.0.23", 1), ("198.18.0.24", 1)]));
        let ops = plan(&desired(&after), &current).unwrap();
        apply(&mut current, &ops);
        let id_23 = |m: &BTreeMap<u32, Backend>| m.iter().find(|(_, b)| b.addr[3] == 23).map(|(id, _)| *id);
        assert_eq!(id_23(&ids_before), id_23(&current.backends), "backend .23 kept its id");
        assert_eq!(current.vips.values().next().unwrap().index, index_b, "VIP b kept its index");
        assert_eq!(current.backends.len(), 2);
        // Removals come after installs.
        let install = ops.iter().position(|o| matches!(o, Op::InstallVip { .. })).unwrap();
        let remove = ops.iter().position(|o| matches!(o, Op::RemoveVip { .. })).unwrap();
        let clear = ops.iter().position(|o| matches!(o, Op::ClearBackend { .. })).unwrap();
        assert!(install < remove && remove < clear, "{ops:?}");
    }

    #[test]
    fn a_freed_id_is_reused_only_after_it_is_cleared() {
        let c1 = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)]));
        let mut current = Current::default();
        let ops = plan(&desired(&c1), &current).unwrap();
        apply(&mut current, &ops);
        // Swap .21 for .30 in one change: .30 must not take .21's id while .21 still holds it.
        let c2 = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.30", 1), ("198.18.0.22", 1)]));
        let ops = plan(&desired(&c2), &current).unwrap();
        let new_id = ops.iter().find_map(|o| match o {
            Op::SetBackend { id, .. } => Some(*id),
            _ => None,
        });
        assert!(new_id.is_some_and(|id| !current.backends.contains_key(&id)), "{ops:?}");
    }

    /// VIP `a` on .1 with one backend, and `admission` lines under `[vip.admission]`.
    fn admitted(admission: &str) -> Config {
        config(&(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1)]) + "[vip.admission]\n" + admission + "\n"))
    }

    #[test]
    fn admission_is_in_place_before_a_vip_or_record_asks_for_it() {
        let c = admitted("allow = [\"198.18.0.0/24\"]\npackets_per_second = 100");
        let ops = plan(&desired(&c), &Current::default()).unwrap();
        let set = ops.iter().position(|o| matches!(o, Op::SetAdmission { .. })).unwrap();
        let first_backend = ops.iter().position(|o| matches!(o, Op::SetBackend { .. })).unwrap();
        assert!(set < first_backend, "{ops:?}");
        let Op::SetAdmission { admission, .. } = &ops[set] else { unreachable!() };
        let checks = lb_common::admission::checks::SOURCE_LISTS | lb_common::admission::checks::PACKET_RATE;
        assert_eq!(admission.policy.checks, checks);
        assert_eq!(admission.policy.unlisted, verdict::DENY, "an allow list denies everyone else");
        assert_eq!(admission.lists.len(), 1);
        // The records and the VIP carry the stages.
        for op in &ops {
            match op {
                Op::SetBackend { backend, .. } => assert_eq!(backend.admission, checks),
                Op::InstallVip { vip, .. } => assert_eq!(vip.scheduling.admission, checks),
                _ => {}
            }
        }
        let mut current = Current::default();
        apply(&mut current, &ops);
        assert_eq!(plan(&desired(&c), &current).unwrap(), vec![], "applied twice");
    }

    #[test]
    fn lifting_admission_clears_it_and_a_removed_vip_leaves_none() {
        let mut current = Current::default();
        let with = admitted("deny = [\"198.18.0.66\"]");
        let ops = plan(&desired(&with), &current).unwrap();
        apply(&mut current, &ops);
        // Lifted: the lists go, and the records and table stop asking for them.
        let without = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1)]));
        let ops = plan(&desired(&without), &current).unwrap();
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::SetAdmission { admission, .. } if *admission == VipAdmission::default()))
        );
        assert!(ops.iter().any(|o| matches!(o, Op::SetBackend { backend, .. } if backend.admission == 0)), "{ops:?}");
        apply(&mut current, &ops);
        assert!(current.admission.is_empty());
        // A removed VIP's admission goes after the VIP.
        let ops = plan(&desired(&with), &current).unwrap();
        apply(&mut current, &ops);
        let ops = plan(&desired(&config("")), &current).unwrap();
        let remove = ops.iter().position(|o| matches!(o, Op::RemoveVip { .. })).unwrap();
        let clear = ops.iter().position(|o| matches!(o, Op::SetAdmission { .. })).unwrap();
        assert!(remove < clear, "{ops:?}");
        apply(&mut current, &ops);
        assert!(current.admission.is_empty());
    }

    #[test]
    fn weight_zero_everywhere_leaves_an_empty_table() {
        let c = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 0)]));
        let ops = plan(&desired(&c), &Current::default()).unwrap();
        assert!(ops.iter().any(|o| matches!(o, Op::InstallVip { vip, .. } if vip.table.is_empty())), "{ops:?}");
    }

    #[test]
    fn only_changed_tables_are_reinstalled() {
        let c1 = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.22", 1)])),
        );
        let mut current = Current::default();
        let ops = plan(&desired(&c1), &current).unwrap();
        apply(&mut current, &ops);
        let c2 = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.23", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.22", 1)])),
        );
        let ops = plan(&desired(&c2), &current).unwrap();
        let installs: Vec<_> = ops
            .iter()
            .filter_map(|o| match o {
                Op::InstallVip { key, .. } => Some(key.addr[3]),
                _ => None,
            })
            .collect();
        assert_eq!(installs, vec![1]);
    }

    #[test]
    fn least_connections_reads_a_maglev_table_and_records_carry_weights() {
        let text = vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 3)])
            .replace("table_size = 251\n", "table_size = 251\nscheduler = \"least-connections\"\n");
        let c = config(&text);
        let mut current = Current::default();
        let ops = plan(&desired(&c), &current).unwrap();
        apply(&mut current, &ops);
        let live = current.vips.values().next().unwrap();
        assert_eq!(live.scheduling.scheduler, vip_scheduler::LEAST_CONNECTIONS);
        assert_eq!(live.table.len(), 251);
        let weights: Vec<u32> = current.backends.values().map(|b| b.weight).collect();
        assert_eq!(weights, vec![1, 3]);

        // A weight change rewrites the record (the comparison reads it) before the table.
        let mut desired = desired(&c);
        desired.vips[0].backends[1].weight = 2;
        let ops = plan(&desired, &current).unwrap();
        let record = ops.iter().position(|o| matches!(o, Op::SetBackend { backend, .. } if backend.weight == 2));
        let install = ops.iter().position(|o| matches!(o, Op::InstallVip { .. }));
        assert!(record.is_some() && record < install, "{ops:?}");
    }

    #[test]
    fn a_backend_going_down_sheds_flows_only_after_leaving_the_table() {
        let c = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)]));
        let mut current = Current::default();
        let mut desired = desired(&c);
        let ops = plan(&desired, &current).unwrap();
        apply(&mut current, &ops);
        desired.vips[0].backends[0] = DesiredBackend {
            address: "198.18.0.21".parse().unwrap(),
            weight: 0,
            keeps_flows: false,
            quic_server_id: None,
        };
        let ops = plan(&desired, &current).unwrap();
        let install = ops.iter().position(|o| matches!(o, Op::InstallVip { .. })).unwrap();
        let shed =
            ops.iter().position(|o| matches!(o, Op::SetBackend { backend, .. } if !backend.keeps_flows())).unwrap();
        assert!(install < shed, "{ops:?}");
        apply(&mut current, &ops);
        // Coming back: the record keeps flows again before the table points at it.
        desired.vips[0].backends[0].weight = 1;
        desired.vips[0].backends[0].keeps_flows = true;
        let ops = plan(&desired, &current).unwrap();
        let keep =
            ops.iter().position(|o| matches!(o, Op::SetBackend { backend, .. } if backend.keeps_flows())).unwrap();
        let install = ops.iter().position(|o| matches!(o, Op::InstallVip { .. })).unwrap();
        assert!(keep < install, "{ops:?}");
    }

    #[test]
    fn drain_keeps_flows_out_of_the_table_and_disable_sheds_them() {
        let text = vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1), ("198.18.0.23", 1)])
            .replacen("weight = 1\n", "weight = 1\nstate = \"drain\"\n", 1)
            .replacen(
                "address = \"198.18.0.22\"\nweight = 1\n",
                "address = \"198.18.0.22\"\nweight = 1\nstate = \"disabled\"\n",
                1,
            );
        let c = config(&text);
        let mut current = Current::default();
        let ops = plan(&desired(&c), &current).unwrap();
        apply(&mut current, &ops);
        let by_addr =
            |last: u8| current.backends.iter().find(|(_, b)| b.addr[3] == last).map(|(id, b)| (*id, *b)).unwrap();
        let (drained, d) = by_addr(21);
        let (disabled, x) = by_addr(22);
        assert!(d.keeps_flows() && !x.keeps_flows());
        let table = &current.vips.values().next().unwrap().table;
        assert!(!table.contains(&drained) && !table.contains(&disabled));
        assert!(table.iter().all(|id| *id == by_addr(23).0));
    }

    #[test]
    fn the_same_address_in_two_vips_gets_two_ids() {
        let c = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1)])
                + &vip("b", "198.18.100.1", 443, &[("198.18.0.21", 1)])),
        );
        let mut current = Current::default();
        let ops = plan(&desired(&c), &current).unwrap();
        apply(&mut current, &ops);
        assert_eq!(current.backends.len(), 2);
        let vips: BTreeSet<u16> = current.backends.values().map(|b| b.vip_index).collect();
        assert_eq!(vips.len(), 2);
    }

    #[test]
    fn dataplane_settings_follow_the_instance() {
        let c = config("");
        let d = c.instance.dataplane_config();
        assert_eq!(d.encap_src_v4, [198, 18, 200, 0]);
        assert_eq!(d.encap_src_v4_host_bits, 8);
        assert_eq!(d.encap_src_v6_host_bits, 16);
        assert_eq!(d.udp_idle_timeout_ns, 30_000_000_000);
        assert_eq!(d.mtu, 1500);
    }
}
