//! A [`Storage`] that times every operation of another, for the
//! `gifts_storage_operation_duration_seconds` metric, and counts the ones
//! in flight (`gifts_storage_operations_in_flight`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{HeldCopy, ImportInfo, Patched, Snapshot, Storage, StorageError, Upload, Version};
use crate::domain::stats::Birthdays;
use crate::domain::summary::TownDates;
use crate::domain::{Citizen, CitizenId, CitizenPatch, ImportId};
use crate::metrics::{Metrics, OperationLabels, PendingLabels};
use prometheus_client::metrics::gauge::Gauge;

/// Wraps a store; every call is timed by backend, operation and outcome.
pub struct Metered<S> {
    inner: S,
    backend: &'static str,
    metrics: Arc<Metrics>,
}

impl<S> Metered<S> {
    /// Times `inner`'s operations as `backend`.
    pub fn new(inner: S, backend: &'static str, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            backend,
            metrics,
        }
    }

    async fn time<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let started = Instant::now();
        let pending = self
            .metrics
            .storage_in_flight
            .get_or_create(&PendingLabels {
                backend: self.backend,
                operation,
            })
            .clone();
        pending.inc();
        let _pending = InFlight(pending);
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StorageError::ImportNotFound(_) | StorageError::CitizenNotFound { .. }) => {
                "not_found"
            }
            Err(StorageError::Invalid(_) | StorageError::KeyReused { .. }) => "rejected",
            Err(StorageError::Unavailable(_) | StorageError::Misconfigured(_)) => "unavailable",
            Err(StorageError::Overloaded(_)) => "overloaded",
            Err(StorageError::OutcomeUnknown(_)) => "timeout",
            Err(StorageError::Full(_)) => "full",
            Err(StorageError::Internal(_)) => "error",
        };
        self.metrics
            .storage_seconds
            .get_or_create(&OperationLabels {
                backend: self.backend,
                operation,
                outcome,
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// One operation in the in-flight gauge; leaves it however the call ends,
/// also when its caller gives up (the future is dropped).
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl<S: Storage> Storage for Metered<S> {
    async fn create_import(
        &self,
        citizens: Vec<Citizen>,
        upload: Upload,
    ) -> Result<ImportId, StorageError> {
        self.time("create_import", self.inner.create_import(citizens, upload))
            .await
    }

    async fn patch_citizen(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
    ) -> Result<Patched, StorageError> {
        self.time(
            "patch_citizen",
            self.inner.patch_citizen(import, citizen, patch),
        )
        .await
    }

    async fn patch_citizen_held(
        &self,
        import: ImportId,
        citizen: CitizenId,
        patch: CitizenPatch,
        held: HeldCopy,
    ) -> Result<Patched, StorageError> {
        self.time(
            "patch_citizen",
            self.inner.patch_citizen_held(import, citizen, patch, held),
        )
        .await
    }

    async fn citizens(&self, import: ImportId) -> Result<Snapshot, StorageError> {
        self.time("citizens", self.inner.citizens(import)).await
    }

    async fn citizens_page(
        &self,
        import: ImportId,
        after: Option<CitizenId>,
        limit: usize,
    ) -> Result<Vec<Arc<Citizen>>, StorageError> {
        self.time(
            "citizens_page",
            self.inner.citizens_page(import, after, limit),
        )
        .await
    }

    async fn presents(&self, import: ImportId) -> Result<(Version, Birthdays), StorageError> {
        self.time("presents", self.inner.presents(import)).await
    }

    async fn town_dates(
        &self,
        import: ImportId,
    ) -> Result<(Version, Vec<TownDates>), StorageError> {
        self.time("town_dates", self.inner.town_dates(import)).await
    }

    async fn import_version(&self, import: ImportId) -> Result<Version, StorageError> {
        self.time("import_version", self.inner.import_version(import))
            .await
    }

    async fn list_imports(
        &self,
        limit: usize,
        before: Option<ImportId>,
        digest: Option<[u8; 32]>,
    ) -> Result<Vec<ImportInfo>, StorageError> {
        self.time(
            "list_imports",
            self.inner.list_imports(limit, before, digest),
        )
        .await
    }

    async fn delete_import(&self, import: ImportId) -> Result<(), StorageError> {
        self.time("delete_import", self.inner.delete_import(import))
            .await
    }

    async fn totals(&self) -> Result<(u64, u64), StorageError> {
        self.time("totals", self.inner.totals()).await
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.time("health", self.inner.health()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
