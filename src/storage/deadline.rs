//! One budget for a request's waits on its store.
//!
//! A request may wait on the store several times (a version check, then a
//! load). The HTTP layer runs each request inside [`scope`]; the first wait
//! starts the budget, and every later wait gets only what is left of it, so
//! a request waits at most one budget in all. Outside a scope (tests,
//! background tasks) each wait gets the whole budget.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Cell<Option<Instant>>;
}

/// Runs `future` as one request: its store waits share one budget.
pub async fn scope<F: Future>(future: F) -> F::Output {
    DEADLINE.scope(Cell::new(None), future).await
}

/// How long the next wait may take: `budget`, or what is left of it in this
/// request (the budget starts with the request's first wait).
pub fn remaining(budget: Duration) -> Duration {
    DEADLINE
        .try_with(|deadline| {
            let now = Instant::now();
            let end = deadline.get().unwrap_or_else(|| {
                let end = now + budget;
                deadline.set(Some(end));
                end
            });
            end.saturating_duration_since(now)
        })
        .unwrap_or(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_in_one_request_share_one_budget() {
        let budget = Duration::from_secs(3);
        assert_eq!(
            remaining(budget),
            budget,
            "outside a request: the whole budget"
        );
        scope(async {
            assert_eq!(remaining(budget), budget);
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(remaining(budget), Duration::from_secs(1));
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(remaining(budget), Duration::ZERO);
        })
        .await;
        scope(async { assert_eq!(remaining(budget), budget, "a new request") }).await;
    }
}
