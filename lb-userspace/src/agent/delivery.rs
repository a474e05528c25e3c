//! Whether the frames the data plane sends are delivered. An XDP program's `XDP_TX` or redirect
//! verdict only hands the frame to the driver: a driver that cannot send it (a veth in native
//! mode whose peer runs no XDP program, a NIC out of XDP transmit ring) drops it and counts it in
//! its own statistics, while the balancer's counters say `tx`. The agent reads those driver
//! counters every tick ([`crate::host::ethtool::xdp_transmit_errors`]) and reports an interface
//! whose count rises, in `lb status` and metrics, so that such a black hole is never silent.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How long an interface is reported after its transmit errors last rose.
pub const REPORT_FOR: Duration = Duration::from_secs(10);

/// The transmit-error counters of the balancer's interfaces, as last read.
#[derive(Debug, Default)]
pub struct DeliveryWatch {
    interfaces: BTreeMap<String, Counter>,
}

#[derive(Debug, Default)]
struct Counter {
    /// The driver's count; `None`: the driver has no such counter (or reading it failed).
    total: Option<u64>,
    /// Frames lost in the current episode (since the count began rising after a quiet spell).
    lost: u64,
    last_rise: Option<Instant>,
}

/// A change in whether an interface delivers, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// The interface's transmit errors began rising.
    Failing { interface: String, lost: u64 },
    /// They have not risen for [`REPORT_FOR`].
    Delivering { interface: String, lost: u64 },
}

impl DeliveryWatch {
    /// Records one reading per interface (`None` for a driver without the counters) and returns
    /// what changed. The first reading of an interface is its baseline: errors counted before
    /// the agent looked (by an earlier run, or before attaching) are not reported.
    pub fn observe(&mut self, readings: &[(String, Option<u64>)], now: Instant) -> Vec<Transition> {
        self.interfaces.retain(|name, _| readings.iter().any(|(n, _)| n == name));
        let mut changes = Vec::new();
        for (interface, reading) in readings {
            let counter = self.interfaces.entry(interface.clone()).or_default();
            let rose = match (counter.total, *reading) {
                (Some(before), Some(now)) => now.saturating_sub(before),
                _ => 0,
            };
            counter.total = *reading;
            let failing = counter.failing(now);
            if rose > 0 {
                counter.lost = if failing { counter.lost + rose } else { rose };
                counter.last_rise = Some(now);
                if !failing {
                    changes.push(Transition::Failing { interface: interface.clone(), lost: rose });
                }
            } else if counter.last_rise.is_some() && !failing {
                changes.push(Transition::Delivering { interface: interface.clone(), lost: counter.lost });
                counter.last_rise = None;
            }
        }
        changes
    }

    /// The drivers' transmit-error totals per interface, for those that count them.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.interfaces.iter().filter_map(|(name, c)| Some((name.clone(), c.total?))).collect()
    }

    /// What is failing now, for `lb status`; `None` while every interface delivers.
    pub fn problem(&self, now: Instant) -> Option<String> {
        let failing: Vec<String> = self
            .interfaces
            .iter()
            .filter(|(_, c)| c.failing(now))
            .map(|(name, c)| format!("{name} could not transmit {} frames", c.lost))
            .collect();
        (!failing.is_empty()).then(|| {
            format!(
                "{} (the drivers' XDP transmit error counters rose in the last {} s): frames the balancer \
                 forwards are lost. In native mode a veth delivers only if its peer runs an XDP program; \
                 otherwise use xdp_mode = \"generic\"",
                failing.join(", "),
                REPORT_FOR.as_secs()
            )
        })
    }
}

impl Counter {
    fn failing(&self, now: Instant) -> bool {
        self.last_rise.is_some_and(|at| now.duration_since(at) < REPORT_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(total: Option<u64>) -> Vec<(String, Option<u64>)> {
        vec![("eth0".to_string(), total)]
    }

    #[test]
    fn rising_transmit_errors_are_reported_until_quiet_for_a_while() {
        let t0 = Instant::now();
        let mut watch = DeliveryWatch::default();
        // Errors from before the agent looked are the baseline.
        assert!(watch.observe(&reading(Some(500)), t0).is_empty());
        assert_eq!(watch.problem(t0), None);
        let t1 = t0 + Duration::from_secs(1);
        let changes = watch.observe(&reading(Some(520)), t1);
        assert_eq!(changes, vec![Transition::Failing { interface: "eth0".into(), lost: 20 }]);
        let t2 = t1 + Duration::from_secs(1);
        assert!(watch.observe(&reading(Some(530)), t2).is_empty());
        let problem = watch.problem(t2).expect("reported");
        assert!(problem.starts_with("eth0 could not transmit 30 frames"), "{problem}");
        assert_eq!(watch.totals().get("eth0"), Some(&530));
        // Quiet, but not for long enough yet.
        let t3 = t2 + REPORT_FOR.saturating_sub(Duration::from_millis(1));
        assert!(watch.observe(&reading(Some(530)), t3).is_empty());
        assert!(watch.problem(t3).is_some());
        let t4 = t2 + REPORT_FOR;
        let changes = watch.observe(&reading(Some(530)), t4);
        assert_eq!(changes, vec![Transition::Delivering { interface: "eth0".into(), lost: 30 }]);
        assert_eq!(watch.problem(t4), None);
        // A new episode counts afresh.
        let t5 = t4 + Duration::from_secs(1);
        watch.observe(&reading(Some(531)), t5);
        assert!(watch.problem(t5).expect("reported").starts_with("eth0 could not transmit 1 frames"));
    }

    #[test]
    fn drivers_without_the_counters_and_resets_report_nothing() {
        let t0 = Instant::now();
        let mut watch = DeliveryWatch::default();
        assert!(watch.observe(&reading(None), t0).is_empty());
        assert!(watch.observe(&reading(None), t0 + Duration::from_secs(1)).is_empty());
        assert!(watch.totals().is_empty());
        // An interface created again starts from zero: no rise.
        watch.observe(&reading(Some(100)), t0 + Duration::from_secs(2));
        assert!(watch.observe(&reading(Some(3)), t0 + Duration::from_secs(3)).is_empty());
        assert_eq!(watch.problem(t0 + Duration::from_secs(3)), None);
        // An interface no longer configured is forgotten.
        watch.observe(&[], t0 + Duration::from_secs(4));
        assert!(watch.totals().is_empty());
    }
}
