//! A small QMP (QEMU Machine Protocol) client on tokio.
//!
//! QMP is newline-delimited JSON over a stream socket: QEMU greets with
//! `{"QMP": {...}}`, the client leaves negotiation mode with
//! `qmp_capabilities`, then sends `{"execute": ..., "id": N}` and reads
//! `{"return": ..., "id": N}` or `{"error": ..., "id": N}`. Asynchronous
//! events (`{"event": ...}`) may arrive at any time, also between a command
//! and its reply, so replies are matched by `id` and events are queued for
//! [`Qmp::next_event`].
//!
//! Every read has a deadline: a monitor that stops talking is a
//! [`QmpError::Timeout`], never a hang.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::Gone;

/// Longest line we accept from QEMU; a reply to the commands we send is a
/// few hundred bytes.
const MAX_LINE: usize = 1 << 20;

/// Where a QEMU monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `-qmp unix:PATH,server=on,wait=off`
    Unix(PathBuf),
    /// `-qmp tcp:HOST:PORT,server=on,wait=off`
    Tcp { host: String, port: u16 },
}

impl Endpoint {
    /// What finding the VM gone here means, in the words an error and an
    /// event share. A unix socket can only be on this host, so the words say
    /// so; a TCP endpoint names its own host.
    pub fn gone_words(&self, gone: Gone) -> String {
        match (self, gone) {
            (Endpoint::Unix(p), Gone::NoSocket) => {
                format!("the QMP socket {} does not exist on this host", p.display())
            }
            (Endpoint::Unix(_), Gone::Refused) => {
                format!("QMP connection refused at {self} on this host")
            }
            (Endpoint::Tcp { .. }, Gone::Refused) => format!("QMP connection refused at {self}"),
            // Never made by `connect` (a TCP endpoint has no file to miss);
            // worded anyway, since these words are only a record.
            (Endpoint::Tcp { .. }, Gone::NoSocket) => format!("no QMP endpoint at {self}"),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// Why a QMP exchange failed. The driver decides what each means for a stop.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Nothing listens: the socket file is missing, or the connection was
    /// refused (`gone` says which). For a QEMU monitor this means the VM
    /// process is gone.
    #[error("{}: {source}", .endpoint.gone_words(*.gone))]
    Unreachable {
        endpoint: Endpoint,
        gone: Gone,
        #[source]
        source: io::Error,
    },
    /// The monitor closed the connection (QEMU exited or dropped us).
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// No answer within the read timeout.
    #[error("no answer from QMP within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    #[error("QMP I/O error: {0}")]
    Io(#[from] io::Error),
    /// Not QMP, or not the QMP we know.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    /// The event's `data` member (`Null` when absent).
    pub data: Value,
}

type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One QMP session in command mode.
pub struct Qmp {
    reader: Reader,
    writer: Writer,
    next_id: u64,
    /// Events read while waiting for a reply, oldest first.
    events: VecDeque<Event>,
    /// Longest wait for any single answer (connect, greeting, reply).
    timeout: Duration,
    /// QEMU's version from the greeting, e.g. "7.2.22".
    pub version: String,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities, each step
    /// within `timeout`.
    pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Qmp, QmpError> {
        let failed = |source: io::Error| {
            let gone = match (endpoint, source.kind()) {
                // Only a unix socket is a file that can be missing: over TCP
                // a NotFound would be something else (a name that does not
                // resolve), and taking it for a stopped VM would record a
                // stop that never happened.
                (Endpoint::Unix(_), io::ErrorKind::NotFound) => Gone::NoSocket,
                (_, io::ErrorKind::ConnectionRefused) => Gone::Refused,
                _ => return QmpError::Io(source),
            };
            QmpError::Unreachable {
                endpoint: endpoint.clone(),
                gone,
                source,
            }
        };
        let (reader, writer): (Box<dyn AsyncRead + Send + Unpin>, Writer) = match endpoint {
            Endpoint::Unix(path) => {
                let s = tokio::time::timeout(timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| QmpError::Timeout(timeout, "connect"))?
                    .map_err(failed)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Endpoint::Tcp { host, port } => {
                let s = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| QmpError::Timeout(timeout, "connect"))?
                    .map_err(failed)?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut qmp = Qmp {
            reader: BufReader::new(reader),
            writer,
            next_id: 1,
            events: VecDeque::new(),
            timeout,
            version: String::new(),
        };
        // QEMU serves one monitor client at a time; a second client is
        // accepted by the kernel but greeted only when the first leaves, so
        // a busy monitor shows up here as a timeout.
        let greeting = qmp
            .read_message(Instant::now() + timeout, "greeting")
            .await?;
        let Some(info) = greeting.get("QMP") else {
            return Err(QmpError::Protocol(format!(
                "expected a QMP greeting, got {greeting}"
            )));
        };
        let v = &info["version"]["qemu"];
        qmp.version = format!("{}.{}.{}", v["major"], v["minor"], v["micro"]);
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value. Events that arrive
    /// meanwhile are kept for [`Qmp::next_event`].
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline, async {
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.flush().await
        })
        .await
        .map_err(|_| QmpError::Timeout(self.timeout, "send"))?
        .map_err(closed_or_io)?;
        loop {
            let mut m = self.read_message(deadline, "command reply").await?;
            if m.get("event").is_some() {
                self.events.push_back(to_event(m));
                continue;
            }
            if m.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply to a command of an earlier, abandoned exchange.
                continue;
            }
            if let Some(r) = m.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = m.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected reply {m}")));
        }
    }

    /// The next event, or `None` once `deadline` passes without one.
    pub async fn next_event(&mut self, deadline: Instant) -> Result<Option<Event>, QmpError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        loop {
            match self.read_message(deadline, "event").await {
                Ok(m) if m.get("event").is_some() => return Ok(Some(to_event(m))),
                Ok(_) => continue,
                Err(QmpError::Timeout(..)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until QEMU closes the connection (it does so when it exits),
    /// keeping events. False if it is still open at `deadline`.
    pub async fn closed(&mut self, deadline: Instant) -> Result<bool, QmpError> {
        loop {
            match self.read_message(deadline, "exit").await {
                Ok(m) if m.get("event").is_some() => self.events.push_back(to_event(m)),
                Ok(_) => {}
                Err(QmpError::Closed) => return Ok(true),
                // A reset connection is closed too.
                Err(QmpError::Io(_)) => return Ok(true),
                Err(QmpError::Timeout(..)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_message(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Value, QmpError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = tokio::time::timeout_at(deadline, read_line(&mut self.reader, &mut line))
                .await
                .map_err(|_| QmpError::Timeout(wait, what))?
                .map_err(closed_or_io)?;
            if n == 0 {
                return Err(QmpError::Closed);
            }
            let text = String::from_utf8_lossy(&line);
            if text.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(text.trim())
                .map_err(|e| QmpError::Protocol(format!("not JSON ({e}): {}", text.trim())));
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; 0 at end of stream.
async fn read_line(reader: &mut Reader, buf: &mut Vec<u8>) -> io::Result<usize> {
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await?;
    if n == MAX_LINE && buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "QMP line too long",
        ));
    }
    Ok(n)
}

fn closed_or_io(e: io::Error) -> QmpError {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::UnexpectedEof => QmpError::Closed,
        _ => QmpError::Io(e),
    }
}

fn to_event(mut m: Value) -> Event {
    Event {
        name: m["event"].as_str().unwrap_or_default().to_string(),
        data: m.get_mut("data").map(Value::take).unwrap_or(Value::Null),
    }
}
