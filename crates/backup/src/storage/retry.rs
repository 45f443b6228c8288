//! One retry helper with exponential backoff for transient storage errors.

use std::future::Future;
use std::time::Duration;

use crate::Result;

/// Runs `op` up to `attempts` times while it fails with a transient error, sleeping
/// 100 ms, 200 ms, 400 ms ... between attempts.
pub(crate) async fn retry<T, F, Fut>(attempts: u32, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let mut n = 1;
    loop {
        match op().await {
            Err(e) if e.is_transient() && n < attempts => {
                tracing::warn!(attempt = n, "retrying after transient storage error: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                n += 1;
            }
            other => return other,
        }
    }
}
