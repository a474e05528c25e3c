//! The configuration reference: every table and field of the file with its type, default and
//! valid values, rendered as Markdown (`lb generate config-reference`, kept in
//! docs/configuration.md). Ranges, defaults and names come from the constants and name tables
//! the validator itself uses; the tests check that each table lists exactly the fields its
//! serde type accepts, and that docs/configuration.md is what this renders.

use std::ops::Range;

use super::{
    AdminState, CHECK_INTERVAL_MS, CHECK_RISE_FALL, DEFAULT_FLOW_TABLE_ENTRIES, DEFAULT_IPV6_FLOW_TABLE_ENTRIES,
    DEFAULT_MAX_EJECTED_PERCENT, DEFAULT_MTU, DEFAULT_TCP_IDLE_TIMEOUT_SECS, DEFAULT_UDP_IDLE_TIMEOUT_SECS,
    FLOW_TABLE_ENTRIES, FailureMode, Forwarding, HTTP_BODY_LIMIT, IcmpEcho, MAX_INTERFACE_NAME_LEN, MAX_NAME_LEN,
    MAX_WEIGHT, MTU, Protocol, SLOW_START_SECS, Scheduler, TCP_IDLE_TIMEOUT_SECS, UDP_IDLE_TIMEOUT_SECS, XdpMode,
    admission::{BURST, DEFAULT_SOURCE_PREFIX_V4, DEFAULT_SOURCE_PREFIX_V6, RATE_PER_SECOND},
    bgp::{
        BFD_INTERVAL_MS, BFD_MULTIPLIER, DEFAULT_BFD_INTERVAL_MS, DEFAULT_BFD_MULTIPLIER, DEFAULT_BIRD_SOCKET,
        DEFAULT_DRAIN_GRACE_SECS, DEFAULT_HOLD_TIME_SECS, DRAIN_GRACE_SECS, HOLD_TIME_SECS,
    },
    names::Named,
};

/// One table of the file (`[instance]`, `[[vip]]`, ...).
pub struct Table {
    /// As written in the file: `[instance]`, `[[vip.backend]]`.
    pub header: &'static str,
    pub about: &'static str,
    pub fields: Vec<Field>,
}

/// One field of a table.
pub struct Field {
    pub name: &'static str,
    /// The TOML type: string, integer, boolean, array of strings, table.
    pub kind: &'static str,
    /// None: required.
    pub default: Option<String>,
    /// What values are accepted.
    pub valid: String,
    pub about: &'static str,
}

fn required(name: &'static str, kind: &'static str, valid: impl Into<String>, about: &'static str) -> Field {
    Field { name, kind, default: None, valid: valid.into(), about }
}

fn optional(
    name: &'static str,
    kind: &'static str,
    default: impl Into<String>,
    valid: impl Into<String>,
    about: &'static str,
) -> Field {
    Field { name, kind, default: Some(default.into()), valid: valid.into(), about }
}

/// A validator's half-open range, written inclusive.
fn range(r: Range<i64>) -> String {
    format!("{}..={}", r.start, r.end - 1)
}

/// The names of a named enum, quoted as in the file.
fn names<T: Named>() -> String {
    T::NAMES.iter().map(|(name, _)| format!("`\"{name}\"`")).collect::<Vec<_>>().join(", ")
}

fn quoted(s: &str) -> String {
    format!("`\"{s}\"`")
}

const STRING: &str = "string";
const INTEGER: &str = "integer";
const BOOLEAN: &str = "boolean";
const STRINGS: &str = "array of strings";
const TABLE: &str = "table";
const TABLES: &str = "array of tables";

/// Every table of the file, in the order the reference lists them.
pub fn tables() -> Vec<Table> {
    vec![instance(), bgp(), peer(), vip(), vip_bgp(), admission(), session_key(), quic(), health(), backend()]
}

fn instance() -> Table {
    Table {
        header: "[instance]",
        about: "The balancer on this host: where it attaches, its tables and its own addresses. Required.",
        fields: vec![
            required(
                "name",
                STRING,
                format!("1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_'"),
                "Names the pins (/sys/fs/bpf/lb/NAME), the control socket and BIRD's protocols; `--instance` on the command line.",
            ),
            required(
                "interfaces",
                STRINGS,
                format!("at least one interface name of 1 to {MAX_INTERFACE_NAME_LEN} characters"),
                "The interfaces the balancer's XDP program is attached to.",
            ),
            optional(
                "xdp_mode",
                STRING,
                quoted(XdpMode::Auto.name()),
                names::<XdpMode>(),
                "`native` in the driver, `generic` in the kernel's generic path, `auto` native where the driver supports it.",
            ),
            optional(
                "flow_table_entries",
                INTEGER,
                DEFAULT_FLOW_TABLE_ENTRIES.to_string(),
                range(FLOW_TABLE_ENTRIES),
                "IPv4 flows the LRU flow table keeps (their backend, for stickiness).",
            ),
            optional(
                "ipv6_flow_table_entries",
                INTEGER,
                DEFAULT_IPV6_FLOW_TABLE_ENTRIES.to_string(),
                range(FLOW_TABLE_ENTRIES),
                "IPv6 flows the flow table keeps.",
            ),
            optional(
                "udp_idle_timeout_secs",
                INTEGER,
                DEFAULT_UDP_IDLE_TIMEOUT_SECS.to_string(),
                range(UDP_IDLE_TIMEOUT_SECS),
                "A UDP flow idle this long is scheduled again as a new flow, and no longer counts as active.",
            ),
            optional(
                "tcp_idle_timeout_secs",
                INTEGER,
                DEFAULT_TCP_IDLE_TIMEOUT_SECS.to_string(),
                range(TCP_IDLE_TIMEOUT_SECS),
                "A TCP flow idle this long no longer counts as active (least connections, `lb status`); its entry stays until the LRU evicts it.",
            ),
            optional(
                "mtu",
                INTEGER,
                DEFAULT_MTU.to_string(),
                range(MTU),
                "The smallest MTU towards the backends: a client packet too large once encapsulated is answered with ICMP \"fragmentation needed\" or \"packet too big\".",
            ),
            required(
                "encap_source_v4",
                STRING,
                format!("an IPv4 prefix of at most {} host bits", lb_common::dataplane::MAX_ENCAP_SRC_V4_HOST_BITS),
                "Outer source addresses of IPIP packets; the host part varies per flow so that backends' NICs spread the flows over their queues.",
            ),
            required(
                "encap_source_v6",
                STRING,
                format!("an IPv6 prefix of at most {} host bits", lb_common::dataplane::MAX_ENCAP_SRC_V6_HOST_BITS),
                "Outer source addresses of IP6IP6 packets.",
            ),
            optional(
                "fallback_mac",
                STRING,
                "none",
                "a MAC address such as `\"02:00:00:00:00:01\"`",
                "Where packets go when neither a resolved next hop nor the FIB knows the backend's; without one they are dropped (`drop_no_egress`).",
            ),
            optional(
                "control_socket",
                STRING,
                "`\"/run/lb/NAME.sock\"`",
                "an absolute path",
                "The agent's control socket, which `lb` commands talk to.",
            ),
            optional(
                "metrics_address",
                STRING,
                "none (no metrics)",
                "an address and port such as `\"127.0.0.1:9100\"`",
                "Where the agent serves Prometheus metrics at /metrics.",
            ),
            optional(
                "flow_hash_key",
                STRING,
                "a public key",
                "32 hexadecimal digits (128 bits)",
                "The secret of the flow hash (SipHash-1-3): the same on every balancer of a fleet, so that all choose the same backends; secret, so that clients cannot aim floods at one backend.",
            ),
            optional(
                "icmp_echo",
                STRING,
                quoted(IcmpEcho::default().name()),
                names::<IcmpEcho>(),
                "What a ping to a VIP address gets: an answer from the balancer, passed to the host, or dropped.",
            ),
        ],
    }
}

fn bgp() -> Table {
    Table {
        header: "[bgp]",
        about: "Announcing the VIP addresses over BGP through BIRD 2 (docs/fleet.md). Optional: without it nothing is announced.",
        fields: vec![
            required("local_asn", INTEGER, "1..=4294967295", "This balancer's AS number."),
            optional(
                "router_id",
                STRING,
                "BIRD's own",
                "an IPv4 address",
                "The BGP router id, when BIRD's own choice will not do.",
            ),
            optional(
                "bird_socket",
                STRING,
                quoted(DEFAULT_BIRD_SOCKET),
                "an absolute path of letters, digits and /._-",
                "BIRD's control socket.",
            ),
            optional(
                "next_hop_v4",
                STRING,
                "BIRD's choice (the session's address)",
                "an IPv4 address",
                "The next hop announced with IPv4 VIPs.",
            ),
            optional(
                "next_hop_v6",
                STRING,
                "BIRD's choice (the session's address)",
                "an IPv6 address",
                "The next hop announced with IPv6 VIPs.",
            ),
            optional(
                "communities",
                STRINGS,
                "none",
                "standard `\"ASN:VALUE\"` or large `\"ASN:V1:V2\"` communities",
                "Communities added to every announced VIP.",
            ),
            optional(
                "drain_grace_secs",
                INTEGER,
                DEFAULT_DRAIN_GRACE_SECS.to_string(),
                range(DRAIN_GRACE_SECS),
                "How long `lb node drain` waits for new flows to stop after the withdrawal.",
            ),
            optional(
                "hold_time_secs",
                INTEGER,
                DEFAULT_HOLD_TIME_SECS.to_string(),
                range(HOLD_TIME_SECS),
                "BGP hold time (keepalives a third of it).",
            ),
            optional(
                "bfd_interval_ms",
                INTEGER,
                DEFAULT_BFD_INTERVAL_MS.to_string(),
                range(BFD_INTERVAL_MS),
                "BFD transmit and receive interval.",
            ),
            optional(
                "bfd_multiplier",
                INTEGER,
                DEFAULT_BFD_MULTIPLIER.to_string(),
                range(BFD_MULTIPLIER),
                "BFD packets missed before the session is down.",
            ),
            required("peer", TABLES, "at least one `[[bgp.peer]]`", "The routers to announce to."),
        ],
    }
}

fn peer() -> Table {
    Table {
        header: "[[bgp.peer]]",
        about: "One BGP neighbour.",
        fields: vec![
            required("address", STRING, "a global or unique local IPv4 or IPv6 address", "The router's address."),
            required(
                "asn",
                INTEGER,
                "1..=4294967295",
                "The router's AS number (the same as `local_asn`: internal BGP).",
            ),
            optional(
                "name",
                STRING,
                "from the address",
                "letters, digits and '_', not bfd, vips4, vips6, export4 or export6",
                "The peer's name in BIRD (`lb_INSTANCE_NAME`) and in `lb status`.",
            ),
            optional(
                "password",
                STRING,
                "none",
                "1 to 80 printable ASCII characters without spaces, '\"' or '\\'",
                "TCP MD5 password of the session.",
            ),
            optional("bfd", BOOLEAN, "`true`", "`true` or `false`", "Whether the session is guarded by BFD."),
        ],
    }
}

fn vip() -> Table {
    Table {
        header: "[[vip]]",
        about: "A virtual service: an address, port and protocol, its scheduler and its backends.",
        fields: vec![
            required(
                "name",
                STRING,
                format!("1 to {MAX_NAME_LEN} of a-z, 0-9, '-' and '_', unique"),
                "Names the VIP in commands, status and metrics.",
            ),
            required("address", STRING, "an IPv4 or IPv6 address", "The VIP's address."),
            required("port", INTEGER, "0..=65535", "The VIP's port; 0 serves every port of the address."),
            required("protocol", STRING, names::<Protocol>(), "The VIP's transport protocol."),
            optional(
                "scheduler",
                STRING,
                quoted(Scheduler::Maglev.name()),
                names::<Scheduler>(),
                "How new flows choose a backend (docs/schedulers.md).",
            ),
            optional(
                "source_prefix_len",
                INTEGER,
                "32 (IPv4), 128 (IPv6)",
                "0..=32 (IPv4), 0..=128 (IPv6)",
                "With `source-hash`: the part of the client's address that is hashed.",
            ),
            optional(
                "forwarding",
                STRING,
                quoted(Forwarding::Ipip.name()),
                names::<Forwarding>(),
                "How packets reach the backends: IPIP or IP6IP6 by the VIP's family, for direct server return.",
            ),
            optional(
                "table_size",
                INTEGER,
                "the smallest listed prime of at least 100 per backend",
                format!("a prime, 3..={}", lb_common::capacity::MAGLEV_MAX_TABLE_SIZE),
                "Entries of the VIP's Maglev table: more entries spread the load more evenly.",
            ),
            optional(
                "failure_mode",
                STRING,
                quoted(FailureMode::Open.name()),
                names::<FailureMode>(),
                "When every backend fails its checks: `open` keeps serving them all, `closed` serves none.",
            ),
            optional(
                "max_ejected_percent",
                INTEGER,
                DEFAULT_MAX_EJECTED_PERCENT.to_string(),
                "0..=100",
                "At most this share of the backends is taken out for failing checks at once.",
            ),
            optional(
                "slow_start_secs",
                INTEGER,
                "0 (none)",
                range(SLOW_START_SECS),
                "A backend that comes up takes its weight gradually over this long.",
            ),
            optional(
                "new_flow_budget",
                INTEGER,
                "0 (none)",
                "0..=1000000000",
                "New flows per second past which the VIP is in flood mode: new flows are forwarded without a flow-table entry.",
            ),
            optional("health", TABLE, "none (never checked)", "`[vip.health]`", "The VIP's health check."),
            optional("admission", TABLE, "everyone admitted", "`[vip.admission]`", "Who is served, and how fast."),
            optional("bgp", TABLE, "none", "`[vip.bgp]`", "Attributes of the VIP's announcement."),
            optional(
                "udp_idle_timeout_secs",
                INTEGER,
                "the instance's",
                format!("{}, udp VIPs", range(super::VIP_UDP_IDLE_TIMEOUT_SECS)),
                "The VIP's own UDP idle timeout, for long sessions (or short ones) next to other VIPs.",
            ),
            optional(
                "session_key",
                TABLE,
                "none (the 5-tuple)",
                "`[vip.session_key]`, udp VIPs",
                "Balance and keep flows by bytes of the payload (docs/sessions.md).",
            ),
            optional(
                "quic",
                TABLE,
                "none",
                "`[vip.quic]`, udp VIPs, not with `session_key`",
                "Route QUIC packets by the server id in their connection id (docs/sessions.md).",
            ),
            required("backend", TABLES, "at least one `[[vip.backend]]`", "The VIP's backends."),
        ],
    }
}

fn vip_bgp() -> Table {
    Table {
        header: "[vip.bgp]",
        about: "Attributes of a VIP address's announcement; VIPs sharing an address must agree.",
        fields: vec![
            optional("med", INTEGER, "none", "0..=4294967295", "Multi-exit discriminator."),
            optional("local_pref", INTEGER, "none", "0..=4294967295", "Local preference (internal BGP)."),
            optional(
                "communities",
                STRINGS,
                "none",
                "standard `\"ASN:VALUE\"` or large `\"ASN:V1:V2\"` communities",
                "Communities added to this VIP's route, with `[bgp] communities`.",
            ),
        ],
    }
}

fn admission() -> Table {
    Table {
        header: "[vip.admission]",
        about: "Who a VIP serves and how fast, decided before a new flow takes a flow-table entry.",
        fields: vec![
            optional(
                "allow",
                STRINGS,
                "everyone",
                "prefixes of the VIP's family",
                "Only clients in these prefixes are served (the longest matching prefix of `allow` and `deny` decides).",
            ),
            optional(
                "deny",
                STRINGS,
                "nobody",
                "prefixes of the VIP's family",
                "Clients in these prefixes are dropped.",
            ),
            optional(
                "packets_per_second",
                INTEGER,
                "no limit",
                range(RATE_PER_SECOND),
                "Packets per second a client source (see `source_prefix_v4`/`_v6`) may send.",
            ),
            optional(
                "packet_burst",
                INTEGER,
                "packets_per_second",
                range(BURST),
                "Packets a source may send at once above its rate.",
            ),
            optional(
                "new_flows_per_second",
                INTEGER,
                "no limit",
                range(RATE_PER_SECOND),
                "New flows per second a client source may open.",
            ),
            optional(
                "new_flow_burst",
                INTEGER,
                "new_flows_per_second",
                range(BURST),
                "New flows a source may open at once above its rate.",
            ),
            optional(
                "source_prefix_v4",
                INTEGER,
                DEFAULT_SOURCE_PREFIX_V4.to_string(),
                "1..=32",
                "The IPv4 prefix that counts as one source for the rates.",
            ),
            optional(
                "source_prefix_v6",
                INTEGER,
                DEFAULT_SOURCE_PREFIX_V6.to_string(),
                "1..=128",
                "The IPv6 prefix that counts as one source for the rates.",
            ),
        ],
    }
}

fn session_key() -> Table {
    Table {
        header: "[vip.session_key]",
        about: "A UDP VIP balances by a session id in the payload instead of the 5-tuple: a client whose NAT \
                changes its port, or who moves to another address, stays on its backend. A datagram too short for \
                the key is balanced by its 5-tuple (counted: `session_key_misses`).",
        fields: vec![
            required(
                "offset",
                INTEGER,
                format!("0..={}", lb_common::session::MAX_KEY_OFFSET),
                "Where the key starts, in bytes from the start of the UDP payload.",
            ),
            required("length", INTEGER, format!("1..={}", lb_common::session::MAX_KEY_LEN), "The key's bytes."),
            optional(
                "mask_hex",
                STRING,
                "all ones",
                "`length` bytes in hexadecimal",
                "ANDed with the key: bits of the field that are not the session's (flags, a counter) are left out.",
            ),
        ],
    }
}

fn quic() -> Table {
    Table {
        header: "[vip.quic]",
        about: "A UDP VIP in front of QUIC servers that encode their server id in the connection ids they issue \
                (QUIC-LB, plaintext): a short-header packet goes to the backend its server id names, whatever the \
                client's address and port (migration, NAT rebinding); long headers and unknown ids go by the 5-tuple.",
        fields: vec![
            required(
                "server_id_offset",
                INTEGER,
                format!("0..={} - server_id_length", lb_common::quic::MAX_CID_LEN),
                "Where the server id starts in the destination connection id (QUIC-LB: 1, after the first octet).",
            ),
            required(
                "server_id_length",
                INTEGER,
                format!("1..={}", lb_common::quic::MAX_SERVER_ID_LEN),
                "The server id's bytes; every backend's `quic_server_id` has this many.",
            ),
        ],
    }
}

fn health() -> Table {
    Table {
        header: "[vip.health], [vip.backend.health]",
        about: "A health check of a VIP's backends, or of one backend (which then replaces the VIP's).",
        fields: vec![
            required(
                "kind",
                STRING,
                "`\"tcp\"`, `\"http\"`, `\"https\"`, `\"udp\"`, `\"quic\"`",
                "What a probe sends and expects (`quic`: a packet of a reserved version, answered by a QUIC server's Version Negotiation).",
            ),
            optional(
                "port",
                INTEGER,
                "the VIP's port",
                "1..=65535 (required for a VIP of every port)",
                "The port probed.",
            ),
            optional(
                "interval_ms",
                INTEGER,
                "1000",
                range(CHECK_INTERVAL_MS),
                "Time between probes (jittered by 10%).",
            ),
            optional(
                "timeout_ms",
                INTEGER,
                "half the interval, at least 10",
                "10..=interval_ms",
                "How long a probe waits for its answer.",
            ),
            optional("rise", INTEGER, "2", range(CHECK_RISE_FALL), "Successes in a row that bring a backend up."),
            optional("fall", INTEGER, "3", range(CHECK_RISE_FALL), "Failures in a row that take a backend down."),
            optional(
                "tunnel",
                BOOLEAN,
                "`false`",
                "`true` or `false`",
                "Probe the VIP through the encapsulation clients' packets take (for http and https: a SYN answered by a SYN-ACK).",
            ),
            optional("method", STRING, "`\"GET\"`", "`\"GET\"`, `\"HEAD\"`", "http, https: the request's method."),
            optional("path", STRING, "`\"/\"`", "starts with /, no spaces", "http, https: the request's path."),
            optional(
                "host",
                STRING,
                "the VIP's address",
                "a host name without spaces",
                "http, https: the Host header.",
            ),
            optional("expect_status", INTEGER, "200", "100..=599", "http, https: the status a passing answer has."),
            Field {
                name: "expect_body",
                kind: STRING,
                default: Some("none (the body is not read)".into()),
                valid: format!("any text, found within the first {} KiB of the body", HTTP_BODY_LIMIT / 1024),
                about: "http, https: text a passing answer's body contains.",
            },
            optional(
                "tls_server_name",
                STRING,
                "the `host`, else the backend's address",
                "a DNS name or an IP address",
                "https: sent as SNI; the certificate must be valid for it.",
            ),
            optional(
                "tls_verify",
                BOOLEAN,
                "`true`",
                "`true` or `false`",
                "https: whether the certificate must chain to a trusted CA and be valid for the server name.",
            ),
            optional(
                "tls_ca_file",
                STRING,
                "the system's CA store",
                "an absolute path to PEM certificates (read with the configuration)",
                "https: the CAs a certificate must chain to.",
            ),
            optional(
                "payload_hex",
                STRING,
                "none (required by udp)",
                "hexadecimal bytes, spaces allowed",
                "udp: the datagram sent.",
            ),
            optional(
                "expect_prefix_hex",
                STRING,
                "none (any answer)",
                "hexadecimal bytes",
                "udp: the bytes a passing answer starts with.",
            ),
        ],
    }
}

fn backend() -> Table {
    Table {
        header: "[[vip.backend]]",
        about: "One backend of a VIP.",
        fields: vec![
            required(
                "address",
                STRING,
                "an IPv4 or IPv6 address, unique in the VIP",
                "Where the backend is; packets are encapsulated to it.",
            ),
            optional(
                "weight",
                INTEGER,
                "1",
                format!("0..={MAX_WEIGHT}"),
                "Its share of new flows relative to the others; 0 takes no new flows.",
            ),
            optional(
                "state",
                STRING,
                quoted(AdminState::Up.name()),
                names::<AdminState>(),
                "`drain`: no new flows, existing ones stay; `disabled`: no traffic at all.",
            ),
            optional(
                "health",
                TABLE,
                "the VIP's",
                "`[vip.backend.health]`",
                "This backend's own check, replacing the VIP's.",
            ),
            optional(
                "quic_server_id",
                STRING,
                "none (required on a QUIC VIP)",
                "`server_id_length` bytes in hexadecimal, unique in the VIP",
                "The server id this backend puts in its connection ids.",
            ),
        ],
    }
}

/// The reference as Markdown (docs/configuration.md).
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated by `lb generate config-reference` from lb-userspace/src/config/reference.rs;\n\
         a unit test fails when this file differs. Do not edit by hand. -->\n\n\
         The configuration is one TOML file (`lb run -c FILE`, `lb check FILE`). Unknown fields are\n\
         refused, and every problem is reported with its line, column and field. Examples:\n\
         `config/example.toml` (installed as /etc/lb/lb.toml), `config/lab.toml` (the lab's),\n\
         `config/fleet.toml` (with `[bgp]`). `lb config dump` prints the running configuration\n\
         with every default filled in.\n",
    );
    for table in tables() {
        out += &format!("\n## `{}`\n\n{}\n\n", table.header, table.about);
        out += "| field | type | default | valid values | meaning |\n| --- | --- | --- | --- | --- |\n";
        for f in &table.fields {
            let default = f.default.as_deref().unwrap_or("**required**");
            out += &format!(
                "| `{}` | {} | {} | {} | {} |\n",
                f.name,
                f.kind,
                default,
                f.valid,
                f.about.replace('|', "\\|")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_aux::serde_introspection::serde_introspect;

    use super::*;
    use crate::config::raw;

    fn fields_of(header: &str) -> Vec<&'static str> {
        let table = tables().into_iter().find(|t| t.header == header).expect("listed");
        table.fields.iter().map(|f| f.name).collect()
    }

    /// Each table lists exactly the fields its serde type accepts, in the type's order.
    #[test]
    fn every_field_of_the_file_is_listed() {
        for (header, accepted) in [
            ("[instance]", serde_introspect::<raw::Instance>()),
            ("[bgp]", serde_introspect::<raw::Bgp>()),
            ("[[bgp.peer]]", serde_introspect::<raw::Peer>()),
            ("[[vip]]", serde_introspect::<raw::Vip>()),
            ("[vip.bgp]", serde_introspect::<raw::VipBgp>()),
            ("[vip.admission]", serde_introspect::<raw::Admission>()),
            ("[vip.session_key]", serde_introspect::<raw::SessionKey>()),
            ("[vip.quic]", serde_introspect::<raw::Quic>()),
            ("[vip.health], [vip.backend.health]", serde_introspect::<raw::Health>()),
            ("[[vip.backend]]", serde_introspect::<raw::Backend>()),
        ] {
            assert_eq!(fields_of(header), accepted, "{header}");
        }
        let top: Vec<&str> = tables().iter().map(|t| t.header).collect();
        assert_eq!(serde_introspect::<raw::File>(), ["instance", "bgp", "vip"], "tables: {top:?}");
    }

    #[test]
    fn docs_configuration_md_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == markdown(),
            "{} is stale: run `cargo run -p lb-userspace -- generate config-reference > docs/configuration.md`",
            path.display()
        );
    }
}
