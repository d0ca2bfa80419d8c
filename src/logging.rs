//! Logs via tracing to stderr; levels from RUST_LOG, JSON on request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: the journal, a log
        // file or a pipe get plain text.
        .with_ansi(colour(std::io::stderr().is_terminal()));
    // A second init (tests calling into the binary's code) is harmless.
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Colour on a terminal, unless NO_COLOR is set to anything non-empty
/// (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
