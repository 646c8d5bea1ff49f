//! Logging set-up for the daemon: the only place a tracing subscriber is installed.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sends events at `level` and above to stderr. `RUST_LOG` overrides the level when set, for
/// per-module tuning.
pub(crate) fn init(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,openraft=warn"
        ))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
