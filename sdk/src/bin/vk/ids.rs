//! Short ids on the command line: runs print as `r12`, jobs as plain numbers
//! (`j12` is accepted too), so `vk cancel r12` and `vk cancel 42` say which.

use std::fmt;
use std::str::FromStr;

/// A job or run named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `42` or `j42`.
    Job(u64),
    /// `r12`.
    Run(u64),
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |digits: &str| {
            digits
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not a job id (42) or run id (r12)"))
        };
        match s.strip_prefix('r') {
            Some(n) => parse(n).map(Target::Run),
            None => parse(s.strip_prefix('j').unwrap_or(s)).map(Target::Job),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Job(id) => write!(f, "job {id}"),
            Target::Run(id) => write!(f, "run r{id}"),
        }
    }
}

/// A run id: `r12` or `12`.
pub fn parse_run(s: &str) -> Result<u64, String> {
    s.strip_prefix('r')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}` is not a run id (r12)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_say_what_an_id_names() {
        assert_eq!("42".parse(), Ok(Target::Job(42)));
        assert_eq!("j42".parse(), Ok(Target::Job(42)));
        assert_eq!("r7".parse(), Ok(Target::Run(7)));
        assert!("x7".parse::<Target>().is_err());
        assert_eq!(parse_run("r3"), Ok(3));
        assert_eq!(parse_run("3"), Ok(3));
    }
}
