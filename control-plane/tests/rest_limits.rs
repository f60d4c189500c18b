//! The REST API under hostile or heavy input: large pipelines are
//! validated off the core, bodies are bounded per route, tokens are
//! checked in time, and only known content types are parsed.

mod rest_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::Role;

/// How long a GET may take while a large pipeline is being created (it
/// takes milliseconds when the core is free; the old core stalled for
/// tens of seconds).
const GET_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_large_pipeline_does_not_stall_other_requests() {
    let server = start(|c| c).await;
    let submitter = server.token(Role::Submitter);
    let viewer = server.token(Role::Viewer);
    let yaml = large_pipeline(2000);
    let bytes = yaml.len();
    let create = tokio::spawn({
        let http = server.http.clone();
        let url = server.url("/api/ci/pipelines");
        let token = submitter.clone();
        async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/yaml")
                .body(yaml)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        }
    });
    let mut answered_during_create = 0;
    let mut slowest = Duration::ZERO;
    // At least one round, then as long as the create is in flight.
    loop {
        let started = Instant::now();
        let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "/readyz while creating");
        let list = server.get("/api/ci/executions", &viewer).await;
        assert_eq!(list.status(), StatusCode::OK, "a GET while creating");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < GET_DEADLINE,
            "/readyz and a GET took {took:?} while a {bytes}-byte pipeline was being created"
        );
        if create.is_finished() {
            break;
        }
        answered_during_create += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body, create_took) = create.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["jobs"], 2000);
    eprintln!(
        "create of {bytes} bytes took {create_took:?}; {answered_during_create} rounds of /readyz + GET answered meanwhile, slowest {slowest:?}"
    );
}

#[tokio::test]
async fn bodies_of_other_types_get_415_and_declared_oversize_413() {
    let server = start(|c| c).await;
    let submitter = server.token(Role::Submitter);
    let post = |path: &'static str, content_type: Option<&'static str>, body: &'static str| {
        let mut request = server
            .http
            .post(server.url(path))
            .bearer_auth(&submitter)
            .body(body);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        request.send()
    };
    for content_type in [
        "image/png",
        "application/x-www-form-urlencoded",
        "application/xml",
        "text/html",
    ] {
        let response = post("/api/ci/pipelines", Some(content_type), HELLO_YAML)
            .await
            .unwrap();
        let body = expect_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
        )
        .await;
        assert!(body.message.contains(content_type), "{}", body.message);
        assert!(
            body.suggestions[0].contains("application/yaml"),
            "{:?}",
            body.suggestions
        );
    }
    let response = post("/api/ci/pipelines/upload", Some("application/yaml"), HELLO_YAML)
        .await
        .unwrap();
    expect_error(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
    )
    .await;
    // YAML by any of its names, plain text, or no type at all: accepted.
    for content_type in [
        Some("application/yaml; charset=utf-8"),
        Some("text/yaml"),
        Some("application/x-yaml"),
        Some("text/plain"),
        None,
    ] {
        let response = post("/api/ci/pipelines", content_type, HELLO_YAML).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type:?}");
    }
    // A multipart form on the create route works as on /upload.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(HELLO_YAML).file_name("form.yaml"),
    );
    let response = server
        .http
        .post(server.url("/api/ci/pipelines"))
        .bearer_auth(&submitter)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["file_name"], "form.yaml");

    // A declared length over the route's limit is refused before the body
    // is read: the request declares 1 MiB and sends none of it, and the
    // answer comes all the same.
    let head = declared_length_answer(&server, "/api/ci/executions/1/cancel", &submitter, 1 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("65536"), "{head}");
    let head = declared_length_answer(&server, "/api/ci/pipelines", &submitter, 11 << 20).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("10485760"), "{head}");
}

/// Sends the head of a POST to `path` declaring `length` bytes, sends no
/// body, and returns what the server answers (within a deadline).
async fn declared_length_answer(server: &TestServer, path: &str, token: &str, length: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/yaml\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(GET_DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("no answer while the declared body was never sent: the server waited for it")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn lists_are_paged_and_listings_carry_no_yaml() {
    let server = start(|c| c).await;
    let viewer = server.token(Role::Viewer);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(server.create_hello().await);
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut path = "/api/ci/pipelines?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let response = server.get(&path, &viewer).await;
        assert_eq!(response.status(), StatusCode::OK);
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let cursor = response
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= 2);
        for item in &page {
            assert!(item.get("yaml").is_none(), "a listing carries YAML: {item}");
            seen.push(item["id"].as_u64().unwrap());
        }
        pages += 1;
        match link {
            Some(link) => {
                let cursor = cursor.expect("X-Next-Cursor with Link");
                assert_eq!(
                    link,
                    format!("</api/ci/pipelines?limit=2&cursor={cursor}>; rel=\"next\"")
                );
                path = link[1..link.find('>').unwrap()].to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3);
    // The YAML is on the single item.
    let one: Value = server
        .get(&format!("/api/ci/pipelines/{}", ids[0]), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["yaml"], HELLO_YAML);

    // Executions page the same way.
    for id in &ids[..3] {
        let response = server
            .post(&format!("/api/ci/pipelines/{id}/trigger"), &server.api_token)
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let response = server.get("/api/ci/executions?limit=2", &viewer).await;
    let cursor = response.headers()["x-next-cursor"].to_str().unwrap().to_owned();
    let first: Vec<Value> = response.json().await.unwrap();
    assert_eq!(first.len(), 2);
    let response = server
        .get(&format!("/api/ci/executions?limit=2&cursor={cursor}"), &viewer)
        .await;
    assert!(response.headers().get("link").is_none());
    let second: Vec<Value> = response.json().await.unwrap();
    assert_eq!(second.len(), 1);
    let (older, oldest_of_first) = (second[0]["run_id"].as_u64(), first[1]["run_id"].as_u64());
    assert!(
        older.is_some() && older < oldest_of_first,
        "{second:?} after {first:?}"
    );

    // Out of range: a clear 400 naming the limit.
    for path in [
        "/api/ci/pipelines?limit=0",
        "/api/ci/executions?limit=201",
        "/api/runners?limit=0",
    ] {
        let response = server.get(path, &viewer).await;
        let body = expect_error(response, StatusCode::BAD_REQUEST, "BadRequest").await;
        assert!(body.message.contains("1 to 200"), "{path}: {}", body.message);
    }
}
