//! High availability: two app instances over a three-node PostgreSQL cluster
//! managed by Patroni (`deploy/ha/cluster.sh`), under a steady stream of
//! imports, overlapping PATCHes, reads of the PATCHed imports and reads of
//! acknowledged imports through both. One fault after another:
//!
//! 1. the primary's PostgreSQL stalls (every process `SIGSTOP`ped) for
//!    longer than the leader key's ttl: a standby is promoted while it is
//!    frozen, then it resumes — the case that used to lose acknowledged
//!    writes. Instance 0's URL names the frozen host first, instance 1's last;
//! 2. the new primary's Patroni stalls: nobody demotes its PostgreSQL,
//!    which goes on answering (no watchdog here);
//! 3. the primary's PostgreSQL crashes (`kill -9`);
//! 4. the primary's node is lost (Patroni and PostgreSQL killed), then
//!    started again and rejoins;
//! 5. every etcd member stalls for 15 s;
//! 6. a planned switchover.
//!
//! Afterwards every acknowledged write is there, import ids are unique and
//! increasing (none acknowledged twice), relatives are symmetric, no read
//! went back in time, no acknowledged import answered 404 or showed another
//! import's data, and clients got only 503 or 504 meanwhile.

mod cluster;
mod load;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    Binary, assert_relatives_symmetric, expected_listing, generate_import, ha_available,
};

use cluster::Cluster;
use load::{
    Request, SEEDED, SEEDED_CITIZENS, What, digest, gaps, parse_name, start_load, writes_resume,
};

/// How long the stalls last: past the leader key's ttl (20 s, the least
/// Patroni 3 and later accept), so that a standby is promoted while the
/// stalled node is frozen and the stalled node resumes after.
const STALL_SECS: &str = "30";

/// One fault of the sequence, for the report.
struct Fault {
    what: &'static str,
    at: Duration,
    from: String,
    to: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_loses_no_acknowledged_write_and_resumes() {
    if !ha_available("failover_under_load_loses_no_acknowledged_write_and_resumes") {
        return;
    }
    let cluster = Cluster::up();
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let first = cluster.leader(&admin).await.expect("a leader");
    // Instance 0 names the first leader first, instance 1 names it last.
    let mut order: Vec<String> = (1..=3).map(|n| format!("node{n}")).collect();
    order.retain(|n| *n != first);
    let orders = [
        [first.clone(), order[0].clone(), order[1].clone()],
        [order[1].clone(), order[0].clone(), first.clone()],
    ];
    let mut apps: Vec<Binary> = orders
        .iter()
        .map(|nodes| {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let url = cluster.run("url", &nodes);
            Binary::start(&["--storage", &url], &[], None)
        })
        .collect();
    for app in &mut apps {
        app.wait_healthy().await;
    }
    let bases: Vec<String> = apps.iter().map(|a| a.base.clone()).collect();

    // Imports whose citizens the patchers rename, all without relatives to start.
    let mut seeded = Vec::new();
    for _ in 0..SEEDED {
        let citizens: Vec<Value> = generate_import(SEEDED_CITIZENS, 0, 1);
        let response = admin
            .post(format!("{}/imports", bases[0]))
            .body(json!({ "citizens": citizens }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        seeded.push(body["data"]["import_id"].as_i64().unwrap());
    }

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let load = start_load(&bases, &seeded, epoch, &stop, &log);
    writes_resume(&log, bases.len(), Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // steady load before the faults
    let mut faults: Vec<Fault> = Vec::new();

    // 1. The primary's PostgreSQL stalls past the ttl: a standby takes over
    //    while it is frozen; when it resumes, its Patroni finds the leader
    //    key taken and demotes it; it rejoins (rewound).
    let freeze = cluster.freeze("freeze-node", &[&first, STALL_SECS, "postgres"]);
    let at = epoch.elapsed();
    let second = cluster.new_leader(&admin, &first).await;
    writes_resume(&log, bases.len(), at).await;
    cluster.finish(freeze, "freeze-node postgres");
    cluster.run("wait-whole", &[]);
    faults.push(Fault {
        what: "stall of the primary's PostgreSQL (frozen host first in instance 0's URL, last in instance 1's)",
        at,
        from: first.clone(),
        to: second.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. The primary's Patroni stalls: its PostgreSQL runs on, unfenced (no
    //    watchdog); the synchronous standby is promoted, and the old
    //    primary can commit nothing more (synchronous_mode_strict): reads
    //    there fail their fence, and the apps move on.
    let freeze = cluster.freeze("freeze-node", &[&second, STALL_SECS, "patroni"]);
    let at = epoch.elapsed();
    let third = cluster.new_leader(&admin, &second).await;
    writes_resume(&log, bases.len(), at).await;
    cluster.finish(freeze, "freeze-node patroni");
    cluster.run("wait-whole", &[]);
    faults.push(Fault {
        what: "stall of the primary's Patroni",
        at,
        from: second.clone(),
        to: third.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The primary's PostgreSQL crashes; Patroni fails over at once
    //    (primary_start_timeout: 0) and the old primary rejoins by itself.
    cluster.run("kill-postgres", &[&third]);
    let at = epoch.elapsed(); // killed by now: SIGKILL is not caught
    let fourth = cluster.new_leader(&admin, &third).await;
    writes_resume(&log, bases.len(), at).await;
    cluster.run("wait-whole", &[]);
    faults.push(Fault {
        what: "crash of the primary's PostgreSQL",
        at,
        from: third.clone(),
        to: fourth.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. The primary's machine is lost: Patroni and PostgreSQL killed; the
    //    leader key expires (ttl) and the synchronous standby takes over.
    cluster.run("kill-node", &[&fourth]);
    let at = epoch.elapsed();
    let fifth = cluster.new_leader(&admin, &fourth).await;
    writes_resume(&log, bases.len(), at).await;
    // The lost node comes back and rejoins as a replica.
    cluster.run("start-node", &[&fourth]);
    cluster.run("wait-whole", &[]);
    faults.push(Fault {
        what: "loss of the primary's node",
        at,
        from: fourth.clone(),
        to: fifth.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 5. etcd stalls, every member: failsafe_mode keeps the primary (every
    //    node's Patroni still answers it), so writes go on.
    let freeze = cluster.freeze("freeze-etcd", &["15"]);
    let at = epoch.elapsed();
    cluster.finish(freeze, "freeze-etcd");
    writes_resume(&log, bases.len(), at).await;
    cluster.run("wait-whole", &[]);
    let leader = cluster
        .leader(&admin)
        .await
        .expect("a leader after etcd's stall");
    faults.push(Fault {
        what: "15 s without etcd",
        at,
        from: fifth.clone(),
        to: leader.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 6. A planned switchover to the synchronous standby.
    let at = epoch.elapsed();
    cluster.run("switchover", &[]);
    let sixth = cluster.new_leader(&admin, &leader).await;
    writes_resume(&log, bases.len(), at).await;
    cluster.run("wait-whole", &[]);
    faults.push(Fault {
        what: "switchover",
        at,
        from: leader.clone(),
        to: sixth.clone(),
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("a load task failed");
    }
    let log = log.lock().unwrap().clone();

    // Only 2xx, 503 (not applied) and 504 (outcome unknown); no hang.
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for s in &log {
        *statuses.entry(s.status).or_default() += 1;
    }
    let unexpected: Vec<&Request> = log
        .iter()
        .filter(|s| !matches!(s.status, 200 | 201 | 503 | 504))
        .collect();
    assert!(
        unexpected.is_empty(),
        "statuses {statuses:?}; unexpected: {:?}",
        &unexpected[..unexpected.len().min(5)]
    );

    let client = reqwest::Client::new();
    let get = async |import: i64| -> Vec<Value> {
        let response = client
            .get(format!("{}/imports/{import}/citizens", bases[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "import {import}");
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        body["data"].as_array().unwrap().clone()
    };

    // Every acknowledged import is there, intact; ids unique (none
    // acknowledged twice) and increasing: an import acknowledged before
    // another was sent has the smaller id.
    let imports: Vec<(&Request, i64, &Vec<Value>)> = log
        .iter()
        .filter_map(|s| match &s.what {
            What::Import {
                citizens,
                id: Some(id),
            } if s.status == 201 => Some((s, *id, citizens)),
            _ => None,
        })
        .collect();
    let mut expected: HashMap<i64, (Duration, u64)> = HashMap::new();
    for (request, id, citizens) in &imports {
        let listing = expected_listing(citizens);
        assert_eq!(get(*id).await, listing, "import {id}");
        expected.insert(*id, (request.done, digest(&Value::Array(listing))));
    }
    let mut ids: Vec<i64> = imports.iter().map(|(_, id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), imports.len(), "import ids are unique");
    for (a, id_a, _) in &imports {
        for (b, id_b, _) in &imports {
            assert!(
                !(a.done < b.sent && id_a >= id_b),
                "import {id_a} acknowledged before import {id_b} was sent"
            );
        }
    }

    // A read of an import sent after its 201 arrived never answers 404 and
    // never shows other citizens than it was acknowledged with.
    let mut import_reads = 0;
    let mut wrong = Vec::new();
    for read in &log {
        let What::ReadImport { import, body } = &read.what else {
            continue;
        };
        let Some((acknowledged, digest)) = expected.get(import) else {
            wrong.push(format!(
                "import {import} was read (status {}) but never acknowledged",
                read.status
            ));
            continue;
        };
        if *acknowledged >= read.sent {
            continue;
        }
        import_reads += 1;
        match (read.status, body) {
            (404, _) => wrong.push(format!(
                "import {import}, acknowledged at {acknowledged:?}, answered 404 to a read sent at {:?} via {}",
                read.sent, read.instance
            )),
            (200, Some(seen)) if seen != digest => wrong.push(format!(
                "import {import}, acknowledged at {acknowledged:?}, showed other citizens to a read sent at {:?} via {}",
                read.sent, read.instance
            )),
            _ => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong reads of acknowledged imports, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    // The seeded imports: each citizen's name is its last acknowledged one, or
    // a later one whose outcome was unknown (504) — never a refused (503) one;
    // relatives are symmetric.
    let patches: Vec<(&Request, i64, u64, usize, u64)> = log
        .iter()
        .filter_map(|s| match s.what {
            What::Patch {
                import,
                citizen,
                owner,
                seq,
            } => Some((s, import, citizen, owner, seq)),
            _ => None,
        })
        .collect();
    for &import in &seeded {
        let listing = get(import).await;
        assert_relatives_symmetric(&listing, &format!("import {import}"));
        for c in &listing {
            let id = c["citizen_id"].as_u64().unwrap();
            let mine: Vec<_> = patches
                .iter()
                .filter(|p| p.1 == import && p.2 == id)
                .collect();
            let acked = mine.iter().filter(|p| p.0.status == 200).map(|p| p.4).max();
            let Some(acked) = acked else { continue };
            let (owner, seq) = parse_name(c["name"].as_str().unwrap())
                .unwrap_or_else(|| panic!("import {import} citizen {id}: {c}"));
            let outcome = mine
                .iter()
                .find(|p| p.3 == owner && p.4 == seq)
                .map(|p| p.0.status);
            assert!(
                seq >= acked && matches!(outcome, Some(200 | 504)),
                "import {import} citizen {id}: name from PATCH {seq} ({outcome:?}); {acked} was acknowledged"
            );
        }
    }

    // No read went back in time: a read sent after a PATCH was acknowledged
    // shows it (or a later one), whichever instance served either.
    type Read<'a> = (&'a Request, i64, &'a BTreeMap<u64, (usize, u64)>);
    let reads: Vec<Read> = log
        .iter()
        .filter_map(|s| match &s.what {
            What::Read { import, seen } if s.status == 200 => Some((s, *import, seen)),
            _ => None,
        })
        .collect();
    let mut stale = Vec::new();
    for (read, import, seen) in &reads {
        for (patch, _, citizen, _, seq) in patches
            .iter()
            .filter(|p| p.1 == *import && p.0.status == 200 && p.0.done < read.sent)
        {
            let shown = seen.get(citizen).map_or(0, |(_, s)| *s);
            if shown < *seq {
                stale.push(format!(
                    "read of import {import} sent at {:?} via {} shows citizen {citizen} at PATCH {shown}, PATCH {seq} was acknowledged at {:?} via {}",
                    read.sent, read.instance, patch.done, patch.instance
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );

    let mut lines = Vec::new();
    let mut worst = Duration::ZERO;
    let end = log.iter().map(|s| s.done).max().unwrap_or_default();
    for (n, fault) in faults.iter().enumerate() {
        let to = faults.get(n + 1).map_or(end, |next| next.at);
        let gap = gaps(&log, bases.len(), fault.at, to);
        worst = worst.max(gap.iter().copied().max().unwrap_or_default());
        lines.push(format!(
            "  {}: {} -> {}, longest time without an acknowledged write {gap:.1?} (instance 0, 1)",
            fault.what, fault.from, fault.to
        ));
    }
    let summary = format!(
        "failover:\n{}\n  requests {statuses:?}; {} imports, {} PATCHes acknowledged and found; {} reads of PATCHed imports and {import_reads} of acknowledged imports checked",
        lines.join("\n"),
        imports.len(),
        patches.iter().filter(|p| p.0.status == 200).count(),
        reads.len(),
    );
    crate::helpers::report(&summary);
    assert!(
        worst <= Duration::from_secs(60),
        "service resumed only after {worst:?}: {summary}"
    );
}
