//! A userspace UDP proxy on the same two cores, for scale: nginx `stream` (Debian's
//! libnginx-mod-stream, 2 workers) between a sender and a counting sink on the loopback of a
//! private network namespace, in the two configurations a game frontend would use:
//! - `per_datagram`: `proxy_responses 0`, every datagram its own session (no state kept);
//! - `sessions_kept`: 64 clients whose sessions nginx keeps, as for a game's long UDP sessions.
//!
//! The figure is the highest offered rate that loses at most 1% (a search over rates, each held
//! for a fixed time), next to the fastest the sender itself can send. `cargo xtask bench` sets it
//! against the balancer's delivered rate on the same cores (`tests/benches/xdp_live.rs`).
//!
//! `cargo bench -p lb-tests --bench udp_proxy -- [--seconds S] [--json FILE]`

use std::{
    net::UdpSocket,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    bench::write_json,
    privileged::{enter_private_netns, require_root},
};

const PROXY_PORT: u16 = 5000;
const SINK_PORT: u16 = 6000;
/// Sockets the sender spreads its datagrams over (the clients of `sessions_kept`).
const CLIENTS: usize = 64;
const PAYLOAD: [u8; 18] = *b"lb-udp-proxy-bench";
/// Most loss a rate may show and still count as served.
const MAX_LOSS: f64 = 0.01;
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

struct Options {
    seconds: f64,
    json: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options { seconds: 1.0, json: None };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--json" => o.json = Some(value()?),
            other => bail!("unknown argument {other}; use --seconds S, --json FILE"),
        }
    }
    Ok(o)
}

/// Counts datagrams arriving on the sink port until stopped.
struct Sink {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(("127.0.0.1", SINK_PORT)).context("binding the sink")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let (received, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, done) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self { received, stop, thread: Some(thread) })
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// nginx in the foreground with a configuration of its own, in a directory of its own; both
/// removed when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(name: &str, server: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lb-udp-proxy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = format!(
            "load_module {NGINX_STREAM_MODULE};\n\
             worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log crit;\n\
             events {{ worker_connections 65536; }}\n\
             stream {{\n  upstream sink {{ server 127.0.0.1:{SINK_PORT}; }}\n  server {{\n    \
             listen 127.0.0.1:{PROXY_PORT} udp reuseport;\n    proxy_pass sink;\n    {server}\n  }}\n}}\n",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .args(["-e", "stderr", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            // Its own process group, so that its workers go with it.
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).context("starting nginx (cargo xtask deps installs it)");
            }
        };
        Ok(Self { child, dir })
    }
}

impl Drop for Nginx {
    /// Stops nginx and its workers: a fast shutdown (SIGTERM), then SIGKILL to the whole group.
    fn drop(&mut self) {
        let group = self.child.id() as libc::pid_t;
        // SAFETY: signals to the process group this benchmark started.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; workers left behind by the master are in the same group.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sender's sockets, connected to `port`.
fn clients(port: u16) -> anyhow::Result<Vec<UdpSocket>> {
    (0..CLIENTS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.connect(("127.0.0.1", port))?;
            Ok(s)
        })
        .collect()
}

/// Sends at `rate` datagrams per second for `seconds` (0: as fast as it can), spread over the
/// clients; returns (datagrams sent, elapsed seconds).
fn send(clients: &[UdpSocket], rate: f64, seconds: f64) -> (u64, f64) {
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= seconds {
            return (sent, elapsed);
        }
        let due = if rate > 0.0 { (rate * elapsed) as u64 } else { sent + 64 };
        while sent < due {
            // A full socket buffer is a loss like any other: counted by the sink.
            let _ = clients[sent as usize % clients.len()].send(&PAYLOAD);
            sent += 1;
        }
        if rate > 0.0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Offers `rate` for `seconds`; returns the share lost.
fn loss_at(sink: &Sink, clients: &[UdpSocket], rate: f64, seconds: f64) -> f64 {
    let before = sink.count();
    let (sent, _) = send(clients, rate, seconds);
    // Stragglers still in nginx's and the sink's queues.
    std::thread::sleep(Duration::from_millis(300));
    let received = sink.count() - before;
    1.0 - received as f64 / sent.max(1) as f64
}

/// The highest rate that loses at most [`MAX_LOSS`]: doubling from 10k/s until a rate loses
/// more, then bisecting between the last rate served and the first not served.
fn capacity(sink: &Sink, clients: &[UdpSocket], seconds: f64, ceiling: f64) -> (f64, Vec<(f64, f64)>) {
    let mut tried = Vec::new();
    let (mut served, mut failed) = (0.0, None::<f64>);
    let mut rate = 10_000.0f64;
    while failed.is_none() && rate <= ceiling {
        let loss = loss_at(sink, clients, rate, seconds);
        tried.push((rate, loss));
        if loss <= MAX_LOSS {
            served = rate;
        } else {
            failed = Some(rate);
        }
        rate *= 2.0;
    }
    if let Some(mut high) = failed {
        for _ in 0..4 {
            let mid = f64::midpoint(served, high);
            let loss = loss_at(sink, clients, mid, seconds);
            tried.push((mid, loss));
            if loss <= MAX_LOSS { served = mid } else { high = mid }
        }
    }
    (served, tried)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    require_root("the UDP proxy benchmark")?;
    ensure!(
        std::path::Path::new(NGINX_STREAM_MODULE).exists(),
        "{NGINX_STREAM_MODULE} is missing: run `cargo xtask deps` (it installs libnginx-mod-stream)"
    );
    enter_private_netns()?;
    let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().context("ip link set lo up")?;
    ensure!(up.success(), "ip link set lo up failed");
    let sink = Sink::start()?;

    // The sender alone, straight to the sink: the most any proxy could be shown to serve.
    let direct = clients(SINK_PORT)?;
    let before = sink.count();
    let (sent, elapsed) = send(&direct, 0.0, o.seconds);
    std::thread::sleep(Duration::from_millis(300));
    let sender_rate = sent as f64 / elapsed;
    let sink_rate = (sink.count() - before) as f64 / elapsed;
    println!("sender alone: {sender_rate:.0} datagrams/s sent, {sink_rate:.0}/s received by the sink");

    let mut results = Vec::new();
    for (name, server) in
        [("per_datagram", "proxy_responses 0;\n    proxy_timeout 1s;"), ("sessions_kept", "proxy_timeout 30s;")]
    {
        let _nginx = Nginx::start(name, server)?;
        let clients = clients(PROXY_PORT)?;
        // Ready once datagrams come through.
        let ready = Instant::now();
        while loss_at(&sink, &clients, 1000.0, 0.05) > 0.5 {
            ensure!(ready.elapsed() < Duration::from_secs(5), "nginx ({name}) forwards nothing after 5 s");
        }
        let (served, tried) = capacity(&sink, &clients, o.seconds, sender_rate);
        println!("nginx stream, {name}: {served:.0} datagrams/s with at most 1% lost");
        for (rate, loss) in &tried {
            println!("  offered {rate:>9.0}/s  lost {:>6.2}%", loss * 100.0);
        }
        results.push(serde_json::json!({
            "config": name,
            "served_per_second": served,
            "tried": tried.iter().map(|(r, l)| serde_json::json!({ "offered": r, "lost": l })).collect::<Vec<_>>(),
        }));
    }
    if let Some(file) = o.json {
        let doc = serde_json::json!({
            "method": "nginx stream (2 workers) on loopback in a private namespace, highest offered rate losing <= 1%",
            "seconds_per_rate": o.seconds,
            "sender_per_second": sender_rate,
            "proxies": results,
        });
        write_json(&file, &doc)?;
    }
    Ok(())
}
