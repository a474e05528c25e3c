//! The configuration written back out as TOML, every value explicit, so `lb config dump` keeps
//! live changes and what it writes parses back to the same configuration.

use std::fmt::Write as _;

use super::{
    AdminState, CheckKind, Config, HealthCheck, HttpMethod, Named as _, Scheduler,
    bgp::{Bgp, Community, RouteAttributes},
};

impl Config {
    pub fn to_toml(&self) -> String {
        let i = &self.instance;
        let mut s = String::new();
        let _ = writeln!(s, "[instance]");
        let _ = writeln!(s, "name = {}", quote(&i.name));
        let ifaces: Vec<String> = i.interfaces.iter().map(|n| quote(n)).collect();
        let _ = writeln!(s, "interfaces = [{}]", ifaces.join(", "));
        let _ = writeln!(s, "xdp_mode = \"{}\"", i.xdp_mode.name());
        let _ = writeln!(s, "flow_table_entries = {}", i.flow_table_entries);
        let _ = writeln!(s, "ipv6_flow_table_entries = {}", i.ipv6_flow_table_entries);
        let _ = writeln!(s, "udp_idle_timeout_secs = {}", i.udp_idle_timeout_secs);
        let _ = writeln!(s, "tcp_idle_timeout_secs = {}", i.tcp_idle_timeout_secs);
        let _ = writeln!(s, "mtu = {}", i.mtu);
        let _ = writeln!(s, "encap_source_v4 = \"{}/{}\"", i.encap_source_v4.network, 32 - i.encap_source_v4.host_bits);
        let _ =
            writeln!(s, "encap_source_v6 = \"{}/{}\"", i.encap_source_v6.network, 128 - i.encap_source_v6.host_bits);
        if let Some(m) = i.fallback_mac {
            let _ = writeln!(s, "fallback_mac = \"{}\"", crate::label::show_mac(m));
        }
        let _ = writeln!(s, "control_socket = {}", quote(&i.control_socket.to_string_lossy()));
        if let Some(a) = i.metrics_address {
            let _ = writeln!(s, "metrics_address = \"{a}\"");
        }
        let _ = writeln!(s, "icmp_echo = \"{}\"", i.icmp_echo.name());
        if let Some([k0, k1]) = i.flow_hash_key {
            let _ = writeln!(s, "flow_hash_key = \"{k0:016x}{k1:016x}\"");
        }
        if let Some(b) = &self.bgp {
            bgp(&mut s, b);
        }
        for v in &self.vips {
            let _ = writeln!(s, "\n[[vip]]");
            let _ = writeln!(s, "name = {}", quote(&v.name));
            let _ = writeln!(s, "address = \"{}\"", v.address);
            let _ = writeln!(s, "port = {}", v.port);
            let _ = writeln!(s, "protocol = \"{}\"", v.protocol);
            let _ = writeln!(s, "scheduler = \"{}\"", v.scheduler.name());
            if let Scheduler::SourceHash { prefix_len } = v.scheduler {
                let _ = writeln!(s, "source_prefix_len = {prefix_len}");
            }
            let _ = writeln!(s, "forwarding = \"{}\"", v.forwarding.name());
            let _ = writeln!(s, "table_size = {}", v.table_size);
            let _ = writeln!(s, "failure_mode = \"{}\"", v.failure_mode.name());
            let _ = writeln!(s, "max_ejected_percent = {}", v.max_ejected_percent);
            let _ = writeln!(s, "slow_start_secs = {}", v.slow_start.as_secs());
            let _ = writeln!(s, "new_flow_budget = {}", v.new_flow_budget);
            if let Some(secs) = v.udp_idle_timeout_secs {
                let _ = writeln!(s, "udp_idle_timeout_secs = {secs}");
            }
            if let Some(h) = &v.health {
                let _ = writeln!(s, "[vip.health]");
                health(&mut s, h);
            }
            if !v.admission.admits_all() {
                admission(&mut s, &v.admission);
            }
            if v.route != RouteAttributes::default() {
                let r = &v.route;
                let _ = writeln!(s, "[vip.bgp]");
                if let Some(med) = r.med {
                    let _ = writeln!(s, "med = {med}");
                }
                if let Some(pref) = r.local_pref {
                    let _ = writeln!(s, "local_pref = {pref}");
                }
                let _ = writeln!(s, "communities = [{}]", communities(&r.communities));
            }
            if v.session_key.kind == lb_common::session::kind::QUIC_SERVER_ID {
                let _ = writeln!(s, "[vip.quic]");
                let _ = writeln!(s, "server_id_offset = {}", v.session_key.offset - 1);
                let _ = writeln!(s, "server_id_length = {}", v.session_key.length);
            } else if v.session_key.is_some() {
                let k = &v.session_key;
                let _ = writeln!(s, "[vip.session_key]");
                let _ = writeln!(s, "offset = {}", k.offset);
                let _ = writeln!(s, "length = {}", k.length);
                let _ = writeln!(s, "mask_hex = \"{}\"", hex(&k.mask[..usize::from(k.length)]));
            }
            for b in &v.backends {
                let _ = writeln!(s, "[[vip.backend]]");
                let _ = writeln!(s, "address = \"{}\"", b.address);
                let _ = writeln!(s, "weight = {}", b.weight);
                if b.state != AdminState::Up {
                    let _ = writeln!(s, "state = \"{}\"", b.state.name());
                }
                if let Some(id) = b.quic_server_id {
                    let _ = writeln!(s, "quic_server_id = \"{}\"", hex(&id[..usize::from(v.session_key.length)]));
                }
                if let Some(h) = &b.health {
                    let _ = writeln!(s, "[vip.backend.health]");
                    health(&mut s, h);
                }
            }
        }
        s
    }
}

fn health(s: &mut String, h: &HealthCheck) {
    let kind = match h.kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Http { tls: None, .. } => "http",
        CheckKind::Http { tls: Some(_), .. } => "https",
        CheckKind::Udp { .. } => "udp",
        CheckKind::Quic => "quic",
    };
    let _ = writeln!(s, "kind = \"{kind}\"");
    let _ = writeln!(s, "port = {}", h.port);
    let _ = writeln!(s, "interval_ms = {}", h.interval.as_millis());
    let _ = writeln!(s, "timeout_ms = {}", h.timeout.as_millis());
    let _ = writeln!(s, "rise = {}", h.rise);
    let _ = writeln!(s, "fall = {}", h.fall);
    let _ = writeln!(s, "tunnel = {}", h.tunnel);
    match &h.kind {
        CheckKind::Tcp | CheckKind::Quic => {}
        CheckKind::Http { method, path, host, expect_status, expect_body, tls } => {
            let m = match method {
                HttpMethod::Get => "GET",
                HttpMethod::Head => "HEAD",
            };
            let _ = writeln!(s, "method = \"{m}\"");
            let _ = writeln!(s, "path = {}", quote(path));
            if let Some(host) = host {
                let _ = writeln!(s, "host = {}", quote(host));
            }
            let _ = writeln!(s, "expect_status = {expect_status}");
            if let Some(b) = expect_body {
                let _ = writeln!(s, "expect_body = {}", quote(b));
            }
            if let Some(tls) = tls {
                if let Some(name) = &tls.server_name {
                    let _ = writeln!(s, "tls_server_name = {}", quote(name));
                }
                let _ = writeln!(s, "tls_verify = {}", tls.verify);
                if let Some(ca) = &tls.ca {
                    let _ = writeln!(s, "tls_ca_file = {}", quote(&ca.file.to_string_lossy()));
                }
            }
        }
        CheckKind::Udp { payload, expect_prefix } => {
            let _ = writeln!(s, "payload_hex = \"{}\"", hex(payload));
            if !expect_prefix.is_empty() {
                let _ = writeln!(s, "expect_prefix_hex = \"{}\"", hex(expect_prefix));
            }
        }
    }
}

fn bgp(s: &mut String, b: &Bgp) {
    let _ = writeln!(s, "\n[bgp]");
    let _ = writeln!(s, "local_asn = {}", b.local_asn);
    if let Some(id) = b.router_id {
        let _ = writeln!(s, "router_id = \"{id}\"");
    }
    let _ = writeln!(s, "bird_socket = {}", quote(&b.bird_socket.to_string_lossy()));
    for (key, hop) in [("next_hop_v4", b.next_hop_v4), ("next_hop_v6", b.next_hop_v6)] {
        if let Some(hop) = hop {
            let _ = writeln!(s, "{key} = \"{hop}\"");
        }
    }
    let _ = writeln!(s, "communities = [{}]", communities(&b.communities));
    let _ = writeln!(s, "drain_grace_secs = {}", b.drain_grace.as_secs());
    let _ = writeln!(s, "hold_time_secs = {}", b.hold_time_secs);
    let _ = writeln!(s, "bfd_interval_ms = {}", b.bfd_interval.as_millis());
    let _ = writeln!(s, "bfd_multiplier = {}", b.bfd_multiplier);
    for p in &b.peers {
        let _ = writeln!(s, "[[bgp.peer]]");
        let _ = writeln!(s, "name = {}", quote(&p.name));
        let _ = writeln!(s, "address = \"{}\"", p.address);
        let _ = writeln!(s, "asn = {}", p.asn);
        if let Some(password) = &p.password {
            let _ = writeln!(s, "password = {}", quote(password));
        }
        let _ = writeln!(s, "bfd = {}", p.bfd);
    }
}

fn communities(list: &[Community]) -> String {
    list.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
}

use crate::label::show_hex as hex;

/// A TOML basic string.
fn admission(s: &mut String, a: &super::Admission) {
    let list = |prefixes: &[super::Prefix]| prefixes.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(s, "[vip.admission]");
    let _ = writeln!(s, "allow = [{}]", list(&a.allow));
    let _ = writeln!(s, "deny = [{}]", list(&a.deny));
    if let Some(r) = a.packets {
        let _ = writeln!(s, "packets_per_second = {}\npacket_burst = {}", r.per_second, r.burst);
    }
    if let Some(r) = a.new_flows {
        let _ = writeln!(s, "new_flows_per_second = {}\nnew_flow_burst = {}", r.per_second, r.burst);
    }
    let _ = writeln!(s, "source_prefix_v4 = {}\nsource_prefix_v6 = {}", a.source_prefix_v4, a.source_prefix_v6);
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
