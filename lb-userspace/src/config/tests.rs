use super::*;

const MINIMAL: &str = r#"
[instance]
name = "edge"
interfaces = ["eth0"]
encap_source_v4 = "198.18.200.0/24"
encap_source_v6 = "fd00:200::/112"

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
protocol = "tcp"

[[vip.backend]]
address = "198.18.0.21"

[[vip.backend]]
address = "fd00::22"
weight = 3
"#;

fn problems(text: &str) -> Vec<Problem> {
    Config::parse(text, "test.toml").expect_err("should be rejected").problems
}

/// The one problem of `text`, as "line:column: field: message".
fn only_problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    format!("{}:{}: {}: {}", p[0].line, p[0].column, p[0].field, p[0].message)
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(c.instance.xdp_mode, XdpMode::Auto);
    assert_eq!(c.instance.flow_table_entries, DEFAULT_FLOW_TABLE_ENTRIES);
    assert_eq!(c.instance.ipv6_flow_table_entries, DEFAULT_IPV6_FLOW_TABLE_ENTRIES);
    assert_eq!(c.instance.udp_idle_timeout_secs, 30);
    assert_eq!(c.instance.tcp_idle_timeout_secs, 900);
    assert_eq!(c.instance.mtu, 1500);
    assert_eq!(c.instance.encap_source_v4, SourcePrefix { network: Ipv4Addr::new(198, 18, 200, 0), host_bits: 8 });
    assert_eq!(c.instance.encap_source_v6.host_bits, 16);
    assert_eq!(c.instance.fallback_mac, None);
    let vip = &c.vips[0];
    assert_eq!(
        (vip.port, vip.protocol, vip.scheduler, vip.forwarding, vip.table_size),
        (80, Protocol::Tcp, Scheduler::Maglev, Forwarding::Ipip, 65_537)
    );
    assert_eq!(
        vip.backends[0],
        Backend {
            address: "198.18.0.21".parse().unwrap(),
            weight: 1,
            state: AdminState::Up,
            health: None,
            quic_server_id: None
        }
    );
    assert_eq!(vip.backends[1].weight, 3);
    assert_eq!(c.backend_count(), 2);
}

#[test]
fn unknown_field_is_rejected_where_it_stands() {
    let text = MINIMAL.replace("port = 80", "port = 80\ntable_sise = 251");
    let got = only_problem(&text);
    assert!(got.starts_with("12:1: vip[0].table_sise: unknown field `table_sise`"), "{got}");
}

#[test]
fn the_parsers_errors_name_the_field() {
    let got = only_problem(&MINIMAL.replace("port = 80", "port = \"80\""));
    assert!(got.starts_with("11:8: vip[0].port: invalid type: string \"80\", expected i64"), "{got}");
    let got = only_problem(&MINIMAL.replace("weight = 3", "weight = [3]"));
    assert!(got.starts_with("19:10: vip[0].backend[1].weight: invalid type"), "{got}");
    let got = only_problem(&MINIMAL.replace("port = 80\n", ""));
    assert!(got.contains(": vip[0]: missing field `port`"), "{got}");
}

#[test]
fn addresses_no_host_can_reach_are_refused() {
    for (from, to, field) in [
        ("address = \"198.18.100.1\"", "address = \"0.0.0.0\"", "vip[0].address"),
        ("address = \"198.18.0.21\"", "address = \"224.0.0.5\"", "vip[0].backend[0].address"),
        ("address = \"198.18.0.21\"", "address = \"255.255.255.255\"", "vip[0].backend[0].address"),
        ("address = \"fd00::22\"", "address = \"::1\"", "vip[0].backend[1].address"),
        ("address = \"fd00::22\"", "address = \"ff02::1\"", "vip[0].backend[1].address"),
    ] {
        let got = only_problem(&MINIMAL.replace(from, to));
        assert!(got.contains(&format!("{field}: ")) && got.contains("which no other host can reach"), "{got}");
    }
    let got = only_problem(&MINIMAL.replace("address = \"198.18.0.21\"", "address = \"198.18.100.1\""));
    assert!(got.contains("vip[0].backend[0].address: 198.18.100.1 is the address of VIP web"), "{got}");
}

#[test]
fn a_thousand_problems_are_reported_as_a_hundred_and_a_count() {
    let mut text = MINIMAL.to_string();
    for _ in 0..1000 {
        text += "[[vip.backend]]\naddress = \"0.0.0.0\"\n";
    }
    let e = Config::parse(&text, "test.toml").expect_err("should be rejected");
    assert_eq!((e.problems.len(), e.omitted), (100, 900));
    assert!(e.to_string().ends_with("test.toml: and 900 more problems; fix these first"), "{e}");
    // Lines are counted from an index, not by rescanning: the last problem's line is right.
    assert_eq!((e.problems[0].line, e.problems[99].line), (21, 21 + 2 * 99));
}

#[test]
fn files_too_large_or_not_text_are_refused_with_where() {
    let huge = "#".repeat(MAX_CONFIG_BYTES + 1);
    let e = Config::parse(&huge, "huge.toml").expect_err("too large");
    assert!(e.to_string().contains("is larger than 8388608 bytes"), "{e}");
    // A 100 MB file (sparse) is refused from its first MAX_CONFIG_BYTES + 1 bytes.
    let path = std::env::temp_dir().join(format!("lb-config-test-huge-{}.toml", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(100 << 20).unwrap();
    let e = Config::load(&path).expect_err("too large");
    std::fs::remove_file(&path).unwrap();
    assert!(e.to_string().contains("is larger than 8388608 bytes"), "{e}");
    let path = std::env::temp_dir().join(format!("lb-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, b"[instance]\nname = \"a\"\nmtu = \xff\n").unwrap();
    let e = Config::load(&path).expect_err("not text");
    std::fs::remove_file(&path).unwrap();
    assert_eq!((e.problems[0].line, e.problems[0].column), (3, 7));
    assert!(e.problems[0].message.starts_with("byte 0xff is not UTF-8 text"), "{e}");
}

#[test]
fn syntax_error_has_a_position() {
    let got = only_problem("[instance\nname = 1");
    assert!(got.starts_with("1:10"), "{got}");
}

#[test]
fn table_size_must_be_a_prime_in_range() {
    let got = only_problem(&MINIMAL.replace("port = 80", "port = 80\ntable_size = 65536"));
    assert_eq!(
        got,
        "12:14: vip[0].table_size: 65536 is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537"
    );
    let got = only_problem(&MINIMAL.replace("port = 80", "port = 80\ntable_size = 1048583"));
    assert!(got.contains("1048583 is out of range 3..=1048573"), "{got}");
}

/// A configuration of `vips` VIPs, each with `backends` backends and the given `table_size` line.
fn many(vips: usize, backends: usize, table_size: &str) -> String {
    let mut text = MINIMAL.split("[[vip]]").next().unwrap().to_string();
    for v in 0..vips {
        text += &format!(
            "[[vip]]\nname = \"v{v}\"\naddress = \"198.18.100.1\"\nport = {}\nprotocol = \"udp\"\n{table_size}\n",
            v + 1
        );
        for b in 0..backends {
            text += &format!("[[vip.backend]]\naddress = \"198.19.{}.{}\"\n", b / 250, b % 250 + 1);
        }
    }
    text
}

#[test]
fn the_default_table_size_gives_100_entries_per_backend() {
    let c = Config::parse(&many(1, 3, ""), "test.toml").unwrap();
    assert_eq!(c.vips[0].table_size, 65_537);
    let c = Config::parse(&many(1, 700, ""), "test.toml").unwrap();
    assert_eq!(c.vips[0].table_size, 131_071);
    let c = Config::parse(&many(1, 5000, ""), "test.toml").unwrap();
    assert_eq!(c.vips[0].table_size, 524_287);
}

#[test]
fn the_largest_vip_count_fits_with_default_tables_and_more_table_memory_is_refused() {
    let c = Config::parse(&many(512, 1, ""), "test.toml").unwrap();
    assert_eq!(c.vips.len(), 512);
    // Tables of 1048573 entries take 2 x 256 chunks: 64 VIPs fill 32768 chunks, a 65th does not fit.
    assert!(Config::parse(&many(64, 1, "table_size = 1048573"), "test.toml").is_ok());
    let got = problems(&many(65, 1, "table_size = 1048573"));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].field, "vip[64].table_size");
    assert!(got[0].message.contains("need 33280 chunks of 4096 entries"), "{}", got[0].message);
    assert!(got[0].message.contains("give VIPs with many backends a smaller table_size"), "{}", got[0].message);
    assert!(got[0].line > 0);
}

#[test]
fn values_out_of_range_say_the_range() {
    for (from, to, expect) in [
        ("port = 80", "port = 70000", "vip[0].port: 70000 is out of range 0..=65535"),
        ("weight = 3", "weight = -1", "vip[0].backend[1].weight: -1 is out of range 0..=65535"),
        ("protocol = \"tcp\"", "protocol = \"sctp\"", "vip[0].protocol: \"sctp\" is not a protocol"),
        (
            "address = \"198.18.100.1\"",
            "address = \"198.18.100.300\"",
            "vip[0].address: \"198.18.100.300\" is not an IPv4 or IPv6 address",
        ),
        ("name = \"edge\"", "name = \"edge\"\nmtu = 100", "instance.mtu: 100 is out of range 1280..=9216"),
        ("name = \"edge\"", "name = \"edge\"\nxdp_mode = \"fast\"", "instance.xdp_mode: \"fast\" is not an XDP mode"),
        (
            "\"198.18.200.0/24\"",
            "\"198.18.200.0/8\"",
            "instance.encap_source_v4: prefix length /8 is out of range /16../32",
        ),
        (
            "name = \"edge\"",
            "name = \"edge\"\nfallback_mac = \"02:00:00:00:01\"",
            "instance.fallback_mac: \"02:00:00:00:01\" is not a MAC address",
        ),
        ("interfaces = [\"eth0\"]", "interfaces = []", "instance.interfaces: lists no interface"),
        ("name = \"web\"", "name = \"Web Server\"", "vip[0].name: \"Web Server\" is not a valid name"),
    ] {
        let text = MINIMAL.replacen(from, to, 1);
        let got = only_problem(&text);
        assert!(got.contains(expect), "{to}: got {got}");
    }
}

#[test]
fn duplicates_are_rejected() {
    let twice =
        format!("{MINIMAL}\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n");
    let p = problems(&twice);
    assert!(p.iter().any(|p| p.message.contains("already the name of vip[0]")), "{p:#?}");
    assert!(p.iter().any(|p| p.message.contains("vip[0] already serves 198.18.100.1 port 80 tcp")), "{p:#?}");
    let backend_twice = MINIMAL.replace("address = \"fd00::22\"", "address = \"198.18.0.21\"");
    assert!(
        only_problem(&backend_twice).contains("vip[0].backend[1].address: 198.18.0.21 is already vip[0].backend[0]")
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL.replace("port = 80", "port = -1").replace("weight = 3", "weight = 1000000").replace("mtu", "x");
    let p = problems(&text);
    assert_eq!(p.len(), 2, "{p:#?}");
    let shown = ConfigError { source_name: "test.toml".into(), problems: p, omitted: 0 }.to_string();
    assert!(shown.lines().all(|l| l.starts_with("test.toml:")), "{shown}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no example configs in {}", dir.display());
}

#[test]
fn health_checks_and_backend_states_parse() {
    let text = MINIMAL.replace(
        "port = 80\nprotocol = \"tcp\"",
        "port = 80\nprotocol = \"tcp\"\nslow_start_secs = 10\nfailure_mode = \"closed\"\n\
         [vip.health]\nkind = \"http\"\npath = \"/healthz\"\nexpect_status = 204\nexpect_body = \"ok\"\ninterval_ms = 200\nrise = 1\nfall = 2\ntunnel = true",
    ) + "state = \"drain\"\n[vip.backend.health]\nkind = \"udp\"\nport = 53\npayload_hex = \"ab cd 01\"\nexpect_prefix_hex = \"abcd\"\n";
    let c = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let vip = &c.vips[0];
    assert_eq!(vip.failure_mode, FailureMode::Closed);
    assert_eq!(vip.slow_start, std::time::Duration::from_secs(10));
    let h = vip.health.as_ref().unwrap();
    assert_eq!((h.port, h.rise, h.fall, h.tunnel), (80, 1, 2, true));
    assert_eq!(h.interval, std::time::Duration::from_millis(200));
    assert_eq!(h.timeout, std::time::Duration::from_millis(100));
    assert!(matches!(&h.kind, CheckKind::Http { expect_status: 204, path, .. } if path == "/healthz"));
    let b = &vip.backends[1];
    assert_eq!(b.state, AdminState::Drain);
    assert!(
        matches!(&vip.check_for(b).unwrap().kind, CheckKind::Udp { payload, expect_prefix } if payload == &[0xab, 0xcd, 1] && expect_prefix == &[0xab, 0xcd])
    );
    assert_eq!(vip.check_for(&vip.backends[0]), vip.health.as_ref());
    let quic = MINIMAL
        .replace("port = 80\nprotocol = \"tcp\"", "port = 443\nprotocol = \"udp\"\n[vip.health]\nkind = \"quic\"");
    let c = Config::parse(&quic, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.vips[0].health.as_ref().map(|h| (&h.kind, h.port)), Some((&CheckKind::Quic, 443)));
}

#[test]
fn bad_health_checks_are_explained() {
    let with = |health: &str| {
        MINIMAL
            .replace("port = 80\nprotocol = \"tcp\"", &format!("port = 80\nprotocol = \"tcp\"\n[vip.health]\n{health}"))
    };
    for (health, expect) in [
        ("kind = \"icmp\"", "\"icmp\" is not a check kind"),
        ("kind = \"udp\"", "a udp check needs `payload_hex`"),
        ("kind = \"tcp\"\npath = \"/\"", "path do(es) not apply to a tcp check"),
        ("kind = \"quic\"\npayload_hex = \"ab\"", "payload_hex do(es) not apply to a quic check"),
        ("kind = \"http\"\ninterval_ms = 100\ntimeout_ms = 200", "timeout_ms: 200 is out of range 10..=100"),
        ("kind = \"udp\"\npayload_hex = \"xyz\"", "is not hexadecimal bytes"),
        ("kind = \"http\"\nrise = 0", "rise: 0 is out of range 1..=10"),
    ] {
        let got = only_problem(&with(health));
        assert!(got.contains(expect), "{health}: {got}");
    }
    let all_ports =
        MINIMAL.replace("port = 80\nprotocol = \"tcp\"", "port = 0\nprotocol = \"tcp\"\n[vip.health]\nkind = \"tcp\"");
    assert!(only_problem(&all_ports).contains("an all-ports VIP's check needs a `port`"));
}

/// A PEM file of one CA certificate, in a fresh directory.
fn ca_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-config-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join("ca.pem");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

#[test]
fn https_checks_read_their_ca_file() {
    let ca = ca_file("https");
    let with = |health: &str| {
        MINIMAL.replace(
            "port = 80\nprotocol = \"tcp\"",
            &format!("port = 80\nprotocol = \"tcp\"\n[vip.health]\nkind = \"https\"\nport = 443\n{health}"),
        )
    };
    let text = with(&format!("tls_server_name = \"web.example\"\ntls_ca_file = \"{}\"", ca.display()));
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let Some(CheckKind::Http { tls: Some(tls), .. }) = config.vips[0].health.as_ref().map(|h| &h.kind) else {
        panic!("{config:?}")
    };
    assert_eq!((tls.server_name.as_deref(), tls.verify), (Some("web.example"), true));
    assert_eq!(tls.ca.as_ref().map(|ca| (ca.file.as_path(), ca.certificates.len())), Some((ca.as_path(), 1)));
    let rendered = config.to_toml();
    assert_eq!(Config::parse(&rendered, "rendered").unwrap_or_else(|e| panic!("{e}\n{rendered}")), config);
    let defaults = Config::parse(&with(""), "test.toml").unwrap();
    assert!(matches!(
        defaults.vips[0].health.as_ref().map(|h| &h.kind),
        Some(CheckKind::Http { tls: Some(Tls { server_name: None, verify: true, ca: None }), .. })
    ));

    let not_pem = ca.with_file_name("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for (health, expect) in [
        ("tls_ca_file = \"ca.pem\"".to_string(), "tls_ca_file: \"ca.pem\" is not an absolute path".to_string()),
        (
            "tls_ca_file = \"/nonexistent/ca.pem\"".into(),
            "tls_ca_file: cannot read /nonexistent/ca.pem: No such file".into(),
        ),
        (format!("tls_ca_file = \"{}\"", not_pem.display()), format!("{} holds no PEM certificate", not_pem.display())),
        (
            format!("tls_verify = false\ntls_ca_file = \"{}\"", ca.display()),
            "tls_ca_file: has no use with `tls_verify = false`".into(),
        ),
        ("tls_server_name = \"a b\"".into(), "\"a b\" is not a DNS name or an IP address".into()),
        ("payload_hex = \"ab\"".into(), "payload_hex do(es) not apply to a https check".into()),
    ] {
        let got = only_problem(&with(&health));
        assert!(got.contains(&expect), "{health}: {got}");
    }
    let http_with_tls = MINIMAL.replace(
        "port = 80\nprotocol = \"tcp\"",
        "port = 80\nprotocol = \"tcp\"\n[vip.health]\nkind = \"http\"\ntls_verify = false",
    );
    assert!(only_problem(&http_with_tls).contains("tls_verify do(es) not apply to a http check"));
    let _ = std::fs::remove_dir_all(ca.parent().unwrap());
}

#[test]
fn rendering_parses_back_to_the_same_config() {
    let text = MINIMAL.replace(
        "port = 80\nprotocol = \"tcp\"",
        "port = 80\nprotocol = \"tcp\"\nslow_start_secs = 10\n[vip.health]\nkind = \"http\"\nexpect_body = \"a \\\"quoted\\\" body\"",
    ) + "state = \"drain\"\n[vip.backend.health]\nkind = \"udp\"\npayload_hex = \"abcd\"\n";
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let rendered = config.to_toml();
    let again = Config::parse(&rendered, "rendered").unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    assert_eq!(config, again, "{rendered}");
    // Every example configuration, `[bgp]` included.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let example = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Config::parse(&example.to_toml(), "rendered").unwrap(), example, "{}", path.display());
    }
}

#[test]
fn schedulers_parse_with_their_settings() {
    let with = |extra: &str| {
        MINIMAL.replace("port = 80\nprotocol = \"tcp\"", &format!("port = 80\nprotocol = \"tcp\"\n{extra}"))
    };
    let parse = |extra: &str| Config::parse(&with(extra), "t.toml").unwrap_or_else(|e| panic!("{e}")).vips[0].scheduler;
    assert_eq!(parse(""), Scheduler::Maglev);
    assert_eq!(parse("scheduler = \"source-hash\""), Scheduler::SourceHash { prefix_len: 32 });
    assert_eq!(parse("scheduler = \"source-hash\"\nsource_prefix_len = 24"), Scheduler::SourceHash { prefix_len: 24 });
    assert_eq!(parse("scheduler = \"round-robin\""), Scheduler::RoundRobin);
    assert_eq!(parse("scheduler = \"weighted-round-robin\""), Scheduler::WeightedRoundRobin);
    assert_eq!(parse("scheduler = \"least-connections\""), Scheduler::LeastConnections);
    for (extra, expect) in [
        ("scheduler = \"source-hash\"\nsource_prefix_len = 33", "source_prefix_len: 33 is out of range 0..=32"),
        ("scheduler = \"maglev\"\nsource_prefix_len = 24", "applies only to scheduler = \"source-hash\""),
        ("scheduler = \"random\"", "\"random\" is not a scheduler"),
    ] {
        let got = only_problem(&with(extra));
        assert!(got.contains(expect), "{extra}: {got}");
    }
}

#[test]
fn new_flow_budget_is_off_by_default_and_bounded() {
    assert_eq!(Config::parse(MINIMAL, "test.toml").unwrap().vips[0].new_flow_budget, 0);
    let with = MINIMAL.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nnew_flow_budget = 200000\n");
    assert_eq!(Config::parse(&with, "test.toml").unwrap().vips[0].new_flow_budget, 200_000);
    let negative = MINIMAL.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nnew_flow_budget = -1\n");
    assert_eq!(only_problem(&negative), "13:19: vip[0].new_flow_budget: -1 is out of range 0..=1000000000");
}

/// MINIMAL with `[vip.admission]` holding `body`.
fn with_admission(body: &str) -> String {
    MINIMAL.replace("protocol = \"tcp\"\n", &format!("protocol = \"tcp\"\n[vip.admission]\n{body}\n"))
}

#[test]
fn admission_parses_with_defaults() {
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert!(c.vips[0].admission.admits_all());
    let text = with_admission(
        "allow = [\"198.18.0.0/24\", \"198.18.9.9\"]\ndeny = [\"198.18.0.64/26\"]\npackets_per_second = 1000\n\
         new_flows_per_second = 50\nnew_flow_burst = 10\nsource_prefix_v4 = 24",
    );
    let a = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}")).vips[0].admission.clone();
    assert_eq!(
        a.allow,
        vec![
            Prefix { network: "198.18.0.0".parse().unwrap(), len: 24 },
            Prefix { network: "198.18.9.9".parse().unwrap(), len: 32 }
        ]
    );
    assert_eq!(a.deny, vec![Prefix { network: "198.18.0.64".parse().unwrap(), len: 26 }]);
    // A burst defaults to one second's worth.
    assert_eq!(a.packets, Some(RateLimit { per_second: 1000, burst: 1000 }));
    assert_eq!(a.new_flows, Some(RateLimit { per_second: 50, burst: 10 }));
    assert_eq!((a.source_prefix_v4, a.source_prefix_v6), (24, 64));
    // And it renders back.
    let config = Config::parse(&text, "test.toml").unwrap();
    assert_eq!(Config::parse(&config.to_toml(), "rendered").unwrap(), config);
}

#[test]
fn bad_admission_is_explained() {
    assert_eq!(
        only_problem(&with_admission("allow = [\"198.18.0.1/24\"]")),
        "14:10: vip[0].admission.allow[0]: 198.18.0.1/24 has host bits set; the prefix is 198.18.0.0/24"
    );
    assert_eq!(
        only_problem(&with_admission("deny = [\"fd00::/64\"]")),
        "14:9: vip[0].admission.deny[0]: fd00::/64 is an IPv6 prefix, but the VIP 198.18.100.1 is IPv4: its clients are IPv4"
    );
    assert_eq!(
        only_problem(&with_admission("allow = [\"198.18.0.0/24\"]\ndeny = [\"198.18.0.0/24\"]")),
        "15:9: vip[0].admission.deny[0]: 198.18.0.0/24 is already vip[0].admission.allow[0]"
    );
    assert_eq!(
        only_problem(&with_admission("deny = [\"198.18.0.0/33\"]")),
        "14:9: vip[0].admission.deny[0]: \"33\" is not a prefix length of 198.18.0.0/33 (0..=32)"
    );
    assert_eq!(
        only_problem(&with_admission("packet_burst = 10")),
        "14:16: vip[0].admission.packet_burst: a burst needs a rate: set packets_per_second too"
    );
    assert_eq!(
        only_problem(&with_admission("new_flows_per_second = 0")),
        "14:24: vip[0].admission.new_flows_per_second: 0 is out of range 1..=100000000"
    );
    assert_eq!(
        only_problem(&with_admission("source_prefix_v6 = 129")),
        "14:20: vip[0].admission.source_prefix_v6: 129 is out of range 1..=128"
    );
    assert_eq!(
        only_problem(&with_admission("allow = [\"any\"]")),
        "14:10: vip[0].admission.allow[0]: \"any\" is not a prefix; write it as ADDRESS/LENGTH or ADDRESS"
    );
}

#[test]
fn flow_hash_key_is_128_secret_bits() {
    assert_eq!(Config::parse(MINIMAL, "test.toml").unwrap().instance.flow_hash_key, None);
    let key = |k: &str| MINIMAL.replace("[instance]\n", &format!("[instance]\nflow_hash_key = \"{k}\"\n"));
    let c = Config::parse(&key("00112233445566778899aabbccddeeff"), "test.toml").unwrap();
    assert_eq!(c.instance.flow_hash_key, Some([0x0011_2233_4455_6677, 0x8899_aabb_ccdd_eeff]));
    assert_eq!(Config::parse(&c.to_toml(), "rendered").unwrap(), c);
    let short = only_problem(&key("0011"));
    assert!(short.starts_with("3:17: instance.flow_hash_key: is not 32 hexadecimal digits"), "{short}");
    assert!(!short.contains("0011"), "the error repeats the key: {short}");
    assert_eq!(
        only_problem(&key(&"0".repeat(32))),
        "3:17: instance.flow_hash_key: is all zeros, which is no secret; use random digits"
    );
}

#[test]
fn icmp_echo_policy_defaults_to_reply() {
    assert_eq!(Config::parse(MINIMAL, "test.toml").unwrap().instance.icmp_echo, IcmpEcho::Reply);
    let with = |p: &str| MINIMAL.replace("[instance]\n", &format!("[instance]\nicmp_echo = \"{p}\"\n"));
    assert_eq!(Config::parse(&with("drop"), "test.toml").unwrap().instance.icmp_echo, IcmpEcho::Drop);
    assert_eq!(
        only_problem(&with("ignore")),
        "3:13: instance.icmp_echo: \"ignore\" is not an echo policy; use \"reply\", \"pass\" or \"drop\""
    );
}

#[test]
fn session_keys_parse_and_are_explained() {
    let udp = |extra: &str| {
        MINIMAL.replace("port = 80\nprotocol = \"tcp\"", &format!("port = 7777\nprotocol = \"udp\"\n{extra}"))
    };
    let text = udp("[vip.session_key]\noffset = 4\nlength = 4\nmask_hex = \"ffff ff00\"");
    let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let key = config.vips[0].session_key;
    assert_eq!((key.offset, key.length), (4, 4));
    assert_eq!(key.mask[..5], [0xff, 0xff, 0xff, 0, 0]);
    let rendered = config.to_toml();
    assert_eq!(Config::parse(&rendered, "rendered").unwrap_or_else(|e| panic!("{e}\n{rendered}")), config);
    let plain = Config::parse(&udp("[vip.session_key]\noffset = 0\nlength = 16"), "t.toml").unwrap();
    assert_eq!(plain.vips[0].session_key.mask, [0xff; 16]);

    for (extra, expect) in [
        ("[vip.session_key]\noffset = 1401\nlength = 4", "session_key.offset: 1401 is out of range 0..=1400"),
        ("[vip.session_key]\noffset = 0\nlength = 17", "session_key.length: 17 is out of range 1..=16"),
        ("[vip.session_key]\noffset = 0\nlength = 2\nmask_hex = \"ff\"", "mask_hex: has 1 bytes; the key has 2"),
        (
            "scheduler = \"source-hash\"\n[vip.session_key]\noffset = 0\nlength = 4",
            "does not go with scheduler = \"source-hash\"",
        ),
    ] {
        let got = only_problem(&udp(extra));
        assert!(got.contains(expect), "{extra}: {got}");
    }
    let tcp = MINIMAL.replace(
        "port = 80\nprotocol = \"tcp\"",
        "port = 80\nprotocol = \"tcp\"\n[vip.session_key]\noffset = 0\nlength = 4",
    );
    assert!(only_problem(&tcp).contains("vip[0].session_key: applies only to a udp VIP"));
}

#[test]
fn a_udp_vip_may_have_its_own_idle_timeout() {
    let udp = |extra: &str| {
        MINIMAL.replace("port = 80\nprotocol = \"tcp\"", &format!("port = 7777\nprotocol = \"udp\"\n{extra}"))
    };
    let config = Config::parse(&udp("udp_idle_timeout_secs = 3600"), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.vips[0].udp_idle_timeout_secs, Some(3600));
    assert_eq!(Config::parse(&config.to_toml(), "rendered").unwrap(), config);
    assert_eq!(Config::parse(&udp(""), "t.toml").unwrap().vips[0].udp_idle_timeout_secs, None);
    assert!(only_problem(&udp("udp_idle_timeout_secs = 65536")).contains("65536 is out of range 1..=65535"));
    let tcp =
        MINIMAL.replace("port = 80\nprotocol = \"tcp\"", "port = 80\nprotocol = \"tcp\"\nudp_idle_timeout_secs = 60");
    assert!(only_problem(&tcp).contains("udp_idle_timeout_secs: applies only to a udp VIP"));
}

#[test]
fn quic_vips_name_their_backends_server_ids() {
    let quic = |vip_extra: &str, first: &str, second: &str| {
        MINIMAL
            .replace("port = 80\nprotocol = \"tcp\"", &format!("port = 443\nprotocol = \"udp\"\n{vip_extra}"))
            .replace("address = \"198.18.0.21\"", &format!("address = \"198.18.0.21\"\n{first}"))
            .replace("weight = 3", &format!("weight = 3\n{second}"))
    };
    let spec = "[vip.quic]\nserver_id_offset = 1\nserver_id_length = 2";
    let text = quic(spec, "quic_server_id = \"ab01\"", "quic_server_id = \"ab02\"");
    let config = Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let vip = &config.vips[0];
    assert_eq!((vip.session_key.kind, vip.session_key.offset, vip.session_key.length), (1, 2, 2));
    assert_eq!(vip.backends[0].quic_server_id, Some([0xab, 1, 0, 0, 0, 0, 0, 0]));
    let rendered = config.to_toml();
    assert_eq!(Config::parse(&rendered, "rendered").unwrap_or_else(|e| panic!("{e}\n{rendered}")), config);

    for (text, expect) in [
        (quic(spec, "quic_server_id = \"ab01\"", ""), "a QUIC VIP's backend needs `quic_server_id`"),
        (
            quic(spec, "quic_server_id = \"ab01\"", "quic_server_id = \"ab01\""),
            "quic_server_id: is already vip[0].backend[0]'s",
        ),
        (
            quic(spec, "quic_server_id = \"ab\"", "quic_server_id = \"ab02\""),
            "has 1 bytes; the VIP's server_id_length is 2",
        ),
        (
            quic(
                "[vip.quic]\nserver_id_offset = 19\nserver_id_length = 2",
                "quic_server_id = \"ab01\"",
                "quic_server_id = \"ab02\"",
            ),
            "server_id_offset: 19 is out of range 0..=18",
        ),
        (quic("", "quic_server_id = \"ab01\"", ""), "quic_server_id: applies only to a VIP with [vip.quic]"),
        (
            quic(
                &format!("{spec}\n[vip.session_key]\noffset = 0\nlength = 4"),
                "quic_server_id = \"ab01\"",
                "quic_server_id = \"ab02\"",
            ),
            "session_key: does not go with [vip.quic]",
        ),
    ] {
        let got = only_problem(&text);
        assert!(got.contains(expect), "{got}");
    }
}
