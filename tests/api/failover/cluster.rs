//! The cluster under test: three Patroni nodes and three etcd members on
//! loopback, driven by `deploy/ha/cluster.sh`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::free_port;
use crate::support::poll;

/// The cluster of `deploy/ha/cluster.sh`, in a temporary directory; taken
/// down (everything it started stopped) when dropped.
pub(super) struct Cluster {
    pub(super) dir: TempDir,
    pub(super) base: u16,
}

pub(super) fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/ha/cluster.sh")
}

/// A base port with the twelve ports the cluster uses free (base..+5 for
/// etcd, +10..+12, +20..+22).
pub(super) fn free_base() -> u16 {
    for _ in 0..100 {
        let base = 20_000 + (free_port() % 400) * 100;
        let free = [0, 1, 2, 3, 4, 5, 10, 11, 12, 20, 21, 22]
            .iter()
            .all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of ports for the cluster");
}

impl Cluster {
    pub(super) fn up() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = free_base();
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(dir.path())
            .arg(base.to_string())
            .output()
            .expect("run cluster.sh");
        let cluster = Cluster { dir, base };
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        cluster
    }

    /// `cluster.sh COMMAND DIR ARGS…`, which must succeed; its standard output.
    pub(super) fn run(&self, command: &str, args: &[&str]) -> String {
        let out = tokio::task::block_in_place(|| {
            Command::new("bash")
                .arg(script())
                .arg(command)
                .arg(self.dir.path())
                .args(args)
                .output()
                .expect("run cluster.sh")
        });
        assert!(
            out.status.success(),
            "cluster.sh {command} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `cluster.sh freeze-… DIR ARGS…` started in the background; returns
    /// once the processes are stopped (the script says so), while it waits
    /// out its time before resuming them.
    pub(super) fn freeze(&self, command: &str, args: &[&str]) -> Child {
        let mut child = Command::new("bash")
            .arg(script())
            .arg(command)
            .arg(self.dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run cluster.sh");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::task::block_in_place(|| BufReader::new(stdout).read_line(&mut line))
            .expect("read cluster.sh's output");
        assert!(
            line.starts_with("stopped"),
            "cluster.sh {command} {args:?} stopped nothing: {line:?}\n{}",
            self.logs()
        );
        child
    }

    /// Waits for a command of [`Cluster::spawn`], which must succeed.
    pub(super) fn finish(&self, mut child: Child, what: &str) {
        let status = tokio::task::block_in_place(|| child.wait()).expect("wait for cluster.sh");
        assert!(
            status.success(),
            "cluster.sh {what} failed:\n{}",
            self.logs()
        );
    }

    /// The tails of the nodes' logs, for a failure's message.
    pub(super) fn logs(&self) -> String {
        (1..=3)
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("node{n}/patroni.log")))
                        .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node{n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The leader as the first node's REST API that answers sees it.
    pub(super) async fn leader(&self, client: &reqwest::Client) -> Option<String> {
        for n in 0..3 {
            let url = format!("http://127.0.0.1:{}/cluster", self.base + 20 + n);
            let Ok(response) = client.get(url).send().await else {
                continue;
            };
            let Ok(bytes) = response.bytes().await else {
                continue;
            };
            let Ok(cluster) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            return cluster["members"]
                .as_array()?
                .iter()
                .find(|m| m["role"] == "leader" && m["state"] == "running")
                .and_then(|m| m["name"].as_str())
                .map(str::to_owned);
        }
        None
    }

    /// Waits until a running leader other than `old` holds the lock.
    pub(super) async fn new_leader(&self, client: &reqwest::Client, old: &str) -> String {
        poll(Duration::from_secs(60), || async {
            match self.leader(client).await {
                Some(leader) if leader != old => Ok(leader),
                other => Err(other),
            }
        })
        .await
        .unwrap_or_else(|last| panic!("no new leader (last seen {last:?}):\n{}", self.logs()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(self.dir.path())
            .output();
        // The last run's logs stay, for a look at what each node did.
        let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("failover-logs");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::create_dir_all(&keep);
        for name in ["node1", "node2", "node3"] {
            let log = self.dir.path().join(name).join("patroni.log");
            let _ = std::fs::copy(log, keep.join(format!("{name}.log")));
        }
    }
}
