//! The agent's part of BIRD's configuration, as text. Every value in it comes validated from
//! the configuration (`config::bgp`): addresses, numbers, symbols of letters, digits and `_`, and
//! passwords without quotes or backslashes.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr, path::Path};

use crate::config::bgp::{Bgp, Community, RouteAttributes, symbol};

/// The first line of every file the agent writes; `lb detach` reads the socket from the second.
pub const HEADER: &str = "# Written by lb: this balancer's BGP sessions and VIP routes. Do not edit: lb rewrites it.";
const SOCKET_LINE: &str = "# bird-socket: ";

/// One VIP address, its route's attributes, and whether it is announced.
pub struct VipRoute<'c> {
    pub address: IpAddr,
    pub attributes: &'c RouteAttributes,
    pub announced: bool,
}

/// The file for `instance` with `routes`. A withdrawn route is absent from the static protocol
/// only: its attributes stay in the export filter, so that announcing or withdrawing changes
/// nothing else (BIRD then restarts nothing but the static protocol's routes).
pub fn render(instance: &str, bgp: &Bgp, routes: &[VipRoute<'_>]) -> String {
    let prefix = protocol_prefix(instance);
    let mut s = String::new();
    let _ = writeln!(s, "{HEADER}\n# instance: {instance}\n{SOCKET_LINE}{}", bgp.bird_socket.display());
    if let Some(id) = bgp.router_id {
        let _ = writeln!(s, "router id {id};");
    }
    if bgp.peers.iter().any(|p| p.bfd) {
        let interval = bgp.bfd_interval.as_millis();
        let _ = writeln!(
            s,
            "protocol bfd {} {{\n  interface \"*\" {{ min rx interval {interval} ms; min tx interval {interval} ms; \
             multiplier {}; }};\n}}",
            bfd_protocol_name(instance),
            bgp.bfd_multiplier
        );
    }
    for v6 in [false, true] {
        if !bgp.peers.iter().any(|p| p.address.is_ipv6() == v6) {
            continue;
        }
        let (family, len, n) = if v6 { ("ipv6", 128, 6) } else { ("ipv4", 32, 4) };
        let _ = writeln!(s, "protocol static {prefix}_vips{n} {{\n  {family};");
        for r in routes.iter().filter(|r| r.address.is_ipv6() == v6 && r.announced) {
            let _ = writeln!(s, "  route {}/{len} blackhole;", r.address);
        }
        let _ = writeln!(s, "}}");
        let _ = writeln!(s, "filter {prefix}_export{n} {{\n  if proto != \"{prefix}_vips{n}\" then reject;");
        for c in &bgp.communities {
            let _ = writeln!(s, "  {}", add_community(*c));
        }
        for r in routes.iter().filter(|r| r.address.is_ipv6() == v6 && *r.attributes != RouteAttributes::default()) {
            let a = r.attributes;
            let _ = write!(s, "  if net = {}/{len} then {{", r.address);
            if let Some(med) = a.med {
                let _ = write!(s, " bgp_med = {med};");
            }
            if let Some(pref) = a.local_pref {
                let _ = write!(s, " bgp_local_pref = {pref};");
            }
            for c in &a.communities {
                let _ = write!(s, " {}", add_community(*c));
            }
            let _ = writeln!(s, " }}");
        }
        let _ = writeln!(s, "  accept;\n}}");
    }
    let keepalive = (bgp.hold_time_secs / 3).max(1);
    for p in &bgp.peers {
        let name = Bgp::protocol_name(instance, &p.name);
        let (family, n, next_hop) =
            if p.address.is_ipv6() { ("ipv6", 6, bgp.next_hop_v6) } else { ("ipv4", 4, bgp.next_hop_v4) };
        let _ = writeln!(s, "protocol bgp {name} {{");
        let _ = writeln!(s, "  local as {};\n  neighbor {} as {};", bgp.local_asn, p.address, p.asn);
        let _ = writeln!(s, "  hold time {}; keepalive time {keepalive};", bgp.hold_time_secs);
        // Reconnect within seconds (BIRD waits 120 s by default), backing off to 30 s after errors.
        let _ = writeln!(s, "  connect retry time 5; error wait time 5, 30;");
        if p.asn == bgp.local_asn {
            // Internal BGP is multihop by default; the peers are directly connected routers.
            let _ = writeln!(s, "  direct;");
        }
        if p.bfd {
            let _ = writeln!(s, "  bfd on;");
        }
        if let Some(password) = &p.password {
            let _ = writeln!(s, "  password \"{password}\";");
        }
        let _ = write!(s, "  {family} {{ import none; export filter {prefix}_export{n};");
        if let Some(hop) = next_hop {
            let _ = write!(s, " next hop address {hop};");
        }
        let _ = writeln!(s, " }};\n}}");
    }
    s
}

/// The start of the names of the agent's BIRD protocols and filters.
fn protocol_prefix(instance: &str) -> String {
    symbol(&format!("lb_{instance}"))
}

/// The name of the agent's BFD protocol.
pub fn bfd_protocol_name(instance: &str) -> String {
    format!("{}_bfd", protocol_prefix(instance))
}

/// The addresses a file the agent wrote announces (none for a file that is not the agent's).
pub fn announced_in(text: &str) -> BTreeSet<IpAddr> {
    if !text.starts_with(HEADER) {
        return BTreeSet::new();
    }
    text.lines().filter_map(|l| l.trim().strip_prefix("route ")?.split('/').next()?.parse().ok()).collect()
}

/// A file that announces nothing and holds no session: what `lb detach` leaves.
pub fn render_detached(instance: &str, bird_socket: &Path) -> String {
    format!("{HEADER}\n# instance: {instance} (detached: nothing announced)\n{SOCKET_LINE}{}\n", bird_socket.display())
}

/// The control socket named in a file the agent wrote.
pub fn socket_of(text: &str) -> Option<&Path> {
    if !text.starts_with(HEADER) {
        return None;
    }
    text.lines().find_map(|l| l.strip_prefix(SOCKET_LINE)).map(Path::new)
}

fn add_community(c: Community) -> String {
    match c {
        Community::Standard(a, b) => format!("bgp_community.add(({a},{b}));"),
        Community::Large(a, b, c) => format!("bgp_large_community.add(({a},{b},{c}));"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[instance]
name = "edge-1"
interfaces = ["eth0"]
encap_source_v4 = "198.18.200.0/24"
encap_source_v6 = "fd00:200::/112"

[bgp]
local_asn = 65010
router_id = "198.18.0.2"
communities = ["65010:1", "65010:2:3"]

[[bgp.peer]]
address = "198.18.0.254"
asn = 65000
password = "s3cret"

[[bgp.peer]]
name = "tor6"
address = "fd00::fe"
asn = 65000
bfd = false

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"
[vip.bgp]
med = 10
communities = ["65010:100"]
[[vip.backend]]
address = "198.18.0.21"

[[vip]]
name = "web6"
address = "fd00:100::1"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "fd00::21"
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn renders_sessions_routes_and_attributes() {
        let c = config(BASE);
        let bgp = c.bgp.as_ref().expect("bgp");
        let routes: Vec<VipRoute<'_>> =
            c.vips.iter().map(|v| VipRoute { address: v.address, attributes: &v.route, announced: true }).collect();
        let text = render("edge-1", bgp, &routes);
        for expected in [
            "router id 198.18.0.2;",
            "protocol bfd lb_edge_1_bfd {",
            "protocol static lb_edge_1_vips4 {\n  ipv4;\n  route 198.18.100.1/32 blackhole;\n}",
            "protocol static lb_edge_1_vips6 {\n  ipv6;\n  route fd00:100::1/128 blackhole;\n}",
            "if proto != \"lb_edge_1_vips4\" then reject;",
            "  bgp_community.add((65010,1));\n  bgp_large_community.add((65010,2,3));",
            "if net = 198.18.100.1/32 then { bgp_med = 10; bgp_community.add((65010,100)); }",
            "protocol bgp lb_edge_1_198_18_0_254 {",
            "neighbor 198.18.0.254 as 65000;",
            "hold time 9; keepalive time 3;",
            "password \"s3cret\";",
            "ipv4 { import none; export filter lb_edge_1_export4; };",
            "protocol bgp lb_edge_1_tor6 {",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        // BFD is off for the second peer only.
        let tor6 = &text[text.find("protocol bgp lb_edge_1_tor6").expect("tor6")..];
        assert!(!tor6.contains("bfd on"));
        assert_eq!(socket_of(&text), Some(Path::new("/run/bird/bird.ctl")));
        let announced: Vec<String> = announced_in(&text).iter().map(ToString::to_string).collect();
        assert_eq!(announced, ["198.18.100.1", "fd00:100::1"]);
        // Internal BGP (the same AS) is made direct: the peers are on the link.
        let ibgp = render(
            "edge-1",
            config(&BASE.replacen("asn = 65000", "asn = 65010", 1)).bgp.as_ref().expect("bgp"),
            &routes,
        );
        let first_peer = &ibgp[ibgp.find("protocol bgp").expect("peer")..];
        assert!(first_peer[..first_peer.find('}').expect("end")].contains("direct;"), "{ibgp}");
        assert!(!text.contains("direct;"));
    }

    #[test]
    fn withdrawn_routes_leave_the_static_protocol_and_sessions_alone() {
        let c = config(BASE);
        let bgp = c.bgp.as_ref().expect("bgp");
        let mut routes: Vec<VipRoute<'_>> =
            c.vips.iter().map(|v| VipRoute { address: v.address, attributes: &v.route, announced: true }).collect();
        let announced = render("edge-1", bgp, &routes);
        routes[0].announced = false;
        let withdrawn = render("edge-1", bgp, &routes);
        assert!(!withdrawn.contains("route 198.18.100.1/32"));
        // Everything but the static protocol's route is the same: sessions, BFD, the filters.
        let without_route = |t: &str| t.replace("  route 198.18.100.1/32 blackhole;\n", "");
        assert_eq!(without_route(&announced), withdrawn, "a withdrawal must change only the static route");
    }

    #[test]
    fn detached_file_names_its_socket() {
        let text = render_detached("edge-1", Path::new("/run/bird/x.ctl"));
        assert_eq!(socket_of(&text), Some(Path::new("/run/bird/x.ctl")));
        assert!(!text.contains("protocol"));
        assert_eq!(socket_of("router id 1.2.3.4;\n# bird-socket: /x"), None, "not a file of ours");
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        for (from, to, field) in [
            ("local_asn = 65010", "local_asn = 0", "bgp.local_asn"),
            ("local_asn = 65010", "local_asn = 4294967296", "bgp.local_asn"),
            ("router_id = \"198.18.0.2\"", "router_id = \"fd00::1\"", "bgp.router_id"),
            ("password = \"s3cret\"", "password = \"a\\\"; }\"", "bgp.peer[0].password"),
            ("name = \"tor6\"", "name = \"tor-6\"", "bgp.peer[1].name"),
            ("\"65010:100\"", "\"65010:70000\"", "vip[0].bgp.communities"),
            ("med = 10", "med = -1", "vip[0].bgp.med"),
            ("address = \"fd00::fe\"", "address = \"198.18.0.254\"", "bgp.peer[1].address"),
            ("address = \"fd00::fe\"", "address = \"fe80::1\"", "bgp.peer[1].address"),
            ("name = \"tor6\"", "name = \"bfd\"", "bgp.peer[1].name"),
            (
                "local_asn = 65010",
                "local_asn = 65010\nbird_socket = \"/run/x\\nprotocol static evil {}\"",
                "bgp.bird_socket",
            ),
            ("local_asn = 65010", "local_asn = 65010\nbird_socket = \"run/bird.ctl\"", "bgp.bird_socket"),
        ] {
            let text = BASE.replacen(from, to, 1);
            let e = Config::parse(&text, "test.toml").expect_err(to);
            assert!(e.problems.iter().any(|p| p.field == field), "{to}: {e}");
        }
    }

    #[test]
    fn a_family_without_a_peer_and_disagreeing_vips_are_refused() {
        let text =
            BASE.replacen("name = \"tor6\"\naddress = \"fd00::fe\"", "name = \"tor6\"\naddress = \"198.18.0.253\"", 1);
        let e = Config::parse(&text, "test.toml").expect_err("no IPv6 peer");
        assert!(e.to_string().contains("no [[bgp.peer]] has an IPv6 address"), "{e}");

        let text = format!(
            "{BASE}\n[[vip]]\nname = \"dns\"\naddress = \"198.18.100.1\"\nport = 53\nprotocol = \"udp\"\n\
             [vip.bgp]\nmed = 20\n[[vip.backend]]\naddress = \"198.18.0.21\"\n"
        );
        let e = Config::parse(&text, "test.toml").expect_err("two MEDs for one route");
        assert!(e.problems.iter().any(|p| p.field == "vip[2].bgp"), "{e}");
    }

    #[test]
    fn dump_parses_back_to_the_same_configuration() {
        let c = config(BASE);
        assert_eq!(config(&c.to_toml()), c);
    }
}
