//! A stream driven by an async block that owns its connection, in safe code.
//!
//! The router acquires a pooled connection and then streams a query on it; the stream must own
//! the connection, which a borrowed `conn.fetch_many()` stream cannot express. This is the
//! technique of sqlx-core's internal `TryAsyncStream` (MIT/Apache-2.0): the generating future
//! puts one item into a shared slot and returns `Pending` once; `poll_next` hands the item out.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::FutureExt;

/// Hands values from the generating future to the stream.
pub(crate) struct Yielder<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Yielder<T> {
    /// Passes `value` to the stream's consumer. Only call it inside the generating future.
    pub(crate) async fn send(&self, value: T) {
        // The lock is never contended: producer and consumer run in the same poll.
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(value);
        }
        let mut yielded = false;
        futures_util::future::poll_fn(|_| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                Poll::Pending
            }
        })
        .await
    }
}

/// The stream of values a generating future sends, then its error if it fails.
pub(crate) struct OwnedStream<'a, T> {
    slot: Arc<Mutex<Option<T>>>,
    future: Option<BoxFuture<'a, Result<(), sqlx::Error>>>,
}

impl<'a, T: Send + 'a> OwnedStream<'a, T> {
    pub(crate) fn new<F, Fut>(f: F) -> Self
    where
        F: FnOnce(Yielder<T>) -> Fut,
        Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'a,
    {
        let slot = Arc::new(Mutex::new(None));
        let future = f(Yielder { slot: slot.clone() }).boxed();
        OwnedStream {
            slot,
            future: Some(future),
        }
    }
}

impl<T> Stream for OwnedStream<'_, T> {
    type Item = Result<T, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(fut) = self.future.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.poll_unpin(cx) {
            Poll::Ready(Ok(())) => {
                self.future = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.future = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                let taken = self.slot.lock().ok().and_then(|mut s| s.take());
                match taken {
                    Some(v) => Poll::Ready(Some(Ok(v))),
                    None => Poll::Pending,
                }
            }
        }
    }
}
