//! Real clients for the end-to-end tests: HTTP over TCP and DNS over UDP, against the lab's
//! servers, which answer with the name of the backend that served the request.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: TcpStream,
}

/// Client ports for new connections, never reused within a test run and below the kernel's
/// ephemeral range: a reused port would meet the flow-table entry of the earlier connection
/// (entries outlive connections) and its backend, skewing measured shares.
static NEXT_PORT: AtomicU16 = AtomicU16::new(10_000);

fn fresh_port() -> anyhow::Result<u16> {
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    ensure!(port < 32_768, "this test run used up its client ports");
    Ok(port)
}

impl Http {
    pub fn connect(vip: IpAddr) -> anyhow::Result<Self> {
        Self::connect_port(vip, 80)
    }

    /// A connection to `vip` port `port`.
    pub fn connect_port(vip: IpAddr, port: u16) -> anyhow::Result<Self> {
        let domain = if vip.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
        let any = if vip.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
        socket.bind(&SocketAddr::new(any, fresh_port()?).into()).context("bind a fresh client port")?;
        socket.connect_timeout(&SocketAddr::new(vip, port).into(), TIMEOUT).context("connect")?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(Self { stream })
    }

    /// GET / and the body (the backend's name).
    /// The connection's client address and port.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    pub fn get(&mut self) -> anyhow::Result<String> {
        self.request("GET / HTTP/1.1\r\nHost: lab\r\n\r\n".as_bytes())
    }

    /// POST / with a body of `len` bytes (large requests exercise the path MTU).
    pub fn post(&mut self, len: usize) -> anyhow::Result<String> {
        let mut req = format!("POST / HTTP/1.1\r\nHost: lab\r\nContent-Length: {len}\r\n\r\n").into_bytes();
        req.extend(std::iter::repeat_n(b'x', len));
        self.request(&req)
    }

    fn request(&mut self, request: &[u8]) -> anyhow::Result<String> {
        self.stream.write_all(request).context("send")?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte).context("read response head")?;
            ensure!(n == 1, "connection closed before the response");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        ensure!(head.starts_with("HTTP/1.1 200"), "unexpected response: {}", head.lines().next().unwrap_or(""));
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .context("no Content-Length")?
            .parse()?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).context("read body")?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// One new connection, `requests` requests on it; the backend name if all came from one backend.
pub fn http_connection(vip: IpAddr, requests: usize) -> anyhow::Result<String> {
    let mut c = Http::connect(vip)?;
    let first = c.get()?;
    for _ in 1..requests {
        let again = c.get()?;
        ensure!(again == first, "one connection answered by {first} and then by {again}");
    }
    Ok(first)
}

/// A UDP "session": one socket (one 5-tuple) asking the DNS VIP which backend answers.
pub struct Dns {
    socket: UdpSocket,
    vip: SocketAddr,
    id: u16,
}

impl Dns {
    pub fn new(vip: IpAddr) -> anyhow::Result<Self> {
        Self::with_timeout(vip, TIMEOUT)
    }

    /// A session whose answers are given up on after `timeout`.
    pub fn with_timeout(vip: IpAddr, timeout: Duration) -> anyhow::Result<Self> {
        let any = if vip.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
        Self::from_source(any, vip, timeout)
    }

    /// A session from the client's address `source`.
    pub fn from_source(source: IpAddr, vip: IpAddr, timeout: Duration) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0)).with_context(|| format!("bind {source}"))?;
        socket.set_read_timeout(Some(timeout))?;
        Ok(Self { socket, vip: SocketAddr::new(vip, 53), id: 0 })
    }

    /// Sends one query without waiting (for streams); returns its id.
    pub fn send(&mut self) -> anyhow::Result<u16> {
        self.id = self.id.wrapping_add(1);
        let mut q = Vec::with_capacity(40);
        q.extend_from_slice(&self.id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // recursion desired, 1 question
        for label in ["whoami", "lab"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 16, 0, 1]); // root, TXT, IN
        self.socket.send_to(&q, self.vip).context("send query")?;
        Ok(self.id)
    }

    /// Receives one answer: (query id, backend name).
    pub fn receive(&self) -> anyhow::Result<(u16, String)> {
        let mut buf = [0u8; 512];
        let (n, _) = self.socket.recv_from(&mut buf).context("no answer")?;
        let r = &buf[..n];
        ensure!(n > 16 && r[3].trailing_zeros() >= 4 && u16::from_be_bytes([r[6], r[7]]) == 1, "bad answer {r:02x?}");
        // The single TXT string ends the message: [length][name].
        let len = r[n - 4] as usize;
        if len != 3 {
            bail!("unexpected TXT record in {r:02x?}");
        }
        Ok((u16::from_be_bytes([r[0], r[1]]), String::from_utf8_lossy(&r[n - 3..]).into_owned()))
    }

    /// One query and its answer's backend.
    pub fn ask(&mut self) -> anyhow::Result<String> {
        let id = self.send()?;
        loop {
            let (got, name) = self.receive()?;
            if got == id {
                return Ok(name);
            }
        }
    }
}
