//! End-to-end tests of health checking and live control in the namespaced lab: real servers
//! failing and coming back, decapsulation removed under a tunnel check, drains, 200 random live
//! changes under load, `lb plan` against measured shares, refused changes, and the fail-open
//! guard rail. Needs root; never skips; the lab is removed at the end.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_lab::{BACKEND_NAMES, CLIENT, in_namespace, vip};
use lb_tests::{
    e2e::{CONTROL_SOCKET, EQUAL, Env, Health, Sessions, Trial, run_trials, start, tally},
    traffic::{Dns, Http, http_connection},
};
use lb_userspace::{
    agent::{
        control::{self, Request},
        status::{BackendStatus, Changed, Status},
    },
    config::AdminState,
    dataplane::{BalancerMaps, pins::PinDir},
    host::nexthop::{Resolver, XdpAttachment},
    inspect::VipPlan,
    reconcile::policy::HealthState,
};

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;
const PROBE_TIMEOUT_MS: u64 = 100;
const RISE: u64 = 2;

fn http_check() -> String {
    format!(
        "kind = \"http\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {PROBE_TIMEOUT_MS}\nrise = {RISE}\nfall = {FALL}"
    )
}

fn dns_check() -> String {
    format!(
        "kind = \"udp\"\npayload_hex = \"abcd01000001000000000000 0677686f616d69 036c6162 00 0010 0001\"\n\
         expect_prefix_hex = \"abcd\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {PROBE_TIMEOUT_MS}\nrise = {RISE}\nfall = {FALL}"
    )
}

fn ask<T: serde::de::DeserializeOwned>(request: Request) -> anyhow::Result<T> {
    Ok(control::request(Path::new(CONTROL_SOCKET), &request)?.into_answer()?)
}

/// Asks for a change; what it did.
fn change(request: Request) -> anyhow::Result<Option<Changed>> {
    ask(request)
}

fn status() -> anyhow::Result<Status> {
    ask(Request::Status)
}

/// The agent's view of one backend of one VIP.
fn backend(vip_name: &str, address: IpAddr) -> anyhow::Result<BackendStatus> {
    status()?
        .backends
        .into_iter()
        .find(|r| r.decision.vip == vip_name && r.decision.address == address)
        .with_context(|| format!("no backend {address} of {vip_name} in the status"))
}

fn wait_health(vip_name: &str, address: IpAddr, health: HealthState, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if backend(vip_name, address)?.decision.health == health {
            return Ok(start.elapsed());
        }
        ensure!(start.elapsed() < limit, "{address} of {vip_name} not {health:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn be(i: usize) -> IpAddr {
    IpAddr::V4(lb_lab::backend_v4(i))
}

/// A server of the lab's backends, as health checking sees it.
#[derive(Clone, Copy)]
enum Service {
    /// nginx behind the web VIP; the clients open TCP connections.
    Http,
    /// dnsmasq behind the dns VIP; the clients open UDP sessions (a new socket per query).
    Dns,
}

impl Service {
    fn vip_name(self) -> &'static str {
        match self {
            Service::Http => "web",
            Service::Dns => "dns",
        }
    }

    /// One new flow: None if it was served, else why not.
    fn new_flow(self) -> Option<String> {
        let served = match self {
            Service::Http => http_connection(vip(false), 1),
            Service::Dns => Dns::with_timeout(vip(false), Duration::from_millis(300)).and_then(|mut d| d.ask()),
        };
        served.err().map(|e| format!("{e:#}"))
    }

    fn stop(self, lab: &lb_lab::Lab) -> anyhow::Result<()> {
        match self {
            Service::Http => lab.stop_http(0),
            Service::Dns => lab.stop_dns(0),
        }
    }

    fn start(self, lab: &lb_lab::Lab) -> anyhow::Result<()> {
        match self {
            Service::Http => lab.start_http(0),
            Service::Dns => lab.start_dns(0),
        }
    }
}

/// Each new flow of a [`flow_stream`]: when it started, and why it failed if it did.
type FlowLog = Vec<(Instant, Option<String>)>;

/// New flows opened in the client namespace until stopped, `pace` apart (zero: back to back):
/// (start time, why it failed if it did) of each. HTTP flows use the test run's client ports,
/// of which there are about 22,000 (`lb_tests::traffic`).
fn flow_stream(
    service: Service,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<FlowLog>> {
    std::thread::spawn(move || {
        in_namespace(CLIENT, move || {
            let mut log = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                log.push((at, service.new_flow()));
                std::thread::sleep(pace);
            }
            log
        })
    })
}

fn http_server_down_and_back(env: &mut Env) -> anyhow::Result<()> {
    server_down_and_back(env, Service::Http)
}

fn dns_server_down_and_back(env: &mut Env) -> anyhow::Result<()> {
    server_down_and_back(env, Service::Dns)
}

fn server_down_and_back(env: &mut Env, service: Service) -> anyhow::Result<()> {
    let vip_name = service.vip_name();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = flow_stream(service, Duration::ZERO, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    // A server may take a while to exit; its sockets close at once. Watch while it stops.
    let stopping = {
        let lab = lb_lab::Lab::new(&env.lab.dir, &env.lab.lb);
        std::thread::spawn(move || service.stop(&lab).map(|()| killed.elapsed()))
    };
    let limit = Duration::from_millis(INTERVAL_MS * FALL) + Duration::from_secs(1);
    let detected =
        wait_health(vip_name, be(0), HealthState::Down, limit + Duration::from_secs(2)).map(|_| killed.elapsed());
    let marked_down = Instant::now();
    let stopped = stopping.join().map_err(|_| anyhow::anyhow!("stop thread panicked"))??;
    std::thread::sleep(Duration::from_millis(700));
    service.start(&env.lab)?;
    let restarted = Instant::now();
    let back = wait_health(vip_name, be(0), HealthState::Up, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let log = stream.join().map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    let detected = detected?;
    let back = back?;
    let before: Vec<_> = log.iter().filter(|(at, _)| *at >= killed && *at < marked_down).collect();
    let after: Vec<_> = log.iter().filter(|(at, _)| *at >= marked_down && *at < restarted).collect();
    let failed_after = after.iter().filter(|(_, e)| e.is_some()).count();
    println!(
        "    {vip_name}: server gone {:.0} ms after SIGTERM; down detected {:.0} ms after the kill (limit {} ms); {} of {} new flows failed before, {} of {} after; back up {:.0} ms after the restart",
        stopped.as_secs_f64() * 1000.0,
        detected.as_secs_f64() * 1000.0,
        limit.as_millis(),
        before.iter().filter(|(_, e)| e.is_some()).count(),
        before.len(),
        failed_after,
        after.len(),
        back.as_secs_f64() * 1000.0
    );
    ensure!(detected <= limit, "detection took {detected:?}, more than {limit:?}");
    ensure!(
        failed_after == 0 && !after.is_empty(),
        "{failed_after} new flows failed after the backend was marked down"
    );
    Ok(())
}

fn tunnel_check_catches_missing_decap(env: &mut Env) -> anyhow::Result<()> {
    env.health.web = Some(format!(
        "kind = \"tcp\"\ntunnel = true\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {PROBE_TIMEOUT_MS}\nrise = {RISE}\nfall = {FALL}"
    ));
    env.run_agent(&EQUAL)?;
    let result = (|| {
        for i in 0..3 {
            wait_health("web", be(i), HealthState::Up, Duration::from_secs(3))?;
        }
        env.lab.detach_decap(0)?;
        let took = wait_health("web", be(0), HealthState::Down, Duration::from_secs(3))
            .context("the tunnel check did not notice")?;
        std::thread::sleep(Duration::from_millis(INTERVAL_MS * (FALL + 2)));
        let plain = backend("dns", be(0))?;
        ensure!(plain.decision.health == HealthState::Up, "the plain check should still pass: {plain:?}");
        println!(
            "    tunnel check: down {:.0} ms after decapsulation was removed; the plain check still says up",
            took.as_secs_f64() * 1000.0
        );
        env.lab.attach_decap(0)?;
        wait_health("web", be(0), HealthState::Up, Duration::from_secs(3))?;
        Ok(())
    })();
    env.health.web = Some(http_check());
    let _ = env.lab.attach_decap(0);
    env.run_agent(&EQUAL)?;
    result
}

/// An https check of nginx's TLS port, with the lab's CA, reading a chunked status page; then
/// a name the certificates do not carry, and no certificate check at all.
fn https_checks(env: &mut Env) -> anyhow::Result<()> {
    // The page the check reads is chunked on the wire (nginx runs it through SSI).
    let page =
        lb_lab::ns(lb_lab::BACKENDS[0], "curl", &["-si", "--max-time", "2", &format!("http://{}/status", be(0))])?;
    ensure!(page.to_ascii_lowercase().contains("transfer-encoding: chunked"), "the status page is not chunked: {page}");
    let https = |tls: &str| {
        format!(
            "kind = \"https\"\nport = {}\npath = \"/status\"\nexpect_body = \"443 ok\"\n{tls}\n\
             interval_ms = {INTERVAL_MS}\ntimeout_ms = {PROBE_TIMEOUT_MS}\nrise = {RISE}\nfall = {FALL}",
            lb_lab::HTTPS_PORT
        )
    };
    let ca = env.lab.ca_file();
    let result = (|| {
        env.health.web =
            Some(https(&format!("tls_server_name = \"{}\"\ntls_ca_file = \"{}\"", lb_lab::TLS_NAME, ca.display())));
        env.run_agent(&EQUAL)?;
        for i in 0..3 {
            wait_health("web", be(i), HealthState::Up, Duration::from_secs(3))?;
        }
        let stopping = Instant::now();
        env.lab.stop_http(0)?;
        wait_health("web", be(0), HealthState::Down, Duration::from_secs(3))?;
        let took = stopping.elapsed();
        env.lab.start_http(0)?;
        wait_health("web", be(0), HealthState::Up, Duration::from_secs(3))?;
        println!(
            "    https with the lab's CA: all up; nginx stopped on one: down {:.0} ms after the stop began, back up when started",
            took.as_secs_f64() * 1000.0
        );

        // A name the certificates lack: every probe fails, on the certificate.
        env.health.web = Some(https(&format!("tls_server_name = \"other.lab\"\ntls_ca_file = \"{}\"", ca.display())));
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(INTERVAL_MS * (FALL + 3)));
        let refused = backend("web", be(1))?;
        let error = refused.last_error.clone().unwrap_or_default();
        ensure!(
            refused.decision.health != HealthState::Up && error.contains("certificate"),
            "a certificate for another name passed: {refused:?}"
        );
        println!("    https for a name the certificate lacks: {error}");

        // The system's CA store does not know the lab's CA; without verification it passes.
        env.health.web = Some(https("tls_server_name = \"web.lab\""));
        env.run_agent(&EQUAL)?;
        std::thread::sleep(Duration::from_millis(INTERVAL_MS * (FALL + 3)));
        let unknown = backend("web", be(1))?;
        ensure!(unknown.decision.health != HealthState::Up, "a certificate of an unknown CA passed: {unknown:?}");
        env.health.web = Some(https("tls_verify = false"));
        env.run_agent(&EQUAL)?;
        for i in 0..3 {
            wait_health("web", be(i), HealthState::Up, Duration::from_secs(3))?;
        }
        println!("    https, system CA store: {}; tls_verify = false: all up", unknown.last_error.unwrap_or_default());
        Ok(())
    })();
    env.health.web = Some(http_check());
    let _ = env.lab.start_http(0);
    env.run_agent(&EQUAL)?;
    result
}

fn drain_keeps_connections(_env: &mut Env) -> anyhow::Result<()> {
    in_namespace(CLIENT, || -> anyhow::Result<()> {
        let mut sessions = Sessions::open(0, 0)?;
        for _ in 0..50 {
            let mut c = Http::connect(vip(false))?;
            let name = c.get()?;
            sessions.tcp.push((c, name));
        }
        let on_be2 = sessions.tcp.iter().filter(|(_, n)| n == BACKEND_NAMES[1]).count();
        change(Request::BackendState { vip: "web".into(), address: be(1).to_string(), state: AdminState::Drain })?;
        sessions.check().context("after the drain")?;
        let mut new_on_be2 = 0;
        for _ in 0..300 {
            if http_connection(vip(false), 1)? == BACKEND_NAMES[1] {
                new_on_be2 += 1;
            }
        }
        sessions.check().context("after 300 new connections")?;
        change(Request::BackendState { vip: "web".into(), address: be(1).to_string(), state: AdminState::Up })?;
        println!(
            "    drained be2 with {on_be2} of 50 open connections on it: none broke; {new_on_be2} of 300 new connections went to it"
        );
        ensure!(on_be2 > 0, "no connection landed on be2: the test proves nothing");
        ensure!(new_on_be2 == 0, "{new_on_be2} new connections reached the drained backend");
        Ok(())
    })?
}

/// A small deterministic generator for the random changes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn random_live_changes(_env: &mut Env) -> anyhow::Result<()> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&latencies);
    lb_tests::e2e::under_load(30, 10, move || {
        let mut rng = Lcg(0x1b_5eed);
        let mut be4_in = false;
        for _ in 0..200 {
            let i = rng.next(3) as usize;
            let vip_name = if rng.next(2) == 0 { "web" } else { "dns" };
            let request = match rng.next(4) {
                0 => Request::BackendWeight {
                    vip: vip_name.into(),
                    address: be(i).to_string(),
                    weight: 1 + rng.next(4) as i64,
                },
                1 => {
                    Request::BackendState { vip: vip_name.into(), address: be(i).to_string(), state: AdminState::Drain }
                }
                2 => Request::BackendState { vip: vip_name.into(), address: be(i).to_string(), state: AdminState::Up },
                _ => {
                    be4_in = !be4_in;
                    if be4_in {
                        Request::BackendAdd { vip: "web".into(), address: be(3).to_string(), weight: Some(1) }
                    } else {
                        Request::BackendRemove { vip: "web".into(), address: be(3).to_string() }
                    }
                }
            };
            let start = Instant::now();
            change(request)?;
            recorded.lock().expect("latencies").push(start.elapsed());
        }
        if be4_in {
            change(Request::BackendRemove { vip: "web".into(), address: be(3).to_string() })?;
        }
        for vip_name in ["web", "dns"] {
            for i in 0..3 {
                change(Request::BackendState {
                    vip: vip_name.into(),
                    address: be(i).to_string(),
                    state: AdminState::Up,
                })?;
                change(Request::BackendWeight { vip: vip_name.into(), address: be(i).to_string(), weight: 1 })?;
            }
        }
        Ok(())
    })?;
    let mut l = latencies.lock().expect("latencies").clone();
    l.sort();
    // How long they take is the control-latency benchmark's to judge, not a test's.
    println!(
        "    200 live changes applied: median {:.1} ms, max {:.1} ms from request to the data plane holding it",
        l[l.len() / 2].as_secs_f64() * 1000.0,
        l[l.len() - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}

fn plan_matches_measurement(env: &mut Env) -> anyhow::Result<()> {
    let weights = [(0, 1), (1, 1), (2, 1), (3, 2)];
    let planned = env.lab.dir.join("plan.toml");
    std::fs::write(&planned, lb_tests::e2e::lab_config(&env.workspace, &weights, &env.health)?)?;
    let out = std::process::Command::new(&env.lab.lb).arg("plan").arg(&planned).arg("--json").output()?;
    ensure!(out.status.success(), "lb plan: {}", String::from_utf8_lossy(&out.stderr));
    let plan: Vec<VipPlan> = serde_json::from_slice(&out.stdout)?;
    let web = plan.into_iter().find(|v| v.vip == "198.18.100.1:80/tcp").context("web in the plan")?;
    env.run_agent(&weights)?;
    let result = (|| {
        let counts = tally(2000, |vip| http_connection(vip, 1), vip(false))?;
        let total: usize = counts.values().sum();
        let mut report = Vec::new();
        for (i, _) in weights {
            let predicted = web.shares.get(&be(i).to_string()).context("share")?.1;
            let measured = counts.get(BACKEND_NAMES[i]).copied().unwrap_or(0) as f64 / total as f64;
            report.push(format!(
                "{} planned {:.1}% measured {:.1}%",
                BACKEND_NAMES[i],
                predicted * 100.0,
                measured * 100.0
            ));
            // 5 points: over four standard deviations of 2000 samples.
            ensure!((predicted - measured).abs() <= 0.05, "{}", report.join(", "));
        }
        println!("    plan: {:.1}% of web's hash space moves; {}", web.hash_space_moved * 100.0, report.join(", "));
        Ok(())
    })();
    env.run_agent(&EQUAL)?;
    result
}

fn bad_changes_change_nothing(_env: &mut Env) -> anyhow::Result<()> {
    let generation = status()?.generation;
    let dump: String = ask(Request::ConfigDump)?;
    let err =
        change(Request::BackendWeight { vip: "web".into(), address: be(0).to_string(), weight: 70_000 }).unwrap_err();
    ensure!(err.to_string() == "vip[0].backend[0].weight: 70000 is out of range 0..=65535 (0 = no new flows)", "{err}");
    let bad_table = Request::VipAdd {
        name: "web7".into(),
        address: "198.18.100.7".into(),
        port: 80,
        protocol: "tcp".into(),
        table_size: Some(1000),
    };
    let err = change(bad_table).unwrap_err().to_string();
    ensure!(
        err == "vip[4].table_size: 1000 is not a prime; use a prime such as 251, 1021, 4093, 16381 or 65537",
        "{err}"
    );
    let same_name = Request::VipAdd {
        name: "web".into(),
        address: "198.18.100.7".into(),
        port: 80,
        protocol: "tcp".into(),
        table_size: None,
    };
    let err = change(same_name).unwrap_err().to_string();
    ensure!(err == "vip[4].name: \"web\" is already the name of vip[0]; VIP names must be unique", "{err}");
    // A reload of a broken file: refused with the file's position, nothing changes.
    let config_path = status()?.config.display().to_string();
    let good = std::fs::read_to_string(&config_path)?;
    std::fs::write(&config_path, good.replacen("port = 80", "port = 80\nmystery = 1", 1))?;
    let err = change(Request::Reload).unwrap_err();
    std::fs::write(&config_path, &good)?;
    ensure!(err.to_string().contains("unknown field `mystery`") && err.to_string().contains(&config_path), "{err}");
    ensure!(status()?.generation == generation, "a refused change moved the generation");
    ensure!(ask::<String>(Request::ConfigDump)? == dump, "a refused change altered the configuration");
    Ok(())
}

fn all_checks_failing_fails_open(env: &mut Env) -> anyhow::Result<()> {
    // Servers fine, checks expecting a status they never send: every check fails at once.
    env.health.web = Some(format!("{}\nexpect_status = 404", http_check()));
    env.health.web_extra = "max_ejected_percent = 100\n".into();
    env.run_agent(&EQUAL)?;
    let result = (|| {
        for i in 0..3 {
            wait_health("web", be(i), HealthState::Down, Duration::from_secs(3))?;
        }
        let warnings = status()?.warnings;
        ensure!(warnings.iter().any(|w| w.contains("failing open")), "no fail-open warning in {warnings:?}");
        // Every connection succeeds (tally fails otherwise) and each backend takes a part.
        let counts = tally(300, |vip| http_connection(vip, 1), vip(false))?;
        for name in &BACKEND_NAMES[..3] {
            let got = counts.get(*name).copied().unwrap_or(0);
            ensure!(got >= 45, "{name} took {got} of 300 new connections: not all backends are in ({counts:?})");
        }
        println!(
            "    every check failing: all 300 new connections served, by all three backends (fail-open): {counts:?}"
        );
        Ok(())
    })();
    env.health.web = Some(http_check());
    env.health.web_extra = String::new();
    env.run_agent(&EQUAL)?;
    result
}

/// The Prometheus endpoint (inside the balancer's namespace) shows counters and health.
fn metrics(_env: &mut Env) -> anyhow::Result<()> {
    // Every checked backend has reported at least once.
    lb_lab::wait_until(Duration::from_secs(3), "every backend to have a check latency", || {
        status().is_ok_and(|s| {
            s.backends
                .iter()
                .filter(|r| r.decision.health != HealthState::Unchecked)
                .all(|r| r.check_latency_ms.is_some())
        })
    })?;
    let response = metrics_text()?;
    for expected in [
        "HTTP/1.1 200 OK",
        "lb_backend_healthy{backend=\"198.18.0.21\",vip=\"web\"} 1",
        "lb_backend_effective_weight{backend=\"198.18.0.22\",vip=\"web\"} 1",
        "lb_health_check_latency_seconds{backend=\"198.18.0.23\",vip=\"dns\"}",
        "lb_vip_packets_total{vip=\"198.18.100.1:80/tcp\"}",
        "lb_reason_packets_total{reason=\"tx_fib\"}",
        "lb_table_generation ",
        "lb_vip_table_info{fingerprint=\"",
    ] {
        ensure!(response.contains(expected), "no {expected:?} in the metrics:\n{response}");
    }
    // Prometheus's own linter accepts the exposition.
    let body = response.split_once("\r\n\r\n").context("no body")?.1.to_string();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (Debian's prometheus package; `cargo xtask deps` installs it)")?;
    std::io::Write::write_all(&mut promtool.stdin.take().context("promtool's stdin")?, body.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    ensure!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Only /metrics is served.
    let other = http_get("/")?;
    ensure!(other.starts_with("HTTP/1.1 404"), "GET / answered: {other}");
    println!("    promtool check metrics: no problems in {} lines; GET / is 404", body.lines().count());
    Ok(())
}

/// `lb stats --rate` while DNS queries run at a known pace: the dns VIP's rate is about that
/// pace, and the web VIP, idle, shows none.
fn stats_rate(env: &mut Env) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<usize> {
                let mut dns = Dns::with_timeout(vip(false), Duration::from_millis(300))?;
                let mut asked = 0;
                while !stop.load(Ordering::Relaxed) {
                    dns.ask()?;
                    asked += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(asked)
            })?
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = std::process::Command::new(&env.lab.lb)
        .args(["stats", "--instance", lb_lab::INSTANCE, "--rate", "--interval", "2", "--json"])
        .output();
    stop.store(true, Ordering::Relaxed);
    let asked = sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let out = out?;
    ensure!(out.status.success(), "lb stats --rate failed: {}", String::from_utf8_lossy(&out.stderr));
    let rates: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rate_of = |vip: &str| {
        rates["vips"]
            .as_array()
            .and_then(|v| v.iter().find(|r| r["name"] == vip))
            .and_then(|r| r["packets_per_second"].as_f64())
    };
    let dns = rate_of("198.18.100.1:53/udp").context("no dns VIP in the rates")?;
    let web = rate_of("198.18.100.1:80/tcp").context("no web VIP in the rates")?;
    println!(
        "    lb stats --rate over 2 s: dns {dns:.0} packets/s, web {web:.0} (queries sent at up to 100/s, {asked} in all)"
    );
    ensure!((20.0..=120.0).contains(&dns), "the dns VIP's rate is {dns:.1} packets/s for queries sent every ~10 ms");
    ensure!(web < 1.0, "the idle web VIP shows {web:.1} packets/s");
    Ok(())
}

/// `lb top` in a terminal multiplexer (tmux) while DNS queries run: the screen shows the lab's
/// VIPs by address and name, a non-zero rate on the dns VIP, and the backends' health.
fn top_in_a_multiplexer(env: &mut Env) -> anyhow::Result<()> {
    const SESSION: &str = "lb-top-test";
    let lb = env.lab.lb.display().to_string();
    let tmux = |args: &[&str]| lb_lab::run(std::process::Command::new("tmux").args(args));
    let _ = tmux(&["kill-session", "-t", SESSION]);
    let command = format!("{lb} top --instance {}", lb_lab::INSTANCE);
    tmux(&["new-session", "-d", "-s", SESSION, "-x", "160", "-y", "48", &command])
        .context("starting lb top in tmux (Debian's tmux; `cargo xtask deps` installs it)")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            in_namespace(CLIENT, move || -> anyhow::Result<()> {
                let mut dns = Dns::with_timeout(vip(false), Duration::from_millis(300))?;
                while !stop.load(Ordering::Relaxed) {
                    dns.ask()?;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(())
            })?
        })
    };
    // Rates over a full second of traffic, and the screen drawn after it.
    let mut screen = String::new();
    let shown = lb_lab::wait_until(Duration::from_secs(8), "lb top to show the dns VIP's rate", || {
        screen = tmux(&["capture-pane", "-p", "-t", SESSION]).unwrap_or_default();
        screen.lines().any(|l| {
            let words: Vec<&str> = l.trim_start_matches('│').split_whitespace().collect();
            words.first() == Some(&"198.18.100.1:53/udp")
                && words.get(1) == Some(&"dns")
                && words.get(2).is_some_and(|rate| *rate != "0")
        })
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().map_err(|_| anyhow::anyhow!("sender panicked"))?;
    let _ = tmux(&["send-keys", "-t", SESSION, "q"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = tmux(&["kill-session", "-t", SESSION]);
    sent?;
    shown.with_context(|| format!("the screen:\n{screen}"))?;
    for expected in ["198.18.100.1:80/tcp", "web", "198.18.0.21 via 198.18.100.1:53/udp", "up", "tx_"] {
        ensure!(screen.contains(expected), "lb top's screen lacks {expected:?}:\n{screen}");
    }
    let dns_row = screen.lines().find(|l| l.contains("198.18.100.1:53/udp") && l.contains("dns")).unwrap_or_default();
    println!("    lb top in tmux: {}", dns_row.trim_matches(|c: char| c == '│' || c.is_whitespace()));
    Ok(())
}

/// Under systemd (`Type=notify`) the agent says READY=1 on `$NOTIFY_SOCKET` once it runs, and
/// not before the data plane is attached: a datagram socket of the test's stands in for systemd.
fn agent_notifies_readiness(env: &mut Env) -> anyhow::Result<()> {
    let config = status()?.config;
    let agent = env.agent.take().context("no agent")?;
    env.lab.stop_agent(agent)?;
    // A fresh start: the agent must attach before it may say it is ready.
    lb_lab::run(std::process::Command::new(&env.lab.lb).args(["detach", "--instance", lb_lab::INSTANCE]))?;
    ensure!(balancer_xdp_mode()?.is_none(), "eth0 still runs XDP after lb detach");
    let socket_path = env.lab.dir.join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(20)))?;
    let started = Instant::now();
    let mut agent = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lb_lab::BALANCER))
        .arg(&env.lab.lb)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut message = [0u8; 256];
    let received = notify.recv(&mut message);
    let ready_after = started.elapsed();
    let attached = balancer_xdp_mode();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait()?;
    env.run_agent(&EQUAL)?;
    let n = received.context("no notification from the agent within 20 s")?;
    let text = String::from_utf8_lossy(&message[..n]).into_owned();
    ensure!(text.lines().any(|l| l == "READY=1"), "the agent notified {text:?}");
    ensure!(attached?.is_some(), "READY=1 came before eth0 had the balancer attached");
    println!("    READY=1 on $NOTIFY_SOCKET {} ms after lb run started, eth0 attached", ready_after.as_millis());
    Ok(())
}

/// A changed configuration file, announced with SIGHUP, is applied.
fn sighup_reloads(env: &mut Env) -> anyhow::Result<()> {
    let config_path = status()?.config.display().to_string();
    let original = std::fs::read_to_string(&config_path)?;
    let changed = original.replacen("weight = 1", "weight = 3", 1);
    std::fs::write(&config_path, &changed)?;
    let pid = env.agent.as_ref().context("no agent")?.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let start = Instant::now();
    let result = loop {
        if backend("web", be(0))?.decision.weight == 3 {
            break Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(2) {
            break Err(anyhow::anyhow!("the new weight was not applied within 2 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::write(&config_path, &original)?;
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let took = result?;
    println!("    reload applied {:.0} ms after SIGHUP", took.as_secs_f64() * 1000.0);
    Ok(())
}

/// How long the agent takes to mark backend 0 of the dns VIP down after its server freezes,
/// for each of `samples` freezes (each thawed and back up before the next).
fn dns_detection_times(env: &Env, samples: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..samples {
        env.lab.freeze_dns(0, true)?;
        let frozen = Instant::now();
        let detected = wait_health("dns", be(0), HealthState::Down, Duration::from_secs(5)).map(|_| frozen.elapsed());
        env.lab.freeze_dns(0, false)?;
        times.push(detected?);
        wait_health("dns", be(0), HealthState::Up, Duration::from_secs(5))?;
    }
    Ok(times)
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Reloads back to back until stopped, through `lb reload`'s request: the file alternates
/// between two valid weights of one web backend and a broken version. Returns (applied,
/// refused); a valid file refused, or a broken one applied, is an error.
fn reload_storm(config_path: std::path::PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<(usize, usize)> {
    let good = std::fs::read_to_string(&config_path)?;
    let heavier = good.replacen("weight = 1", "weight = 2", 1);
    let broken = good.replacen("port = 80", "port = \"eighty\"", 1);
    let (mut applied, mut refused) = (0, 0);
    let mut round = 0usize;
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok((applied, refused));
        }
        let valid = round % 3 != 2;
        let text = match round % 3 {
            0 => &heavier,
            1 => &good,
            _ => &broken,
        };
        round += 1;
        std::fs::write(&config_path, text)?;
        match (change(Request::Reload), valid) {
            (Ok(_), true) => applied += 1,
            (Err(e), false) if e.to_string().contains("vip[0].port") => refused += 1,
            (Ok(_), false) => break Err(anyhow::anyhow!("a broken file was applied")),
            (Err(e), _) => break Err(e.context(format!("reload {round}"))),
        }
    };
    std::fs::write(&config_path, &good)?;
    change(Request::Reload)?;
    result
}

/// Hundreds of reloads, a third of them of a broken file, while new connections run: a frozen
/// DNS server is detected as fast as without the storm (medians within 20%), and no new
/// connection fails.
fn reload_storm_keeps_detection_time(env: &mut Env) -> anyhow::Result<()> {
    let quiet = dns_detection_times(env, 5)?;
    let stop = Arc::new(AtomicBool::new(false));
    let connections = flow_stream(Service::Http, Duration::from_millis(2), Arc::clone(&stop));
    let storm = {
        let (path, stop) = (status()?.config, Arc::clone(&stop));
        std::thread::spawn(move || reload_storm(path, stop))
    };
    let started = Instant::now();
    let stormy = dns_detection_times(env, 5);
    // At least a few hundred reloads, however fast the detections were.
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (applied, refused) = storm.join().map_err(|_| anyhow::anyhow!("storm thread panicked"))??;
    let log = connections.join().map_err(|_| anyhow::anyhow!("connection thread panicked"))??;
    let stormy = stormy?;
    let errors: Vec<&String> = log.iter().filter_map(|(_, e)| e.as_ref()).collect();
    let failed = errors.len();
    // Probes start an interval (+/- 10%, on a 10 ms grid) apart, and the last failing one takes
    // the timeout: fall x (interval x 1.1 + 10 ms) + timeout at the worst phase.
    let bound = (Duration::from_millis(INTERVAL_MS * 11 / 10 + 10) * FALL as u32
        + Duration::from_millis(PROBE_TIMEOUT_MS))
    .mul_f64(1.2);
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    println!(
        "    detection median {} ms quiet, {} ms during {} reloads ({applied} applied, {refused} broken refused) \
         in {:.1} s (max {} ms, bound {} ms); {failed} of {} new connections failed",
        ms(median(&quiet)),
        ms(median(&stormy)),
        applied + refused,
        started.elapsed().as_secs_f64(),
        ms(*stormy.iter().max().unwrap_or(&Duration::ZERO)),
        ms(bound),
        log.len()
    );
    ensure!(applied + refused >= 200, "only {} reloads in the storm", applied + refused);
    ensure!(
        median(&stormy) <= median(&quiet).mul_f64(1.2),
        "the storm's median detection time is more than 20% over the quiet one: quiet {quiet:?}, storm {stormy:?}"
    );
    ensure!(
        quiet.iter().chain(&stormy).all(|d| *d <= bound),
        "a detection took longer than {bound:?}: quiet {quiet:?}, storm {stormy:?}"
    );
    ensure!(failed == 0, "{failed} new connections failed during the storm, the first: {:?}", errors.first());
    Ok(())
}

/// `lb detach` under the running agent: the agent notices within 2 s, pins its maps again and
/// attaches again, says so in `lb status`, and new connections are served without an operator.
fn detach_under_the_agent_is_repaired(env: &mut Env) -> anyhow::Result<()> {
    let before = status()?.data_plane.repairs;
    lb_lab::run(std::process::Command::new(&env.lab.lb).args(["detach", "--instance", lb_lab::INSTANCE]))?;
    let detached = Instant::now();
    lb_lab::wait_until(Duration::from_secs(2), "the agent to repair its data plane", || {
        status().is_ok_and(|s| s.data_plane.repairs > before && s.data_plane.problem.is_none())
    })?;
    let repaired = detached.elapsed();
    let counts = tally(100, |vip| http_connection(vip, 1), vip(false))?;
    let health = status()?.data_plane;
    let last = health.last_repaired.unwrap_or_default();
    ensure!(last.contains("no map is pinned") && last.contains("has no balancer attached"), "repaired: {last}");
    println!(
        "    lb detach under the agent: repaired {:.0} ms later ({last}); then 100 of 100 connections served: {counts:?}",
        repaired.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The balancer's interface deleted and created again under the same name: the pinned link
/// died with the old one, though it still holds the agent's program. The agent notices within
/// 2 s, attaches to the new interface, and new connections are served.
fn recreated_interface_is_attached_again(env: &mut Env) -> anyhow::Result<()> {
    let before = status()?.data_plane.repairs;
    env.lab.recreate_balancer_interface()?;
    let recreated = Instant::now();
    lb_lab::wait_until(Duration::from_secs(2), "the agent to attach to the new interface", || {
        status().is_ok_and(|s| s.data_plane.repairs > before && s.data_plane.problem.is_none())
    })?;
    let repaired = recreated.elapsed();
    let served = first_answered_session(Duration::from_secs(3))?;
    let counts = tally(100, |vip| http_connection(vip, 1), vip(false))?;
    let last = status()?.data_plane.last_repaired.unwrap_or_default();
    ensure!(last.contains("eth0's pinned link is defunct"), "repaired: {last}");
    ensure!(balancer_xdp_mode()? == Some(XdpAttachment::Native), "not native on the new interface");
    println!(
        "    eth0 deleted and created again: attached again {:.0} ms later ({last}); first session answered {:.0} ms \
         after that; then 100 of 100 connections served {counts:?}",
        repaired.as_secs_f64() * 1000.0,
        served.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// How the balancer's interface runs XDP now, as the kernel says.
fn balancer_xdp_mode() -> anyhow::Result<Option<XdpAttachment>> {
    in_namespace(lb_lab::BALANCER, || -> anyhow::Result<_> {
        let ifindex = lb_userspace::dataplane::ifindex("eth0")?;
        Ok(Resolver::new()?.xdp_attachment(ifindex)?)
    })?
}

/// An agent restarted with another `xdp_mode` than its pinned link's attaches again in the
/// configured mode, both ways, and traffic flows after each.
fn xdp_mode_change_on_restart(env: &mut Env) -> anyhow::Result<()> {
    ensure!(balancer_xdp_mode()? == Some(XdpAttachment::Native), "the lab runs native to begin with");
    let config = status()?.config;
    let generic = config.with_file_name("generic.toml");
    let text = std::fs::read_to_string(&config)?;
    ensure!(text.contains("xdp_mode = \"native\""), "the lab configuration sets xdp_mode native");
    std::fs::write(&generic, text.replacen("xdp_mode = \"native\"", "xdp_mode = \"generic\"", 1))?;
    if let Some(agent) = env.agent.take() {
        env.lab.stop_agent(agent)?;
    }
    env.agent = Some(env.lab.start_agent(&generic, &env.log)?);
    let now_generic = balancer_xdp_mode()?;
    tally(50, |vip| http_connection(vip, 1), vip(false))?;
    env.run_agent(&EQUAL)?;
    let back = balancer_xdp_mode()?;
    tally(50, |vip| http_connection(vip, 1), vip(false))?;
    println!(
        "    native -> restart with generic: {now_generic:?} -> restart with native: {back:?}; traffic served after each"
    );
    ensure!(now_generic == Some(XdpAttachment::Generic), "after the restart in generic mode: {now_generic:?}");
    ensure!(back == Some(XdpAttachment::Native), "after the restart in native mode: {back:?}");
    Ok(())
}

/// Native XDP on a veth whose peer runs no XDP program: the frames the balancer sends back out
/// are lost in the driver while its own counters say `tx`. The agent reads the driver's XDP
/// transmit errors and reports them in `lb status` and metrics; traffic returns once the peer
/// runs a program again.
fn undeliverable_native_frames_are_reported(env: &mut Env) -> anyhow::Result<()> {
    let before = status()?.data_plane;
    ensure!(before.delivery_problem.is_none(), "delivering to begin with: {:?}", before.delivery_problem);
    env.lab.balancer_port_runs_xdp(false)?;
    let lost = in_namespace(CLIENT, || {
        let mut dns = Dns::with_timeout(vip(false), Duration::from_millis(50))?;
        let started = Instant::now();
        let mut answered = 0;
        let mut reported = None;
        while started.elapsed() < Duration::from_secs(3) {
            answered += usize::from(dns.ask().is_ok());
            if let Some(problem) = status()?.data_plane.delivery_problem {
                reported = Some((started.elapsed(), problem));
                break;
            }
        }
        let (after, problem) = reported.context("no delivery problem reported within 3 s of the peer losing XDP")?;
        Ok::<_, anyhow::Error>((after, problem, answered))
    })
    .and_then(|r| r);
    let metrics = metrics_text();
    let text = lb_lab::run(std::process::Command::new(&env.lab.lb).args(["status", "--instance", lb_lab::INSTANCE]));
    env.lab.balancer_port_runs_xdp(true)?;
    let (after, problem, answered) = lost?;
    let (metrics, text) = (metrics?, text?);
    let errors = status()?.data_plane.xdp_transmit_errors.get("eth0").copied().unwrap_or_default();
    ensure!(problem.contains("eth0 could not transmit"), "reported: {problem}");
    ensure!(text.contains("DATA PLANE NOT DELIVERING: eth0 could not transmit"), "lb status says:\n{text}");
    ensure!(metrics.contains("lb_data_plane_healthy 0"), "metrics:\n{metrics}");
    ensure!(errors > 0, "no transmit errors counted for eth0");
    ensure!(
        metrics.contains("lb_interface_xdp_transmit_errors_total{interface=\"eth0\"} "),
        "no transmit error metric for eth0:\n{metrics}"
    );
    let counts = tally(50, |vip| http_connection(vip, 1), vip(false))?;
    println!(
        "    peer without XDP: reported {:.0} ms after the first lost query ({answered} answered meanwhile, {errors} \
         frames counted by the driver); peer's program back: 50 of 50 connections served {counts:?}",
        after.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// New UDP sessions, one after another from the client with answers given up on after 50 ms,
/// until one is answered or `limit` passes: how long that took.
fn first_answered_session(limit: Duration) -> anyhow::Result<Duration> {
    in_namespace(CLIENT, move || {
        let start = Instant::now();
        while start.elapsed() < limit {
            if Dns::with_timeout(vip(false), Duration::from_millis(50)).and_then(|mut d| d.ask()).is_ok() {
                return Ok(start.elapsed());
            }
        }
        Err(anyhow::anyhow!("no session answered within {limit:?}"))
    })?
}

/// The balancer's interface goes down for a second and comes back: its XDP program stays
/// attached, the agent re-resolves next hops, new sessions are answered within a second of the
/// link coming up, and established TCP connections and UDP sessions keep their backends.
fn interface_down_and_up(_env: &mut Env) -> anyhow::Result<()> {
    // As a network manager would: the balancer's IPv6 addresses survive the link going down.
    lb_lab::in_netns(lb_lab::BALANCER, "sysctl", &["-qw", "net.ipv6.conf.eth0.keep_addr_on_down=1"])?;
    let mut sessions = in_namespace(CLIENT, || Sessions::open(20, 10))??;
    lb_lab::in_netns(lb_lab::BALANCER, "ip", &["link", "set", "dev", "eth0", "down"])?;
    std::thread::sleep(Duration::from_secs(1));
    lb_lab::in_netns(lb_lab::BALANCER, "ip", &["link", "set", "dev", "eth0", "up"])?;
    let resumed = first_answered_session(Duration::from_secs(5))?;
    let sessions = in_namespace(CLIENT, move || sessions.check().map(|()| sessions))??;
    let health = status()?.data_plane;
    ensure!(health.problem.is_none(), "after the link came back: {:?}", health.problem);
    let counts = tally(50, |vip| http_connection(vip, 1), vip(false))?;
    println!(
        "    eth0 down 1 s, up: first new session answered {:.0} ms after; {} TCP connections and {} UDP sessions \
         kept their backends; then 50 of 50 served {counts:?}",
        resumed.as_secs_f64() * 1000.0,
        sessions.tcp.len(),
        sessions.udp.len()
    );
    ensure!(resumed <= Duration::from_secs(1), "new sessions were answered only {resumed:?} after the link came up");
    Ok(())
}

/// A checked backend's MAC changes without an announcement (a replaced host): the balancer's
/// kernel and data plane keep addressing the old MAC until the entry is resolved anew, which
/// the kernel alone does after up to a minute. The agent forgets the entry at the first failed
/// probe, so new sessions (UDP, given up on after 300 ms) fail for at most two probe periods
/// (interval x 1.1 + timeout) and a tick's margin.
fn backend_mac_change(env: &mut Env) -> anyhow::Result<()> {
    // The agent leaves entries it has seen for less than this alone (the interface test before
    // this one resolved them all anew).
    std::thread::sleep(lb_userspace::host::nexthop::NEIGHBOUR_SETTLED);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = flow_stream(Service::Dns, Duration::ZERO, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    let changed = Instant::now();
    let set = env.lab.set_backend_mac(0, "02:00:00:00:be:01");
    let served_again = lb_lab::wait_until(Duration::from_secs(5), "be1 to answer new sessions again", || {
        in_namespace(CLIENT, || {
            (0..6).any(|_| {
                Dns::with_timeout(vip(false), Duration::from_millis(300))
                    .and_then(|mut d| d.ask())
                    .is_ok_and(|name| name == "be1")
            })
        })
        .unwrap_or(false)
    })
    .map(|()| changed.elapsed());
    // A while longer, to see that nothing fails any more.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let log = stream.join().map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
    set?;
    let served_again = served_again?;
    let failed: Vec<Instant> = log.iter().filter(|(at, e)| *at >= changed && e.is_some()).map(|(at, _)| *at).collect();
    let resumed = failed.last().map_or(Duration::ZERO, |at| at.duration_since(changed));
    let limit =
        Duration::from_millis(INTERVAL_MS * 11 / 10 + PROBE_TIMEOUT_MS).mul_f64(2.0) + Duration::from_millis(200);
    println!(
        "    be1's MAC changed: be1 answered again {:.0} ms later; {} of {} new sessions failed, the last started \
         {:.0} ms after the change (limit {} ms)",
        served_again.as_secs_f64() * 1000.0,
        failed.len(),
        log.iter().filter(|(at, _)| *at >= changed).count(),
        resumed.as_secs_f64() * 1000.0,
        limit.as_millis()
    );
    ensure!(!failed.is_empty(), "no session failed: the MAC change did not reach the balancer's path to be1");
    ensure!(resumed <= limit, "sessions to be1 failed until {resumed:?} after its MAC changed");
    Ok(())
}

/// 4000 (VIP, backend) checks, every pair its own probe (40 UDP VIPs of 100 backends, each VIP
/// with its own payload) at a 200 ms interval: one backend address stops answering, and each of
/// its 40 pairs is down within fall x (interval x 1.1 + 10 ms) + timeout, + 20%, while no
/// other pair leaves "up". The agent's CPU over 3 s is printed (the figure is `cargo xtask bench`'s).
fn checks_at_scale_detect_in_time(env: &mut Env) -> anyhow::Result<()> {
    const DEAD: usize = 7;
    let responders = lb_tests::scale::Responders::start()?;
    let result = (|| {
        env.health.more_vips = lb_tests::scale::vips_toml(|v| {
            format!(
                "kind = \"udp\"\npayload_hex = \"6c62{v:04x}\"\nexpect_prefix_hex = \"6c62\"\ninterval_ms = 200\n\
                 timeout_ms = 50\nrise = 2\nfall = 2"
            )
        });
        env.run_agent(&EQUAL)?;
        let checks = lb_tests::scale::VIPS * lb_tests::scale::ADDRESSES;
        let scale_rows = |s: Status| -> Vec<BackendStatus> {
            s.backends.into_iter().filter(|b| b.decision.vip.starts_with("scale")).collect()
        };
        lb_lab::wait_until(Duration::from_secs(10), "4000 checks to report", || {
            status().is_ok_and(|s| scale_rows(s).iter().filter(|b| b.check_latency_ms.is_some()).count() == checks)
        })?;
        let pid = env.agent.as_ref().context("no agent")?.id();
        let answered = responders.answered();
        let cpu = lb_tests::scale::cpu_share(pid, Duration::from_secs(3))?;
        let probes_per_second = (responders.answered() - answered) / 3;
        // Down as the data plane has it: the dead address's 40 records stop keeping flows.
        let dead = IpAddr::V4(lb_tests::scale::address(DEAD));
        let maps = BalancerMaps::open_pinned(&PinDir::instance(lb_lab::INSTANCE))?;
        let dead_key = lb_common::addr::to_key(dead);
        let records: Vec<u32> = maps
            .current()?
            .backends
            .iter()
            .filter(|(_, b)| b.is_assigned() && (b.family, b.addr) == dead_key)
            .map(|(id, _)| *id)
            .collect();
        ensure!(records.len() == lb_tests::scale::VIPS, "{} records of {dead} in the data plane", records.len());
        responders.set_alive(DEAD, false);
        let killed = Instant::now();
        let mut detected: BTreeMap<u32, Duration> = BTreeMap::new();
        while detected.len() < records.len() && killed.elapsed() < Duration::from_secs(3) {
            for id in &records {
                if !detected.contains_key(id) && !maps.backend(*id)?.keeps_flows() {
                    detected.insert(*id, killed.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let others_down: Vec<String> = scale_rows(status()?)
            .iter()
            .filter(|b| b.decision.health == HealthState::Down && b.decision.address != dead)
            .map(|b| format!("{} {}", b.decision.vip, b.decision.address))
            .collect();
        // Probes start on a 10 ms grid, an interval (+/- 10%) apart: fall x (220 + 10) + timeout,
        // + 20% for a 2-core machine that also runs the responders and this poll.
        let bound = Duration::from_millis(2 * (220 + 10) + 50).mul_f64(1.2);
        let times: Vec<Duration> = detected.values().copied().collect();
        let slowest = times.iter().max().copied().unwrap_or_default();
        println!(
            "    {checks} checks, {probes_per_second} probes/s: agent CPU {:.1}% of a core; a dead backend's {} of {} \
             records stop taking flows {:.0}-{:.0} ms after (median {:.0} ms; bound {} ms); {} other pairs down",
            cpu * 100.0,
            times.len(),
            lb_tests::scale::VIPS,
            times.iter().min().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0,
            if times.is_empty() { 0.0 } else { median(&times).as_secs_f64() * 1000.0 },
            bound.as_millis(),
            others_down.len()
        );
        ensure!(times.len() == records.len(), "only {} of the dead backend's records went down", times.len());
        ensure!(slowest <= bound, "a pair of the dead backend went down {slowest:?} after, more than {bound:?}");
        ensure!(others_down.is_empty(), "pairs of live backends went down: {others_down:?}");
        Ok(())
    })();
    env.health.more_vips.clear();
    let restored = env.run_agent(&EQUAL);
    responders.stop()?;
    result.and(restored)
}

/// `lb fleet diff` of the agent's control socket and its own metrics endpoint: the same
/// tables. Then against a stand-in member serving those metrics with one weight changed: the
/// difference and why, exit status 1.
fn fleet_diff(env: &mut Env) -> anyhow::Result<()> {
    let lb = env.lab.lb.to_string_lossy().into_owned();
    let same = lb_lab::ns(lb_lab::BALANCER, &lb, &["fleet", "diff", CONTROL_SOCKET, "127.0.0.1:9120"])?;
    ensure!(same.contains("every table is the same"), "lb fleet diff said: {same}");
    let doctored = metrics_text()?.split_once("\r\n\r\n").context("no metrics body")?.1.replace(
        "lb_backend_effective_weight{backend=\"198.18.0.21\",vip=\"web\"} 1",
        "lb_backend_effective_weight{backend=\"198.18.0.21\",vip=\"web\"} 5",
    );
    // Listening before `lb` is started: the stand-in's socket is bound in the balancer's
    // namespace here, and served from a thread of this one.
    let listener = in_namespace(lb_lab::BALANCER, || std::net::TcpListener::bind("127.0.0.1:9199"))?
        .context("binding the stand-in member")?;
    let stand_in = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::{Read as _, Write as _};
        let (mut s, _) = listener.accept()?;
        let mut request = [0u8; 1024];
        let _ = s.read(&mut request)?;
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{doctored}", doctored.len())
    });
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lb_lab::BALANCER))
        .args([lb.as_str(), "fleet", "diff", CONTROL_SOCKET, "http://127.0.0.1:9199/metrics"])
        .output()?;
    let served = stand_in.join().map_err(|_| anyhow::anyhow!("stand-in panicked"))?;
    let said = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    served.context("serving the stand-in's metrics")?;
    ensure!(output.status.code() == Some(1), "exit status {:?}: {said}{errors}", output.status.code());
    ensure!(
        said.contains(
            "web              backend 198.18.0.21 weight 1 on /run/lb/lab.sock, 5 on http://127.0.0.1:9199/metrics"
        ),
        "lb fleet diff said: {said}{errors}"
    );
    println!("    lb fleet diff: the agent's socket and metrics agree; a stand-in with one weight changed:\n{said}");
    Ok(())
}

/// The agent's Prometheus exposition (the whole response), from inside the balancer's namespace.
fn metrics_text() -> anyhow::Result<String> {
    http_get("/metrics")
}

/// `GET path` on the agent's metrics address; the whole response.
fn http_get(path: &'static str) -> anyhow::Result<String> {
    in_namespace(lb_lab::BALANCER, move || -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9120")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
}

fn main() -> anyhow::Result<()> {
    let env = start("lab-control", Health { web: Some(http_check()), dns: Some(dns_check()), ..Health::default() })?;
    let trials: Vec<Trial> = vec![
        ("health/http_server_down_detected_then_no_failed_connections_then_back", http_server_down_and_back),
        ("health/dns_server_down_detected_then_no_failed_udp_sessions_then_back", dns_server_down_and_back),
        ("health/tunnel_check_catches_missing_decapsulation", tunnel_check_catches_missing_decap),
        ("health/https_checks_verify_the_backends_certificates", https_checks),
        ("control/drain_keeps_50_connections_and_takes_no_new_flow", drain_keeps_connections),
        ("control/200_random_live_changes_keep_established_flows", random_live_changes),
        ("control/plan_predicts_measured_shares", plan_matches_measurement),
        ("control/bad_changes_and_bad_reload_change_nothing", bad_changes_change_nothing),
        ("health/all_checks_failing_fails_open", all_checks_failing_fails_open),
        ("health/4000_checks_detect_a_dead_backend_in_time", checks_at_scale_detect_in_time),
        ("ops/prometheus_metrics", metrics),
        ("ops/stats_rate_follows_traffic", stats_rate),
        ("ops/agent_notifies_readiness", agent_notifies_readiness),
        ("ops/top_in_a_multiplexer", top_in_a_multiplexer),
        ("ops/fleet_diff_compares_sockets_and_metrics", fleet_diff),
        ("ops/sighup_reloads_the_file", sighup_reloads),
        ("ops/reload_storm_keeps_health_detection_time", reload_storm_keeps_detection_time),
        ("ops/detach_under_the_agent_is_repaired", detach_under_the_agent_is_repaired),
        ("ops/xdp_mode_change_on_restart_attaches_again", xdp_mode_change_on_restart),
        ("ops/native_frames_the_peer_cannot_receive_are_reported", undeliverable_native_frames_are_reported),
        ("ops/interface_down_and_up_flows_resume", interface_down_and_up),
        ("ops/backend_mac_change_flows_resume", backend_mac_change),
        ("ops/recreated_interface_is_attached_again", recreated_interface_is_attached_again),
    ];
    run_trials(env, trials)
}
