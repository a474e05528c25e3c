//! The VIPs' announcements: which addresses the balancer announces and why not the others,
//! decided in the agent's loop; and the speaker task that hands them to BIRD (file, then
//! `configure`) and reads the sessions' state every second, so the loop never waits for BIRD.
//!
//! What is announced is [`bgp::routes`]'s verdict. Backends start "up" when the agent starts, but
//! an address is announced on that assumption only if the file the previous agent left announced
//! it: a restart withdraws nothing, and an address that was not announced waits for a passed
//! check. Exiting leaves the file as it is.
//!
//! Plans are numbered; `lb status` shows the latest and the last BIRD took, so `lb node drain`
//! can wait until the withdrawal is in force.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Agent;
use crate::{
    bgp::{
        self, Route,
        bird::{self, Bird},
        render::{self, VipRoute},
    },
    config::bgp::Bgp,
    reconcile::policy::BackendDecision,
};

/// How often the speaker reads the sessions' state.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between attempts to hand BIRD a plan it refused or could not be reached for.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the speaker hands to BIRD.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    include: PathBuf,
    text: String,
    socket: PathBuf,
    /// The peers whose sessions are read.
    peers: Vec<PeerToRead>,
    /// The BFD protocol's name, if any peer runs BFD.
    bfd_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct PeerToRead {
    protocol: String,
    address: IpAddr,
    asn: u32,
}

/// What the speaker last learnt from BIRD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaking {
    /// The number of the last plan BIRD took (the agent numbers its plans from 1).
    pub applied: u64,
    /// Why BIRD has not taken the latest plan: the file could not be written, BIRD could not be
    /// reached, or it refused the configuration.
    pub problem: Option<String>,
    /// Why the sessions could not be read (the plan may be in force all the same).
    pub sessions_problem: Option<String>,
    pub sessions: Vec<Session>,
}

/// One peer's session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub protocol: String,
    pub address: IpAddr,
    pub asn: u32,
    /// BIRD's protocol state (up, start, down) and, for BGP, the session state (Established, ...).
    pub state: String,
    pub info: String,
    /// The BFD session's state (Up, Down, Init), if BFD runs for the peer.
    pub bfd: Option<String>,
}

impl Session {
    pub fn established(&self) -> bool {
        self.info.starts_with("Established")
    }
}

/// The latest plan and its number.
type Numbered = (u64, Option<Plan>);

/// The agent's handle on its speaker task.
pub(super) struct Speaker {
    plans: watch::Sender<Numbered>,
    speaking: Arc<Mutex<Speaking>>,
}

impl Speaker {
    pub(super) fn spawn() -> Self {
        let (plans, receiver) = watch::channel((0, None));
        let speaking = Arc::new(Mutex::new(Speaking::default()));
        tokio::spawn(speak(receiver, Arc::clone(&speaking)));
        Self { plans, speaking }
    }

    pub(super) fn speaking(&self) -> Speaking {
        self.speaking.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The number of the latest plan.
    pub(super) fn latest(&self) -> u64 {
        self.plans.borrow().0
    }

    /// Makes `plan` the latest, numbered anew, unless it already is.
    fn propose(&self, plan: Plan) {
        self.plans.send_if_modified(|(number, current)| {
            if current.as_ref() == Some(&plan) {
                return false;
            }
            *number += 1;
            *current = Some(plan);
            true
        });
    }
}

/// Hands every new plan to BIRD (retrying with a growing pause while BIRD refuses it or cannot
/// be reached) and reads the sessions every second.
async fn speak(mut plans: watch::Receiver<Numbered>, speaking: Arc<Mutex<Speaking>>) {
    let mut poll = tokio::time::interval(POLL);
    // The first plan is handed over even if the file already holds it: a previous agent may
    // have written it and stopped before BIRD read it.
    let mut applied = 0;
    let mut problem: Option<String> = None;
    let (mut retry_at, mut retry_after) = (tokio::time::Instant::now(), POLL);
    loop {
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                (retry_at, retry_after) = (tokio::time::Instant::now(), POLL);
            }
            _ = poll.tick() => {}
        }
        let (number, Some(plan)) = plans.borrow_and_update().clone() else { continue };
        // Someone else rewrote the file (`lb detach` under a running agent, whose data plane the
        // agent then repairs; a hand edit): the agent's version goes back, and to BIRD.
        if applied == number && std::fs::read(&plan.include).map_or(true, |text| text != plan.text.as_bytes()) {
            tracing::warn!(file = %plan.include.display(), "the announcements file changed under the agent: writing it again");
            applied = 0;
        }
        if applied != number && tokio::time::Instant::now() >= retry_at {
            match bgp::hand_over(&plan.include, &plan.text, &plan.socket).await.map_err(|e| e.to_string()) {
                Ok(()) => {
                    if problem.take().is_some() {
                        tracing::info!(socket = %plan.socket.display(), "BIRD took the announcements");
                    }
                    applied = number;
                    retry_after = POLL;
                }
                Err(e) => {
                    if problem.as_ref() != Some(&e) {
                        tracing::error!("announcing through BIRD: {e}; retrying, at most every {MAX_RETRY:?}");
                    }
                    problem = Some(e);
                    retry_at = tokio::time::Instant::now() + retry_after;
                    retry_after = (retry_after * 2).min(MAX_RETRY);
                }
            }
        }
        let (sessions, sessions_problem) = if plan.peers.is_empty() {
            (Vec::new(), None)
        } else {
            match sessions(&plan).await {
                Ok(sessions) => (sessions, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            }
        };
        if let Ok(mut s) = speaking.lock() {
            *s = Speaking { applied, problem: problem.clone(), sessions_problem, sessions };
        }
    }
}

/// The peers' sessions (and BFD sessions) as BIRD reports them now.
async fn sessions(plan: &Plan) -> Result<Vec<Session>, bird::BirdError> {
    let mut bird = Bird::connect(&plan.socket).await?;
    let protocols = bird::protocols(&bird.command("show protocols").await?);
    let bfd: BTreeMap<IpAddr, String> = match &plan.bfd_protocol {
        Some(name) => {
            bird::bfd_sessions(&bird.command(&format!("show bfd sessions {name}")).await?).into_iter().collect()
        }
        None => BTreeMap::new(),
    };
    Ok(plan
        .peers
        .iter()
        .map(|peer| {
            let row = protocols.iter().find(|p| p.name == peer.protocol);
            Session {
                protocol: peer.protocol.clone(),
                address: peer.address,
                asn: peer.asn,
                state: row.map_or_else(|| "missing".into(), |r| r.state.clone()),
                info: row.map(|r| r.info.clone()).unwrap_or_default(),
                bfd: bfd.get(&peer.address).cloned(),
            }
        })
        .collect())
}

/// `lb status`'s view of the announcements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub drained: bool,
    pub include: PathBuf,
    pub bird_socket: PathBuf,
    pub drain_grace_secs: u64,
    pub routes: Vec<Route>,
    /// The number of the agent's latest plan; BIRD has it when `speaking.applied` reaches it.
    pub plan: u64,
    #[serde(flatten)]
    pub speaking: Speaking,
}

impl BgpStatus {
    /// BIRD has the latest announcements.
    pub fn applied(&self) -> bool {
        self.speaking.applied >= self.plan && self.plan > 0
    }
}

impl Agent {
    /// Hands the announcements as they should be now to the speaker (which does nothing if they
    /// did not change), and logs each address announced or withdrawn.
    pub(super) fn announce(&mut self) {
        if !self.announcing {
            return;
        }
        let health = &self.health;
        let passed = |d: &BackendDecision| health.get(&(d.vip.clone(), d.address)).is_some_and(|h| h.passed);
        let standing = bgp::Standing {
            attached: self.data_plane.problem.is_none(),
            drained: self.drained,
            announced_at_start: &self.announced_at_start,
            passed: &passed,
        };
        let routes = bgp::routes(&self.config.vips, &self.decisions, &standing);
        // An address withdrawn for any reason needs evidence to come back.
        for r in routes.iter().filter(|r| r.withdrawn.is_some()) {
            self.announced_at_start.remove(&r.address);
        }
        let Some(plan) = self.plan(&routes) else { return };
        for r in &routes {
            let before = self.routes.iter().find(|o| o.address == r.address).map(|o| o.withdrawn);
            match (before, r.withdrawn) {
                (Some(Some(_)) | None, None) => tracing::info!(address = %r.address, "announcing"),
                (Some(None) | None, Some(why)) => {
                    tracing::warn!(address = %r.address, "not announcing: {}", why.describe());
                }
                _ => {}
            }
        }
        self.routes = routes;
        self.speaker.get_or_insert_with(Speaker::spawn).propose(plan);
    }

    /// The file for BIRD: the configured sessions and the announced routes; without `[bgp]`
    /// (removed by a reload), none, or a file without sessions if an earlier one exists.
    fn plan(&self, routes: &[Route]) -> Option<Plan> {
        let instance = &self.config.instance.name;
        let include = bgp::include_path(instance);
        let Some(config) = &self.config.bgp else {
            let earlier = std::fs::read_to_string(&include).ok()?;
            let socket = render::socket_of(&earlier)?.to_path_buf();
            let text = render::render_detached(instance, &socket);
            return Some(Plan { include, text, socket, peers: Vec::new(), bfd_protocol: None });
        };
        let vip_routes: Vec<VipRoute<'_>> = routes
            .iter()
            .filter_map(|r| {
                let vip = self.config.vips.iter().find(|v| v.address == r.address)?;
                Some(VipRoute { address: r.address, attributes: &vip.route, announced: r.withdrawn.is_none() })
            })
            .collect();
        Some(Plan {
            include,
            text: render::render(instance, config, &vip_routes),
            socket: config.bird_socket.clone(),
            peers: config
                .peers
                .iter()
                .map(|p| PeerToRead { protocol: Bgp::protocol_name(instance, &p.name), address: p.address, asn: p.asn })
                .collect(),
            bfd_protocol: config.peers.iter().any(|p| p.bfd).then(|| render::bfd_protocol_name(instance)),
        })
    }

    /// Drains the node (every address withdrawn) or undrains it; remembered across restarts and
    /// reboots until undrained.
    pub(super) fn set_drained(&mut self, drained: bool) -> std::io::Result<()> {
        let mark = bgp::drained_path(&self.config.instance.name);
        if drained {
            if let Some(dir) = mark.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&mark, b"drained by `lb node drain`; `lb node undrain` announces again\n")?;
        } else if let Err(e) = std::fs::remove_file(&mark)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(e);
        }
        self.drained = drained;
        self.announce();
        Ok(())
    }

    pub(super) fn bgp_status(&self) -> Option<BgpStatus> {
        let config = self.config.bgp.as_ref()?;
        Some(BgpStatus {
            drained: self.drained,
            include: bgp::include_path(&self.config.instance.name),
            bird_socket: config.bird_socket.clone(),
            drain_grace_secs: config.drain_grace.as_secs(),
            routes: self.routes.clone(),
            plan: self.speaker.as_ref().map_or(0, Speaker::latest),
            speaking: self.speaker.as_ref().map(Speaker::speaking).unwrap_or_default(),
        })
    }
}
