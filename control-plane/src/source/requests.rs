//! Project and schedule requests over the Valkyrie protocol (`vk projects`,
//! `vk schedules`; spec §7.8): checked off the core, then answered from it.

use valkyrie::message::{Message, ProjectList, ScheduleList};
use valkyrie::ErrorCode;

use super::schedule::{parse_cron, Schedule};
use super::{check_variables, Project};
use crate::audit::Actor;
use crate::core::{Command, CoreHandle, ProjectCommand, ScheduleRefused};
use crate::responder::Responder;

/// Whether `message` is one of the requests [`serve`] answers.
pub fn is_project_request(message: &Message) -> bool {
    matches!(
        message,
        Message::PutProject(_)
            | Message::ListProjects(_)
            | Message::RemoveProject(_)
            | Message::AddSchedule(_)
            | Message::ListSchedules(_)
            | Message::RemoveSchedule(_)
    )
}

const STOPPED: &str = "the server is stopping";

/// Answers one project or schedule request on behalf of `actor`.
pub async fn serve(core: &CoreHandle, actor: &Actor, reply: Responder, message: Message) {
    let call = |command: Command| Command::As {
        actor: actor.clone(),
        command: Box::new(command),
    };
    match message {
        Message::PutProject(m) => {
            let project = Project::new(m.name, m.repo, m.branch, m.file, m.webhook_secret, m.token);
            if let Err(err) = project.check() {
                return reply.fail(ErrorCode::INVALID_REQUEST, err.to_string());
            }
            let created = core
                .call(|tx| call(Command::Project(ProjectCommand::Create(Box::new(project), tx))))
                .await;
            match created {
                Some(Ok(project)) => reply.reply(ProjectList {
                    projects: vec![project.info()],
                }),
                Some(Err(refused)) => reply.refuse(refused),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        Message::ListProjects(m) => {
            let projects = if m.name.is_empty() {
                core.call(|tx| Command::Project(ProjectCommand::List(tx))).await
            } else {
                let name = m.name.clone();
                match core
                    .call(|tx| Command::Project(ProjectCommand::Get(name, tx)))
                    .await
                {
                    Some(None) => {
                        return reply.fail(ErrorCode::NOT_FOUND, format!("no project `{}`", m.name))
                    }
                    found => found.map(|p| p.into_iter().collect()),
                }
            };
            match projects {
                Some(projects) => reply.reply(ProjectList {
                    projects: projects.iter().map(Project::info).collect(),
                }),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        Message::RemoveProject(m) => {
            let name = m.name.clone();
            match core
                .call(|tx| call(Command::Project(ProjectCommand::Remove(name, tx))))
                .await
            {
                Some(true) => reply.ack(),
                Some(false) => reply.fail(ErrorCode::NOT_FOUND, format!("no project `{}`", m.name)),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        Message::AddSchedule(m) => {
            if let Err(why) = parse_cron(&m.cron).and_then(|_| check_variables(&m.variables)) {
                return reply.fail(ErrorCode::INVALID_REQUEST, why);
            }
            if m.branch.starts_with('-') || m.branch.contains("..") || m.branch.chars().any(char::is_control)
            {
                return reply.fail(
                    ErrorCode::INVALID_REQUEST,
                    format!("branch `{}` is not valid", m.branch),
                );
            }
            let schedule = Schedule {
                id: 0,
                cron: m.cron.trim().to_owned(),
                branch: m.branch,
                variables: m.variables,
                created_at_ms: 0,
                last_slot_ms: 0,
            };
            let project = m.project;
            let added = core
                .call(|tx| {
                    call(Command::Project(ProjectCommand::AddSchedule(
                        project.clone(),
                        Box::new(schedule),
                        tx,
                    )))
                })
                .await;
            match added {
                Some(Ok(schedule)) => reply.reply(ScheduleList {
                    schedules: vec![schedule.info(&project)],
                }),
                Some(Err(err @ ScheduleRefused::NoProject(_))) => {
                    reply.fail(ErrorCode::NOT_FOUND, err.to_string())
                }
                Some(Err(err)) => reply.fail(ErrorCode::CONFLICT, err.to_string()),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        Message::ListSchedules(m) => {
            match core
                .call(|tx| Command::Project(ProjectCommand::Schedules(m.project, tx)))
                .await
            {
                Some(schedules) => reply.reply(ScheduleList {
                    schedules: schedules.iter().map(|(p, s)| s.info(p)).collect(),
                }),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        Message::RemoveSchedule(m) => {
            match core
                .call(|tx| call(Command::Project(ProjectCommand::RemoveSchedule(m.id, tx))))
                .await
            {
                Some(true) => reply.ack(),
                Some(false) => reply.fail(ErrorCode::NOT_FOUND, format!("no schedule {}", m.id)),
                None => reply.fail(ErrorCode::SHUTTING_DOWN, STOPPED),
            }
        }
        other => reply.fail(
            ErrorCode::UNEXPECTED_MESSAGE,
            format!("{} is not a project request", other.kind()),
        ),
    }
}
