//! The storage contract suite: the `Storage` trait itself (not HTTP, not the
//! read cache), driven by proptest-generated sequences of imports, PATCHes
//! (refused ones and self-relatives among them) and deletes, on every
//! backend, with the domain as the oracle.
//!
//! After every step the store must answer what the domain computes from the
//! model: the citizens (`domain::patch::plan` applied to the model), the
//! presents and town dates (`stats::birthdays` and `Summary::of` from
//! scratch), the version, and for a refused PATCH the same error, in the
//! contract's order. This is what holds Tarantool's Lua, which makes the
//! PATCH decisions inside its own transaction, to the Rust plan that SQLite
//! and PostgreSQL apply. A failure names the backend and the shrunk sequence.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gifts::config::Config;
use gifts::domain::patch::{self, Refusal};
use gifts::domain::stats;
use gifts::domain::summary::{self, Summary};
use gifts::domain::{
    Apartment, BirthDate, Citizen, CitizenId, CitizenPatch, Gender, ImportId, MAX_INTEGER, Name,
    Place, Reason, ValidationError,
};
use gifts::metrics::Metrics;
use gifts::storage::{Storage, StorageError, Upload};
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestCaseError, TestRunner};

use crate::helpers::{Backend, TestStore};

const TOWNS: [&str; 4] = ["Москва", "Керчь", "Abakan", "Zürich"];
/// Names, one with a NUL: strange but valid.
const NAMES: [&str; 3] = ["Иванов Иван", "A\u{0}B", "Я"];

/// Citizen ids an import draws from: small ones and ones near 2^63.
fn citizen_ids() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..12, (MAX_INTEGER - 3)..=MAX_INTEGER]
}

/// One step of a sequence; positions are taken modulo what exists.
#[derive(Debug, Clone)]
enum Step {
    /// A new import: ids with (town, days since 1950, name) and links
    /// between positions (a link of a position to itself: a self-relative).
    Import {
        people: BTreeMap<u64, (usize, i32, usize)>,
        links: Vec<(usize, usize)>,
    },
    /// A PATCH of a live import's citizen (`who: None`: an id not in it).
    Patch {
        import: usize,
        who: Option<usize>,
        town: Option<usize>,
        born: Option<i32>,
        name: Option<usize>,
        /// Positions of citizens of the import, or (`Err`) ids not in it.
        relatives: Option<Vec<Result<usize, u64>>>,
    },
    /// Deletes a live import; later steps may still name it.
    Delete { import: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let import = (
        prop::collection::btree_map(
            citizen_ids(),
            (0..TOWNS.len(), 0..27_000i32, 0..NAMES.len()),
            1..7,
        ),
        prop::collection::vec((any::<usize>(), any::<usize>()), 0..8),
    )
        .prop_map(|(people, links)| Step::Import { people, links });
    let relative = prop_oneof![
        4 => any::<usize>().prop_map(Ok),
        1 => prop_oneof![12u64..20, Just(MAX_INTEGER - 4)].prop_map(Err),
    ];
    let patch = (
        any::<usize>(),
        prop::option::weighted(0.95, any::<usize>()),
        prop::option::of(0..TOWNS.len()),
        prop::option::of(0..27_000i32),
        prop::option::weighted(0.2, 0..NAMES.len()),
        prop::option::weighted(0.7, prop::collection::vec(relative, 0..5)),
    )
        .prop_map(|(import, who, town, born, name, relatives)| Step::Patch {
            import,
            who,
            town,
            born,
            name,
            relatives,
        });
    prop_oneof![
        2 => import,
        6 => patch,
        1 => any::<usize>().prop_map(|import| Step::Delete { import }),
    ]
}

fn date(days: i32) -> BirthDate {
    let d = time::Date::from_calendar_date(1950, time::Month::January, 1).unwrap()
        + time::Duration::days(i64::from(days));
    BirthDate::from_ymd(d.year(), d.month() as u8, d.day()).unwrap()
}

fn id(n: u64) -> CitizenId {
    CitizenId::parse(n).unwrap()
}

/// The citizens of an import step, ordered by id, symmetric.
fn citizens_of(
    people: &BTreeMap<u64, (usize, i32, usize)>,
    links: &[(usize, usize)],
) -> Vec<Citizen> {
    let ids: Vec<u64> = people.keys().copied().collect();
    let mut lists = vec![std::collections::BTreeSet::new(); ids.len()];
    for &(a, b) in links {
        let (a, b) = (a % ids.len(), b % ids.len());
        lists[a].insert(ids[b]);
        lists[b].insert(ids[a]);
    }
    people
        .iter()
        .zip(lists)
        .map(|((&n, &(town, born, name)), list)| Citizen {
            citizen_id: id(n),
            town: Place::parse(TOWNS[town].into()).unwrap(),
            street: Place::parse("Ленина".into()).unwrap(),
            building: Place::parse("1к2".into()).unwrap(),
            apartment: Apartment::parse(n % 1000).unwrap(),
            name: Name::parse(NAMES[name].into()).unwrap(),
            birth_date: date(born),
            gender: if n % 2 == 0 {
                Gender::Female
            } else {
                Gender::Male
            },
            relatives: list.into_iter().map(id).collect(),
        })
        .collect()
}

/// What the store should hold: its live imports as the domain keeps them.
#[derive(Default)]
struct Model {
    live: Vec<(ImportId, u64, BTreeMap<CitizenId, Citizen>)>,
    deleted: Vec<ImportId>,
}

/// A difference between the store and the domain, as a proptest failure.
fn differ(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// Whether two storage errors are the same answer: the same variant, and
/// for a refusal the same field, citizen and reason.
fn same_error(got: &StorageError, want: &StorageError) -> bool {
    match (got, want) {
        (StorageError::ImportNotFound(a), StorageError::ImportNotFound(b)) => a == b,
        (
            StorageError::CitizenNotFound { import, citizen },
            StorageError::CitizenNotFound {
                import: i,
                citizen: c,
            },
        ) => import == i && citizen == c,
        (StorageError::Invalid(a), StorageError::Invalid(b)) => a == b,
        _ => false,
    }
}

/// Checks that `storage` holds `import` exactly as the model does; towns
/// as their picks (`summary::picked`) where the store keeps those.
async fn check_import(
    storage: &dyn Storage,
    picks: bool,
    import: ImportId,
    version: u64,
    citizens: &BTreeMap<CitizenId, Citizen>,
) -> Result<(), TestCaseError> {
    let want: Vec<&Citizen> = citizens.values().collect();
    let snapshot = storage.citizens(import).await.map_err(differ)?;
    let got: Vec<&Citizen> = snapshot.citizens.iter().map(Arc::as_ref).collect();
    prop_assert_eq!(got, want, "citizens of import {}", import);
    prop_assert_eq!(snapshot.version, version, "version of the citizens");
    let all: Vec<Citizen> = citizens.values().cloned().collect();
    let (v, birthdays) = storage.presents(import).await.map_err(differ)?;
    prop_assert_eq!(v, version, "version of the presents");
    prop_assert_eq!(
        birthdays,
        stats::birthdays(&all),
        "presents of import {}",
        import
    );
    let (v, towns) = storage.town_dates(import).await.map_err(differ)?;
    prop_assert_eq!(v, version, "version of the town dates");
    let mut want = Summary::of(&all).towns;
    if picks {
        for town in &mut want {
            town.dates = summary::picked(&town.dates).expect("the domain's encoding");
        }
    }
    prop_assert_eq!(towns, want, "town dates of import {}", import);
    prop_assert_eq!(
        storage.import_version(import).await.map_err(differ)?,
        version
    );
    Ok(())
}

/// Runs one sequence against `storage`, checking every answer.
async fn run(storage: &dyn Storage, picks: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::Import { people, links } => {
                let citizens = citizens_of(people, links);
                let import = storage
                    .create_import(citizens.clone(), Upload::default())
                    .await
                    .map_err(differ)?;
                let held = citizens.into_iter().map(|c| (c.citizen_id, c)).collect();
                check_import(storage, picks, import, 1, &held).await?;
                model.live.push((import, 1, held));
            }
            Step::Delete { import } => {
                if model.live.is_empty() {
                    continue;
                }
                let (gone, ..) = model.live.remove(import % model.live.len());
                storage.delete_import(gone).await.map_err(differ)?;
                model.deleted.push(gone);
                let read = storage.citizens(gone).await;
                prop_assert!(
                    matches!(read, Err(StorageError::ImportNotFound(i)) if i == gone),
                    "a deleted import read back: {:?}",
                    read.map(|s| s.citizens.len())
                );
            }
            Step::Patch {
                import,
                who,
                town,
                born,
                name,
                relatives,
            } => {
                // A deleted import now and then: the store must say so.
                let target =
                    if model.live.is_empty() || (import % 7 == 6 && !model.deleted.is_empty()) {
                        None
                    } else {
                        Some(import % model.live.len())
                    };
                let (import_id, ids) = match target {
                    Some(at) => (model.live[at].0, model.live[at].2.keys().copied().collect()),
                    None => match model.deleted.last() {
                        Some(&gone) => (gone, Vec::new()),
                        None => continue,
                    },
                };
                let me = match (who, ids.is_empty()) {
                    (Some(who), false) => ids[who % ids.len()],
                    _ => id(15),
                };
                let mut list: Option<Vec<CitizenId>> = relatives.as_ref().map(|list| {
                    list.iter()
                        .map(|r| match r {
                            Ok(at) if !ids.is_empty() => ids[at % ids.len()],
                            Ok(_) => id(16),
                            Err(unknown) => id(*unknown),
                        })
                        .collect()
                });
                if let Some(list) = &mut list {
                    list.sort_unstable();
                    list.dedup();
                }
                let patch = CitizenPatch {
                    town: town.map(|t| Place::parse(TOWNS[t].into()).unwrap()),
                    birth_date: born.map(date),
                    name: name.map(|n| Name::parse(NAMES[n].into()).unwrap()),
                    relatives: list,
                    ..CitizenPatch::default()
                };
                let got = storage.patch_citizen(import_id, me, patch.clone()).await;
                // The oracle: the contract's order, then the plan.
                let want = match target {
                    None => Err(StorageError::ImportNotFound(import_id)),
                    Some(at) => {
                        let (_, version, held) = &model.live[at];
                        match held.get(&me) {
                            None => Err(StorageError::CitizenNotFound {
                                import: import_id,
                                citizen: me,
                            }),
                            Some(before) => patch::plan(before, &patch, |other| {
                                held.get(&other).map(|c| c.birth_date.month())
                            })
                            .map(|plan| (plan, version + 1))
                            .map_err(|refusal| match refusal {
                                Refusal::UnknownRelative(other) => {
                                    StorageError::Invalid(ValidationError::new(
                                        "relatives",
                                        Some(me),
                                        Reason::UnknownRelative(other),
                                    ))
                                }
                                Refusal::MissingRelative(other) => {
                                    unreachable!("the model is symmetric: {other}")
                                }
                            }),
                        }
                    }
                };
                match (got, want) {
                    (Ok(patched), Ok((plan, version))) => {
                        prop_assert_eq!(&patched.citizen, &plan.citizen, "the patched citizen");
                        prop_assert_eq!(patched.version, version, "the version after the PATCH");
                        let at = target.expect("a live import");
                        let held = &mut model.live[at];
                        for &(other, edit) in &plan.mirror {
                            edit.apply(&mut held.2.get_mut(&other).expect("touched").relatives);
                        }
                        held.2.insert(me, plan.citizen);
                        held.1 = version;
                    }
                    (Err(got), Err(want)) => {
                        prop_assert!(
                            same_error(&got, &want),
                            "PATCH answered {:?}, the domain says {:?}",
                            got,
                            want
                        );
                    }
                    (got, want) => {
                        return Err(differ(format!(
                            "PATCH answered {:?}, the domain says {:?}",
                            got.map(|p| p.citizen),
                            want.map(|(plan, _)| plan.citizen)
                        )));
                    }
                }
                if let Some(at) = target {
                    let (import, version, held) = &model.live[at];
                    check_import(storage, picks, *import, *version, held).await?;
                }
            }
        }
    }
    Ok(())
}

/// Runs the suite on one backend: one server, a fresh import per step.
fn contract(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = TestStore::new(backend);
    let config = Config::with_storage(store.url().clone());
    let metrics = Arc::new(Metrics::default());
    let storage = runtime
        .block_on(gifts::storage::open(&config.store(), &metrics))
        .expect("the store opens");
    // A server store answers once its server has started.
    runtime
        .block_on(crate::support::poll(Duration::from_secs(60), || {
            storage.health()
        }))
        .unwrap_or_else(|e| panic!("{} never became healthy: {e}", backend.name()));
    let cases = Cases {
        cases: 96,
        failure_persistence: None,
        ..Cases::default()
    };
    let mut runner = TestRunner::new(cases);
    let result = runner.run(&prop::collection::vec(step(), 1..14), |steps| {
        runtime.block_on(run(storage.as_ref(), backend != Backend::Sqlite, &steps))
    });
    runtime.block_on(storage.close());
    if let Err(failure) = result {
        panic!(
            "{}: the store and the domain differ: {failure}",
            backend.name()
        );
    }
}

#[test]
fn sqlite_follows_the_domain() {
    contract(Backend::Sqlite);
}

#[test]
fn tarantool_follows_the_domain() {
    if crate::helpers::tarantool_available("contract") {
        contract(Backend::Tarantool);
    }
}

#[test]
fn postgres_follows_the_domain() {
    if crate::helpers::postgres_available("contract") {
        contract(Backend::Postgres);
    }
}
