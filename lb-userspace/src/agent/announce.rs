//! The VIPs' announcements: which addresses the balancer announces and why not the others,
//! decided in the agent's loop; and the speaker task that hands them to BIRD (file, then
//! `configure`) and reads the sessions' state every second, so the loop never waits for BIRD.
//!
//! An address is announced while the data plane is attached as the agent left it, the node is
//! not drained, and a VIP at the address has a backend taking new flows (a VIP failing open keeps
//! its backends in the table, so it stays announced; failing closed empties it). A restarted agent
//! decides the same from the same configuration (backends start up), so a restart writes the
//! same file and withdraws nothing; exiting leaves the file as it is.

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
        render::{self, Announced},
    },
    config::bgp::Bgp,
};

/// How often the speaker reads the sessions' state (and retries a configuration BIRD refused).
const POLL: Duration = Duration::from_secs(1);

/// What the speaker hands to BIRD.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    include: PathBuf,
    text: String,
    socket: PathBuf,
    /// Each peer's protocol name and address, for reading their sessions.
    peers: Vec<(String, IpAddr, u32)>,
}

/// What the speaker last learnt from BIRD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Speaking {
    /// BIRD accepted the current file.
    pub applied: bool,
    /// Why the last configuration or reading failed.
    pub problem: Option<String>,
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

/// The agent's handle on its speaker task.
pub(super) struct Speaker {
    plans: watch::Sender<Option<Plan>>,
    pub(super) speaking: Arc<Mutex<Speaking>>,
}

impl Speaker {
    pub(super) fn spawn() -> Self {
        let (plans, receiver) = watch::channel(None);
        let speaking = Arc::new(Mutex::new(Speaking::default()));
        tokio::spawn(speak(receiver, Arc::clone(&speaking)));
        Self { plans, speaking }
    }

    pub(super) fn speaking(&self) -> Speaking {
        self.speaking.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Hands every new plan to BIRD, retrying until it takes it, and reads the sessions.
async fn speak(mut plans: watch::Receiver<Option<Plan>>, speaking: Arc<Mutex<Speaking>>) {
    let mut poll = tokio::time::interval(POLL);
    // The first plan is configured even if the file already holds it: a previous agent may have
    // written it and stopped before BIRD read it.
    let mut pending = true;
    let mut logged: Option<String> = None;
    loop {
        tokio::select! {
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                pending = true;
            }
            _ = poll.tick() => {}
        }
        let Some(plan) = plans.borrow_and_update().clone() else { continue };
        // Someone else rewrote the file (`lb detach` under a running agent, whose data plane the
        // agent then repairs; a hand edit): the agent's version goes back, and to BIRD.
        if !pending && std::fs::read(&plan.include).map_or(true, |text| text != plan.text.as_bytes()) {
            tracing::warn!(file = %plan.include.display(), "the announcements file changed under the agent: writing it again");
            pending = true;
        }
        let mut state = Speaking { applied: !pending, ..Speaking::default() };
        let result = async {
            if pending {
                bgp::write_if_changed(&plan.include, &plan.text)
                    .map_err(|e| format!("writing {}: {e}", plan.include.display()))?;
                Bird::connect(&plan.socket)
                    .await
                    .map_err(|e| e.to_string())?
                    .configure()
                    .await
                    .map_err(|e| e.to_string())?;
                pending = false;
                state.applied = true;
            }
            state.sessions = sessions(&plan).await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        match result {
            Ok(()) => {
                if logged.take().is_some() {
                    tracing::info!(socket = %plan.socket.display(), "BIRD took the announcements again");
                }
            }
            Err(problem) => {
                if logged.as_ref() != Some(&problem) {
                    tracing::error!("announcing through BIRD: {problem}");
                    logged = Some(problem.clone());
                }
                state.problem = Some(problem);
            }
        }
        if let Ok(mut s) = speaking.lock() {
            *s = state;
        }
    }
}

/// The peers' sessions (and BFD sessions) as BIRD reports them now.
async fn sessions(plan: &Plan) -> Result<Vec<Session>, bird::BirdError> {
    let mut bird = Bird::connect(&plan.socket).await?;
    let protocols = bird::protocols(&bird.command("show protocols").await?);
    let bfd: BTreeMap<IpAddr, String> = match bird.command("show bfd sessions").await {
        Ok(reply) => bird::bfd_sessions(&reply).into_iter().collect(),
        // No BFD protocol configured.
        Err(bird::BirdError::Refused { .. }) => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    Ok(plan
        .peers
        .iter()
        .map(|(name, address, asn)| {
            let row = protocols.iter().find(|p| p.name == *name);
            Session {
                protocol: name.clone(),
                address: *address,
                asn: *asn,
                state: row.map_or_else(|| "missing".into(), |r| r.state.clone()),
                info: row.map(|r| r.info.clone()).unwrap_or_default(),
                bfd: bfd.get(address).cloned(),
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
    #[serde(flatten)]
    pub speaking: Speaking,
}

impl Agent {
    /// Hands the announcements as they should be now to the speaker (which does nothing if they
    /// did not change), and logs each address announced or withdrawn.
    pub(super) fn announce(&mut self) {
        if !self.announcing {
            return;
        }
        let attached = self.data_plane.problem.is_none();
        let routes = bgp::routes(&self.config.vips, &self.decisions, attached, self.drained);
        let Some(plan) = self.plan(&routes) else { return };
        for r in &routes {
            let before = self.routes.iter().find(|o| o.address == r.address).map(|o| o.withdrawn);
            match (before, r.withdrawn) {
                (Some(Some(_)) | None, None) => tracing::info!(address = %r.address, "announcing"),
                (Some(None) | None, Some(why)) => {
                    tracing::warn!(address = %r.address, "withdrawing: {}", why.describe());
                }
                _ => {}
            }
        }
        self.routes = routes;
        let speaker = self.speaker.get_or_insert_with(Speaker::spawn);
        speaker.plans.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&plan);
            *current = Some(plan);
            changed
        });
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
            return Some(Plan { include, text, socket, peers: Vec::new() });
        };
        let announced: Vec<Announced<'_>> = routes
            .iter()
            .filter(|r| r.withdrawn.is_none())
            .filter_map(|r| {
                let vip = self.config.vips.iter().find(|v| v.address == r.address)?;
                Some(Announced { address: r.address, attributes: &vip.route })
            })
            .collect();
        Some(Plan {
            include,
            text: render::render(instance, config, &announced),
            socket: config.bird_socket.clone(),
            peers: config.peers.iter().map(|p| (Bgp::protocol_name(instance, &p.name), p.address, p.asn)).collect(),
        })
    }

    /// Drains the node (every address withdrawn) or undrains it; remembered across restarts.
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
            speaking: self.speaker.as_ref().map(Speaker::speaking).unwrap_or_default(),
        })
    }
}
