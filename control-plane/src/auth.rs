//! Tokens: the API token for clients, the registration token for agents, and
//! the per-runner credentials issued at registration. Tokens are compared in
//! constant time.

use std::path::{Path, PathBuf};

use dashmap::DashSet;
use valkyrie::message::{Hello, Role};
use valkyrie::ErrorCode;

/// The server's secrets.
#[derive(Debug)]
pub struct Tokens {
    api: String,
    runner: String,
    credentials: DashSet<String>,
}

/// A token file written by the server.
#[derive(Debug, Clone)]
pub struct GeneratedToken {
    /// Which token ("api" or "runner").
    pub kind: &'static str,
    /// Where it was written.
    pub path: PathBuf,
}

/// A random 32-byte token, hex-encoded.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether two tokens are equal, compared in constant time.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    constant_time_eq(a, b)
}

impl Tokens {
    /// Tokens from configuration.
    pub fn new(api: String, runner: String) -> Self {
        Self {
            api,
            runner,
            credentials: DashSet::new(),
        }
    }

    /// Uses the given tokens, or reads (or else generates) each missing one
    /// from `data_dir` (`api-token`, `runner-token`, mode 0600). Returns the
    /// tokens and the files that were generated now.
    pub fn load_or_generate(
        data_dir: &Path,
        api: Option<String>,
        runner: Option<String>,
    ) -> std::io::Result<(Self, Vec<GeneratedToken>)> {
        let mut generated = Vec::new();
        let mut resolve = |given: Option<String>, kind: &'static str| -> std::io::Result<String> {
            if let Some(token) = given.filter(|t| !t.is_empty()) {
                return Ok(token);
            }
            let path = data_dir.join(format!("{kind}-token"));
            match std::fs::read_to_string(&path) {
                Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
                _ => {
                    let token = random_token();
                    write_private(&path, &token)?;
                    generated.push(GeneratedToken { kind, path });
                    Ok(token)
                }
            }
        };
        let api = resolve(api, "api")?;
        let runner = resolve(runner, "runner")?;
        Ok((Self::new(api, runner), generated))
    }

    /// Whether `token` is the API token (compared in constant time).
    pub fn is_api_token(&self, token: &str) -> bool {
        constant_time_eq(token, &self.api)
    }

    /// Accepts a credential issued before a restart again.
    pub fn restore_runner_credential(&self, credential: &str) {
        self.credentials.insert(credential.to_owned());
    }

    /// Issues a credential for a newly registered runner.
    pub fn issue_runner_credential(&self) -> String {
        let credential = random_token();
        self.credentials.insert(credential.clone());
        credential
    }

    /// Judges a Hello: the API token for clients; the registration token or
    /// an issued credential for agents. spec §6.1.4: a wrong token is
    /// `UNAUTHENTICATED`; a valid token for a role it does not grant is
    /// `PERMISSION_DENIED`, so the operator learns which token to use.
    pub fn authenticate(&self, hello: &Hello) -> Result<(), AuthError> {
        let is_api = constant_time_eq(&hello.token, &self.api);
        let is_runner =
            constant_time_eq(&hello.token, &self.runner) || self.credentials.contains(&hello.token);
        let (ok, other_role) = match hello.role {
            Role::Client => (is_api, is_runner),
            Role::Agent => (is_runner, is_api),
        };
        if ok {
            return Ok(());
        }
        if other_role {
            let why = match hello.role {
                Role::Client => {
                    "this is a runner token, which does not grant the client role; \
                     pass the server's API token with --token or VALKYRIE_TOKEN"
                }
                Role::Agent => {
                    "this is the API token, which does not grant the agent role; \
                     pass the server's runner token with --token or VALKYRIE_RUNNER_TOKEN"
                }
            };
            return Err(AuthError::WrongRole(why));
        }
        let what = match hello.role {
            Role::Client => "API token; pass the server's API token with --token or VALKYRIE_TOKEN",
            Role::Agent => {
                "runner registration token; pass the server's runner token with --token or VALKYRIE_RUNNER_TOKEN"
            }
        };
        Err(AuthError::UnknownToken(what))
    }
}

/// Why a connection's Hello is refused. Both are the peer's to fix; the
/// kind says whether its token is unknown or belongs to the other role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No role's token: `UNAUTHENTICATED`.
    #[error("invalid {0}")]
    UnknownToken(&'static str),
    /// A valid token of the other role: `PERMISSION_DENIED`, so that the
    /// operator learns which token to use.
    #[error("{0}")]
    WrongRole(&'static str),
}

impl AuthError {
    /// The code the connection is closed with.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::UnknownToken(_) => ErrorCode::UNAUTHENTICATED,
            AuthError::WrongRole(_) => ErrorCode::PERMISSION_DENIED,
        }
    }
}

/// Writes a secret file readable only by its owner (mode 0600).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    valkyrie::private_fs::write_file(path, format!("{contents}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role, token: &str) -> Hello {
        valkyrie::transport::hello(role, token, "test")
    }

    #[test]
    fn roles_take_their_own_tokens() {
        let tokens = Tokens::new("api".into(), "reg".into());
        assert!(tokens.authenticate(&hello(Role::Client, "api")).is_ok());
        assert!(tokens.authenticate(&hello(Role::Client, "reg")).is_err());
        assert!(tokens.authenticate(&hello(Role::Agent, "reg")).is_ok());
        let refused = tokens.authenticate(&hello(Role::Agent, "api")).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::PERMISSION_DENIED);
        assert!(refused.to_string().contains("runner token"), "{refused}");
        let unknown = tokens.authenticate(&hello(Role::Agent, "nope")).unwrap_err();
        assert_eq!(unknown.code(), ErrorCode::UNAUTHENTICATED);
        let credential = tokens.issue_runner_credential();
        assert!(tokens.authenticate(&hello(Role::Agent, &credential)).is_ok());
    }

    #[test]
    fn generated_tokens_are_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, generated) = Tokens::load_or_generate(dir.path(), None, Some("given".into())).unwrap();
        assert_eq!(generated.len(), 1);
        let mode = std::fs::metadata(&generated[0].path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, again) = Tokens::load_or_generate(dir.path(), None, None).unwrap();
        assert_eq!(
            first.api, second.api,
            "the API token is read back, not regenerated"
        );
        assert_eq!(again.len(), 1, "only the runner token was missing");
    }
}
