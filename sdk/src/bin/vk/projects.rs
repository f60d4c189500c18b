//! `vk projects` and `vk schedules`: repositories whose pushes, triggers
//! and cron schedules start runs.

use std::process::ExitCode;

use clap::Subcommand;
use valkyrie_sdk::{Client, ProjectInfo, PutProject, ScheduleInfo};

use crate::listing::format_ms;
use crate::out::outln;

#[derive(Subcommand, Debug)]
pub enum ProjectsAction {
    /// Create a project: a git repository whose pushes start runs of its pipeline file.
    Add {
        /// Unique name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Clone URL, without credentials (https://, git://, ssh://).
        #[arg(long)]
        repo: String,
        /// Default branch.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Pipeline file path in the repository.
        #[arg(long, default_value = ".valkyrie.yml")]
        file: String,
        /// Webhook secret (GitHub's HMAC key, GitLab's token); stored encrypted, never shown.
        #[arg(long, env = "VK_WEBHOOK_SECRET", hide_env_values = true, default_value = "")]
        webhook_secret: String,
        /// HTTPS token for a private repository; stored encrypted, never shown.
        #[arg(long, env = "VK_REPO_TOKEN", hide_env_values = true, default_value = "")]
        repo_token: String,
    },
    /// List projects.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a project and its schedules.
    Show {
        /// The project.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a project (its runs stay; its schedules go).
    Remove {
        /// The project.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SchedulesAction {
    /// Run a project's branch on a cron schedule (UTC): 5 fields, or 6 with seconds first.
    Add {
        /// The project.
        project: String,
        /// Cron expression, e.g. "0 3 * * *" (03:00 UTC daily).
        cron: String,
        /// The branch to run (default: the project's branch).
        #[arg(long, default_value = "")]
        branch: String,
        /// A variable for every job, NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::parse_var)]
        vars: Vec<(String, String)>,
    },
    /// List schedules (of one project, or of all).
    List {
        /// Only this project's.
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule.
    Remove {
        /// Schedule id (as listed).
        id: u64,
    },
}

pub async fn projects(client: &Client, action: ProjectsAction) -> anyhow::Result<ExitCode> {
    match action {
        ProjectsAction::Add {
            name,
            repo,
            branch,
            file,
            webhook_secret,
            repo_token,
        } => {
            let project = client
                .create_project(PutProject {
                    name,
                    repo,
                    branch,
                    file,
                    webhook_secret,
                    token: repo_token,
                })
                .await?;
            eprintln!(
                "project `{}` created; GitHub webhooks go to /api/webhooks/github/{}, GitLab's to /api/webhooks/gitlab/{}",
                project.name, project.name, project.name
            );
            print_projects(&[project]);
        }
        ProjectsAction::List { json } => {
            let projects = client.projects("").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&projects)?);
            } else {
                print_projects(&projects);
            }
        }
        ProjectsAction::Show { name, json } => {
            let projects = client.projects(&name).await?;
            let schedules = client.schedules(&name).await?;
            if json {
                let shown = serde_json::json!({"project": projects.first(), "schedules": schedules});
                outln!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                for p in &projects {
                    outln!("name:            {}", p.name);
                    outln!("repository:      {}", p.repo);
                    outln!("branch:          {}", p.branch);
                    outln!("pipeline file:   {}", p.file);
                    outln!(
                        "webhook secret:  {}",
                        if p.has_webhook_secret {
                            "set"
                        } else {
                            "none (webhooks are refused)"
                        }
                    );
                    outln!("repository token: {}", if p.has_token { "set" } else { "none" });
                    outln!(
                        "webhooks:        /api/webhooks/github/{0}, /api/webhooks/gitlab/{0}",
                        p.name
                    );
                }
                outln!();
                print_schedules(&schedules);
            }
        }
        ProjectsAction::Remove { name } => {
            client.remove_project(&name).await?;
            eprintln!("project `{name}` removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn schedules(client: &Client, action: SchedulesAction) -> anyhow::Result<ExitCode> {
    match action {
        SchedulesAction::Add {
            project,
            cron,
            branch,
            vars,
        } => {
            let schedule = client.add_schedule(&project, &cron, &branch, vars).await?;
            eprintln!("schedule {} added to project `{project}`", schedule.id);
            print_schedules(&[schedule]);
        }
        SchedulesAction::List { project, json } => {
            let schedules = client.schedules(project.as_deref().unwrap_or("")).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&schedules)?);
            } else {
                print_schedules(&schedules);
            }
        }
        SchedulesAction::Remove { id } => {
            client.remove_schedule(id).await?;
            eprintln!("schedule {id} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_projects(projects: &[ProjectInfo]) {
    outln!(
        "{:<20} {:<12} {:<20} {:<7} {:<6} REPOSITORY",
        "PROJECT",
        "BRANCH",
        "FILE",
        "WEBHOOK",
        "TOKEN"
    );
    for p in projects {
        let yes = |b: bool| if b { "yes" } else { "no" };
        outln!(
            "{:<20} {:<12} {:<20} {:<7} {:<6} {}",
            p.name,
            p.branch,
            p.file,
            yes(p.has_webhook_secret),
            yes(p.has_token),
            p.repo
        );
    }
}

fn print_schedules(schedules: &[ScheduleInfo]) {
    let now_ms = crate::listing::now_ms();
    let next = |ms: u64| match ms {
        0 => "never".to_owned(),
        ms if ms <= now_ms => "due".to_owned(),
        ms => format!("in {}", format_ms(ms - now_ms)),
    };
    outln!(
        "{:>4}  {:<20} {:<18} {:<12} {:<14} VARIABLES",
        "ID",
        "PROJECT",
        "CRON (UTC)",
        "BRANCH",
        "NEXT"
    );
    for s in schedules {
        let vars: Vec<String> = s.variables.iter().map(|(n, v)| format!("{n}={v}")).collect();
        outln!(
            "{:>4}  {:<20} {:<18} {:<12} {:<14} {}",
            s.id,
            s.project,
            s.cron,
            s.branch,
            next(s.next_ms),
            vars.join(" ")
        );
    }
}
