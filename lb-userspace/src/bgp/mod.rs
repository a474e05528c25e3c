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
//! Rooms: this file (what is announced and why, the file's place), [`render`] (the file's text,
//! pure), [`bird`] (the control socket's protocol and the replies the agent reads).

pub mod bird;
pub mod render;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where the agent of `instance` writes its part of BIRD's configuration.
pub fn include_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/lb/{instance}.bird.conf"))
}

/// The mark of a drained node: it stays drained across agent restarts (not across reboots:
/// `/run` is emptied).
pub fn drained_path(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/lb/{instance}.drained"))
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
}

impl Withdrawn {
    /// The reason as the status's JSON and the metrics name it.
    pub fn label(self) -> &'static str {
        match self {
            Withdrawn::NotAttached => "not_attached",
            Withdrawn::Drained => "drained",
            Withdrawn::NoServingBackend => "no_serving_backend",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Withdrawn::NotAttached => "the data plane is not attached",
            Withdrawn::Drained => "the node is drained",
            Withdrawn::NoServingBackend => "no VIP at this address has a serving backend",
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

/// Writes `text` to `path` whole or not at all (a temporary file renamed over it), unless it
/// already holds exactly that; returns whether it wrote.
pub fn write_if_changed(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A dot file: a glob such as `/run/lb/*.bird.conf` in bird.conf never reads it half-written.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)?;
    Ok(true)
}
