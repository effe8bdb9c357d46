//! The schema and its migrations, run once at start under an advisory lock.

use std::sync::atomic::Ordering;

use super::reads::{CITIZEN_COLUMNS, import_id, read_citizen};
use super::writes::insert_summary;
use super::{Call, Fail, Kind, Store};
use crate::domain::summary::{self, Summary};
use crate::storage::StorageError;

/// Schema migrations, in order; `gifts_meta.schema_version` records how
/// many have run.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: imports, citizens, idempotency keys.
    "CREATE TABLE imports (
         import_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         created_at timestamptz NOT NULL DEFAULT now(),
         version bigint NOT NULL DEFAULT 1,
         citizens bigint NOT NULL
     );
     CREATE TABLE citizens (
         import_id bigint NOT NULL REFERENCES imports ON DELETE CASCADE,
         citizen_id bigint NOT NULL,
         town text NOT NULL,
         street text NOT NULL,
         building text NOT NULL,
         apartment bigint NOT NULL,
         name text NOT NULL,
         birth_date date NOT NULL,
         gender text NOT NULL,
         relatives bigint[] NOT NULL,
         PRIMARY KEY (import_id, citizen_id)
     );
     CREATE TABLE idempotency_keys (
         key text PRIMARY KEY,
         body_hash bytea NOT NULL,
         import_id bigint NOT NULL REFERENCES imports ON DELETE CASCADE
     );
     CREATE INDEX idempotency_keys_import ON idempotency_keys (import_id);",
    // 2: the analytics summary (`domain::summary`), kept by every write, so
    // a read with nothing in memory costs its answer, not the import.
    // `migrate_once` fills it for the imports already stored.
    // No foreign keys: a check per row would cost an import ~20 ms at 10,000
    // citizens; the delete removes them in its one statement.
    "CREATE TABLE presents (
         import_id bigint NOT NULL,
         month smallint NOT NULL,
         citizen_id bigint NOT NULL,
         presents integer NOT NULL,
         PRIMARY KEY (import_id, month, citizen_id)
     );
     CREATE TABLE town_dates (
         import_id bigint NOT NULL,
         town text NOT NULL,
         dates bytea NOT NULL,
         PRIMARY KEY (import_id, town)
     );",
    // 3: strings are stored escaped (storage/postgres/pg_text.rs: NUL, which `text`
    // cannot hold, and the escape U+10FFFF itself); escape any U+10FFFF
    // stored before, so that it reads back as it was sent.
    r"UPDATE citizens SET
         town = replace(town, U&'\+10FFFF', U&'\+10FFFFe'),
         street = replace(street, U&'\+10FFFF', U&'\+10FFFFe'),
         building = replace(building, U&'\+10FFFF', U&'\+10FFFFe'),
         name = replace(name, U&'\+10FFFF', U&'\+10FFFFe')
     WHERE strpos(town || street || building || name, U&'\+10FFFF') > 0;
     UPDATE town_dates SET town = replace(town, U&'\+10FFFF', U&'\+10FFFFe')
     WHERE strpos(town, U&'\+10FFFF') > 0;",
    // 4: the name an import was uploaded with and the SHA-256 of its body
    // (both NULL for the imports stored before), the digest indexed for
    // GET /imports?digest=. A name has no control character (checked by
    // the service), so it is stored as it came, without pg_text's escape.
    "ALTER TABLE imports ADD COLUMN name text, ADD COLUMN digest bytea;
     CREATE INDEX imports_by_digest ON imports (digest, import_id) WHERE digest IS NOT NULL;",
    // 5: each town's picks (`summary::picked`), what a cold percentiles read
    // reads; `migrate_once` computes them for the towns already stored. The
    // dates themselves stored out of line uncompressed: pglz halved them,
    // and decompressing them was half of a read's time on the server.
    // An instance of an older build still running beside a newer one (a
    // rolling upgrade) writes dates without picks. This build counts up
    // `picks_stamp` with every write of a town's dates; a write that leaves
    // it as it was is an older build's, and the trigger clears the picks.
    // Reads take the dates while they are NULL.
    "ALTER TABLE town_dates ADD COLUMN picks bytea,
         ADD COLUMN picks_stamp bigint NOT NULL DEFAULT 0,
         ALTER COLUMN dates SET STORAGE EXTERNAL;
     CREATE FUNCTION gifts_picks_follow_dates() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         NEW.picks := NULL;
         RETURN NEW;
     END $$;
     CREATE TRIGGER picks_follow_dates BEFORE UPDATE OF dates ON town_dates
         FOR EACH ROW WHEN (NEW.picks_stamp = OLD.picks_stamp)
         EXECUTE FUNCTION gifts_picks_follow_dates();",
];

/// The migration that adds the summary tables: imports stored before it get
/// theirs computed, after the last migration.
pub(super) const SUMMARY_MIGRATION: usize = 2;

/// The migration that adds the towns' picks: towns stored before it get
/// theirs computed from their dates, after the last migration.
pub(super) const PICKS_MIGRATION: usize = 5;

/// The advisory lock held while migrating (any number, the same for all).
pub(super) const MIGRATION_LOCK: i64 = 0x6769_6674_7331; // "gifts1"

impl Store {
    /// Brings the schema up to date, once; later calls return at once.
    pub(super) async fn migrate(&self) -> Result<(), StorageError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let call = Call::default();
        let (from, to) = self
            .run(Kind::Write, &call, self.migrate_once(&call))
            .await?;
        self.migrated.store(true, Ordering::Release);
        if from < to {
            tracing::info!(store = %self.shown, from, to, "postgresql schema migrated");
        } else {
            tracing::info!(store = %self.shown, schema_version = to, "postgresql schema up to date");
        }
        Ok(())
    }

    pub(super) async fn migrate_once(&self, call: &Call) -> Result<(usize, usize), Fail> {
        let mut client = self.conn(call).await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS gifts_meta (
                 only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
                 schema_version integer NOT NULL,
                 probed_at timestamptz
             );
             INSERT INTO gifts_meta (schema_version) VALUES (0) ON CONFLICT DO NOTHING;",
        )
        .await?;
        let row = tx
            .query_one("SELECT schema_version FROM gifts_meta", &[])
            .await?;
        let from = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
        let to = MIGRATIONS.len();
        if from > to {
            self.newer_schema.store(true, Ordering::Release);
            return Err(Fail::Store(StorageError::Misconfigured(format!(
                "the database's schema is version {from}, newer than this build of gifts knows ({to}): run a newer gifts"
            ))));
        }
        for sql in MIGRATIONS.iter().skip(from) {
            tx.batch_execute(sql).await?;
        }
        // Rows computed by this build's code, so after the last migration:
        // a summary is written as the newest schema keeps it.
        if from < SUMMARY_MIGRATION {
            let imports = tx.query("SELECT import_id FROM imports", &[]).await?;
            let read = format!(
                "SELECT {CITIZEN_COLUMNS} FROM citizens WHERE import_id = $1 ORDER BY citizen_id"
            );
            for row in imports {
                let import = import_id(row.get(0))?;
                let citizens = tx
                    .query(&read, &[&import.get()])
                    .await?
                    .iter()
                    .map(read_citizen)
                    .collect::<Result<Vec<_>, _>>()?;
                insert_summary(&tx, import, &Summary::of(&citizens)).await?;
            }
        }
        if from < PICKS_MIGRATION {
            // An import at a time: one import's dates are bounded by towns ×
            // calendar days, all imports' are not.
            let imports = tx.query("SELECT import_id FROM imports", &[]).await?;
            let read = tx
                .prepare(
                    "SELECT town, dates FROM town_dates WHERE import_id = $1 AND picks IS NULL",
                )
                .await?;
            let set = tx
                .prepare("UPDATE town_dates SET picks = $3 WHERE import_id = $1 AND town = $2")
                .await?;
            for row in imports {
                let import: i64 = row.try_get(0)?;
                for town in tx.query(&read, &[&import]).await? {
                    let (name, dates): (String, &[u8]) = (town.try_get(0)?, town.try_get(1)?);
                    let picks = summary::picked(dates).ok_or_else(|| {
                        Fail::Store(StorageError::internal(format!(
                            "import {import}: the stored dates of town {name:?} are corrupt"
                        )))
                    })?;
                    tx.execute(&set, &[&import, &name, &picks]).await?;
                }
            }
        }
        let version = i32::try_from(to).map_err(StorageError::internal)?;
        tx.execute("UPDATE gifts_meta SET schema_version = $1", &[&version])
            .await?;
        call.committing.store(true, Ordering::Release);
        tx.commit().await?;
        Ok((from, to))
    }
}
