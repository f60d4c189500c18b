//! The pipeline vectors of `spec/vectors/messages.json` agree with this
//! validator: the file of `submit_pipeline` is one the server accepts, with
//! the jobs (names and stages, in order) that `run_details` lists, and the
//! answer to the same file with two mistakes is the message of
//! `request_failed_invalid_pipeline`.

use std::path::Path;

use serde_json::Value;

fn vector(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/messages.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file: Value = serde_json::from_str(&text).unwrap();
    let found = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name);
    let v = found.unwrap_or_else(|| panic!("no vector `{name}`"));
    v["decoded"]["message"]["fields"].clone()
}

/// `submit_pipeline`'s file with a bad timeout and a misspelt need.
const CI_YAML_INVALID: &str = "\
name: ci
stages: [build, package]
jobs:
  build:
    stage: build
    timeout: 10
    steps:
      - cargo build --release
  package:
    stage: package
    needs: [biuld]
    steps:
      - tar czf valkyrie.tar.gz target/release/vk
";

#[test]
fn submit_pipeline_vector_is_valid_with_the_jobs_run_details_lists() {
    let submit = vector("submit_pipeline");
    let yaml = submit["yaml"].as_str().unwrap();
    let pipeline = valkyrie_pipeline::parse("ci.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
    let jobs: Vec<(&str, &str)> = pipeline
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.stage.as_str()))
        .collect();

    let run = vector("run_details");
    let listed: Vec<(&str, &str)> = run["run"]["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["name"].as_str().unwrap(), j["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(jobs, listed);
    assert_eq!(pipeline.name, run["run"]["name"].as_str().unwrap());
}

#[test]
fn invalid_pipeline_vector_is_the_validators_answer() {
    let errors = valkyrie_pipeline::parse("ci.yaml", CI_YAML_INVALID).expect_err("two mistakes");
    let failed = vector("request_failed_invalid_pipeline");
    assert_eq!(errors.to_string(), failed["message"].as_str().unwrap());
}
