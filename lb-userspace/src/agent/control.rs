//! The control API: JSON over a Unix socket only root can open. One request per connection.
//! The agent stays the only writer of the maps; the CLI asks it to change things.
//!
//! Changes are made on the configuration itself (as TOML) and validated exactly like a file, so
//! a live change can hold nothing a file could not, and `lb config dump` can write it back out.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader as AsyncBufReader},
    net::{UnixListener, unix::OwnedReadHalf},
    sync::{Semaphore, mpsc, oneshot},
};
use toml::{Table, Value};

use super::status::Status;
use crate::config::{AdminState, Config, ConfigError, Named as _};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    ConfigDump,
    Reload,
    VipList,
    VipAdd {
        name: String,
        address: String,
        port: i64,
        protocol: String,
        table_size: Option<i64>,
    },
    VipRemove {
        name: String,
    },
    BackendList {
        vip: Option<String>,
    },
    BackendAdd {
        vip: String,
        address: String,
        weight: Option<i64>,
    },
    BackendRemove {
        vip: String,
        address: String,
    },
    BackendWeight {
        vip: String,
        address: String,
        weight: i64,
    },
    BackendState {
        vip: String,
        address: String,
        state: AdminState,
    },
    /// `lb node drain` (`drain`) or `lb node undrain`; answered with `announce::BgpStatus`.
    Node {
        drain: bool,
    },
}

/// The agent's answer: an error, or a body whose type the request decides (`status::Status` for
/// `status`, `Option<status::Changed>` for changes, the configuration's text for `config_dump`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub body: serde_json::Value,
}

impl Response {
    pub fn answer(body: &impl Serialize) -> Self {
        match serde_json::to_value(body) {
            Ok(body) => Self { ok: true, error: None, body },
            Err(e) => Self::error(format!("internal: the answer does not serialize: {e}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self { ok: false, error: Some(message.into()), body: serde_json::Value::Null }
    }

    /// The body as the type the request answers with, or the agent's error.
    pub fn into_answer<T: DeserializeOwned>(self) -> Result<T, ControlError> {
        if let Some(e) = self.error {
            return Err(ControlError::Refused(e));
        }
        serde_json::from_value(self.body).map_err(ControlError::UnexpectedAnswer)
    }
}

/// Why a request to the agent did not get the answer it asked for.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No agent listens on the socket (or the caller may not open it).
    #[error(
        "cannot reach the agent at {}: {error} (is `lb run` running for this instance, and are you root?)",
        socket.display()
    )]
    Unreachable { socket: PathBuf, error: std::io::Error },
    #[error("talking to the agent at {}: {error}", socket.display())]
    Broken { socket: PathBuf, error: std::io::Error },
    #[error("the agent's answer is not a response: {0}")]
    Garbled(serde_json::Error),
    /// The agent refused the request, and says why.
    #[error("{0}")]
    Refused(String),
    #[error("the agent's answer is not of the type this request expects: {0}")]
    UnexpectedAnswer(serde_json::Error),
}

/// Sends one request to the agent listening on `socket`; while the agent answers [`BUSY`], tries
/// again for up to [`REQUEST_TIMEOUT`] and a second.
pub fn request(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let give_up = std::time::Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(1);
    loop {
        let response = request_once(socket, request)?;
        if response.error.as_deref() != Some(BUSY) || std::time::Instant::now() > give_up {
            return Ok(response);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn request_once(socket: &Path, request: &Request) -> Result<Response, ControlError> {
    let broken = |error| ControlError::Broken { socket: socket.to_path_buf(), error };
    let mut stream = UnixStream::connect(socket)
        .map_err(|error| ControlError::Unreachable { socket: socket.to_path_buf(), error })?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(broken)?;
    // An agent that refuses the connection (busy) answers and closes before reading: the answer
    // is there to read even when sending failed.
    let text = serde_json::to_string(request).expect("requests serialize");
    let sent = writeln!(stream, "{text}");
    let mut line = String::new();
    let read = BufReader::new(stream).read_line(&mut line);
    match (serde_json::from_str(&line), sent) {
        (Ok(response), _) => Ok(response),
        (Err(_), Err(e)) => Err(broken(e)),
        (Err(e), Ok(())) => {
            read.map_err(broken)?;
            Err(ControlError::Garbled(e))
        }
    }
}

/// The configuration with `request`'s change applied, validated like a file. `Ok(None)` for
/// requests that change nothing.
pub fn edit(config: &Config, request: &Request) -> Result<Option<Config>, String> {
    let mut doc: Table =
        toml::from_str(&config.to_toml()).map_err(|e| format!("internal: rendered configuration: {e}"))?;
    let vips = doc.entry("vip").or_insert_with(|| Value::Array(Vec::new())).as_array_mut().expect("vip is an array");
    let find = |vips: &mut Vec<Value>, name: &str| -> Result<usize, String> {
        vips.iter()
            .position(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("no VIP named {name}"))
    };
    let backend_of = |vip: &mut Value, address: &str| -> Result<usize, String> {
        let wanted: std::net::IpAddr =
            address.parse().map_err(|_| format!("\"{address}\" is not an IPv4 or IPv6 address"))?;
        vip.get("backend")
            .and_then(Value::as_array)
            .and_then(|bs| {
                bs.iter()
                    .position(|b| b.get("address").and_then(Value::as_str).and_then(|a| a.parse().ok()) == Some(wanted))
            })
            .ok_or_else(|| {
                format!("{address} is not a backend of VIP {}", vip.get("name").and_then(Value::as_str).unwrap_or("?"))
            })
    };
    match request {
        Request::Status
        | Request::ConfigDump
        | Request::Reload
        | Request::VipList
        | Request::BackendList { .. }
        | Request::Node { .. } => {
            return Ok(None);
        }
        Request::VipAdd { name, address, port, protocol, table_size } => {
            let mut v = Table::new();
            v.insert("name".into(), Value::String(name.clone()));
            v.insert("address".into(), Value::String(address.clone()));
            v.insert("port".into(), Value::Integer(*port));
            v.insert("protocol".into(), Value::String(protocol.clone()));
            if let Some(t) = table_size {
                v.insert("table_size".into(), Value::Integer(*t));
            }
            vips.push(Value::Table(v));
        }
        Request::VipRemove { name } => {
            let i = find(vips, name)?;
            vips.remove(i);
        }
        Request::BackendAdd { vip, address, weight } => {
            let i = find(vips, vip)?;
            let mut b = Table::new();
            b.insert("address".into(), Value::String(address.clone()));
            b.insert("weight".into(), Value::Integer(weight.unwrap_or(1)));
            let table = vips[i].as_table_mut().expect("VIPs are tables");
            table
                .entry("backend")
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .expect("array")
                .push(Value::Table(b));
        }
        Request::BackendRemove { vip, address } => {
            let i = find(vips, vip)?;
            let j = backend_of(&mut vips[i], address)?;
            vips[i].get_mut("backend").and_then(Value::as_array_mut).expect("checked").remove(j);
        }
        Request::BackendWeight { vip, address, weight } => {
            let i = find(vips, vip)?;
            let j = backend_of(&mut vips[i], address)?;
            vips[i]["backend"][j].as_table_mut().expect("table").insert("weight".into(), Value::Integer(*weight));
        }
        Request::BackendState { vip, address, state } => {
            let i = find(vips, vip)?;
            let j = backend_of(&mut vips[i], address)?;
            vips[i]["backend"][j]
                .as_table_mut()
                .expect("table")
                .insert("state".into(), Value::String(state.name().to_string()));
        }
    }
    let text = toml::to_string(&doc).map_err(|e| format!("internal: {e}"))?;
    Config::parse(&text, "change").map(Some).map_err(|e: ConfigError| {
        e.problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; ")
    })
}

/// A request waiting for the agent's loop, with where its answer goes.
pub type Pending = (Request, oneshot::Sender<Response>);
/// Where the control socket and the metrics server hand requests to the agent's loop.
pub type ControlSender = mpsc::Sender<Pending>;

/// Binds the control socket: a directory only root can enter, a socket only root can open.
pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if socket.exists() {
        // A live agent answers; a stale socket from a stopped one does not.
        anyhow::ensure!(
            UnixStream::connect(socket).is_err(),
            "another agent is running on {}; stop it first",
            socket.display()
        );
        std::fs::remove_file(socket)?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding the control socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The longest request line (the largest, a VIP added with long names, is well under 1 KiB).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Connections served at once; more are answered [`BUSY`] and closed (and [`request`] tries
/// again).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The answer to a connection past [`MAX_CONNECTIONS`].
pub const BUSY: &str = "the agent is serving as many connections as it takes; try again";

/// Answers each connection on `listener` with the agent's reply to its one request. A client
/// that is not root, sends more than [`MAX_REQUEST_BYTES`], takes longer than
/// [`REQUEST_TIMEOUT`], or sends what is not a request gets an error and is disconnected; past
/// [`MAX_CONNECTIONS`] at once, new ones are refused the same way. None of this reaches the
/// agent's loop.
pub async fn serve(listener: UnixListener, requests: ControlSender) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let requests = requests.clone();
        let slot = Arc::clone(&slots).try_acquire_owned();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let response = match slot {
                Err(_) => Some(Response::error(BUSY)),
                Ok(_slot) => answer(read, &requests).await,
            };
            let Some(response) = response else { return };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// The answer to the one request on `read`; `None` if the agent stops first.
async fn answer(read: OwnedReadHalf, requests: &ControlSender) -> Option<Response> {
    if let Err(e) = root_peer(&read) {
        return Some(Response::error(e));
    }
    let mut line = Vec::new();
    let mut limited = AsyncBufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Err(_) => return Some(Response::error(format!("no request within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(e)) => return Some(Response::error(format!("reading the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Some(Response::error(format!("a request is one line of at most {MAX_REQUEST_BYTES} bytes")));
    }
    let request = match std::str::from_utf8(&line) {
        Err(e) => return Some(Response::error(format!("not a request: not UTF-8 text ({e})"))),
        Ok(text) => match serde_json::from_str::<Request>(text) {
            Err(e) => return Some(Response::error(format!("not a request: {e}"))),
            Ok(request) => request,
        },
    };
    let (tx, rx) = oneshot::channel();
    requests.send((request, tx)).await.ok()?;
    Some(rx.await.unwrap_or_else(|_| Response::error("the agent is stopping")))
}

/// Only root (or the agent's own user, root in production) may use the socket: its file mode
/// says so, and the peer's credentials are checked too (a descriptor handed on would otherwise
/// do).
fn root_peer(read: &OwnedReadHalf) -> Result<(), String> {
    let peer = read.as_ref().peer_cred().map_err(|e| format!("reading the peer's credentials: {e}"))?;
    // SAFETY: no arguments, cannot fail.
    let own = unsafe { libc::geteuid() };
    if peer.uid() == 0 || peer.uid() == own {
        Ok(())
    } else {
        Err(format!("only root may control the agent; uid {} may not", peer.uid()))
    }
}

/// Asks the agent for its status through the same channel the control socket uses.
pub async fn status(requests: &ControlSender) -> Option<Status> {
    let (tx, rx) = oneshot::channel();
    requests.send((Request::Status, tx)).await.ok()?;
    rx.await.ok()?.into_answer().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/lab.toml")).unwrap()
    }

    #[test]
    fn edits_are_validated_like_the_file() {
        let c = lab();
        let add = Request::BackendAdd { vip: "web".into(), address: "198.18.0.24".into(), weight: Some(2) };
        let changed = edit(&c, &add).unwrap().unwrap();
        assert_eq!(changed.vips[0].backends.len(), 4);
        assert_eq!(changed.vips[0].backends[3].weight, 2);

        let bad_weight = Request::BackendWeight { vip: "web".into(), address: "198.18.0.21".into(), weight: 70_000 };
        assert_eq!(
            edit(&c, &bad_weight).unwrap_err(),
            "vip[0].backend[0].weight: 70000 is out of range 0..=65535 (0 = no new flows)"
        );
        let bad_port = Request::VipAdd {
            name: "x".into(),
            address: "198.18.100.9".into(),
            port: 70_000,
            protocol: "tcp".into(),
            table_size: None,
        };
        assert!(edit(&c, &bad_port).unwrap_err().contains("port: 70000 is out of range 0..=65535"));
        let duplicate = Request::BackendAdd { vip: "web".into(), address: "198.18.0.21".into(), weight: None };
        assert!(edit(&c, &duplicate).unwrap_err().contains("is already vip[0].backend[0]"));
        let unknown =
            Request::BackendState { vip: "nope".into(), address: "198.18.0.21".into(), state: AdminState::Drain };
        assert_eq!(edit(&c, &unknown).unwrap_err(), "no VIP named nope");
        let bad_state = r#"{"cmd":"backend_state","vip":"web","address":"198.18.0.21","state":"sleep"}"#;
        let refused = serde_json::from_str::<Request>(bad_state).unwrap_err().to_string();
        assert!(
            refused.contains("\"sleep\" is not a backend state; use \"up\", \"drain\" or \"disabled\""),
            "{refused}"
        );
    }

    #[test]
    fn drain_and_remove() {
        let c = lab();
        let drained = edit(
            &c,
            &Request::BackendState { vip: "dns".into(), address: "198.18.0.22".into(), state: AdminState::Drain },
        )
        .unwrap()
        .unwrap();
        assert_eq!(drained.vips[1].backends[1].state, AdminState::Drain);
        let removed = edit(&c, &Request::VipRemove { name: "web6".into() }).unwrap().unwrap();
        assert_eq!(removed.vips.len(), 3);
        assert!(edit(&c, &Request::Status).unwrap().is_none());
    }

    /// A control socket in a directory of its own, served by a stand-in for the agent's loop
    /// that answers every request with its name.
    fn serving(name: &str) -> PathBuf {
        let socket = std::env::temp_dir().join(format!("lb-control-{name}-{}", std::process::id())).join("c.sock");
        let listener = bind(&socket).unwrap();
        let (tx, mut rx) = mpsc::channel::<Pending>(8);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let _ = reply.send(Response::answer(&format!("{request:?}")));
            }
        });
        socket
    }

    /// The agent's answer to `bytes`.
    async fn send(socket: &Path, bytes: &[u8]) -> Response {
        use tokio::io::AsyncReadExt as _;
        let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        // The agent may answer (an oversized request) before it has read everything.
        let _ = stream.write_all(bytes).await;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    }

    #[tokio::test]
    async fn what_is_not_a_request_is_answered_and_the_socket_keeps_serving() {
        let socket = serving("abuse");
        let error = |r: Response| r.error.expect("an error");
        let unknown = br#"{"cmd":"backend_remove","vip":"web","address":"198.18.0.21","adress":"x"}"#;
        assert!(error(send(&socket, &[unknown, &b"\n"[..]].concat()).await).contains("unknown field `adress`"));
        assert!(error(send(&socket, b"\xff\xfe{}\n").await).contains("not UTF-8"));
        let oversized = vec![b'{'; MAX_REQUEST_BYTES + 10];
        assert!(error(send(&socket, &oversized).await).contains("at most 65536 bytes"));
        assert!(error(send(&socket, b"garbage\n").await).starts_with("not a request"));
        // A thousand idle connections, far past the limit: a request still gets through once
        // they time out, and the client library waits for that.
        crate::agent::raise_open_file_limit();
        let mut idle = Vec::new();
        for _ in 0..1000 {
            idle.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
        }
        let socket2 = socket.clone();
        let answered = tokio::task::spawn_blocking(move || request(&socket2, &Request::Status)).await.unwrap();
        assert_eq!(answered.unwrap().into_answer::<String>().unwrap(), "Status");
        drop(idle);
        let _ = std::fs::remove_dir_all(socket.parent().unwrap());
    }
}
