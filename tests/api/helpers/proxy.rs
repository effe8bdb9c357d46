//! One fault-injecting TCP proxy in front of a store's server, for every
//! backend's fault tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the bytes it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Passes them on.
    None = 0,
    /// Replaces the server's answers with bytes that are no packet of its protocol.
    Garbage = 1,
    /// Passes half of the server's next read on, then closes the connection.
    Cut = 2,
    /// Passes nothing more either way, for good, and keeps the connection
    /// open: a frozen server, whose kernel still accepts connections.
    Stall = 3,
    /// Passes requests on; once one holding the proxy's trigger passed,
    /// drops every later answer of that connection (a request that reached
    /// the server and whose answer was lost: e.g. a `COMMIT`).
    Swallow = 4,
}

/// A TCP proxy that passes connections to `upstream` and damages them on
/// demand ([`Fault`]), counting the connections it accepted.
///
/// It listens on 127.0.0.2, not 127.0.0.1: other tests free ports on
/// 127.0.0.1 (a server they stop) and keep connecting to them, and the
/// kernel may hand such a port to this listener; their connections would
/// then be counted, or damaged, here.
pub struct FaultProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    fault: Arc<AtomicU8>,
    accepted: Arc<AtomicUsize>,
}

/// What one connection's two directions share.
struct Link {
    fault: Arc<AtomicU8>,
    trigger: &'static [u8],
    /// Set once a request holding the trigger passed under [`Fault::Swallow`].
    muted: AtomicBool,
}

impl FaultProxy {
    /// Starts the proxy with `fault` in force.
    pub async fn start(upstream: String, fault: Fault) -> Self {
        Self::with_trigger(upstream, fault, b"").await
    }

    /// Starts the proxy with `fault` in force and `trigger` for [`Fault::Swallow`].
    pub async fn with_trigger(upstream: String, fault: Fault, trigger: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let fault = Arc::new(AtomicU8::new(fault as u8));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (Arc::clone(&fault), Arc::clone(&accepted));
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue; // the client sees its connection closed
                };
                let link = Arc::new(Link {
                    fault: Arc::clone(&shared),
                    trigger,
                    muted: AtomicBool::new(false),
                });
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pass(client_read, server_write, Arc::clone(&link), false));
                tokio::spawn(pass(server_read, client_write, link, true));
            }
        });
        Self {
            addr,
            fault,
            accepted,
        }
    }

    /// Puts `fault` in force, for the bytes that come from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// How many connections it accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Passes what `from` reads on to `to` under the fault in force; `answers`:
/// this is the server's direction, which garbage and cuts apply to.
async fn pass(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>, answers: bool) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let fault = link.fault.load(Ordering::SeqCst);
        if fault == Fault::Swallow as u8
            && !answers
            && !link.trigger.is_empty()
            && chunk[..n]
                .windows(link.trigger.len())
                .any(|w| w == link.trigger)
        {
            link.muted.store(true, Ordering::SeqCst);
        }
        if answers && link.muted.load(Ordering::SeqCst) {
            continue; // lost on the way back
        }
        let written = match fault {
            f if f == Fault::Stall as u8 => {
                // Frozen: hold the connection open, pass nothing, ever.
                std::future::pending::<()>().await;
                return;
            }
            f if answers && f == Fault::Garbage as u8 => to.write_all(&vec![b'!'; n]).await,
            f if answers && f == Fault::Cut as u8 => {
                let _ = to.write_all(&chunk[..n / 2]).await;
                return;
            }
            _ => to.write_all(&chunk[..n]).await,
        };
        if written.is_err() {
            return;
        }
    }
}
