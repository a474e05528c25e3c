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

/// Per-second rates between two snapshots (`lb stats --rate`).
#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub interval_secs: f64,
    pub vips: Vec<RateRow>,
    pub backends: Vec<RateRow>,
    pub reasons: Vec<ReasonRate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateRow {
    pub name: String,
    pub packets_per_second: f64,
    pub bits_per_second: f64,
    pub new_flows_per_second: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReasonRate {
    pub reason: &'static str,
    pub packets_per_second: f64,
    pub bits_per_second: f64,
}

impl Snapshot {
    /// The rates from `earlier` to this snapshot, `elapsed` apart. Rows only in one of the two
    /// (a VIP or backend added or removed between them) are left out.
    pub fn rates_since(&self, earlier: &Snapshot, elapsed: std::time::Duration) -> Rates {
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let per_second = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        let rows = |now: &[Row], then: &[Row]| -> Vec<RateRow> {
            now.iter()
                .filter_map(|r| {
                    let t = then.iter().find(|t| t.name == r.name)?;
                    Some(RateRow {
                        name: r.name.clone(),
                        packets_per_second: per_second(r.packets, t.packets),
                        bits_per_second: 8.0 * per_second(r.bytes, t.bytes),
                        new_flows_per_second: per_second(r.new_flows, t.new_flows),
                    })
                })
                .collect()
        };
        let reasons = self
            .reasons
            .iter()
            .zip(&earlier.reasons)
            .map(|(r, t)| ReasonRate {
                reason: r.reason,
                packets_per_second: per_second(r.packets, t.packets),
                bits_per_second: 8.0 * per_second(r.bytes, t.bytes),
            })
            .collect();
        Rates {
            interval_secs: secs,
            vips: rows(&self.vips, &earlier.vips),
            backends: rows(&self.backends, &earlier.backends),
            reasons,
        }
    }
}

impl Rates {
    /// A plain-text table; reasons that did not count in the interval are left out.
    pub fn table(&self) -> String {
        let mut out = format!("rates over {:.1} s\n", self.interval_secs);
        let mut section = |title: &str, rows: &[RateRow]| {
            out += &format!("{title:<34} {:>12} {:>14} {:>12}\n", "packets/s", "bits/s", "new flows/s");
            for r in rows {
                out += &format!(
                    "{:<34} {:>12.0} {:>14.0} {:>12.0}\n",
                    r.name, r.packets_per_second, r.bits_per_second, r.new_flows_per_second
                );
            }
            out += "\n";
        };
        section("VIP", &self.vips);
        section("backend", &self.backends);
        out += &format!("{:<34} {:>12} {:>14}\n", "reason", "packets/s", "bits/s");
        for r in self.reasons.iter().filter(|r| r.packets_per_second > 0.0) {
            out += &format!("{:<34} {:>12.0} {:>14.0}\n", r.reason, r.packets_per_second, r.bits_per_second);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(name: &str, packets: u64, bytes: u64, new_flows: u64) -> Row {
        Row { name: name.into(), packets, bytes, new_flows }
    }

    #[test]
    fn rates_are_per_second_and_skip_rows_that_came_or_went() {
        let earlier = Snapshot {
            vips: vec![row("a", 100, 10_000, 10), row("gone", 5, 5, 5)],
            backends: vec![row("b", 0, 0, 0)],
            reasons: vec![ReasonRow { reason: "tx_fib", packets: 100, bytes: 10_000 }],
        };
        let now = Snapshot {
            vips: vec![row("a", 300, 30_000, 30), row("new", 1_000, 1_000, 1_000)],
            backends: vec![row("b", 200, 20_000, 20)],
            reasons: vec![ReasonRow { reason: "tx_fib", packets: 300, bytes: 30_000 }],
        };
        let rates = now.rates_since(&earlier, Duration::from_secs(2));
        assert_eq!(
            rates.vips,
            [RateRow {
                name: "a".into(),
                packets_per_second: 100.0,
                bits_per_second: 80_000.0,
                new_flows_per_second: 10.0
            }]
        );
        assert!((rates.backends[0].packets_per_second - 100.0).abs() < 1e-9);
        assert_eq!(
            rates.reasons[0],
            ReasonRate { reason: "tx_fib", packets_per_second: 100.0, bits_per_second: 80_000.0 }
        );
        // Counters that went back (a backend id reused) read as zero, not as a huge rate.
        let reset = Snapshot { vips: vec![row("a", 1, 1, 1)], ..now.clone() };
        assert!(reset.rates_since(&earlier, Duration::from_secs(1)).vips[0].packets_per_second.abs() < 1e-9);
        assert!(rates.table().contains("rates over 2.0 s"));
    }
}
