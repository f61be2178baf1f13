//! [`Pacer`]: what a [`crate::Client`] asks before each request it sends to an app, and tells of
//! each answer. The engine gives every app's client one that holds the app's requests to its
//! rate budget and to the pause the app asked for with `Retry-After`, across every process
//! sharing the store; the client itself knows nothing of budgets.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::ScimError;

/// A boxed future, as [`Pacer`]'s methods return (the trait stays object-safe).
pub type PaceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Paces the requests of one app's client.
pub trait Pacer: Send + Sync + fmt::Debug {
    /// Waits until the next request may be sent, or answers why not (a
    /// [`ScimError::Held`], so that the caller tries again later). Called before every attempt.
    fn before_send(&self) -> PaceFuture<'_, Result<(), ScimError>>;

    /// Told every answer of the app: its HTTP status and `Retry-After`.
    fn answered(&self, status: u16, retry_after: Option<Duration>) -> PaceFuture<'_, ()>;
}
