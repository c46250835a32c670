//! The production shutdown trigger. Servers take the shutdown future as an argument, so tests
//! can pass their own.

use std::future::Future;

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now, and returns a future that resolves
/// when the process receives either.
///
/// The handlers go in at the call, not at the future's first poll: a server may poll its
/// shutdown future only after it has accepted (and answered) its first connections, and a
/// SIGTERM sent right after the readiness probe passed would otherwise meet the default
/// action and kill the process without draining.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    }
}
