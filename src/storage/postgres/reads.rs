//! The reads: an import's citizens, presents rows and town dates, each
//! with its version in one snapshot.

use futures_util::TryStreamExt;
use tokio_postgres::Row;

use super::pg_text;
use super::{Call, Fail, Store};
use crate::domain::stats::Birthdays;
use crate::domain::summary::{self, TownDates};
use crate::domain::{Citizen, CitizenId, ImportId};
use crate::storage::row::{StoredCitizen, StoredDate};
use crate::storage::{Snapshot, StorageError, Version};

/// Rows of an import read before they are checked into citizens together.
pub(super) const ROWS_PER_CHECK: usize = 10_000;

/// The columns of a citizen, in [`read_citizen`]'s order.
pub(super) const CITIZEN_COLUMNS: &str =
    "citizen_id, town, street, building, apartment, name, birth_date, gender, relatives";

/// How many columns [`CITIZEN_COLUMNS`] names.
pub(super) const CITIZEN_FIELDS: usize = 9;

/// [`CITIZEN_COLUMNS`] with each name prefixed (a table alias and a dot).
pub(super) fn prefixed(alias: &str) -> String {
    CITIZEN_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The rows of `sql`, which selects the import's version first and
    /// LEFT JOINs one of its tables on `import_id = $1`: one statement, one
    /// snapshot of both (an import with no rows there is one row of NULLs).
    pub(super) async fn versioned_rows(
        &self,
        call: &Call,
        import: ImportId,
        sql: &str,
    ) -> Result<(Version, Vec<Row>), Fail> {
        let client = self.conn(call).await?;
        let read = client.prepare_cached(sql).await?;
        let rows = client.query(&read, &[&import.get()]).await?;
        drop(client);
        let Some(first) = rows.first() else {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        };
        Ok((version_of(first.try_get(0)?)?, rows))
    }

    pub(super) async fn presents_tx(
        &self,
        call: &Call,
        import: ImportId,
    ) -> Result<(Version, Birthdays), Fail> {
        // One row: the version and the import's presents rows as three
        // arrays, far cheaper to send and decode than a row each (a cold
        // GET birthdays at 10,000 citizens reads about 2,000 of them). In
        // no promised order: sorting them here is cheaper than asking
        // PostgreSQL to (a plan without the key's order sorted on the
        // server, a third of the query's time).
        let (version, rows) = self
            .versioned_rows(
                call,
                import,
                "SELECT i.version, p.months, p.citizens, p.presents
                 FROM imports i LEFT JOIN LATERAL (
                     SELECT array_agg(s.month) AS months,
                            array_agg(s.citizen_id) AS citizens,
                            array_agg(s.presents) AS presents
                     FROM presents s
                     WHERE s.import_id = i.import_id
                 ) p ON true
                 WHERE i.import_id = $1",
            )
            .await?;
        let corrupt = || StorageError::internal("postgresql: a corrupt presents row");
        let Some(row) = rows.first() else {
            return Err(Fail::Store(corrupt()));
        };
        let months: Vec<i16> = row.try_get::<_, Option<_>>(1)?.unwrap_or_default();
        let citizens: Vec<i64> = row.try_get::<_, Option<_>>(2)?.unwrap_or_default();
        let presents: Vec<i32> = row.try_get::<_, Option<_>>(3)?.unwrap_or_default();
        if months.len() != citizens.len() || months.len() != presents.len() {
            return Err(Fail::Store(corrupt()));
        }
        let mut read = Vec::with_capacity(months.len());
        for ((month, citizen), presents) in months.into_iter().zip(citizens).zip(presents) {
            let month = u8::try_from(month).map_err(|_| corrupt())?;
            let citizen = u64::try_from(citizen)
                .ok()
                .and_then(|id| CitizenId::parse(id).ok())
                .ok_or_else(corrupt)?;
            let presents = u32::try_from(presents).map_err(|_| corrupt())?;
            read.push((month, citizen, presents));
        }
        // Usually in key order already (the index's, or the insertion's).
        if !read.is_sorted_by_key(|&(month, citizen, _)| (month, citizen)) {
            read.sort_unstable_by_key(|&(month, citizen, _)| (month, citizen));
        }
        Ok((version, summary::birthdays(read)))
    }

    /// The towns' picks (`summary::picked`, kept beside their dates): at
    /// most 48 bytes a town, where the dates are 8 bytes a distinct date.
    /// The dates where an older build wrote them without (schema 5).
    pub(super) async fn town_dates_tx(
        &self,
        call: &Call,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), Fail> {
        let (version, rows) = self
            .versioned_rows(
                call,
                import,
                "SELECT i.version, t.town, coalesce(t.picks, t.dates)
                 FROM imports i LEFT JOIN town_dates t USING (import_id)
                 WHERE i.import_id = $1",
            )
            .await?;
        let mut towns = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(town) = row.try_get::<_, Option<String>>(1)? {
                towns.push(TownDates {
                    town: pg_text::decode(town).ok_or_else(|| {
                        StorageError::internal("postgresql: a corrupt escaped town")
                    })?,
                    dates: row.try_get(2)?,
                });
            }
        }
        // Code point order, whatever the database's collation.
        towns.sort_unstable_by(|a, b| a.town.cmp(&b.town));
        Ok((version, towns))
    }

    pub(super) async fn citizens_tx(
        &self,
        call: &Call,
        import: ImportId,
    ) -> Result<Snapshot, Fail> {
        let client = self.conn(call).await?;
        // One statement: one snapshot of the version and the citizens. An
        // empty import is one row of NULL citizen columns.
        let read = client
            .prepare_cached(&format!(
                "SELECT {}, i.version FROM imports i LEFT JOIN citizens c USING (import_id)
                 WHERE i.import_id = $1 ORDER BY c.citizen_id",
                prefixed("c.")
            ))
            .await?;
        // Rows are checked into citizens a batch at a time as they arrive,
        // so a big import is never held as rows and citizens at once.
        let rows = client
            .query_raw(&read, std::iter::once(import.get()))
            .await?;
        let mut rows = std::pin::pin!(rows);
        let Some(first) = rows.try_next().await? else {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        };
        let version = version_of(first.try_get(CITIZEN_FIELDS)?)?;
        let mut citizens = Vec::new();
        if first.try_get::<_, Option<i64>>(0)?.is_none() {
            return Ok(Snapshot { version, citizens });
        }
        let mut batch = vec![first];
        loop {
            let row = rows.try_next().await?;
            let end = row.is_none();
            batch.extend(row);
            if end || batch.len() == ROWS_PER_CHECK {
                let rows = std::mem::take(&mut batch);
                citizens.extend(
                    crate::storage::checked_citizens(rows, |row| read_citizen(&row)).await?,
                );
            }
            if end {
                break;
            }
        }
        drop(client);
        Ok(Snapshot { version, citizens })
    }
}

impl Store {
    /// Up to `limit` citizens of `import` with ids above `after`, in one
    /// statement (the import's row tells an empty page from no import).
    pub(super) async fn citizens_page_tx(
        &self,
        call: &Call,
        import: ImportId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<std::sync::Arc<Citizen>>, Fail> {
        let client = self.conn(call).await?;
        let read = client
            .prepare_cached(&format!(
                "SELECT {} FROM imports i LEFT JOIN LATERAL (
                     SELECT * FROM citizens c WHERE c.import_id = i.import_id AND c.citizen_id > $2
                     ORDER BY c.citizen_id LIMIT $3
                 ) c ON true
                 WHERE i.import_id = $1 ORDER BY c.citizen_id",
                prefixed("c.")
            ))
            .await?;
        let mut rows = client
            .query(&read, &[&import.get(), &after, &limit])
            .await?;
        drop(client);
        let Some(first) = rows.first() else {
            return Err(Fail::Store(StorageError::ImportNotFound(import)));
        };
        if first.try_get::<_, Option<i64>>(0)?.is_none() {
            rows.clear();
        }
        Ok(crate::storage::checked_citizens(rows, |row| read_citizen(&row)).await?)
    }
}

/// An import id from the database.
pub(super) fn import_id(id: i64) -> Result<ImportId, StorageError> {
    ImportId::new(id)
        .ok_or_else(|| StorageError::internal(format!("import id {id} from postgresql")))
}

/// A version from the database.
pub(super) fn version_of(version: i64) -> Result<Version, StorageError> {
    Version::try_from(version).map_err(StorageError::internal)
}

/// A citizen from a row of [`CITIZEN_COLUMNS`], checked again.
pub(super) fn read_citizen(row: &Row) -> Result<Citizen, StorageError> {
    let unsigned = |i: usize| -> Result<u64, StorageError> {
        u64::try_from(row.try_get::<_, i64>(i).map_err(StorageError::internal)?)
            .map_err(StorageError::internal)
    };
    let text = |i: usize| {
        let stored = row
            .try_get::<_, String>(i)
            .map_err(StorageError::internal)?;
        pg_text::decode(stored)
            .ok_or_else(|| StorageError::internal("postgresql: a corrupt escaped string"))
    };
    let relatives: Vec<i64> = row.try_get(8).map_err(StorageError::internal)?;
    Citizen::try_from(StoredCitizen {
        citizen_id: unsigned(0)?,
        town: text(1)?,
        street: text(2)?,
        building: text(3)?,
        apartment: unsigned(4)?,
        name: text(5)?,
        birth_date: StoredDate::Date(row.try_get(6).map_err(StorageError::internal)?),
        gender: text(7)?,
        relatives: relatives
            .into_iter()
            .map(|r| u64::try_from(r).unwrap_or(u64::MAX))
            .collect(),
    })
}
