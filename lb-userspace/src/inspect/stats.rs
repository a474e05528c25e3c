//! Counters read straight from the pinned maps, so `lb stats` works whether or not an agent runs.

use lb_common::{capacity::MAX_BACKENDS, counters::Reason};
use serde::Serialize;

use crate::{
    dataplane::{BalancerMaps, DataplaneError, PinDir},
    label::{show_addr, show_vip},
};

/// An instance's pinned counters.
pub struct PinnedStats {
    maps: BalancerMaps,
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

impl PinnedStats {
    pub fn open(pins: &PinDir) -> Result<Self, DataplaneError> {
        Ok(Self { maps: BalancerMaps::open_pinned(pins)? })
    }

    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let mut vips = Vec::new();
        let traffic = self.maps.vip_traffic()?;
        for entry in &self.maps.vips {
            let (key, info) = entry?;
            let c = traffic.get(&info.index).copied().unwrap_or_default();
            vips.push(Row { name: show_vip(&key), packets: c.packets, bytes: c.bytes, new_flows: c.new_flows });
        }
        vips.sort_by(|a, b| a.name.cmp(&b.name));
        let vip_names: std::collections::BTreeMap<u32, String> =
            self.maps.vips.iter().filter_map(Result::ok).map(|(key, info)| (info.index, show_vip(&key))).collect();
        let mut backends = Vec::new();
        for id in 0..MAX_BACKENDS {
            let b = self.maps.backends.get(&id, 0)?;
            if b.is_assigned() {
                let c = self.maps.backend_counters(id)?;
                let vip = vip_names.get(&u32::from(b.vip_index)).map_or("?", String::as_str);
                let name = format!("{} via {vip}", show_addr(b.family, &b.addr));
                backends.push(Row { name, packets: c.packets, bytes: c.bytes, new_flows: c.new_flows });
            }
        }
        let reasons = Reason::ALL
            .iter()
            .zip(self.maps.reason_counters()?)
            .map(|(r, c)| ReasonRow { reason: r.name(), packets: c.packets, bytes: c.bytes })
            .collect();
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
