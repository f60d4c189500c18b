//! `GET /api/ci/jobs/{id}/artifacts[/{name}]` on the real server: the
//! listing, and a download streamed with its Content-Length and checksum.
//! The artifact is put in the server's store through the store's own
//! library (as an upload would leave it), while the server runs.

mod rest_support;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::artifacts::{ArtifactStore, StoreConfig};

#[tokio::test]
async fn artifacts_are_listed_and_downloaded_with_their_length_and_checksum() {
    let server = ServerProcess::start(&[], &[]);
    let store = Arc::new(
        ArtifactStore::open(server.dir.path().join("data/artifacts"), StoreConfig::default()).unwrap(),
    );
    // 3 MiB and a bit: several body chunks.
    let data: Vec<u8> = (0..(3u32 << 20) + 12345).map(|i| (i % 251) as u8).collect();
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    let mut upload = store.begin_upload().await.unwrap();
    upload.write(0, &data).await.unwrap();
    store
        .commit(
            upload,
            7,
            "artifacts.tar",
            data.len() as u64,
            &sha256,
            Duration::ZERO,
        )
        .await
        .unwrap();

    let http = http_client();
    let listed: Value = http
        .get(server.url("/api/ci/jobs/7/artifacts"))
        .bearer_auth(&server.api_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["name"], "artifacts.tar", "{listed}");
    assert_eq!(listed[0]["size"], data.len() as u64, "{listed}");
    assert_eq!(listed[0]["sha256"], sha256.as_str(), "{listed}");

    let response = http
        .get(server.url("/api/ci/jobs/7/artifacts/artifacts.tar"))
        .bearer_auth(&server.api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), Some(data.len() as u64));
    assert_eq!(response.headers()["x-checksum-sha256"], sha256.as_str());
    let body = response.bytes().await.unwrap();
    assert!(body[..] == data[..], "the body is the artifact");

    let missing = http
        .get(server.url("/api/ci/jobs/7/artifacts/nope.tar"))
        .bearer_auth(&server.api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["message"], "job 7 has no artifact `nope.tar`", "{body}");
    let unauthenticated = http
        .get(server.url("/api/ci/jobs/7/artifacts/artifacts.tar"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}
