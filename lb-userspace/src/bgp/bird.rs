//! BIRD's control socket (what `birdc` speaks): a command per line; a reply is lines of a
//! four-digit code and text, `-` after the code while more follow and a space on the last, and
//! lines that begin with a space continue the previous code. Codes from 8000 are errors: 8xxx of
//! the command's execution (8002: the configuration does not parse, with file, line and column),
//! 9xxx of the command line itself. The agent reads only what it needs: `configure`'s verdict,
//! `show protocols` and `show bfd sessions`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// Longer than any reconfiguration of a few hundred routes takes.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply longer than this is not one the agent asked for.
const MAX_REPLY_LINES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot reach BIRD at {}: {error}; is bird running, and is [bgp] bird_socket its control socket?", socket.display())]
    Unreachable { socket: PathBuf, error: std::io::Error },
    #[error("BIRD at {} did not answer `{command}` within {REPLY_TIMEOUT:?}", socket.display())]
    Timeout { socket: PathBuf, command: String },
    #[error("BIRD refused `{command}`: {message}")]
    Refused { command: String, message: String },
    #[error("BIRD's answer to `{command}` does not follow its protocol: {line:?}")]
    Garbled { command: String, line: String },
}

/// One line of a reply: its code (inherited by continuation lines) and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub code: u16,
    pub text: String,
}

/// A connection to BIRD's control socket.
pub struct Bird {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Bird {
    /// Connects and reads BIRD's greeting.
    pub async fn connect(socket: &Path) -> Result<Self, BirdError> {
        let unreachable = |error| BirdError::Unreachable { socket: socket.to_path_buf(), error };
        let stream = tokio::time::timeout(REPLY_TIMEOUT, UnixStream::connect(socket))
            .await
            .map_err(|_| BirdError::Timeout { socket: socket.to_path_buf(), command: "connect".into() })?
            .map_err(unreachable)?;
        let mut bird = Self { socket: socket.to_path_buf(), reader: BufReader::new(stream) };
        bird.reply("(greeting)").await?;
        Ok(bird)
    }

    /// Sends `command` and reads its whole reply; an error code is [`BirdError::Refused`].
    pub async fn command(&mut self, command: &str) -> Result<Vec<Line>, BirdError> {
        let unreachable = |error| BirdError::Unreachable { socket: self.socket.clone(), error };
        self.reader.get_mut().write_all(format!("{command}\n").as_bytes()).await.map_err(unreachable)?;
        let lines = self.reply(command).await?;
        match lines.iter().find(|l| l.code >= 8000) {
            Some(error) => Err(BirdError::Refused {
                command: command.to_string(),
                message: lines
                    .iter()
                    .filter(|l| l.code == error.code)
                    .map(|l| l.text.trim())
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
            None => Ok(lines),
        }
    }

    /// Asks BIRD to read its configuration again; Ok once it accepted it.
    pub async fn configure(&mut self) -> Result<(), BirdError> {
        self.command("configure").await.map(drop)
    }

    async fn reply(&mut self, command: &str) -> Result<Vec<Line>, BirdError> {
        let socket = self.socket.clone();
        tokio::time::timeout(REPLY_TIMEOUT, read_reply(&mut self.reader, command, &socket))
            .await
            .map_err(|_| BirdError::Timeout { socket, command: command.to_string() })?
    }
}

async fn read_reply(reader: &mut BufReader<UnixStream>, command: &str, socket: &Path) -> Result<Vec<Line>, BirdError> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let n = reader
            .read_until(b'\n', &mut bytes)
            .await
            .map_err(|error| BirdError::Unreachable { socket: socket.to_path_buf(), error })?;
        let garbled = |line: &str| BirdError::Garbled { command: command.to_string(), line: line.to_string() };
        if n == 0 {
            return Err(garbled("(closed before the reply ended)"));
        }
        // Names and messages are ASCII; anything else is shown, not fatal.
        let text = String::from_utf8_lossy(&bytes);
        let line = text.trim_end_matches('\n');
        if let Some(text) = line.strip_prefix(' ') {
            lines.push(Line { code, text: text.to_string() });
        } else {
            let digits = line.get(..4).and_then(|d| d.parse::<u16>().ok()).ok_or_else(|| garbled(line))?;
            code = digits;
            let (separator, text) = (line.get(4..5).unwrap_or(" "), line.get(5..).unwrap_or(""));
            lines.push(Line { code, text: text.to_string() });
            match separator {
                " " => return Ok(lines),
                "-" => {}
                _ => return Err(garbled(line)),
            }
        }
        if lines.len() > MAX_REPLY_LINES {
            return Err(garbled("(a reply of more than 100000 lines)"));
        }
    }
}

/// A row of `show protocols`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    pub name: String,
    pub kind: String,
    /// BIRD's protocol state: up, start, down, flush.
    pub state: String,
    /// For BGP, the session's state (Established, Active, Connect, ...) and any last error.
    pub info: String,
}

/// The rows of `show protocols` (code 1002).
pub fn protocols(reply: &[Line]) -> Vec<Protocol> {
    reply
        .iter()
        .filter(|l| l.code == 1002)
        .filter_map(|l| {
            let words: Vec<&str> = l.text.split_whitespace().collect();
            let [name, kind, _table, state, rest @ ..] = words.as_slice() else { return None };
            // "Since" is a time or a date and time: the info starts at the first word that does
            // not begin with a digit.
            let info_start = rest.iter().position(|w| !w.starts_with(|c: char| c.is_ascii_digit()));
            let info = info_start.map(|i| rest[i..].join(" ")).unwrap_or_default();
            Some(Protocol { name: name.to_string(), kind: kind.to_string(), state: state.to_string(), info })
        })
        .collect()
}

/// The BFD sessions of `show bfd sessions` (code 1020): neighbour address and state.
pub fn bfd_sessions(reply: &[Line]) -> Vec<(IpAddr, String)> {
    reply
        .iter()
        .filter(|l| l.code == 1020)
        .filter_map(|l| {
            let words: Vec<&str> = l.text.split_whitespace().collect();
            let [address, _interface, state, ..] = words.as_slice() else { return None };
            Some((address.parse().ok()?, state.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(reply: &[(u16, &str)]) -> Vec<Line> {
        reply.iter().map(|(code, text)| Line { code: *code, text: text.to_string() }).collect()
    }

    #[test]
    fn reads_protocol_rows_whatever_the_time_format() {
        let reply = lines(&[
            (2002, "Name       Proto      Table      State  Since         Info"),
            (1002, "lb_bfd     BFD        ---        up     02:05:28.001  "),
            (1002, "lb_a_r1    BGP        ---        up     02:05:32.866  Established   "),
            (
                1002,
                "lb_a_r2    BGP        ---        start  2026-12-04 23:59:01  Active        Socket: Connection refused",
            ),
            (0, ""),
        ]);
        let rows = protocols(&reply);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[1].name.as_str(), rows[1].state.as_str(), rows[1].info.as_str()),
            ("lb_a_r1", "up", "Established")
        );
        assert_eq!(rows[2].info, "Active Socket: Connection refused");
        assert_eq!(rows[0].info, "");
    }

    #[test]
    fn reads_bfd_sessions() {
        let reply = lines(&[
            (1020, "lb_bfd:"),
            (1020, "IP address                Interface  State      Since         Interval  Timeout"),
            (1020, "198.18.9.2                veth0      Up         02:05:28.754    0.100    0.300"),
            (1020, "fd00::fe                  veth0      Down       02:05:28.754    1.000    0.000"),
        ]);
        assert_eq!(
            bfd_sessions(&reply),
            vec![("198.18.9.2".parse().unwrap(), "Up".to_string()), ("fd00::fe".parse().unwrap(), "Down".to_string())]
        );
    }

    /// A stand-in for BIRD's socket that answers as BIRD 2.0.12 does.
    async fn serve_once(listener: tokio::net::UnixListener, answers: Vec<&'static str>) {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(b"0001 BIRD 2.0.12 ready.\n").await.expect("greeting");
        for answer in answers {
            let mut command = String::new();
            reader.read_line(&mut command).await.expect("command");
            reader.get_mut().write_all(answer.as_bytes()).await.expect("answer");
        }
    }

    #[tokio::test]
    async fn speaks_the_control_protocol_and_reports_refusals() {
        let dir = std::env::temp_dir().join(format!("lb-bird-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let socket = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let server = tokio::spawn(serve_once(
            listener,
            vec![
                "0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n",
                "1002-lb_a_r1    BGP        ---        up     02:05:32.866  Established\n \
                 lb_a_r2    BGP        ---        start  02:05:32.866  Connect\n0000 \n",
                "0002-Reading configuration from /etc/bird/bird.conf\n8002 /run/lb/a.bird.conf:3:1 syntax error, unexpected '}'\n",
            ],
        ));
        let mut bird = Bird::connect(&socket).await.expect("connect");
        bird.configure().await.expect("configure");
        let rows = protocols(&bird.command("show protocols").await.expect("show"));
        assert_eq!(rows.iter().map(|r| r.info.as_str()).collect::<Vec<_>>(), ["Established", "Connect"]);
        let e = bird.configure().await.expect_err("a parse error");
        assert!(e.to_string().contains("a.bird.conf:3:1 syntax error"), "{e}");
        server.await.expect("server");
        let missing = Bird::connect(&dir.join("none.ctl")).await.err().expect("no socket");
        assert!(matches!(missing, BirdError::Unreachable { .. }), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
