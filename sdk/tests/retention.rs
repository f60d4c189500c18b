//! Finished jobs and their logs are deleted beyond the retention count or age.

use std::time::Duration;

use valkyrie_control_plane::CoreConfig;
use valkyrie_sdk::local::{LocalAgent, LocalCluster};
use valkyrie_sdk::{Client, JobSpec};

async fn run_to_end(client: &Client, line: &str) -> u64 {
    let job = client.submit(JobSpec::shell(line, line)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !client
        .job(job)
        .await
        .map(|j| j.state.is_terminal())
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "job {job} never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_newest_finished_jobs_are_kept() {
    let config = CoreConfig {
        finished_job_retention: 2,
        ..CoreConfig::default()
    };
    let cluster = LocalCluster::start(config, &[LocalAgent::new("a", &[], 1)])
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(run_to_end(&client, &format!("echo {i}")).await);
    }
    let kept: Vec<u64> = client.jobs(0).await.unwrap().iter().map(|j| j.job_id).collect();
    assert_eq!(kept, [jobs[3], jobs[2]], "newest first, two kept");
    let err = client.job(jobs[0]).await.unwrap_err();
    assert!(err.to_string().contains("no job"), "{err}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_older_than_the_retention_age_are_deleted() {
    // A zero age: a job is deleted on the first tick after it finished.
    let config = CoreConfig {
        retention: Duration::ZERO,
        ..CoreConfig::default()
    };
    let cluster = LocalCluster::start(config, &[LocalAgent::new("a", &[], 1)])
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let job = client.submit(JobSpec::shell("x", "echo x")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.job(job).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.jobs(0).await.unwrap().is_empty());
    cluster.shutdown().await;
}
