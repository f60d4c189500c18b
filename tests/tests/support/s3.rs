//! A real S3-compatible server for the artifact tests: moto's server
//! (`moto_server`, from PyPI's `moto[server]`), in memory, on a free port.

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use super::{pip_script, ServiceProcess};

const MOTO: &str = "moto_server";

/// Credentials moto accepts (any).
const KEY_ID: &str = "valkyrie-test";
const SECRET: &str = "valkyrie-test-secret";
const REGION: &str = "us-east-1";

/// A running `moto_server`, killed on drop.
pub struct S3Server {
    process: ServiceProcess,
}

impl S3Server {
    /// Starts it and waits (up to [`DEADLINE`](super::DEADLINE)) until it accepts connections.
    pub fn start() -> Self {
        // The HTTP clients below use rustls with the provider installed
        // by the process, as the server's do.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let program = pip_script(
            MOTO,
            "the S3 artifact tests need this S3-compatible server; install it with \
             `python3 -m pip install 'moto[server]'` (scripts/test does)",
        );
        let process = ServiceProcess::start(MOTO, &program, |command, port, _| {
            command.args(["-H", "127.0.0.1", "-p"]).arg(port.to_string());
        });
        Self { process }
    }

    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port)
    }

    /// The AWS variables that point a client (the server) at it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", REGION.into()),
        ]
    }

    /// Creates bucket `name` (a plain S3 `PUT /name`).
    pub async fn create_bucket(&self, name: &str) {
        let response = super::http_client()
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .expect("create bucket");
        assert!(
            response.status().is_success(),
            "create bucket {name}: {response:?}"
        );
    }

    /// An S3 client of bucket `bucket` on it.
    pub fn bucket(&self, bucket: &str) -> Arc<AmazonS3> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .with_region(REGION)
                .with_bucket_name(bucket)
                .build()
                .expect("S3 client"),
        )
    }

    /// The keys and sizes of the objects under `prefix` in `bucket`, listed
    /// through the S3 API.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        self.bucket(bucket)
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .expect("list objects")
    }
}
