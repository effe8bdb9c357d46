//! The relatives graph: lists are sets, and the relation is symmetric.
//!
//! An import must already be symmetric (`check_import`); a PATCH that replaces
//! one citizen's list is mirrored onto the others (`mirror_edits`).

use std::collections::HashMap;

use super::citizen::{Citizen, CitizenId};
use super::error::{Reason, ValidationError};

/// Turns a wire list into an ascending list of unique ids.
pub fn parse_relatives(ids: Vec<u64>) -> Result<Vec<CitizenId>, Reason> {
    let mut parsed = ids
        .into_iter()
        .map(CitizenId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_unstable();
    if let Some(pair) = parsed.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Reason::DuplicateRelative(pair[0]));
    }
    Ok(parsed)
}

/// Checks what only the whole import can tell: ids are unique, every relative
/// is a citizen of the import, and every link is listed on both sides.
///
/// Relatives lists must already be sorted (as `parse_relatives` leaves them),
/// so each back-link is a binary search: O(L log d) for L links.
pub fn check_import(citizens: &[Citizen]) -> Result<(), ValidationError> {
    let mut index = HashMap::with_capacity(citizens.len());
    for (i, citizen) in citizens.iter().enumerate() {
        if index.insert(citizen.citizen_id, i).is_some() {
            return Err(ValidationError::new(
                format!("citizens[{i}].citizen_id"),
                Some(citizen.citizen_id),
                Reason::DuplicateCitizen(citizen.citizen_id),
            ));
        }
    }
    for (i, citizen) in citizens.iter().enumerate() {
        let this = citizen.citizen_id;
        let error =
            |reason| ValidationError::new(format!("citizens[{i}].relatives"), Some(this), reason);
        for &other in &citizen.relatives {
            let Some(&j) = index.get(&other) else {
                return Err(error(Reason::UnknownRelative(other)));
            };
            if citizens[j].relatives.binary_search(&this).is_err() {
                return Err(error(Reason::NotSymmetric { this, other }));
            }
        }
    }
    Ok(())
}

/// A change to another citizen's list that keeps the relation symmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// Add this id to the list.
    Add(CitizenId),
    /// Remove this id from the list.
    Remove(CitizenId),
}

impl Edit {
    /// Applies the edit to an ascending list, keeping it ascending and unique.
    pub fn apply(self, list: &mut Vec<CitizenId>) {
        match self {
            Edit::Add(id) => {
                if let Err(at) = list.binary_search(&id) {
                    list.insert(at, id);
                }
            }
            Edit::Remove(id) => {
                if let Ok(at) = list.binary_search(&id) {
                    list.remove(at);
                }
            }
        }
    }
}

/// The edits to other citizens' lists when `me` replaces its list `old` by `new`
/// (both ascending): the dropped lose `me`, the added gain `me`. `me` itself is
/// never in the result; its own list is simply replaced by `new`.
pub fn mirror_edits(me: CitizenId, old: &[CitizenId], new: &[CitizenId]) -> Vec<(CitizenId, Edit)> {
    let mut edits = Vec::new();
    let (mut i, mut j) = (0, 0);
    // A merge of two sorted lists: O(old + new).
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(&a), Some(&b)) if a < b => {
                edits.push((a, Edit::Remove(me)));
                i += 1;
            }
            (Some(&a), None) => {
                edits.push((a, Edit::Remove(me)));
                i += 1;
            }
            (_, Some(&b)) => {
                edits.push((b, Edit::Add(me)));
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    edits.retain(|(other, _)| *other != me);
    edits
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    pub(crate) fn id(n: u64) -> CitizenId {
        CitizenId::parse(n).unwrap()
    }

    pub(crate) fn ids(ns: &[u64]) -> Vec<CitizenId> {
        ns.iter().copied().map(id).collect()
    }

    #[test]
    fn relatives_lists_are_sorted_and_duplicates_rejected() {
        assert_eq!(parse_relatives(vec![3, 1, 2]), Ok(ids(&[1, 2, 3])));
        assert_eq!(
            parse_relatives(vec![3, 1, 3]),
            Err(Reason::DuplicateRelative(id(3)))
        );
        assert_eq!(
            parse_relatives(vec![u64::MAX]),
            Err(Reason::OutOfRange(u64::MAX))
        );
    }

    #[test]
    fn mirror_edits_follow_the_spec_example() {
        // Import [1↔2, 3 alone]; 3 takes [1], then drops it.
        assert_eq!(
            mirror_edits(id(3), &[], &ids(&[1])),
            vec![(id(1), Edit::Add(id(3)))]
        );
        assert_eq!(
            mirror_edits(id(3), &ids(&[1]), &[]),
            vec![(id(1), Edit::Remove(id(3)))]
        );
    }

    #[test]
    fn mirror_edits_skip_the_citizen_itself() {
        assert_eq!(mirror_edits(id(2), &ids(&[1]), &ids(&[2])), {
            vec![(id(1), Edit::Remove(id(2)))]
        });
    }

    #[test]
    fn mirror_edits_touch_only_the_citizens_whose_link_changes() {
        assert_eq!(mirror_edits(id(9), &ids(&[1, 2]), &ids(&[1, 2])), vec![]);
        assert_eq!(
            mirror_edits(id(9), &ids(&[3]), &ids(&[1, 3])),
            vec![(id(1), Edit::Add(id(9)))]
        );
        assert_eq!(
            mirror_edits(id(9), &ids(&[1, 3, 5]), &ids(&[2, 3, 6])),
            vec![
                (id(1), Edit::Remove(id(9))),
                (id(2), Edit::Add(id(9))),
                (id(5), Edit::Remove(id(9))),
                (id(6), Edit::Add(id(9))),
            ]
        );
        assert_eq!(
            mirror_edits(id(9), &ids(&[4, 7]), &ids(&[1])),
            vec![
                (id(1), Edit::Add(id(9))),
                (id(4), Edit::Remove(id(9))),
                (id(7), Edit::Remove(id(9))),
            ]
        );
        assert_eq!(
            mirror_edits(id(9), &ids(&[1, 9]), &ids(&[9])),
            vec![(id(1), Edit::Remove(id(9)))]
        );
    }

    /// The model: the relation as a set of unordered pairs.
    type Model = BTreeSet<(u64, u64)>;

    fn pair(a: u64, b: u64) -> (u64, u64) {
        (a.min(b), a.max(b))
    }

    proptest! {
        #[test]
        fn random_patch_sequences_keep_lists_symmetric_and_equal_to_the_model(
            patches in prop::collection::vec(
                (0u64..8, prop::collection::btree_set(0u64..8, 0..6)),
                1..40,
            )
        ) {
            let mut graph: BTreeMap<u64, Vec<CitizenId>> = (0..8).map(|n| (n, Vec::new())).collect();
            let mut model = Model::new();
            for (me, new) in patches {
                let new: Vec<CitizenId> = new.into_iter().map(id).collect();
                let old = graph[&me].clone();
                for (other, edit) in mirror_edits(id(me), &old, &new) {
                    edit.apply(graph.get_mut(&other.get()).unwrap());
                }
                graph.insert(me, new.clone());
                model.retain(|&(a, b)| a != me && b != me);
                model.extend(new.iter().map(|r| pair(me, r.get())));

                let from_graph: Model = graph
                    .iter()
                    .flat_map(|(&a, list)| list.iter().map(move |b| pair(a, b.get())))
                    .collect();
                prop_assert_eq!(&from_graph, &model);
                for (&a, list) in &graph {
                    prop_assert!(list.windows(2).all(|w| w[0] < w[1]), "list of {} not ascending", a);
                    for b in list {
                        prop_assert!(graph[&b.get()].contains(&id(a)), "{} lists {} but not back", a, b);
                    }
                }
            }
        }
    }
}
