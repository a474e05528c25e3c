//! Health checks at scale in the lab: [`VIPS`] UDP VIPs, each with the same [`ADDRESSES`]
//! backends, so the agent runs `VIPS x ADDRESSES` (VIP, backend) checks. The backends are extra
//! addresses of the lab's fourth backend namespace, each answered by a UDP responder of the
//! test's own that can be silenced one address at a time.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use lb_lab::{BACKENDS, in_namespace, in_netns};

/// Backend addresses, all in the fourth backend's namespace.
pub const ADDRESSES: usize = 100;
/// VIPs, each checking every address.
pub const VIPS: usize = 40;
/// The checked UDP port.
pub const PORT: u16 = 7777;
/// The namespace the responders run in.
const HOST: &str = BACKENDS[3];

/// Backend address `i` (< [`ADDRESSES`]) on the lab segment.
pub fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 100 + u8::try_from(i).expect("fewer than 156 addresses"))
}

/// The VIP sections (TOML) to append to the lab configuration: [`VIPS`] UDP VIPs on
/// 198.18.101.0/24, each with every address as a backend and `check(v)` (the lines of VIP
/// `v`'s `[vip.health]`).
pub fn vips_toml(check: impl Fn(usize) -> String) -> String {
    let mut out = String::new();
    for v in 0..VIPS {
        let check = check(v);
        out += &format!(
            "[[vip]]\nname = \"scale{v}\"\naddress = \"198.18.101.{}\"\nport = {PORT}\nprotocol = \"udp\"\n\
             table_size = 1021\n[vip.health]\n{check}\n",
            v + 1
        );
        for i in 0..ADDRESSES {
            out += &format!("[[vip.backend]]\naddress = \"{}\"\n", address(i));
        }
    }
    out
}

/// The UDP responders, one socket per address served by one thread (as a remote host's would
/// be: a burst of probes wakes it once, not once per socket), until [`Responders::stop`].
pub struct Responders {
    alive: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Responders {
    /// Adds the addresses to the fourth backend's interface and starts answering on each.
    pub fn start() -> anyhow::Result<Self> {
        for i in 0..ADDRESSES {
            in_netns(HOST, "ip", &["address", "add", &format!("{}/24", address(i)), "dev", "eth0"])?;
        }
        let sockets = in_namespace(HOST, || -> std::io::Result<Vec<UdpSocket>> {
            (0..ADDRESSES)
                .map(|i| {
                    let s = UdpSocket::bind(SocketAddr::from((address(i), PORT)))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect()
        })?
        .context("binding the responders")?;
        let alive: Arc<Vec<AtomicBool>> = Arc::new((0..ADDRESSES).map(|_| AtomicBool::new(true)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let thread = {
            let (alive, stop, answered) = (Arc::clone(&alive), Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || serve(&sockets, &alive, &stop, &answered))
        };
        Ok(Self { alive, stop, answered, thread })
    }

    /// Makes the responder of address `i` stop answering (or answer again).
    pub fn set_alive(&self, i: usize, alive: bool) {
        self.alive[i].store(alive, Ordering::Relaxed);
    }

    /// Probes answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the responders and removes the addresses.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("responder panicked"))??;
        for i in 0..ADDRESSES {
            in_netns(HOST, "ip", &["address", "del", &format!("{}/24", address(i)), "dev", "eth0"])?;
        }
        Ok(())
    }
}

/// Echoes every datagram on `sockets[i]` while `alive[i]`, until `stop`.
fn serve(sockets: &[UdpSocket], alive: &[AtomicBool], stop: &AtomicBool, answered: &AtomicU64) -> anyhow::Result<()> {
    let mut fds: Vec<libc::pollfd> =
        sockets.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of pollfd of the length given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready < 0 {
            return Err(std::io::Error::last_os_error()).context("poll");
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            while let Ok((n, from)) = sockets[i].recv_from(&mut buf) {
                if alive[i].load(Ordering::Relaxed) && sockets[i].send_to(&buf[..n], from).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// CPU time (user + system) the process `pid` has used so far, all its threads together.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let rest = stat.rsplit_once(')').context("unreadable /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
    let ticks: u64 =
        fields.get(11).context("no utime")?.parse::<u64>()? + fields.get(12).context("no stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The share of one core process `pid` used over `window`.
pub fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_time(pid)?;
    std::thread::sleep(window);
    let after = cpu_time(pid)?;
    Ok(after.saturating_sub(before).as_secs_f64() / window.as_secs_f64())
}
