//! Several control planes on one MongoDB store (nx-27017): one leads, the
//! others wait; killing or pausing the leader hands the group to another
//! without losing, repeating or mixing up a job.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;
use valkyrie::message::{JobSpec, StepSpec};
use valkyrie::ClientOptions;
use valkyrie_sdk::{Client, JobState};

const API_TOKEN: &str = "ha-api-token";
const RUNNER_TOKEN: &str = "ha-runner-token";
/// Short leases keep the scenarios quick.
const LEASE: &[&str] = &["--lease-ttl", "1s", "--lease-renew", "250ms"];

/// The servers of one group and what they share.
struct Group<'h> {
    harness: &'h Harness,
    store: String,
    key_file: PathBuf,
    sockets: Vec<String>,
    servers: Vec<Option<Server>>,
}

impl<'h> Group<'h> {
    fn new(harness: &'h Harness, mongo: &MongoServer, size: usize) -> Self {
        let key_file = harness.path().join("secrets-key");
        let key: String = (0..64).map(|i| if i % 2 == 0 { 'a' } else { '7' }).collect();
        std::fs::write(&key_file, key).expect("key file");
        let sockets = (0..size)
            .map(|i| format!("unix://{}", harness.path().join(format!("ha-{i}.sock")).display()))
            .collect();
        Self {
            harness,
            store: mongo.uri(),
            key_file,
            sockets,
            servers: (0..size).map(|_| None).collect(),
        }
    }

    /// Starts server `i` (as a standby unless it is the first of the group).
    fn start(&mut self, i: usize, first: bool) {
        self.start_with(i, first, LEASE);
    }

    /// [`Group::start`] with these lease flags.
    fn start_with(&mut self, i: usize, first: bool, lease: &[&str]) {
        let store = self.store.clone();
        self.start_in(i, first, &store, &[], lease);
    }

    /// [`Group::start_with`] on `store`, the server exec'd by `wrapper`.
    fn start_in(&mut self, i: usize, first: bool, store: &str, wrapper: &[&str], lease: &[&str]) {
        let key = self.key_file.display().to_string();
        let builder = self
            .harness
            .server()
            .listen(&[&self.sockets[i]])
            .data_dir(self.harness.path().join(format!("ha-{i}-data")))
            .tokens(API_TOKEN, RUNNER_TOKEN)
            .args(&["--store", store, "--secrets-key-file", &key])
            .args(lease)
            .wrapped(wrapper);
        let server = tokio::task::block_in_place(|| {
            if first {
                builder.start()
            } else {
                builder.start_standby()
            }
        });
        self.servers[i] = Some(server);
    }

    /// All endpoints, comma-separated (for `--server`).
    fn all(&self) -> String {
        self.sockets.join(",")
    }

    /// The index of the live server whose log says it leads with the
    /// highest epoch, once there is one.
    async fn leader(&mut self) -> (usize, u64) {
        self.leader_after(0).await
    }

    /// [`Group::leader`], once its epoch is above `epoch`.
    async fn leader_after(&mut self, epoch: u64) -> (usize, u64) {
        wait_until(
            &format!("a server of the group to lead after epoch {epoch}"),
            || {
                let mut best = None;
                for (i, server) in self.servers.iter_mut().enumerate() {
                    let Some(server) = server else { continue };
                    if server.process.try_wait().is_some() {
                        continue;
                    }
                    if let Some(epoch) = leading_epoch(&server.process.log()) {
                        if best.is_none_or(|(_, e)| epoch > e) {
                            best = Some((i, epoch));
                        }
                    }
                }
                std::future::ready(best.filter(|(_, e)| *e > epoch))
            },
        )
        .await
    }

    fn server(&mut self, i: usize) -> &mut Server {
        self.servers[i].as_mut().expect("server started")
    }
}

/// The epoch of the last "leading … (epoch N)" line of a server's log.
fn leading_epoch(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("leading the servers on this store (epoch "))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .next_back()
}

/// A client of whichever server of `endpoints` answers (the leader).
async fn any_client(endpoints: &[String]) -> Client {
    wait_until("a server of the group to accept a client", || async {
        let endpoints: Vec<_> = endpoints.iter().map(|e| e.parse().expect("endpoint")).collect();
        let client = Client::connect_any(&endpoints, API_TOKEN, ClientOptions::default())
            .await
            .ok()?;
        client.jobs(1).await.ok().map(|_| client)
    })
    .await
}

/// `GET path` over plain HTTP/1.1 on 127.0.0.1:`port`: the status code
/// and the body, or `None` if nothing listens.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A job that leaves START and END markers (with its attempt) in `marks`.
fn marked_job(index: usize, marks: &Path) -> JobSpec {
    if !index.is_multiple_of(5) {
        return JobSpec::with_steps(format!("ha-{index}"), vec![StepSpec::noop()]);
    }
    JobSpec::shell(
        format!("ha-{index}"),
        format!(
            "f={marks}/$VALKYRIE_JOB_ID; echo \"START $VALKYRIE_JOB_ATTEMPT\" >> \"$f\"; sleep 0.2; \
             echo \"END $VALKYRIE_JOB_ATTEMPT\" >> \"$f\"",
            marks = sh_path(marks)
        ),
    )
}

/// Three servers, two agents given all three, jobs submitted through
/// whoever leads; the leader is killed (kill -9) and started again, as a
/// standby, several times. Every acknowledged job ends once, succeeded; no
/// id is given to two jobs; no marked attempt runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_repeatedly_loses_and_repeats_nothing() {
    const JOBS: usize = 1000;
    const FAILOVERS: usize = 10;
    let h = Harness::new();
    let mongo = MongoServer::start();
    let marks = h.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marks");
    let mut group = Group::new(&h, &mongo, 3);
    group.start(0, true);
    group.start(1, false);
    group.start(2, false);
    let endpoints = group.sockets.clone();
    let client = any_client(&endpoints).await;
    let all = group.all();
    let mut agents = Vec::new();
    for name in ["ha-a", "ha-b"] {
        let server = group.server(0);
        agents.push(
            h.agent(server)
                .name(name)
                .slots(4)
                .endpoint(&all)
                .start(&client)
                .await,
        );
    }

    // Submitters: a failed submit (the leader died) is made again, as a
    // new job, through whoever leads next.
    let acked: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let submitting = {
        let acked = acked.clone();
        let endpoints = endpoints.clone();
        let marks = marks.clone();
        tokio::spawn(async move {
            let mut client = any_client(&endpoints).await;
            for index in 0..JOBS {
                loop {
                    match client.submit(marked_job(index, &marks)).await {
                        Ok(id) => {
                            acked.lock().expect("acked").push((index, id));
                            break;
                        }
                        Err(_) => client = any_client(&endpoints).await,
                    }
                }
            }
        })
    };

    let mut epochs = Vec::new();
    for round in 0..FAILOVERS {
        let (leader, epoch) = group.leader().await;
        epochs.push(epoch);
        let at = (round + 1) * JOBS / (FAILOVERS + 1);
        wait_until_within(
            &format!("{at} acknowledged submits"),
            Duration::from_secs(120),
            || std::future::ready((acked.lock().expect("acked").len() >= at).then_some(())),
        )
        .await;
        group.server(leader).process.kill_now();
        group.start(leader, false);
    }
    within("the submitters", submitting)
        .await
        .expect("submitter task");
    let (_, epoch) = group.leader().await;
    epochs.push(epoch);
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "each takeover raises the epoch: {epochs:?}"
    );

    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    assert_eq!(acked.len(), JOBS);
    let ids: HashSet<u64> = acked.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        ids.len(),
        JOBS,
        "two acknowledged submits were given the same job id"
    );

    let client = any_client(&endpoints).await;
    let mut finals = HashMap::new();
    for (index, id) in &acked {
        let info = wait_until_within(&format!("job {id} to end"), Duration::from_secs(120), || {
            let client = client.clone();
            async move {
                match client.job(*id).await {
                    Ok(info) if info.state.is_terminal() => Some(info),
                    _ => None,
                }
            }
        })
        .await;
        assert_eq!(info.name, format!("ha-{index}"), "job {id} is another job's id");
        finals.insert(*id, info);
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for info in finals.values() {
        *by_state.entry(info.state.as_str()).or_default() += 1;
    }
    let mut repeated = Vec::new();
    for entry in std::fs::read_dir(&marks).expect("marks") {
        let path = entry.expect("mark").path();
        let text = std::fs::read_to_string(&path).expect("mark file");
        let ends = text.lines().filter(|l| l.starts_with("END")).count();
        if ends > 1 {
            repeated.push((path.file_name().map(|n| n.to_string_lossy().into_owned()), text));
        }
    }
    eprintln!(
        "ha: {FAILOVERS} failovers, epochs {epochs:?}; {JOBS} acknowledged; final states {by_state:?}; \
         {} marked jobs ran to their end more than once",
        repeated.len()
    );
    assert!(
        repeated.is_empty(),
        "marked jobs ran to their end twice: {repeated:?}"
    );
    assert_eq!(
        by_state.get("succeeded").copied(),
        Some(JOBS),
        "every acknowledged job succeeds: {by_state:?}"
    );
    drop(agents);
}

/// A leader paused (SIGSTOP) past its lease is replaced; resumed, it
/// finds that it no longer leads and exits (status 75) without taking
/// anything back: the new leader keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_steps_down_when_resumed() {
    let h = Harness::new();
    let mongo = MongoServer::start();
    let mut group = Group::new(&h, &mongo, 2);
    group.start(0, true);
    let http = free_port();
    let http_arg = format!("127.0.0.1:{http}");
    let mut lease = LEASE.to_vec();
    lease.extend(["--http", &http_arg]);
    group.start_with(1, false, &lease);
    // The standby answers on HTTP, not ready, naming the leader.
    let (status, body) = wait_until("the standby's /readyz", || {
        std::future::ready(http_get(http, "/readyz").filter(|(_, body)| body.contains("ha-0.sock")))
    })
    .await;
    assert_eq!(status, 503, "a standby is not ready: {body}");
    assert!(body.contains("standby"), "{body}");
    assert_eq!(http_get(http, "/healthz").map(|(s, _)| s), Some(200));
    let endpoints = group.sockets.clone();
    let client = any_client(&endpoints).await;
    let all = group.all();
    let server = group.server(0);
    let agent = h
        .agent(server)
        .name("ha-pause")
        .endpoint(&all)
        .start(&client)
        .await;
    let first = client
        .submit(JobSpec::with_steps("before", vec![StepSpec::noop()]))
        .await
        .expect("submit");
    wait_state(&client, first, JobState::Succeeded).await;
    let (leader, epoch) = group.leader().await;
    assert_eq!(leader, 0);

    group.server(0).process.signal(Signal::SIGSTOP);
    let (new_leader, new_epoch) = group.leader_after(epoch).await;
    // The paused server's log cannot change: the new leader is the other.
    assert_eq!(new_leader, 1);
    assert!(new_epoch > epoch);
    let client = any_client(&endpoints[1..]).await;
    // Leading, it serves the real REST API on the same address.
    let (_, body) = wait_until("the new leader's /readyz", || {
        std::future::ready(http_get(http, "/readyz").filter(|(status, _)| *status == 200))
    })
    .await;
    assert!(!body.contains("standby"), "{body}");
    let during = client
        .submit(JobSpec::with_steps("during", vec![StepSpec::noop()]))
        .await
        .expect("submit to the new leader");
    wait_state(&client, during, JobState::Succeeded).await;

    group.server(0).process.signal(Signal::SIGCONT);
    let status = group.server(0).process.exited().await;
    assert_eq!(
        status.code(),
        Some(75),
        "the deposed leader exits with 75: {status:?}"
    );
    let log = group.server(0).process.log();
    assert!(log.contains("no longer leads"), "it says why:\n{log}");

    // The new leader still serves, with both jobs as they were.
    let after = client
        .submit(JobSpec::with_steps("after", vec![StepSpec::noop()]))
        .await
        .expect("submit after the old leader woke");
    wait_state(&client, after, JobState::Succeeded).await;
    for id in [first, during] {
        assert_eq!(client.job(id).await.expect("job").state, JobState::Succeeded);
    }
    let ids: HashSet<u64> = [first, during, after].into();
    assert_eq!(ids.len(), 3, "three jobs, three ids");
    assert!(
        group.server(1).process.try_wait().is_none(),
        "the new leader runs on"
    );
    drop(agent);
}

/// Failover time with the default lease (3 s, renewed every second): from
/// the kill -9 of the leader until a job submitted through whoever answers
/// has succeeded, as `vk` given every server would see it. Printed, not
/// asserted (timing depends on the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_time_with_the_default_lease() {
    const ROUNDS: usize = 6;
    let h = Harness::new();
    let mongo = MongoServer::start();
    let mut group = Group::new(&h, &mongo, 3);
    group.start_with(0, true, &[]);
    group.start_with(1, false, &[]);
    group.start_with(2, false, &[]);
    let endpoints = group.sockets.clone();
    let client = any_client(&endpoints).await;
    let all = group.all();
    let server = group.server(0);
    let agent = h
        .agent(server)
        .name("ha-time")
        .slots(2)
        .endpoint(&all)
        .start(&client)
        .await;
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let (leader, epoch) = group.leader().await;
        let killed = std::time::Instant::now();
        group.server(leader).process.kill_now();
        let id = wait_until_within("a job submitted after the kill", Duration::from_secs(60), || {
            let endpoints = endpoints.clone();
            async move {
                let client = any_client(&endpoints).await;
                client
                    .submit(JobSpec::with_steps(
                        format!("after-kill-{round}"),
                        vec![StepSpec::noop()],
                    ))
                    .await
                    .ok()
                    .map(|id| (client, id))
            }
        })
        .await;
        let (client, id) = id;
        wait_state(&client, id, JobState::Succeeded).await;
        times.push(killed.elapsed());
        let (_, new_epoch) = group.leader_after(epoch).await;
        assert!(new_epoch > epoch);
        group.start_with(leader, false, &[]);
    }
    times.sort();
    eprintln!(
        "ha failover (default lease, kill -9 to a job succeeded): p50 {:?}, min {:?}, max {:?} over {ROUNDS}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    drop(agent);
}

/// The log of server `i` says it is a standby that has seen a leader.
async fn standby_ready(group: &mut Group<'_>, i: usize) {
    wait_until(
        &format!("server {i} to be a standby that knows the leader"),
        || {
            std::future::ready(
                group
                    .server(i)
                    .process
                    .log()
                    .contains("standby: server")
                    .then_some(()),
            )
        },
    )
    .await
}

/// `curl ARGS URL` (a real HTTP client): its stdout.
fn curl(args: &[&str], url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {args:?} {url}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A standby answers protocol peers with a Redirect naming the leader, and
/// the SDK, the agent and `vk` given only the standby reach the leader
/// through it; a wrong token is refused, not redirected. On HTTP the
/// standby is alive but not ready, and redirects REST requests (307) to the
/// leader's advertised URL. `vk servers` lists both, and after the leader
/// is killed, the new leader and the old one as silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_redirects_peers_and_rest_requests_to_the_leader() {
    use valkyrie::message::Role;
    use valkyrie::transport::{connect, hello, ConnectError};
    use valkyrie::ErrorCode;
    use valkyrie_sdk::ServerRole;

    let h = Harness::new();
    let mongo = MongoServer::start();
    let mut group = Group::new(&h, &mongo, 2);
    let http: Vec<u16> = (0..2).map(|_| free_port()).collect();
    let http_args: Vec<String> = http.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    for (i, http_arg) in http_args.iter().enumerate() {
        let mut args = LEASE.to_vec();
        args.extend(["--http", http_arg]);
        group.start_with(i, i == 0, &args);
    }
    standby_ready(&mut group, 1).await;
    let sockets = group.sockets.clone();
    let standby: valkyrie::Endpoint = sockets[1].parse().expect("endpoint");

    // The wire: Redirect in place of Welcome, naming the leader's URIs.
    let options = ClientOptions::default();
    match connect(&standby, hello(Role::Client, API_TOKEN, "ha-test"), &options).await {
        Err(ConnectError::Redirected { redirect, .. }) => {
            assert_eq!(redirect.uris, [group.sockets[0].clone()], "{redirect:?}");
            assert!(redirect.epoch >= 1, "{redirect:?}");
        }
        other => panic!("a standby redirects a client: {:?}", other.map(|_| "a session")),
    }
    match connect(&standby, hello(Role::Client, "wrong-token", "ha-test"), &options).await {
        Err(ConnectError::Refused { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHENTICATED),
        other => panic!("a wrong token is refused first: {:?}", other.map(|_| "a session")),
    }

    // The SDK given only the standby reaches the leader.
    let client = within(
        "the SDK through the standby",
        Client::connect(&standby, API_TOKEN, options),
    )
    .await
    .expect("the SDK follows the redirect");
    let servers = wait_until("both servers in the group", || {
        let client = client.clone();
        async move { client.servers().await.ok().filter(|s| s.len() == 2) }
    })
    .await;
    assert_eq!(servers[0].role, ServerRole::Leader, "{servers:?}");
    assert_eq!(servers[0].uris, [group.sockets[0].clone()], "{servers:?}");
    assert_eq!(servers[0].http_url, format!("http://{}", http_args[0]));
    assert!(servers[0].lease_expires_ms > 0, "{servers:?}");
    assert_eq!(servers[1].role, ServerRole::Standby, "{servers:?}");
    assert_eq!(servers[1].uris, [group.sockets[1].clone()], "{servers:?}");

    // An agent given only the standby registers with the leader and runs a job.
    let server = group.server(1);
    let agent = h
        .agent(server)
        .name("via-standby")
        .endpoint(&sockets[1])
        .start(&client)
        .await;
    let job = client
        .submit(JobSpec::with_steps("via-standby", vec![StepSpec::noop()]))
        .await
        .expect("submit");
    wait_state(&client, job, JobState::Succeeded).await;

    // vk given only the standby: `vk servers` and `vk servers --json`.
    let table = group.server(1).vk_on(&sockets[1], API_TOKEN, &["servers"]).await;
    assert!(table.status.success(), "vk servers: {}", text(&table.stderr));
    let table = text(&table.stdout);
    eprintln!("vk servers:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVER") && lines.len() == 3, "{table}");
    assert!(
        lines[1].contains(" leader ") && lines[1].contains("ha-0.sock"),
        "{table}"
    );
    assert!(
        lines[1].contains(" in "),
        "the lease expires in the future: {table}"
    );
    assert!(
        lines[2].contains(" standby ") && lines[2].contains("ha-1.sock"),
        "{table}"
    );
    let json = group
        .server(1)
        .vk_on(&sockets[1], API_TOKEN, &["servers", "--json"])
        .await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("vk servers --json");
    assert_eq!(json[0]["role"], "leader", "{json}");
    assert_eq!(json[1]["role"], "standby", "{json}");

    // REST: the standby is alive, not ready, and redirects the API.
    assert_eq!(http_get(http[1], "/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(http_get(http[1], "/readyz").map(|(s, _)| s), Some(503));
    assert_eq!(http_get(http[0], "/readyz").map(|(s, _)| s), Some(200));
    let auth = format!("Authorization: Bearer {API_TOKEN}");
    let standby_url = format!("http://{}/api/runners?limit=5", http_args[1]);
    let redirected = curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            &auth,
        ],
        &standby_url,
    );
    assert_eq!(
        redirected,
        format!("307 http://{}/api/runners?limit=5", http_args[0])
    );
    let followed = curl(&["--location-trusted", "-H", &auth], &standby_url);
    assert!(
        followed.contains("via-standby"),
        "the leader answered: {followed}"
    );

    // The leader is killed: the standby leads, `vk servers` says so.
    let (_, epoch) = group.leader().await;
    group.server(0).process.kill_now();
    let (leader, _) = group.leader_after(epoch).await;
    assert_eq!(leader, 1);
    let servers = wait_until("the old leader to be silent", || {
        let vk =
            group.servers[1]
                .as_ref()
                .expect("server")
                .vk_on(&sockets[1], API_TOKEN, &["servers", "--json"]);
        async move {
            let out = vk.await;
            let servers: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (servers[0]["role"] == "leader" && servers[1]["role"] == "silent").then_some(servers)
        }
    })
    .await;
    assert!(
        servers[0]["uris"][0]
            .as_str()
            .is_some_and(|u| u.ends_with("ha-1.sock")),
        "{servers}"
    );
    assert!(servers[0]["epoch"].as_u64() > Some(epoch), "{servers}");
    assert_eq!(http_get(http[1], "/readyz").map(|(s, _)| s), Some(200));
    drop(agent);
}

/// Two servers of a group (0 leads) and an agent given both, for the
/// `vk … across a failover` tests.
async fn follow_group<'h>(h: &'h Harness, mongo: &MongoServer, agent: &str) -> (Group<'h>, Client, Agent) {
    let mut group = Group::new(h, mongo, 2);
    group.start(0, true);
    group.start(1, false);
    let client = any_client(&group.sockets).await;
    let all = group.all();
    let server = group.server(0);
    let agent = h.agent(server).name(agent).endpoint(&all).start(&client).await;
    (group, client, agent)
}

/// A shell script that prints `before-failover`, waits for the file `go`,
/// then prints `after-failover`.
fn gated_script(go: &Path) -> String {
    format!(
        "echo before-failover; while [ ! -e {go} ]; do sleep 0.05; done; echo after-failover",
        go = sh_path(go)
    )
}

/// Starts `vk` with `args`, its stdout in `<name>.out` and its stderr in
/// `<name>.err` under the harness directory, and waits until its stdout
/// shows `before-failover`.
async fn vk_until_before_failover(
    h: &Harness,
    name: &str,
    command: std::process::Command,
) -> (Guarded, PathBuf) {
    let out_path = h.path().join(format!("{name}.out"));
    let out = std::fs::File::create(&out_path).expect("vk output");
    let vk = spawn_logged(command, name, h.path().join(format!("{name}.err")), out.into());
    wait_until("vk to show the output before the failover", || {
        std::future::ready(
            std::fs::read_to_string(&out_path)
                .ok()
                .filter(|o| o.contains("before-failover")),
        )
    })
    .await;
    (vk, out_path)
}

/// Kills the leader (kill -9), waits for another server to lead, then
/// creates `go` so that the gated job goes on.
async fn fail_over_then_go(group: &mut Group<'_>, go: &Path) {
    let (leader, epoch) = group.leader().await;
    group.server(leader).process.kill_now();
    group.leader_after(epoch).await;
    std::fs::write(go, "").expect("go");
}

/// `vk logs -f` given every server keeps following a job across a kill -9
/// of the leader: the output before and after the failover, once each,
/// and the job's exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_logs_follow_keeps_following_across_a_failover() {
    let h = Harness::new();
    let mongo = MongoServer::start();
    let (mut group, client, agent) = follow_group(&h, &mongo, "ha-follow").await;
    let go = h.path().join("go");
    let job = client
        .submit(JobSpec::shell("across", gated_script(&go)))
        .await
        .expect("submit");
    let mut command = h.command("vk");
    command
        .args(["--server", &group.all(), "--token", API_TOKEN, "logs", "-f"])
        .arg(job.to_string());
    let (mut vk, out_path) = vk_until_before_failover(&h, "vk-logs", command).await;
    fail_over_then_go(&mut group, &go).await;
    let status = vk.exited().await;
    let output = std::fs::read_to_string(&out_path).expect("vk output");
    assert!(status.success(), "vk logs -f: {status:?}\n{output}\n{}", vk.log());
    assert_eq!(output.matches("before-failover").count(), 1, "{output}");
    assert_eq!(output.matches("after-failover").count(), 1, "{output}");
    assert!(vk.log().contains("reconnected"), "{}", vk.log());
    drop(agent);
}

/// `vk exec` given every server (in `VALKYRIE_SERVER`) keeps following its
/// job across a kill -9 of the leader: it ends with the job's own exit code
/// (3, not an error of `vk`), its stdout exactly once, its stderr on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_exec_keeps_following_across_a_failover() {
    let h = Harness::new();
    let mongo = MongoServer::start();
    let (mut group, _client, agent) = follow_group(&h, &mongo, "ha-exec").await;
    let go = h.path().join("go");
    let script = format!("{}; echo on-stderr >&2; exit 3", gated_script(&go));
    let mut command = h.command("vk");
    command
        .env("VALKYRIE_SERVER", group.all())
        .args(["--token", API_TOKEN, "exec", "--", "sh", "-c", &script]);
    let (mut vk, out_path) = vk_until_before_failover(&h, "vk-exec", command).await;
    fail_over_then_go(&mut group, &go).await;
    let status = vk.exited().await;
    let output = std::fs::read_to_string(&out_path).expect("vk output");
    let stderr = vk.log();
    assert_eq!(status.code(), Some(3), "vk exec: {status:?}\n{output}\n{stderr}");
    assert_eq!(output, "before-failover\nafter-failover\n", "{stderr}");
    // (The failure line quotes the command, so count whole lines.)
    assert_eq!(
        stderr.lines().filter(|l| *l == "on-stderr").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("reconnected"), "{stderr}");
    drop(agent);
}

/// `vk run --logs` given every server keeps following its pipeline run
/// across a kill -9 of the leader: the first job's output before and after
/// the failover once each, the second job (released by the new leader)
/// shown, and the run's result and exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_run_keeps_following_across_a_failover() {
    let h = Harness::new();
    let mongo = MongoServer::start();
    let (mut group, _client, agent) = follow_group(&h, &mongo, "ha-run").await;
    let go = h.path().join("go");
    let pipeline = h.path().join("across.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "name: across\njobs:\n  first:\n    steps: [{{run: {script:?}}}]\n  second:\n    needs: [first]\n    steps: [{{run: echo second-job}}]\n",
            script = gated_script(&go)
        ),
    )
    .expect("pipeline");
    let mut command = h.command("vk");
    command
        .args([
            "--server",
            &group.all(),
            "--token",
            API_TOKEN,
            "run",
            "--logs",
            "--plain",
        ])
        .arg(&pipeline);
    let (mut vk, out_path) = vk_until_before_failover(&h, "vk-run", command).await;
    fail_over_then_go(&mut group, &go).await;
    let status = vk.exited().await;
    let output = std::fs::read_to_string(&out_path).expect("vk output");
    let stderr = vk.log();
    assert!(status.success(), "vk run: {status:?}\n{output}\n{stderr}");
    for line in [
        "[first] before-failover",
        "[first] after-failover",
        "[second] second-job",
    ] {
        assert_eq!(output.matches(line).count(), 1, "{line}:\n{output}");
    }
    assert!(output.contains("`across` succeeded"), "{output}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    drop(agent);
}

/// A network namespace joined to this machine by a veth pair: `host_ip`
/// on this side. Removed (with the pair) on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// `None` when network namespaces cannot be made here (no `ip`, not root).
    fn create() -> Option<Self> {
        let id = std::process::id();
        let net = 1 + id % 250;
        let ns = Self {
            name: format!("vkt-{id}"),
            host_if: format!("vkh{id}"),
            host_ip: format!("10.213.{net}.1"),
        };
        if !ip(&["netns", "add", &ns.name]) {
            return None;
        }
        let inner_if = format!("vkn{id}");
        let inner_ip = format!("10.213.{net}.2/30");
        let host_cidr = format!("{}/30", ns.host_ip);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        let ok = ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]) && ip(&["link", "set", &inner_if, "netns", &ns.name])
            && ip(&["addr", "add", &host_cidr, "dev", &ns.host_if])
            && ip(&["link", "set", &ns.host_if, "up"])
            && exec(&["addr", "add", &inner_ip, "dev", &inner_if])
            && exec(&["link", "set", &inner_if, "up"])
            && exec(&["link", "set", "lo", "up"]);
        assert!(ok, "cannot set up the veth pair of network namespace {}", ns.name);
        Some(ns)
    }

    /// `ip netns exec NAME`, to run a program inside.
    fn exec(&self) -> [&str; 3] {
        ["netns", "exec", &self.name]
    }

    /// Cuts the link (or restores it).
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        assert!(
            ip(&["link", "set", &self.host_if, state]),
            "ip link set {} {state}",
            self.host_if
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.name]);
        ip(&["link", "del", &self.host_if]);
    }
}

/// The leader runs in a network namespace that reaches the store through a
/// veth pair; the link is cut. The leader cannot renew its lease: it stops
/// acknowledging anything, the standby takes over, and the old leader
/// exits (75). Once the link is back, it writes nothing: the lease stays
/// with the new leader, which serves on, and the old one, started again,
/// is a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_the_store_steps_down() {
    let Some(ns) = Netns::create() else {
        eprintln!(
            "SKIPPED leader_cut_off_from_the_store_steps_down: `ip netns add` failed \
             (it needs iproute2 and root)"
        );
        return;
    };
    let h = Harness::new();
    let mongo = MongoServer::start_on("0.0.0.0");
    let inner_store = mongo.uri_at(&ns.host_ip);
    let mut wrapper = vec!["ip"];
    wrapper.extend(ns.exec());
    let mut group = Group::new(&h, &mongo, 2);
    group.start_in(0, true, &inner_store, &wrapper, LEASE);
    group.start(1, false);
    standby_ready(&mut group, 1).await;
    let endpoints = group.sockets.clone();
    let all = group.all();
    let client = any_client(&endpoints).await;
    let server = group.server(0);
    let agent = h.agent(server).name("ha-cut").endpoint(&all).start(&client).await;
    let before = client
        .submit(JobSpec::with_steps("before-cut", vec![StepSpec::noop()]))
        .await
        .expect("submit");
    wait_state(&client, before, JobState::Succeeded).await;
    let (leader, epoch) = group.leader().await;
    assert_eq!(leader, 0);

    ns.link(false);
    let (new_leader, new_epoch) = group.leader_after(epoch).await;
    assert_eq!(new_leader, 1);
    // The old leader acknowledges nothing any more (its lease ran out
    // before the standby took over).
    let refused = tokio::time::timeout(
        DEADLINE,
        client.submit(JobSpec::with_steps("to-the-cut-leader", vec![StepSpec::noop()])),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a leader cut off from the store acknowledged a job: {refused:?}"
    );
    let status = group.server(0).process.exited().await;
    assert_eq!(
        status.code(),
        Some(75),
        "the cut-off leader steps down: {status:?}"
    );

    ns.link(true);
    let client = any_client(&endpoints).await;
    let after = client
        .submit(JobSpec::with_steps("after-cut", vec![StepSpec::noop()]))
        .await
        .expect("submit to the new leader");
    wait_state(&client, after, JobState::Succeeded).await;
    assert_eq!(client.job(before).await.expect("job").state, JobState::Succeeded);
    // Started again in its namespace, the old leader waits as a standby.
    group.start_in(0, false, &inner_store, &wrapper, LEASE);
    standby_ready(&mut group, 0).await;
    let servers = wait_until("the group seen by the new leader", || {
        let client = client.clone();
        async move {
            // The leader's view is refreshed every renewal interval.
            client.servers().await.ok().filter(|s| {
                s.len() == 2
                    && s[0].role == valkyrie_sdk::ServerRole::Leader
                    && s[0].uris.iter().any(|u| u.ends_with("ha-1.sock"))
                    && s[1].role == valkyrie_sdk::ServerRole::Standby
            })
        }
    })
    .await;
    assert_eq!(servers[0].role, valkyrie_sdk::ServerRole::Leader, "{servers:?}");
    assert_eq!(
        servers[0].epoch, new_epoch,
        "no epoch after the new leader's: {servers:?}"
    );
    assert_eq!(servers[0].uris, [group.sockets[1].clone()], "{servers:?}");
    assert!(
        group.server(1).process.try_wait().is_none(),
        "the new leader runs on"
    );
    drop(agent);
}
