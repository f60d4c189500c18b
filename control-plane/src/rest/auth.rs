//! Who is calling: bearer tokens, JWTs and roles.
//!
//! A request carries `Authorization: Bearer <token>`. The token is either
//! the server's API token (the one SDK clients and `vk` use), which counts
//! as `admin`, or a JWT the server signed (HS256, with the secret in the
//! data directory's `jwt-secret`) carrying `sub`, `role` and `exp`.
//! Roles are ordered: `viewer` may read, `submitter` may also create,
//! upload, trigger and cancel, `admin` may do everything (drain runners).
//!
//! JWTs are HS256 only: a token whose header names any other algorithm is
//! refused before its signature is looked at, so no algorithm confusion is
//! possible. The HMAC comes from `ring`, which the TLS stack already builds.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::AppState;

/// What a caller may do; each role includes the ones below it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: every GET route.
    Viewer,
    /// Viewer, plus create, upload, trigger and cancel.
    Submitter,
    /// Everything, including draining runners.
    Admin,
}

impl Role {
    /// The lower-case name used in tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }
}

/// The claims of a Valkyrie JWT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// What the holder may do.
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Not valid before, seconds since the Unix epoch (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// How far in the future a token's `iat` may be (clock skew between the
/// minting host and this one); later than that, the token is refused.
pub const MAX_IAT_SKEW_SECS: u64 = 60;

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyTokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header names an algorithm other than HS256.
    #[error("the token's algorithm `{0}` is not accepted; only HS256 tokens from this server are")]
    Algorithm(String),
    /// The signature does not match this server's secret.
    #[error("the token's signature is not valid for this server")]
    Signature,
    /// Past its `exp`.
    #[error("the token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    /// Its `iat` is more than [`MAX_IAT_SKEW_SECS`] in the future, or after its `exp`.
    #[error("the token's issue time (iat) is in the future or after its expiry; mint a new one")]
    IssuedInFuture,
}

/// Signs and checks the server's JWTs (HS256 only, with `exp` and `nbf`
/// enforced with no leeway, and `iat` at most [`MAX_IAT_SKEW_SECS`] ahead),
/// with the `jsonwebtoken` crate.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    /// Keys from a secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Reads the secret from `data_dir/jwt-secret`, generating it (mode
    /// 0600) if it is missing. Returns the keys and whether it was generated.
    pub fn load_or_generate(data_dir: &Path) -> std::io::Result<(Self, bool)> {
        let path = data_dir.join("jwt-secret");
        match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => Ok((Self::new(secret.trim().as_bytes()), false)),
            _ => {
                let secret = crate::auth::random_token();
                crate::auth::write_private(&path, &secret)?;
                Ok((Self::new(secret.as_bytes()), true))
            }
        }
    }

    /// Issues a token for `sub` with `role`, valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: Duration) -> String {
        let now = unix_now();
        self.sign(&Claims {
            sub: sub.to_owned(),
            role,
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: None,
        })
    }

    /// Signs arbitrary claims (tests use it to make expired tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks a token's algorithm, signature, expiry, `nbf` and `iat`.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyTokenError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => {
                let claims = data.claims;
                if claims.iat > unix_now() + MAX_IAT_SKEW_SECS || claims.iat > claims.exp {
                    return Err(VerifyTokenError::IssuedInFuture);
                }
                Ok(claims)
            }
            Err(err) => Err(match err.kind() {
                ErrorKind::ExpiredSignature => VerifyTokenError::Expired,
                ErrorKind::ImmatureSignature => VerifyTokenError::NotYetValid,
                ErrorKind::InvalidSignature => VerifyTokenError::Signature,
                ErrorKind::InvalidAlgorithm => {
                    let alg = jsonwebtoken::decode_header(token)
                        .map(|h| format!("{:?}", h.alg))
                        .unwrap_or_default();
                    VerifyTokenError::Algorithm(alg)
                }
                _ => VerifyTokenError::Malformed,
            }),
        }
    }
}

/// An authenticated caller (extracted from the request; also charges the
/// caller's rate limit).
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who: the JWT's `sub`, or `api-token`.
    pub sub: String,
    /// What they may do.
    pub role: Role,
    /// Whether they presented the API token (not a JWT whose `sub` merely
    /// says `api-token`).
    pub is_api_token: bool,
}

/// The `sub` of a caller holding the API token.
pub const API_TOKEN_SUBJECT: &str = "api-token";

impl Caller {
    /// Who the caller is, for the audit log.
    pub fn actor(&self) -> crate::audit::Actor {
        if self.is_api_token {
            crate::audit::Actor::api_token(API_TOKEN_SUBJECT)
        } else {
            crate::audit::Actor::jwt(self.sub.clone())
        }
    }

    /// Refuses with 403 unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "role `{}` may not do this; it needs `{}`",
            self.role.as_str(),
            needed.as_str()
        ))
        .details(format!("caller: {}", self.sub))
        .suggest(format!(
            "use a token with role `{}` or higher (an admin mints one with: valkyrie-server token --role {})",
            needed.as_str(),
            needed.as_str()
        )))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("no Authorization header"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header is not `Bearer <token>`"))?;
        let caller = if state.tokens.is_api_token(token) {
            Caller {
                sub: API_TOKEN_SUBJECT.into(),
                role: Role::Admin,
                is_api_token: true,
            }
        } else {
            let claims = state
                .jwt
                .verify(token)
                .map_err(|e| ApiError::unauthenticated(e.to_string()))?;
            Caller {
                sub: claims.sub,
                role: claims.role,
                is_api_token: false,
            }
        };
        state.limiter.check(token)?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let keys = JwtKeys::new(b"secret");
        let token = keys.mint("alice", Role::Submitter, Duration::from_secs(60));
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("alice", Role::Submitter));

        let other = JwtKeys::new(b"other secret");
        assert_eq!(other.verify(&token), Err(VerifyTokenError::Signature));

        let expired = keys.sign(&Claims {
            sub: "bob".into(),
            role: Role::Admin,
            exp: unix_now() - 1,
            iat: 0,
            nbf: None,
        });
        assert_eq!(keys.verify(&expired), Err(VerifyTokenError::Expired));

        // Same claims and signature, but a header claiming `none`
        // (base64url of {"alg":"none"}): refused.
        let (_, rest) = token.split_once('.').unwrap();
        let none = format!("eyJhbGciOiJub25lIn0.{rest}");
        assert!(keys.verify(&none).is_err());
        // Signed with the right secret but another algorithm: refused by name.
        let claims = Claims {
            sub: "eve".into(),
            role: Role::Admin,
            exp: unix_now() + 60,
            iat: 0,
            nbf: None,
        };
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(
            keys.verify(&hs384),
            Err(VerifyTokenError::Algorithm("HS384".into()))
        );
        assert_eq!(keys.verify("garbage"), Err(VerifyTokenError::Malformed));
    }

    #[test]
    fn future_nbf_and_iat_are_refused() {
        let keys = JwtKeys::new(b"secret");
        let now = unix_now();
        let claims = |iat: u64, nbf: Option<u64>| Claims {
            sub: "mallory".into(),
            role: Role::Admin,
            exp: now + 3600,
            iat,
            nbf,
        };
        let early = keys.sign(&claims(now, Some(now + 600)));
        assert_eq!(keys.verify(&early), Err(VerifyTokenError::NotYetValid));
        let future = keys.sign(&claims(now + 600, None));
        assert_eq!(keys.verify(&future), Err(VerifyTokenError::IssuedInFuture));
        let after_exp = keys.sign(&claims(now + 7200, None));
        assert_eq!(keys.verify(&after_exp), Err(VerifyTokenError::IssuedInFuture));
        // Within the skew, and an nbf already past: accepted.
        let fine = keys.sign(&claims(now + MAX_IAT_SKEW_SECS / 2, Some(now - 10)));
        assert!(keys.verify(&fine).is_ok());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Submitter && Role::Submitter > Role::Viewer);
        let viewer = Caller {
            sub: "v".into(),
            role: Role::Viewer,
            is_api_token: false,
        };
        assert!(viewer.require(Role::Viewer).is_ok());
        assert_eq!(
            viewer.require(Role::Submitter).unwrap_err().status(),
            axum::http::StatusCode::FORBIDDEN
        );
    }
}
