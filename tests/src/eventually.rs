//! Waiting for eventual state without bare sleeps.
//!
//! A cluster converges asynchronously (an event reaches the other nodes, a registry entry
//! expires), so tests poll until a condition holds instead of sleeping for a guessed time,
//! which would be both slow and flaky. How long to wait is one setting for the whole run,
//! `PETMESH_TEST_PATIENCE_SECS` (default 30), so a slow CI machine can be given more time
//! without touching tests.

use std::fmt::Debug;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Environment variable that sets the patience in seconds.
pub const PATIENCE_ENV: &str = "PETMESH_TEST_PATIENCE_SECS";

/// Patience when the environment variable is unset or invalid.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Time between two checks of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long eventual conditions may take to hold: `PETMESH_TEST_PATIENCE_SECS` (fractions
/// allowed) or 30 s. Read once per process.
pub fn patience() -> Duration {
    static PATIENCE: OnceLock<Duration> = OnceLock::new();
    *PATIENCE.get_or_init(|| parse_patience(std::env::var(PATIENCE_ENV).ok().as_deref()))
}

fn parse_patience(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map_or(DEFAULT_PATIENCE, Duration::from_secs_f64)
}

/// Sleeps one [`POLL_INTERVAL`]; used by [`assert_eventually!`](crate::assert_eventually) so
/// that callers don't need tokio in scope.
pub async fn pause() {
    tokio::time::sleep(POLL_INTERVAL).await;
}

/// Calls `check` until it returns `Ok`, and returns that value. Panics with `what` and the
/// last error once [`patience`] has run out.
///
/// Use this when the awaited state produces a value (the response once it is right);
/// [`assert_eventually!`](crate::assert_eventually) is shorter for a plain condition.
pub async fn eventually<T, E, F, Fut>(what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let patience = patience();
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if start.elapsed() >= patience {
            panic!("not true after {patience:?}: {what}; last error: {last:?}");
        }
        pause().await;
    }
}

/// Asserts that a condition becomes true within [`patience`](crate::eventually::patience),
/// re-evaluating it every 50 ms. Use inside an async fn; the condition may `.await` and use
/// `?`.
///
/// ```no_run
/// # async fn demo(client: petmesh_tests::ApiClient) -> anyhow::Result<()> {
/// petmesh_tests::assert_eventually!(client.get("/api/v1/pets/1").await?.status == 200);
/// petmesh_tests::assert_eventually!(
///     client.get("/api/v1/pets/1").await?.status == 404,
///     "pet {} still visible", 1
/// );
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {{
        let patience = $crate::eventually::patience();
        let start = ::std::time::Instant::now();
        loop {
            if $cond {
                break;
            }
            if start.elapsed() >= patience {
                panic!("not true after {:?}: {}", patience, format_args!($($arg)+));
            }
            $crate::eventually::pause().await;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn patience_comes_from_the_variable_or_defaults() {
        assert_eq!(parse_patience(None), DEFAULT_PATIENCE);
        assert_eq!(parse_patience(Some("90")), Duration::from_secs(90));
        assert_eq!(parse_patience(Some("0.5")), Duration::from_millis(500));
        assert_eq!(parse_patience(Some("soon")), DEFAULT_PATIENCE);
        assert_eq!(parse_patience(Some("-1")), DEFAULT_PATIENCE);
    }

    #[tokio::test]
    async fn assert_eventually_returns_once_the_condition_holds() {
        let calls = AtomicUsize::new(0);
        assert_eventually!(calls.fetch_add(1, Ordering::SeqCst) >= 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn eventually_returns_the_first_ok_value() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let value = eventually("third call succeeds", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n >= 2 {
                    Ok(n)
                } else {
                    Err("too early")
                }
            }
        })
        .await;
        assert_eq!(value, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
