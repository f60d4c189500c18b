//! The MongoDB store against a real wire-protocol server. No MongoDB server
//! can be installed here, so each test starts `nx-27017 --db memory` (a
//! MongoDB wire-protocol server on SQLite, from PyPI: `python3 -m pip
//! install nx-27017`; `.ci/run` installs it) on a free port and kills it
//! when the test ends. A missing `nx-27017` fails the test; it is not
//! skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use valkyrie::message::{GetJob, JobSpec, JobState, Message, OutputStream, Role, RunState, SubmitJob};
use valkyrie::transport::{connect, hello};
use valkyrie::Endpoint;
use valkyrie_control_plane::core::PipelineDef;
use valkyrie_control_plane::job::JobRecord;
use valkyrie_control_plane::scheduler::JobId;
use valkyrie_control_plane::store::mongo::MongoStore;
use valkyrie_control_plane::store::{
    Change, Counters, Durability, LogRow, RunRow, RunnerRow, SlotRow, Store, StoreError,
};
use valkyrie_test_support::{free_port, MongoServer};

const SERVER: &str = env!("CARGO_BIN_EXE_valkyrie-server");
/// How long a started process gets to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A store on database `database` of `mongo`.
fn mongo_store(mongo: &MongoServer, database: &str) -> MongoStore {
    MongoStore::connect(&mongo.uri_of(database), Durability::Fsync).unwrap()
}

fn job(id: u64, attempt: u32) -> JobRecord {
    let mut job = JobRecord::new(
        JobId(id),
        JobSpec::shell(format!("job-{id}"), "echo hi"),
        1_700_000_000_000,
    );
    job.attempt = attempt;
    job.message = format!("attempt {attempt}");
    job
}

fn log(job: u64, seq: u64, data: &[u8]) -> LogRow {
    LogRow {
        job,
        seq,
        stream: if seq.is_multiple_of(2) {
            OutputStream::Stdout
        } else {
            OutputStream::Stderr
        },
        data: data.to_vec(),
    }
}

/// Jobs have no `PartialEq`; their stored form is what must round-trip.
fn json(job: &JobRecord) -> serde_json::Value {
    serde_json::to_value(job).unwrap()
}

#[test]
fn what_is_committed_is_loaded_back() {
    let mongo = MongoServer::start();
    let jobs = [job(7, 0), job(8, 2)];
    let run = RunRow {
        id: 3,
        file_name: "ci.yaml".into(),
        yaml: "jobs: {}".into(),
        slots: vec![
            SlotRow::Released {
                job: 7,
                state: JobState::Queued,
            },
            SlotRow::Waiting,
            SlotRow::Skipped {
                reason: "needs build".into(),
                because_of_failure: true,
            },
        ],
        state: RunState::Running,
        message: String::new(),
        created_at_ms: 1,
        finished_at_ms: None,
        ending: None,
        deadline_ms: Some(99),
        trigger: None,
    };
    let pipeline = PipelineDef {
        id: 4,
        name: "ci".into(),
        description: "the pipeline".into(),
        file_name: "ci.yaml".into(),
        yaml: "jobs: {}".into(),
        source: "jobs: {}".into(),
        stages: vec!["build".into(), "test".into()],
        jobs: 2,
        created_at_ms: 5,
        updated_at_ms: 6,
    };
    let runner = RunnerRow {
        id: 2,
        name: "r1".into(),
        tags: vec!["linux".into()],
        os: "linux".into(),
        arch: "x86_64".into(),
        slots: 4,
        version: "0.1.0".into(),
        credential: "c".repeat(64),
    };
    let counters = Counters {
        next_job: 9,
        next_run: 4,
        next_pipeline: 5,
        next_runner: 3,
        next_audit: 1,
    };
    // Logs out of order, and bytes that are not UTF-8.
    let logs = [log(8, 1, b"b"), log(7, 0, &[0xff, 0, b'\n']), log(8, 0, b"a")];
    {
        let mut store = mongo_store(&mongo, "roundtrip");
        let mut changes: Vec<Change> = jobs.iter().cloned().map(|j| Change::Job(Box::new(j))).collect();
        changes.push(Change::Run(Box::new(run.clone())));
        changes.push(Change::Pipeline(Box::new(pipeline.clone())));
        changes.push(Change::Runner(Box::new(runner.clone())));
        changes.extend(logs.iter().cloned().map(Change::Log));
        changes.push(Change::Counters(counters));
        store.commit(&changes).unwrap();
    }
    let loaded = mongo_store(&mongo, "roundtrip").load().unwrap();
    assert_eq!(
        loaded.jobs.iter().map(json).collect::<Vec<_>>(),
        jobs.iter().map(json).collect::<Vec<_>>()
    );
    assert_eq!(loaded.runs, [run]);
    assert_eq!(loaded.pipelines, [pipeline]);
    assert_eq!(loaded.runners, [runner]);
    assert_eq!(loaded.logs, [logs[1].clone(), logs[2].clone(), logs[0].clone()]);
    assert_eq!(loaded.counters, counters);
    // Databases are separate: another name starts empty.
    let other = mongo_store(&mongo, "other").load().unwrap();
    assert!(other.jobs.is_empty() && other.logs.is_empty(), "{other:?}");
}

#[test]
fn deleting_a_job_removes_its_logs_and_nothing_else() {
    let mongo = MongoServer::start();
    let mut store = mongo_store(&mongo, "delete");
    store
        .commit(&[
            Change::Job(Box::new(job(1, 1))),
            Change::Job(Box::new(job(2, 1))),
            Change::Log(log(1, 0, b"one")),
            Change::Log(log(1, 1, b"one more")),
            Change::Log(log(2, 0, b"two")),
        ])
        .unwrap();
    store.commit(&[Change::DeleteJob(1)]).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [JobId(2)]);
    assert_eq!(loaded.logs, [log(2, 0, b"two")]);
}

#[test]
fn a_stale_attempt_does_not_overwrite_a_newer_one() {
    let mongo = MongoServer::start();
    // Two writers on one database, as two servers would be.
    let mut a = mongo_store(&mongo, "fencing");
    let mut b = mongo_store(&mongo, "fencing");
    a.commit(&[Change::Job(Box::new(job(1, 3)))]).unwrap();
    // B still holds attempt 2: its write loses, without failing the commit
    // (which would stop B's server) and without touching the other changes.
    b.commit(&[Change::Job(Box::new(job(1, 2))), Change::Job(Box::new(job(2, 1)))])
        .unwrap();
    let loaded = a.load().unwrap();
    let stored: Vec<(JobId, u32, &str)> = loaded
        .jobs
        .iter()
        .map(|j| (j.id, j.attempt, j.message.as_str()))
        .collect();
    assert_eq!(stored, [(JobId(1), 3, "attempt 3"), (JobId(2), 1, "attempt 1")]);
    // The same attempt may be written again (assigned → running), and a
    // newer one wins.
    let mut running = job(1, 3);
    running.message = "running".into();
    b.commit(&[Change::Job(Box::new(running))]).unwrap();
    assert_eq!(a.load().unwrap().jobs[0].message, "running");
    b.commit(&[Change::Job(Box::new(job(1, 4)))]).unwrap();
    assert_eq!(a.load().unwrap().jobs[0].attempt, 4);
}

#[test]
fn counters_survive_a_reconnect_and_are_replaced() {
    let mongo = MongoServer::start();
    let first = Counters {
        next_job: 10,
        next_run: 2,
        next_pipeline: 1,
        next_runner: 5,
        next_audit: 1,
    };
    let second = Counters {
        next_job: 11,
        ..first
    };
    mongo_store(&mongo, "counters")
        .commit(&[Change::Counters(first)])
        .unwrap();
    assert_eq!(mongo_store(&mongo, "counters").load().unwrap().counters, first);
    mongo_store(&mongo, "counters")
        .commit(&[Change::Counters(second)])
        .unwrap();
    assert_eq!(mongo_store(&mongo, "counters").load().unwrap().counters, second);
    // A fresh database has none.
    assert_eq!(
        mongo_store(&mongo, "fresh").load().unwrap().counters,
        Counters::default()
    );
}

#[test]
fn ping_answers_while_the_server_is_up_and_names_it_when_it_is_gone() {
    let mut mongo = MongoServer::start();
    let uri = format!("{}?serverSelectionTimeoutMS=500", mongo.uri_of("ping"));
    let mut store = MongoStore::connect(&uri, Durability::None).unwrap();
    store.ping().unwrap();
    mongo.kill();
    let err = store.ping().expect_err("the server is gone");
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach MongoDB at mongodb://127.0.0.1:{}",
            mongo.port()
        )),
        "{text}"
    );
}

#[test]
fn an_unreachable_server_is_a_clear_error_within_seconds() {
    let port = free_port();
    let started = Instant::now();
    let err = MongoStore::connect(&format!("mongodb://127.0.0.1:{port}/valkyrie"), Durability::Fsync)
        .expect_err("nothing listens there");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach MongoDB at mongodb://127.0.0.1:{port}/valkyrie"
        )),
        "{text}"
    );
    // The driver's own default would wait 30 s; the store gives up after 5.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    let err = MongoStore::connect("mongodb://ci:s3cret@127.0.0.1:1/?bogusOption=", Durability::Fsync)
        .expect_err("malformed");
    let text = err.to_string();
    assert!(
        text.contains("invalid MongoDB URI mongodb://ci:***@127.0.0.1:1/"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn a_thousand_job_changes_commit_as_one_batch() {
    let mongo = MongoServer::start();
    for durability in [Durability::Fsync, Durability::None] {
        let database = format!("batch-{durability:?}");
        let mut store = MongoStore::connect(&mongo.uri_of(&database), durability).unwrap();
        let inserts: Vec<Change> = (1..=1000).map(|id| Change::Job(Box::new(job(id, 0)))).collect();
        let updates: Vec<Change> = (1..=1000).map(|id| Change::Job(Box::new(job(id, 1)))).collect();
        let started = Instant::now();
        store.commit(&inserts).unwrap();
        let insert_time = started.elapsed();
        let started = Instant::now();
        store.commit(&updates).unwrap();
        let update_time = started.elapsed();
        // A figure for the record, not a check (timings vary by machine).
        eprintln!(
            "{durability:?}: 1000 new jobs committed in {insert_time:?}, 1000 job updates in {update_time:?}"
        );
        let loaded = store.load().unwrap();
        assert_eq!(loaded.jobs.len(), 1000);
        assert!(loaded.jobs.iter().all(|j| j.attempt == 1));
        assert_eq!(loaded.jobs.last().unwrap().id, JobId(1000), "loaded in id order");
    }
}

/// `valkyrie-server --store mongodb://…`, killed (SIGKILL) on drop.
struct Server {
    child: Child,
}

impl Server {
    fn start(mongo_uri: &str, dir: &Path) -> (Self, Endpoint) {
        let socket = dir.join("s.sock");
        let _ = std::fs::remove_file(&socket);
        let stderr = std::fs::File::create(dir.join("server.err")).unwrap();
        let mut command = Command::new(SERVER);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VALKYRIE_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(["--store", mongo_uri, "--listen"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-dir")
            .arg(dir)
            .args(["--api-token", "a", "--runner-token", "r"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        // The server prints `listening on …` once it accepts connections;
        // the line is read on a thread so that a hung server hits the deadline.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let server = Self { child };
        let line = rx.recv_timeout(START_DEADLINE).unwrap_or_else(|_| {
            panic!(
                "valkyrie-server did not start on MongoDB:\n{}",
                std::fs::read_to_string(dir.join("server.err")).unwrap_or_default()
            )
        });
        assert_eq!(line, format!("listening on unix://{}", socket.display()));
        (server, format!("unix://{}", socket.display()).parse().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn request(endpoint: &Endpoint, message: impl Into<Message>) -> Message {
    let session = connect(
        endpoint,
        hello(Role::Client, "a", "store-mongo-test"),
        &Default::default(),
    )
    .await
    .unwrap();
    let (sender, _unsolicited) = session.into_parts();
    sender.request(message).await.unwrap()
}

#[test]
fn the_server_keeps_its_jobs_in_mongodb_across_a_kill() {
    let mongo = MongoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let uri = mongo.uri_of("valkyrie");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Tags no runner has: the job stays queued.
    let mut spec = JobSpec::shell("kept", "echo kept");
    spec.tags = vec!["nowhere".into()];

    let (mut server, endpoint) = Server::start(&uri, dir.path());
    let job_id = match runtime.block_on(request(&endpoint, SubmitJob { spec })) {
        Message::JobAccepted(accepted) => accepted.job_id,
        other => panic!("expected JobAccepted, got {other:?}"),
    };
    // Accepted means committed: SIGKILL now loses nothing.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let (_server, endpoint) = Server::start(&uri, dir.path());
    match runtime.block_on(request(&endpoint, GetJob { job_id })) {
        Message::JobDetails(details) => {
            assert_eq!(details.job.job_id, job_id);
            assert_eq!(details.job.name, "kept");
            assert_eq!(details.job.state, JobState::Queued);
        }
        other => panic!("expected JobDetails for job {job_id}, got {other:?}"),
    }
    // The id counter came back too: the next job gets a new id.
    let next = match runtime.block_on(request(
        &endpoint,
        SubmitJob {
            spec: JobSpec::shell("next", "true"),
        },
    )) {
        Message::JobAccepted(accepted) => accepted.job_id,
        other => panic!("expected JobAccepted, got {other:?}"),
    };
    assert!(next > job_id, "{next} reuses an id (first was {job_id})");
}

/// Every document of every collection of `database`, as extended JSON.
fn raw_documents(mongo: &MongoServer, database: &str) -> String {
    let client = mongodb::sync::Client::with_uri_str(mongo.uri_of(database)).unwrap();
    let db = client.database(database);
    let mut all = String::new();
    for collection in ["pipelines", "runs", "jobs", "runners", "logs", "meta"] {
        let cursor = db
            .collection::<mongodb::bson::Document>(collection)
            .find(mongodb::bson::doc! {})
            .run()
            .unwrap();
        for doc in cursor {
            all.push_str(&doc.unwrap().to_string());
            all.push('\n');
        }
    }
    all
}

/// Job secrets, pipeline texts and runner credentials reach MongoDB only
/// as ciphertext, and load back in the clear with the same key; another
/// key is refused before anything is read.
#[test]
fn secret_fields_are_stored_only_as_ciphertext() {
    use valkyrie_control_plane::store::seal::{SealedStore, SecretsKey, SEALED_PREFIX};
    let mongo = MongoServer::start();
    let secret = "sealed-secret-4242";
    let yaml = format!("secrets: {{TOKEN: {secret}}}\njobs:\n  a:\n    steps: [{{run: echo}}]\n");
    let key = || SecretsKey::from_bytes(&[7; 32], "key-7");
    let sealed = |key: SecretsKey| SealedStore::new(Box::new(mongo_store(&mongo, "sealed")), key);
    let mut spec = JobSpec::shell("j", "echo hi");
    spec.secrets = vec![("TOKEN".into(), secret.into())];
    let job = JobRecord::new(JobId(1), spec, 1);
    let run = RunRow {
        id: 1,
        file_name: "ci.yaml".into(),
        yaml: yaml.clone(),
        slots: vec![SlotRow::Waiting],
        state: RunState::Running,
        message: String::new(),
        created_at_ms: 1,
        finished_at_ms: None,
        ending: None,
        deadline_ms: None,
        trigger: None,
    };
    let pipeline = PipelineDef {
        id: 1,
        name: "ci".into(),
        description: String::new(),
        file_name: "ci.yaml".into(),
        yaml: "secrets: {TOKEN: ***}".into(),
        source: yaml.clone(),
        stages: vec![],
        jobs: 1,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let credential = format!("credential-{secret}");
    let runner = RunnerRow {
        id: 1,
        name: "r".into(),
        tags: vec![],
        os: "linux".into(),
        arch: "x86_64".into(),
        slots: 1,
        version: "0".into(),
        credential: credential.clone(),
    };
    {
        let mut store = sealed(key());
        store.load().unwrap();
        store
            .commit(&[
                Change::Job(Box::new(job)),
                Change::Run(Box::new(run)),
                Change::Pipeline(Box::new(pipeline)),
                Change::Runner(Box::new(runner)),
            ])
            .unwrap();
    }
    let raw = raw_documents(&mongo, "sealed");
    assert!(
        !raw.contains(secret),
        "a secret reached MongoDB in the clear:\n{raw}"
    );
    assert!(
        raw.matches(SEALED_PREFIX).count() >= 5,
        "sealed values and the key check:\n{raw}"
    );
    // The same key reads everything back.
    let loaded = sealed(key()).load().unwrap();
    assert_eq!(
        loaded.jobs[0].spec.secrets,
        [("TOKEN".to_owned(), secret.to_owned())]
    );
    assert_eq!(loaded.runs[0].yaml, yaml);
    assert_eq!(loaded.pipelines[0].source, yaml);
    assert_eq!(loaded.runners[0].credential, credential);
    // Another key is refused at once, naming its file.
    let err = sealed(SecretsKey::from_bytes(&[8; 32], "key-8"))
        .load()
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("key-8"), "{err}");
}

#[test]
fn projects_and_deliveries_are_stored_and_deleted() {
    use valkyrie_control_plane::source::Project;
    use valkyrie_control_plane::store::DeliveryRow;
    let mongo = MongoServer::start();
    let project = |name: &str| Project {
        name: name.into(),
        repo: format!("https://git.example/{name}.git"),
        branch: "main".into(),
        file: ".valkyrie.yml".into(),
        webhook_secret: "s".into(),
        token: String::new(),
        created_at_ms: 1,
        schedules: Vec::new(),
        status: None,
        notify: None,
    };
    let delivery = |seq: u64| DeliveryRow {
        seq,
        key: format!("github:app:{seq}"),
        run_id: seq + 10,
    };
    let mut store = mongo_store(&mongo, "projects");
    store
        .commit(&[
            Change::Project(Box::new(project("app"))),
            Change::Project(Box::new(project("lib"))),
            Change::Delivery(Box::new(delivery(1))),
            Change::Delivery(Box::new(delivery(2))),
        ])
        .unwrap();
    store
        .commit(&[Change::DeleteProject("lib".into()), Change::DeleteDelivery(1)])
        .unwrap();
    let loaded = mongo_store(&mongo, "projects").load().unwrap();
    assert_eq!(loaded.projects, vec![project("app")]);
    assert_eq!(loaded.deliveries, vec![delivery(2)]);
}
