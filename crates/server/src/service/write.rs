//! The one retry helper of every read-modify-write (admin API, console, CLI, inbound SCIM).
//!
//! A write names the version it read; when another write got in between, the store refuses it
//! (`VersionConflict`). A caller that named no version (`If-Match`) did not ask for that one, so the
//! write is read, checked and tried again, up to [`WRITE_ATTEMPTS`] times; a caller that named one
//! gets the refusal (412) at once. A directory sync (`source_sync`) does not retry: a user another
//! writer changed during the sync is skipped, with the reason, and the next sync writes them.

use std::future::Future;

use crate::error::Error;

/// How many times a write without `If-Match` is tried when another write got in between.
pub(crate) const WRITE_ATTEMPTS: usize = 3;

/// An error that may mean "another write got in between".
pub(crate) trait Stale: Sized {
    fn is_stale(&self) -> bool;
    /// What the caller is told when every attempt met another write (by default the last refusal).
    fn gave_up(self, _what: &'static str) -> Self {
        self
    }
}

impl Stale for Error {
    fn is_stale(&self) -> bool {
        matches!(self, Error::PreconditionFailed { .. })
    }
}

/// Runs `attempt` (read, check, write) until it does not meet another write, at most
/// [`WRITE_ATTEMPTS`] times; only once when the caller named the version (`if_match_given`).
pub(crate) async fn retry_write<T, E, F, Fut>(what: &'static str, if_match_given: bool, mut attempt: F) -> Result<T, E>
where
    E: Stale,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_stale() && !if_match_given => {
                if tries >= WRITE_ATTEMPTS {
                    return Err(e.gave_up(what));
                }
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_write_that_meets_another_is_tried_again_unless_the_caller_named_a_version() {
        let calls = AtomicUsize::new(0);
        let stale = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::PreconditionFailed { current: 2 })
        };
        assert!(matches!(retry_write("user", false, stale).await, Err(Error::PreconditionFailed { .. })));
        assert_eq!(calls.swap(0, Ordering::SeqCst), WRITE_ATTEMPTS);
        assert!(retry_write("user", true, stale).await.is_err());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

        let second_time_lucky = || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::PreconditionFailed { current: 2 })
            } else {
                Ok(7)
            }
        };
        assert_eq!(retry_write("user", false, second_time_lucky).await.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let invalid = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Error::NotFound("user"))
        };
        assert!(matches!(retry_write("user", false, invalid).await, Err(Error::NotFound(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
