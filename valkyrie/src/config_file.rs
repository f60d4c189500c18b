//! Configuration files for `valkyrie-server` and `valkyrie-agent`.
//!
//! A file is a TOML table whose keys are the binary's flags in snake_case
//! (`--data-dir` is `data_dir`), with the values the flags take: strings,
//! numbers, booleans, and arrays for repeatable flags. So a file can hold
//! every flag, and its values are checked by the same parsers as the flags'.
//! An unknown key is refused, naming it (with a did-you-mean).
//!
//! Precedence, highest first: the command line, `VALKYRIE_*` environment
//! variables, the file, the built-in default.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Largest configuration file read (a bound on outside input).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a configuration file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("configuration file {path} is {size} bytes, over the limit of {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key names no flag.
    #[error("configuration file {path}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// `; did you mean `x`?`, or empty.
        hint: String,
    },
    /// A value is of the wrong type or refused by the flag's parser.
    #[error("configuration file {path}: `{key}`: {message}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses the command line of `T` with the configuration file named by
/// `--config PATH` or `config_env` merged in under it. `--help`, `--version`
/// and command-line errors exit the process as clap does.
pub fn parse_with_config<T: clap::Parser>(config_env: &str) -> Result<T, LoadConfigError> {
    parse_from_with_config(std::env::args_os(), config_env)
}

/// [`parse_with_config`] with explicit arguments (the first is the program name).
pub fn parse_from_with_config<T: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
    config_env: &str,
) -> Result<T, LoadConfigError> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let path = config_path(&args).or_else(|| std::env::var_os(config_env).filter(|v| !v.is_empty()));
    let mut full = args.iter().take(1).cloned().collect::<Vec<_>>();
    let mut from_file = Vec::new();
    if let Some(path) = &path {
        from_file = file_args(&T::command(), Path::new(path), &args[1.min(args.len())..])?;
        full.extend(from_file.iter().map(|(_, _, arg)| arg.clone()));
    }
    full.extend(args.iter().skip(1).cloned());
    let matches = match T::command().try_get_matches_from(full) {
        Ok(matches) => matches,
        Err(err) => {
            // A value from the file that its flag's parser refused: name the key.
            let invalid_arg = match err.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(arg)) => arg.clone(),
                _ => String::new(),
            };
            let culprit = from_file.iter().find(|(long, _, _)| {
                invalid_arg.starts_with(&format!("--{long} ")) || invalid_arg == format!("--{long}")
            });
            match (culprit, path) {
                (Some((_, key, _)), Some(path)) if err.kind() != clap::error::ErrorKind::ArgumentConflict => {
                    return Err(LoadConfigError::InvalidValue {
                        path: PathBuf::from(path),
                        key: key.clone(),
                        message: clap_message(&err),
                    })
                }
                _ => err.exit(),
            }
        }
    };
    Ok(T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// The value of `--config PATH` or `--config=PATH`, if given.
fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if text == "--config" {
            return iter.next().cloned();
        }
        if let Some(value) = text.strip_prefix("--config=") {
            return Some(value.into());
        }
    }
    None
}

/// The file's settings as `--flag=value` arguments, leaving out those given
/// on the command line or in the environment.
/// Each as (long flag, key, argument).
fn file_args(
    command: &clap::Command,
    path: &Path,
    given: &[OsString],
) -> Result<Vec<(String, String, OsString)>, LoadConfigError> {
    if given.iter().any(|g| {
        command
            .get_subcommands()
            .any(|s| g.to_str() == Some(s.get_name()))
    }) {
        // A subcommand (`valkyrie-server token`) has flags of its own.
        return Ok(Vec::new());
    }
    let read_err = |source| LoadConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(LoadConfigError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LoadConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let settable = |arg: &&clap::Arg| {
        arg.get_long().is_some() && !["config", "help", "version"].contains(&arg.get_id().as_str())
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(arg) = command
            .get_arguments()
            .filter(settable)
            .find(|a| a.get_id().as_str() == key)
        else {
            let best = command
                .get_arguments()
                .filter(settable)
                .map(|a| a.get_id().as_str().to_owned())
                .min_by_key(|name| strsim::levenshtein(name, key))
                .filter(|name| strsim::levenshtein(name, key) <= 3);
            return Err(LoadConfigError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                hint: best.map_or_else(String::new, |b| format!("; did you mean `{b}`?")),
            });
        };
        let long = arg.get_long().expect("filtered on long flags");
        let on_command_line = given.iter().any(|g| {
            let g = g.to_string_lossy();
            g == format!("--{long}") || g.starts_with(&format!("--{long}="))
        });
        let in_environment = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|v| !v.is_empty());
        if on_command_line || in_environment {
            continue;
        }
        let invalid = |message: String| LoadConfigError::InvalidValue {
            path: path.to_owned(),
            key: key.clone(),
            message,
        };
        let values = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>(),
            other => scalar(other).map(|v| vec![v]),
        }
        .map_err(invalid)?;
        if !arg.get_action().takes_values() {
            // A switch: `true` sets it, `false` leaves it off.
            match value {
                toml::Value::Boolean(true) => {
                    out.push((long.to_owned(), key.clone(), format!("--{long}").into()))
                }
                toml::Value::Boolean(false) => {}
                _ => return Err(invalid("expected true or false".into())),
            }
            continue;
        }
        for v in values {
            out.push((long.to_owned(), key.clone(), format!("--{long}={v}").into()));
        }
    }
    Ok(out)
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string, number or boolean, not a {}",
            other.type_str()
        )),
    }
}

/// clap's message without its `error: ` prefix and usage tail.
fn clap_message(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "a")]
        name: String,
        #[arg(long, value_delimiter = ',')]
        listen: Vec<String>,
        #[arg(long, default_value_t = 1)]
        lease: u16,
        #[arg(long, default_value_t = 4)]
        slots: u32,
        #[arg(long)]
        verbose: bool,
    }

    fn parse(file: &str, args: &[&str]) -> Result<Args, LoadConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut full = vec!["prog".to_owned(), "--config".into(), path.display().to_string()];
        full.extend(args.iter().map(|a| a.to_string()));
        parse_from_with_config(full, "VALKYRIE_CONFIG_FILE_TEST_UNSET")
    }

    #[test]
    fn values_apply_and_flags_override_them() {
        let file = "name = \"b\"\nlisten = [\"x\", \"y\"]\nlease = 300\nslots = 9\nverbose = true\n";
        let args = parse(file, &[]).unwrap();
        assert_eq!(args.name, "b");
        assert_eq!(args.listen, ["x", "y"]);
        assert_eq!(args.lease, 300);
        assert_eq!(args.slots, 9);
        assert!(args.verbose);
        let args = parse(file, &["--name", "c", "--listen=z", "--slots", "2"]).unwrap();
        assert_eq!(
            (args.name.as_str(), args.listen.as_slice(), args.slots),
            ("c", &["z".to_owned()][..], 2)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = parse("lisen = [\"x\"]\n", &[]).unwrap_err().to_string();
        assert!(
            err.contains("unknown key `lisen`; did you mean `listen`?"),
            "{err}"
        );
        let err = parse("lease = \"soon\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`lease`") && err.contains("soon"), "{err}");
        let err = parse("slots = [[1]]\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`slots`: expected a string"), "{err}");
        let err = parse("config = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("unknown key `config`"), "{err}");
        let err = parse("name = \n", &[]).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }
}
