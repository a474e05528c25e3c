//! `lb run`: the agent. Turns a configuration into a live data plane and keeps it right as
//! health, operators and the configuration change.
//!
//! Start-up: validate the configuration (nothing is touched if it fails), open or adopt the
//! pinned maps, apply the policy's desired state, attach (or replace the program inside the
//! pinned links), start one health-check task per checked backend and the control socket. Then
//! one loop owns all state: probe outcomes, control requests, SIGHUP and configuration file
//! changes (both reload: the file is read and validated off the loop, so a large or broken one
//! delays nothing), a slow-start tick. On SIGTERM or SIGINT the agent exits and the data
//! plane keeps forwarding; the next `lb run` adopts it. `lb detach` removes it.
//!
//! Rooms: this file (the loop and the state it owns), `upkeep.rs` (attaching, the self-check
//! and its repairs), `checks.rs` (running the probes and counting their outcomes), [`control`]
//! (the socket's protocol, its server and its client), [`status`] (what the agent tells about
//! itself, typed), [`fleet`] (comparing balancers' tables), [`health`] (probes), [`active`]
//! (the recount of active flows), [`delivery`]
//! (whether the drivers transmit what the data plane forwards), [`announce`] (the VIPs' BGP
//! announcements and the task that hands them to BIRD), [`metrics`] (Prometheus).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use lb_common::hash::murmur3_words;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

pub mod active;
pub mod announce;
mod checks;
pub mod control;
pub mod delivery;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod status;
mod upkeep;

use self::{
    active::{IdleTimeouts, RecountPlan},
    checks::Probe,
    control::{Request, Response},
    delivery::DeliveryWatch,
    health::Outcome,
    status::{Changed, DataPlaneHealth},
};
use crate::{
    config::Config,
    dataplane::{Balancer, BalancerSizes, PinDir},
    host::{self, nexthop::NextHops},
    label::{show_addr, show_mac, show_vip},
    reconcile::{
        self, Op,
        policy::{self, BackendDecision, HealthStates},
    },
};

/// A configuration file read and validated off the loop, and who asked.
struct Loaded {
    config: anyhow::Result<Config>,
    reply: Option<oneshot::Sender<Response>>,
}

/// How often backends' neighbour entries are refreshed (see [`NextHops::warm`]).
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(10);
/// How often slow starts advance and the configuration file is looked at.
const TICK: Duration = Duration::from_secs(1);

struct Agent {
    config_path: PathBuf,
    config_mtime: Option<SystemTime>,
    config: Config,
    balancer: Balancer,
    pins: PinDir,
    health: HealthStates,
    /// The running probes by id, each with the (VIP, backend) pairs that count its outcomes.
    probes: BTreeMap<u64, Probe>,
    next_probe: u64,
    outcomes: mpsc::Sender<Outcome>,
    /// What the maps hold: read once at start, then kept up to date as the only writer.
    current: reconcile::Current,
    decisions: Vec<BackendDecision>,
    warnings: Vec<String>,
    /// Problems of the host the agent found and could not repair (interfaces that strip VLAN
    /// tags), shown with the policy's warnings.
    host_warnings: Vec<String>,
    /// What the last self-check of the pinned data plane found ([`Agent::self_check`]).
    data_plane: DataPlaneHealth,
    /// The interfaces' drivers' XDP transmit errors, read every tick.
    delivery: DeliveryWatch,
    ramping: bool,
    /// The tables built for the VIPs' current members (see [`reconcile::TableCache`]).
    tables: reconcile::TableCache,
    /// Table fingerprints per VIP name (a hash of the table's backend addresses, slot by slot:
    /// equal on every balancer with the same configuration and health).
    fingerprints: BTreeMap<String, String>,
    generation: u64,
    /// What the recount thread needs to know of the maps (see [`active`]).
    recount_plan: Arc<Mutex<RecountPlan>>,
    /// Backends' next hops for the data plane, refreshed every tick and after every change.
    next_hops: NextHops,
    /// What the last failed repair of the data plane was about, so that it is logged once.
    failed_repair: Option<String>,
    /// Interfaces found down by [`Agent::egress_down`], until a probe through them succeeds.
    links_down: BTreeSet<u32>,
    /// Announcements start once the data plane is attached.
    announcing: bool,
    /// `lb node drain`: every VIP address withdrawn.
    drained: bool,
    /// The addresses the announcements file held when the agent started (see [`announce`]).
    announced_at_start: BTreeSet<std::net::IpAddr>,
    /// The VIP addresses and whether they are announced, as last handed to the speaker.
    routes: Vec<crate::bgp::Route>,
    /// The task that hands announcements to BIRD; started with the first.
    speaker: Option<announce::Speaker>,
}

pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    raise_open_file_limit();
    let (mut agent, outcomes) = Agent::start(config_path)?;
    let (request_tx, requests) = mpsc::channel::<control::Pending>(64);
    let socket = agent.config.instance.control_socket.clone();
    let listener = control::bind(&socket)?;
    tokio::spawn(control::serve(listener, request_tx.clone()));
    if let Some(address) = agent.config.instance.metrics_address {
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding metrics on {address}"))?;
        tracing::info!(%address, "serving Prometheus metrics");
        tokio::spawn(metrics::serve(listener, request_tx, agent.pins.clone()));
    }
    tracing::info!(
        instance = %agent.config.instance.name,
        vips = agent.config.vips.len(),
        backends = agent.config.backend_count(),
        control = %socket.display(),
        "running"
    );
    // Under systemd (Type=notify): ready once attached and reconciled. Elsewhere a no-op.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!("telling systemd the agent is ready: {e}");
    }
    agent.serve(outcomes, requests).await?;
    for (_, probe) in std::mem::take(&mut agent.probes) {
        probe.task.abort();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!(
        pins = %agent.pins.root().display(),
        "exiting; the data plane keeps forwarding. `lb detach --instance {}` removes it",
        agent.config.instance.name
    );
    Ok(())
}

/// Each UDP health check keeps a socket open, so thousands of checks need more descriptors
/// than the usual soft limit (1024): it is raised to the hard limit, as far as that goes.
pub(crate) fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) != 0 {
            tracing::warn!(soft = limit.rlim_cur, "could not raise the open file limit");
        }
    }
}

impl Agent {
    /// Validates the configuration, opens (or adopts) the pinned data plane, applies the desired
    /// state, readies the host, attaches, and starts the health checks and the recount. Returns
    /// the agent and where probe outcomes arrive.
    fn start(config_path: &Path) -> anyhow::Result<(Self, mpsc::Receiver<Outcome>)> {
        let config = Config::load(config_path)?;
        let pins = PinDir::instance(&config.instance.name);
        let adopting = pins.exists();
        let sizes = BalancerSizes {
            flow_table_entries: config.instance.flow_table_entries,
            ipv6_flow_table_entries: config.instance.ipv6_flow_table_entries,
        };
        let balancer = Balancer::open_pinned(sizes, &pins)
            .with_context(|| format!("opening the data plane pinned at {}", pins.root().display()))?;
        if adopting {
            tracing::info!(pins = %pins.root().display(), "adopting the pinned data plane");
        }
        let (outcome_tx, outcome_rx) = mpsc::channel(1024);
        let current = balancer.current().context("reading the current data plane state")?;
        let mut agent = Agent {
            current,
            config_path: config_path.to_path_buf(),
            config_mtime: mtime(config_path),
            config,
            balancer,
            pins,
            health: HealthStates::new(),
            probes: BTreeMap::new(),
            next_probe: 0,
            outcomes: outcome_tx,
            decisions: Vec::new(),
            warnings: Vec::new(),
            host_warnings: Vec::new(),
            data_plane: DataPlaneHealth::default(),
            delivery: DeliveryWatch::default(),
            ramping: false,
            tables: reconcile::TableCache::default(),
            fingerprints: BTreeMap::new(),
            generation: 0,
            recount_plan: Arc::default(),
            next_hops: NextHops::new().context("opening an rtnetlink socket for next hops")?,
            links_down: BTreeSet::new(),
            failed_repair: None,
            announcing: false,
            drained: false,
            announced_at_start: BTreeSet::new(),
            routes: Vec::new(),
            speaker: None,
        };
        agent.drained = crate::bgp::drained_path(&agent.config.instance.name).exists();
        agent.announced_at_start = std::fs::read_to_string(crate::bgp::include_path(&agent.config.instance.name))
            .map(|text| crate::bgp::render::announced_in(&text))
            .unwrap_or_default();
        agent.apply()?;
        agent.fingerprints = fingerprints(&agent.current, &agent.config);
        agent.ready_host();
        agent.attach()?;
        agent.announcing = true;
        agent.announce();
        agent.sync_checks();
        active::spawn(agent.pins.clone(), Arc::clone(&agent.recount_plan)).context("starting the recount thread")?;
        Ok((agent, outcome_rx))
    }

    /// Forwarding on, neighbours warmed, next hops resolved, VLAN tags kept on every interface.
    fn ready_host(&mut self) {
        for interface in &self.config.instance.interfaces {
            host::enable_forwarding(interface);
        }
        self.warm_neighbours();
        // Give the first packets their next hops (entries the warming creates arrive on later ticks).
        self.refresh_next_hops();
        for interface in &self.config.instance.interfaces {
            match host::vlan::keep_vlan_tags(interface) {
                Ok(off) if !off.is_empty() => {
                    tracing::info!(interface, features = ?off, "turned receive VLAN offload off");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("{e}");
                    self.host_warnings.push(e.to_string());
                }
            }
        }
    }

    /// The loop that owns all state, until SIGTERM or SIGINT.
    async fn serve(
        &mut self,
        mut outcomes: mpsc::Receiver<Outcome>,
        mut requests: mpsc::Receiver<control::Pending>,
    ) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
        let mut tick = tokio::time::interval(TICK);
        let (loaded_tx, mut loaded) = mpsc::channel::<Loaded>(16);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.load(&loaded_tx, None);
                }
                _ = refresh.tick() => self.warm_neighbours(),
                _ = tick.tick() => {
                    if self.tick() {
                        tracing::info!(path = %self.config_path.display(), "configuration file changed: reloading");
                        self.load(&loaded_tx, None);
                    }
                }
                Some(outcome) = outcomes.recv() => {
                    // Every outcome already waiting, then one reconciliation for all the health
                    // changes among them (a backend that many VIPs check fails for all at once).
                    let mut changed = self.record(outcome);
                    while let Ok(outcome) = outcomes.try_recv() {
                        changed |= self.record(outcome);
                    }
                    if changed && let Err(e) = self.apply() {
                        tracing::error!("applying a health change failed: {e:#}");
                    }
                }
                Some(done) = loaded.recv() => self.reload(done),
                Some((request, reply)) = requests.recv() => match request {
                    Request::Reload => self.load(&loaded_tx, Some(reply)),
                    request => {
                        let response = self.handle(request);
                        let _ = reply.send(response);
                    }
                },
            }
        }
    }

    /// Reads and validates the configuration file away from this loop (a large or broken file
    /// must not delay health checks or the control socket); [`Agent::reload`] applies the result.
    fn load(&mut self, loaded: &mpsc::Sender<Loaded>, reply: Option<oneshot::Sender<Response>>) {
        self.config_mtime = mtime(&self.config_path);
        let (path, loaded) = (self.config_path.clone(), loaded.clone());
        tokio::task::spawn_blocking(move || {
            let config = Config::load(&path).map_err(anyhow::Error::from);
            let _ = loaded.blocking_send(Loaded { config, reply });
        });
    }

    /// Decides with the policy and reconciles the maps to it, logging each change.
    fn apply(&mut self) -> anyhow::Result<()> {
        let decision = policy::decide(&self.config, &self.health, Instant::now());
        for w in decision.warnings.iter().filter(|w| !self.warnings.contains(w)) {
            tracing::warn!("{w}");
        }
        self.warnings = decision.warnings;
        self.ramping = decision.ramping;
        self.decisions = decision.backends;
        let ops = reconcile::plan_cached(&decision.desired, &self.current, &mut self.tables)?;
        for op in &ops {
            log_op(op);
            self.balancer.apply(op)?;
            self.current.apply(op);
        }
        if !ops.is_empty() {
            self.generation += 1;
            self.update_fingerprints(&ops);
        }
        if let Ok(mut plan) = self.recount_plan.lock() {
            *plan = RecountPlan::new(&self.current, IdleTimeouts::of(&self.config.instance));
        }
        if !ops.is_empty() {
            self.refresh_next_hops();
        }
        self.announce();
        Ok(())
    }

    /// The fingerprints of the VIPs whose tables `ops` installed (all of them when the
    /// configuration's VIPs differ from those fingerprinted).
    fn update_fingerprints(&mut self, ops: &[Op]) {
        let same_vips = self.fingerprints.len() == self.config.vips.len()
            && self.config.vips.iter().all(|v| self.fingerprints.contains_key(&v.name));
        if !same_vips {
            self.fingerprints = fingerprints(&self.current, &self.config);
            return;
        }
        for op in ops {
            let Op::InstallVip { key, .. } = op else { continue };
            let Some(vip) = self.config.vips.iter().find(|v| v.key() == *key) else { continue };
            if let Some(print) = fingerprint(&self.current, *key) {
                self.fingerprints.insert(vip.name.clone(), print);
            }
        }
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
        // Resolved now rather than at the next warming round (an interface that came back up
        // has lost every entry).
        let unresolved: Vec<std::net::IpAddr> = self.next_hops.unresolved().iter().copied().collect();
        if let Err(e) = self.next_hops.warm(unresolved) {
            tracing::warn!("resolving next hops failed: {e}");
        }
    }

    /// Has the kernel resolve (or confirm) every configured backend's neighbour entry.
    fn warm_neighbours(&mut self) {
        let backends: BTreeSet<std::net::IpAddr> =
            self.config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).collect();
        if let Err(e) = self.next_hops.warm(backends) {
            tracing::warn!("refreshing neighbour entries failed: {e}");
        }
    }

    /// Next hops, response-time weights, slow starts; whether the configuration file changed.
    fn tick(&mut self) -> bool {
        self.self_check();
        self.announce();
        self.watch_delivery();
        self.refresh_next_hops();
        if policy::update_response_factors(&self.config, &mut self.health)
            && let Err(e) = self.apply()
        {
            tracing::error!("applying response-time weights failed: {e:#}");
        }
        if mtime(&self.config_path) != self.config_mtime {
            return true;
        }
        if self.ramping
            && let Err(e) = self.apply()
        {
            tracing::error!("slow start step failed: {e:#}");
        }
        false
    }

    /// Applies a loaded configuration file; one that failed validation changes nothing. Answers
    /// the `lb reload` that asked for it, if one did.
    fn reload(&mut self, loaded: Loaded) {
        let applied = loaded.config.and_then(|config| self.replace(config));
        if let Err(e) = &applied {
            tracing::error!("reload refused, nothing changed: {e:#}");
        }
        if let Some(reply) = loaded.reply {
            let _ = reply.send(match applied {
                Ok(()) => Response::answer(&Some(Changed { generation: self.generation })),
                Err(e) => Response::error(format!("{e:#}")),
            });
        }
    }

    fn replace(&mut self, config: Config) -> anyhow::Result<()> {
        // A change is acknowledged only once it is in a data plane that is attached.
        if !self.self_check() {
            anyhow::bail!(
                "the data plane is not as the agent left it ({}); nothing changed",
                self.data_plane.problem.as_deref().unwrap_or("unknown")
            );
        }
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
        // And checked again once in the maps: what was detached meanwhile is attached again, or
        // the answer says why the change does not reach traffic.
        if !self.self_check() {
            anyhow::bail!(
                "the change is in the maps, but the data plane is not as the agent left it ({}): it does not reach \
                 traffic until that is resolved",
                self.data_plane.problem.as_deref().unwrap_or("unknown")
            );
        }
        Ok(())
    }

    fn handle(&mut self, request: Request) -> Response {
        match &request {
            Request::Status => return Response::answer(&self.status()),
            Request::ConfigDump => return Response::answer(&self.config.to_toml()),
            Request::Node { drain } => {
                if self.config.bgp.is_none() {
                    return Response::error(format!(
                        "instance {} announces nothing (its configuration has no [bgp]): there is nothing to {}",
                        self.config.instance.name,
                        if *drain { "withdraw" } else { "announce" }
                    ));
                }
                return match self.set_drained(*drain) {
                    Ok(()) => {
                        tracing::warn!(drained = drain, "node {}", if *drain { "drained" } else { "undrained" });
                        Response::answer(&self.bgp_status())
                    }
                    Err(e) => Response::error(format!(
                        "recording the drain at {}: {e}",
                        crate::bgp::drained_path(&self.config.instance.name).display()
                    )),
                };
            }
            Request::VipList => return Response::answer(&self.vip_rows()),
            Request::BackendList { vip } => {
                let mut rows = self.backend_rows();
                rows.retain(|r| vip.as_ref().is_none_or(|v| r.decision.vip == *v));
                return Response::answer(&rows);
            }
            _ => {}
        }
        match control::edit(&self.config, &request) {
            Ok(Some(config)) => match self.replace(config) {
                Ok(()) => {
                    tracing::info!(?request, generation = self.generation, "applied a live change");
                    Response::answer(&Some(Changed { generation: self.generation }))
                }
                Err(e) => Response::error(format!("{e:#}")),
            },
            Ok(None) => Response::answer(&None::<Changed>),
            Err(message) => Response::error(message),
        }
    }
}

fn log_op(op: &Op) {
    match op {
        Op::SetDataplane(d) => {
            tracing::info!(mtu = d.mtu, udp_idle_timeout_ns = d.udp_idle_timeout_ns, "set instance settings");
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
        Op::SetQuicServers { index, servers } => {
            tracing::info!(vip_index = index, server_ids = servers.len(), "set QUIC server ids");
        }
    }
}

/// Seed of the table fingerprints (kept from when they shared the flow hash's seed, so that
/// fingerprints stay comparable across versions).
const FINGERPRINT_SEED: u32 = 0x4c42_5846;

/// Per VIP name: a hash of the live table as backend addresses, slot by slot.
fn fingerprints(current: &reconcile::Current, config: &Config) -> BTreeMap<String, String> {
    config.vips.iter().filter_map(|vip| Some((vip.name.clone(), fingerprint(current, vip.key())?))).collect()
}

/// A hash of VIP `key`'s live table as backend addresses, slot by slot.
fn fingerprint(current: &reconcile::Current, key: lb_common::vip::VipKey) -> Option<String> {
    let reconcile::VipTable { table, .. } = current.vips.get(&key)?;
    let mut h = FINGERPRINT_SEED;
    for id in table {
        let addr = current.backends.get(id).map_or([0; 16], |b| b.addr);
        let words = lb_common::hash::le_words::<4>(&addr);
        h = murmur3_words(&[h, words[0], words[1], words[2], words[3]], 0);
    }
    Some(if table.is_empty() { "empty".to_string() } else { format!("{h:08x}") })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
