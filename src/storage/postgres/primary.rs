//! Finding the PostgreSQL primary among the hosts of a URL, and proving that
//! a read came from it.
//!
//! libpq's failover ("name every host, `target_session_attrs=read-write`")
//! is enough when a server dies, not when it stalls (a VM pause, an I/O
//! hang, `SIGSTOP`): the stalled host's kernel still accepts TCP, so a new
//! connection to it, and every query on a pooled one, waits forever. And a
//! stalled primary that resumes after its replacement was promoted, or one
//! whose Patroni stalled so that nobody demoted it, still answers reads
//! from a state the new primary has moved past. The rules here:
//!
//! - **Each host gets a bounded attempt** ([`ATTEMPT`]: the TCP connect, the
//!   startup, authentication and the read-write check together); the host
//!   that last worked is tried first and hosts that stalled last, so a
//!   frozen host costs a new connection at most one attempt, wherever it is
//!   in the URL.
//! - **Connections know their host.** A host is *forsaken* when a fence on
//!   it fails or it answers as a standby: its pooled connections are never
//!   handed out again (each carries its host's generation; recycling
//!   refuses an old one), and it goes to the back of the order until a
//!   connection to it works again.
//! - **Reads are fenced** when the URL names more than one host: a read's
//!   answer is released only once a commit *sent after the read finished*
//!   has succeeded on the same host. Under Patroni's
//!   `synchronous_mode_strict`, a primary commits only while its
//!   synchronous standby still follows it, and only that standby can be
//!   promoted; so a superseded primary never passes the fence, and no read
//!   shows a state older than a write the new primary acknowledged before
//!   the read was sent. Writes need no fence: their own commit is one.
//!   Concurrent reads of a host share one fence (a commit of
//!   `SELECT txid_current()` on a connection of its own), so a read costs
//!   one commit's latency more, not one commit each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio::sync::watch;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// How long one host may take to give a working connection, or to commit
/// a fence: long enough for a busy server, short enough that a stalled one
/// is passed over well within a request's budget.
pub const ATTEMPT: Duration = Duration::from_secs(2);

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answered with an error, or the connection failed.
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// A host did not answer within [`ATTEMPT`].
    #[error("{0}")]
    NoAnswer(String),
}

/// A pooled connection and the host it is connected to.
pub struct HostClient {
    client: ClientWrapper,
    /// Index of the host in the URL.
    pub host: usize,
    /// The host's generation when the connection was made.
    generation: u64,
}

impl std::ops::Deref for HostClient {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.client
    }
}

impl std::ops::DerefMut for HostClient {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }
}

/// What is known of the hosts.
struct State {
    /// The host of the last connection made.
    preferred: usize,
    /// Per host: it stalled or was forsaken since a connection last worked.
    stalled: Vec<bool>,
    /// Per host: bumped when it is forsaken.
    generation: Vec<u64>,
}

/// The fence rounds of one host (see the module docs).
struct Fence {
    rounds: Mutex<Rounds>,
    /// The last round finished, and its outcome.
    done: watch::Sender<(u64, Result<(), String>)>,
    /// The fence's own connection, kept between rounds.
    client: tokio::sync::Mutex<Option<Client>>,
}

#[derive(Default)]
struct Rounds {
    started: u64,
    running: bool,
    /// A round a reader waits for that has not started yet.
    wanted: u64,
}

/// The URL's hosts: connecting, forsaking, fencing.
pub struct Hosts {
    /// One configuration per host, each naming only that host.
    configs: Vec<Config>,
    /// `HOST:PORT` of each, for messages.
    names: Vec<String>,
    state: Mutex<State>,
    fences: Vec<Fence>,
}

impl Hosts {
    /// The hosts of `config`, each with every other setting of it.
    pub fn new(config: &Config) -> Arc<Self> {
        let hosts = config.get_hosts();
        let ports = config.get_ports();
        let mut configs = Vec::with_capacity(hosts.len());
        let mut names = Vec::with_capacity(hosts.len());
        for (i, host) in hosts.iter().enumerate() {
            // libpq: one port for all hosts, or one per host.
            let port = match ports {
                [] => 5432,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(5432),
            };
            let mut one = config.clone_without_hosts();
            match host {
                Host::Tcp(name) => {
                    one.host(name);
                    names.push(format!("{name}:{port}"));
                }
                Host::Unix(path) => {
                    one.host_path(path);
                    names.push(format!("{}:{port}", path.display()));
                }
            }
            if let Some(addr) = config.get_hostaddrs().get(i) {
                one.hostaddr(*addr);
            }
            one.port(port);
            configs.push(one);
        }
        let n = configs.len();
        Arc::new(Self {
            configs,
            names,
            state: Mutex::new(State {
                preferred: 0,
                stalled: vec![false; n],
                generation: vec![0; n],
            }),
            fences: (0..n)
                .map(|_| Fence {
                    rounds: Mutex::new(Rounds::default()),
                    done: watch::Sender::new((0, Ok(()))),
                    client: tokio::sync::Mutex::new(None),
                })
                .collect(),
        })
    }

    /// Whether reads are fenced: only when there is another host that
    /// could have been promoted.
    pub fn fencing(&self) -> bool {
        self.configs.len() > 1
    }

    /// `HOST:PORT` of host `i`.
    pub fn name(&self, host: usize) -> &str {
        &self.names[host]
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain flags behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The order to try the hosts in: the last that worked, then the URL's
    /// order, stalled hosts last.
    fn order(&self) -> Vec<usize> {
        let state = self.state();
        let n = self.configs.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (state.stalled[i], i != state.preferred, i));
        order
    }

    /// A connection to the first host, in [`Hosts::order`], that gives one
    /// within [`ATTEMPT`] (and is read-write, if the URL asks for it).
    pub async fn connect(&self) -> Result<HostClient, ConnectError> {
        let mut last = None;
        for host in self.order() {
            let generation = self.state().generation[host];
            match tokio::time::timeout(ATTEMPT, self.client(host)).await {
                Ok(Ok(client)) => {
                    let mut state = self.state();
                    state.preferred = host;
                    state.stalled[host] = false;
                    return Ok(HostClient {
                        client: ClientWrapper::new(client.0, client.1),
                        host,
                        generation,
                    });
                }
                Ok(Err(e)) => last = Some(ConnectError::Pg(e)),
                Err(_) => {
                    self.state().stalled[host] = true;
                    last = Some(ConnectError::NoAnswer(format!(
                        "{} did not answer within {ATTEMPT:?}",
                        self.names[host]
                    )));
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::NoAnswer("no host in the URL".into())))
    }

    /// A new connection to host `i`, its I/O driven by a task of its own.
    async fn client(
        &self,
        host: usize,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.configs[host].connect(NoTls).await?;
        // The connection's errors reach the client's calls; nothing to log here.
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((client, task))
    }

    /// Stops using host `i` until a new connection to it works: its pooled
    /// connections are not handed out again, and it is tried last.
    pub fn forsake(&self, host: usize) {
        let mut state = self.state();
        if !state.stalled[host] {
            tracing::warn!(
                host = %self.names[host],
                "postgresql: leaving this host (it stalled, is no longer the primary, or lost its synchronous standby)"
            );
        }
        state.stalled[host] = true;
        state.generation[host] += 1;
    }

    /// Whether a pooled connection may still be used.
    fn current(&self, client: &HostClient) -> bool {
        self.state().generation[client.host] == client.generation
    }

    /// Resolves once a fence round that started after this call has
    /// committed on host `i`: every read that finished before the call is
    /// proven not to predate a write of a newer primary. A failed round
    /// forsakes the host.
    pub async fn confirm(self: &Arc<Self>, host: usize) -> Result<(), String> {
        let fence = &self.fences[host];
        let mut done = fence.done.subscribe();
        let target = {
            let mut rounds = fence
                .rounds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if rounds.running {
                // The running round may have been sent before our read ended.
                rounds.wanted = rounds.started + 1;
                rounds.started + 1
            } else {
                rounds.started += 1;
                rounds.running = true;
                tokio::spawn(Arc::clone(self).round(host, rounds.started));
                rounds.started
            }
        };
        loop {
            {
                let seen = done.borrow_and_update();
                // A later round started later still: it proves as much.
                if seen.0 >= target {
                    return seen.1.clone();
                }
            }
            if done.changed().await.is_err() {
                return Err("postgresql: the fence was dropped".into());
            }
        }
    }

    /// Fence rounds on host `i` from `round` on, one after another, for as
    /// long as a reader waits for the next.
    async fn round(self: Arc<Self>, host: usize, mut round: u64) {
        loop {
            let outcome = match tokio::time::timeout(ATTEMPT, self.commit(host)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!(
                    "{} could not confirm it is still the primary: {e}",
                    self.names[host]
                )),
                Err(_) => Err(format!(
                    "{} did not confirm it is still the primary within {ATTEMPT:?}",
                    self.names[host]
                )),
            };
            if outcome.is_err() {
                // Its connection may be stuck: a new one next round.
                if let Ok(mut client) = self.fences[host].client.try_lock() {
                    *client = None;
                }
                self.forsake(host);
            }
            let fence = &self.fences[host];
            let mut rounds = fence
                .rounds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            drop(fence.done.send_replace((round, outcome)));
            if rounds.wanted > round {
                rounds.started += 1;
                round = rounds.started;
            } else {
                rounds.running = false;
                return;
            }
        }
    }

    /// One commit on host `i`: it returns only if the host is a primary
    /// whose synchronous standby (if it has one) acknowledged it.
    async fn commit(&self, host: usize) -> Result<(), tokio_postgres::Error> {
        let mut slot = self.fences[host].client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.client(host).await?.0);
        }
        let client = slot.as_ref().expect("set above");
        // An implicit transaction that takes a transaction id must write
        // and flush a commit record (and wait for the synchronous standby).
        if let Err(e) = client.simple_query("SELECT txid_current()").await {
            *slot = None;
            return Err(e);
        }
        Ok(())
    }
}

/// The pool's manager: connections from [`Hosts::connect`], refused on
/// recycling when closed or when their host was forsaken.
pub struct HostManager(pub Arc<Hosts>);

impl managed::Manager for HostManager {
    type Type = HostClient;
    type Error = ConnectError;

    async fn create(&self) -> Result<HostClient, ConnectError> {
        // Boxed: a connection attempt's future is large, and every pool
        // checkout would otherwise carry it.
        Box::pin(self.0.connect()).await
    }

    async fn recycle(&self, client: &mut HostClient, _: &Metrics) -> RecycleResult<ConnectError> {
        if client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if !self.0.current(client) {
            return Err(RecycleError::message("its host was left"));
        }
        Ok(())
    }
}

/// `Config::clone` less the hosts, ports and host addresses.
trait CloneWithoutHosts {
    fn clone_without_hosts(&self) -> Config;
}

impl CloneWithoutHosts for Config {
    fn clone_without_hosts(&self) -> Config {
        let mut one = Config::new();
        if let Some(user) = self.get_user() {
            one.user(user);
        }
        if let Some(password) = self.get_password() {
            one.password(password);
        }
        if let Some(dbname) = self.get_dbname() {
            one.dbname(dbname);
        }
        if let Some(options) = self.get_options() {
            one.options(options);
        }
        if let Some(name) = self.get_application_name() {
            one.application_name(name);
        }
        if let Some(timeout) = self.get_connect_timeout() {
            one.connect_timeout(*timeout);
        }
        if let Some(timeout) = self.get_tcp_user_timeout() {
            one.tcp_user_timeout(*timeout);
        }
        one.keepalives(self.get_keepalives());
        one.keepalives_idle(self.get_keepalives_idle());
        if let Some(interval) = self.get_keepalives_interval() {
            one.keepalives_interval(interval);
        }
        if let Some(retries) = self.get_keepalives_retries() {
            one.keepalives_retries(retries);
        }
        one.target_session_attrs(self.get_target_session_attrs());
        one.channel_binding(self.get_channel_binding());
        one.ssl_mode(self.get_ssl_mode());
        one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(url: &str) -> Arc<Hosts> {
        Hosts::new(&url.parse::<Config>().unwrap())
    }

    #[test]
    fn each_host_gets_a_configuration_of_its_own_with_every_other_setting() {
        let hosts = hosts(
            "postgres://gifts:pw@db1:5433,db2,db3:6000/gifts?target_session_attrs=read-write&application_name=x",
        );
        assert_eq!(hosts.names, ["db1:5433", "db2:5432", "db3:6000"]);
        for config in &hosts.configs {
            assert_eq!(config.get_hosts().len(), 1);
            assert_eq!(config.get_ports().len(), 1);
            assert_eq!(config.get_user(), Some("gifts"));
            assert_eq!(config.get_password(), Some(&b"pw"[..]));
            assert_eq!(config.get_dbname(), Some("gifts"));
            assert_eq!(config.get_application_name(), Some("x"));
            assert_eq!(
                config.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            );
        }
        assert!(hosts.fencing());
        // A port per host in a URL; one port for every host in key=value form.
        let hosts = self::hosts("postgres://u@a,b:7000/d");
        assert_eq!(hosts.names, ["a:5432", "b:7000"]);
        let hosts = self::hosts("host=a,b port=7000 user=u dbname=d");
        assert_eq!(hosts.names, ["a:7000", "b:7000"]);
        assert!(!self::hosts("postgres://u@a/d").fencing());
    }

    #[test]
    fn the_last_host_that_worked_comes_first_and_stalled_ones_last() {
        let hosts = hosts("postgres://u@a,b,c/d");
        assert_eq!(hosts.order(), [0, 1, 2]);
        hosts.state().preferred = 2;
        assert_eq!(hosts.order(), [2, 0, 1]);
        hosts.forsake(2);
        assert_eq!(hosts.order(), [0, 1, 2]);
        // Among stalled hosts, the one that worked last still comes first.
        hosts.forsake(0);
        assert_eq!(hosts.order(), [1, 2, 0]);
    }

    #[test]
    fn a_forsaken_host_s_connections_are_no_longer_current() {
        let hosts = hosts("postgres://u@a,b/d");
        let generation = |h: usize| hosts.state().generation[h];
        let before = (generation(0), generation(1));
        hosts.forsake(1);
        assert_eq!(
            generation(0),
            before.0,
            "the other host keeps its connections"
        );
        assert_eq!(generation(1), before.1 + 1);
    }
}
