//! `vk`: the Valkyrie command-line client.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use valkyrie::Endpoint;
use valkyrie_sdk::{
    Client, ClientOptions, ClientTls, EventBody, JobInfo, JobSpec, JobState, OutputStream, RunnerInfo,
};

/// Run and watch CI jobs on a Valkyrie control plane.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The control plane: unix:///path, tcp://host:port, tls://host:port or quic://host:port.
    #[arg(
        long,
        global = true,
        env = "VALKYRIE_SERVER",
        default_value = "tcp://127.0.0.1:7700"
    )]
    server: Endpoint,
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
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
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
    /// List runners.
    #[command(after_help = "Examples:\n  vk runners\n  vk runners --json")]
    Runners {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's output.
    #[command(after_help = "Examples:\n  vk logs 42\n  vk logs 42 -f")]
    Logs {
        /// Job id.
        job: u64,
        /// Keep following until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a job.
    #[command(after_help = "Example:\n  vk cancel 42")]
    Cancel {
        /// Job id.
        job: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vk: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tls = cli.ca_cert.as_deref().map(ClientTls::from_ca_file).transpose()?;
    let client = Client::connect(
        &cli.server,
        &cli.token,
        ClientOptions {
            tls,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("cannot connect to {}", cli.server))?;
    match cli.command {
        Command::Exec {
            tags,
            timeout,
            detach,
            priority,
            project,
            command,
        } => {
            let line = command
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ");
            let mut spec = JobSpec::shell(command.join(" "), line);
            spec.tags = tags.into_iter().filter(|t| !t.is_empty()).collect();
            spec.timeout_ms = timeout.map_or(0, |t| t.as_millis() as u64);
            spec.priority = priority;
            spec.project = project;
            let job = client.submit(spec).await?;
            if detach {
                println!("{job}");
                return Ok(ExitCode::SUCCESS);
            }
            follow_job(&client, job, true).await
        }
        Command::Jobs { json, limit } => {
            let jobs = client.jobs(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print_jobs(&jobs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runners { json } => {
            let runners = client.runners().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runners)?);
            } else {
                print_runners(&runners);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { job, follow } => {
            if follow {
                follow_job(&client, job, false).await
            } else {
                let mut events = client.watch(Some(job), true, true).await?;
                while let Some(event) = events.recv().await {
                    match event?.body {
                        EventBody::Log { stream, data, .. } => write_output(stream, &data),
                        EventBody::ReplayDone => break,
                        _ => {}
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Cancel { job } => {
            client.cancel(job).await?;
            eprintln!("cancel requested for job {job}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Streams a job's output until it ends; the exit code mirrors the job's.
async fn follow_job(client: &Client, job: u64, cancel_on_interrupt: bool) -> anyhow::Result<ExitCode> {
    let mut events = client.watch(Some(job), true, true).await?;
    let mut interrupted = false;
    let mut said_waiting = false;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c(), if cancel_on_interrupt && !interrupted => {
                interrupted = true;
                eprintln!("vk: cancelling job {job}…");
                client.cancel(job).await?;
                continue;
            }
        };
        let Some(event) = event else {
            anyhow::bail!("connection to the server ended before job {job} finished")
        };
        match event?.body {
            EventBody::Log { stream, data, .. } => write_output(stream, &data),
            EventBody::Skipped { missed } => {
                eprintln!("vk: {missed} events skipped because this client fell behind; `vk logs {job}` shows all output")
            }
            EventBody::ReplayDone => {}
            EventBody::State {
                state,
                exit_code,
                message,
                runner,
                ..
            } => {
                if state == JobState::Queued && !said_waiting {
                    // A freshly queued job has no reason yet: ask for it.
                    let info = client.job(job).await?;
                    if info.state == JobState::Queued && !info.reason.is_empty() {
                        eprintln!("vk: job {job} waiting: {}", info.reason);
                        said_waiting = true;
                    }
                }
                if !state.is_terminal() {
                    continue;
                }
                let _ = std::io::stdout().flush();
                return Ok(match state {
                    JobState::Succeeded => ExitCode::SUCCESS,
                    JobState::Failed => {
                        eprintln!(
                            "vk: job {job} failed on {}: {message}",
                            runner.unwrap_or_default()
                        );
                        ExitCode::from(
                            exit_code
                                .and_then(|c| u8::try_from(c).ok())
                                .filter(|c| *c != 0)
                                .unwrap_or(1),
                        )
                    }
                    JobState::TimedOut => {
                        eprintln!("vk: job {job} timed out: {message}");
                        ExitCode::from(124)
                    }
                    JobState::Cancelled => {
                        eprintln!("vk: job {job} cancelled: {message}");
                        ExitCode::from(130)
                    }
                    _ => {
                        eprintln!("vk: job {job} {}: {message}", state.as_str());
                        ExitCode::from(1)
                    }
                });
            }
        }
    }
}

fn write_output(stream: OutputStream, data: &[u8]) {
    let _ = match stream {
        OutputStream::Stdout => std::io::stdout().write_all(data),
        OutputStream::Stderr | OutputStream::System => std::io::stderr().write_all(data),
    };
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn print_jobs(jobs: &[JobInfo]) {
    println!(
        "{:<8} {:<10} {:<24} {:<16} {:>4}  REASON",
        "ID", "STATE", "NAME", "RUNNER", "EXIT"
    );
    for j in jobs {
        let exit = j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:<10} {:<24} {:<16} {:>4}  {}",
            j.job_id,
            j.state.as_str(),
            truncate(&j.name, 24),
            j.runner.as_deref().unwrap_or("-"),
            exit,
            j.reason
        );
    }
}

fn print_runners(runners: &[RunnerInfo]) {
    println!(
        "{:<6} {:<20} {:<9} {:>9}  {:<12} TAGS",
        "ID", "NAME", "STATE", "BUSY", "OS/ARCH"
    );
    for r in runners {
        println!(
            "{:<6} {:<20} {:<9} {:>9}  {:<12} {}",
            r.runner_id,
            truncate(&r.name, 20),
            r.state.as_str(),
            format!("{}/{}", r.busy, r.slots),
            format!("{}/{}", r.os, r.arch),
            r.tags.join(",")
        );
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}
