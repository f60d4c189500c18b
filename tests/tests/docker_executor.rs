//! The Docker executor against the real Docker Engine of this machine:
//! jobs in a container of their `image:`, services by alias, cleanup on
//! cancel, timeout and agent crash, and matching next to shell runners.
//!
//! No registry is reachable: the tests build their own image once
//! ([`test_image`]): `FROM scratch` with Debian's static busybox
//! (`apt-get install busybox-static`), a marker file, a web root for the
//! service test and a `VOLUME` so that anonymous volumes are exercised.

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use bollard::Docker;
use support::{text, wait_final, wait_job, wait_until, within, Agent, Harness, Server};
use valkyrie::message::{ContainerSpec, JobSpec, PullPolicy, ServiceSpec};
use valkyrie_sdk::{Client, EventBody, JobState};

const IMAGE: &str = "valkyrie-test/busybox:1";
/// The same, with `USER 1000`: not the agent's user.
const USER_IMAGE: &str = "valkyrie-test/busybox-user:1";

/// Builds [`IMAGE`] once per test binary (`docker build` is idempotent, so
/// other test binaries building it at the same time are harmless).
fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("build context");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("a static busybox: apt-get install -y busybox-static");
        std::fs::copy(busybox, dir.path().join("busybox")).expect("copy busybox");
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\n\
             COPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN echo 'valkyrie test image' > /etc/valkyrie-test-image && mkdir -p /www /tmp \
             && echo 'hello from service' > /www/index.html\n\
             ENV PATH=/bin\n\
             VOLUME /cache\n",
        )
        .expect("Dockerfile");
        let out = std::process::Command::new("docker")
            .args(["build", "-q", "-t", IMAGE])
            .arg(dir.path())
            .output()
            .expect("run docker build (is the docker CLI installed?)");
        assert!(
            out.status.success(),
            "docker build failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {IMAGE}\nUSER 1000\n"),
        )
        .unwrap();
        let out = std::process::Command::new("docker")
            .args(["build", "-q", "-t", USER_IMAGE])
            .arg(dir.path())
            .output()
            .expect("run docker build");
        assert!(out.status.success(), "docker build failed: {}", text(&out.stderr));
    });
    IMAGE
}

fn engine() -> Docker {
    Docker::connect_with_defaults().expect("Docker Engine socket")
}

/// Containers (running or not) and networks with every one of `labels`
/// (`name=value`). Job ids start at 1 in every test's server, so a job is
/// named by its runner and its id.
async fn labelled(docker: &Docker, labels: &[String]) -> (Vec<String>, Vec<String>) {
    let filter = HashMap::from([("label", labels.to_vec())]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .expect("list containers");
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::new().filters(&filter).build()))
        .await
        .expect("list networks");
    (
        containers.into_iter().filter_map(|c| c.id).collect(),
        networks.into_iter().filter_map(|n| n.name).collect(),
    )
}

/// Removes whatever a runner left, so that a failing test does not leak
/// containers into the next run (the agent's own cleanup is under test).
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let filter = format!("label=io.valkyrie.runner={}", self.0);
        for kind in ["container", "network"] {
            let ids = std::process::Command::new("docker")
                .args([kind, "ls", "-q", "--filter", &filter])
                .args(if kind == "container" { &["-a"][..] } else { &[][..] })
                .output();
            if let Ok(out) = ids {
                for id in text(&out.stdout).split_whitespace() {
                    let rm: &[&str] = if kind == "container" {
                        &["rm", "-f", "-v"]
                    } else {
                        &["rm"]
                    };
                    let _ = std::process::Command::new("docker")
                        .arg(kind)
                        .args(rm)
                        .arg(id)
                        .output();
                }
            }
        }
    }
}

/// A unique runner name, and the guard that removes what it leaves.
fn runner_name(test: &str) -> (String, Leftovers) {
    let name = format!("dock-{test}-{}", std::process::id());
    (name.clone(), Leftovers(name))
}

/// What most tests start with: a runner name and its leftovers guard, a
/// harness, a server, a client and a docker agent. In a `let` of this
/// tuple the guard is dropped last and the harness after what it started.
async fn docker_setup(test: &str) -> (String, Leftovers, Harness, Server, Client, Agent) {
    let (name, leftovers) = runner_name(test);
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let agent = docker_agent(&h, &server, &client, &name).await;
    (name, leftovers, h, server, client, agent)
}

async fn docker_agent(h: &Harness, server: &Server, client: &Client, name: &str) -> Agent {
    h.agent(server)
        .name(name)
        .args(&["--executor", "docker"])
        .start(client)
        .await
}

fn container_job(name: &str, line: &str) -> JobSpec {
    let mut container = ContainerSpec::image(test_image());
    container.pull_policy = PullPolicy::Never;
    JobSpec {
        container: Some(Box::new(container)),
        ..JobSpec::shell(name, line)
    }
}

/// The job's whole output, once it has ended.
async fn output_of(client: &Client, id: u64) -> String {
    let mut events = client.watch(Some(id), true, true).await.expect("watch");
    let mut output = Vec::new();
    within("the job's output up to its end", async {
        loop {
            let event = events.recv().await.expect("subscription open").expect("event");
            match event.body {
                EventBody::Log { data, .. } => output.extend_from_slice(&data),
                EventBody::State { state, .. } if state.is_terminal() => break,
                _ => {}
            }
        }
    })
    .await;
    text(&output)
}

/// Waits until `needle` shows up in the live output of job `id`.
async fn wait_output(client: &Client, id: u64, needle: &str) {
    let mut events = client.watch(Some(id), true, true).await.expect("watch");
    let mut output = Vec::new();
    within(&format!("`{needle}` in job {id}'s output"), async {
        while !text(&output).contains(needle) {
            let event = events.recv().await.expect("subscription open").expect("event");
            if let EventBody::Log { data, .. } = event.body {
                output.extend_from_slice(&data);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_image_and_its_output_and_exit_code_come_back() {
    let (name, _leftovers, _h, _server, client, mut agent) = docker_setup("image").await;
    let info = agent.registered(&client).await;
    assert!(
        info.tags.iter().any(|t| t == "executor:docker"),
        "{:?}",
        info.tags
    );

    let mut spec = container_job(
        "in-image",
        "cat /etc/valkyrie-test-image; \
         if [ -e /usr/bin/cargo ] || [ -e /etc/os-release ]; then echo host-files; else echo no-host-files; fi; \
         echo \"cwd=$(pwd) ws=$VALKYRIE_WORKSPACE path=$PATH\"; echo to-stderr >&2; \
         echo kept > /workspace/file; exit 3",
    );
    spec.steps.push(valkyrie::message::StepSpec::shell(
        "cat /workspace/file; echo \"$GREETING\"",
    ));
    spec.steps[0].continue_on_error = true;
    spec.env = vec![("GREETING".into(), "hello $CI".into())];
    spec.secrets = vec![("TOKEN".into(), "s3cr3t-value".into())];
    spec.steps
        .push(valkyrie::message::StepSpec::shell("echo \"token=$TOKEN\""));
    let id = client.submit(spec).await.expect("submit");
    let output = output_of(&client, id).await;
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{output}");
    assert_eq!(job.runner.as_deref(), Some(name.as_str()));
    for needle in [
        "valkyrie test image\n",
        "no-host-files\n",
        "cwd=/workspace ws=/workspace path=/bin\n",
        "to-stderr\n",
        "kept\nhello true\n",
        "token=***\n",
    ] {
        assert!(output.contains(needle), "`{needle}` not in the output:\n{output}");
    }
    assert!(!output.contains("s3cr3t-value"), "a secret leaked:\n{output}");

    // A failing step's exit code comes back as the job's.
    let id = client
        .submit(container_job("fails", "exit 7"))
        .await
        .expect("submit");
    let job = wait_final(&client, id).await;
    assert_eq!((job.state, job.exit_code), (JobState::Failed, Some(7)), "{job:?}");

    // A missing image that cannot be pulled fails the job, naming it.
    let mut spec = container_job("missing", "true");
    spec.container.as_mut().unwrap().image = "valkyrie-test/no-such-image:404".into();
    spec.container.as_mut().unwrap().pull_policy = PullPolicy::IfNotPresent;
    let id = client.submit(spec).await.expect("submit");
    let output = output_of(&client, id).await;
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.reason.contains("valkyrie-test/no-such-image:404") && output.contains("could not be pulled"),
        "{job:?}\n{output}"
    );

    let (containers, networks) = labelled(&engine(), &of_runner(&name)).await;
    assert!(
        containers.is_empty() && networks.is_empty(),
        "left behind: {containers:?} {networks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_reached_by_its_alias() {
    let (name, _leftovers, _h, _server, client, _agent) = docker_setup("service").await;

    let mut spec = container_job("with-service", "wget -q -O - http://web:8080/index.html");
    spec.container.as_mut().unwrap().services = vec![ServiceSpec {
        image: test_image().into(),
        alias: "web".into(),
        env: vec![],
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
    }];
    let id = client.submit(spec).await.expect("submit");
    let output = output_of(&client, id).await;
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{output}");
    assert!(output.contains("hello from service"), "{output}");
    let (containers, networks) = labelled(&engine(), &of_job(&name, id)).await;
    assert!(
        containers.is_empty() && networks.is_empty(),
        "left behind: {containers:?} {networks:?}"
    );
}

fn of_runner(runner: &str) -> Vec<String> {
    vec![format!("io.valkyrie.runner={runner}")]
}

fn of_job(runner: &str, job: u64) -> Vec<String> {
    vec![
        format!("io.valkyrie.runner={runner}"),
        format!("io.valkyrie.job={job}"),
    ]
}

/// The anonymous volumes of the job's containers.
async fn anonymous_volumes(docker: &Docker, runner: &str, job: u64) -> Vec<String> {
    let filter = HashMap::from([("label", of_job(runner, job))]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .expect("list containers");
    containers
        .into_iter()
        .flat_map(|c| c.mounts.unwrap_or_default())
        .filter(|m| m.typ.as_deref() == Some("volume"))
        .filter_map(|m| m.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_stop_the_step_and_leave_nothing_behind() {
    let (name, _leftovers) = runner_name("stop");
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    // A network per job even without services, so that its removal is checked too.
    let _agent = h
        .agent(&server)
        .name(&name)
        .args(&["--executor", "docker", "--docker-network-per-job"])
        .start(&client)
        .await;
    let docker = engine();
    let line = "trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait";

    for how in ["cancel", "timeout"] {
        let mut spec = container_job(how, line);
        if how == "timeout" {
            spec.timeout_ms = 3_000;
        }
        let id = client.submit(spec).await.expect("submit");
        wait_output(&client, id, "ready").await;
        let volumes = anonymous_volumes(&docker, &name, id).await;
        assert!(
            !volumes.is_empty(),
            "the image's VOLUME gives the job container an anonymous volume"
        );
        let (containers, networks) = labelled(&docker, &of_job(&name, id)).await;
        assert_eq!(
            (containers.len(), networks.len()),
            (1, 1),
            "{containers:?} {networks:?}"
        );
        if how == "cancel" {
            client.cancel(id).await.expect("cancel");
        }
        let output = output_of(&client, id).await;
        let job = wait_final(&client, id).await;
        let expected = if how == "cancel" {
            JobState::Cancelled
        } else {
            JobState::TimedOut
        };
        assert_eq!(job.state, expected, "{job:?}");
        assert!(
            output.contains("got-term"),
            "the step saw SIGTERM first:\n{output}"
        );
        wait_until(
            &format!("the {how}led job's containers, network and volumes to be gone"),
            || async {
                let (containers, networks) = labelled(&docker, &of_job(&name, id)).await;
                let mut volumes_left = Vec::new();
                for v in &volumes {
                    if docker.inspect_volume(v).await.is_ok() {
                        volumes_left.push(v.clone());
                    }
                }
                (containers.is_empty() && networks.is_empty() && volumes_left.is_empty()).then_some(())
            },
        )
        .await;
    }
}

/// The job's final states in its history: exactly one for a job that
/// ended once.
async fn final_states(client: &Client, id: u64) -> usize {
    let mut events = client.watch(Some(id), false, true).await.expect("watch");
    let mut finals = 0;
    within("the job's history", async {
        loop {
            let event = events.recv().await.expect("subscription open").expect("event");
            match event.body {
                EventBody::State { state, .. } if state.is_terminal() => finals += 1,
                EventBody::ReplayDone => break,
                _ => {}
            }
        }
    })
    .await;
    finals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reattaches_its_running_container_job_which_ends_once() {
    let (name, _leftovers) = runner_name("reattach");
    let h = Harness::new();
    let server = h.server().flag("--runner-lost-after", "60s").start();
    let client = server.client().await;
    let mut agent = docker_agent(&h, &server, &client, &name).await;
    let docker = engine();

    // The step waits for a file the test puts in its (bind-mounted) workspace.
    let spec = container_job(
        "survives",
        "echo before; while [ ! -e go ]; do sleep 0.05; done; echo after; exit 0",
    );
    let id = client.submit(spec).await.expect("submit");
    wait_output(&client, id, "before").await;
    agent.process.kill_now();
    let (containers, _) = labelled(&docker, &of_job(&name, id)).await;
    assert_eq!(containers.len(), 1, "the job's container runs on");

    let _agent = docker_agent(&h, &server, &client, &name).await;
    let (still, _) = labelled(&docker, &of_job(&name, id)).await;
    assert_eq!(
        still, containers,
        "the restarted agent keeps the re-attached container"
    );
    let workspace = std::fs::canonicalize(h.path().join(format!("work-{name}")))
        .unwrap()
        .join(format!("job-{id}-1"));
    std::fs::write(workspace.join("go"), "").unwrap();
    let job = wait_final(&client, id).await;
    assert_eq!(
        (job.state, job.attempt, job.exit_code),
        (JobState::Succeeded, 1, Some(0)),
        "{job:?}"
    );
    let out = server.vk(&["logs", &id.to_string()]).await;
    let log = text(&out.stdout);
    assert_eq!(log.matches("before\n").count(), 1, "{log}");
    assert_eq!(log.matches("after\n").count(), 1, "{log}");
    assert_eq!(final_states(&client, id).await, 1, "the job ended more than once");
    wait_until("the job's container to be removed", || async {
        let (containers, networks) = labelled(&docker, &of_job(&name, id)).await;
        (containers.is_empty() && networks.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_removes_the_containers_of_a_job_cancelled_while_it_was_down() {
    let (name, _leftovers) = runner_name("crash");
    let h = Harness::new();
    let server = h.server().flag("--runner-lost-after", "60s").start();
    let client = server.client().await;
    let mut agent = docker_agent(&h, &server, &client, &name).await;
    let docker = engine();

    let id = client
        .submit(container_job("abandoned", "echo ready; sleep 1000"))
        .await
        .expect("submit");
    wait_output(&client, id, "ready").await;
    agent.process.kill_now();
    let (containers, _) = labelled(&docker, &of_job(&name, id)).await;
    assert!(!containers.is_empty(), "the killed agent could not clean up");
    client.cancel(id).await.expect("cancel");
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");

    let _agent = docker_agent(&h, &server, &client, &name).await;
    wait_until(
        "the given-up job's containers and network to be removed",
        || async {
            let (containers, networks) = labelled(&docker, &of_job(&name, id)).await;
            (containers.is_empty() && networks.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(final_states(&client, id).await, 1, "the job ended more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_and_docker_runners_side_by_side_take_their_own_jobs() {
    let (name, _leftovers) = runner_name("sides");
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let shell_name = format!("shell-{name}");
    let _shell = h
        .agent(&server)
        .name(&shell_name)
        .tags(&["host"])
        .start(&client)
        .await;

    // Only a shell runner: the container job waits, and says why.
    let waiting = client
        .submit(container_job("boxed", "echo boxed"))
        .await
        .expect("submit");
    let job = wait_job(&client, waiting, "to name the missing Docker executor", |j| {
        j.reason.contains("Docker executor")
    })
    .await;
    assert_eq!(job.state, JobState::Queued, "{job:?}");
    let mut host_job = JobSpec::shell("on-host", "echo on-host");
    host_job.tags = vec!["host".into()];
    let host = client.submit(host_job.clone()).await.expect("submit");
    let job = wait_final(&client, host).await;
    assert_eq!(
        (job.state, job.runner.as_deref()),
        (JobState::Succeeded, Some(shell_name.as_str()))
    );

    let _docker = docker_agent(&h, &server, &client, &name).await;
    let job = wait_final(&client, waiting).await;
    assert_eq!(
        (job.state, job.runner.as_deref()),
        (JobState::Succeeded, Some(name.as_str())),
        "{job:?}"
    );
    let host = client.submit(host_job).await.expect("submit");
    let job = wait_final(&client, host).await;
    assert_eq!(job.runner.as_deref(), Some(shell_name.as_str()), "{job:?}");
}

/// The pipeline file's `image:` and `services:` reach the runner: a run
/// whose jobs use the pipeline's image, one of them with a service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_image_and_services_runs_in_containers() {
    let (name, _leftovers, _h, _server, client, _agent) = docker_setup("pipeline").await;

    let yaml = format!(
        "image: {image}\n\
         pull_policy: never\n\
         jobs:\n\
         \x20 plain:\n\
         \x20   steps: [cat /etc/valkyrie-test-image]\n\
         \x20 served:\n\
         \x20   services:\n\
         \x20     - name: {image}\n\
         \x20       alias: files\n\
         \x20       command: httpd -f -p 80 -h /www\n\
         \x20   resources: {{cpus: 0.5, memory: 64m}}\n\
         \x20   steps:\n\
         \x20     - wget -q -O - http://files/index.html\n\
         \x20     - cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n",
        image = test_image()
    );
    let run_id = client
        .submit_pipeline("ci.yaml", &yaml)
        .await
        .expect("submit pipeline");
    let run = wait_until("the run to finish", || async {
        let run = client.run(run_id).await.expect("run");
        run.state.is_terminal().then_some(run)
    })
    .await;
    assert_eq!(run.state, valkyrie_sdk::RunState::Succeeded, "{run:?}");
    let mut outputs = Vec::new();
    for job in &run.jobs {
        assert_eq!(job.runner.as_deref(), Some(name.as_str()), "{job:?}");
        outputs.push(output_of(&client, job.job_id.expect("job id")).await);
    }
    let all = outputs.join("");
    assert!(
        all.contains("valkyrie test image") && all.contains("hello from service"),
        "{all}"
    );
    assert!(
        all.contains(&format!("{}\n", 64 << 20)),
        "the memory limit is the job's: {all}"
    );
}

/// An image whose user is not the agent's can write its workspace and
/// `$VALKYRIE_ENV`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_image_user_can_write_its_workspace_and_env_file() {
    let (_name, _leftovers, _h, _server, client, _agent) = docker_setup("user").await;

    let mut spec = container_job(
        "as-1000",
        "id -u; echo data > /workspace/f; echo \"SEEN=yes\" >> \"$VALKYRIE_ENV\"",
    );
    test_image();
    spec.container.as_mut().unwrap().image = USER_IMAGE.into();
    spec.steps.push(valkyrie::message::StepSpec::shell(
        "cat /workspace/f; echo \"seen=$SEEN\"",
    ));
    let id = client.submit(spec).await.expect("submit");
    let output = output_of(&client, id).await;
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}\n{output}");
    // Without the step section lines of a job of several steps.
    let own: String = output
        .lines()
        .filter(|l| !l.starts_with("[valkyrie] step "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(own.contains("1000\ndata\nseen=yes\n"), "{output}");
}

/// `vk exec --image` runs the command in the image; its output and exit
/// code come back as for a host job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_exec_image_runs_the_command_in_a_container() {
    let (_name, _leftovers, _h, server, _client, _agent) = docker_setup("vk").await;

    let out = server
        .vk(&[
            "exec",
            "--image",
            test_image(),
            "--",
            "sh",
            "-c",
            "cat /etc/valkyrie-test-image; exit 5",
        ])
        .await;
    assert_eq!(
        text(&out.stdout),
        "valkyrie test image\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
}

/// A registry endpoint that records the connections the Docker Engine
/// makes to it: it either holds them open without a word (a pull hangs)
/// or closes them at once (a pull fails fast).
struct FakeRegistry {
    address: String,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, PartialEq)]
enum RegistryAnswers {
    Never,
    Close,
}

impl FakeRegistry {
    async fn start(answers: RegistryAnswers) -> Self {
        // 127.0.0.0/8 is an insecure registry for the Engine by default:
        // it talks plain HTTP to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if answers == RegistryAnswers::Never {
                    held.push(socket);
                }
            }
        });
        FakeRegistry {
            address,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn image_job(name: &str, image: &str, policy: PullPolicy, line: &str) -> JobSpec {
    let mut container = ContainerSpec::image(image);
    container.pull_policy = policy;
    JobSpec {
        container: Some(Box::new(container)),
        ..JobSpec::shell(name, line)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_an_image_pull_stops_the_job() {
    let (name, _leftovers, _h, _server, client, _agent) = docker_setup("pullcancel").await;
    let registry = FakeRegistry::start(RegistryAnswers::Never).await;

    let image = format!("{}/valkyrie/never-answers:1", registry.address);
    let id = client
        .submit(image_job(
            "pulling",
            &image,
            PullPolicy::IfNotPresent,
            "echo the step ran",
        ))
        .await
        .expect("submit");
    wait_until("the pull to reach the registry", || {
        std::future::ready((registry.connections() > 0).then_some(()))
    })
    .await;
    let job = client.job(id).await.expect("job");
    assert!(!job.state.is_terminal(), "the pull hangs: {job:?}");
    client.cancel(id).await.expect("cancel");
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    let output = output_of(&client, id).await;
    assert!(!output.contains("the step ran"), "{output}");
    let (containers, networks) = labelled(&engine(), &of_job(&name, id)).await;
    assert!(
        containers.is_empty() && networks.is_empty(),
        "{containers:?} {networks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_policy_always_pulls_an_image_that_is_present_and_if_not_present_does_not() {
    let (_name, _leftovers, _h, _server, client, _agent) = docker_setup("always").await;
    let registry = FakeRegistry::start(RegistryAnswers::Close).await;

    // The test image, present locally under the fake registry's name.
    let image = format!("{}/valkyrie/present:1", registry.address);
    let tagged = std::process::Command::new("docker")
        .args(["tag", test_image(), &image])
        .output()
        .expect("docker tag");
    assert!(tagged.status.success(), "{}", text(&tagged.stderr));
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", &self.0])
                .output();
        }
    }
    let _untag = Untag(image.clone());

    let present = client
        .submit(image_job(
            "present",
            &image,
            PullPolicy::IfNotPresent,
            "echo from the local image",
        ))
        .await
        .expect("submit");
    let job = wait_final(&client, present).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(
        registry.connections(),
        0,
        "if-not-present pulls nothing when the image is there"
    );

    let always = client
        .submit(image_job(
            "always",
            &image,
            PullPolicy::Always,
            "echo the step ran",
        ))
        .await
        .expect("submit");
    let job = wait_final(&client, always).await;
    assert!(
        registry.connections() > 0,
        "pull_policy: always asked the registry"
    );
    // The registry hangs up: the pull fails, and so does the job, naming the image.
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    assert!(
        job.reason.contains(&image) && job.reason.contains("could not be pulled"),
        "{}",
        job.reason
    );
}
