//! Finding a step's program, and the default shell.
//!
//! A step's program is looked up on the `PATH` of the step's own
//! environment, not the agent's, so that a job that changes `PATH` runs
//! what that `PATH` names; and we look it up ourselves so that a program
//! that is missing is reported by name, instead of as a bare
//! "No such file or directory" from `exec`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Default shell where bash exists: stops at the first failing command,
/// including a failing command inside a pipe.
pub const BASH_SHELL: &[&str] = &["bash", "-eo", "pipefail", "-c"];
/// Default shell where there is no bash: stops at the first failing command
/// (POSIX `sh` has no `pipefail`).
pub const SH_SHELL: &[&str] = &["sh", "-e", "-c"];

/// The shell a step's command line runs in when neither the job nor the
/// agent's `--shell` names one: [`BASH_SHELL`] when `bash` is on the
/// agent's `PATH`, otherwise [`SH_SHELL`]. Decided once per process.
pub fn default_shell() -> Vec<String> {
    static SHELL: OnceLock<Vec<String>> = OnceLock::new();
    SHELL
        .get_or_init(|| {
            let path = std::env::var("PATH").ok();
            let shell = if find_program("bash", path.as_deref(), Path::new("/")).is_some() {
                BASH_SHELL
            } else {
                SH_SHELL
            };
            shell.iter().map(|s| (*s).to_owned()).collect()
        })
        .clone()
}

/// The executable `program` names: itself when it contains a `/` (relative
/// to `cwd`), otherwise the first executable file of that name in the
/// directories of `path` (an empty entry, or a relative one, is taken
/// relative to `cwd`, as `execvp` in `cwd` would). `None` when there is no
/// such executable file.
pub fn find_program(program: &str, path: Option<&str>, cwd: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let candidate = cwd.join(program);
        return is_executable(&candidate).then_some(candidate);
    }
    std::env::split_paths(path?)
        .map(|dir| cwd.join(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_on_the_usual_path() {
        let found = find_program("sh", Some("/nonexistent:/usr/bin:/bin"), Path::new("/tmp")).expect("sh");
        assert!(found.ends_with("sh"), "{}", found.display());
    }

    #[test]
    fn a_literal_dollar_path_finds_nothing() {
        let cwd = Path::new("/");
        assert_eq!(find_program("sh", Some("/opt/bin:$PATH"), cwd), None);
        assert_eq!(find_program("sh", None, cwd), None);
    }

    #[test]
    fn a_path_with_a_slash_is_checked_as_is_or_relative_to_cwd() {
        let cwd = Path::new("/");
        assert_eq!(find_program("/nonexistent/sh", Some("/bin"), cwd), None);
        assert!(find_program("/bin/sh", None, cwd).is_some());
        assert_eq!(
            find_program("./bin/sh", None, cwd),
            Some(PathBuf::from("/./bin/sh"))
        );
        assert_eq!(find_program("./bin/sh", None, Path::new("/nonexistent")), None);
    }

    #[test]
    fn default_shell_fails_on_the_first_failing_command() {
        let shell = default_shell();
        assert!(shell == BASH_SHELL || shell == SH_SHELL, "{shell:?}");
        assert!(shell.iter().any(|a| a == "-e" || a == "-eo"), "{shell:?}");
    }
}
