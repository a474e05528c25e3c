//! What the agent tells about itself: the answers to `status`, `vip list` and `backend list` on
//! the control socket, typed once for the agent that builds them and for the CLI, the metrics
//! server and the tests that read them.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Instant};

use serde::{Deserialize, Serialize};

use super::Agent;
use crate::{
    config::{Named as _, Protocol, Vip},
    dataplane::VipFlood,
    reconcile::policy::BackendDecision,
};

/// The agent's whole state as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    /// The configuration file the agent reloads from.
    pub config: PathBuf,
    /// Changes applied to the data plane since the agent started.
    pub generation: u64,
    pub flow_hash_key: FlowHashKey,
    /// Client prefixes with per-source rate buckets now (`None` if the map could not be read).
    pub source_buckets: Option<usize>,
    /// The policy's and the host's problems, worst first.
    pub warnings: Vec<String>,
    pub data_plane: DataPlaneHealth,
    pub vips: Vec<VipStatus>,
    pub backends: Vec<BackendStatus>,
    /// The VIPs' announcements, if the configuration has `[bgp]`.
    #[serde(default)]
    pub bgp: Option<super::announce::BgpStatus>,
}

/// The agent's self-check of its data plane: pinned maps, and each interface's program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneHealth {
    /// What is wrong now and could not be repaired; `None`: the data plane is as it should be.
    pub problem: Option<String>,
    /// Repairs since the agent started.
    pub repairs: u64,
    /// What the last repair put right.
    pub last_repaired: Option<String>,
    /// Interfaces whose drivers lately failed to transmit the frames the balancer forwards
    /// ([`super::delivery`]); `None`: every interface delivers.
    #[serde(default)]
    pub delivery_problem: Option<String>,
    /// Per interface, the driver's count of XDP frames it could not transmit (interfaces whose
    /// drivers have no such counter are absent).
    #[serde(default)]
    pub xdp_transmit_errors: BTreeMap<String, u64>,
}

/// Whether the flow hash has the operator's key or the public default one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowHashKey {
    Configured,
    /// The built-in key: anyone can compute which flows share a backend.
    Public,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: IpAddr,
    /// 0 for an all-ports VIP.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: String,
    pub table_size: u32,
    /// A hash of the live table's backend addresses, slot by slot ("empty" for no backend):
    /// equal on every balancer with the same configuration and health.
    pub fingerprint: Option<String>,
    pub backends: usize,
    /// New flows per second per CPU before flood mode (0: never).
    pub new_flow_budget: u32,
    pub flooding_cpus: u32,
    pub untracked_flows: u64,
    pub admission: AdmissionStatus,
    /// The VIP's session key (`[vip.session_key]`), if it has one.
    pub session_key: Option<SessionKeyStatus>,
    /// The VIP's own UDP idle timeout in seconds, if it has one (else the instance's).
    pub udp_idle_timeout_secs: Option<u16>,
    /// Flows (sessions) its backends count active, summed (`BackendStatus::active_flows`).
    pub active_flows: i64,
}

/// A UDP VIP's session key, and the datagrams too short for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKeyStatus {
    /// `payload` (a session key) or `quic_server_id`.
    pub kind: String,
    pub offset: u16,
    pub length: u8,
    pub mask_hex: String,
    /// Datagrams that ended before the key, balanced by their 5-tuple (since the data plane was
    /// loaded).
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionStatus {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub packets_per_second: Option<u32>,
    pub packet_burst: Option<u32>,
    pub new_flows_per_second: Option<u32>,
    pub new_flow_burst: Option<u32>,
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
    /// Packets refused, by reason name (`lb_common::admission::REFUSALS`).
    pub refused: BTreeMap<String, u64>,
}

/// A backend as the policy decided it, and what the data plane and its checks say of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    #[serde(flatten)]
    pub decision: BackendDecision,
    /// Flows the data plane counts active (`None` if it could not be read).
    pub active_flows: Option<i64>,
    pub last_error: Option<String>,
    pub check_latency_ms: Option<f64>,
}

/// What a change did: the data plane generation it made, or `None` if nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub generation: u64,
}

impl AdmissionStatus {
    fn of(vip: &Vip, refused: [u64; lb_common::admission::REFUSALS.len()]) -> Self {
        let a = &vip.admission;
        Self {
            allow: a.allow.iter().map(ToString::to_string).collect(),
            deny: a.deny.iter().map(ToString::to_string).collect(),
            packets_per_second: a.packets.map(|r| r.per_second),
            packet_burst: a.packets.map(|r| r.burst),
            new_flows_per_second: a.new_flows.map(|r| r.per_second),
            new_flow_burst: a.new_flows.map(|r| r.burst),
            source_prefix_v4: a.source_prefix_v4,
            source_prefix_v6: a.source_prefix_v6,
            refused: lb_common::admission::REFUSALS
                .iter()
                .zip(refused)
                .map(|(r, n)| (r.name().to_string(), n))
                .collect(),
        }
    }
}

impl Agent {
    pub(super) fn status(&self) -> Status {
        Status {
            instance: self.config.instance.name.clone(),
            config: self.config_path.clone(),
            generation: self.generation,
            flow_hash_key: if self.config.instance.flow_hash_key.is_some() {
                FlowHashKey::Configured
            } else {
                FlowHashKey::Public
            },
            source_buckets: self.balancer.source_buckets_in_use().ok(),
            warnings: self.warnings.iter().chain(&self.host_warnings).cloned().collect(),
            data_plane: DataPlaneHealth {
                delivery_problem: self.delivery.problem(Instant::now()),
                xdp_transmit_errors: self.delivery.totals(),
                ..self.data_plane.clone()
            },
            vips: self.vip_rows(),
            backends: self.backend_rows(),
            bgp: self.bgp_status(),
        }
    }

    pub(super) fn vip_rows(&self) -> Vec<VipStatus> {
        let mut active: BTreeMap<&str, i64> = BTreeMap::new();
        let backends = self.backend_rows();
        for b in &backends {
            *active.entry(b.decision.vip.as_str()).or_default() += b.active_flows.unwrap_or(0);
        }
        self.config
            .vips
            .iter()
            .map(|v| {
                let index = self.current.vips.get(&v.key()).map(|t| t.index);
                let flood: VipFlood = index.and_then(|i| self.balancer.flood(i).ok()).unwrap_or_default();
                let refused = index.and_then(|i| self.balancer.refusals(i).ok()).unwrap_or_default();
                VipStatus {
                    name: v.name.clone(),
                    address: v.address,
                    port: v.port,
                    protocol: v.protocol,
                    scheduler: v.scheduler.name().to_string(),
                    table_size: v.table_size,
                    fingerprint: self.fingerprints.get(&v.name).cloned(),
                    backends: v.backends.len(),
                    new_flow_budget: v.new_flow_budget,
                    flooding_cpus: flood.flooding_cpus,
                    untracked_flows: flood.untracked,
                    admission: AdmissionStatus::of(v, refused),
                    session_key: v.session_key.is_some().then(|| SessionKeyStatus {
                        kind: if v.session_key.kind == lb_common::session::kind::QUIC_SERVER_ID {
                            "quic_server_id".into()
                        } else {
                            "payload".into()
                        },
                        offset: v.session_key.offset,
                        length: v.session_key.length,
                        mask_hex: crate::label::show_hex(&v.session_key.mask[..usize::from(v.session_key.length)]),
                        misses: index.and_then(|i| self.balancer.session_misses(i).ok()).unwrap_or_default(),
                    }),
                    udp_idle_timeout_secs: v.udp_idle_timeout_secs,
                    active_flows: active.get(v.name.as_str()).copied().unwrap_or(0),
                }
            })
            .collect()
    }

    pub(super) fn backend_rows(&self) -> Vec<BackendStatus> {
        self.decisions
            .iter()
            .map(|d| {
                let h = self.health.get(&(d.vip.clone(), d.address));
                let active_flows =
                    self.backend_id(&d.vip, d.address).and_then(|id| self.balancer.active_flows(id).ok());
                BackendStatus {
                    decision: d.clone(),
                    active_flows: active_flows.map(|n| n.max(0)),
                    last_error: h.and_then(|h| h.last_error.clone()),
                    check_latency_ms: h.and_then(|h| h.last_latency).map(|l| l.as_secs_f64() * 1000.0),
                }
            })
            .collect()
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
}
