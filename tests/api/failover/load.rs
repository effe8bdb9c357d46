//! The load the faults run under, its log, and what the log must show.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::generate_import;
use crate::support::poll;

/// One request of the load, as the client saw it.
#[derive(Clone, Debug)]
pub(super) struct Request {
    pub(super) instance: usize,
    /// Since the load started.
    pub(super) sent: Duration,
    pub(super) done: Duration,
    /// The HTTP status, or 0 when no answer came within the client's timeout.
    pub(super) status: u16,
    pub(super) what: What,
}

#[derive(Clone, Debug)]
pub(super) enum What {
    Import {
        citizens: Vec<Value>,
        id: Option<i64>,
    },
    /// `name` of `citizen` of seeded import `import` set to `owner`'s `seq`.
    Patch {
        import: i64,
        citizen: u64,
        owner: usize,
        seq: u64,
    },
    /// The names seen (owner, seq) by citizen id; empty unless 200.
    Read {
        import: i64,
        seen: BTreeMap<u64, (usize, u64)>,
    },
    /// A read of an acknowledged import: the hash of its citizens if 200.
    ReadImport { import: i64, body: Option<u64> },
}

/// A hash of a JSON value (serde_json writes object keys sorted).
pub(super) fn digest(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

/// Seeded imports, their size (citizen ids 0..SEEDED_CITIZENS), and how
/// many writers share their citizens.
pub(super) const SEEDED: i64 = 3;
pub(super) const SEEDED_CITIZENS: u64 = 24;
pub(super) const PATCHERS: usize = 4;

pub(super) fn name_of(owner: usize, seq: u64) -> String {
    format!("писатель {owner} правка {seq}")
}

pub(super) fn parse_name(name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix("писатель ")?;
    let (owner, seq) = rest.split_once(" правка ")?;
    Some((owner.parse().ok()?, seq.parse().ok()?))
}

/// The load: per instance one importer, two patchers, a reader of the
/// PATCHed imports and a reader of acknowledged imports, until `stop`.
pub(super) fn start_load(
    bases: &[String],
    seeded: &[i64],
    epoch: Instant,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<Vec<Request>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // The imports acknowledged so far, for the import readers.
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    // Longer than the service's own bound on a request (10 s): no answer
    // by then is a hang.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    let since = move || epoch.elapsed();
    for (instance, base) in bases.iter().enumerate() {
        // The importer: small imports with relatives, one after another.
        let (client, base, stop, log) = (client.clone(), base.clone(), stop.clone(), log.clone());
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let citizens = generate_import(20, 10, (instance as u64) << 32 | n);
                let sent = since();
                let answer = client
                    .post(format!("{base}/imports"))
                    .body(json!({ "citizens": citizens }).to_string())
                    .send()
                    .await;
                let (status, body) = answer_of(answer).await;
                let id = body["data"]["import_id"].as_i64();
                if let (201, Some(id)) = (status, id) {
                    acknowledged.lock().unwrap().push(id);
                }
                log.lock().unwrap().push(Request {
                    instance,
                    sent,
                    done: since(),
                    status,
                    what: What::Import { citizens, id },
                });
            }
        }));
    }
    for owner in 0..PATCHERS {
        let instance = owner % bases.len();
        let (client, base, stop, log) = (
            client.clone(),
            bases[instance].clone(),
            stop.clone(),
            log.clone(),
        );
        let seeded = seeded.to_vec();
        tasks.push(tokio::spawn(async move {
            // This writer's citizens: the ids ≡ owner (mod PATCHERS).
            let mine: Vec<u64> = (0..SEEDED_CITIZENS)
                .filter(|c| c % PATCHERS as u64 == owner as u64)
                .collect();
            let mut step = 0usize;
            while !stop.load(Ordering::Relaxed) {
                step += 1;
                let seq = step as u64;
                let import = seeded[step % seeded.len()];
                let citizen = mine[(step / seeded.len()) % mine.len()];
                // Relatives among everyone's citizens: PATCHes through both
                // instances overlap on the same rows.
                let relatives: Vec<u64> = (0..SEEDED_CITIZENS)
                    .filter(|r| *r != citizen && (r * 7 + seq + owner as u64).is_multiple_of(9))
                    .collect();
                let sent = since();
                let answer = client
                    .patch(format!("{base}/imports/{import}/citizens/{citizen}"))
                    .body(
                        json!({ "name": name_of(owner, seq), "relatives": relatives }).to_string(),
                    )
                    .send()
                    .await;
                let (status, _) = answer_of(answer).await;
                log.lock().unwrap().push(Request {
                    instance,
                    sent,
                    done: since(),
                    status,
                    what: What::Patch {
                        import,
                        citizen,
                        owner,
                        seq,
                    },
                });
            }
        }));
    }
    for (instance, base) in bases.iter().enumerate() {
        let (client, base, stop, log) = (client.clone(), base.clone(), stop.clone(), log.clone());
        let seeded = seeded.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let import = seeded[n % seeded.len()];
                let sent = since();
                let answer = client
                    .get(format!("{base}/imports/{import}/citizens"))
                    .send()
                    .await;
                let (status, body) = answer_of(answer).await;
                let seen = body["data"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|c| {
                                let name = parse_name(c["name"].as_str()?)?;
                                Some((c["citizen_id"].as_u64()?, name))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                log.lock().unwrap().push(Request {
                    instance,
                    sent,
                    done: since(),
                    status,
                    what: What::Read { import, seen },
                });
            }
        }));
    }
    for (instance, base) in bases.iter().enumerate() {
        let (client, base, stop, log) = (client.clone(), base.clone(), stop.clone(), log.clone());
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let mut n: usize = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // The newest imports most often: those a failover can lose.
                let import = {
                    let list = acknowledged.lock().unwrap();
                    let back = if n.is_multiple_of(2) { n % 8 } else { n * 7919 };
                    list.len()
                        .checked_sub(1)
                        .map(|last| list[last - back % list.len()])
                };
                let Some(import) = import else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let sent = since();
                let answer = client
                    .get(format!("{base}/imports/{import}/citizens"))
                    .send()
                    .await;
                let (status, body) = answer_of(answer).await;
                log.lock().unwrap().push(Request {
                    instance,
                    sent,
                    done: since(),
                    status,
                    what: What::ReadImport {
                        import,
                        body: (status == 200).then(|| digest(&body["data"])),
                    },
                });
            }
        }));
    }
    tasks
}

/// The status and JSON body of an answer; status 0 when none came.
pub(super) async fn answer_of(answer: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = match response.bytes().await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            (status, body)
        }
        Err(e) => {
            assert!(
                e.is_timeout(),
                "the app itself is unreachable (it must outlive the database): {e}"
            );
            (0, Value::Null)
        }
    }
}

impl Request {
    /// A write through `instance`, sent at or after `since`, acknowledged (2xx).
    pub(super) fn acknowledged_write(&self, instance: usize, since: Duration) -> bool {
        self.instance == instance
            && self.sent >= since
            && matches!(self.status, 200 | 201)
            && matches!(self.what, What::Import { .. } | What::Patch { .. })
    }
}

/// Waits until every instance has a write acknowledged that was sent after `since`.
pub(super) async fn writes_resume(
    log: &Arc<Mutex<Vec<Request>>>,
    instances: usize,
    since: Duration,
) {
    poll(Duration::from_secs(60), || async {
        let log = log.lock().unwrap();
        let ok = (0..instances).all(|i| log.iter().any(|s| s.acknowledged_write(i, since)));
        if ok { Ok(()) } else { Err(()) }
    })
    .await
    .expect("writes resume through every instance within 60 s");
}

/// Per instance, the longest time without an acknowledged write from `from`
/// until `to`: from the fault to the first write acknowledged after it, or a
/// longer silence later in the window.
pub(super) fn gaps(
    log: &[Request],
    instances: usize,
    from: Duration,
    to: Duration,
) -> Vec<Duration> {
    (0..instances)
        .map(|i| {
            let mut done: Vec<Duration> = log
                .iter()
                .filter(|s| s.acknowledged_write(i, Duration::ZERO))
                .map(|s| s.done)
                .filter(|d| (from..to).contains(d))
                .collect();
            done.sort_unstable();
            let mut last = from;
            let mut gap = Duration::ZERO;
            for d in done {
                gap = gap.max(d.saturating_sub(last));
                last = d;
            }
            gap.max(to.saturating_sub(last))
        })
        .collect()
}
