//! What the data plane makes of the configuration: its keys and records for the configured
//! instance, VIPs and schedulers (`lb_common`'s types).

use lb_common::{addr::to_key, dataplane::DataplaneConfig, vip::VipKey, vip::scheduler as vip_scheduler};

use super::{Instance, Scheduler, Vip};

impl Vip {
    /// The data plane's key of this VIP.
    pub fn key(&self) -> VipKey {
        let (family, addr) = to_key(self.address);
        VipKey::new(family, addr, self.port, self.protocol.number())
    }
}

impl Scheduler {
    /// How the data plane reads this scheduler's table: one of `lb_common::vip::scheduler`, and
    /// the source hash's prefix length (0 for the others).
    pub fn data_plane(self) -> (u8, u8) {
        match self {
            Scheduler::Maglev | Scheduler::LeastResponseTime => (vip_scheduler::MAGLEV, 0),
            Scheduler::SourceHash { prefix_len } => (vip_scheduler::SOURCE_HASH, prefix_len),
            Scheduler::RoundRobin | Scheduler::WeightedRoundRobin => (vip_scheduler::SEQUENCE, 0),
            Scheduler::LeastConnections => (vip_scheduler::LEAST_CONNECTIONS, 0),
        }
    }
}

impl Instance {
    /// The data plane's instance settings.
    pub fn dataplane_config(&self) -> DataplaneConfig {
        let mut encap_src_v6 = self.encap_source_v6.network.octets();
        // Only the low 32 bits may vary; clear the host bits so the prefix alone is stored.
        let mask = if self.encap_source_v6.host_bits >= 32 { 0 } else { u32::MAX << self.encap_source_v6.host_bits };
        let low = u32::from_be_bytes([encap_src_v6[12], encap_src_v6[13], encap_src_v6[14], encap_src_v6[15]]) & mask;
        encap_src_v6[12..].copy_from_slice(&low.to_be_bytes());
        DataplaneConfig {
            udp_idle_timeout_ns: u64::from(self.udp_idle_timeout_secs) * 1_000_000_000,
            encap_src_v6,
            encap_src_v4: self.encap_source_v4.network.octets(),
            mtu: self.mtu,
            encap_src_v4_host_bits: self.encap_source_v4.host_bits,
            encap_src_v6_host_bits: self.encap_source_v6.host_bits,
            fallback_dst_mac: self.fallback_mac.unwrap_or([0; 6]),
            icmp_echo: self.icmp_echo.data_plane_value(),
            // Set by the policy, which sees the VIPs.
            session_keys: 0,
            flow_hash_key: self.flow_hash_key.unwrap_or(lb_common::flow::PUBLIC_HASH_KEY),
        }
    }
}
