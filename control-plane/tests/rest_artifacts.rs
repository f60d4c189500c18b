//! `GET /api/ci/jobs/{id}/artifacts[/{name}]` on the real server: the
//! listing, and a download streamed with its Content-Length and checksum.
//! The artifact is left in the data directory as an earlier version
//! stored it (a blob and a `jobs/<id>.json` record) before the server
//! starts, so this also shows that such records are moved into the store.

mod rest_support;

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;

#[tokio::test]
async fn artifacts_are_listed_and_downloaded_with_their_length_and_checksum() {
    let dir = tempfile::tempdir().unwrap();
    // 3 MiB and a bit: several body chunks.
    let data: Vec<u8> = (0..(3u32 << 20) + 12345).map(|i| (i % 251) as u8).collect();
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    let root = dir.path().join("data/artifacts");
    let blob_dir = root.join("blobs").join(&sha256[..2]);
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(blob_dir.join(&sha256), &data).unwrap();
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = serde_json::json!({ "artifacts.tar": {
        "size": data.len(), "sha256": sha256, "created_at_ms": now_ms,
        "expires_at_ms": now_ms + 3_600_000,
    } });
    std::fs::write(root.join("jobs/7.json"), record.to_string()).unwrap();
    let server = ServerProcess::start_in(dir, &[], &[]);
    assert!(
        !server.dir.path().join("data/artifacts/jobs/7.json").exists(),
        "the record was moved into the store"
    );

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
