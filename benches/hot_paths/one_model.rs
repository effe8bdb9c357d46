//! Issue 28, point 4: can the read cache keep the analytics in the stored
//! summary's shape (presents rows and counted town dates, moved by a
//! PATCH's plan as the stores move them) instead of `domain::analytics`
//! (a presents row of twelve per citizen and every birth date per town)?
//!
//! Both models answer the same PATCHes of the same import; each pair of
//! benchmarks does the same work a cache would do for it: move the model
//! (and the held copy of the citizens) over one PATCH, then answer.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use gifts::domain::analytics::Analytics;
use gifts::domain::patch::{self, Plan, after_patch};
use gifts::domain::stats::{Birthdays, TownAges};
use gifts::domain::summary::{self, PresentsRow, Summary, TownDates};
use gifts::domain::{Citizen, CitizenId};
use time::Date;

/// The analytics as a store keeps them: presents rows by (month, citizen)
/// and each town's counted dates, encoded as the stores encode them.
#[derive(Clone)]
struct Rows {
    presents: BTreeMap<(u8, CitizenId), u32>,
    towns: Vec<TownDates>,
}

impl Rows {
    fn of(citizens: &[Arc<Citizen>]) -> Self {
        let summary = Summary::of(citizens);
        Self {
            presents: summary
                .presents
                .into_iter()
                .map(|(month, id, n)| ((month, id), n))
                .collect(),
            towns: summary.towns,
        }
    }

    /// The plan's rows, as SQLite applies them; the months they change.
    fn apply(&mut self, plan: &Plan) -> u16 {
        let mut changed = 0u16;
        for &(month, id, delta) in &plan.presents {
            changed |= 1 << (month - 1);
            let n = i64::from(self.presents.get(&(month, id)).copied().unwrap_or(0)) + delta;
            if n > 0 {
                self.presents
                    .insert((month, id), u32::try_from(n).expect("a count"));
            } else {
                self.presents.remove(&(month, id));
            }
        }
        if let Some(moved) = &plan.births {
            for ((town, date), delta) in [(&moved.from, -1), (&moved.to, 1)] {
                let at = match self
                    .towns
                    .binary_search_by(|t| t.town.as_str().cmp(town.as_str()))
                {
                    Ok(at) => at,
                    Err(at) => {
                        self.towns.insert(
                            at,
                            TownDates {
                                town: town.as_str().to_owned(),
                                dates: Vec::new(),
                            },
                        );
                        at
                    }
                };
                assert!(summary::adjust_dates(
                    &mut self.towns[at].dates,
                    *date,
                    delta
                ));
            }
        }
        changed
    }

    fn birthdays(&self) -> Birthdays {
        summary::birthdays(
            self.presents
                .iter()
                .map(|(&(m, id), &n)| -> PresentsRow { (m, id, n) }),
        )
    }

    fn percentiles(&self, today: Date) -> Vec<TownAges> {
        summary::percentiles(&self.towns, today).expect("encoded towns")
    }
}

/// The held copy after `plan`: its mirror applied, the citizen replaced.
fn mirrored(citizens: &[Arc<Citizen>], plan: &Plan) -> Vec<Arc<Citizen>> {
    let find = |id: CitizenId| {
        citizens
            .binary_search_by_key(&id, |c| c.citizen_id)
            .expect("in the import")
    };
    let mut next = citizens.to_vec();
    for &(other, edit) in &plan.mirror {
        let at = find(other);
        let mut changed = Citizen::clone(&next[at]);
        edit.apply(&mut changed.relatives);
        next[at] = Arc::new(changed);
    }
    next[find(plan.citizen.citizen_id)] = Arc::new(plan.citizen.clone());
    next
}

pub fn compare(group: &mut BenchmarkGroup<'_, WallTime>, sorted: &[Arc<Citizen>], today: Date) {
    group.bench_function("model_build/analytics", |b| {
        b.iter(|| Analytics::new(black_box(sorted)));
    });
    group.bench_function("model_build/summary_rows", |b| {
        b.iter(|| Rows::of(black_box(sorted)));
    });

    // Two PATCHes: a citizen with relatives takes two others; and it moves
    // to another month (its relatives' rows move too, and a town date).
    let hub = sorted
        .iter()
        .max_by_key(|c| c.relatives.len())
        .expect("citizens");
    let mut relatives = Citizen::clone(hub);
    relatives.relatives = {
        let mut list = hub.relatives.clone();
        list.extend([sorted[1].citizen_id, sorted[2].citizen_id]);
        list.retain(|&id| id != hub.citizen_id);
        list.sort_unstable();
        list.dedup();
        list
    };
    let mut born = Citizen::clone(hub);
    born.birth_date = gifts::domain::BirthDate::from_ymd(
        1990,
        if hub.birth_date.month() == 6 { 7 } else { 6 },
        15,
    )
    .expect("a date");
    let month_of = |id: CitizenId| {
        sorted
            .binary_search_by_key(&id, |c| c.citizen_id)
            .ok()
            .map(|at| sorted[at].birth_date.month())
    };
    let analytics = Analytics::new(sorted);
    let rows = Rows::of(sorted);
    eprintln!(
        "one_model: {} citizens, {} presents rows, {} towns, {} distinct town dates; \
         Analytics::weight {} bytes",
        sorted.len(),
        rows.presents.len(),
        rows.towns.len(),
        rows.towns.iter().map(|t| t.dates.len() / 8).sum::<usize>(),
        Analytics::weight(sorted.len()),
    );
    for (name, now) in [("relatives", &relatives), ("birth_date", &born)] {
        // Both models agree after the PATCH (the bench measures equal work).
        let after = after_patch(sorted, now).expect("in the import");
        let plan = patch::plan(hub, &patch::to(now), month_of).expect("plans");
        let mut a = analytics.clone();
        a.apply(&after, hub, now).expect("applies");
        let mut r = rows.clone();
        r.apply(&plan);
        assert_eq!(a.birthdays(&after), r.birthdays(), "{name}");
        assert_eq!(
            serde_json::to_string(&a.percentiles(today)).unwrap(),
            serde_json::to_string(&r.percentiles(today)).unwrap(),
            "{name}"
        );

        group.bench_function(format!("patch_{name}/analytics"), |b| {
            b.iter_batched_ref(
                || analytics.clone(),
                |model| {
                    let after = after_patch(black_box(sorted), now).expect("in the import");
                    model.apply(&after, hub, now).expect("applies");
                    after
                },
                criterion::BatchSize::LargeInput,
            );
        });
        group.bench_function(format!("patch_{name}/summary_rows"), |b| {
            b.iter_batched_ref(
                || rows.clone(),
                |model| {
                    let plan = patch::plan(hub, &patch::to(now), month_of).expect("plans");
                    let after = mirrored(black_box(sorted), &plan);
                    model.apply(&plan);
                    after
                },
                criterion::BatchSize::LargeInput,
            );
        });
        if name == "birth_date" {
            group.bench_function("birthdays/analytics", |b| {
                b.iter(|| a.birthdays(black_box(&after)));
            });
            group.bench_function("birthdays/summary_rows", |b| {
                b.iter(|| black_box(&r).birthdays());
            });
            group.bench_function("percentiles/analytics", |b| {
                b.iter(|| a.percentiles(black_box(today)));
            });
            group.bench_function("percentiles/summary_rows", |b| {
                b.iter(|| r.percentiles(black_box(today)));
            });
        }
    }
}
