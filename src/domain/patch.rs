//! One PATCH's decision, made here once for every store.
//!
//! A store, holding its import alone (a row lock, its one writer, or one
//! Lua transaction), reads the citizen, asks [`touched`] which other
//! citizens the PATCH reaches, reads whether each is in the import and its
//! birth month, and calls [`plan`]. The [`Plan`] is everything the PATCH
//! writes, or the [`Refusal`] that writes nothing:
//!
//! - the citizen as it will be stored;
//! - each other citizen whose list changes, with the [`Edit`] its list gets
//!   (a dropped relative loses this citizen, an added one gains it, one kept
//!   is not touched; a citizen listing itself is never mirrored);
//! - how the presents rows change (`domain::summary`);
//! - the town dates' [`Move`]: one citizen fewer on the old town and date,
//!   one more on the new.
//!
//! The refusals, first match wins: no such import and no such citizen are
//! the store's own reads (there is nothing to plan without them); then an
//! added relative that is not in the import ([`Refusal::UnknownRelative`],
//! the lowest such id); then a dropped relative that is not in the import
//! ([`Refusal::MissingRelative`]: the stored relation is broken).
//!
//! SQLite and PostgreSQL apply a plan's rows and decide nothing; the
//! in-memory snapshot ([`after_patch`]) applies its mirror, decided by the
//! same code.
//! Tarantool 2.6 has no interactive transactions over IPROTO, so its Lua
//! makes the same decisions inside its own transaction; the storage contract
//! suite (`tests/api/contract.rs`) holds it to this module.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::citizen::{BirthDate, Citizen, CitizenId, CitizenPatch, Place};
use super::relatives::{Edit, mirror_edits};

/// Why a PATCH writes nothing, once the import and the citizen are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An added relative is not a citizen of the import: the lowest such id.
    UnknownRelative(CitizenId),
    /// A dropped relative is not a citizen of the import: the stored
    /// relation is broken (never skipped silently).
    MissingRelative(CitizenId),
}

/// One citizen leaves a (town, birth date) of the town dates and joins another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where the citizen was counted: one fewer there.
    pub from: (Place, BirthDate),
    /// Where it is counted now: one more there.
    pub to: (Place, BirthDate),
}

/// Everything one PATCH writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The citizen as it will be stored.
    pub citizen: Citizen,
    /// The other citizens whose lists change, ascending by id, each with
    /// its edit; this citizen is never among them.
    pub mirror: Vec<(CitizenId, Edit)>,
    /// Presents rows' changes, `(month, citizen_id, delta)`: ordered, none
    /// zero. A row whose count reaches 0 goes; one that was not there comes.
    pub presents: Vec<(u8, CitizenId, i64)>,
    /// The town dates' change; `None` when neither town nor birth date changes.
    pub births: Option<Move>,
}

/// The other citizens `patch` reaches, ascending, each with the edit its
/// list gets: the ones a store must look up before calling [`plan`].
pub fn touched(before: &Citizen, patch: &CitizenPatch) -> Vec<(CitizenId, Edit)> {
    edits(before, patch.relatives.as_deref())
}

fn edits(before: &Citizen, new: Option<&[CitizenId]>) -> Vec<(CitizenId, Edit)> {
    match new {
        Some(new) => mirror_edits(before.citizen_id, &before.relatives, new),
        None => Vec::new(),
    }
}

/// The touched citizens with their edits, and their birth months in that order.
type Mirror = (Vec<(CitizenId, Edit)>, Vec<Option<u8>>);

/// The mirror of a new list `new` (if any) onto the others, with each
/// touched citizen's birth month, or the refusal, in the contract's order:
/// the part of [`plan`] the in-memory copy needs too.
fn mirror(
    before: &Citizen,
    new: Option<&[CitizenId]>,
    month_of: impl Fn(CitizenId) -> Option<u8>,
) -> Result<Mirror, Refusal> {
    let mirror = edits(before, new);
    let months: Vec<Option<u8>> = mirror.iter().map(|&(id, _)| month_of(id)).collect();
    let absent = |added: bool| {
        mirror
            .iter()
            .zip(&months)
            .find(|((_, edit), month)| month.is_none() && matches!(edit, Edit::Add(_)) == added)
            .map(|(&(id, _), _)| id)
    };
    if let Some(id) = absent(true) {
        return Err(Refusal::UnknownRelative(id));
    }
    if let Some(id) = absent(false) {
        return Err(Refusal::MissingRelative(id));
    }
    Ok((mirror, months))
}

/// The PATCH of `before` (the citizen as stored) by `patch` (whose
/// relatives, if any, are ascending and unique). `month_of` answers the birth
/// month of a citizen of the import, `None` when it is not in it; it is
/// asked about each id of [`touched`] once, and about nothing else.
pub fn plan(
    before: &Citizen,
    patch: &CitizenPatch,
    month_of: impl Fn(CitizenId) -> Option<u8>,
) -> Result<Plan, Refusal> {
    let (mirror, months) = mirror(before, patch.relatives.as_deref(), month_of)?;
    let mut citizen = before.clone();
    if let Some(new) = &patch.relatives {
        citizen.relatives.clone_from(new);
    }
    patch.apply_fields(&mut citizen);
    let presents = presents_change(before, &citizen, |id| {
        mirror
            .binary_search_by_key(&id, |&(other, _)| other)
            .ok()
            .and_then(|at| months[at])
    });
    let births =
        ((&before.town, before.birth_date) != (&citizen.town, citizen.birth_date)).then(|| Move {
            from: (before.town.clone(), before.birth_date),
            to: (citizen.town.clone(), citizen.birth_date),
        });
    Ok(Plan {
        citizen,
        mirror,
        presents,
        births,
    })
}

/// Whether `patch` changes its citizen's own row and nothing else: it
/// carries no town, birth date or relatives, the only fields another row or
/// the summary depends on. Its [`plan`] is then the citizen with the fields
/// replaced ([`CitizenPatch::apply_fields`]), with no mirror, no presents
/// change and no move, whatever is stored; it cannot be refused. A store
/// may apply it without reading first.
pub fn own_row_only(patch: &CitizenPatch) -> bool {
    patch.town.is_none() && patch.birth_date.is_none() && patch.relatives.is_none()
}

/// The PATCH that makes `before` into `now` (every field set, the
/// relatives list included): a stored answer replayed as a PATCH.
pub fn to(now: &Citizen) -> CitizenPatch {
    CitizenPatch {
        town: Some(now.town.clone()),
        street: Some(now.street.clone()),
        building: Some(now.building.clone()),
        apartment: Some(now.apartment),
        name: Some(now.name.clone()),
        birth_date: Some(now.birth_date),
        gender: Some(now.gender),
        relatives: Some(now.relatives.clone()),
    }
}

/// An import held in memory (ordered by citizen_id) after a store
/// answered a PATCH with `updated`: the plan's mirror of `updated`'s list,
/// decided by the same code as [`plan`] (which refusal, which edits), applied
/// to the copy, and `updated` in place of its old self. Only what the copy
/// needs: no summary rows are worked out. Shares every untouched citizen
/// with `citizens`. `None` when the citizen is missing or the mirror is
/// refused, which means the copy does not belong to the state the PATCH
/// was applied to (it is dropped).
pub fn after_patch(citizens: &[Arc<Citizen>], updated: &Citizen) -> Option<Vec<Arc<Citizen>>> {
    let mut next = citizens.to_vec();
    patch_in_place(&mut next, updated).then_some(next)
}

/// [`after_patch`] on the list itself: only the PATCHed citizen and its
/// mirrored relatives are replaced, nothing else is touched (no pointer
/// copied per citizen). False, with the list unchanged, where
/// [`after_patch`] gives `None`.
pub fn patch_in_place(citizens: &mut [Arc<Citizen>], updated: &Citizen) -> bool {
    let find = |list: &[Arc<Citizen>], id: CitizenId| {
        list.binary_search_by_key(&id, |c| c.citizen_id).ok()
    };
    let Some(me) = find(citizens, updated.citizen_id) else {
        return false;
    };
    let list: &[Arc<Citizen>] = citizens;
    let month_of = |id| find(list, id).map(|at| list[at].birth_date.month());
    let Ok((edits, _)) = mirror(&list[me], Some(&updated.relatives), month_of) else {
        return false;
    };
    let Some(places) = edits
        .iter()
        .map(|&(other, _)| find(list, other))
        .collect::<Option<Vec<usize>>>()
    else {
        return false;
    };
    for ((_, edit), at) in edits.into_iter().zip(places) {
        let mut changed = Citizen::clone(&citizens[at]);
        edit.apply(&mut changed.relatives);
        citizens[at] = Arc::new(changed);
    }
    citizens[me] = Arc::new(updated.clone());
    true
}

/// How a PATCH changes the presents rows: `(month, citizen_id, delta)`,
/// ordered, none zero. `before` is the citizen as it was, `now` as it is
/// after the PATCH; `month_of` answers the birth month of another citizen of
/// the import (`None`: not in it, skipped as `stats::birthdays` does) and
/// is asked only about citizens that joined or left `before`'s list.
///
/// Only two kinds of row change: the citizen's own (its list, or its own
/// month when it lists itself), and that of each citizen it listed before
/// or lists now, by this citizen's month then and now — the relation is
/// symmetric, so they listed it exactly then.
fn presents_change(
    before: &Citizen,
    now: &Citizen,
    month_of: impl Fn(CitizenId) -> Option<u8>,
) -> Vec<(u8, CitizenId, i64)> {
    let me = now.citizen_id;
    let (was, is) = (before.birth_date.month(), now.birth_date.month());
    if before.relatives == now.relatives && was == is {
        // Nothing to net: a name PATCH of a citizen with 100,000 relatives
        // costs one comparison, not a map of 200,000 entries.
        return Vec::new();
    }
    let mut change: BTreeMap<(u8, CitizenId), i64> = BTreeMap::new();
    let mut add = |month: u8, citizen: CitizenId, delta: i64| {
        *change.entry((month, citizen)).or_default() += delta;
    };
    let listed_before = |id: CitizenId| before.relatives.binary_search(&id).is_ok();
    let listed_now = |id: CitizenId| now.relatives.binary_search(&id).is_ok();
    for &relative in &before.relatives {
        if relative == me {
            add(was, me, -1);
        } else {
            add(was, relative, -1);
            if !listed_now(relative)
                && let Some(month) = month_of(relative)
            {
                add(month, me, -1);
            }
        }
    }
    for &relative in &now.relatives {
        if relative == me {
            add(is, me, 1);
        } else {
            add(is, relative, 1);
            if !listed_before(relative)
                && let Some(month) = month_of(relative)
            {
                add(month, me, 1);
            }
        }
    }
    change
        .into_iter()
        .filter(|&(_, delta)| delta != 0)
        .map(|((month, citizen), delta)| (month, citizen, delta))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::analytics::tests::{TOWNS, date, import};
    use crate::domain::relatives::tests::{id, ids};
    use crate::domain::summary::Summary;
    use crate::domain::{Apartment, Gender, Name};

    fn place(s: &str) -> Place {
        Place::parse(s.into()).unwrap()
    }

    fn born(month: u8) -> BirthDate {
        BirthDate::from_ymd(2000, month, 1).unwrap()
    }

    /// A citizen of Керчь born on the 1st of `month`, 2000.
    pub(crate) fn person(n: u64, month: u8, relatives: &[u64]) -> Citizen {
        Citizen {
            citizen_id: id(n),
            town: place("Керчь"),
            street: place("S"),
            building: place("B"),
            apartment: Apartment::parse(1).unwrap(),
            name: Name::parse("N".into()).unwrap(),
            birth_date: born(month),
            gender: Gender::Male,
            relatives: ids(relatives),
        }
    }

    fn relatives(list: &[u64]) -> CitizenPatch {
        CitizenPatch {
            relatives: Some(ids(list)),
            ..CitizenPatch::default()
        }
    }

    /// Months of an import where citizens 1..=9 exist, citizen n born in month n.
    fn months_to_9(other: CitizenId) -> Option<u8> {
        (1..=9)
            .contains(&other.get())
            .then(|| u8::try_from(other.get()).unwrap())
    }

    #[test]
    fn an_unknown_added_relative_wins_over_a_missing_dropped_one_and_the_lowest_is_named() {
        // 5 lists 2 (dropped, and missing), adds 30 and 20 (both unknown).
        let before = person(5, 5, &[2]);
        let asked = std::cell::RefCell::new(Vec::new());
        let refused = plan(&before, &relatives(&[20, 30]), |other| {
            asked.borrow_mut().push(other);
            (other.get() == 5).then_some(5)
        });
        assert_eq!(refused, Err(Refusal::UnknownRelative(id(20))));
        assert_eq!(*asked.borrow(), ids(&[2, 20, 30]), "each touched id once");
        assert_eq!(
            plan(&before, &relatives(&[]), |_| None),
            Err(Refusal::MissingRelative(id(2)))
        );
        // A kept relative that is missing is not looked at.
        assert!(plan(&person(5, 5, &[77]), &relatives(&[77, 3]), months_to_9).is_ok());
        assert_eq!(
            plan(&person(5, 5, &[77, 78]), &relatives(&[3]), months_to_9),
            Err(Refusal::MissingRelative(id(77)))
        );
    }

    #[test]
    fn the_rows_a_store_reads_are_the_ones_the_plan_mirrors() {
        let before = person(3, 3, &[1, 2]);
        let patch = relatives(&[2, 4]);
        let plan = plan(&before, &patch, months_to_9).unwrap();
        assert_eq!(touched(&before, &patch), plan.mirror);
        assert_eq!(plan.mirror.len(), 2);
        let name_only = CitizenPatch {
            name: Some(Name::parse("Другое".into()).unwrap()),
            ..CitizenPatch::default()
        };
        assert_eq!(touched(&before, &name_only), vec![]);
    }

    #[test]
    fn a_new_list_is_mirrored_and_counted_on_both_sides() {
        // 3 (born in March) lists 1 and 2; it drops 1 and takes 4.
        let plan = plan(&person(3, 3, &[1, 2]), &relatives(&[2, 4]), months_to_9).unwrap();
        assert_eq!(plan.citizen, person(3, 3, &[2, 4]));
        assert_eq!(
            plan.mirror,
            vec![(id(1), Edit::Remove(id(3))), (id(4), Edit::Add(id(3)))]
        );
        // 1 loses a March present, 4 gains one; 3 loses January's (from 1)
        // and gains April's (from 4).
        assert_eq!(
            plan.presents,
            vec![(1, id(3), -1), (3, id(1), -1), (3, id(4), 1), (4, id(3), 1)]
        );
        assert_eq!(plan.births, None);
    }

    #[test]
    fn a_citizen_listing_itself_counts_its_own_month_and_is_never_mirrored() {
        let plan = plan(&person(3, 3, &[]), &relatives(&[3]), |_| None).unwrap();
        assert_eq!(plan.mirror, vec![]);
        assert_eq!(plan.presents, vec![(3, id(3), 1)]);
        let moved = CitizenPatch {
            birth_date: Some(born(7)),
            ..CitizenPatch::default()
        };
        let plan = super::plan(&person(3, 3, &[3]), &moved, |_| None).unwrap();
        assert_eq!(plan.presents, vec![(3, id(3), -1), (7, id(3), 1)]);
    }

    #[test]
    fn a_new_birth_month_moves_the_relatives_presents_and_the_town_date() {
        let before = person(3, 3, &[1, 2]);
        let patch = CitizenPatch {
            birth_date: Some(born(6)),
            ..CitizenPatch::default()
        };
        let plan = plan(&before, &patch, |_| panic!("nothing is touched")).unwrap();
        assert_eq!(plan.mirror, vec![]);
        assert_eq!(
            plan.presents,
            vec![(3, id(1), -1), (3, id(2), -1), (6, id(1), 1), (6, id(2), 1)]
        );
        assert_eq!(
            plan.births,
            Some(Move {
                from: (place("Керчь"), born(3)),
                to: (place("Керчь"), born(6)),
            })
        );
    }

    #[test]
    fn the_town_dates_move_with_the_town_alone_and_not_with_other_fields() {
        let before = person(3, 3, &[1]);
        let town = CitizenPatch {
            town: Some(place("Abakan")),
            ..CitizenPatch::default()
        };
        let plan = plan(&before, &town, |_| None).unwrap();
        assert_eq!(plan.presents, vec![]);
        assert_eq!(
            plan.births,
            Some(Move {
                from: (place("Керчь"), born(3)),
                to: (place("Abakan"), born(3)),
            })
        );
        assert_eq!(plan.citizen.town, place("Abakan"));
        let same = CitizenPatch {
            town: Some(place("Керчь")),
            birth_date: Some(born(3)),
            name: Some(Name::parse("Другое".into()).unwrap()),
            ..CitizenPatch::default()
        };
        let plan = super::plan(&before, &same, |_| None).unwrap();
        assert_eq!(plan.births, None);
        assert_eq!(plan.citizen.name.as_str(), "Другое");
    }

    #[test]
    fn replaying_a_stored_answer_is_the_patch_to_it() {
        let before = person(3, 3, &[1, 2]);
        let mut now = person(3, 8, &[2, 4]);
        now.town = place("Abakan");
        now.gender = Gender::Female;
        let plan = plan(&before, &to(&now), months_to_9).unwrap();
        assert_eq!(plan.citizen, now);
        assert_eq!(
            plan.mirror,
            vec![(id(1), Edit::Remove(id(3))), (id(4), Edit::Add(id(3)))]
        );
    }

    #[test]
    fn after_patch_mirrors_the_new_list_and_shares_untouched_citizens() {
        let person = |id: u64, relatives: &[u64]| {
            Arc::new(Citizen {
                citizen_id: CitizenId::parse(id).unwrap(),
                town: Place::parse("T".into()).unwrap(),
                street: Place::parse("S".into()).unwrap(),
                building: Place::parse("B".into()).unwrap(),
                apartment: Apartment::parse(1).unwrap(),
                name: Name::parse("N".into()).unwrap(),
                birth_date: BirthDate::from_ymd(2000, 1, 1).unwrap(),
                gender: Gender::Male,
                relatives: ids(relatives),
            })
        };
        // [1↔2, 3 alone, 4 alone]; 3 takes [1].
        let before = vec![
            person(1, &[2]),
            person(2, &[1]),
            person(3, &[]),
            person(4, &[]),
        ];
        let after = after_patch(&before, &person(3, &[1])).unwrap();
        let lists: Vec<Vec<CitizenId>> = after.iter().map(|c| c.relatives.clone()).collect();
        assert_eq!(lists, vec![ids(&[2, 3]), ids(&[1]), ids(&[1]), ids(&[])]);
        assert!(Arc::ptr_eq(&before[1], &after[1]) && Arc::ptr_eq(&before[3], &after[3]));
        assert!(
            after_patch(&before, &person(9, &[])).is_none(),
            "unknown citizen"
        );
        assert!(
            after_patch(&before, &person(3, &[9])).is_none(),
            "unknown relative"
        );
    }

    proptest! {
        /// A PATCH that [`own_row_only`] lets through plans to the fields
        /// replaced and nothing else, on any citizen; any other PATCH field
        /// makes it not own-row only.
        #[test]
        fn an_own_row_patch_plans_to_its_fields_alone(
            people in prop::collection::vec((0..TOWNS.len(), 0..27_000i32), 1..8),
            links in prop::collection::vec((any::<usize>(), any::<usize>()), 0..12),
            who in any::<usize>(),
            name in prop::option::of("[a-z]{1,8}"),
            street in prop::option::of(0..TOWNS.len()),
            apartment in prop::option::of(1u64..1000),
            female in prop::option::of(any::<bool>()),
            other in 0..3usize,
        ) {
            let import = import(&people, &links);
            let before = Citizen::clone(&import[who % import.len()]);
            let month_of = |id: CitizenId| {
                import.iter().find(|c| c.citizen_id == id).map(|c| c.birth_date.month())
            };
            let patch = CitizenPatch {
                name: name.map(|n| Name::parse(n).unwrap()),
                street: street.map(|t| place(TOWNS[t])),
                building: street.map(|t| place(TOWNS[t])),
                apartment: apartment.map(|a| Apartment::parse(a).unwrap()),
                gender: female.map(|f| if f { Gender::Female } else { Gender::Male }),
                ..CitizenPatch::default()
            };
            prop_assert!(own_row_only(&patch));
            let planned = plan(&before, &patch, month_of).expect("never refused");
            let mut expected = before.clone();
            patch.apply_fields(&mut expected);
            prop_assert_eq!(&planned.citizen, &expected);
            prop_assert!(planned.mirror.is_empty());
            prop_assert!(planned.presents.is_empty());
            prop_assert!(planned.births.is_none());
            let reaching = match other {
                0 => CitizenPatch { town: Some(before.town.clone()), ..patch },
                1 => CitizenPatch { birth_date: Some(before.birth_date), ..patch },
                _ => CitizenPatch { relatives: Some(before.relatives.clone()), ..patch },
            };
            prop_assert!(!own_row_only(&reaching));
        }

        /// Plans applied one after another keep the import what the
        /// relation as a set of pairs says, and the summary kept by the
        /// plans' rows equal to the summary computed from scratch; a
        /// refused plan names the lowest unknown id.
        #[test]
        fn plans_applied_in_sequence_equal_the_model_and_the_summary_from_scratch(
            people in prop::collection::vec((0..TOWNS.len(), 0..27_000i32), 1..8),
            links in prop::collection::vec((any::<usize>(), any::<usize>()), 0..12),
            patches in prop::collection::vec(
                (any::<usize>(), prop::option::of(prop::collection::btree_set(1u64..12, 0..5)),
                 prop::option::of(0..27_000i32), prop::option::of(0..TOWNS.len())),
                1..20,
            ),
        ) {
            let mut import: BTreeMap<CitizenId, Citizen> = import(&people, &links)
                .into_iter()
                .map(|c| (c.citizen_id, Citizen::clone(&c)))
                .collect();
            let n = import.len() as u64;
            let mut kept = Summary::parts(&import.values().cloned().collect::<Vec<_>>());
            for (who, list, born, town) in patches {
                let me = id(who as u64 % n + 1);
                let patch = CitizenPatch {
                    relatives: list.map(|l| ids(&l.into_iter().collect::<Vec<_>>())),
                    birth_date: born.map(date),
                    town: town.map(|t| place(TOWNS[t])),
                    ..CitizenPatch::default()
                };
                let before = import[&me].clone();
                let month_of = |other: CitizenId| import.get(&other).map(|c| c.birth_date.month());
                let unknown = patch.relatives.iter().flatten()
                    .find(|r| !import.contains_key(r) && !before.relatives.contains(r));
                let planned = plan(&before, &patch, month_of);
                if let Some(&unknown) = unknown {
                    prop_assert_eq!(planned, Err(Refusal::UnknownRelative(unknown)));
                    continue;
                }
                let planned = planned.expect("no unknown relative, a symmetric import");
                for &(other, edit) in &planned.mirror {
                    edit.apply(&mut import.get_mut(&other).expect("touched is in the import").relatives);
                }
                import.insert(me, planned.citizen.clone());
                // The rows kept, changed by the plan only.
                let mut presents: BTreeMap<(u8, CitizenId), i64> =
                    kept.0.iter().map(|&(m, c, p)| ((m, c), i64::from(p))).collect();
                for &(m, c, d) in &planned.presents {
                    *presents.entry((m, c)).or_default() += d;
                }
                presents.retain(|_, p| *p != 0);
                let mut towns: BTreeMap<String, BTreeMap<BirthDate, i64>> = kept.1.iter()
                    .map(|(t, dates)| (t.clone(), dates.iter().map(|&(d, n)| (d, i64::from(n))).collect()))
                    .collect();
                if let Some(Move { from, to }) = &planned.births {
                    *towns.entry(from.0.as_str().into()).or_default().entry(from.1).or_default() -= 1;
                    *towns.entry(to.0.as_str().into()).or_default().entry(to.1).or_default() += 1;
                }
                for dates in towns.values_mut() {
                    dates.retain(|_, n| *n != 0);
                }
                towns.retain(|_, dates| !dates.is_empty());
                let all: Vec<Citizen> = import.values().cloned().collect();
                let fresh = Summary::parts(&all);
                let rows: Vec<(u8, CitizenId, u32)> = presents
                    .into_iter()
                    .map(|((m, c), p)| (m, c, u32::try_from(p).expect("not below 0")))
                    .collect();
                prop_assert_eq!(&rows, &fresh.0);
                let towns: Vec<(String, Vec<(BirthDate, u32)>)> = towns
                    .into_iter()
                    .map(|(t, dates)| (t, dates.into_iter().map(|(d, n)| (d, u32::try_from(n).unwrap())).collect()))
                    .collect();
                prop_assert_eq!(&towns, &fresh.1);
                kept = fresh;
                for c in import.values() {
                    for r in &c.relatives {
                        prop_assert!(import[r].relatives.contains(&c.citizen_id), "{} lists {} but not back", c.citizen_id, r);
                    }
                }
            }
        }
    }
}
