//! Writing to stdout when the reader may go away.
//!
//! `vk jobs | head -1` closes the pipe after one line; `println!` would then
//! panic (exit 101). Every line `vk` prints goes through [`outln!`] or
//! [`bytes`] instead: a broken pipe ends `vk` quietly with exit code 0 (the
//! reader has what it wanted), like `git` and `ripgrep`; any other write
//! error ends it with exit code 2, naming the cause.

use std::io::{self, Write};

/// `println!` that exits quietly when stdout's reader went away.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one formatted line to stdout.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    checked(out.write_fmt(args).and_then(|()| out.write_all(b"\n")));
}

/// Writes raw bytes to stdout (job output), flushed at once.
pub fn bytes(data: &[u8]) {
    let mut out = io::stdout().lock();
    checked(out.write_all(data).and_then(|()| out.flush()));
}

/// Writes raw bytes to stderr; a closed stderr is ignored (there is nowhere
/// left to say anything).
pub fn err_bytes(data: &[u8]) {
    let _ = io::stderr().lock().write_all(data);
}

/// Flushes stdout before `vk` exits.
pub fn flush() {
    checked(io::stdout().lock().flush());
}

fn checked(result: io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            let _ = writeln!(io::stderr(), "vk: cannot write to stdout: {err}");
            std::process::exit(2);
        }
    }
}
