//! Transport URIs: `unix:///path`, `tcp://host:port`, `tls://host:port`,
//! `quic://host:port`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to connect or listen, parsed from a URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix domain socket at a path.
    Unix(PathBuf),
    /// Plain TCP.
    Tcp(HostPort),
    /// TCP with TLS 1.3.
    Tls(HostPort),
    /// QUIC (always TLS 1.3), ALPN `valkyrie/1`.
    Quic(HostPort),
}

/// A host (name or IP literal) and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port; 0 asks the OS for a free one when binding.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a URI is not a Valkyrie endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint `{uri}`: {problem} (expected unix:///path, tcp://host:port, tls://host:port or quic://host:port)")]
pub struct ParseEndpointError {
    uri: String,
    problem: &'static str,
}

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        let err = |problem| ParseEndpointError {
            uri: uri.to_owned(),
            problem,
        };
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| err("missing scheme"))?;
        if scheme == "unix" {
            if rest.is_empty() {
                return Err(err("missing socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| err("unclosed `[` in IPv6 address"))?;
            (host, after.strip_prefix(':').ok_or_else(|| err("missing port"))?)
        } else {
            rest.rsplit_once(':').ok_or_else(|| err("missing port"))?
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let port = port
            .parse()
            .map_err(|_| err("port is not a number from 0 to 65535"))?;
        let hp = HostPort {
            host: host.to_owned(),
            port,
        };
        match scheme {
            "tcp" => Ok(Endpoint::Tcp(hp)),
            "tls" => Ok(Endpoint::Tls(hp)),
            "quic" => Ok(Endpoint::Quic(hp)),
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(hp) => write!(f, "tcp://{hp}"),
            Endpoint::Tls(hp) => write!(f, "tls://{hp}"),
            Endpoint::Quic(hp) => write!(f, "quic://{hp}"),
        }
    }
}

impl Endpoint {
    /// The transport's name, for logs and metrics.
    pub fn transport(&self) -> &'static str {
        match self {
            Endpoint::Unix(_) => "unix",
            Endpoint::Tcp(_) => "tcp",
            Endpoint::Tls(_) => "tls",
            Endpoint::Quic(_) => "quic",
        }
    }

    /// Whether the transport needs TLS configuration.
    pub fn needs_tls(&self) -> bool {
        matches!(self, Endpoint::Tls(_) | Endpoint::Quic(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            "unix:///tmp/v.sock".parse(),
            Ok(Endpoint::Unix("/tmp/v.sock".into()))
        );
        let hp = HostPort {
            host: "127.0.0.1".into(),
            port: 7000,
        };
        assert_eq!("tcp://127.0.0.1:7000".parse(), Ok(Endpoint::Tcp(hp.clone())));
        assert_eq!("tls://127.0.0.1:7000".parse(), Ok(Endpoint::Tls(hp.clone())));
        assert_eq!("quic://127.0.0.1:7000/".parse(), Ok(Endpoint::Quic(hp)));
        let v6: Endpoint = "tcp://[::1]:80".parse().unwrap();
        assert_eq!(v6.to_string(), "tcp://[::1]:80");
    }

    #[test]
    fn refuses_bad_uris_with_the_problem() {
        for (uri, problem) in [
            ("127.0.0.1:7000", "missing scheme"),
            ("http://x:1", "unknown scheme"),
            ("tcp://x", "missing port"),
            ("tcp://x:99999", "port is not a number"),
            ("unix://", "missing socket path"),
        ] {
            let err = uri.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(problem), "{uri}: {err}");
        }
    }
}
