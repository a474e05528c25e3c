//! `[instance]`: the balancer's own settings.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::dataplane::{MAX_ENCAP_SRC_V4_HOST_BITS, MAX_ENCAP_SRC_V6_HOST_BITS};

use super::{Validator, hash_key, interface_name, mac, name, prefix};
use crate::config::{
    DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_IPV6_FLOW_TABLE_ENTRIES, DEFAULT_MTU, DEFAULT_TCP_IDLE_TIMEOUT_SECS,
    DEFAULT_UDP_IDLE_TIMEOUT_SECS, FLOW_TABLE_ENTRIES, IcmpEcho, Instance, MTU, Named as _, SourcePrefix,
    TCP_IDLE_TIMEOUT_SECS, UDP_IDLE_TIMEOUT_SECS, XdpMode, raw,
};

impl Validator<'_> {
    pub(super) fn instance(&mut self, raw: &raw::Instance) -> Option<Instance> {
        let name = self.check(&raw.name, "instance.name", |s| name(s));
        let interfaces = self.interfaces(raw);
        let xdp_mode = self.optional(&raw.xdp_mode, "instance.xdp_mode", XdpMode::Auto, |s| XdpMode::parse(s));
        let flow_table_entries = self.ranged(
            &raw.flow_table_entries,
            "instance.flow_table_entries",
            FLOW_TABLE_ENTRIES,
            i64::from(DEFAULT_FLOW_TABLE_ENTRIES),
        );
        let ipv6_flow_table_entries = self.ranged(
            &raw.ipv6_flow_table_entries,
            "instance.ipv6_flow_table_entries",
            FLOW_TABLE_ENTRIES,
            i64::from(DEFAULT_IPV6_FLOW_TABLE_ENTRIES),
        );
        let udp_idle_timeout_secs = self.ranged(
            &raw.udp_idle_timeout_secs,
            "instance.udp_idle_timeout_secs",
            UDP_IDLE_TIMEOUT_SECS,
            i64::from(DEFAULT_UDP_IDLE_TIMEOUT_SECS),
        );
        let tcp_idle_timeout_secs = self.ranged(
            &raw.tcp_idle_timeout_secs,
            "instance.tcp_idle_timeout_secs",
            TCP_IDLE_TIMEOUT_SECS,
            i64::from(DEFAULT_TCP_IDLE_TIMEOUT_SECS),
        );
        let mtu = self.ranged(&raw.mtu, "instance.mtu", MTU, i64::from(DEFAULT_MTU));
        let encap_source_v4 = self.check(&raw.encap_source_v4, "instance.encap_source_v4", |s| {
            encap_source::<Ipv4Addr>(s, 32, MAX_ENCAP_SRC_V4_HOST_BITS)
        });
        let encap_source_v6 = self.check(&raw.encap_source_v6, "instance.encap_source_v6", |s| {
            encap_source::<Ipv6Addr>(s, 128, MAX_ENCAP_SRC_V6_HOST_BITS)
        });
        let fallback_mac = self.optional(&raw.fallback_mac, "instance.fallback_mac", None, |s| mac(s).map(Some));
        let default_socket = std::path::PathBuf::from(format!("/run/lb/{}.sock", raw.name.get_ref()));
        let control_socket = self.optional(&raw.control_socket, "instance.control_socket", default_socket, |s| {
            if s.starts_with('/') {
                Ok(std::path::PathBuf::from(s))
            } else {
                Err(format!("\"{s}\" is not an absolute path"))
            }
        });
        let metrics_address = self.optional(&raw.metrics_address, "instance.metrics_address", None, |s| {
            s.parse::<std::net::SocketAddr>()
                .map(Some)
                .map_err(|_| format!("\"{s}\" is not an address and port such as 127.0.0.1:9100"))
        });
        let icmp_echo =
            self.optional(&raw.icmp_echo, "instance.icmp_echo", IcmpEcho::default(), |s| IcmpEcho::parse(s));
        let flow_hash_key =
            self.optional(&raw.flow_hash_key, "instance.flow_hash_key", None, |s| hash_key(s).map(Some));
        Some(Instance {
            name: name?,
            interfaces,
            xdp_mode: xdp_mode?,
            flow_table_entries: flow_table_entries? as u32,
            ipv6_flow_table_entries: ipv6_flow_table_entries? as u32,
            udp_idle_timeout_secs: udp_idle_timeout_secs? as u32,
            tcp_idle_timeout_secs: tcp_idle_timeout_secs? as u32,
            mtu: mtu? as u16,
            encap_source_v4: encap_source_v4?,
            encap_source_v6: encap_source_v6?,
            fallback_mac: fallback_mac?,
            control_socket: control_socket?,
            metrics_address: metrics_address?,
            flow_hash_key: flow_hash_key?,
            icmp_echo: icmp_echo?,
        })
    }

    /// The interfaces to attach to: at least one, each a valid name.
    fn interfaces(&mut self, raw: &raw::Instance) -> Vec<String> {
        if raw.interfaces.get_ref().is_empty() {
            self.problem(
                raw.interfaces.span(),
                "instance.interfaces",
                "lists no interface; name at least one to attach to".into(),
            );
        }
        let mut interfaces = Vec::new();
        for (i, iface) in raw.interfaces.get_ref().iter().enumerate() {
            if let Some(n) = self.check(iface, &format!("instance.interfaces[{i}]"), |s| interface_name(s)) {
                interfaces.push(n);
            }
        }
        interfaces
    }
}

/// An encapsulation source prefix of a family with `bits`-bit addresses, whose host part (at
/// most `max_host_bits`) the data plane varies per flow.
fn encap_source<A: std::str::FromStr>(s: &str, bits: u8, max_host_bits: u8) -> Result<SourcePrefix<A>, String> {
    let (network, len) = prefix::<A>(s)?;
    let min_len = bits - max_host_bits;
    if !(min_len..=bits).contains(&len) {
        return Err(format!(
            "prefix length /{len} is out of range /{min_len}../{bits} (at most {max_host_bits} host bits vary per flow)"
        ));
    }
    Ok(SourcePrefix { network, host_bits: bits - len })
}
