//! `lb run`: the agent. Turns a configuration into a live data plane and keeps it right as
//! health, operators and the configuration change.
//!
//! Start-up: validate the configuration (nothing is touched if it fails), open or adopt the
//! pinned maps, apply the policy's desired state, attach (or replace the program inside the
//! pinned links), start one health-check task per checked backend and the control socket. Then
//! one loop owns all state: probe outcomes, control requests, SIGHUP and configuration file
//! changes (both reload), a slow-start tick. On SIGTERM or SIGINT the agent exits and the data
//! plane keeps forwarding; the next `lb run` adopts it. `lb detach` removes it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use lb_common::hash::murmur3_words;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    active::{self, IdleTimeouts, RecountPlan},
    config::{Config, HealthCheck, Named as _},
    control::{self, Request, Response},
    dataplane::{Balancer, BalancerSizes},
    health::{self, Outcome, Target},
    label::{show_addr, show_mac, show_vip},
    metrics,
    nexthop::NextHops,
    pins::PinDir,
    policy::{self, BackendDecision, Health, HealthKey},
    reconcile::{self, Op},
};

/// How often backends' neighbour entries are refreshed (see [`warm_neighbours`]).
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(10);
/// How often slow starts advance and the configuration file is looked at.
const TICK: Duration = Duration::from_secs(1);

type Pending = (Request, oneshot::Sender<Response>);

struct Agent {
    config_path: PathBuf,
    config_mtime: Option<SystemTime>,
    config: Config,
    balancer: Balancer,
    pins: PinDir,
    health: BTreeMap<HealthKey, Health>,
    checks: BTreeMap<HealthKey, (HealthCheck, JoinHandle<()>)>,
    outcomes: mpsc::Sender<Outcome>,
    /// What the maps hold: read once at start, then kept up to date as the only writer.
    current: reconcile::Current,
    decisions: Vec<BackendDecision>,
    warnings: Vec<String>,
    /// Problems of the host the agent found and could not repair (interfaces that strip VLAN
    /// tags), shown with the policy's warnings.
    host_warnings: Vec<String>,
    ramping: bool,
    /// Table fingerprints per VIP name (a hash of the table's backend addresses, slot by slot:
    /// equal on every balancer with the same configuration and health).
    fingerprints: BTreeMap<String, String>,
    generation: u64,
    /// What the recount thread needs to know of the maps (see [`active`]).
    recount_plan: Arc<Mutex<RecountPlan>>,
    /// Backends' next hops for the data plane, refreshed every tick and after every change.
    next_hops: NextHops,
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let pins = PinDir::instance(&config.instance.name);
    let adopting = pins.exists();
    let balancer = Balancer::open_pinned(
        BalancerSizes {
            flow_table_entries: config.instance.flow_table_entries,
            ipv6_flow_table_entries: config.instance.ipv6_flow_table_entries,
        },
        &pins,
    )
    .with_context(|| format!("opening the data plane pinned at {}", pins.root().display()))?;
    if adopting {
        tracing::info!(pins = %pins.root().display(), "adopting the pinned data plane");
    }
    let (outcome_tx, mut outcome_rx) = mpsc::channel(1024);
    let current = balancer.current().context("reading the current data plane state")?;
    let mut agent = Agent {
        current,
        config_path: config_path.to_path_buf(),
        config_mtime: mtime(config_path),
        config,
        balancer,
        pins,
        health: BTreeMap::new(),
        checks: BTreeMap::new(),
        outcomes: outcome_tx,
        decisions: Vec::new(),
        warnings: Vec::new(),
        host_warnings: Vec::new(),
        ramping: false,
        fingerprints: BTreeMap::new(),
        generation: 0,
        recount_plan: Arc::default(),
        next_hops: NextHops::new().context("opening an rtnetlink socket for next hops")?,
    };
    agent.apply()?;
    agent.fingerprints = fingerprints(&agent.current, &agent.config);
    for interface in agent.config.instance.interfaces.clone() {
        enable_forwarding(&interface);
    }
    warm_neighbours(&agent.config);
    // Give the first packets their next hops (entries the warming creates arrive on later ticks).
    agent.refresh_next_hops();
    for interface in agent.config.instance.interfaces.clone() {
        match crate::vlan::keep_vlan_tags(&interface) {
            Ok(off) if !off.is_empty() => tracing::info!(interface, features = ?off, "turned receive VLAN offload off"),
            Ok(_) => {}
            Err(e) => {
                tracing::error!("{e}");
                agent.host_warnings.push(e.to_string());
            }
        }
        let attached = agent
            .balancer
            .attach(&interface, agent.config.instance.xdp_mode, &agent.pins)
            .with_context(|| format!("attaching the balancer to {interface}"))?;
        match attached {
            crate::attach::Attached::New(mode) => tracing::info!(interface, ?mode, "attached the balancer"),
            crate::attach::Attached::Replaced => {
                tracing::info!(interface, "replaced the balancer program inside the pinned link")
            }
        }
    }
    agent.sync_checks();
    active::spawn(agent.pins.clone(), Arc::clone(&agent.recount_plan)).context("starting the recount thread")?;

    let (request_tx, mut request_rx) = mpsc::channel::<Pending>(64);
    let socket = agent.config.instance.control_socket.clone();
    let listener = bind_control(&socket)?;
    tokio::spawn(serve_control(listener, request_tx.clone()));
    if let Some(address) = agent.config.instance.metrics_address {
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding metrics on {address}"))?;
        tracing::info!(%address, "serving Prometheus metrics");
        tokio::spawn(metrics::serve(listener, request_tx.clone(), agent.pins.clone()));
    }
    tracing::info!(
        instance = %agent.config.instance.name,
        vips = agent.config.vips.len(),
        backends = agent.config.backend_count(),
        control = %socket.display(),
        "running"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                if let Err(e) = agent.reload() {
                    tracing::error!("reload refused, nothing changed: {e:#}");
                }
            }
            _ = refresh.tick() => warm_neighbours(&agent.config),
            _ = tick.tick() => agent.tick(),
            Some(outcome) = outcome_rx.recv() => agent.record(outcome),
            Some((request, reply)) = request_rx.recv() => {
                let response = agent.handle(request);
                let _ = reply.send(response);
            }
        }
    }
    for (_, (_, task)) in std::mem::take(&mut agent.checks) {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!(
        pins = %agent.pins.root().display(),
        "exiting; the data plane keeps forwarding. `lb detach --instance {}` removes it",
        agent.config.instance.name
    );
    Ok(())
}

impl Agent {
    /// Decides with the policy and reconciles the maps to it, logging each change.
    fn apply(&mut self) -> anyhow::Result<()> {
        let decision = policy::decide(&self.config, &self.health, Instant::now());
        for w in decision.warnings.iter().filter(|w| !self.warnings.contains(w)) {
            tracing::warn!("{w}");
        }
        self.warnings = decision.warnings;
        self.ramping = decision.ramping;
        self.decisions = decision.backends;
        let ops = reconcile::plan(&decision.desired, &self.current)?;
        for op in &ops {
            log_op(op);
            self.balancer.apply(op)?;
            self.current.apply(op);
        }
        if !ops.is_empty() {
            self.generation += 1;
            self.fingerprints = fingerprints(&self.current, &self.config);
        }
        if let Ok(mut plan) = self.recount_plan.lock() {
            *plan = RecountPlan::new(&self.current, IdleTimeouts::of(&self.config.instance));
        }
        if !ops.is_empty() {
            self.refresh_next_hops();
        }
        Ok(())
    }

    /// Brings the data plane's next hops in step with the kernel's route and neighbour tables.
    /// A failure leaves the map as it was, and the next tick tries again.
    fn refresh_next_hops(&mut self) {
        match self.next_hops.refresh(&self.current.backends, &mut self.balancer) {
            Ok(changes) => {
                for c in changes {
                    if c.hop.is_known() {
                        tracing::info!(id = c.id, backend = %c.backend, ifindex = c.hop.ifindex, mac = %show_mac(c.hop.dst_mac), "next hop resolved");
                    } else {
                        tracing::info!(id = c.id, backend = %c.backend, "no next hop known: the data plane asks the FIB");
                    }
                }
            }
            Err(e) => tracing::warn!("refreshing next hops failed: {e:#}"),
        }
    }

    /// Starts, stops and restarts health-check tasks to match the configuration.
    fn sync_checks(&mut self) {
        let mut wanted: BTreeMap<HealthKey, (Target, HealthCheck)> = BTreeMap::new();
        for vip in &self.config.vips {
            for b in &vip.backends {
                if let Some(check) = vip.check_for(b) {
                    let target = Target { vip: vip.name.clone(), vip_address: vip.address, backend: b.address };
                    wanted.insert((vip.name.clone(), b.address), (target, check.clone()));
                }
            }
        }
        let stale: Vec<HealthKey> = self
            .checks
            .iter()
            .filter(|(k, (c, _))| wanted.get(*k).is_none_or(|(_, w)| w != c))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some((_, task)) = self.checks.remove(&key) {
                task.abort();
            }
            if !wanted.contains_key(&key) {
                self.health.remove(&key);
            }
        }
        for (key, (target, check)) in wanted {
            if !self.checks.contains_key(&key) {
                let task = tokio::spawn(health::run(target, check.clone(), self.outcomes.clone()));
                self.checks.insert(key, (check, task));
            }
        }
    }

    fn record(&mut self, outcome: Outcome) {
        let key = (outcome.target.vip.clone(), outcome.target.backend);
        let Some((check, _)) = self.checks.get(&key) else { return };
        let check = check.clone();
        let health = self.health.entry(key).or_default();
        health.last_latency = Some(outcome.latency);
        if let Some(e) = &outcome.error {
            health.last_error = Some(e.clone());
        }
        match health.record(outcome.ok, &check, Instant::now()) {
            Some(true) => tracing::info!(vip = %outcome.target.vip, backend = %outcome.target.backend, "backend is up"),
            Some(false) => tracing::warn!(
                vip = %outcome.target.vip,
                backend = %outcome.target.backend,
                error = outcome.error.as_deref().unwrap_or(""),
                "backend is down"
            ),
            None => return,
        }
        if let Err(e) = self.apply() {
            tracing::error!("applying a health change failed: {e:#}");
        }
    }

    fn tick(&mut self) {
        self.refresh_next_hops();
        if policy::update_response_factors(&self.config, &mut self.health)
            && let Err(e) = self.apply()
        {
            tracing::error!("applying response-time weights failed: {e:#}");
        }
        if mtime(&self.config_path) != self.config_mtime {
            tracing::info!(path = %self.config_path.display(), "configuration file changed: reloading");
            if let Err(e) = self.reload() {
                tracing::error!("reload refused, nothing changed: {e:#}");
            }
        } else if self.ramping
            && let Err(e) = self.apply()
        {
            tracing::error!("slow start step failed: {e:#}");
        }
    }

    /// Re-reads the configuration file and applies it; a file that fails validation changes nothing.
    fn reload(&mut self) -> anyhow::Result<()> {
        self.config_mtime = mtime(&self.config_path);
        let config = Config::load(&self.config_path)?;
        self.replace(config)
    }

    fn replace(&mut self, config: Config) -> anyhow::Result<()> {
        let (old, new) = (&self.config.instance, &config.instance);
        if old.name != new.name
            || old.interfaces != new.interfaces
            || old.xdp_mode != new.xdp_mode
            || old.control_socket != new.control_socket
            || old.metrics_address != new.metrics_address
        {
            anyhow::bail!(
                "instance name, interfaces, xdp_mode, control_socket and metrics_address change only with a restart of the agent"
            );
        }
        let previous = std::mem::replace(&mut self.config, config);
        if let Err(e) = self.apply() {
            self.config = previous;
            self.apply().context("restoring the previous configuration")?;
            return Err(e);
        }
        self.sync_checks();
        Ok(())
    }

    fn handle(&mut self, request: Request) -> Response {
        match &request {
            Request::Status => return Response::ok(self.status()),
            Request::ConfigDump => return Response::ok(json!(self.config.to_toml())),
            Request::VipList => return Response::ok(json!(self.status()["vips"])),
            Request::BackendList { vip } => {
                let rows: Vec<_> =
                    self.backend_rows().into_iter().filter(|r| vip.as_ref().is_none_or(|v| r["vip"] == *v)).collect();
                return Response::ok(json!(rows));
            }
            Request::Reload => {
                return match self.reload() {
                    Ok(()) => Response::ok(json!({ "generation": self.generation })),
                    Err(e) => Response::error(format!("{e:#}")),
                };
            }
            _ => {}
        }
        match control::edit(&self.config, &request) {
            Ok(Some(config)) => match self.replace(config) {
                Ok(()) => {
                    tracing::info!(?request, generation = self.generation, "applied a live change");
                    Response::ok(json!({ "generation": self.generation }))
                }
                Err(e) => Response::error(format!("{e:#}")),
            },
            Ok(None) => Response::ok(json!(null)),
            Err(message) => Response::error(message),
        }
    }

    /// The backend id of `address` in the VIP named `vip`.
    fn backend_id(&self, vip: &str, address: IpAddr) -> Option<u32> {
        let key = self.config.vips.iter().find(|v| v.name == vip)?.key();
        let index = self.current.vips.get(&key)?.index as u16;
        let (family, addr) = lb_common::addr::to_key(address);
        self.current
            .backends
            .iter()
            .find(|(_, b)| b.vip_index == index && b.family == family && b.addr == addr)
            .map(|(id, _)| *id)
    }

    fn backend_rows(&self) -> Vec<serde_json::Value> {
        self.decisions
            .iter()
            .map(|d| {
                let h = self.health.get(&(d.vip.clone(), d.address));
                let active_flows =
                    self.backend_id(&d.vip, d.address).and_then(|id| self.balancer.active_flows(id).ok());
                json!({
                    "vip": d.vip,
                    "address": d.address.to_string(),
                    "admin": d.admin,
                    "health": d.health,
                    "weight": d.weight,
                    "effective_weight": d.effective_weight,
                    "in_table": d.in_table,
                    "keeps_flows": d.keeps_flows,
                    "active_flows": active_flows.map(|n| n.max(0)),
                    "last_error": h.and_then(|h| h.last_error.clone()),
                    "check_latency_ms": h.and_then(|h| h.last_latency).map(|l| l.as_secs_f64() * 1000.0),
                })
            })
            .collect()
    }

    fn status(&self) -> serde_json::Value {
        let vips: Vec<_> = self
            .config
            .vips
            .iter()
            .map(|v| {
                let index = self.current.vips.get(&v.key()).map(|t| t.index);
                let flood = index.and_then(|i| self.balancer.flood(i).ok()).unwrap_or_default();
                let refused = index.and_then(|i| self.balancer.refusals(i).ok()).unwrap_or_default();
                let a = &v.admission;
                let admission = json!({
                    "allow": a.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "deny": a.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "packets_per_second": a.packets.map(|r| r.per_second),
                    "packet_burst": a.packets.map(|r| r.burst),
                    "new_flows_per_second": a.new_flows.map(|r| r.per_second),
                    "new_flow_burst": a.new_flows.map(|r| r.burst),
                    "source_prefix_v4": a.source_prefix_v4,
                    "source_prefix_v6": a.source_prefix_v6,
                    "refused": lb_common::admission::REFUSALS
                        .iter()
                        .zip(refused)
                        .map(|(r, n)| (r.name().to_string(), json!(n)))
                        .collect::<serde_json::Map<_, _>>(),
                });
                json!({
                    "name": v.name,
                    "address": v.address.to_string(),
                    "port": v.port,
                    "protocol": v.protocol.to_string(),
                    "scheduler": v.scheduler.name(),
                    "table_size": v.table_size,
                    "fingerprint": self.fingerprints.get(&v.name),
                    "backends": v.backends.len(),
                    "new_flow_budget": v.new_flow_budget,
                    "flooding_cpus": flood.flooding_cpus,
                    "untracked_flows": flood.untracked,
                    "admission": admission,
                })
            })
            .collect();
        json!({
            "instance": self.config.instance.name,
            "config": self.config_path.display().to_string(),
            "generation": self.generation,
            "flow_hash_key": if self.config.instance.flow_hash_key.is_some() { "configured" } else { "public" },
            "source_buckets": self.balancer.source_buckets_in_use().ok(),
            "warnings": self.warnings.iter().chain(&self.host_warnings).collect::<Vec<_>>(),
            "vips": vips,
            "backends": self.backend_rows(),
        })
    }
}

fn log_op(op: &Op) {
    match op {
        Op::SetDataplane(d) => {
            tracing::info!(mtu = d.mtu, udp_idle_timeout_ns = d.udp_idle_timeout_ns, "set instance settings")
        }
        Op::SetBackend { id, backend } => tracing::info!(
            id,
            address = %show_addr(backend.family, &backend.addr),
            vip_index = backend.vip_index,
            keeps_flows = backend.keeps_flows(),
            "set backend"
        ),
        Op::InstallVip { key, vip } => tracing::info!(
            vip = %show_vip(key),
            index = vip.index,
            scheduler = vip.scheduling.scheduler,
            table_size = vip.table.len(),
            "installed table"
        ),
        Op::RemoveVip { key } => tracing::info!(vip = %show_vip(key), "removed VIP"),
        Op::ClearBackend { id } => tracing::info!(id, "removed backend"),
        Op::SetAdmission { index, admission } => tracing::info!(
            vip_index = index,
            checks = admission.policy.checks,
            listed = admission.lists.len(),
            "set admission"
        ),
    }
}

/// Seed of the table fingerprints (kept from when they shared the flow hash's seed, so that
/// fingerprints stay comparable across versions).
const FINGERPRINT_SEED: u32 = 0x4c42_5846;

/// Per VIP name: a hash of the live table as backend addresses, slot by slot.
fn fingerprints(current: &reconcile::Current, config: &Config) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for vip in &config.vips {
        let Some(reconcile::VipTable { table, .. }) = current.vips.get(&vip.key()) else { continue };
        let mut h = FINGERPRINT_SEED;
        for id in table {
            let addr = current.backends.get(id).map_or([0; 16], |b| b.addr);
            let words = lb_common::hash::le_words::<4>(&addr);
            h = murmur3_words(&[h, words[0], words[1], words[2], words[3]], 0);
        }
        out.insert(vip.name.clone(), if table.is_empty() { "empty".to_string() } else { format!("{h:08x}") });
    }
    out
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Binds the control socket: a directory only root can enter, a socket only root can open.
fn bind_control(socket: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if socket.exists() {
        // A live agent answers; a stale socket from a stopped one does not.
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(socket).is_err(),
            "another agent is running on {}; stop it first",
            socket.display()
        );
        std::fs::remove_file(socket)?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding the control socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_control(listener: UnixListener, requests: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Err(e) => Response::error(format!("not a request: {e}")),
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if requests.send((request, tx)).await.is_err() {
                        return;
                    }
                    rx.await.unwrap_or_else(|_| Response::error("the agent is stopping"))
                }
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// Asks the agent for its status through the same channel the control socket uses.
pub async fn status(requests: &mpsc::Sender<Pending>) -> Option<serde_json::Value> {
    let (tx, rx) = oneshot::channel();
    requests.send((Request::Status, tx)).await.ok()?;
    rx.await.ok().map(|r| r.body)
}

/// The FIB lookup of the data plane requires forwarding on the ingress interface.
fn enable_forwarding(interface: &str) {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{interface}/forwarding");
        match std::fs::write(&path, "1") {
            Ok(()) => tracing::debug!(path, "enabled forwarding"),
            Err(e) => {
                tracing::warn!(path, error = %e, "could not enable forwarding; next hops then come from the fallback MAC")
            }
        }
    }
}

/// The data plane needs a neighbour entry for each backend (or its gateway) to address frames,
/// and the kernel only keeps entries that traffic uses, which XDP bypasses. An empty datagram to
/// the discard port makes the kernel resolve and refresh the entry.
fn warm_neighbours(config: &Config) {
    let backends: BTreeSet<IpAddr> = config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
    for address in backends {
        let bind: SocketAddr = if address.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let sent = UdpSocket::bind(bind).and_then(|s| s.send_to(&[], SocketAddr::new(address, 9)));
        if let Err(e) = sent {
            tracing::debug!(%address, error = %e, "neighbour refresh failed");
        }
    }
}

/// The `Pending` type, for the metrics server.
pub type ControlSender = mpsc::Sender<Pending>;
