//! The configuration file as written: serde structs that reject unknown fields and keep the
//! position of every value, so validation can point at the line and column of a bad one.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub instance: Spanned<Instance>,
    #[serde(default)]
    pub bgp: Option<Spanned<Bgp>>,
    #[serde(default)]
    pub vip: Vec<Spanned<Vip>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    pub local_asn: Spanned<i64>,
    #[serde(default)]
    pub router_id: Option<Spanned<String>>,
    #[serde(default)]
    pub bird_socket: Option<Spanned<String>>,
    #[serde(default)]
    pub next_hop_v4: Option<Spanned<String>>,
    #[serde(default)]
    pub next_hop_v6: Option<Spanned<String>>,
    #[serde(default)]
    pub communities: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub drain_grace_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub hold_time_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub bfd_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub bfd_multiplier: Option<Spanned<i64>>,
    #[serde(default)]
    pub peer: Vec<Spanned<Peer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub address: Spanned<String>,
    pub asn: Spanned<i64>,
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    #[serde(default)]
    pub bfd: Option<Spanned<bool>>,
}

/// `[vip.bgp]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipBgp {
    #[serde(default)]
    pub med: Option<Spanned<i64>>,
    #[serde(default)]
    pub local_pref: Option<Spanned<i64>>,
    #[serde(default)]
    pub communities: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub name: Spanned<String>,
    pub interfaces: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub xdp_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub flow_table_entries: Option<Spanned<i64>>,
    #[serde(default)]
    pub ipv6_flow_table_entries: Option<Spanned<i64>>,
    #[serde(default)]
    pub udp_idle_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub tcp_idle_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub mtu: Option<Spanned<i64>>,
    pub encap_source_v4: Spanned<String>,
    pub encap_source_v6: Spanned<String>,
    #[serde(default)]
    pub fallback_mac: Option<Spanned<String>>,
    #[serde(default)]
    pub control_socket: Option<Spanned<String>>,
    #[serde(default)]
    pub metrics_address: Option<Spanned<String>>,
    #[serde(default)]
    pub flow_hash_key: Option<Spanned<String>>,
    #[serde(default)]
    pub icmp_echo: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub port: Spanned<i64>,
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub scheduler: Option<Spanned<String>>,
    #[serde(default)]
    pub source_prefix_len: Option<Spanned<i64>>,
    #[serde(default)]
    pub forwarding: Option<Spanned<String>>,
    #[serde(default)]
    pub table_size: Option<Spanned<i64>>,
    #[serde(default)]
    pub failure_mode: Option<Spanned<String>>,
    #[serde(default)]
    pub max_ejected_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub slow_start_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub new_flow_budget: Option<Spanned<i64>>,
    #[serde(default)]
    pub health: Option<Spanned<Health>>,
    #[serde(default)]
    pub admission: Option<Spanned<Admission>>,
    #[serde(default)]
    pub bgp: Option<Spanned<VipBgp>>,
    #[serde(default)]
    pub udp_idle_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    pub session_key: Option<Spanned<SessionKey>>,
    #[serde(default)]
    pub quic: Option<Spanned<Quic>>,
    #[serde(default)]
    pub backend: Vec<Spanned<Backend>>,
}

/// `[vip.quic]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quic {
    pub server_id_offset: Spanned<i64>,
    pub server_id_length: Spanned<i64>,
}

/// `[vip.session_key]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKey {
    pub offset: Spanned<i64>,
    pub length: Spanned<i64>,
    #[serde(default)]
    pub mask_hex: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    #[serde(default)]
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub packets_per_second: Option<Spanned<i64>>,
    #[serde(default)]
    pub packet_burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub new_flows_per_second: Option<Spanned<i64>>,
    #[serde(default)]
    pub new_flow_burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub source_prefix_v4: Option<Spanned<i64>>,
    #[serde(default)]
    pub source_prefix_v6: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub kind: Spanned<String>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    #[serde(default)]
    pub interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub rise: Option<Spanned<i64>>,
    #[serde(default)]
    pub fall: Option<Spanned<i64>>,
    #[serde(default)]
    pub tunnel: Option<Spanned<bool>>,
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub expect_status: Option<Spanned<i64>>,
    #[serde(default)]
    pub expect_body: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub tls_verify: Option<Spanned<bool>>,
    #[serde(default)]
    pub tls_ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub payload_hex: Option<Spanned<String>>,
    #[serde(default)]
    pub expect_prefix_hex: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: Spanned<String>,
    #[serde(default)]
    pub weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub state: Option<Spanned<String>>,
    #[serde(default)]
    pub health: Option<Spanned<Health>>,
    #[serde(default)]
    pub quic_server_id: Option<Spanned<String>>,
}
