//! `vk`: the Valkyrie command-line client.

mod artifacts;
mod demo;
mod follow;
mod ids;
mod interrupt;
mod listing;
mod live;
mod out;
mod projects;
mod run_view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use valkyrie::Endpoint;
use valkyrie_sdk::{
    pipeline, Client, ClientError, ClientOptions, ClientTls, EventBody, JobSpec, RunnerState, StepSpec,
};

use follow::Output;
use ids::Target;
use out::outln;
use run_view::ViewOptions;

/// Run and watch CI jobs and pipelines on a Valkyrie control plane.
#[derive(Parser, Debug)]
#[command(
    name = "vk",
    version,
    after_help = "Examples:\n  vk demo\n  vk exec -- cargo test\n  vk run .valkyrie.yaml --logs\n  vk jobs"
)]
struct Cli {
    /// The control plane: unix:///path, tcp://host:port, tls://host:port or quic://host:port.
    #[arg(
        long,
        global = true,
        env = "VALKYRIE_SERVER",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7700"
    )]
    server: Vec<Endpoint>,
    /// API token.
    #[arg(
        long,
        global = true,
        env = "VALKYRIE_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// CA certificate (PEM) to trust for tls:// and quic://.
    #[arg(long, global = true, env = "VALKYRIE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local control plane and two agents, and run the example pipeline live.
    #[command(after_help = "Examples:\n  cargo run --release --bin vk -- demo\n  vk demo --plain")]
    Demo {
        /// Appended lines instead of an in-place display.
        #[arg(long)]
        plain: bool,
        /// Hide job output.
        #[arg(long)]
        quiet: bool,
    },
    /// Run one command as a job on a matching runner, stream its output, exit with its exit code.
    #[command(
        after_help = "Examples:\n  vk exec -- cargo test\n  vk exec --tags linux,gpu --timeout 10m -- ./train.sh\n  vk exec --detach -- make release"
    )]
    Exec {
        /// Tags the runner must have, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Job timeout, e.g. 30s, 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Print the job id and return at once.
        #[arg(long)]
        detach: bool,
        /// Job priority (higher runs first).
        #[arg(long, default_value_t = 0)]
        priority: u8,
        /// Project, for fair share.
        #[arg(long, default_value = "default")]
        project: String,
        /// Run it in a container of this image, on a runner with the Docker executor
        /// (`valkyrie-agent --executor docker`), e.g. `--image rust:1.89`.
        #[arg(long)]
        image: Option<String>,
        /// The command and its arguments; flags of `vk exec` go before it
        /// (an unknown one is an error, not part of the command).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Validate a pipeline file, submit it, and show the run live; exits 0 only if the run succeeded.
    #[command(
        after_help = "Examples:\n  vk run examples/demo.yaml\n  vk run ci.yaml --logs\n  vk run ci.yaml --var DEPLOY=1 --var TARGET=staging\n  vk run ci.yaml --detach\n  vk run ci.yaml --json | jq ."
    )]
    Run {
        /// The pipeline file.
        file: PathBuf,
        /// A variable for every job and for `if:` rules, NAME=VALUE (repeatable); it overrides the file's `env`.
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Interleave job output, prefixed with the job name.
        #[arg(long)]
        logs: bool,
        /// Appended lines instead of an in-place display.
        #[arg(long)]
        plain: bool,
        /// Print events as JSON lines.
        #[arg(long)]
        json: bool,
        /// Print the run id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Check a pipeline file and print every problem with its position.
    #[command(after_help = "Examples:\n  vk validate .valkyrie.yaml")]
    Validate {
        /// The pipeline file.
        file: PathBuf,
    },
    /// List runs, newest first.
    #[command(after_help = "Examples:\n  vk runs\n  vk runs --json")]
    Runs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one run with its jobs.
    #[command(after_help = "Examples:\n  vk status r12\n  vk status r12 --json")]
    Status {
        /// Run id (r12).
        #[arg(value_parser = ids::parse_run)]
        run: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first, with why queued jobs wait.
    #[command(after_help = "Examples:\n  vk jobs\n  vk jobs --json --limit 500")]
    Jobs {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List runners, or remove one (`vk runners rm NAME`).
    #[command(
        after_help = "Examples:\n  vk runners\n  vk runners --json\n  vk runners rm old-builder\n  vk runners rm builder-3 --force"
    )]
    Runners {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<RunnersAction>,
    },
    /// Print a job's output: every stream on stdout, in order; attempts of
    /// a retried job are separated by a header line.
    #[command(
        after_help = "Examples:\n  vk logs 42\n  vk logs 42 -f\n  vk logs 42 --json | jq -r 'select(.stream == \"stderr\") | .text'"
    )]
    Logs {
        /// Job id.
        #[arg(value_parser = parse_job)]
        job: u64,
        /// Keep following until the job ends (exit code as `vk exec`).
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per output chunk: job_id, seq, stream (stdout, stderr, system), text.
        #[arg(long)]
        json: bool,
    },
    /// Download a job's artifacts into a directory (archives unpacked), or list them.
    #[command(after_help = "Examples:\n  vk artifacts 42 --output dist\n  vk artifacts 42 --list")]
    Artifacts {
        /// Job id.
        #[arg(value_parser = parse_job)]
        job: u64,
        /// Where to put them (created if missing).
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// List them (name, size, SHA-256) instead of downloading.
        #[arg(long)]
        list: bool,
        /// With --list: print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a manual job (`when: manual`) of a run.
    #[command(after_help = "Examples:\n  vk play r12 deploy")]
    Play {
        /// Run id (r12).
        #[arg(value_parser = ids::parse_run)]
        run: u64,
        /// The job's name in the run.
        job: String,
    },
    /// Start a new run of a finished run: same pipeline, commit and variables.
    #[command(after_help = "Examples:\n  vk rerun r12\n  vk rerun r12 --failed")]
    Rerun {
        /// Run id (r12).
        #[arg(value_parser = ids::parse_run)]
        run: u64,
        /// Only the jobs that failed or were cancelled, and those that wait for them; the others keep their results.
        #[arg(long)]
        failed: bool,
        /// Print the new run id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Cancel a job (42) or a run (r12).
    #[command(after_help = "Examples:\n  vk cancel 42\n  vk cancel r12")]
    Cancel {
        /// Job id, or run id with an r prefix.
        target: Target,
    },
    /// Show the audit log: who submitted, cancelled, drained, triggered or minted what, newest first.
    #[command(after_help = "Examples:\n  vk audit\n  vk audit --json --limit 500")]
    Audit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many records (1 to 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// List the control planes of the server's group: role, epoch, lease expiry, URIs.
    #[command(
        after_help = "Examples:\n  vk servers\n  vk servers --json\n  vk --server tcp://cp-a:7700,tcp://cp-b:7700 servers"
    )]
    Servers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Projects: git repositories whose pushes, triggers and schedules start runs.
    #[command(
        after_help = "Examples:\n  vk projects add app --repo https://git.example/ci/app.git --webhook-secret \"$SECRET\"\n  vk projects list\n  vk projects show app\n  vk projects remove app"
    )]
    Projects {
        #[command(subcommand)]
        action: projects::ProjectsAction,
    },
    /// Cron schedules of projects, fired by the leader once per slot.
    #[command(
        after_help = "Examples:\n  vk schedules add app \"0 3 * * *\" --branch main\n  vk schedules add app \"*/30 * * * * *\" --var SUITE=smoke\n  vk schedules list app\n  vk schedules remove 3"
    )]
    Schedules {
        #[command(subcommand)]
        action: projects::SchedulesAction,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  vk completions bash > /etc/bash_completion.d/vk\n  vk completions zsh > ~/.zfunc/_vk"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum RunnersAction {
    /// Remove a runner's record. A connected runner is refused unless
    /// --force, which drains it and removes it once it disconnects.
    Rm {
        /// The runner's name.
        name: String,
        /// Drain a connected runner and remove it when it disconnects.
        #[arg(long)]
        force: bool,
    },
}

fn parse_job(s: &str) -> Result<u64, String> {
    match s.parse::<Target>()? {
        Target::Job(id) => Ok(id),
        Target::Run(_) => Err(format!("`{s}` is a run id; `vk logs` takes a job id")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colours only on a terminal, and never with NO_COLOR set.
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    console::set_colors_enabled(colour);
    console::set_colors_enabled_stderr(colour && std::io::stderr().is_terminal());
    match run(cli).await {
        Ok(code) => {
            out::flush();
            code
        }
        Err(err) => {
            eprintln!("vk: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// What `vk` needs to (re)connect.
#[derive(Clone, Debug)]
struct Connector {
    /// The servers of the group, tried in turn (the leader answers).
    servers: Vec<Endpoint>,
    token: String,
    ca_cert: Option<PathBuf>,
}

impl Connector {
    fn new(cli: &Cli) -> Self {
        Self {
            servers: cli.server.clone(),
            token: cli.token.clone(),
            ca_cert: cli.ca_cert.clone(),
        }
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let tls = self.ca_cert.as_deref().map(ClientTls::from_ca_file).transpose()?;
        let options = ClientOptions {
            tls,
            ..Default::default()
        };
        let mut last = None;
        for server in &self.servers {
            match self.connect_to(server, options.clone()).await {
                Ok(client) => return Ok(client),
                Err(err) => {
                    tracing::debug!(%server, "{err:#}");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("--server names no server")))
    }

    async fn connect_to(&self, server: &Endpoint, options: ClientOptions) -> anyhow::Result<Client> {
        use valkyrie::transport::ConnectError;
        match Client::connect(server, &self.token, options).await {
            Ok(client) => Ok(client),
            // These name the server already: no second "cannot connect to".
            Err(
                err @ ClientError::Connect(
                    ConnectError::Io { .. } | ConnectError::MissingTls(_) | ConnectError::AnsweredHttp(_),
                ),
            ) => Err(err.into()),
            Err(err) => Err(anyhow::Error::new(err).context(format!("cannot connect to {server}"))),
        }
    }
}

fn read_pipeline(file: &PathBuf) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok((file.display().to_string(), text))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Demo { plain, quiet } => {
            return demo::demo(ViewOptions {
                logs: !quiet,
                plain: *plain,
                json: false,
            })
            .await;
        }
        Command::Validate { file } => {
            let (name, text) = read_pipeline(file)?;
            return Ok(match pipeline::parse(&name, &text) {
                Ok(p) => {
                    outln!(
                        "{name}: valid pipeline `{}` with {} jobs in {} stages",
                        p.name,
                        p.jobs.len(),
                        p.stages.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!("{} error(s)", errors.0.len());
                    ExitCode::from(2)
                }
            });
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "vk", &mut script);
            out::bytes(&script);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let connector = Connector::new(&cli);
    let client = connector.connect().await?;
    let reconnect = || connector.connect();
    match cli.command {
        Command::Demo { .. } | Command::Validate { .. } | Command::Completions { .. } => {
            unreachable!("handled above")
        }
        Command::Run {
            file,
            vars,
            logs,
            plain,
            json,
            detach,
        } => {
            let (name, text) = read_pipeline(&file)?;
            // Validate locally first: the same validator the server runs.
            if let Err(errors) = pipeline::parse(&name, &text) {
                eprintln!("{errors}");
                eprintln!("{} error(s); nothing was submitted", errors.0.len());
                return Ok(ExitCode::from(2));
            }
            let options = ViewOptions { logs, plain, json };
            if !detach {
                interrupt::install()?;
            }
            let events = if detach {
                None
            } else {
                run_view::subscribe(&client, options).await?
            };
            let run_id = client.submit_pipeline_with(&name, &text, vars).await?;
            if detach {
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({"type": "run", "run_id": run_id, "state": "running"})
                    );
                } else {
                    outln!("r{run_id}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let (code, _) = run_view::follow_run(&client, run_id, options, events, reconnect).await?;
            Ok(code)
        }
        Command::Runs { json, limit } => {
            let runs = client.runs(limit).await?;
            if json {
                let runs: Vec<_> = runs.iter().map(listing::run_json).collect();
                outln!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                listing::print_runs(&runs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { run, json } => {
            let info = client.run(run).await?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&listing::run_status_json(&client, &info).await?)?
                );
            } else {
                listing::print_runs(std::slice::from_ref(&info));
                outln!();
                listing::print_run_jobs(&info);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            tags,
            timeout,
            detach,
            priority,
            project,
            image,
            command,
        } => {
            // Run argv directly, with no shell in between, so a cancel's
            // SIGTERM reaches the program itself.
            let mut spec = JobSpec::with_steps(command.join(" "), vec![StepSpec::argv(command.clone())]);
            spec.tags = tags.into_iter().filter(|t| !t.is_empty()).collect();
            spec.timeout_ms = timeout.map_or(0, |t| t.as_millis() as u64);
            spec.priority = priority;
            spec.project = project;
            spec.container = image
                .filter(|i| !i.is_empty())
                .map(|i| Box::new(valkyrie_sdk::ContainerSpec::image(i)));
            if !detach {
                interrupt::install()?;
            }
            let job = client.submit(spec).await?;
            if detach {
                outln!("{job}");
                return Ok(ExitCode::SUCCESS);
            }
            follow::follow_job(&client, job, Output::Split, true, reconnect).await
        }
        Command::Jobs { json, limit } => {
            let jobs = client.jobs(limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                listing::print_jobs(&jobs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runners {
            action: Some(RunnersAction::Rm { name, force }),
            ..
        } => {
            let connected = client
                .runners()
                .await?
                .iter()
                .any(|r| r.name == name && !matches!(r.state, RunnerState::Lost | RunnerState::Stopped));
            client.remove_runner(&name, force).await?;
            if connected && force {
                eprintln!("runner `{name}` is draining; it will be removed once it disconnects");
            } else {
                eprintln!("runner `{name}` removed");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runners { json, action: None } => {
            let runners = client.runners().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&runners)?);
            } else {
                listing::print_runners(&runners);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { job, follow, json } => {
            let output = if json { Output::Json } else { Output::Merged };
            if follow {
                return follow::follow_job(&client, job, output, false, reconnect).await;
            }
            let mut events = client.watch(Some(job), true, true).await?;
            while let Some(event) = events.recv().await {
                match event?.body {
                    EventBody::Log { stream, seq, data } => {
                        follow::write_chunk(output, job, stream, seq, &data)
                    }
                    EventBody::ReplayDone => break,
                    _ => {}
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { json, limit } => {
            let entries = client.audit(limit, 0).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                listing::print_audit(&entries);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Artifacts {
            job,
            output,
            list,
            json,
        } => artifacts::run(&client, job, &output, list, json).await,
        Command::Servers { json } => {
            let servers = client.servers().await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&servers)?);
            } else {
                listing::print_servers(&servers);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Projects { action } => projects::projects(&client, action).await,
        Command::Schedules { action } => projects::schedules(&client, action).await,
        Command::Play { run, job } => {
            client.play(run, &job).await?;
            eprintln!("job `{job}` of run r{run} started");
            Ok(ExitCode::SUCCESS)
        }
        Command::Rerun { run, failed, detach } => {
            let options = ViewOptions {
                logs: false,
                plain: false,
                json: false,
            };
            let events = if detach {
                None
            } else {
                interrupt::install()?;
                run_view::subscribe(&client, options).await?
            };
            let new_run = client.rerun(run, failed).await?;
            if detach {
                outln!("r{new_run}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("r{new_run} reruns r{run}");
            let (code, _) = run_view::follow_run(&client, new_run, options, events, reconnect).await?;
            Ok(code)
        }
        Command::Cancel { target } => {
            match target {
                Target::Job(id) => client.cancel(id).await?,
                Target::Run(id) => client.cancel_run(id).await?,
            }
            eprintln!("cancel requested for {target}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `NAME=VALUE` of `vk run --var`.
fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not NAME=VALUE")),
    }
}
