//! Valid imports bigger and stranger than everyday ones, which the contract
//! allows (no bound on relatives per citizen, distinct dates per town, or
//! characters in a string), each with PATCHes of it: the big-shape test
//! (`tests/api/shapes.rs`) and the benchmark's `--shapes` run them.

use serde_json::{Value, json};

/// One shape: an import, then PATCHes of it (citizen id, body).
pub struct Shape {
    /// What it is, as reports name it.
    pub name: &'static str,
    /// The import's citizens.
    pub citizens: Vec<Value>,
    /// PATCHes of the import once stored: citizen id, body.
    pub patches: Vec<(u64, Value)>,
}

/// A valid citizen (the tests' `helpers::citizen`), with `fields` (an
/// object, or null for none) replacing the defaults.
pub fn citizen(id: u64, relatives: &[u64], fields: Value) -> Value {
    let mut c = json!({
        "citizen_id": id,
        "town": "Москва",
        "street": "Льва Толстого",
        "building": "16к7стр5",
        "apartment": 7,
        "name": format!("Житель {id}"),
        "birth_date": "26.12.1986",
        "gender": "male",
        "relatives": relatives,
    });
    if let Value::Object(fields) = fields {
        for (k, v) in fields {
            c[k] = v;
        }
    }
    c
}

/// The `n`th day from 01.01.1600 as `DD.MM.YYYY` (day 140,000 is in 1983).
fn day(n: u64) -> String {
    let first = time::Date::from_calendar_date(1600, time::Month::January, 1).expect("a date");
    let d = first + time::Duration::days(i64::try_from(n).expect("small"));
    format!("{:02}.{:02}.{:04}", d.day(), d.month() as u8, d.year())
}

/// The four shapes.
pub fn big_shapes() -> Vec<Shape> {
    // A citizen related to 20,000 others.
    let n = 20_000u64;
    let mut hub = vec![citizen(0, &(1..=n).collect::<Vec<_>>(), Value::Null)];
    hub.extend((1..=n).map(|id| citizen(id, &[0], Value::Null)));

    // 140,000 citizens of one town, each born on a day of its own; the
    // PATCHes add more distinct dates (Tarantool kept a town's dates in one
    // tuple, which could not pass ~131,000 of them), and move one away.
    let n = 140_000u64;
    let dates = (0..n)
        .map(|id| citizen(id, &[], json!({"town": "Город", "birth_date": day(id)})))
        .collect();
    let mut date_patches: Vec<(u64, Value)> = (0..20)
        .map(|i| (i * 7_000, json!({"birth_date": day(n + i)})))
        .collect();
    date_patches.push((1, json!({"town": "Другой город"})));

    // 120,000 citizens with ids near 2^63, one related to all the others:
    // a list of 119,999 ids of 19 digits.
    let top = (1u64 << 63) - 1;
    let n = 120_000u64;
    let mut near = vec![citizen(
        top,
        &((top - n + 1)..top).collect::<Vec<_>>(),
        Value::Null,
    )];
    near.extend(((top - n + 1)..top).map(|id| citizen(id, &[top], Value::Null)));

    // NUL (and other control characters) in every string field.
    let odd = |id: u64, relatives: &[u64]| {
        citizen(
            id,
            relatives,
            json!({
                "town": "Го\u{0}род",
                "street": "\u{0}улица\u{1}",
                "building": "1\u{0}",
                "name": format!("Имя\u{0}{id}\u{1b}"),
            }),
        )
    };

    vec![
        Shape {
            name: "a hub of 20,000",
            citizens: hub,
            patches: vec![
                (0, json!({"relatives": (2..=20_000u64).collect::<Vec<_>>()})),
                (1, json!({"relatives": [0, 2]})),
                (5, json!({"birth_date": "01.03.2001"})),
            ],
        },
        Shape {
            name: "140,000 distinct dates in a town",
            citizens: dates,
            patches: date_patches,
        },
        Shape {
            name: "119,999 relatives with ids near 2^63",
            citizens: near,
            patches: vec![
                (top - 1, json!({"relatives": []})),
                // All but ten, and itself: a body of 2.3 MB.
                (
                    top,
                    json!({"relatives": ((top - n + 11)..=top).collect::<Vec<_>>()}),
                ),
                (top - 2, json!({"birth_date": "29.02.2000"})),
                // Three PATCHes that each mirror about 120,000 relatives
                // (Tarantool writes them in steps): the hub's birth month
                // moves every relative's presents, then it drops them all,
                // then takes them all back.
                (top, json!({"birth_date": "15.07.1990"})),
                (top, json!({"relatives": []})),
                (
                    top,
                    json!({"relatives": ((top - n + 1)..top).collect::<Vec<_>>()}),
                ),
            ],
        },
        Shape {
            name: "NUL in every string",
            citizens: vec![odd(1, &[2]), odd(2, &[1]), odd(3, &[3])],
            patches: vec![
                (1, json!({"name": "\u{0}Я", "town": "Я\u{0}"})),
                (3, json!({"street": "a\u{0}b", "relatives": [1]})),
            ],
        },
    ]
}
