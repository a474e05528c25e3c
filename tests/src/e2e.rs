//! The end-to-end test environment: the lab, the agent run on generated configurations, and
//! traffic helpers shared by the lab test binaries.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail, ensure};
use lb_lab::{BACKEND_NAMES, CLIENT, Lab, in_namespace, vip};

use crate::traffic::{Dns, Http};

/// The lab agent's control socket (the default for instance `lab`).
pub const CONTROL_SOCKET: &str = "/run/lb/lab.sock";

/// Concurrent client threads for bulk traffic.
pub const THREADS: usize = 4;

/// Health check sections (the lines after `[vip.health]`) of the generated configurations.
#[derive(Clone, Default)]
pub struct Health {
    pub web: Option<String>,
    pub dns: Option<String>,
    /// Extra VIP settings for web (`failure_mode`, `max_ejected_percent`, scheduler, ...).
    pub web_extra: String,
    /// Extra VIP settings for web6.
    pub web6_extra: String,
    /// Extra VIP settings for dns and dns6 (an `[vip.admission]` table, ...).
    pub dns_extra: String,
    /// The instance's MTU instead of config/lab.toml's.
    pub mtu: Option<u16>,
    /// More VIPs (TOML), appended to the generated configuration.
    pub more_vips: String,
}

pub struct Env {
    pub lab: Lab,
    pub agent: Option<Child>,
    pub log: PathBuf,
    pub workspace: PathBuf,
    /// Health check sections (TOML) for the web and dns VIPs, if any.
    pub health: Health,
}

impl Env {
    /// (Re)starts the agent on a configuration with `backends` (index into the lab's backends,
    /// weight) behind every VIP.
    pub fn run_agent(&mut self, backends: &[(usize, u32)]) -> anyhow::Result<()> {
        let config = self.lab.dir.join(format!(
            "e2e-{}.toml",
            backends.iter().map(|(i, w)| format!("{i}w{w}")).collect::<Vec<_>>().join("-")
        ));
        std::fs::write(&config, lab_config(&self.workspace, backends, &self.health)?)?;
        if let Some(agent) = self.agent.take() {
            self.lab.stop_agent(agent)?;
        }
        self.agent = Some(self.lab.start_agent(&config, &self.log)?);
        Ok(())
    }
}

/// config/lab.toml's instance settings with the given backends behind each of its VIPs.
pub fn lab_config(workspace: &Path, backends: &[(usize, u32)], health: &Health) -> anyhow::Result<String> {
    let lab = std::fs::read_to_string(workspace.join("config/lab.toml"))?;
    let instance = &lab[..lab.find("[[vip]]").context("config/lab.toml has no [[vip]]")?];
    let mut out = match health.mtu {
        Some(mtu) => instance.replace("\nmtu = 1500\n", &format!("\nmtu = {mtu}\n")),
        None => instance.to_string(),
    };
    ensure!(
        health.mtu.is_none() || out.contains(&format!("\nmtu = {}\n", health.mtu.unwrap_or(0))),
        "config/lab.toml has no `mtu = 1500` line to replace"
    );
    for (name, address, port, protocol, v6) in [
        ("web", "198.18.100.1", 80, "tcp", false),
        ("dns", "198.18.100.1", 53, "udp", false),
        ("web6", "fd00:100::1", 80, "tcp", true),
        ("dns6", "fd00:100::1", 53, "udp", true),
    ] {
        out +=
            &format!("[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\n");
        match name {
            "web" => out += &health.web_extra,
            "web6" => out += &health.web6_extra,
            _ => out += &health.dns_extra,
        }
        let check = match name {
            "web" => health.web.as_deref(),
            "dns" => health.dns.as_deref(),
            _ => None,
        };
        if let Some(check) = check {
            out += &format!("[vip.health]\n{check}\n");
        }
        for (i, weight) in backends {
            let b = if v6 { lb_lab::backend_v6(*i).to_string() } else { lb_lab::backend_v4(*i).to_string() };
            out += &format!("[[vip.backend]]\naddress = \"{b}\"\nweight = {weight}\n");
        }
    }
    out += &health.more_vips;
    Ok(out)
}

/// Packets counted under reason `reason` by the lab's data plane, from `lb stats --json`.
pub fn reason_count(env: &Env, reason: &str) -> anyhow::Result<u64> {
    let out =
        std::process::Command::new(&env.lab.lb).args(["stats", "--instance", lb_lab::INSTANCE, "--json"]).output()?;
    ensure!(out.status.success(), "lb stats failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    stats["reasons"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["reason"] == reason))
        .and_then(|r| r["packets"].as_u64())
        .with_context(|| format!("no {reason} counter in lb stats --json"))
}

/// Runs `count` calls of `one` over [`THREADS`] threads in the client's namespace and tallies
/// the answers by backend; any error fails the whole run.
pub fn tally(
    count: usize,
    one: fn(IpAddr) -> anyhow::Result<String>,
    target: IpAddr,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let n = count / THREADS + usize::from(t < count % THREADS);
            std::thread::spawn(move || {
                in_namespace(CLIENT, move || -> anyhow::Result<Vec<String>> { (0..n).map(|_| one(target)).collect() })?
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for h in handles {
        for name in h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?? {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Each backend's share is within `tolerance` (fraction) of its weight's share.
pub fn check_shares(counts: &BTreeMap<String, usize>, weights: &[(usize, u32)], tolerance: f64) -> anyhow::Result<()> {
    let total: usize = counts.values().sum();
    let weight_sum: u32 = weights.iter().map(|(_, w)| w).sum();
    let mut report = Vec::new();
    for (i, w) in weights {
        let got = counts.get(BACKEND_NAMES[*i]).copied().unwrap_or(0) as f64 / total as f64;
        let want = f64::from(*w) / f64::from(weight_sum);
        report.push(format!("{} {:.1}% (target {:.1}%)", BACKEND_NAMES[*i], got * 100.0, want * 100.0));
        ensure!((got - want).abs() <= tolerance, "shares out of bounds: {}", report.join(", "));
    }
    let unexpected: Vec<_> =
        counts.keys().filter(|k| !weights.iter().any(|(i, _)| BACKEND_NAMES[*i] == k.as_str())).collect();
    ensure!(unexpected.is_empty(), "answers from backends not configured: {unexpected:?}");
    println!("    shares over {total}: {}", report.join(", "));
    Ok(())
}

pub const EQUAL: [(usize, u32); 3] = [(0, 1), (1, 1), (2, 1)];

/// Long-lived TCP connections and UDP sessions, each with the backend that first answered it.
pub struct Sessions {
    pub tcp: Vec<(Http, String)>,
    pub udp: Vec<(Dns, String)>,
}

impl Sessions {
    pub fn open(tcp: usize, udp: usize) -> anyhow::Result<Self> {
        let mut s = Sessions { tcp: Vec::new(), udp: Vec::new() };
        for i in 0..tcp {
            let mut c = Http::connect(vip(i % 2 == 1))?;
            let name = c.get()?;
            s.tcp.push((c, name));
        }
        for i in 0..udp {
            let mut d = Dns::new(vip(i % 2 == 1))?;
            let name = d.ask()?;
            s.udp.push((d, name));
        }
        Ok(s)
    }

    /// One more request on every session: all must succeed, on the backend they started on.
    pub fn check(&mut self) -> anyhow::Result<()> {
        let (mut broken, mut moved) = (Vec::new(), Vec::new());
        for (i, (c, first)) in self.tcp.iter_mut().enumerate() {
            match c.get() {
                Ok(name) if name == *first => {}
                Ok(name) => moved.push(format!("tcp#{i} {first}->{name}")),
                Err(e) => broken.push(format!("tcp#{i} ({first}): {e:#}")),
            }
        }
        for (i, (d, first)) in self.udp.iter_mut().enumerate() {
            match d.ask() {
                Ok(name) if name == *first => {}
                Ok(name) => moved.push(format!("udp#{i} {first}->{name}")),
                Err(e) => broken.push(format!("udp#{i} ({first}): {e:#}")),
            }
        }
        ensure!(broken.is_empty() && moved.is_empty(), "broken: {broken:?}; moved: {moved:?}");
        Ok(())
    }
}

/// Runs `change` while the sessions keep sending; then every session must still work, unmoved.
pub fn under_load(tcp: usize, udp: usize, change: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let sessions = in_namespace(CLIENT, move || Sessions::open(tcp, udp))??;
    let sessions = Arc::new(Mutex::new(sessions));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (sessions, stop) = (Arc::clone(&sessions), Arc::clone(&stop));
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<usize> {
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) {
                    sessions.lock().expect("sessions").check()?;
                    rounds += 1;
                }
                Ok(rounds)
            })?
        })
    };
    let changed = change();
    stop.store(true, Ordering::Relaxed);
    let rounds = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    changed?;
    let sessions = Arc::into_inner(sessions).context("sessions still shared")?;
    let mut sessions = sessions.into_inner().expect("sessions");
    let sessions = in_namespace(CLIENT, move || sessions.check().map(|()| sessions))??;
    println!(
        "    {} TCP connections and {} UDP sessions kept their backends through {rounds} rounds during the change",
        sessions.tcp.len(),
        sessions.udp.len()
    );
    Ok(())
}

pub fn build_lb(workspace: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "--release", "-p", "lb-userspace", "--bin", "lb"])
        .status()
        .context("building lb")?;
    if !status.success() {
        bail!("building lb failed");
    }
    // Release: the tests measure change latencies and failover times of the real thing.
    Ok(workspace.join("target/release/lb"))
}

/// Builds `lb`, brings the lab up in `target/<dir>` and starts the agent on the three equal
/// backends with `health`.
pub fn start(dir: &str, health: Health) -> anyhow::Result<Env> {
    crate::privileged::require_root("the end-to-end tests")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_path_buf();
    let lb = build_lb(&workspace)?;
    let lab = Lab::new(&workspace.join("target").join(dir), &lb);
    let log = lab.dir.join("lb.log");
    let mut env = Env { lab, agent: None, log, workspace, health };
    let started = (|| {
        env.lab.up()?;
        let _ = std::fs::remove_file(&env.log);
        env.run_agent(&EQUAL)
    })();
    if let Err(e) = started {
        env.lab.down();
        return Err(e.context("bringing the lab up"));
    }
    Ok(env)
}

/// Brings the lab up with its agent (as [`start`]), runs `body` on it, then stops the agent and
/// removes the lab whatever happened: for the benchmarks that measure in the lab.
pub fn in_lab<T>(dir: &str, health: Health, body: impl FnOnce(&mut Env) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut env = start(dir, health)?;
    let result = body(&mut env);
    if let Some(agent) = env.agent.take() {
        let _ = env.lab.stop_agent(agent);
    }
    env.lab.down();
    result
}

/// A named end-to-end test on state `S` (an [`Env`] unless a test binary has its own).
pub type Trial<S = Env> = (&'static str, fn(&mut S) -> anyhow::Result<()>);

/// Runs the trials on `env` one at a time, then stops the agent and removes the lab whatever
/// happened.
pub fn run_trials(env: Env, trials: Vec<Trial>) -> anyhow::Result<()> {
    run_trials_on(env, trials, |mut env, failed| {
        if let Some(agent) = env.agent.take() {
            let _ = env.lab.stop_agent(agent);
        }
        env.lab.down();
        if failed {
            eprintln!("agent log: {}", env.log.display());
        }
    })
}

/// Runs the trials on `state` one at a time (libtest's filters and output), then hands the
/// state to `clean_up` with whether any trial failed, whatever happened.
pub fn run_trials_on<S: Send + 'static>(
    state: S,
    trials: Vec<Trial<S>>,
    clean_up: impl FnOnce(S, bool),
) -> anyhow::Result<()> {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let state = Arc::new(Mutex::new(state));
    let trials = trials
        .into_iter()
        .map(|(name, body)| {
            let state = Arc::clone(&state);
            libtest_mimic::Trial::test(name, move || {
                let mut state = state.lock().map_err(|_| libtest_mimic::Failed::from("an earlier test panicked"))?;
                body(&mut state).map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let Ok(state) = Arc::try_unwrap(state) else { bail!("test state still shared") };
    clean_up(state.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner), conclusion.has_failed());
    conclusion.exit()
}
