//! Coalescing of concurrent fetches of one key, without serving anything stale.
//!
//! Every cached read asks the store for its import's version, and under load
//! most of those calls are redundant. A request may take the answer of any
//! fetch that was *started after the request arrived*: such a fetch sees
//! every write acknowledged before the request. So fetches of one key run one
//! at a time, numbered, and a request waits for the first fetch numbered after
//! its arrival — starting one if none is running. Fetches run in their own
//! task, so a request that is cancelled cannot strand the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Keys whose idle state is dropped once this many are tracked.
const TRACKED_KEYS: usize = 4096;

/// Coalesces concurrent fetches per key; see the module documentation.
pub struct Coalescer<K, V> {
    keys: Mutex<HashMap<K, Arc<watch::Sender<State<V>>>>>,
}

/// The fetches of one key: how many were started, whether one runs, the
/// number and answer of the last finished one.
struct State<V> {
    started: u64,
    running: bool,
    done: u64,
    answer: Option<V>,
}

impl<V> Default for State<V> {
    fn default() -> Self {
        Self {
            started: 0,
            running: false,
            done: 0,
            answer: None,
        }
    }
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            keys: Mutex::default(),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer of a fetch of `key` started after this call began:
    /// `fetch()` run now, or the answer of one that another caller started
    /// meanwhile. `None` only if the fetching task died (a panic in `fetch`).
    pub async fn get<F, Fut>(&self, key: K, fetch: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let fetches = {
            let mut keys = self.keys.lock().expect("coalescer lock");
            if keys.len() >= TRACKED_KEYS {
                keys.retain(|_, fetches| fetches.borrow().running);
            }
            Arc::clone(
                keys.entry(key)
                    .or_insert_with(|| Arc::new(watch::channel(State::default()).0)),
            )
        };
        let mut changes = fetches.subscribe();
        // Fetches numbered above this one start after this call began.
        let needed = fetches.borrow().started + 1;
        let mut fetch = Some(fetch);
        loop {
            let mut start = false;
            fetches.send_if_modified(|state| {
                if state.done < needed && !state.running {
                    state.running = true;
                    state.started += 1;
                    start = true;
                }
                start
            });
            if start {
                // A caller starts at most one fetch: the first it found needed.
                let future = fetch.take().map(|f| f());
                let fetches = Arc::clone(&fetches);
                tokio::spawn(async move {
                    // The guard marks the fetch finished even if it panics.
                    let guard = Finish(Some(fetches));
                    let answer = match future {
                        Some(future) => Some(future.await),
                        None => None,
                    };
                    guard.finish(answer);
                });
            }
            {
                let state = changes.borrow_and_update();
                if state.done >= needed {
                    return state.answer.clone();
                }
            }
            changes.changed().await.ok()?;
        }
    }
}

/// Marks the running fetch as done, with its answer or none.
struct Finish<V>(Option<Arc<watch::Sender<State<V>>>>);

impl<V> Finish<V> {
    fn finish(mut self, answer: Option<V>) {
        if let Some(fetches) = self.0.take() {
            fetches.send_modify(|state| {
                state.done = state.started;
                state.running = false;
                state.answer = answer;
            });
        }
    }
}

impl<V> Drop for Finish<V> {
    fn drop(&mut self) {
        if let Some(fetches) = self.0.take() {
            fetches.send_modify(|state| {
                state.done = state.started;
                state.running = false;
                state.answer = None;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_fetch_running_when_a_caller_arrives_does_not_answer_it() {
        let coalescer: Arc<Coalescer<u8, u64>> = Arc::default();
        let store = Arc::new(AtomicU64::new(1));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        // A slow fetch that reads the store before the write below.
        let first = {
            let (coalescer, store) = (Arc::clone(&coalescer), Arc::clone(&store));
            tokio::spawn(async move {
                coalescer
                    .get(7, || async move {
                        let seen = store.load(Ordering::SeqCst);
                        released.await.ok();
                        seen
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A write is acknowledged, then a reader arrives: it must see it.
        store.store(2, Ordering::SeqCst);
        let second = {
            let (coalescer, store) = (Arc::clone(&coalescer), Arc::clone(&store));
            tokio::spawn(async move {
                coalescer
                    .get(7, || async move { store.load(Ordering::SeqCst) })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(1));
        assert_eq!(
            second.await.unwrap(),
            Some(2),
            "only fetches started after arrival count"
        );
    }

    #[tokio::test]
    async fn callers_that_arrive_together_share_one_fetch() {
        let coalescer: Arc<Coalescer<u8, u64>> = Arc::default();
        let fetches = Arc::new(AtomicU64::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let callers: Vec<_> = (0..10)
            .map(|_| {
                let (coalescer, fetches) = (Arc::clone(&coalescer), Arc::clone(&fetches));
                let mut released = released.clone();
                tokio::spawn(async move {
                    coalescer
                        .get(1, || async move {
                            let n = fetches.fetch_add(1, Ordering::SeqCst);
                            let _ = released.wait_for(|r| *r).await;
                            n
                        })
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.send(true).unwrap();
        for caller in callers {
            assert!(caller.await.unwrap().is_some());
        }
        // The first fetch started with the first caller; everyone who arrived
        // while it ran shares the second.
        assert!(fetches.load(Ordering::SeqCst) <= 2, "{fetches:?}");
    }

    #[tokio::test]
    async fn a_panicking_fetch_answers_none_and_the_next_caller_fetches_again() {
        let coalescer: Coalescer<u8, u64> = Coalescer::default();
        let first = coalescer.get(3, || async { panic!("fetch failed") }).await;
        assert_eq!(first, None);
        assert_eq!(coalescer.get(3, || async { 9 }).await, Some(9));
    }
}
