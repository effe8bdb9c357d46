//! The stored procedures of `tarantool/app.lua` called directly, as the
//! app's user and as a guest: what they grant, refuse, page and batch.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use gifts::storage::iproto::CallError;

use super::client_as;
use crate::helpers::{Backend, TestApp, spec_example, tarantool_available};

pub(super) const NO_ARGS: [u8; 0] = [];
/// No summary rows (presents, town births).
pub(super) const NO_ROWS: [u8; 0] = [];
pub(super) const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_user_may_only_call_our_functions_and_guests_nothing() {
    if !tarantool_available("permissions") {
        return;
    }
    // Starting an app waits until app.lua has created the schema and the user.
    let app = TestApp::spawn(Backend::Tarantool).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let (version, largest_tuple, pending): (u64, u64, u64) =
        gifts.call("gifts_health", &NO_ARGS, WAIT).await.unwrap();
    assert!(version > 0);
    assert_eq!(pending, 0, "no import waits for its summary");
    assert_eq!(largest_tuple, 256 << 20, "app.lua's default");
    for function in [
        "box.space.citizens:truncate",
        "box.space.imports:select",
        "dofile",
    ] {
        let denied = gifts.call::<_, (bool,)>(function, &NO_ARGS, WAIT).await;
        assert!(
            matches!(denied, Err(CallError::Server { code: 42, .. })),
            "{function}: {denied:?}"
        );
    }

    // Guests get no session at all: not even the defaults' box.schema.user.info
    // or reads of system views.
    let guest = client_as(&app.store, "guest", "");
    for function in [
        "gifts_health",
        "box.schema.user.info",
        "box.space._vspace:select",
    ] {
        let denied = guest
            .call::<_, (serde_json::Value,)>(function, &NO_ARGS, WAIT)
            .await;
        assert!(
            matches!(denied, Err(CallError::Server { code: 42, .. })),
            "guest {function}: {denied:?}"
        );
    }
}

/// A citizen tuple as gifts_create_import takes it.
pub(super) fn row(
    id: u64,
    relatives: &[u64],
) -> (
    u8,
    u64,
    &'static str,
    &'static str,
    &'static str,
    u64,
    &'static str,
    &'static str,
    &'static str,
    Vec<u64>,
) {
    (
        0,
        id,
        "Москва",
        "Улица",
        "1",
        1,
        "Имя",
        "2000-01-01",
        "male",
        relatives.to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_procedures_refuse_data_that_breaks_the_relation() {
    if !tarantool_available("procedures_check_invariants") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let import = app.import(spec_example()).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let none: Option<&str> = None;
    for (why, rows) in [
        ("one-sided", vec![row(1, &[2]), row(2, &[])]),
        ("unknown relative", vec![row(1, &[9])]),
        (
            "not ascending",
            vec![row(1, &[3, 2]), row(2, &[1]), row(3, &[1])],
        ),
        ("listed twice", vec![row(1, &[2, 2]), row(2, &[1])]),
        ("citizen twice", vec![row(1, &[]), row(1, &[])]),
    ] {
        let (status, reason): (String, serde_json::Value) = gifts
            .call(
                "gifts_create_import",
                &(rows, NO_ROWS, NO_ROWS, none, none),
                WAIT,
            )
            .await
            .unwrap();
        assert_eq!(status, "invalid", "{why}: {reason}");
    }
    let (status, _, _, _, reason): (
        String,
        Option<serde_json::Value>,
        Option<u64>,
        Option<u64>,
        Option<String>,
    ) = gifts
        .call(
            "gifts_patch_citizen",
            &(
                import,
                3,
                std::collections::BTreeMap::<String, String>::new(),
                vec![2u64, 1],
            ),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(status, "invalid", "{reason:?}");
    assert_eq!(
        app.import(vec![]).await,
        import + 1,
        "no refused import was stored"
    );
    assert_eq!(
        app.citizens(import).await,
        spec_example(),
        "nothing changed"
    );
}

pub(super) type PatchAnswer = (
    String,
    Option<serde_json::Value>,
    Option<u64>,
    Option<u64>,
    Option<String>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_patches_answers_each_and_a_refused_one_leaves_the_others() {
    if !tarantool_available("patch_batch") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let import = app.import(spec_example()).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let name = |n: &str| std::collections::BTreeMap::from([("name".to_owned(), n.to_owned())]);
    let no_change = std::collections::BTreeMap::<String, String>::new();
    let none: Option<Vec<u64>> = None;
    let (answers,): (Vec<PatchAnswer>,) = gifts
        .call(
            "gifts_patch_batch",
            &((
                (import, 3, no_change.clone(), Some(vec![1u64])),
                (import, 2, name("Б"), Some(vec![1u64, 9])), // 9 is not in the import
                (import, 9, name("В"), none.clone()),        // nor is citizen 9
                (import, 2, name("Г"), none.clone()),
            ),),
            WAIT,
        )
        .await
        .unwrap();
    let statuses: Vec<(&str, Option<u64>, Option<u64>)> = answers
        .iter()
        .map(|(status, _, relative, version, _)| (status.as_str(), *relative, *version))
        .collect();
    assert_eq!(
        statuses,
        [
            ("ok", None, Some(2)),
            ("unknown_relative", Some(9), None),
            ("citizen_not_found", None, None),
            ("ok", None, Some(3)),
        ],
        "each in order, versions one by one"
    );
    let listing = app.citizens(import).await;
    assert_eq!(listing[0]["relatives"], json!([2, 3]), "3's PATCH mirrored");
    assert_eq!(listing[1]["name"], "Г");
    assert_eq!(
        listing[1]["relatives"],
        json!([1]),
        "the refused one wrote nothing"
    );
}

/// The app reads an import's rows itself (IPROTO `SELECT`, no Lua):
/// `gifts_read_version` gives the import's version and the space's id, for
/// the three spaces of rows only; the app's user may read those three spaces
/// and no other; a page after a key runs on into the next import (the app
/// stops at its own); a PATCH shows in the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reads_rows_of_four_spaces_directly_with_the_version() {
    if !tarantool_available("direct_reads") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let import = app.import(spec_example()).await;
    let other = app.import(spec_example()).await;
    let key = import.unsigned_abs();
    let gifts = client_as(&app.store, "gifts", "test-password");
    type Version = (Option<u64>, Option<u32>);
    let read_version = |space: &'static str, import: i64| {
        let gifts = &gifts;
        async move {
            gifts
                .call::<_, Version>("gifts_read_version", &(space, import), WAIT)
                .await
        }
    };
    let (version, citizens) = read_version("citizens", import).await.unwrap();
    assert_eq!(version, Some(1));
    let citizens = citizens.expect("the space's id");
    type Rows = Vec<serde_json::Value>;
    let first: Rows = gifts
        .select(citizens, &(key,), false, 2, WAIT)
        .await
        .unwrap();
    // (import_id, citizen_id) of each row.
    let ids = |rows: &Rows| -> Vec<(i64, u64)> {
        rows.iter()
            .map(|r| (r[0].as_i64().unwrap(), r[1].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(ids(&first), [(import, 1), (import, 2)]);
    let next: Rows = gifts
        .select(citizens, &(key, 2u64), true, 3, WAIT)
        .await
        .unwrap();
    assert_eq!(ids(&next), [(import, 3), (other, 1), (other, 2)]);

    let (status, _) = app.patch(import, 3, &json!({"name": "Новое"})).await;
    assert_eq!(status, StatusCode::OK);
    let (version, _) = read_version("citizens", import).await.unwrap();
    assert_eq!(version, Some(2), "the PATCH shows");
    let mut readable = vec![citizens];
    for space in ["presents", "town_years", "town_picks"] {
        let (version, id) = read_version(space, import).await.unwrap();
        assert_eq!(version, Some(2), "{space}");
        readable.push(id.expect("the space's id"));
    }
    assert_eq!(read_version("citizens", 9_999).await.unwrap(), (None, None));
    for refused in [
        read_version("_user", import).await,
        read_version("imports", import).await,
    ] {
        assert!(
            matches!(refused, Err(CallError::Server { .. })),
            "{refused:?}"
        );
    }
    // Every other space of the app's (ids from 512 on: imports, idempotency
    // keys, meta, ...), and the system's users and spaces, are closed to
    // the app's user.
    for space in [280, 304]
        .into_iter()
        .chain(512..540)
        .filter(|id| !readable.contains(id))
    {
        let denied = gifts
            .select::<_, Rows>(space, &(key,), false, 1, WAIT)
            .await;
        assert!(
            matches!(denied, Err(CallError::Server { code: 36 | 42, .. })),
            "space {space}: {denied:?}"
        );
    }
    // Read through the app, the import is whole.
    assert_eq!(app.citizens(import).await.len(), 3);
}

/// A stored string of bytes, by its length (Tarantool gives back a Lua
/// string as a msgpack `str`, whatever its bytes).
struct Blob(usize);

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Length;
        impl serde::de::Visitor<'_> for Length {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string of bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.len()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Blob, E> {
                Ok(Blob(v.len()))
            }
        }
        deserializer.deserialize_bytes(Length)
    }
}

/// Towns' picks (schema 9): not known ('') after an import; kept by the
/// first percentiles read with nothing cached; not known again in the towns
/// a PATCH moves a birth out of and into, the others kept; gone with a
/// town's last citizen. `gifts_put_picks` keeps nothing for a version that
/// has moved on. Every answer is exact throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towns_picks_are_kept_by_a_read_and_forgotten_by_a_birth_that_moves() {
    if !tarantool_available("town_picks") {
        return;
    }
    let app = TestApp::spawn_with(Backend::Tarantool, |config| {
        config.cache_bytes = gifts::config::ByteSize(0);
    })
    .await;
    let import = app.import(spec_example()).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let (_, space): (Option<u64>, Option<u32>) = gifts
        .call("gifts_read_version", &("town_picks", import), WAIT)
        .await
        .unwrap();
    let space = space.expect("the space's id");
    // (town, picks known) of each of the import's rows.
    let picks = || async {
        let rows: Vec<(u64, String, Blob)> = gifts
            .select(space, &(import.unsigned_abs(),), false, 10, WAIT)
            .await
            .unwrap();
        rows.into_iter()
            .filter(|row| row.0 == import.unsigned_abs())
            .map(|(_, town, Blob(bytes))| (town, bytes > 0))
            .collect::<Vec<_>>()
    };
    let known = |moscow: bool, kerch: bool| {
        vec![("Керчь".to_owned(), kerch), ("Москва".to_owned(), moscow)]
    };
    assert_eq!(picks().await, known(false, false), "after the import");
    crate::analytics::assert_answers_exact(&app, import).await;
    assert_eq!(picks().await, known(true, true), "after a read");

    let (status, body) = app
        .patch(import, 1, &json!({"birth_date": "01.01.1950"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(picks().await, known(false, true), "a birth moved in Москва");
    // Picks computed at the version before the PATCH are not kept.
    let kept: (bool,) = gifts
        .call(
            "gifts_put_picks",
            &(import, 1, [("Москва", "8 bytes!")]),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(kept, (false,));
    assert_eq!(picks().await, known(false, true));
    crate::analytics::assert_answers_exact(&app, import).await;
    assert_eq!(picks().await, known(true, true));

    let (status, body) = app.patch(import, 3, &json!({"town": "Москва"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        picks().await,
        vec![("Москва".to_owned(), false)],
        "Керчь has no one"
    );
    crate::analytics::assert_answers_exact(&app, import).await;
    assert_eq!(picks().await, vec![("Москва".to_owned(), true)]);
}

/// A PATCH that fails inside Tarantool (raises: a fault, not a refusal) is
/// taken back alone: the PATCHes before and after it in the same batch
/// stand (a failure used to roll the whole batch back, failing other
/// clients' PATCHes with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_that_fails_in_a_batch_is_taken_back_alone() {
    if !tarantool_available("patch_batch_failure") {
        return;
    }
    let app = TestApp::spawn(Backend::Tarantool).await;
    let import = app.import(spec_example()).await;
    let gifts = client_as(&app.store, "gifts", "test-password");
    let field = |k: &str, v: &str| std::collections::BTreeMap::from([(k.to_owned(), v.to_owned())]);
    let none: Option<Vec<u64>> = None;
    let (answers,): (Vec<PatchAnswer>,) = gifts
        .call(
            "gifts_patch_batch",
            &((
                (import, 1, field("name", "А"), none.clone()),
                // Mirrors 2 onto 3, then fails on the text apartment.
                (import, 2, field("apartment", "x"), Some(vec![1u64, 3])),
                (import, 3, field("name", "В"), none.clone()),
            ),),
            WAIT,
        )
        .await
        .unwrap();
    let statuses: Vec<(&str, Option<u64>)> = answers
        .iter()
        .map(|(status, _, _, version, _)| (status.as_str(), *version))
        .collect();
    assert_eq!(
        statuses,
        [("ok", Some(2)), ("error", None), ("ok", Some(3))],
        "{answers:?}"
    );
    assert!(
        answers[1].4.as_deref().unwrap_or("").contains("field 6"),
        "the reason names the fault: {:?}",
        answers[1].4
    );
    let listing = app.citizens(import).await;
    assert_eq!(listing[0]["name"], "А");
    assert_eq!(listing[1]["relatives"], json!([1]), "2 is as it was");
    assert_eq!(listing[1]["apartment"], 7);
    assert_eq!(
        listing[2]["relatives"],
        json!([]),
        "the mirroring onto 3 was taken back"
    );
    assert_eq!(listing[2]["name"], "В");
}
