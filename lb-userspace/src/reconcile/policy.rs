//! Policy: configuration + health + time -> what the data plane should do with every backend.
//!
//! Pure, so each rule has a host test:
//! - admin state: `drain` keeps pinned flows but takes no new ones, `disabled` moves them away;
//! - health: a backend whose checks fail leaves the table and its pinned flows move (TCP flows
//!   too: the new backend answers with a reset and the client reconnects at once instead of
//!   timing out);
//! - guard rail: failing checks never eject more than `max_ejected_percent` of a VIP's
//!   backends (those down longest go first); if every backend fails, the VIP fails open (all
//!   stay, with a loud warning) unless it is configured `failure_mode = "closed"`;
//! - slow start: a backend that comes back ramps its weight in 10% steps over `slow_start_secs`.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::{AdminState, Backend, Config, FailureMode, HealthCheck, Named, Scheduler, Vip},
    reconcile::{Desired, DesiredBackend, DesiredVip, VipAdmission, flood_budget},
};

/// Rise/fall state of one checked (VIP, backend).
#[derive(Debug, Clone)]
pub struct Health {
    pub up: bool,
    /// A probe has passed since the agent started: the backend is known to serve, not only
    /// assumed to (BGP announces a VIP address only on such evidence, see `bgp::routes`).
    pub passed: bool,
    successes: u32,
    failures: u32,
    /// When the backend last went down.
    pub down_since: Option<Instant>,
    /// When the backend last came back up (drives slow start); None for "up since the start".
    pub up_since: Option<Instant>,
    pub last_error: Option<String>,
    pub last_latency: Option<Duration>,
    /// Smoothed latency of successful probes, in seconds.
    pub latency_ewma: Option<f64>,
    /// least-response-time: share of its weight the backend gets (fastest backend: 1).
    pub response_factor: f64,
}

impl Default for Health {
    /// Backends start up (a restarted agent must not eject a whole fleet) and fall on failures.
    fn default() -> Self {
        Self {
            up: true,
            passed: false,
            successes: 0,
            failures: 0,
            down_since: None,
            up_since: None,
            last_error: None,
            last_latency: None,
            latency_ewma: None,
            response_factor: 1.0,
        }
    }
}

impl Health {
    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, ok: bool, check: &HealthCheck, now: Instant) -> Option<bool> {
        if ok && let Some(latency) = self.last_latency {
            let sample = latency.as_secs_f64();
            self.latency_ewma =
                Some(self.latency_ewma.map_or(sample, |e| EWMA_WEIGHT * sample + (1.0 - EWMA_WEIGHT) * e));
        }
        if ok {
            self.passed = true;
            self.successes += 1;
            self.failures = 0;
            self.last_error = None;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        if self.up && self.failures >= check.fall {
            self.up = false;
            self.down_since = Some(now);
            return Some(false);
        }
        if !self.up && self.successes >= check.rise {
            self.up = true;
            self.up_since = Some(now);
            self.down_since = None;
            return Some(true);
        }
        None
    }
}

/// Weight of a new probe's latency in the smoothed latency.
const EWMA_WEIGHT: f64 = 0.3;
/// least-response-time ignores changes of a backend's target share smaller than this (hysteresis).
const RESPONSE_HYSTERESIS: f64 = 0.2;
/// least-response-time changes a share by at most this factor per step (bounded steps).
const RESPONSE_STEP: f64 = 2.0;
/// least-response-time's resolution: a backend's table weight is its weight times this, times its factor.
const RESPONSE_SCALE: f64 = 100.0;

/// least-response-time: moves each backend's share factor towards (fastest latency / its
/// latency), by at most a factor of two per call and only when the target differs by more than
/// 20%. Returns whether any factor changed (the table then needs rebuilding).
pub fn update_response_factors(config: &Config, health: &mut HealthStates) -> bool {
    let mut changed = false;
    for vip in config.vips.iter().filter(|v| v.scheduler == Scheduler::LeastResponseTime) {
        let latencies: Vec<(IpAddr, f64)> = vip
            .backends
            .iter()
            .filter_map(|b| {
                health
                    .get(&(vip.name.clone(), b.address))
                    .filter(|h| h.up)
                    .and_then(|h| h.latency_ewma)
                    .map(|l| (b.address, l))
            })
            .collect();
        let Some(fastest) = latencies.iter().map(|(_, l)| *l).reduce(f64::min) else { continue };
        for (address, latency) in latencies {
            let h = health.get_mut(&(vip.name.clone(), address)).expect("listed above");
            let target = (fastest / latency.max(1e-6)).clamp(1.0 / RESPONSE_SCALE, 1.0);
            if (target - h.response_factor).abs() / h.response_factor > RESPONSE_HYSTERESIS {
                h.response_factor = target.clamp(h.response_factor / RESPONSE_STEP, h.response_factor * RESPONSE_STEP);
                changed = true;
            }
        }
    }
    changed
}

/// A backend's health as its checks say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Its checks pass (or have not failed enough yet: backends start up).
    Up,
    /// Its checks failed `fall` times in a row.
    Down,
    /// It has no health check.
    Unchecked,
}

impl Named for HealthState {
    const NAMES: &'static [(&'static str, Self)] =
        &[("up", HealthState::Up), ("down", HealthState::Down), ("unchecked", HealthState::Unchecked)];
    const WHAT: &'static str = "a health state";
}

crate::serde_by_name!(HealthState);

/// Key of a checked backend.
pub type HealthKey = (String, IpAddr);

/// The health of every checked (VIP, backend) pair. Hashed: the agent looks a pair up for
/// every probe outcome, thousands a second.
pub type HealthStates = HashMap<HealthKey, Health>;

/// What policy decided for one backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackendDecision {
    pub vip: String,
    pub address: IpAddr,
    pub admin: AdminState,
    pub health: HealthState,
    /// The configured weight.
    pub weight: u32,
    /// The weight in the table after health, slow start and admin state.
    pub effective_weight: u32,
    /// Takes new flows.
    pub in_table: bool,
    /// Flows pinned to it continue.
    pub keeps_flows: bool,
}

/// The policy's verdict: the desired data plane, per-backend decisions, and warnings to log.
pub struct Decision {
    pub desired: Desired,
    pub backends: Vec<BackendDecision>,
    pub warnings: Vec<String>,
    /// Whether a slow start is still ramping (re-evaluate soon).
    pub ramping: bool,
}

/// The desired state of `config` before any health check has answered: every backend as its
/// admin state says, at full weight. What `lb plan` compares against the maps, and what the agent
/// applies first: both go through [`decide`], so a plan shows what the agent would do.
pub fn desired(config: &Config) -> Desired {
    decide(config, &HealthStates::new(), Instant::now()).desired
}

pub fn decide(config: &Config, health: &HealthStates, now: Instant) -> Decision {
    let mut decision = Decision {
        desired: Desired {
            dataplane: lb_common::dataplane::DataplaneConfig {
                session_keys: u8::from(config.vips.iter().any(|v| v.session_key.is_some())),
                ..config.instance.dataplane_config()
            },
            vips: Vec::new(),
        },
        backends: Vec::new(),
        warnings: Vec::new(),
        ramping: false,
    };
    for vip in &config.vips {
        let state_of = |address: IpAddr| health.get(&(vip.name.clone(), address));
        let ejected = guard_rail(vip, health, &mut decision.warnings);

        let mut backends = Vec::new();
        for b in &vip.backends {
            let h = state_of(b.address);
            let checked = vip.check_for(b).is_some();
            let health = match (checked, h.map(|h| h.up)) {
                (false, _) => HealthState::Unchecked,
                (true, Some(false)) => HealthState::Down,
                (true, _) => HealthState::Up,
            };
            let (effective, keeps) = effective_weight(vip, b, h, &ejected, now, &mut decision.ramping);
            decision.backends.push(BackendDecision {
                vip: vip.name.clone(),
                address: b.address,
                admin: b.state,
                health,
                weight: b.weight,
                effective_weight: effective,
                in_table: effective > 0,
                keeps_flows: keeps,
            });
            backends.push(DesiredBackend {
                address: b.address,
                weight: effective,
                keeps_flows: keeps,
                quic_server_id: b.quic_server_id,
            });
        }
        decision.desired.vips.push(DesiredVip {
            key: vip.key(),
            name: vip.name.clone(),
            scheduler: vip.scheduler,
            table_size: vip.table_size,
            new_flow_budget: flood_budget(vip),
            admission: VipAdmission::from_config(&vip.admission),
            session_key: vip.session_key,
            udp_idle_timeout_secs: vip.udp_idle_timeout_secs.unwrap_or(0),
            backends,
        });
    }
    decision
}

/// The admin-up backends of `vip` that failing checks take out: the longest down first, no
/// more than `max_ejected_percent`, and none if all fail and the VIP fails open (`warnings`
/// says why).
fn guard_rail(vip: &Vip, health: &HealthStates, warnings: &mut Vec<String>) -> Vec<IpAddr> {
    let state_of = |address: IpAddr| health.get(&(vip.name.clone(), address));
    // Admin-up backends whose checks fail, longest down first.
    let admin_up: Vec<_> = vip.backends.iter().filter(|b| b.state == AdminState::Up).collect();
    let mut failing: Vec<_> = admin_up
        .iter()
        .filter(|b| vip.check_for(b).is_some() && state_of(b.address).is_some_and(|h| !h.up))
        .map(|b| (state_of(b.address).and_then(|h| h.down_since), b.address))
        .collect();
    failing.sort();
    if !admin_up.is_empty() && failing.len() == admin_up.len() {
        match vip.failure_mode {
            FailureMode::Open => {
                warnings.push(format!(
                    "VIP {}: all {} backends fail their checks; failing open: traffic keeps going to all of them",
                    vip.name,
                    admin_up.len()
                ));
                Vec::new()
            }
            FailureMode::Closed => {
                warnings.push(format!(
                    "VIP {}: all backends fail their checks; failure_mode closed: dropping its traffic",
                    vip.name
                ));
                failing.iter().map(|(_, a)| *a).collect()
            }
        }
    } else {
        let limit = admin_up.len() * usize::from(vip.max_ejected_percent) / 100;
        if failing.len() > limit {
            warnings.push(format!(
                "VIP {}: {} of {} backends fail their checks; the guard rail ejects only {} (max_ejected_percent = {})",
                vip.name,
                failing.len(),
                admin_up.len(),
                limit,
                vip.max_ejected_percent
            ));
        }
        failing.iter().take(limit).map(|(_, a)| *a).collect()
    }
}

/// A backend's weight in the table now, and whether its pinned flows stay (`ramping` is set
/// while a slow start goes on).
fn effective_weight(
    vip: &Vip,
    b: &Backend,
    h: Option<&Health>,
    ejected: &[IpAddr],
    now: Instant,
    ramping: &mut bool,
) -> (u32, bool) {
    match b.state {
        AdminState::Disabled => (0, false),
        AdminState::Drain => (0, true),
        AdminState::Up if ejected.contains(&b.address) => (0, false),
        AdminState::Up => {
            let ramp =
                h.and_then(|h| h.up_since).map(|since| ramp(now.saturating_duration_since(since), vip.slow_start));
            let weight = match ramp {
                Some(r) if r < 1.0 && b.weight > 0 => {
                    *ramping = true;
                    ((f64::from(b.weight) * r).round() as u32).max(1)
                }
                _ => b.weight,
            };
            if vip.scheduler == Scheduler::LeastResponseTime && weight > 0 {
                let factor = h.map_or(1.0, |h| h.response_factor);
                (((f64::from(weight) * RESPONSE_SCALE * factor).round() as u32).max(1), true)
            } else {
                (weight, true)
            }
        }
    }
}

/// Share of the weight after `elapsed` of a `window` slow start, in 10% steps.
fn ramp(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() || elapsed >= window {
        return 1.0;
    }
    ((elapsed.as_secs_f64() / window.as_secs_f64() * 10.0).floor() + 1.0).min(10.0) / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra_vip: &str, backends: &[(&str, &str)]) -> Config {
        let mut text = String::from(
            "[instance]\nname = \"t\"\ninterfaces = [\"eth0\"]\nencap_source_v4 = \"198.18.200.0/24\"\n\
             encap_source_v6 = \"fd00:200::/112\"\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\n\
             protocol = \"tcp\"\ntable_size = 251\n",
        );
        text += extra_vip;
        text += "[vip.health]\nkind = \"tcp\"\n";
        for (a, extra) in backends {
            text += &format!("[[vip.backend]]\naddress = \"{a}\"\n{extra}\n");
        }
        Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn down(health: &mut HealthStates, address: &str, at: Instant) {
        let h = health.entry(("web".into(), address.parse().unwrap())).or_default();
        h.up = false;
        h.down_since = Some(at);
    }

    fn state(d: &Decision, address: &str) -> (u32, bool) {
        let b = d.backends.iter().find(|b| b.address.to_string() == address).unwrap();
        (b.effective_weight, b.keeps_flows)
    }

    #[test]
    fn rise_and_fall_count_in_a_row() {
        let c = config("", &[("198.18.0.21", "")]);
        let check = c.vips[0].health.clone().unwrap(); // rise 2, fall 3
        let mut h = Health::default();
        let now = Instant::now();
        assert_eq!(h.record(false, &check, now), None);
        assert_eq!(h.record(false, &check, now), None);
        assert_eq!(h.record(true, &check, now), None, "a success resets the failures");
        assert_eq!(h.record(false, &check, now), None);
        assert_eq!(h.record(false, &check, now), None);
        assert_eq!(h.record(false, &check, now), Some(false));
        assert_eq!(h.record(true, &check, now), None);
        assert_eq!(h.record(true, &check, now), Some(true));
    }

    #[test]
    fn a_failing_backend_leaves_the_table_and_sheds_its_flows() {
        let c = config("", &[("198.18.0.21", ""), ("198.18.0.22", ""), ("198.18.0.23", ""), ("198.18.0.24", "")]);
        let mut health = HealthStates::new();
        let now = Instant::now();
        down(&mut health, "198.18.0.22", now);
        let d = decide(&c, &health, now);
        assert_eq!(state(&d, "198.18.0.22"), (0, false));
        assert_eq!(state(&d, "198.18.0.21"), (1, true));
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn the_guard_rail_ejects_at_most_half_longest_down_first() {
        let c = config("", &[("198.18.0.21", ""), ("198.18.0.22", ""), ("198.18.0.23", ""), ("198.18.0.24", "")]);
        let mut health = HealthStates::new();
        let t0 = Instant::now();
        down(&mut health, "198.18.0.23", t0);
        down(&mut health, "198.18.0.21", t0 + Duration::from_secs(1));
        down(&mut health, "198.18.0.22", t0 + Duration::from_secs(2));
        let d = decide(&c, &health, t0 + Duration::from_secs(3));
        assert_eq!(state(&d, "198.18.0.23"), (0, false));
        assert_eq!(state(&d, "198.18.0.21"), (0, false));
        assert_eq!(state(&d, "198.18.0.22"), (1, true), "third failure kept in by the guard rail");
        assert!(d.warnings[0].contains("ejects only 2"), "{:?}", d.warnings);
    }

    #[test]
    fn all_down_fails_open_unless_closed() {
        let backends = [("198.18.0.21", ""), ("198.18.0.22", "")];
        let mut health = HealthStates::new();
        let now = Instant::now();
        down(&mut health, "198.18.0.21", now);
        down(&mut health, "198.18.0.22", now);
        let open = decide(&config("max_ejected_percent = 100\n", &backends), &health, now);
        assert!(open.backends.iter().all(|b| b.in_table && b.keeps_flows));
        assert!(open.warnings[0].contains("failing open"));
        let closed = decide(&config("max_ejected_percent = 100\nfailure_mode = \"closed\"\n", &backends), &health, now);
        assert!(closed.backends.iter().all(|b| !b.in_table && !b.keeps_flows));
    }

    #[test]
    fn admin_states_override_health() {
        let c = config(
            "",
            &[("198.18.0.21", "state = \"drain\""), ("198.18.0.22", "state = \"disabled\""), ("198.18.0.23", "")],
        );
        let d = decide(&c, &HealthStates::new(), Instant::now());
        assert_eq!(state(&d, "198.18.0.21"), (0, true));
        assert_eq!(state(&d, "198.18.0.22"), (0, false));
        assert_eq!(state(&d, "198.18.0.23"), (1, true));
    }

    #[test]
    fn least_response_time_shifts_weight_in_bounded_steps_with_hysteresis() {
        let c = config("scheduler = \"least-response-time\"\n", &[("198.18.0.21", ""), ("198.18.0.22", "")]);
        let mut health = HealthStates::new();
        let key = |a: &str| ("web".to_string(), a.parse::<IpAddr>().unwrap());
        health.insert(key("198.18.0.21"), Health { latency_ewma: Some(0.001), ..Health::default() });
        health.insert(key("198.18.0.22"), Health { latency_ewma: Some(0.051), ..Health::default() });
        let factor = |h: &HealthStates| h[&key("198.18.0.22")].response_factor;
        assert!(update_response_factors(&c, &mut health));
        assert!((factor(&health) - 0.5).abs() < 1e-9, "at most halved per step");
        for _ in 0..10 {
            update_response_factors(&c, &mut health);
        }
        assert!((factor(&health) - 1.0 / 51.0).abs() < 0.01, "{}", factor(&health));
        let d = decide(&c, &health, Instant::now());
        assert_eq!(state(&d, "198.18.0.21").0, 100);
        assert!(state(&d, "198.18.0.22").0 <= 2);
        // A small change is ignored; recovery climbs back in steps.
        health.get_mut(&key("198.18.0.22")).unwrap().latency_ewma = Some(0.045);
        assert!(!update_response_factors(&c, &mut health));
        health.get_mut(&key("198.18.0.22")).unwrap().latency_ewma = Some(0.001);
        assert!(update_response_factors(&c, &mut health));
        assert!(factor(&health) < 0.05, "one step up at most doubles");
    }

    #[test]
    fn slow_start_ramps_in_steps() {
        let c = config("slow_start_secs = 10\n", &[("198.18.0.21", "weight = 100"), ("198.18.0.22", "weight = 100")]);
        let mut health = HealthStates::new();
        let t0 = Instant::now();
        health
            .insert(("web".into(), "198.18.0.21".parse().unwrap()), Health { up_since: Some(t0), ..Health::default() });
        let at = |s: u64| decide(&c, &health, t0 + Duration::from_secs(s));
        assert_eq!(state(&at(0), "198.18.0.21").0, 10);
        assert_eq!(state(&at(4), "198.18.0.21").0, 50);
        assert!(at(4).ramping);
        assert_eq!(state(&at(10), "198.18.0.21").0, 100);
        assert!(!at(10).ramping);
        assert_eq!(state(&at(0), "198.18.0.22").0, 100, "up since the start: no ramp");
    }
}
