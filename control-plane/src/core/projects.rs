//! Projects and the runs their repositories start: the core's side. The
//! REST adapter verifies webhooks and reads pipeline files off the core;
//! the core stores projects, remembers deliveries, and starts runs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tokio::sync::oneshot;
use tracing::info;
use valkyrie::message::JobSpec;

use super::{Core, CoreError, ValidatedPipeline};
use crate::audit::AuditAction;
use crate::source::schedule::{DueSlot, MAX_SCHEDULES_PER_PROJECT};
use crate::source::{Project, Schedule, Trigger};
use crate::store::{Change, DeliveryRow};

/// Webhook deliveries remembered; the oldest are forgotten past this. A
/// forge redelivers within hours, and this many deliveries span far more
/// at any rate a server takes.
pub const MAX_DELIVERIES: usize = 10_000;

/// A request about projects.
#[derive(Debug)]
pub enum ProjectCommand {
    /// Store a new project; refused if the name is taken.
    Create(Box<Project>, oneshot::Sender<Result<Project, CoreError>>),
    /// Every project, by name.
    List(oneshot::Sender<Vec<Project>>),
    /// One project.
    Get(String, oneshot::Sender<Option<Project>>),
    /// Remove a project; answers whether it existed.
    Remove(String, oneshot::Sender<bool>),
    /// The run a delivery (`forge:project:id`) started, if it was seen.
    Delivered(String, oneshot::Sender<Option<u64>>),
    /// Add a schedule to a project (its cron expression and variables
    /// were checked off the core; the id and creation time are set here).
    AddSchedule(
        String,
        Box<Schedule>,
        oneshot::Sender<Result<Schedule, ScheduleRefused>>,
    ),
    /// Remove a schedule; answers whether it existed.
    RemoveSchedule(u64, oneshot::Sender<bool>),
    /// The schedules of a project (every project's for an empty name), by
    /// id, with their project's name.
    Schedules(String, oneshot::Sender<Vec<(String, Schedule)>>),
    /// Claim every slot due now (see [`crate::source::schedule`]): each is
    /// stored as its schedule's last slot before it is answered.
    ClaimDue(oneshot::Sender<Vec<DueSlot>>),
    /// Start a run of a project's pipeline file at a commit.
    Start {
        /// What started it (its `delivery`, if not empty, is remembered:
        /// a second start with it starts nothing).
        trigger: Box<Trigger>,
        /// The file, read at the commit and validated off the core.
        pipeline: Box<ValidatedPipeline>,
        /// The run.
        reply: oneshot::Sender<Result<Started, NotStarted>>,
    },
}

/// Why a trigger started no run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// The project is gone.
    NoProject(String),
    /// The pipeline's rules (`workflow: if`, or every job's `if:`) create
    /// no run for this trigger; says why.
    Rules(String),
}

/// Why a schedule was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleRefused {
    /// No such project.
    #[error("no project `{0}`")]
    NoProject(String),
    /// The project has [`MAX_SCHEDULES_PER_PROJECT`] already.
    #[error("project `{0}` has {MAX_SCHEDULES_PER_PROJECT} schedules, the most it may have")]
    TooMany(String),
}

/// A run a trigger started, or the one an earlier delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The run.
    pub run_id: u64,
    /// It was started by an earlier delivery with the same id.
    pub duplicate: bool,
}

/// The core's project state.
#[derive(Debug, Default)]
pub(super) struct ProjectState {
    projects: BTreeMap<String, Project>,
    deliveries: HashMap<String, u64>,
    delivery_order: VecDeque<(u64, String)>,
    next_delivery: u64,
    next_schedule: u64,
}

impl ProjectState {
    /// State as stored.
    pub(super) fn recover(&mut self, projects: Vec<Project>, deliveries: Vec<DeliveryRow>) {
        for project in projects {
            for schedule in &project.schedules {
                self.next_schedule = self.next_schedule.max(schedule.id);
            }
            self.projects.insert(project.name.clone(), project);
        }
        for row in deliveries {
            self.next_delivery = self.next_delivery.max(row.seq + 1);
            self.deliveries.insert(row.key.clone(), row.run_id);
            self.delivery_order.push_back((row.seq, row.key));
        }
    }

    /// Project `name`, if it exists.
    pub(super) fn project(&self, name: &str) -> Option<&Project> {
        self.projects.get(name)
    }
}

/// Gives a checking-out job its project's token.
fn give_token(spec: &mut JobSpec, token: &str) {
    if let Some(checkout) = spec.trigger.as_mut().and_then(|t| t.checkout.as_mut()) {
        checkout.token = token.to_owned();
    }
}

impl Core {
    pub(super) fn handle_project(&mut self, command: ProjectCommand) {
        match command {
            ProjectCommand::Create(project, reply) => {
                let _ = reply.send(self.create_project(*project));
            }
            ProjectCommand::List(reply) => {
                let _ = reply.send(self.projects.projects.values().cloned().collect());
            }
            ProjectCommand::Get(name, reply) => {
                let _ = reply.send(self.projects.projects.get(&name).cloned());
            }
            ProjectCommand::Remove(name, reply) => {
                let existed = self.projects.projects.remove(&name).is_some();
                if existed {
                    self.record(Change::DeleteProject(name.clone()));
                    self.audit(
                        AuditAction::RemoveProject,
                        format!("project {name}"),
                        String::new(),
                    );
                }
                let _ = reply.send(existed);
            }
            ProjectCommand::Delivered(key, reply) => {
                let _ = reply.send(self.projects.deliveries.get(&key).copied());
            }
            ProjectCommand::AddSchedule(project, schedule, reply) => {
                let _ = reply.send(self.add_schedule(&project, *schedule));
            }
            ProjectCommand::RemoveSchedule(id, reply) => {
                let _ = reply.send(self.remove_schedule(id));
            }
            ProjectCommand::Schedules(name, reply) => {
                let schedules = self
                    .projects
                    .projects
                    .values()
                    .filter(|p| name.is_empty() || p.name == name)
                    .flat_map(|p| p.schedules.iter().map(|s| (p.name.clone(), s.clone())));
                let mut schedules: Vec<_> = schedules.collect();
                schedules.sort_by_key(|(_, s)| s.id);
                let _ = reply.send(schedules);
            }
            ProjectCommand::ClaimDue(reply) => {
                let _ = reply.send(self.claim_due());
            }
            ProjectCommand::Start {
                trigger,
                pipeline,
                reply,
            } => {
                let _ = reply.send(self.start_triggered(*trigger, *pipeline));
            }
        }
    }

    fn create_project(&mut self, mut project: Project) -> Result<Project, CoreError> {
        if self.projects.projects.contains_key(&project.name) {
            return Err(CoreError::Conflict(format!(
                "project `{}` already exists",
                project.name
            )));
        }
        project.created_at_ms = self.now.wall_ms;
        self.record(Change::Project(Box::new(project.clone())));
        self.audit(
            AuditAction::CreateProject,
            format!("project {}", project.name),
            format!("{} ({} on {})", project.repo, project.file, project.branch),
        );
        self.projects
            .projects
            .insert(project.name.clone(), project.clone());
        Ok(project)
    }

    fn add_schedule(&mut self, name: &str, mut schedule: Schedule) -> Result<Schedule, ScheduleRefused> {
        let project = self
            .projects
            .projects
            .get_mut(name)
            .ok_or_else(|| ScheduleRefused::NoProject(name.to_owned()))?;
        if project.schedules.len() >= MAX_SCHEDULES_PER_PROJECT {
            return Err(ScheduleRefused::TooMany(name.to_owned()));
        }
        self.projects.next_schedule += 1;
        schedule.id = self.projects.next_schedule;
        schedule.created_at_ms = self.now.wall_ms;
        schedule.last_slot_ms = 0;
        if schedule.branch.is_empty() {
            schedule.branch = project.branch.clone();
        }
        project.schedules.push(schedule.clone());
        let stored = Change::Project(Box::new(project.clone()));
        self.record(stored);
        self.audit(
            AuditAction::AddSchedule,
            format!("schedule {}", schedule.id),
            format!("project {name}: `{}` on {}", schedule.cron, schedule.branch),
        );
        Ok(schedule)
    }

    fn remove_schedule(&mut self, id: u64) -> bool {
        let Some(project) = self
            .projects
            .projects
            .values_mut()
            .find(|p| p.schedules.iter().any(|s| s.id == id))
        else {
            return false;
        };
        project.schedules.retain(|s| s.id != id);
        let detail = format!("project {}", project.name);
        let stored = Change::Project(Box::new(project.clone()));
        self.record(stored);
        self.audit(AuditAction::RemoveSchedule, format!("schedule {id}"), detail);
        true
    }

    /// Every slot due now, each stored as claimed (its schedule's last
    /// slot) in this turn, so it is never claimed twice.
    fn claim_due(&mut self) -> Vec<DueSlot> {
        let now = self.now.wall_ms;
        let mut due = Vec::new();
        let mut changed = Vec::new();
        for project in self.projects.projects.values_mut() {
            let mut claimed = Vec::new();
            for schedule in &mut project.schedules {
                if let Some(slot_ms) = schedule.due(now) {
                    schedule.last_slot_ms = slot_ms;
                    claimed.push((schedule.clone(), slot_ms));
                }
            }
            if !claimed.is_empty() {
                changed.push(Change::Project(Box::new(project.clone())));
                due.extend(claimed.into_iter().map(|(schedule, slot_ms)| DueSlot {
                    project: project.clone(),
                    schedule,
                    slot_ms,
                }));
            }
        }
        for change in changed {
            self.record(change);
        }
        due
    }

    /// Starts the run, remembering its delivery in the same turn (so two
    /// deliveries of one id racing each other start one run).
    fn start_triggered(
        &mut self,
        trigger: Trigger,
        pipeline: ValidatedPipeline,
    ) -> Result<Started, NotStarted> {
        if !self.projects.projects.contains_key(&trigger.project) {
            return Err(NotStarted::NoProject(format!("no project `{}`", trigger.project)));
        }
        if !trigger.delivery.is_empty() {
            if let Some(&run_id) = self.projects.deliveries.get(&trigger.delivery) {
                return Ok(Started {
                    run_id,
                    duplicate: true,
                });
            }
        }
        let detail = format!(
            "{} {} at {} ({})",
            trigger.event, trigger.git_ref, trigger.sha, trigger.project
        );
        let delivery = trigger.delivery.clone();
        let run_id = self
            .start_run(pipeline, trigger)
            .map_err(|why| NotStarted::Rules(why.to_string()))?;
        if !delivery.is_empty() {
            self.remember_delivery(delivery, run_id);
        }
        self.audit(AuditAction::TriggerProject, format!("run {run_id}"), detail);
        info!(run_id, "run started from a repository");
        self.advance_run(run_id);
        Ok(Started {
            run_id,
            duplicate: false,
        })
    }

    fn remember_delivery(&mut self, key: String, run_id: u64) {
        let state = &mut self.projects;
        let seq = state.next_delivery;
        state.next_delivery += 1;
        state.deliveries.insert(key.clone(), run_id);
        state.delivery_order.push_back((seq, key.clone()));
        let mut changes = vec![Change::Delivery(Box::new(DeliveryRow { seq, key, run_id }))];
        while state.delivery_order.len() > MAX_DELIVERIES {
            if let Some((old_seq, old_key)) = state.delivery_order.pop_front() {
                state.deliveries.remove(&old_key);
                changes.push(Change::DeleteDelivery(old_seq));
            }
        }
        for change in changes {
            self.record(change);
        }
    }

    /// The project token a job of run `run_id` checks out with, if any.
    pub(super) fn checkout_token(&self, run_id: u64) -> Option<String> {
        let project = self.runs.get(&run_id)?.trigger()?.project.clone();
        self.projects
            .projects
            .get(&project)
            .map(|p| p.token.clone())
            .filter(|t| !t.is_empty())
    }

    /// Gives `spec` the token of its run's project.
    pub(super) fn add_checkout_token(&self, run_id: u64, spec: &mut JobSpec) {
        if let Some(token) = self.checkout_token(run_id) {
            give_token(spec, &token);
        }
    }
}
