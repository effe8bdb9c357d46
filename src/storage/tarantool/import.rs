//! Storing an import: one call, or a big or heavy one in chunks (begin,
//! runs of citizens with their summary rows, commit), each call bounded by
//! the work it makes Tarantool do.

use super::TarantoolStorage;
use super::connection::Kind;
use super::tuples::{Dates, IdOrReason, NewCitizen};
use crate::domain::summary::{self, PresentsRow, Summary};
use crate::domain::{Citizen, ImportId};
use crate::storage::{StorageError, Upload};

/// Work per Tarantool call that stores a chunk of a big import: a stored
/// row (a citizen, a presents row, a town years row) counts [`ROW`], each
/// relative in a citizen's list and each date in a town years row one. Tarantool runs one transaction at a
/// time, so this bounds how long an import holds other clients up: 5,000
/// rows are about 10-20 ms of it (docs/storage.md has the measurements).
pub(super) const CALL_WORK: usize = 50_000;

/// The most work an import stored by one call may take: the size the
/// service is tuned for (10,000 citizens, 1,000 links, about 22,000 rows)
/// holds Tarantool about 50 ms that way, and is stored twice as fast as in
/// chunks.
pub(super) const ONE_CALL_WORK: usize = 250_000;

/// A stored row's share of [`CALL_WORK`].
pub(super) const ROW: usize = 10;

/// Runs of citizens, each of at most `most` citizens and [`CALL_WORK`]
/// (a citizen heavier than that on its own).
pub(super) fn runs<'a>(
    citizens: &'a [Citizen],
    summary: &SummaryRows,
    most: usize,
) -> Vec<&'a [Citizen]> {
    let mut out = Vec::new();
    let (mut start, mut load) = (0, 0);
    for (i, citizen) in citizens.iter().enumerate() {
        let w = summary.work(citizen);
        if i > start && (i - start == most || load + w > CALL_WORK) {
            out.push(&citizens[start..i]);
            start = i;
            load = 0;
        }
        load += w;
    }
    if start < citizens.len() {
        out.push(&citizens[start..]);
    }
    out
}

/// An import's summary as `tarantool/app.lua` takes it: presents rows
/// ordered by citizen (so a run of citizens finds its own), and town
/// years rows ([`BirthsRow`]).
pub(super) struct SummaryRows {
    pub(super) presents: Vec<PresentsRow>,
    pub(super) births: Vec<BirthsRow>,
}

/// A town years row: town, `yyyy`, and the dates of that year on which
/// citizens of the town were born, with how many, as
/// [`summary::encode_dates`] encodes them (`tarantool/gifts/schema.lua`).
pub(super) type BirthsRow = (String, u32, Dates);

/// A town years row's share of [`CALL_WORK`]: a stored row, and a date each.
pub(super) fn births_work(row: &BirthsRow) -> usize {
    ROW + row.2.0.len() / summary::ENTRY
}

/// Town years rows in calls: the first holds what fits in `room` (it may
/// be empty: it goes with a call of citizens), each other one at most
/// [`CALL_WORK`] (and at least one row).
pub(super) fn births_calls(births: &[BirthsRow], room: usize) -> Vec<&[BirthsRow]> {
    let mut out = Vec::new();
    let (mut start, mut load, mut room) = (0, 0, room);
    for (i, row) in births.iter().enumerate() {
        let w = births_work(row);
        // A row that does not fit ends the call, unless it would be the
        // first of a call of its own: a row heavier than a call goes alone.
        if load + w > room && (i > start || out.is_empty()) {
            out.push(&births[start..i]);
            start = i;
            load = 0;
            room = CALL_WORK;
        }
        load += w;
    }
    out.push(&births[start..]);
    out
}

/// What one `gifts_import_chunk` call stores: citizens, their presents
/// rows, town years rows.
pub(super) type Chunk<'a> = (Vec<NewCitizen<'a>>, Vec<PresentsRow>, &'a [BirthsRow]);

impl SummaryRows {
    /// The rows of `citizens`' summary ([`Summary::parts`]).
    pub(super) fn of(citizens: &[Citizen]) -> Self {
        let (mut presents, towns) = Summary::parts(citizens);
        presents.sort_unstable_by_key(|&(month, citizen, _)| (citizen, month));
        let mut births: Vec<BirthsRow> = Vec::new();
        for (town, dates) in towns {
            let yyyy = |&(date, _): &(_, u32)| summary::date_key(date) / 10_000;
            for year in dates.chunk_by(|a, b| yyyy(a) == yyyy(b)) {
                births.push((
                    town.clone(),
                    yyyy(&year[0]),
                    Dates(summary::encode_dates(year)),
                ));
            }
        }
        Self { presents, births }
    }

    /// [`SummaryRows::of`], off the async worker threads for a big import.
    pub(super) async fn of_import(
        citizens: Vec<Citizen>,
    ) -> Result<(Vec<Citizen>, Self), StorageError> {
        crate::storage::by_size(citizens.len(), move || {
            let rows = Self::of(&citizens);
            (citizens, rows)
        })
        .await
    }

    /// A citizen's presents rows.
    pub(super) fn presents_of_one(&self, citizen: &Citizen) -> &[PresentsRow] {
        let id = citizen.citizen_id;
        let from = self.presents.partition_point(|row| row.1 < id);
        let to = from + self.presents[from..].partition_point(|row| row.1 == id);
        &self.presents[from..to]
    }

    /// The presents rows of `run`'s citizens.
    pub(super) fn presents_of(&self, run: &[Citizen]) -> Vec<PresentsRow> {
        run.iter()
            .flat_map(|c| self.presents_of_one(c).iter().copied())
            .collect()
    }

    /// A citizen's share of [`CALL_WORK`]: its row, its presents rows and
    /// its relatives.
    pub(super) fn work(&self, citizen: &Citizen) -> usize {
        ROW * (1 + self.presents_of_one(citizen).len()) + citizen.relatives.len()
    }
}

impl TarantoolStorage {
    /// Stores a big import in chunks: begin, runs of citizens with their
    /// presents rows, the town years rows, commit.
    pub(super) async fn create_in_chunks<'a>(
        &self,
        citizens: &'a [Citizen],
        summary: &'a SummaryRows,
        upload: &Upload,
    ) -> Result<ImportId, StorageError> {
        let c = &self.connection;
        let key = upload.key.as_deref();
        let digest = hex::encode(upload.digest);
        let hash = key.map(|_| &digest);
        let (status, value): (String, IdOrReason) = c
            .call(
                "gifts_import_begin",
                &(key, hash, &upload.name, &digest),
                Kind::Write,
            )
            .await?;
        let import = match import_answer("gifts_import_begin", &status, value, key)? {
            Begun::New(import) => import,
            Begun::Existing(import) => return Ok(import),
        };
        let mut chunks: Vec<Chunk<'a>> = Vec::new();
        let mut room = 0;
        for run in runs(citizens, summary, self.import_chunk) {
            let rows = run.iter().map(NewCitizen::of).collect();
            let load: usize = run.iter().map(|c| summary.work(c)).sum();
            room = CALL_WORK.saturating_sub(load);
            chunks.push((rows, summary.presents_of(run), &[]));
        }
        // The town years rows: what room the last run leaves, then calls of their own.
        let mut calls = births_calls(&summary.births, room).into_iter();
        if let (Some(last), Some(with_last)) = (chunks.last_mut(), calls.next()) {
            last.2 = with_last;
        }
        chunks.extend(
            calls
                .filter(|births| !births.is_empty())
                .map(|births| (Vec::new(), Vec::new(), births)),
        );
        // Two chunks in flight: Tarantool runs the second's transaction
        // while the first's is written to its WAL (and other clients'
        // requests between them), and one fsync may cover both.
        let send = |(rows, presents, births): Chunk<'a>| async move {
            let (status, reason): (String, Option<String>) = c
                .call(
                    "gifts_import_chunk",
                    &(import, rows, presents, births),
                    Kind::Write,
                )
                .await?;
            if status == "ok" {
                Ok(())
            } else {
                Err(StorageError::internal(format!(
                    "gifts_import_chunk refused import {import}: {status} {reason:?}"
                )))
            }
        };
        let mut chunks = chunks.into_iter();
        while let Some(first) = chunks.next() {
            match chunks.next() {
                Some(second) => {
                    let (a, b) = tokio::join!(send(first), send(second));
                    a?;
                    b?;
                }
                None => send(first).await?,
            }
        }
        let (status, value): (String, IdOrReason) = c
            .call("gifts_import_commit", &(import, key, hash), Kind::Write)
            .await?;
        match import_answer("gifts_import_commit", &status, value, key)? {
            Begun::New(import) | Begun::Existing(import) => Ok(import),
        }
    }
}

/// What an import procedure answered: a new import, or the idempotency key's.
pub(super) enum Begun {
    New(ImportId),
    Existing(ImportId),
}

pub(super) fn import_answer(
    function: &str,
    status: &str,
    value: IdOrReason,
    key: Option<&str>,
) -> Result<Begun, StorageError> {
    let id = |v: IdOrReason| match v {
        IdOrReason::Id(id) => ImportId::try_from(id).map_err(StorageError::internal),
        _ => Err(StorageError::internal(format!(
            "{function} answered {status} without an id"
        ))),
    };
    match status {
        "ok" => id(value).map(Begun::New),
        "same" => id(value).map(Begun::Existing),
        "key_reused" => Err(StorageError::KeyReused {
            key: key.unwrap_or_default().to_owned(),
            import: id(value)?,
        }),
        other => {
            let reason = match value {
                IdOrReason::Reason(r) => r,
                _ => String::new(),
            };
            Err(StorageError::internal(format!(
                "{function} refused the import: {other} {reason}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Apartment, BirthDate, CitizenId, Gender, Name, Place};

    fn citizen(id: u64, town: &str, (y, m, d): (i32, u8, u8)) -> Citizen {
        Citizen {
            citizen_id: CitizenId::parse(id).unwrap(),
            town: Place::parse(town.into()).unwrap(),
            street: Place::parse("Льва Толстого".into()).unwrap(),
            building: Place::parse("16к7стр5".into()).unwrap(),
            apartment: Apartment::parse(7).unwrap(),
            name: Name::parse("Иванов Иван Иванович".into()).unwrap(),
            birth_date: BirthDate::from_ymd(y, m, d).unwrap(),
            gender: Gender::parse("male").unwrap(),
            relatives: Vec::new(),
        }
    }

    #[test]
    fn a_town_years_row_holds_the_town_s_dates_of_one_year_in_order() {
        let citizens = [
            citizen(1, "Москва", (1986, 12, 31)),
            citizen(2, "Керчь", (2000, 2, 29)),
            citizen(3, "Москва", (1986, 1, 1)),
            citizen(4, "Москва", (1987, 1, 1)),
            citizen(5, "Москва", (1986, 12, 31)),
            citizen(6, "Керчь", (2000, 3, 1)),
        ];
        let rows = SummaryRows::of(&citizens);
        let date = |y, m, d| BirthDate::from_ymd(y, m, d).unwrap();
        let year = |dates: &[(BirthDate, u32)]| Dates(summary::encode_dates(dates));
        let expected: Vec<BirthsRow> = vec![
            (
                "Керчь".into(),
                2000,
                year(&[(date(2000, 2, 29), 1), (date(2000, 3, 1), 1)]),
            ),
            (
                "Москва".into(),
                1986,
                year(&[(date(1986, 1, 1), 1), (date(1986, 12, 31), 2)]),
            ),
            ("Москва".into(), 1987, year(&[(date(1987, 1, 1), 1)])),
        ];
        assert_eq!(rows.births, expected);
    }

    #[test]
    fn town_years_rows_go_in_calls_of_bounded_work_each_row_once() {
        let row = |dates: usize| -> BirthsRow {
            ("Уфа".into(), 2000, Dates(vec![0; dates * summary::ENTRY]))
        };
        let births: Vec<BirthsRow> = [300, 5, 40_000, 366, 60_000, 1, 366]
            .into_iter()
            .map(row)
            .collect();
        let work = |call: &[BirthsRow]| call.iter().map(births_work).sum::<usize>();
        for room in [0, 20, 400, CALL_WORK] {
            let calls = births_calls(&births, room);
            assert!(work(calls[0]) <= room, "room {room}: {calls:?}");
            for call in &calls[1..] {
                assert!(!call.is_empty());
                assert!(call.len() == 1 || work(call) <= CALL_WORK, "room {room}");
            }
            assert_eq!(calls.concat(), births, "room {room}");
        }
        // The 60,000 dates go alone; the first call takes what fits in 400.
        let calls = births_calls(&births, 400);
        assert_eq!(
            calls.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [2, 2, 1, 2]
        );
        assert_eq!(births_calls(&[], 10), [&[] as &[BirthsRow]]);
    }
}
