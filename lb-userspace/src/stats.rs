//! Counters read straight from the pinned maps, so `lb stats` works whether or not an agent runs.

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    backend::Backend,
    capacity::MAX_BACKENDS,
    counters::{Reason, ReasonCounter, TrafficCounters},
    vip::{VipInfo, VipKey},
};
use serde::Serialize;

use crate::{
    agent::{show_addr, show_vip},
    dataplane::{DataplaneError, sum_reason, sum_traffic},
    pins::PinDir,
};

/// Read-only handles on an instance's pinned counters.
pub struct PinnedStats {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    reasons: PerCpuArray<MapData, ReasonCounter>,
    vip_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub vips: Vec<Row>,
    pub backends: Vec<Row>,
    pub reasons: Vec<ReasonRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReasonRow {
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(pins: &PinDir, name: &str) -> Result<T, DataplaneError> {
    let data = MapData::from_pin(pins.map(name))?;
    Ok(T::try_from(Map::from_map_data(data)?)?)
}

impl PinnedStats {
    pub fn open(pins: &PinDir) -> Result<Self, DataplaneError> {
        Ok(Self {
            vips: open(pins, "VIPS")?,
            backends: open(pins, "BACKENDS")?,
            reasons: open(pins, "REASON_STATS")?,
            vip_stats: open(pins, "VIP_STATS")?,
            backend_stats: open(pins, "BACKEND_STATS")?,
        })
    }

    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, info) = entry?;
            let c = sum_traffic(&self.vip_stats.get(&info.index, 0)?);
            vips.push(Row { name: show_vip(&key), packets: c.packets, bytes: c.bytes, new_flows: c.new_flows });
        }
        vips.sort_by(|a, b| a.name.cmp(&b.name));
        let mut backends = Vec::new();
        for id in 0..MAX_BACKENDS {
            let b = self.backends.get(&id, 0)?;
            if b.is_assigned() {
                let c = sum_traffic(&self.backend_stats.get(&id, 0)?);
                let name = show_addr(b.family, &b.addr);
                backends.push(Row { name, packets: c.packets, bytes: c.bytes, new_flows: c.new_flows });
            }
        }
        let mut reasons = Vec::new();
        for r in Reason::ALL {
            let c = sum_reason(&self.reasons.get(&(r as u32), 0)?);
            reasons.push(ReasonRow { reason: r.name(), packets: c.packets, bytes: c.bytes });
        }
        Ok(Snapshot { vips, backends, reasons })
    }
}

impl Snapshot {
    /// A plain-text table; reasons that never counted are left out.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut section = |title: &str, rows: &[Row]| {
            out += &format!("{title:<34} {:>12} {:>14} {:>10}\n", "packets", "bytes", "new flows");
            for r in rows {
                out += &format!("{:<34} {:>12} {:>14} {:>10}\n", r.name, r.packets, r.bytes, r.new_flows);
            }
            out += "\n";
        };
        section("VIP", &self.vips);
        section("backend", &self.backends);
        out += &format!("{:<34} {:>12} {:>14}\n", "reason", "packets", "bytes");
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            out += &format!("{:<34} {:>12} {:>14}\n", r.reason, r.packets, r.bytes);
        }
        out
    }
}
