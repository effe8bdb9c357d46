//! PostgreSQL and pool errors as storage errors: applied, not applied, or unknown.

use tokio_postgres::error::SqlState;

use super::primary::ConnectError;
use super::{Kind, PoolError};
use crate::storage::StorageError;

/// What a pool failure means for the client.
pub(super) fn pool_error(error: PoolError, kind: Kind, committing: bool) -> StorageError {
    match error {
        PoolError::Backend(ConnectError::Pg(e)) => pg_error(&e, kind, committing),
        PoolError::Backend(ConnectError::NoAnswer(why)) => {
            StorageError::Unavailable(format!("postgresql: {why}"))
        }
        PoolError::Timeout(_) => {
            StorageError::Unavailable("postgresql: no connection free or made in time".into())
        }
        other => StorageError::Unavailable(format!("postgresql: {other}")),
    }
}

/// What a PostgreSQL failure means for the client: refused or misconfigured
/// (503 naming it), not applied (503), maybe applied (504), no room (507),
/// or a fault (500).
pub(super) fn pg_error(
    error: &tokio_postgres::Error,
    kind: Kind,
    committing: bool,
) -> StorageError {
    let maybe_applied = kind == Kind::Write && committing;
    let Some(db) = error.as_db_error() else {
        // No answer from the server: the connection broke or never came.
        let why = format!("postgresql: {error}");
        return if maybe_applied {
            StorageError::OutcomeUnknown(why)
        } else {
            StorageError::Unavailable(why)
        };
    };
    let code = db.code();
    let why = format!("postgresql: {} ({})", db.message(), code.code());
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        StorageError::Full(why)
    } else if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        StorageError::Misconfigured(format!(
            "the database refused the service (check USER, PASSWORD and DBNAME in --storage / GIFTS_STORAGE, and the user's rights): {why}"
        ))
    } else if code.code().starts_with("08")
        || code.code().starts_with("57P")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        // The transaction was rolled back: nothing of it was applied.
        if maybe_applied && code.code().starts_with("08") {
            StorageError::OutcomeUnknown(why)
        } else {
            StorageError::Unavailable(why)
        }
    } else {
        StorageError::internal(why)
    }
}
