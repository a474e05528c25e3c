//! Reconcile: desired state (from the configuration) + current state (read from the maps) ->
//! the map operations that turn one into the other, in an order that never breaks a flow.
//!
//! Pure: no maps, no syscalls, so every decision has a host test. Order of the operations:
//! 1. the instance settings;
//! 2. new backends, before any table can point at them;
//! 3. new and changed Maglev tables (each installed atomically by the data plane handle);
//! 4. removed VIPs;
//! 5. backends no table points at any more (their flows are then rescheduled).
//!
//! Ids are stable: a backend keeps its id (and so its flow-table entries stay valid) and a VIP
//! keeps its index (and its counters) for as long as they stay configured.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    addr::to_key,
    backend::Backend,
    capacity::{MAX_BACKENDS, MAX_VIPS},
    dataplane::DataplaneConfig,
    maglev::{MaglevBackend, MaglevError, build_table},
    vip::VipKey,
};

use crate::config::{Config, Instance};

/// What the maps hold now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    pub dataplane: DataplaneConfig,
    /// Backend id -> backend, for ids marked present.
    pub backends: BTreeMap<u32, Backend>,
    /// VIP -> (index, live table).
    pub vips: BTreeMap<VipKey, (u32, Vec<u32>)>,
}

/// One change to the maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    SetDataplane(DataplaneConfig),
    SetBackend { id: u32, backend: Backend },
    InstallVip { key: VipKey, index: u32, table: Vec<u32> },
    RemoveVip { key: VipKey },
    ClearBackend { id: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReconcileError {
    #[error("more than {MAX_BACKENDS} backends")]
    TooManyBackends,
    #[error("more than {MAX_VIPS} VIPs")]
    TooManyVips,
    #[error("VIP {vip}: {source}")]
    Maglev { vip: String, source: MaglevError },
}

/// The data plane's instance settings for `instance`.
pub fn dataplane_config(instance: &Instance) -> DataplaneConfig {
    let mut encap_src_v6 = instance.encap_source_v6.network.octets();
    // Only the low 32 bits may vary; clear the host bits so the prefix alone is stored.
    let mask =
        if instance.encap_source_v6.host_bits >= 32 { 0 } else { u32::MAX << instance.encap_source_v6.host_bits };
    let low = u32::from_be_bytes([encap_src_v6[12], encap_src_v6[13], encap_src_v6[14], encap_src_v6[15]]) & mask;
    encap_src_v6[12..].copy_from_slice(&low.to_be_bytes());
    DataplaneConfig {
        udp_idle_timeout_ns: u64::from(instance.udp_idle_timeout_secs) * 1_000_000_000,
        encap_src_v6,
        encap_src_v4: instance.encap_source_v4.network.octets(),
        mtu: instance.mtu,
        encap_src_v4_host_bits: instance.encap_source_v4.host_bits,
        encap_src_v6_host_bits: instance.encap_source_v6.host_bits,
        fallback_dst_mac: instance.fallback_mac.unwrap_or([0; 6]),
        _pad: [0; 2],
    }
}

/// The data plane form of a backend address.
pub fn backend_record(address: IpAddr) -> Backend {
    let (fam, addr) = to_key(address);
    Backend::new(fam, addr)
}

/// The operations that make `current` match `config`.
pub fn plan(config: &Config, current: &Current) -> Result<Vec<Op>, ReconcileError> {
    let mut ops = Vec::new();
    let dataplane = dataplane_config(&config.instance);
    if dataplane != current.dataplane {
        ops.push(Op::SetDataplane(dataplane));
    }

    // Backend ids: keep existing ones, give new addresses the lowest free ids.
    let existing: BTreeMap<Backend, u32> = current.backends.iter().map(|(id, b)| (*b, *id)).collect();
    let wanted: BTreeSet<Backend> =
        config.vips.iter().flat_map(|v| v.backends.iter().map(|b| backend_record(b.address))).collect();
    let mut ids: BTreeMap<Backend, u32> = BTreeMap::new();
    let mut free = (0..MAX_BACKENDS).filter(|id| !current.backends.contains_key(id));
    for backend in &wanted {
        let id = match existing.get(backend) {
            Some(id) => *id,
            None => {
                let id = free.next().ok_or(ReconcileError::TooManyBackends)?;
                ops.push(Op::SetBackend { id, backend: *backend });
                id
            }
        };
        ids.insert(*backend, id);
    }

    // VIP indexes: keep existing ones, give new VIPs the lowest free indexes.
    let used: BTreeSet<u32> = current.vips.values().map(|(i, _)| *i).collect();
    let mut free_index = (0..MAX_VIPS).filter(|i| !used.contains(i));
    let mut desired_keys = BTreeSet::new();
    for vip in &config.vips {
        let (fam, addr) = to_key(vip.address);
        let key = VipKey::new(fam, addr, vip.port, vip.protocol.number());
        desired_keys.insert(key);
        let members: Vec<MaglevBackend> = vip
            .backends
            .iter()
            .map(|b| {
                let record = backend_record(b.address);
                MaglevBackend { addr: record.addr, family: record.family, weight: b.weight, id: ids[&record] }
            })
            .collect();
        let table = match build_table(&members, vip.table_size) {
            Ok(table) => table,
            // No backend with weight: the VIP stays, and drops its traffic (drop_no_backend).
            Err(MaglevError::NoBackends) => Vec::new(),
            Err(source) => return Err(ReconcileError::Maglev { vip: vip.name.clone(), source }),
        };
        match current.vips.get(&key) {
            Some((index, live)) if *live == table => {
                let _ = index;
            }
            Some((index, _)) => ops.push(Op::InstallVip { key, index: *index, table }),
            None => {
                let index = free_index.next().ok_or(ReconcileError::TooManyVips)?;
                ops.push(Op::InstallVip { key, index, table });
            }
        }
    }
    for key in current.vips.keys().filter(|k| !desired_keys.contains(k)) {
        ops.push(Op::RemoveVip { key: *key });
    }
    for (id, backend) in &current.backends {
        if !wanted.contains(backend) {
            ops.push(Op::ClearBackend { id: *id });
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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

    /// Applies `ops` to `current` the way the data plane handle does.
    fn apply(current: &mut Current, ops: &[Op]) {
        for op in ops {
            match op {
                Op::SetDataplane(d) => current.dataplane = *d,
                Op::SetBackend { id, backend } => {
                    current.backends.insert(*id, *backend);
                }
                Op::InstallVip { key, index, table } => {
                    current.vips.insert(*key, (*index, table.clone()));
                }
                Op::RemoveVip { key } => {
                    current.vips.remove(key);
                }
                Op::ClearBackend { id } => {
                    current.backends.remove(id);
                }
            }
        }
    }

    #[test]
    fn first_apply_creates_everything_in_a_safe_order() {
        let c = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)])
                + &vip("b", "fd00:100::1", 80, &[("fd00::21", 1)])),
        );
        let ops = plan(&c, &Current::default()).unwrap();
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
        let ops = plan(&c, &current).unwrap();
        apply(&mut current, &ops);
        assert_eq!(plan(&c, &current).unwrap(), vec![]);
    }

    #[test]
    fn ids_and_indexes_stay_stable_across_changes() {
        let before = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.22", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.23", 1)])),
        );
        let mut current = Current::default();
        let ops = plan(&before, &current).unwrap();
        apply(&mut current, &ops);
        let ids_before = current.backends.clone();
        let index_b = current.vips.iter().find(|(k, _)| k.addr[3] == 2).unwrap().1.0;

        // Remove VIP a and backend .21; add backend .24 to b.
        let after = config(&vip("b", "198.18.100.2", 80, &[("198.18.0.23", 1), ("198.18.0.24", 1)]));
        let ops = plan(&after, &current).unwrap();
        apply(&mut current, &ops);
        let id_23 = |m: &BTreeMap<u32, Backend>| m.iter().find(|(_, b)| b.addr[3] == 23).map(|(id, _)| *id);
        assert_eq!(id_23(&ids_before), id_23(&current.backends), "backend .23 kept its id");
        assert_eq!(current.vips.values().next().unwrap().0, index_b, "VIP b kept its index");
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
        let ops = plan(&c1, &current).unwrap();
        apply(&mut current, &ops);
        // Swap .21 for .30 in one change: .30 must not take .21's id while .21 still holds it.
        let c2 = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.30", 1), ("198.18.0.22", 1)]));
        let ops = plan(&c2, &current).unwrap();
        let new_id = ops.iter().find_map(|o| match o {
            Op::SetBackend { id, .. } => Some(*id),
            _ => None,
        });
        assert!(new_id.is_some_and(|id| !current.backends.contains_key(&id)), "{ops:?}");
    }

    #[test]
    fn weight_zero_everywhere_leaves_an_empty_table() {
        let c = config(&vip("a", "198.18.100.1", 80, &[("198.18.0.21", 0)]));
        let ops = plan(&c, &Current::default()).unwrap();
        assert!(ops.iter().any(|o| matches!(o, Op::InstallVip { table, .. } if table.is_empty())), "{ops:?}");
    }

    #[test]
    fn only_changed_tables_are_reinstalled() {
        let c1 = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.22", 1)])),
        );
        let mut current = Current::default();
        let ops = plan(&c1, &current).unwrap();
        apply(&mut current, &ops);
        let c2 = config(
            &(vip("a", "198.18.100.1", 80, &[("198.18.0.21", 1), ("198.18.0.23", 1)])
                + &vip("b", "198.18.100.2", 80, &[("198.18.0.22", 1)])),
        );
        let ops = plan(&c2, &current).unwrap();
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
    fn dataplane_settings_follow_the_instance() {
        let c = config("");
        let d = dataplane_config(&c.instance);
        assert_eq!(d.encap_src_v4, [198, 18, 200, 0]);
        assert_eq!(d.encap_src_v4_host_bits, 8);
        assert_eq!(d.encap_src_v6_host_bits, 16);
        assert_eq!(d.udp_idle_timeout_ns, 30_000_000_000);
        assert_eq!(d.mtu, 1500);
    }
}
