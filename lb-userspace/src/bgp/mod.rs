//! Announcing VIPs over BGP through BIRD 2, an external daemon that keeps the sessions: the
//! balancer never speaks BGP itself.
//!
//! The agent writes one file, [`include_path`] (`/run/lb/INSTANCE.bird.conf`), that the host's
//! `bird.conf` includes: the BFD protocol, one static protocol per address family holding a
//! blackhole route per announced VIP address (the routes exist only to be exported), an export
//! filter per family that sets the configured attributes, and one BGP protocol per peer. It then
//! asks BIRD to `configure` over its control socket. BIRD compares the new configuration with the
//! running one and restarts only what changed: a VIP withdrawn or announced changes the static
//! protocol's routes, never a session.
//!
//! Rooms: this file (what is announced and why, the files' places), [`render`] (the file's text,
//! pure), [`bird`] (the control socket's protocol and the replies the agent reads).

pub mod bird;
pub mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::Vip,
    reconcile::policy::{BackendDecision, HealthState},
};

/// Where the agent of `instance` writes its part of BIRD's configuration.
pub fn include_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/lb/{instance}.bird.conf"))
}

/// The mark of a drained node: it stays drained across agent restarts and reboots, until
/// `lb node undrain`.
pub fn drained_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/lb/{instance}.drained"))
}

/// Why a VIP address is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Withdrawn {
    /// The data plane is not attached as the agent left it.
    NotAttached,
    /// `lb node drain`.
    Drained,
    /// No VIP at the address has a backend taking new flows (failing closed, all drained or
    /// weight 0).
    NoServingBackend,
    /// Its backends take new flows, but none has passed a health check since the agent started
    /// (and the address was not announced when it started).
    Unproven,
}

impl Withdrawn {
    /// The reason as the status's JSON and the metrics name it.
    pub fn label(self) -> &'static str {
        match self {
            Withdrawn::NotAttached => "not_attached",
            Withdrawn::Drained => "drained",
            Withdrawn::NoServingBackend => "no_serving_backend",
            Withdrawn::Unproven => "unproven",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Withdrawn::NotAttached => "the data plane is not as the agent left it",
            Withdrawn::Drained => "the node is drained",
            Withdrawn::NoServingBackend => "no VIP at this address has a serving backend",
            Withdrawn::Unproven => "no backend has passed a health check yet",
        }
    }
}

/// One VIP address's route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub address: IpAddr,
    /// The VIPs (names) at the address.
    pub vips: Vec<String>,
    /// None: announced.
    pub withdrawn: Option<Withdrawn>,
}

/// What decides the announcements besides the configuration and the policy's decisions.
pub struct Standing<'a> {
    /// The data plane is attached as the agent left it.
    pub attached: bool,
    /// `lb node drain`.
    pub drained: bool,
    /// Addresses announced when the agent started: they stay announced without new evidence
    /// (a restart withdraws nothing) until they are withdrawn for a reason.
    pub announced_at_start: &'a BTreeSet<IpAddr>,
    /// Whether a checked backend has passed a probe since the agent started.
    pub passed: &'a dyn Fn(&BackendDecision) -> bool,
}

/// Every VIP address with the VIPs at it and whether, or why not, it is announced: while the
/// data plane is attached, the node not drained, and a VIP at the address has a backend that the
/// policy's `decisions` put in its table and that is known to serve (it has no check, or passed
/// one, or the address was announced when the agent started).
pub fn routes(vips: &[Vip], decisions: &[BackendDecision], standing: &Standing<'_>) -> Vec<Route> {
    let mut by_address: BTreeMap<IpAddr, Route> = BTreeMap::new();
    for vip in vips {
        let route = by_address.entry(vip.address).or_insert_with(|| Route {
            address: vip.address,
            vips: Vec::new(),
            withdrawn: Some(Withdrawn::NoServingBackend),
        });
        route.vips.push(vip.name.clone());
        for d in decisions.iter().filter(|d| d.vip == vip.name && d.in_table) {
            // Only a backend assumed up (checked, never failed, never passed) needs evidence: one
            // without a check, or kept failing by the policy (failing open, the guard rail), is
            // in the table by decision.
            let known = d.health != HealthState::Up
                || standing.announced_at_start.contains(&vip.address)
                || (standing.passed)(d);
            if known {
                route.withdrawn = None;
            } else if route.withdrawn.is_some() {
                route.withdrawn = Some(Withdrawn::Unproven);
            }
        }
    }
    let (attached, drained) = (standing.attached, standing.drained);
    let mut routes: Vec<Route> = by_address.into_values().collect();
    for r in &mut routes {
        if !attached {
            r.withdrawn = Some(Withdrawn::NotAttached);
        } else if drained && r.withdrawn.is_none() {
            r.withdrawn = Some(Withdrawn::Drained);
        }
    }
    routes
}

/// Why BIRD did not take a file.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Bird(#[from] bird::BirdError),
}

/// Writes `text` to `include` (if it differs) and has BIRD at `socket` read its configuration
/// again: how the agent hands over its announcements, and how `lb detach` withdraws them.
pub async fn hand_over(include: &Path, text: &str, socket: &Path) -> Result<(), HandOverError> {
    write_if_changed(include, text).map_err(|error| HandOverError::Write { path: include.to_path_buf(), error })?;
    bird::Bird::connect(socket).await?.configure().await?;
    Ok(())
}

/// The group Debian's BIRD runs as: the file (which may hold TCP MD5 passwords) is readable by
/// root and this group only.
const BIRD_GROUP: &std::ffi::CStr = c"bird";

/// Writes `text` to `path` whole or not at all (a temporary file renamed over it), unless it
/// already holds exactly that; returns whether it wrote. The file is mode 0640, of group `bird`
/// where that group exists.
pub fn write_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A dot file: a glob such as `/run/lb/*.bird.conf` in bird.conf never reads it half-written.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.new"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(&temporary)?;
    file.write_all(text.as_bytes())?;
    // SAFETY: getgrnam with a valid C string; the result is read at once, before any other call.
    let group = unsafe { libc::getgrnam(BIRD_GROUP.as_ptr()).as_ref().map(|g| g.gr_gid) };
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid))?;
    }
    drop(file);
    std::fs::rename(&temporary, path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{
        config::Config,
        reconcile::policy::{self, HealthStates},
    };

    const CONFIG: &str = r#"
[instance]
name = "edge-1"
interfaces = ["eth0"]
encap_source_v4 = "198.18.200.0/24"
encap_source_v6 = "fd00:200::/112"

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
failure_mode = "closed"
[vip.health]
kind = "tcp"
[[vip.backend]]
address = "198.18.0.21"

[[vip]]
name = "dns"
address = "198.18.100.1"
port = 53
protocol = "udp"
failure_mode = "closed"
[vip.health]
kind = "tcp"
port = 53
[[vip.backend]]
address = "198.18.0.22"

[[vip]]
name = "game"
address = "198.18.100.2"
port = 7777
protocol = "udp"
[vip.health]
kind = "tcp"
port = 7777
[[vip.backend]]
address = "198.18.0.23"
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Health states with `down` failing their checks `fall` times.
    fn failing(config: &Config, down: &[(&str, &str)]) -> HealthStates {
        let mut states = HealthStates::new();
        let now = Instant::now();
        for (vip, address) in down {
            let v = config.vips.iter().find(|v| v.name == *vip).expect("vip");
            let check = v.health.as_ref().expect("check");
            let state = states.entry(((*vip).to_string(), address.parse().expect("address"))).or_default();
            for _ in 0..check.fall {
                state.record(false, check, now + Duration::from_millis(1));
            }
        }
        states
    }

    /// Each address's verdict, every checked backend having passed a probe.
    fn withdrawn(
        config: &Config,
        health: &HealthStates,
        attached: bool,
        drained: bool,
    ) -> Vec<(String, Option<Withdrawn>)> {
        verdicts(
            config,
            health,
            &Standing { attached, drained, announced_at_start: &BTreeSet::new(), passed: &|_| true },
        )
    }

    fn verdicts(config: &Config, health: &HealthStates, standing: &Standing<'_>) -> Vec<(String, Option<Withdrawn>)> {
        let decision = policy::decide(config, health, Instant::now());
        routes(&config.vips, &decision.backends, standing)
            .into_iter()
            .map(|r| (r.address.to_string(), r.withdrawn))
            .collect()
    }

    #[test]
    fn an_address_waits_for_a_passed_check_unless_announced_at_start() {
        let c = config(CONFIG);
        let none = BTreeSet::new();
        let no_evidence = Standing { attached: true, drained: false, announced_at_start: &none, passed: &|_| false };
        let all = verdicts(&c, &HealthStates::new(), &no_evidence);
        assert!(all.iter().all(|(_, w)| *w == Some(Withdrawn::Unproven)), "{all:?}");
        // One VIP's backend passed: its address goes out; the other still waits.
        let web_passed = Standing { passed: &|d| d.vip == "web", ..no_evidence };
        let some = verdicts(&c, &HealthStates::new(), &web_passed);
        assert_eq!(some, [("198.18.100.1".into(), None), ("198.18.100.2".into(), Some(Withdrawn::Unproven))]);
        // An address announced when the agent started stays announced (a restart withdraws nothing).
        let at_start: BTreeSet<IpAddr> = ["198.18.100.2".parse().unwrap()].into();
        let restarted = Standing { announced_at_start: &at_start, ..no_evidence };
        assert_eq!(verdicts(&c, &HealthStates::new(), &restarted)[1].1, None);
        // Failing open needs no evidence either: the policy keeps the failing backend.
        let open = verdicts(&c, &failing(&c, &[("game", "198.18.0.23")]), &no_evidence);
        assert_eq!(open[1].1, None);
        // A backend without a check needs no evidence.
        let unchecked = config(&CONFIG.replace("[vip.health]\nkind = \"tcp\"\nport = 7777\n", ""));
        assert_eq!(verdicts(&unchecked, &HealthStates::new(), &no_evidence)[1].1, None);
    }

    #[test]
    fn an_address_is_announced_while_one_of_its_vips_serves() {
        let c = config(CONFIG);
        let all_up = withdrawn(&c, &HealthStates::new(), true, false);
        assert_eq!(all_up, [("198.18.100.1".into(), None), ("198.18.100.2".into(), None)]);
        // web's only backend fails (closed): dns still serves the address.
        let web_down = withdrawn(&c, &failing(&c, &[("web", "198.18.0.21")]), true, false);
        assert_eq!(web_down[0].1, None);
        // Both VIPs at the address fail closed: withdrawn.
        let both_down = withdrawn(&c, &failing(&c, &[("web", "198.18.0.21"), ("dns", "198.18.0.22")]), true, false);
        assert_eq!(both_down[0].1, Some(Withdrawn::NoServingBackend));
        // game fails open: its backend stays in the table, so its address stays announced.
        let open = withdrawn(&c, &failing(&c, &[("game", "198.18.0.23")]), true, false);
        assert_eq!(open[1].1, None);
    }

    #[test]
    fn drained_detached_and_removed_vips_are_withdrawn() {
        let c = config(CONFIG);
        let drained = withdrawn(&c, &HealthStates::new(), true, true);
        assert!(drained.iter().all(|(_, w)| *w == Some(Withdrawn::Drained)), "{drained:?}");
        let detached = withdrawn(&c, &HealthStates::new(), false, true);
        assert!(detached.iter().all(|(_, w)| *w == Some(Withdrawn::NotAttached)), "{detached:?}");
        // A backend drained by its admin state takes no new flows: its only VIP's address goes.
        let drained_backend =
            config(&CONFIG.replace("address = \"198.18.0.23\"", "address = \"198.18.0.23\"\nstate = \"drain\""));
        assert_eq!(
            withdrawn(&drained_backend, &HealthStates::new(), true, false)[1].1,
            Some(Withdrawn::NoServingBackend)
        );
        // A removed VIP's address is no route at all.
        let removed = config(&CONFIG[..CONFIG.find("[[vip]]\nname = \"game\"").expect("game")]);
        assert_eq!(withdrawn(&removed, &HealthStates::new(), true, false).len(), 1);
    }
}
