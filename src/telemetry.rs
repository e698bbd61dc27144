//! Logging setup: `tracing` with `RUST_LOG` (default `info`), plain or JSON.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. `json` selects one JSON object per line.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
