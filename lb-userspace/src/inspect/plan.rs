//! `lb plan`: what applying a configuration would move, computed by the agent's own policy and
//! reconciliation from the pinned maps' current contents.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{
    addr::from_key,
    flow::{FlowKey, flow_hash},
    hash::fmix32,
    maglev::table_slot,
    vip::{VipKey, find_vip},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    dataplane::{BalancerMaps, DataplaneError},
    label::show_vip,
    reconcile,
};

#[derive(Debug, Serialize, Deserialize)]
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
    let desired = reconcile::policy::desired(config);
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
            records.get(&id).map_or_else(|| "-".into(), |b| from_key(b.family, &b.addr).to_string())
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
        let flows_moved = mine
            .iter()
            .filter(|(_, id)| !records.get(id).is_some_and(lb_common::backend::Backend::keeps_flows))
            .count();
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

/// Flows sampled when the hash key changes: `SipHash` costs more than the table-only sampling's
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
