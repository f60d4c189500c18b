//! A step's environment.
//!
//! Steps never inherit the agent's environment: the agent may hold its
//! registration token (`VALKYRIE_RUNNER_TOKEN`) or a user's API token
//! (`VALKYRIE_TOKEN`) there, and any pipeline could read and steal them.
//! A step sees, later layers overriding earlier ones:
//!
//! 1. the agent's variables named in [`AGENT_ENV_ALLOWED`] (plus `LC_*` and
//!    the names the operator passes with `--pass-env`), never a
//!    `VALKYRIE_*` variable;
//! 2. what the agent sets for every job (`CI=true`, `VALKYRIE_JOB_ID`, …);
//! 3. the job's `env`, in order, each value `$VAR`-expanded ([`expand`])
//!    against the variables set before it, then its secrets (literal);
//! 4. what earlier steps added through `$VALKYRIE_ENV` and `$VALKYRIE_PATH`;
//! 5. the step's `env`, expanded the same way;
//! 6. `VALKYRIE_ENV` and `VALKYRIE_PATH`, the files of this step.

use std::fmt;

/// Variables of the agent's own environment that a step inherits.
/// Locale variables `LC_*` are passed on too.
pub const AGENT_ENV_ALLOWED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
];

/// Largest value of one variable after expansion. Linux refuses a single
/// environment string over 128 KiB (`MAX_ARG_STRLEN`) anyway; checking it
/// here bounds the work of expanding `A: $B$B`, `B: $C$C`, … chains.
pub const MAX_ENV_VALUE_BYTES: usize = 128 * 1024;

/// Largest file a step may leave at `$VALKYRIE_ENV` or `$VALKYRIE_PATH`.
pub const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

/// Prefix of the agent's own settings; never passed to a step.
const AGENT_PREFIX: &str = "VALKYRIE_";

/// Whether an agent variable named `name` may reach a step: allowed by
/// default or named by the operator, and not one of the agent's own.
pub fn passes_to_jobs(name: &str, extra: &[String]) -> bool {
    !name.starts_with(AGENT_PREFIX)
        && (AGENT_ENV_ALLOWED.contains(&name) || name.starts_with("LC_") || extra.iter().any(|e| e == name))
}

/// The part of the agent's environment that steps inherit:
/// [`passes_to_jobs`] applied to this process's environment. Variables
/// whose name or value is not UTF-8 are left out.
pub fn agent_environment(extra: &[String]) -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| passes_to_jobs(name, extra))
        .collect()
}

/// A variable's value grew over [`MAX_ENV_VALUE_BYTES`] while expanding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is longer than {MAX_ENV_VALUE_BYTES} bytes after expanding its `$VAR`s; \
     shorten it or the variables it refers to"
)]
pub struct ExpandError {
    /// The variable being set.
    pub name: String,
}

/// An environment under construction: names are unique, insertion order
/// is kept (it is the order the step receives them in).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

// Values may carry secrets: only names are printed.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.vars.iter().map(|(n, _)| n)).finish()
    }
}

impl Env {
    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value` as given.
    pub fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.vars.push((name.to_owned(), value)),
        }
    }

    /// Sets `name` to `raw` with its `$VAR`s expanded against this
    /// environment as it is now.
    pub fn set_expanded(&mut self, name: &str, raw: &str) -> Result<(), ExpandError> {
        let value = expand(raw, |var| self.get(var)).ok_or_else(|| ExpandError {
            name: name.to_owned(),
        })?;
        self.set(name, value);
        Ok(())
    }

    /// Puts `dir` in front of `PATH`.
    pub fn prepend_path(&mut self, dir: &str) {
        let value = match self.get("PATH") {
            Some(path) if !path.is_empty() => format!("{dir}:{path}"),
            _ => dir.to_owned(),
        };
        self.set("PATH", value);
    }

    /// The variables, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Expands `$NAME` and `${NAME}` in `raw` with `lookup`; an undefined
/// variable expands to nothing, `$$` is a literal `$`, and a `$` not
/// followed by a name (or by `{` with a name and `}`) stays as written.
/// Names are ASCII letters, digits and `_`, not starting with a digit.
/// `None` when the result would exceed [`MAX_ENV_VALUE_BYTES`].
pub fn expand<'a>(raw: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        // `consumed`: bytes of `after` taken by the name (and braces).
        let (value, consumed) = if after.starts_with('$') {
            ("$", 1)
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if is_name(&braced[..end]) => (lookup(&braced[..end]).unwrap_or(""), end + 2),
                _ => ("$", 0),
            }
        } else {
            match name_len(after) {
                0 => ("$", 0),
                len => (lookup(&after[..len]).unwrap_or(""), len),
            }
        };
        out.push_str(value);
        if out.len() > MAX_ENV_VALUE_BYTES {
            return None;
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    (out.len() <= MAX_ENV_VALUE_BYTES).then_some(out)
}

/// Length of the variable name at the start of `s` (0 if none).
fn name_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    if bytes.first().is_none_or(|b| b.is_ascii_digit()) {
        return 0;
    }
    bytes
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count()
}

/// Whether `s` is a valid variable name.
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && name_len(s) == s.len()
}

/// What a step asked, through its `$VALKYRIE_ENV` and `$VALKYRIE_PATH`
/// files, to add to the environment of the steps after it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Additions {
    /// `NAME=value` lines, in order.
    pub env: Vec<(String, String)>,
    /// Directories, in the order written; each goes in front of `PATH`,
    /// so the last one ends up first.
    pub path: Vec<String>,
}

/// A `$VALKYRIE_ENV` file the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvFileError {
    /// A line is neither `NAME=value`, `NAME<<DELIMITER` nor empty.
    #[error(
        "$VALKYRIE_ENV line {line}: expected `NAME=value` or `NAME<<DELIMITER` \
         (NAME: letters, digits and `_`)"
    )]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A `NAME<<DELIMITER` block has no closing `DELIMITER` line.
    #[error("$VALKYRIE_ENV line {line}: `{name}<<{delimiter}` is not closed by a line `{delimiter}`")]
    Unclosed {
        /// 1-based line number of the opening line.
        line: usize,
        /// The variable.
        name: String,
        /// The delimiter.
        delimiter: String,
    },
}

/// Parses a `$VALKYRIE_ENV` file: `NAME=value` lines (the value is the
/// rest of the line, taken literally), `NAME<<DELIMITER` followed by the
/// value's lines and a line `DELIMITER` (multi-line values), empty lines.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some((name, delimiter)) = line.split_once("<<") {
            if is_name(name) && !delimiter.is_empty() && !line.contains('=') {
                let mut value: Vec<&str> = Vec::new();
                let closed = lines.by_ref().any(|(_, l)| {
                    if l == delimiter {
                        true
                    } else {
                        value.push(l);
                        false
                    }
                });
                if !closed {
                    return Err(EnvFileError::Unclosed {
                        line: number,
                        name: name.to_owned(),
                        delimiter: delimiter.to_owned(),
                    });
                }
                out.push((name.to_owned(), value.join("\n")));
                continue;
            }
        }
        match line.split_once('=') {
            Some((name, value)) if is_name(name) => out.push((name.to_owned(), value.to_owned())),
            _ => return Err(EnvFileError::BadLine { line: number }),
        }
    }
    Ok(out)
}

/// Parses a `$VALKYRIE_PATH` file: one directory a line, empty lines
/// ignored.
pub fn parse_path_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::default();
        for (n, v) in pairs {
            env.set(n, (*v).to_owned());
        }
        env
    }

    fn ex(raw: &str, env: &Env) -> String {
        expand(raw, |n| env.get(n)).unwrap()
    }

    #[test]
    fn expands_plain_and_braced_names() {
        let e = env(&[("PATH", "/usr/bin:/bin"), ("A", "x")]);
        assert_eq!(ex("/opt/bin:$PATH", &e), "/opt/bin:/usr/bin:/bin");
        assert_eq!(ex("${A}y $A.z", &e), "xy x.z");
        assert_eq!(ex("$Ay", &e), "", "the name runs to the last name character");
    }

    #[test]
    fn undefined_is_empty_and_dollar_dollar_is_a_dollar() {
        let e = env(&[("A", "x")]);
        assert_eq!(ex("[$NOPE][${NOPE}]", &e), "[][]");
        assert_eq!(ex("cost: $$5 and $$A", &e), "cost: $5 and $A");
    }

    #[test]
    fn a_dollar_without_a_name_stays() {
        let e = env(&[("A", "x")]);
        assert_eq!(
            ex("$ $1 $- ${ ${A ${1A} ${{ matrix.os }} end$", &e),
            "$ $1 $- ${ ${A ${1A} ${{ matrix.os }} end$"
        );
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let e = env(&[("A", "$B"), ("B", "no")]);
        assert_eq!(ex("$A", &e), "$B");
    }

    #[test]
    fn set_expanded_sees_only_what_was_set_before() {
        let mut e = env(&[("PATH", "/bin")]);
        e.set_expanded("PATH", "/opt/bin:$PATH").unwrap();
        e.set_expanded("X", "$Y").unwrap();
        e.set_expanded("Y", "late").unwrap();
        assert_eq!(e.get("PATH"), Some("/opt/bin:/bin"));
        assert_eq!(e.get("X"), Some(""));
    }

    #[test]
    fn doubling_chains_are_refused_before_they_grow_unbounded() {
        let mut e = env(&[("V0", "0123456789abcdef")]);
        let mut failed = None;
        for i in 1..64 {
            if let Err(err) = e.set_expanded(&format!("V{i}"), &format!("$V{p}$V{p}", p = i - 1)) {
                failed = Some(err);
                break;
            }
        }
        let err = failed.expect("the chain is refused");
        assert!(err.to_string().contains("131072 bytes"), "{err}");
    }

    #[test]
    fn agent_credentials_never_pass_even_when_asked_for() {
        let extra = vec!["VALKYRIE_RUNNER_TOKEN".to_owned(), "HTTP_PROXY".to_owned()];
        assert!(!passes_to_jobs("VALKYRIE_RUNNER_TOKEN", &extra));
        assert!(!passes_to_jobs("VALKYRIE_TOKEN", &extra));
        assert!(!passes_to_jobs("AWS_SECRET_ACCESS_KEY", &extra));
        assert!(passes_to_jobs("HTTP_PROXY", &extra));
        assert!(passes_to_jobs("PATH", &[]));
        assert!(passes_to_jobs("LC_ALL", &[]));
    }

    #[test]
    fn env_file_lines_and_blocks() {
        let parsed = parse_env_file("A=1\n\nB=x=y\nMULTI<<EOF\nline one\nline two\nEOF\nC=\n").unwrap();
        assert_eq!(
            parsed,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
                ("MULTI".to_owned(), "line one\nline two".to_owned()),
                ("C".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn env_file_errors_name_the_line() {
        assert_eq!(
            parse_env_file("A=1\nnot a line\n"),
            Err(EnvFileError::BadLine { line: 2 })
        );
        assert_eq!(
            parse_env_file("bad-name=1"),
            Err(EnvFileError::BadLine { line: 1 })
        );
        let err = parse_env_file("A=1\nM<<END\nx\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("`END`"), "{err}");
    }

    #[test]
    fn path_file_lines() {
        assert_eq!(parse_path_file("/a\n\n/b c\n"), ["/a", "/b c"]);
    }

    #[test]
    fn debug_shows_names_only() {
        let e = env(&[("TOKEN", "hunter2")]);
        assert_eq!(format!("{e:?}"), r#"["TOKEN"]"#);
    }
}
