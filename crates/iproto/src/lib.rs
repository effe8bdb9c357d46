//! A small client of Tarantool's binary protocol (IPROTO), just what the
//! Tarantool backend needs: log in (`chap-sha1`), `CALL` stored functions
//! and `SELECT` rows by a primary key, over one multiplexed connection that
//! reconnects by itself.
//!
//! Why our own: the crates that speak IPROTO to Tarantool 2.6 are
//! unmaintained (rusty_tarantool 0.3 panicked inside its connection task
//! when a server closed the socket before its greeting, and then never
//! answered again; it also pulls in the long-deprecated rustc-serialize), or
//! need Tarantool 2.10+ (tarantool-rs sends IPROTO_ID, which 2.6 rejects).
//! And the service needs something no client offered: to know, when a call
//! fails, whether its request ever left for the server — a write that was
//! never sent was not applied (503, retry), one that was sent but not
//! answered may have been (504).
//!
//! Design: one task owns the connection. Calls go to it through a channel;
//! it connects (greeting, login), then writes queued requests and reads
//! answers, matching them by their sync number. Each request carries a state
//! shared with its caller — queued, sent or cancelled — changed by
//! compare-and-swap, so a caller that gives up on a queued request is
//! guaranteed it will never be sent. When the connection breaks, requests
//! not yet written fail as not sent and the ones written as outcome
//! unknown; while connecting, calls wait for the attempt, and fail at once
//! when it fails (refused, unreachable, login rejected), so an outage is a
//! fast 503 and a restart of a second is absorbed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// Tarantool error codes the service tells apart (`box.error.*`).
pub mod codes {
    /// `READONLY`: the instance does not take writes (a replica, or starting).
    pub const READONLY: u32 = 7;
    /// `MEMORY_ISSUE`: the memtx quota is exhausted.
    pub const MEMORY_ISSUE: u32 = 2;
    /// `NO_SUCH_PROC`: the function is not defined.
    pub const NO_SUCH_PROC: u32 = 33;
    /// `WAL_IO`: writing the write-ahead log failed (disk full).
    pub const WAL_IO: u32 = 40;
    /// `ACCESS_DENIED`: the user may not call the function.
    pub const ACCESS_DENIED: u32 = 42;
    /// `NO_SUCH_USER`.
    pub const NO_SUCH_USER: u32 = 45;
    /// `PASSWORD_MISMATCH`: wrong password.
    pub const PASSWORD_MISMATCH: u32 = 47;
    /// `LOADING`: the instance is still recovering or bootstrapping.
    pub const LOADING: u32 = 116;
}

/// Why a call did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request never left for the server: it was not applied.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request was sent, but no answer came (timeout, connection lost):
    /// it may have been applied.
    #[error("sent, no answer: {0}")]
    NoAnswer(String),
    /// The server could not be logged in to.
    #[error("login rejected: {message}")]
    Login {
        /// Tarantool's error code.
        code: u32,
        /// Tarantool's message.
        message: String,
    },
    /// The server answered with an error.
    #[error("tarantool error {code}: {message}")]
    Server {
        /// Tarantool's error code.
        code: u32,
        /// Tarantool's message.
        message: String,
    },
    /// The answer was not what the caller expected.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Config {
    /// `HOST:PORT`.
    pub address: String,
    /// User name (`guest` logs in without a password).
    pub user: String,
    /// Password.
    pub password: String,
    /// Longest wait for a TCP connection, the greeting and the login.
    pub connect_timeout: Duration,
}

/// The connection's state, as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Connecting (first attempt, or again after a failure).
    Connecting,
    /// Logged in and serving calls.
    Connected,
    /// The last attempt failed for this reason; another follows shortly.
    Down(CallError),
}

/// A request's state: queued, cancelled by its caller, or sent on the
/// connection with this number (2 and up).
const QUEUED: u64 = 0;
const CANCELLED: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

/// A request on its way: its bytes, its state and where the answer goes.
struct Request {
    sync: u64,
    bytes: Vec<u8>,
    state: Arc<AtomicU64>,
    reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

/// What callers send the connection task.
enum Message {
    /// A call to send.
    Call(Request),
    /// A request sent on `connection` got no answer within its caller's
    /// timeout, and the client had `received` bytes in all when it was
    /// queued. If nothing arrived since, the connection is taken for dead
    /// (a stalled peer, a half-open TCP connection) and replaced.
    Suspect { connection: u64, received: u64 },
}

/// What the connection task and its supervisor share with the client.
struct Shared {
    config: Config,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    status: watch::Sender<Status>,
    /// Bytes read from Tarantool, over every connection.
    received: Arc<AtomicU64>,
    /// The number the next connection gets.
    next_connection: AtomicU64,
}

/// A Tarantool connection shared by all callers; cheap to clone.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::UnboundedSender<Message>,
    status: watch::Receiver<Status>,
    sync: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Client {
    /// Starts the connection task (on the current tokio runtime); the first
    /// connection attempt begins at once. The task ends when every clone of
    /// the client is dropped.
    pub fn new(config: Config) -> Self {
        Self::start(config, run)
    }

    /// [`Client::new`] with another connection task (tests inject faults).
    fn start<F, Fut>(config: Config, task: F) -> Self
    where
        F: FnMut(Arc<Shared>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (requests, queue) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(Status::Connecting);
        let received = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            config,
            queue: tokio::sync::Mutex::new(queue),
            status: status_tx,
            received: Arc::clone(&received),
            next_connection: AtomicU64::new(FIRST_CONNECTION),
        });
        tokio::spawn(supervise(shared, task));
        Self {
            requests,
            status,
            sync: Arc::new(AtomicU64::new(1)),
            received,
        }
    }

    /// The connection's current state.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of the connection's state as it changes.
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Calls the stored function `function` with `args` (a tuple, sent as
    /// the argument array) and decodes its return values (a tuple of them:
    /// Tarantool answers a CALL with the array of everything returned).
    /// Waits at most `timeout` in all; a request still queued then is never sent.
    pub async fn call<A, R>(
        &self,
        function: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let sync = self.sync.fetch_add(1, Ordering::Relaxed);
        let bytes = encode_call(sync, function, args)
            .map_err(|e| CallError::NotSent(format!("cannot encode the arguments: {e}")))?;
        self.request(sync, bytes, timeout).await
    }

    /// Selects at most `limit` tuples of space `space` by its primary index:
    /// those equal to `key` (a prefix) or, with `after`, those after it in
    /// index order. Decodes them as `R` (a sequence of tuples). Runs in
    /// Tarantool's C code, no Lua: the cheap way to read many rows. The
    /// user needs `read` on the space.
    pub async fn select<K, R>(
        &self,
        space: u32,
        key: &K,
        after: bool,
        limit: u32,
        timeout: Duration,
    ) -> Result<R, CallError>
    where
        K: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let sync = self.sync.fetch_add(1, Ordering::Relaxed);
        let iterator = if after { ITERATOR_GT } else { ITERATOR_EQ };
        let bytes = encode_select(sync, space, key, iterator, limit)
            .map_err(|e| CallError::NotSent(format!("cannot encode the key: {e}")))?;
        self.request(sync, bytes, timeout).await
    }

    /// Sends one encoded request and decodes its answer's data.
    async fn request<R>(&self, sync: u64, bytes: Vec<u8>, timeout: Duration) -> Result<R, CallError>
    where
        R: DeserializeOwned + Send + 'static,
    {
        let state = Arc::new(AtomicU64::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let received = self.received.load(Ordering::Acquire);
        self.requests
            .send(Message::Call(Request {
                sync,
                bytes,
                state: Arc::clone(&state),
                reply,
            }))
            .map_err(|_| CallError::NotSent("the connection task has stopped".into()))?;
        let body = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {
                // The connection task dropped the request: it panicked.
                let why = "the connection task failed".to_owned();
                return Err(match state.load(Ordering::Acquire) {
                    QUEUED => CallError::NotSent(why),
                    _ => CallError::NoAnswer(why),
                });
            }
            Err(_) => {
                let why = format!("no answer within {timeout:?}");
                return Err(
                    match state.compare_exchange(
                        QUEUED,
                        CANCELLED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => CallError::NotSent(why),
                        Err(connection) => {
                            let _ = self.requests.send(Message::Suspect {
                                connection,
                                received,
                            });
                            CallError::NoAnswer(why)
                        }
                    },
                );
            }
        };
        if body.len() < BLOCKING_DECODE {
            return decode_data(&body);
        }
        // A whole big import: decoded off the async worker threads.
        tokio::task::spawn_blocking(move || decode_data(&body))
            .await
            .map_err(|e| CallError::Decode(format!("decoding failed: {e}")))?
    }
}

/// Answers at least this long are decoded on a blocking thread.
const BLOCKING_DECODE: usize = 256 * 1024;

/// Runs the connection task, and runs it again whenever it panics: a bug
/// in this client must cost a reconnect, not the service. Each panic is
/// logged once; restarts pause 50 ms, doubling to 5 s while the panics
/// keep coming. Requests still queued survive a restart (the queue is
/// shared); the ones sent and unanswered fail as outcome unknown.
async fn supervise<F, Fut>(shared: Arc<Shared>, mut task: F)
where
    F: FnMut(Arc<Shared>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut pause = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        let failure = match tokio::spawn(task(Arc::clone(&shared))).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => e.into_panic(),
            Err(_) => return, // cancelled: the runtime is shutting down
        };
        let why = failure
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| failure.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(panic = %why, "the tarantool connection task panicked; restarting it");
        let _ = shared.status.send(Status::Down(CallError::NotSent(format!(
            "the connection task panicked: {why}"
        ))));
        if started.elapsed() > Duration::from_secs(60) {
            pause = Duration::from_millis(50);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The connection task: connect, serve, and on failure fail what is
/// waiting, pause, and connect again.
async fn run(shared: Arc<Shared>) {
    let mut queue = shared.queue.lock().await;
    let config = &shared.config;
    let status = &shared.status;
    let mut pause = Duration::from_millis(50);
    loop {
        let _ = status.send(Status::Connecting);
        let connected = tokio::time::timeout(config.connect_timeout, connect(config))
            .await
            .unwrap_or_else(|_| {
                Err(CallError::NotSent(format!(
                    "no connection within {:?}",
                    config.connect_timeout
                )))
            });
        let failure = match connected {
            Ok(stream) => {
                let _ = status.send(Status::Connected);
                pause = Duration::from_millis(50);
                let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                match serve(stream, &shared.received, &mut queue, connection).await {
                    Served::ClientGone => return,
                    Served::Broken(why) => CallError::NotSent(why),
                }
            }
            Err(e) => e,
        };
        let _ = status.send(Status::Down(failure.clone()));
        // Calls that came while connecting or after the break fail now:
        // fast 503s rather than waiting through the pause.
        while let Ok(message) = queue.try_recv() {
            if let Message::Call(request) = message {
                let _ = request.reply.send(Err(failure.clone()));
            }
        }
        if queue.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    received: Arc<AtomicU64>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.received.fetch_add(read, Ordering::AcqRel);
        }
        polled
    }
}

enum Served {
    /// Every client handle was dropped.
    ClientGone,
    /// The connection broke.
    Broken(String),
}

/// Writes queued requests and reads answers until the connection breaks.
async fn serve(
    stream: TcpStream,
    received: &Arc<AtomicU64>,
    queue: &mut mpsc::UnboundedReceiver<Message>,
    connection: u64,
) -> Served {
    let (read, write) = stream.into_split();
    let read = Counting {
        inner: read,
        received: Arc::clone(received),
    };
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    type Waiting = HashMap<u64, oneshot::Sender<Result<Vec<u8>, CallError>>>;
    let waiting: Arc<Mutex<Waiting>> = Arc::default();

    let reading = {
        let waiting = Arc::clone(&waiting);
        async move {
            loop {
                let (sync, answer) = read_answer(&mut reader).await?;
                let entry = waiting.lock().expect("waiting lock").remove(&sync);
                if let Some(reply) = entry {
                    let _ = reply.send(answer);
                }
            }
        }
    };
    let writing = async {
        while let Some(message) = queue.recv().await {
            let request = match message {
                Message::Call(request) => request,
                Message::Suspect {
                    connection: suspected,
                    received: then,
                } => {
                    if suspected == connection && received.load(Ordering::Acquire) == then {
                        return Err(
                            "a call got no answer in its time and nothing arrived meanwhile: \
                             the connection is taken for dead"
                                .to_owned(),
                        );
                    }
                    continue;
                }
            };
            if request
                .state
                .compare_exchange(QUEUED, connection, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue; // its caller gave up: never send it
            }
            waiting
                .lock()
                .expect("waiting lock")
                .insert(request.sync, request.reply);
            writer
                .write_all(&request.bytes)
                .await
                .map_err(|e| format!("writing: {e}"))?;
            // Requests that queued up meanwhile go out in the same write.
            if queue.is_empty() {
                writer.flush().await.map_err(|e| format!("writing: {e}"))?;
            }
        }
        Ok::<Served, String>(Served::ClientGone)
    };
    let outcome = tokio::select! {
        result = reading => match result {
            Err(why) => Served::Broken(why),
            Ok(()) => unreachable!("the reading loop only ends with an error"),
        },
        result = writing => match result {
            Ok(served) => served,
            Err(why) => Served::Broken(why),
        },
    };
    // Everything written and not answered may have been applied.
    let why = match &outcome {
        Served::Broken(why) => why.clone(),
        Served::ClientGone => "the client was closed".into(),
    };
    for (_, reply) in waiting.lock().expect("waiting lock").drain() {
        let _ = reply.send(Err(CallError::NoAnswer(format!("connection lost: {why}"))));
    }
    outcome
}

/// TCP connection, greeting and login.
async fn connect(config: &Config) -> Result<TcpStream, CallError> {
    let down = |e: std::io::Error| CallError::NotSent(format!("{}: {e}", config.address));
    let mut stream = TcpStream::connect(&config.address).await.map_err(down)?;
    stream.set_nodelay(true).map_err(down)?;
    let mut greeting = [0u8; 128];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(|e| CallError::NotSent(format!("{}: no greeting: {e}", config.address)))?;
    if !greeting.starts_with(b"Tarantool ") {
        return Err(CallError::NotSent(format!(
            "{} is not a Tarantool server",
            config.address
        )));
    }
    if config.user == "guest" {
        return Ok(stream);
    }
    let salt = base64::engine::general_purpose::STANDARD
        .decode(greeting[64..108].trim_ascii())
        .ok()
        .filter(|salt| salt.len() >= 20)
        .ok_or_else(|| CallError::NotSent("the greeting carries no salt".into()))?;
    let request = encode_auth(&config.user, &scramble(&salt[..20], &config.password));
    stream.write_all(&request).await.map_err(down)?;
    let mut reader = BufReader::new(&mut stream);
    match read_answer(&mut reader).await {
        Ok((_, Ok(_))) => Ok(stream),
        Ok((_, Err(CallError::Server { code, message }))) => {
            Err(CallError::Login { code, message })
        }
        Ok((_, Err(e))) => Err(e),
        Err(why) => Err(CallError::NotSent(format!("logging in: {why}"))),
    }
}

/// `chap-sha1`: sha1(password) XOR sha1(salt ++ sha1(sha1(password))).
fn scramble(salt: &[u8], password: &str) -> [u8; 20] {
    let step1: [u8; 20] = Sha1::digest(password.as_bytes()).into();
    let step2: [u8; 20] = Sha1::digest(step1).into();
    let mut hasher = Sha1::new();
    hasher.update(salt);
    hasher.update(step2);
    let step3: [u8; 20] = hasher.finalize().into();
    std::array::from_fn(|i| step1[i] ^ step3[i])
}

// IPROTO keys and request types.
const KEY_REQUEST_TYPE: u8 = 0x00;
const KEY_SYNC: u8 = 0x01;
const KEY_TUPLE: u8 = 0x21;
const KEY_FUNCTION_NAME: u8 = 0x22;
const KEY_USER_NAME: u8 = 0x23;
const KEY_DATA: u8 = 0x30;
const KEY_ERROR_24: u8 = 0x31;
const KEY_SPACE_ID: u8 = 0x10;
const KEY_INDEX_ID: u8 = 0x11;
const KEY_LIMIT: u8 = 0x12;
const KEY_OFFSET: u8 = 0x13;
const KEY_ITERATOR: u8 = 0x14;
const KEY_KEY: u8 = 0x20;
const TYPE_SELECT: u8 = 0x01;
const TYPE_AUTH: u8 = 0x07;
const TYPE_CALL: u8 = 0x0a;
const ITERATOR_EQ: u8 = 0;
const ITERATOR_GT: u8 = 6;

/// A packet: its length as a 5-byte msgpack uint32, then header and body.
fn frame(build: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0xce, 0, 0, 0, 0];
    build(&mut bytes)?;
    let len = u32::try_from(bytes.len() - 5).map_err(|_| "request too large".to_owned())?;
    bytes[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(bytes)
}

fn header(out: &mut Vec<u8>, request_type: u8, sync: u64) {
    use rmp::encode::{write_map_len, write_pfix, write_uint};
    // Writing to a Vec cannot fail.
    let _ = write_map_len(out, 2);
    let _ = write_pfix(out, KEY_REQUEST_TYPE);
    let _ = write_pfix(out, request_type);
    let _ = write_pfix(out, KEY_SYNC);
    let _ = write_uint(out, sync);
}

fn encode_call<A: Serialize + ?Sized>(
    sync: u64,
    function: &str,
    args: &A,
) -> Result<Vec<u8>, String> {
    frame(|out| {
        header(out, TYPE_CALL, sync);
        let _ = rmp::encode::write_map_len(out, 2);
        let _ = rmp::encode::write_pfix(out, KEY_FUNCTION_NAME);
        let _ = rmp::encode::write_str(out, function);
        let _ = rmp::encode::write_pfix(out, KEY_TUPLE);
        args.serialize(&mut rmp_serde::Serializer::new(&mut *out))
            .map_err(|e| e.to_string())
    })
}

fn encode_select<K: Serialize + ?Sized>(
    sync: u64,
    space: u32,
    key: &K,
    iterator: u8,
    limit: u32,
) -> Result<Vec<u8>, String> {
    use rmp::encode::{write_map_len, write_pfix, write_uint};
    frame(|out| {
        header(out, TYPE_SELECT, sync);
        let _ = write_map_len(out, 6);
        let _ = write_pfix(out, KEY_SPACE_ID);
        let _ = write_uint(out, u64::from(space));
        let _ = write_pfix(out, KEY_INDEX_ID);
        let _ = write_pfix(out, 0);
        let _ = write_pfix(out, KEY_LIMIT);
        let _ = write_uint(out, u64::from(limit));
        let _ = write_pfix(out, KEY_OFFSET);
        let _ = write_pfix(out, 0);
        let _ = write_pfix(out, KEY_ITERATOR);
        let _ = write_pfix(out, iterator);
        let _ = write_pfix(out, KEY_KEY);
        key.serialize(&mut rmp_serde::Serializer::new(&mut *out))
            .map_err(|e| e.to_string())
    })
}

fn encode_auth(user: &str, scramble: &[u8; 20]) -> Vec<u8> {
    frame(|out| {
        header(out, TYPE_AUTH, 0);
        let _ = rmp::encode::write_map_len(out, 2);
        let _ = rmp::encode::write_pfix(out, KEY_USER_NAME);
        let _ = rmp::encode::write_str(out, user);
        let _ = rmp::encode::write_pfix(out, KEY_TUPLE);
        let _ = rmp::encode::write_array_len(out, 2);
        let _ = rmp::encode::write_str(out, "chap-sha1");
        // The scramble is raw bytes in a msgpack string, as Tarantool expects.
        let _ = rmp::encode::write_str_len(out, 20);
        out.extend_from_slice(scramble);
        Ok(())
    })
    .expect("an auth request is small")
}

/// Largest answer accepted (a whole big import's citizens fit).
const MAX_ANSWER: usize = 1 << 31;

/// Reads one answer: its sync, and its body or its error.
async fn read_answer<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(u64, Result<Vec<u8>, CallError>), String> {
    let mut prefix = [0u8; 5];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if prefix[0] != 0xce {
        return Err(format!("malformed packet length (byte {:#x})", prefix[0]));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_ANSWER {
        return Err(format!("answer of {len} bytes is over the limit"));
    }
    // Grown as the bytes arrive: a corrupt length costs no big allocation.
    let mut packet = Vec::with_capacity(len.min(1 << 20));
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut packet)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if packet.len() < len {
        return Err("reading: the connection closed inside an answer".into());
    }
    let mut cursor = &packet[..];
    let (code, sync) = read_header(&mut cursor).map_err(|e| format!("malformed header: {e}"))?;
    let body = cursor.to_vec();
    if code == 0 {
        return Ok((sync, Ok(body)));
    }
    let message = decode_error(&body).unwrap_or_else(|| "(no message)".into());
    Ok((
        sync,
        Err(CallError::Server {
            code: code & 0x7fff,
            message,
        }),
    ))
}

/// The response code and sync of a header map; leaves the cursor at the body.
fn read_header(cursor: &mut &[u8]) -> Result<(u32, u64), String> {
    let n = rmp::decode::read_map_len(cursor).map_err(|e| e.to_string())?;
    let (mut code, mut sync) = (None, None);
    for _ in 0..n {
        let key: u64 = rmp::decode::read_int(cursor).map_err(|e| e.to_string())?;
        let value: u64 = rmp::decode::read_int(cursor).map_err(|e| e.to_string())?;
        match key {
            0x00 => code = u32::try_from(value).ok(),
            0x01 => sync = Some(value),
            _ => {}
        }
    }
    Ok((code.ok_or("no code")?, sync.ok_or("no sync")?))
}

/// The body's fields the client reads: the data, or the error message.
struct Body<T> {
    data: Option<T>,
    error: Option<String>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Body<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for BodyVisitor<T> {
            type Value = Body<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an IPROTO body map")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Body<T>, M::Error> {
                let mut body = Body {
                    data: None,
                    error: None,
                };
                while let Some(key) = map.next_key::<u8>()? {
                    match key {
                        KEY_DATA => body.data = Some(map.next_value()?),
                        KEY_ERROR_24 => body.error = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(body)
            }
        }
        deserializer.deserialize_map(BodyVisitor(std::marker::PhantomData))
    }
}

fn decode_data<R: DeserializeOwned>(body: &[u8]) -> Result<R, CallError> {
    let body: Body<R> =
        rmp_serde::from_slice(body).map_err(|e| CallError::Decode(e.to_string()))?;
    body.data
        .ok_or_else(|| CallError::Decode("the answer has no data".into()))
}

fn decode_error(body: &[u8]) -> Option<String> {
    rmp_serde::from_slice::<Body<IgnoredAny>>(body).ok()?.error
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a fake Tarantool treats one connection.
    #[derive(Clone, Copy, Debug)]
    enum Peer {
        /// Answers every call with its sync number as the data.
        Answers,
        /// Reads calls and never answers.
        Silent,
        /// Answers a call with bytes that are no IPROTO packet.
        Garbage,
        /// Sends half an answer, then closes.
        Cut,
        /// Announces a 2 GiB answer, then closes.
        Huge,
    }

    /// A fake Tarantool (guest access, no login) on a free port: the n-th
    /// connection is treated as `peers[n]` (the last one repeats). Returns
    /// its address and how many connections it accepted.
    async fn fake_tarantool(peers: Vec<Peer>) -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let n = usize::try_from(count.fetch_add(1, Ordering::SeqCst)).unwrap();
                let peer = peers[n.min(peers.len() - 1)];
                tokio::spawn(async move {
                    let mut greeting =
                        format!("{:<63}\n", "Tarantool 2.6.0 (Binary) fake").into_bytes();
                    greeting.resize(128, b' ');
                    stream.write_all(&greeting).await.unwrap();
                    loop {
                        let mut prefix = [0u8; 5];
                        if stream.read_exact(&mut prefix).await.is_err() {
                            return;
                        }
                        let len = u32::from_be_bytes(prefix[1..5].try_into().unwrap());
                        let mut packet = vec![0u8; len as usize];
                        stream.read_exact(&mut packet).await.unwrap();
                        let (_, sync) = read_header(&mut &packet[..]).unwrap();
                        let answer = frame(|out| {
                            let _ = rmp::encode::write_map_len(out, 2);
                            let _ = rmp::encode::write_pfix(out, 0x00);
                            let _ = rmp::encode::write_pfix(out, 0);
                            let _ = rmp::encode::write_pfix(out, KEY_SYNC);
                            let _ = rmp::encode::write_uint(out, sync);
                            let _ = rmp::encode::write_map_len(out, 1);
                            let _ = rmp::encode::write_pfix(out, KEY_DATA);
                            let _ = rmp::encode::write_array_len(out, 1);
                            let _ = rmp::encode::write_uint(out, sync);
                            Ok(())
                        })
                        .unwrap();
                        let sent = match peer {
                            Peer::Answers => stream.write_all(&answer).await,
                            Peer::Silent => Ok(()),
                            Peer::Garbage => {
                                stream.write_all(b"<html>502 Bad Gateway</html>").await
                            }
                            Peer::Cut => {
                                let _ = stream.write_all(&answer[..answer.len() / 2]).await;
                                return;
                            }
                            Peer::Huge => {
                                let _ = stream.write_all(&[0xce, 0x7f, 0xff, 0xff, 0xff]).await;
                                return;
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn guest(address: String) -> Config {
        Config {
            address,
            user: "guest".into(),
            password: String::new(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    async fn call(client: &Client, timeout: Duration) -> Result<u64, CallError> {
        client
            .call::<_, (u64,)>("f", &(), timeout)
            .await
            .map(|(sync,)| sync)
    }

    #[tokio::test]
    async fn broken_answers_cost_the_connection_and_the_next_one_serves() {
        let (address, accepted) =
            fake_tarantool(vec![Peer::Garbage, Peer::Cut, Peer::Huge, Peer::Answers]).await;
        let client = Client::new(guest(address));
        let second = Duration::from_secs(5);
        for (peer, expected) in [
            ("garbage", "malformed packet length"),
            ("a cut answer", "closed inside an answer"),
            ("a 2 GiB length", "closed inside an answer"),
        ] {
            match call(&client, second).await {
                Err(CallError::NoAnswer(why)) => assert!(why.contains(expected), "{peer}: {why}"),
                other => panic!("{peer}: {other:?}"),
            }
        }
        assert!(call(&client, second).await.is_ok());
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_that_goes_silent_is_replaced_after_one_timeout() {
        let (address, accepted) = fake_tarantool(vec![Peer::Silent, Peer::Answers]).await;
        let client = Client::new(guest(address));
        let short = Duration::from_millis(200);
        let mut status = client.status_changes();
        assert!(matches!(
            call(&client, short).await,
            Err(CallError::NoAnswer(_))
        ));
        // The silent connection is dropped (calls queued meanwhile fail as
        // not sent), and a fresh one is made, which answers.
        let down = status.wait_for(|s| matches!(s, Status::Down(_))).await;
        assert!(
            format!("{:?}", *down.unwrap()).contains("taken for dead"),
            "dropped for its silence"
        );
        status.wait_for(|s| *s == Status::Connected).await.unwrap();
        let answered = call(&client, Duration::from_secs(5)).await;
        assert!(answered.is_ok(), "{answered:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_connection_task_is_logged_and_restarted() {
        let (address, _) = fake_tarantool(vec![Peer::Answers]).await;
        let mut started = 0;
        let client = Client::start(guest(address), move |shared| {
            started += 1;
            let first = started == 1;
            async move {
                if first {
                    // Hold the queue, like the real task, then fail.
                    let _queue = shared.queue.lock().await;
                    panic!("injected fault");
                }
                run(shared).await;
            }
        });
        let mut status = client.status_changes();
        let down = status
            .wait_for(|s| matches!(s, Status::Down(e) if e.to_string().contains("injected fault")))
            .await
            .map(|s| s.clone());
        assert!(down.is_ok(), "the panic was reported: {down:?}");
        let answered = call(&client, Duration::from_secs(5)).await;
        assert!(answered.is_ok(), "{answered:?}");
    }

    #[test]
    fn the_scramble_matches_tarantools_chap_sha1() {
        // Computed independently with Python's hashlib for salt 0..20:
        // s1 = sha1(pw); s3 = sha1(salt + sha1(s1)); s1 XOR s3.
        let salt: Vec<u8> = (0..20).collect();
        assert_eq!(
            hex::encode(scramble(&salt, "test-password")),
            "82a4e141da568d4ea4acc8872db0e20b29c0f4cf"
        );
    }

    #[test]
    fn a_call_is_one_length_prefixed_packet() {
        let bytes = encode_call(7, "f", &(1u8, "x")).unwrap();
        assert_eq!(bytes[0], 0xce);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 5);
        let mut cursor = &bytes[5..];
        let n = rmp::decode::read_map_len(&mut cursor).unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn bodies_give_their_data_or_their_error() {
        let mut ok = Vec::new();
        rmp::encode::write_map_len(&mut ok, 1).unwrap();
        rmp::encode::write_pfix(&mut ok, KEY_DATA).unwrap();
        rmp::encode::write_array_len(&mut ok, 2).unwrap();
        rmp::encode::write_uint(&mut ok, 5).unwrap();
        rmp::encode::write_nil(&mut ok).unwrap();
        let (five, none): (u64, Option<u64>) = decode_data(&ok).unwrap();
        assert_eq!((five, none), (5, None));

        let mut err = Vec::new();
        rmp::encode::write_map_len(&mut err, 1).unwrap();
        rmp::encode::write_pfix(&mut err, KEY_ERROR_24).unwrap();
        rmp::encode::write_str(&mut err, "Procedure 'x' is not defined").unwrap();
        assert_eq!(
            decode_error(&err).as_deref(),
            Some("Procedure 'x' is not defined")
        );
        assert!(matches!(
            decode_data::<(u64,)>(&err),
            Err(CallError::Decode(_))
        ));
    }
}
