//! What `valkyrie-server` and `valkyrie-agent` share as programs: how they
//! log and where they keep state by default (feature `binary`).

use std::path::PathBuf;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people; coloured only when stderr is a terminal (and NO_COLOR is unset).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs go to stderr, filtered by `VALKYRIE_LOG` (an `EnvFilter` directive
/// such as `info` or `valkyrie_control_plane=debug`; default `info`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VALKYRIE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour =
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The default state directory: `/var/lib/NAME` for root, else
/// `$XDG_STATE_HOME/NAME` or `~/.local/state/NAME`.
pub fn default_state_dir(name: &str) -> std::io::Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib").join(name));
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(state).join(name));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state").join(name)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no default directory: neither XDG_STATE_HOME nor HOME is set; pass one",
        )),
    }
}
