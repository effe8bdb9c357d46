//! Citizens, imports and the answers expected of them.

use serde_json::{Value, json};

/// A valid citizen with the given id and relatives; tests override fields.
pub fn citizen(id: u64, relatives: &[u64]) -> Value {
    crate::support::shapes::citizen(id, relatives, Value::Null)
}

/// `citizen` with some fields replaced.
pub fn citizen_with(id: u64, relatives: &[u64], fields: Value) -> Value {
    assert!(fields.is_object(), "fields must be an object");
    crate::support::shapes::citizen(id, relatives, fields)
}

/// The contract's example import (docs/example-import.json): 1↔2 in Москва, 3 alone in Керчь.
pub fn spec_example() -> Vec<Value> {
    vec![
        json!({"citizen_id": 1, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5",
               "apartment": 7, "name": "Иванов Иван Иванович", "birth_date": "26.12.1986",
               "gender": "male", "relatives": [2]}),
        json!({"citizen_id": 2, "town": "Москва", "street": "Льва Толстого", "building": "16к7стр5",
               "apartment": 7, "name": "Иванов Сергей Иванович", "birth_date": "01.04.1997",
               "gender": "male", "relatives": [1]}),
        json!({"citizen_id": 3, "town": "Керчь", "street": "Иосифа Бродского", "building": "2",
               "apartment": 11, "name": "Романова Мария Леонидовна", "birth_date": "23.11.1986",
               "gender": "female", "relatives": []}),
    ]
}

/// Today's date in UTC, as the service sees it.
pub fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// A date in the wire form `DD.MM.YYYY`.
pub fn wire_date(date: time::Date) -> String {
    format!(
        "{:02}.{:02}.{:04}",
        date.day(),
        date.month() as u8,
        date.year()
    )
}

/// `n` citizens with `links` symmetric relative links between distinct
/// citizens, in shuffled order, relatives unsorted (the benchmark's generator).
pub fn generate_import(n: u64, links: usize, seed: u64) -> Vec<Value> {
    gifts::sample::import(n, links, seed)
        .into_iter()
        .map(|c| serde_json::to_value(c).expect("plain data"))
        .collect()
}

/// Panics unless every relative in `listing` (a GET citizens answer) lists
/// the citizen back; `what` names the import in the message.
pub fn assert_relatives_symmetric(listing: &[Value], what: &str) {
    let graph: std::collections::BTreeMap<u64, Vec<u64>> = listing
        .iter()
        .map(|c| {
            let relatives = c["relatives"].as_array().expect("relatives");
            (
                c["citizen_id"].as_u64().expect("citizen_id"),
                relatives
                    .iter()
                    .map(|r| r.as_u64().expect("an id"))
                    .collect(),
            )
        })
        .collect();
    for (me, list) in &graph {
        for other in list {
            assert!(
                graph.get(other).is_some_and(|back| back.contains(me)),
                "{what}: {me} lists {other}, not back: {graph:?}"
            );
        }
    }
}

/// What GET citizens must return for an import body: ordered by id, relatives ascending.
pub fn expected_listing(citizens: &[Value]) -> Vec<Value> {
    let mut expected: Vec<Value> = citizens.to_vec();
    expected.sort_by_key(|c| c["citizen_id"].as_u64().unwrap());
    for c in &mut expected {
        let mut r: Vec<u64> = c["relatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        r.sort_unstable();
        c["relatives"] = json!(r);
    }
    expected
}
