//! `lb trace` and `lb plan`: the data plane's decisions reproduced from the pinned maps with
//! the same code the XDP program runs (flow hash, Maglev slot), so what they say is what
//! happens.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    addr::{from_key, to_key},
    backend::Backend,
    flow::{FlowKey, flow_hash, source_hash},
    hash::fmix32,
    least_connections::{candidates, second_wins},
    maglev::table_slot,
    vip::{VipInfo, VipKey, find_vip, scheduler},
};
use serde::Serialize;

use crate::{
    config::{Config, Protocol},
    dataplane::{BalancerMaps, DataplaneError},
    label::show_vip,
    reconcile,
};

#[derive(Debug, Serialize)]
pub struct Trace {
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub why: String,
    pub flow_hash: u32,
}

/// Where the data plane sends this flow now, and why.
pub fn trace(
    maps: &BalancerMaps,
    protocol: Protocol,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
) -> Result<Trace, DataplaneError> {
    let (family, s) = to_key(src);
    let (_, d) = to_key(dst);
    if src.is_ipv4() != dst.is_ipv4() {
        return Ok(Trace {
            vip: None,
            backend: None,
            why: "source and destination are of different families".into(),
            flow_hash: 0,
        });
    }
    let key = FlowKey::new(family, protocol.number(), s, sport, d, dport);
    let hash_key = maps.config.get(&0, 0)?.flow_hash_key;
    let hash = flow_hash(&key, &hash_key);
    let matched = find_vip(&key, |k| maps.vips.get(k, 0).ok().map(|v| (*k, v)));
    // As the data plane: the flow table first, whose entry stands while its backend takes flows
    // and still serves the VIP the flow was scheduled for.
    if let Some(entry) = maps.flow(&key) {
        let b = maps.backends.get(&u32::from(entry.backend), 0)?;
        let idle_ns = entry.idle_ns(crate::active::monotonic_coarse_ns());
        let expired = protocol == Protocol::Udp && idle_ns > maps.config.get(&0, 0)?.udp_idle_timeout_ns;
        if b.keeps_flows() && b.vip_tag == entry.vip_tag && !expired {
            return Ok(Trace {
                vip: matched.map(|(k, _)| show_vip(&k)),
                backend: Some(from_key(b.family, &b.addr).to_string()),
                why: format!("flow-table entry (backend id {}); table changes do not move it", entry.backend),
                flow_hash: entry.hash,
            });
        }
    }
    let Some((vip_key, vip)) = matched else {
        return Ok(Trace {
            vip: None,
            backend: None,
            why: "no VIP matches: passed to the kernel (pass_not_vip)".into(),
            flow_hash: hash,
        });
    };
    let vip_name = Some(show_vip(&vip_key));
    new_flow(maps, vip_name, &vip, &key, hash, &hash_key)
}

fn new_flow(
    maps: &BalancerMaps,
    vip: Option<String>,
    info: &VipInfo,
    key: &FlowKey,
    hash: u32,
    hash_key: &lb_common::flow::HashKey,
) -> Result<Trace, DataplaneError> {
    if info.table_size == 0 {
        return Ok(Trace {
            vip,
            backend: None,
            why: "the VIP has no backend: dropped (drop_no_backend)".into(),
            flow_hash: hash,
        });
    }
    let (slot, how) = match info.scheduler {
        scheduler::SEQUENCE => {
            let why =
                format!("round robin: a new flow takes the next of {} entries in its CPU's turn", info.table_size);
            return Ok(Trace { vip, backend: None, why, flow_hash: hash });
        }
        scheduler::SOURCE_HASH => {
            let h = source_hash(key, info.source_prefix_len, hash_key);
            (
                table_slot(h, info.table_size),
                format!("source hash of the client's first {} bits {h:#010x}", info.source_prefix_len),
            )
        }
        scheduler::LEAST_CONNECTIONS => return least_connections(maps, vip, info, hash),
        _ => (table_slot(hash, info.table_size), format!("flow hash {hash:#010x}")),
    };
    let table = maps.live_table(info)?;
    let id = table[slot as usize];
    let b = maps.backends.get(&id, 0)?;
    Ok(Trace {
        vip,
        backend: Some(from_key(b.family, &b.addr).to_string()),
        why: format!("new flow: {how}, Maglev slot {slot} of {} -> backend id {id}", info.table_size),
        flow_hash: hash,
    })
}

/// A new flow under least connections: the two candidates and their loads right now.
fn least_connections(
    maps: &BalancerMaps,
    vip: Option<String>,
    info: &VipInfo,
    hash: u32,
) -> Result<Trace, DataplaneError> {
    let table = maps.live_table(info)?;
    let at = |slot: u32| table.get(slot as usize).copied();
    let Some((first, second)) = candidates(hash, info.table_size, at) else {
        return Ok(Trace { vip, backend: None, why: "the VIP's table is unreadable".into(), flow_hash: hash });
    };
    let load = |id: u32| -> Result<(Backend, u64), DataplaneError> {
        Ok((maps.backends.get(&id, 0)?, maps.active_flows(id)?.max(0) as u64))
    };
    let (a, a_active) = load(first)?;
    let name = |b: &Backend| from_key(b.family, &b.addr).to_string();
    let (winner, why) = match second {
        None => (a, format!("least connections: every draw met backend id {first}, which takes the flow")),
        Some(second) => {
            let (b, b_active) = load(second)?;
            let wins = second_wins(a_active, a.weight, b_active, b.weight);
            let why = format!(
                "least connections: candidates {} ({a_active} active, weight {}) and {} ({b_active} active, weight {}); {}",
                name(&a),
                a.weight,
                name(&b),
                b.weight,
                if wins {
                    "the second has fewer per unit of weight and takes the flow"
                } else {
                    "the first has no more per unit of weight and takes the flow"
                }
            );
            (if wins { b } else { a }, why)
        }
    };
    Ok(Trace { vip, backend: Some(name(&winner)), why: format!("new flow: {why}"), flow_hash: hash })
}

#[derive(Debug, Serialize)]
pub struct VipPlan {
    pub vip: String,
    /// Share of the hash space whose backend changes.
    pub hash_space_moved: f64,
    /// The flow hash key changes: every new flow hashes anew (flows in the flow table stay).
    pub flow_hash_key_changes: bool,
    pub tracked_flows: usize,
    /// Tracked flows whose backend stops keeping flows (removed, disabled): they move.
    pub tracked_flows_moved: usize,
    /// Backend address -> (share before, share after) of new flows.
    pub shares: BTreeMap<String, (f64, f64)>,
}

/// Hash values sampled to measure how much of the hash space moves.
const SAMPLES: u32 = 200_003;

/// What applying `config` would change, VIP by VIP (backends taken as healthy).
pub fn plan(maps: &BalancerMaps, config: &Config) -> anyhow::Result<Vec<VipPlan>> {
    let current = maps.current()?;
    let desired = crate::policy::desired(config);
    let ops = reconcile::plan(&desired, &current)?;
    // The maps after the change, as the agent's own copy follows them.
    let mut after = current.clone();
    for op in &ops {
        after.apply(op);
    }
    let records = after.backends;
    let tables: BTreeMap<VipKey, Vec<u32>> = after.vips.into_iter().map(|(k, v)| (k, v.table)).collect();
    let keys: BTreeSet<VipKey> = current.vips.keys().chain(tables.keys()).copied().collect();
    let flows = tracked_flows(maps, &keys)?;
    let hash_keys = (current.dataplane.flow_hash_key, desired.dataplane.flow_hash_key);
    let key_changed = hash_keys.0 != hash_keys.1;
    let mut out = Vec::new();
    for key in keys {
        let before = current.vips.get(&key).map(|v| v.table.clone()).unwrap_or_default();
        let after = tables.get(&key).cloned().unwrap_or_default();
        let addr = |records: &BTreeMap<u32, lb_common::backend::Backend>, id: u32| {
            records.get(&id).map(|b| from_key(b.family, &b.addr).to_string()).unwrap_or_else(|| "-".into())
        };
        let pick = |table: &[u32], records: &BTreeMap<u32, lb_common::backend::Backend>, h: u32| {
            if table.is_empty() {
                "(dropped)".to_string()
            } else {
                addr(records, table[table_slot(h, table.len() as u32) as usize])
            }
        };
        let mut moved = 0u32;
        if key_changed {
            // Every flow hashes anew: sample flows, each hashed with the old key and the new.
            for i in 0..SAMPLES / KEY_CHANGE_SAMPLE_DIVISOR {
                let flow = sample_flow(&key, i);
                let (h_before, h_after) = (flow_hash(&flow, &hash_keys.0), flow_hash(&flow, &hash_keys.1));
                if pick(&before, &current.backends, h_before) != pick(&after, &records, h_after) {
                    moved += KEY_CHANGE_SAMPLE_DIVISOR;
                }
            }
        } else {
            for i in 0..SAMPLES {
                let h = fmix32(i.wrapping_mul(0x9e37_79b9));
                if pick(&before, &current.backends, h) != pick(&after, &records, h) {
                    moved += 1;
                }
            }
        }
        let share = |table: &[u32], records: &BTreeMap<u32, lb_common::backend::Backend>| {
            let mut counts: BTreeMap<String, f64> = BTreeMap::new();
            for id in table {
                *counts.entry(addr(records, *id)).or_default() += 1.0 / table.len() as f64;
            }
            counts
        };
        let (s_before, s_after) = (share(&before, &current.backends), share(&after, &records));
        let mut shares = BTreeMap::new();
        for name in s_before.keys().chain(s_after.keys()) {
            shares.insert(
                name.clone(),
                (s_before.get(name).copied().unwrap_or(0.0), s_after.get(name).copied().unwrap_or(0.0)),
            );
        }
        let mine: Vec<&(VipKey, u32)> = flows.iter().filter(|(vip, _)| *vip == key).collect();
        let flows_moved = mine.iter().filter(|(_, id)| !records.get(id).is_some_and(|b| b.keeps_flows())).count();
        out.push(VipPlan {
            vip: show_vip(&key),
            hash_space_moved: f64::from(moved) / f64::from(SAMPLES),
            flow_hash_key_changes: key_changed,
            tracked_flows: mine.len(),
            tracked_flows_moved: flows_moved,
            shares,
        });
    }
    Ok(out)
}

/// Flows sampled when the hash key changes: SipHash costs more than the table-only sampling's
/// mixing, so a fifth as many.
const KEY_CHANGE_SAMPLE_DIVISOR: u32 = 5;

/// The `i`th sample flow to `vip`: client address and port spread by a mixing function.
fn sample_flow(vip: &VipKey, i: u32) -> FlowKey {
    let mixed = fmix32(i.wrapping_mul(0x9e37_79b9));
    let mut src = vip.addr;
    if vip.family == lb_common::family::IPV4 {
        src[..4].copy_from_slice(&mixed.to_be_bytes());
    } else {
        src[12..].copy_from_slice(&mixed.to_be_bytes());
    }
    let port = if vip.port == [0; 2] { 443 } else { u16::from_be_bytes(vip.port) };
    FlowKey::new(vip.family, vip.protocol, src, 1024 + (i % 60_000) as u16, vip.addr, port)
}

/// Every flow-table entry whose VIP is among `vips`, as (its VIP, its backend id).
fn tracked_flows(maps: &BalancerMaps, vips: &BTreeSet<VipKey>) -> Result<Vec<(VipKey, u32)>, DataplaneError> {
    let mut flows = Vec::new();
    maps.for_each_flow(|k, v| {
        if let Some(vip) = find_vip(k, |vip| vips.get(vip).copied()) {
            flows.push((vip, u32::from(v.backend)));
        }
    })?;
    Ok(flows)
}
