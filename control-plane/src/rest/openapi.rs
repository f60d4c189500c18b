//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the response types' `ToSchema` derives, served at
//! `/api/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    artifacts, audit, error, executions, health, metrics, pipelines, projects, runners, runs, webhooks,
};

/// The REST API's description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Valkyrie REST API", description = "Pipelines, executions and runners of a Valkyrie control plane."),
    paths(
        health::healthchecker, health::healthz, health::readyz, metrics::metrics, openapi_json,
        pipelines::create, pipelines::upload, pipelines::list, pipelines::get_one, pipelines::trigger,
        executions::list, executions::get_one, executions::cancel, executions::logs,
        runs::play, runs::rerun,
        runners::list, runners::drain, runners::remove, audit::list,
        projects::create, projects::list, projects::get_one, projects::remove, projects::trigger,
        webhooks::github, webhooks::gitlab,
        artifacts::list, artifacts::download,
    ),
    components(schemas(
        error::ErrorBody, health::Health, pipelines::Pipeline, pipelines::PipelineSummary, pipelines::CreatePipeline, pipelines::UploadForm, pipelines::Triggered, pipelines::TriggerPipeline,
        runs::Played, runs::RerunRequest, runs::Rerun,
        executions::Execution, executions::ExecutionJob, executions::ExecutionStep, executions::Cancelled, runners::Runner, runners::Draining, runners::Removed,
        audit::AuditPage, audit::AuditRecordJson,
        projects::ProjectJson, projects::CreateProject, projects::TriggerProject, projects::ProjectRun, projects::RemovedProject,
        projects::StatusJson, projects::CreateStatus, crate::source::status::StatusForge,
        webhooks::WebhookAnswer,
        artifacts::Artifact,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API token")
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
