//! Property tests of the payload codec: every message survives
//! encode → decode unchanged, and no input, however mangled, makes the
//! decoder panic (the stable-Rust stand-in for `fuzz/`).

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use valkyrie::frame::{decode_exact, encode_frame, encode_to_vec, FrameDecoder, HEADER_LEN};
use valkyrie::message::*;
use valkyrie::{ErrorCode, Flags, FrameKind, Message};

// ---- strategies ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 _./:-]{0,16}",
        1 => any::<String>(),
    ]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..4)
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..4)
}

fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..128).prop_map(Bytes::from)
}

fn one_of<T: Clone + std::fmt::Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(all)
}

/// Optional flag bits only: a required bit would make the frame undecodable.
fn flags() -> impl Strategy<Value = Flags> {
    (0u8..16).prop_map(|bits| serde_json::from_value(bits.into()).unwrap())
}

fn code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode)
}

fn step() -> impl Strategy<Value = StepSpec> {
    (
        text(),
        prop_oneof![text().prop_map(StepCommand::Shell), Just(StepCommand::Noop)],
        pairs(),
        proptest::option::of(text()),
        any::<bool>(),
        proptest::sample::select(StepCondition::ALL),
    )
        .prop_map(
            |(name, command, env, working_directory, continue_on_error, condition)| StepSpec {
                name,
                command,
                env,
                working_directory,
                continue_on_error,
                condition,
            },
        )
}

fn container() -> impl Strategy<Value = ContainerSpec> {
    let service = (text(), text(), pairs(), texts()).prop_map(|(image, alias, env, command)| ServiceSpec {
        image,
        alias,
        env,
        command,
    });
    (
        text(),
        proptest::option::of(texts()),
        prop_oneof![
            Just(PullPolicy::IfNotPresent),
            Just(PullPolicy::Always),
            Just(PullPolicy::Never)
        ],
        vec(service, 0..3),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(image, entrypoint, pull_policy, services, cpus_milli, memory_bytes)| ContainerSpec {
                image,
                entrypoint,
                pull_policy,
                services,
                cpus_milli,
                memory_bytes,
            },
        )
}

fn step_info() -> impl Strategy<Value = StepInfo> {
    (
        text(),
        proptest::option::of(proptest::sample::select(StepOutcome::ALL)),
        any::<Option<i32>>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(name, outcome, exit_code, duration_ms)| StepInfo {
            name,
            outcome,
            exit_code,
            duration_ms,
        })
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        (text(), text(), any::<u8>(), texts()),
        // Short-named no-op steps are the smallest possible list items:
        // they check the decoder's count bound is not too tight.
        prop_oneof![
            vec(step(), 0..5),
            (0usize..12).prop_map(|n| vec![
                StepSpec {
                    name: String::new(),
                    ..StepSpec::noop()
                };
                n
            ])
        ],
        (pairs(), pairs(), any::<u64>(), any::<u32>(), any::<u8>(), texts()),
        proptest::option::of(container().prop_map(Box::new)),
        proptest::option::of(trigger().prop_map(Box::new)),
        proptest::option::of(artifacts().prop_map(Box::new)),
        vec(cache(), 0..3),
    )
        .prop_map(
            |(
                (name, project, priority, tags),
                steps,
                (env, secrets, timeout_ms, max_retries, on, shell),
                container,
                trigger,
                artifacts,
                cache,
            )| {
                JobSpec {
                    name,
                    project,
                    priority,
                    tags,
                    steps,
                    env,
                    secrets,
                    timeout_ms,
                    retry: RetryPolicy {
                        max_retries,
                        on: RetryOn(on),
                    },
                    shell,
                    container,
                    trigger,
                    artifacts,
                    cache,
                }
            },
        )
}

fn cache() -> impl Strategy<Value = CacheSpec> {
    (
        text(),
        texts(),
        prop_oneof![
            Just(CachePolicy::PullPush),
            Just(CachePolicy::Pull),
            Just(CachePolicy::Push)
        ],
        texts(),
        prop_oneof![
            Just(ArtifactWhen::OnSuccess),
            Just(ArtifactWhen::OnFailure),
            Just(ArtifactWhen::Always)
        ],
    )
        .prop_map(|(key, paths, policy, fallback_keys, when)| CacheSpec {
            key,
            paths,
            policy,
            fallback_keys,
            when,
        })
}

fn trigger() -> impl Strategy<Value = TriggerSpec> {
    (
        pairs(),
        proptest::option::of((text(), text(), text(), any::<u32>(), text()).prop_map(
            |(repository, sha, git_ref, depth, token)| CheckoutSpec {
                repository,
                sha,
                git_ref,
                depth,
                token,
            },
        )),
    )
        .prop_map(|(variables, checkout)| TriggerSpec { variables, checkout })
}

fn artifacts() -> impl Strategy<Value = ArtifactsSpec> {
    (
        texts(),
        texts(),
        prop_oneof![
            Just(ArtifactWhen::OnSuccess),
            Just(ArtifactWhen::OnFailure),
            Just(ArtifactWhen::Always)
        ],
        any::<u64>(),
        vec(any::<u64>(), 0..4),
    )
        .prop_map(
            |(paths, exclude, when, expire_in_ms, download_from)| ArtifactsSpec {
                paths,
                exclude,
                when,
                expire_in_ms,
                download_from,
            },
        )
}

fn job_info() -> impl Strategy<Value = JobInfo> {
    (
        (
            any::<u64>(),
            text(),
            text(),
            any::<u8>(),
            texts(),
            one_of(JobState::ALL),
        ),
        (
            any::<u32>(),
            proptest::option::of(text()),
            text(),
            proptest::option::of(any::<i32>()),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (job_id, name, project, priority, tags, state),
                (attempt, runner, reason, exit_code, submitted_at_ms, started_at_ms, finished_at_ms),
            )| JobInfo {
                job_id,
                name,
                project,
                priority,
                tags,
                state,
                attempt,
                runner,
                reason,
                exit_code,
                submitted_at_ms,
                started_at_ms,
                finished_at_ms,
            },
        )
}

fn server_info() -> impl Strategy<Value = ServerInfo> {
    (
        (
            text(),
            prop_oneof![
                Just(ServerRole::Leader),
                Just(ServerRole::Standby),
                Just(ServerRole::Silent)
            ],
        ),
        (any::<u64>(), any::<u64>(), any::<u64>(), texts(), text()),
    )
        .prop_map(
            |((server_id, role), (epoch, lease_expires_ms, seen_at_ms, uris, http_url))| ServerInfo {
                server_id,
                role,
                epoch,
                lease_expires_ms,
                seen_at_ms,
                uris,
                http_url,
            },
        )
}

fn project_info() -> impl Strategy<Value = ProjectInfo> {
    (
        text(),
        text(),
        text(),
        text(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(name, repo, branch, file, has_webhook_secret, has_token, created_at_ms)| ProjectInfo {
                name,
                repo,
                branch,
                file,
                has_webhook_secret,
                has_token,
                created_at_ms,
            },
        )
}

fn schedule_info() -> impl Strategy<Value = ScheduleInfo> {
    (
        any::<u64>(),
        text(),
        text(),
        text(),
        pairs(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, project, cron, branch, variables, last_slot_ms, next_ms)| ScheduleInfo {
                id,
                project,
                cron,
                branch,
                variables,
                last_slot_ms,
                next_ms,
            },
        )
}

fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    (
        (any::<u64>(), any::<u64>(), text()),
        (text(), text(), text(), text()),
    )
        .prop_map(
            |((id, at_ms, actor_kind), (actor, action, target, detail))| AuditEntry {
                id,
                at_ms,
                actor_kind,
                actor,
                action,
                target,
                detail,
            },
        )
}

fn runner_info() -> impl Strategy<Value = RunnerInfo> {
    (
        (any::<u64>(), text(), texts(), text(), text()),
        (
            any::<u32>(),
            any::<u32>(),
            one_of(RunnerState::ALL),
            any::<u64>(),
            text(),
        ),
    )
        .prop_map(
            |((runner_id, name, tags, os, arch), (slots, busy, state, last_seen_ms_ago, version))| {
                RunnerInfo {
                    runner_id,
                    name,
                    tags,
                    os,
                    arch,
                    slots,
                    busy,
                    state,
                    last_seen_ms_ago,
                    version,
                }
            },
        )
}

fn run_job_info() -> impl Strategy<Value = RunJobInfo> {
    (
        (
            text(),
            text(),
            one_of(RunJobState::ALL),
            proptest::option::of(any::<u64>()),
        ),
        (
            proptest::option::of(text()),
            proptest::option::of(any::<i32>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            any::<bool>(),
            text(),
        ),
    )
        .prop_map(
            |(
                (name, stage, state, job_id),
                (runner, exit_code, started_at_ms, finished_at_ms, allow_failure, reason),
            )| RunJobInfo {
                name,
                stage,
                state,
                job_id,
                runner,
                exit_code,
                started_at_ms,
                finished_at_ms,
                allow_failure,
                reason,
            },
        )
}

fn run_info() -> impl Strategy<Value = RunInfo> {
    (
        any::<u64>(),
        text(),
        one_of(RunState::ALL),
        text(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        // Jobs with empty names and no options are the smallest list items:
        // they check the decoder's count bound is not too tight.
        prop_oneof![
            vec(run_job_info(), 0..4),
            (0usize..12).prop_map(|n| vec![
                RunJobInfo {
                    name: String::new(),
                    stage: String::new(),
                    state: RunJobState::Waiting,
                    job_id: None,
                    runner: None,
                    exit_code: None,
                    started_at_ms: None,
                    finished_at_ms: None,
                    allow_failure: false,
                    reason: String::new(),
                };
                n
            ]),
        ],
    )
        .prop_map(
            |(run_id, name, state, message, created_at_ms, finished_at_ms, jobs)| RunInfo {
                run_id,
                name,
                state,
                message,
                created_at_ms,
                finished_at_ms,
                jobs,
            },
        )
}

fn event_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (
            one_of(JobState::ALL),
            any::<u32>(),
            proptest::option::of(text()),
            proptest::option::of(any::<i32>()),
            text()
        )
            .prop_map(|(state, attempt, runner, exit_code, message)| EventBody::State {
                state,
                attempt,
                runner,
                exit_code,
                message
            }),
        (one_of(OutputStream::ALL), any::<u64>(), data()).prop_map(|(stream, seq, data)| EventBody::Log {
            stream,
            seq,
            data
        }),
        any::<u64>().prop_map(|missed| EventBody::Skipped { missed }),
        Just(EventBody::ReplayDone),
    ]
}

fn running() -> impl Strategy<Value = Vec<RunningAttempt>> {
    vec(
        (any::<u64>(), any::<u32>()).prop_map(|(job_id, attempt)| RunningAttempt { job_id, attempt }),
        0..4,
    )
}

/// Every message of the catalogue, one arm per kind.
fn message() -> impl Strategy<Value = Message> {
    let arms: Vec<BoxedStrategy<Message>> = vec![
        (
            any::<u8>(),
            any::<u8>(),
            one_of(Role::ALL),
            text(),
            any::<u32>(),
            any::<u32>(),
            text(),
        )
            .prop_map(
                |(min_version, max_version, role, token, max_frame_bytes, heartbeat_interval_ms, agent)| {
                    Hello {
                        min_version,
                        max_version,
                        role,
                        token,
                        max_frame_bytes,
                        heartbeat_interval_ms,
                        agent,
                    }
                    .into()
                },
            )
            .boxed(),
        (any::<u8>(), any::<u32>(), any::<u32>(), text())
            .prop_map(|(version, max_frame_bytes, heartbeat_interval_ms, server_id)| {
                Welcome {
                    version,
                    max_frame_bytes,
                    heartbeat_interval_ms,
                    server_id,
                }
                .into()
            })
            .boxed(),
        any::<u64>().prop_map(|nonce| Ping { nonce }.into()).boxed(),
        any::<u64>().prop_map(|nonce| Pong { nonce }.into()).boxed(),
        (code(), text())
            .prop_map(|(code, reason)| Close { code, reason }.into())
            .boxed(),
        Just(Ack {}.into()).boxed(),
        (code(), text())
            .prop_map(|(code, message)| RequestFailed { code, message }.into())
            .boxed(),
        (text(), texts(), text(), text(), any::<u32>(), text(), running())
            .prop_map(|(name, tags, os, arch, slots, version, running)| {
                RegisterRunner {
                    name,
                    tags,
                    os,
                    arch,
                    slots,
                    version,
                    running,
                }
                .into()
            })
            .boxed(),
        (any::<u64>(), text(), running())
            .prop_map(|(runner_id, credential, stale)| {
                RunnerRegistered {
                    runner_id,
                    credential,
                    stale,
                }
                .into()
            })
            .boxed(),
        any::<u32>()
            .prop_map(|running| Heartbeat { running }.into())
            .boxed(),
        text().prop_map(|reason| Drain { reason }.into()).boxed(),
        job_spec().prop_map(|spec| SubmitJob { spec }.into()).boxed(),
        any::<u64>()
            .prop_map(|job_id| JobAccepted { job_id }.into())
            .boxed(),
        any::<u64>()
            .prop_map(|job_id| CancelJob { job_id }.into())
            .boxed(),
        (proptest::option::of(any::<u64>()), any::<bool>(), any::<bool>())
            .prop_map(|(job_id, logs, replay)| Subscribe { job_id, logs, replay }.into())
            .boxed(),
        (any::<u64>(), event_body())
            .prop_map(|(job_id, body)| Event { job_id, body }.into())
            .boxed(),
        any::<u32>().prop_map(|limit| ListJobs { limit }.into()).boxed(),
        vec(job_info(), 0..3)
            .prop_map(|jobs| JobList { jobs }.into())
            .boxed(),
        Just(ListRunners {}.into()).boxed(),
        (text(), any::<bool>())
            .prop_map(|(name, force)| RemoveRunner { name, force }.into())
            .boxed(),
        vec(runner_info(), 0..3)
            .prop_map(|runners| RunnerList { runners }.into())
            .boxed(),
        any::<u64>().prop_map(|job_id| GetJob { job_id }.into()).boxed(),
        (job_info(), vec(step_info(), 0..4))
            .prop_map(|(job, steps)| JobDetails { job, steps }.into())
            .boxed(),
        (any::<u64>(), any::<u32>(), any::<u32>(), job_spec())
            .prop_map(|(job_id, attempt, lease_ms, spec)| {
                Assign {
                    job_id,
                    attempt,
                    lease_ms,
                    spec,
                }
                .into()
            })
            .boxed(),
        (any::<u64>(), any::<u32>(), any::<bool>(), text())
            .prop_map(|(job_id, attempt, accepted, reason)| {
                AssignAck {
                    job_id,
                    attempt,
                    accepted,
                    reason,
                }
                .into()
            })
            .boxed(),
        (any::<u64>(), any::<u32>())
            .prop_map(|(job_id, attempt)| JobStarted { job_id, attempt }.into())
            .boxed(),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            one_of(OutputStream::ALL),
            data(),
        )
            .prop_map(|(job_id, attempt, seq, stream, data)| {
                LogChunk {
                    job_id,
                    attempt,
                    seq,
                    stream,
                    data,
                }
                .into()
            })
            .boxed(),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            one_of(StepOutcome::ALL),
            proptest::option::of(any::<i32>()),
            any::<u64>(),
        )
            .prop_map(|(job_id, attempt, step, outcome, exit_code, duration_ms)| {
                StepResult {
                    job_id,
                    attempt,
                    step,
                    outcome,
                    exit_code,
                    duration_ms,
                }
                .into()
            })
            .boxed(),
        (
            any::<u64>(),
            any::<u32>(),
            one_of(JobOutcome::ALL),
            proptest::option::of(any::<i32>()),
            any::<u64>(),
            text(),
            any::<u64>(),
            vec(
                (
                    any::<u32>(),
                    one_of(StepOutcome::ALL),
                    proptest::option::of(any::<i32>()),
                    any::<u64>(),
                )
                    .prop_map(|(step, outcome, exit_code, duration_ms)| StepSummary {
                        step,
                        outcome,
                        exit_code,
                        duration_ms,
                    }),
                0..4,
            ),
        )
            .prop_map(
                |(job_id, attempt, outcome, exit_code, duration_ms, message, log_chunks, steps)| {
                    JobResult {
                        job_id,
                        attempt,
                        outcome,
                        exit_code,
                        duration_ms,
                        message,
                        log_chunks,
                        steps,
                    }
                    .into()
                },
            )
            .boxed(),
        (any::<u64>(), any::<u32>(), text())
            .prop_map(|(job_id, attempt, reason)| {
                CancelAssignment {
                    job_id,
                    attempt,
                    reason,
                }
                .into()
            })
            .boxed(),
        (text(), prop_oneof![text(), "[a-z: \\[\\]\n-]{0,200}"], pairs())
            .prop_map(|(file_name, yaml, variables)| {
                SubmitPipeline {
                    file_name,
                    yaml,
                    variables,
                }
                .into()
            })
            .boxed(),
        any::<u64>()
            .prop_map(|run_id| RunAccepted { run_id }.into())
            .boxed(),
        any::<u64>().prop_map(|run_id| GetRun { run_id }.into()).boxed(),
        run_info().prop_map(|run| RunDetails { run }.into()).boxed(),
        any::<u32>().prop_map(|limit| ListRuns { limit }.into()).boxed(),
        vec(run_info(), 0..3)
            .prop_map(|runs| RunList { runs }.into())
            .boxed(),
        any::<u64>()
            .prop_map(|run_id| CancelRun { run_id }.into())
            .boxed(),
        (any::<u64>(), text())
            .prop_map(|(run_id, job)| PlayJob { run_id, job }.into())
            .boxed(),
        (any::<u64>(), any::<bool>())
            .prop_map(|(run_id, failed_only)| RerunRun { run_id, failed_only }.into())
            .boxed(),
        (any::<u32>(), any::<u64>())
            .prop_map(|(limit, before)| ListAudit { limit, before }.into())
            .boxed(),
        vec(audit_entry(), 0..3)
            .prop_map(|entries| AuditList { entries }.into())
            .boxed(),
        (any::<u64>(), any::<u32>(), text(), any::<u64>(), data())
            .prop_map(|(job_id, attempt, name, offset, data)| {
                ArtifactChunk {
                    job_id,
                    attempt,
                    name,
                    offset,
                    data,
                }
                .into()
            })
            .boxed(),
        (
            any::<u64>(),
            any::<u32>(),
            text(),
            any::<u64>(),
            text(),
            any::<u64>(),
        )
            .prop_map(|(job_id, attempt, name, size, sha256, expire_in_ms)| {
                ArtifactCommit {
                    job_id,
                    attempt,
                    name,
                    size,
                    sha256,
                    expire_in_ms,
                }
                .into()
            })
            .boxed(),
        (any::<u64>(), text(), any::<u64>(), any::<u32>())
            .prop_map(|(job_id, name, offset, max_bytes)| {
                ArtifactFetch {
                    job_id,
                    name,
                    offset,
                    max_bytes,
                }
                .into()
            })
            .boxed(),
        (any::<u64>(), text(), any::<u64>(), data())
            .prop_map(|(size, sha256, offset, data)| {
                ArtifactData {
                    size,
                    sha256,
                    offset,
                    data,
                }
                .into()
            })
            .boxed(),
        any::<u64>()
            .prop_map(|job_id| ListArtifacts { job_id }.into())
            .boxed(),
        vec(
            (text(), any::<u64>(), text(), any::<u64>(), any::<u64>()).prop_map(
                |(name, size, sha256, created_at_ms, expires_at_ms)| ArtifactInfo {
                    name,
                    size,
                    sha256,
                    created_at_ms,
                    expires_at_ms,
                },
            ),
            0..3,
        )
        .prop_map(|artifacts| ArtifactList { artifacts }.into())
        .boxed(),
        (any::<u64>(), any::<u32>(), texts(), any::<bool>())
            .prop_map(|(job_id, attempt, keys, restore)| {
                CacheLookup {
                    job_id,
                    attempt,
                    keys,
                    restore,
                }
                .into()
            })
            .boxed(),
        (text(), any::<bool>(), any::<u64>(), text(), any::<u64>(), text())
            .prop_map(|(key, exact, job_id, name, size, sha256)| {
                CacheEntry {
                    key,
                    exact,
                    job_id,
                    name,
                    size,
                    sha256,
                }
                .into()
            })
            .boxed(),
        (text(), any::<u64>(), texts())
            .prop_map(|(leader, epoch, uris)| Redirect { leader, epoch, uris }.into())
            .boxed(),
        Just(ListServers {}.into()).boxed(),
        vec(server_info(), 0..3)
            .prop_map(|servers| ServerList { servers }.into())
            .boxed(),
        (text(), text(), text(), text(), text(), text())
            .prop_map(|(name, repo, branch, file, webhook_secret, token)| {
                PutProject {
                    name,
                    repo,
                    branch,
                    file,
                    webhook_secret,
                    token,
                }
                .into()
            })
            .boxed(),
        text().prop_map(|name| ListProjects { name }.into()).boxed(),
        vec(project_info(), 0..3)
            .prop_map(|projects| ProjectList { projects }.into())
            .boxed(),
        text().prop_map(|name| RemoveProject { name }.into()).boxed(),
        (text(), text(), text(), pairs())
            .prop_map(|(project, cron, branch, variables)| {
                AddSchedule {
                    project,
                    cron,
                    branch,
                    variables,
                }
                .into()
            })
            .boxed(),
        text()
            .prop_map(|project| ListSchedules { project }.into())
            .boxed(),
        vec(schedule_info(), 0..3)
            .prop_map(|schedules| ScheduleList { schedules }.into())
            .boxed(),
        any::<u64>().prop_map(|id| RemoveSchedule { id }.into()).boxed(),
    ];
    Union::new(arms)
}

// ---- round trips ----

/// The strategy has one arm per frame kind; a new kind must get an arm.
#[test]
fn strategy_covers_every_kind() {
    let known = (0..=u8::MAX).filter(|&k| FrameKind(k).name().is_some()).count();
    // Count the arms by sampling until every kind has been seen.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20_000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        seen.insert(m.kind());
        if seen.len() == known {
            return;
        }
    }
    panic!(
        "the message strategy produced only {} of {known} kinds: {seen:?}",
        seen.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips(m in message(), correlation in any::<u64>(), flags in flags()) {
        let bytes = encode_to_vec(&m, correlation, flags);
        let (frame, decoded) = decode_exact(&bytes, u32::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&decoded, &m);
        prop_assert_eq!(frame.kind, m.kind());
        prop_assert_eq!(frame.lane, m.lane());
        prop_assert_eq!(frame.correlation, correlation);
        prop_assert_eq!(frame.flags, flags);
        prop_assert_eq!(bytes.len(), HEADER_LEN + frame.payload.len());
    }

    #[test]
    fn encode_frame_respects_the_peer_limit(m in message(), limit in 0u32..512) {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let payload_len = encode_to_vec(&m, 1, Flags::NONE).len() - HEADER_LEN;
        let result = encode_frame(&m, 1, Flags::NONE, limit, &mut buf);
        if payload_len as u64 <= u64::from(limit) {
            prop_assert!(result.is_ok());
            prop_assert_eq!(buf.len(), 6 + HEADER_LEN + payload_len);
        } else {
            prop_assert!(result.is_err());
            // Nothing of the refused frame is left behind.
            prop_assert_eq!(&buf[..], &b"prefix"[..]);
        }
    }
}

// ---- never panics ----

/// Feeds `input` to a decoder and decodes every payload; errors are fine,
/// panics are not. Also runs `decode_exact` over the same input.
fn feed(input: &[u8], limit: u32) {
    let mut decoder = FrameDecoder::new(limit);
    decoder.extend(input);
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                let _ = Message::decode_payload(frame.kind, frame.payload.clone());
            }
            Ok(None) => {
                let _ = decoder.finish();
                break;
            }
            Err(_) => break,
        }
    }
    let _ = decode_exact(input, limit);
}

/// A well-formed header (version 1) with random kind, flags, lane and a
/// random payload of the declared length: reaches the payload decoders far
/// more often than uniformly random bytes.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        0u8..=0x20,
        0u8..4,
        any::<u64>(),
        vec(any::<u8>(), 0..200),
    )
        .prop_map(|(kind, flags, lane, correlation, payload)| {
            let mut out = vec![1, kind, flags, lane];
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&correlation.to_le_bytes());
            out.extend_from_slice(&payload);
            out
        })
}

/// A valid encoded message with some bytes overwritten, truncated or extended.
fn mutated_message() -> impl Strategy<Value = Vec<u8>> {
    (
        message(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        0usize..3,
    )
        .prop_map(|(m, edits, tail)| {
            let mut bytes = encode_to_vec(&m, 9, Flags::NONE);
            // Keep the header's version and length so the payload is reached.
            for (at, value) in edits {
                let i = at.index(bytes.len());
                if i != 0 && !(4..8).contains(&i) {
                    bytes[i] = value;
                }
            }
            match tail {
                0 => {}
                1 => {
                    bytes.pop();
                }
                _ => bytes.push(0),
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(input in vec(any::<u8>(), 0..512), limit in prop_oneof![Just(4096u32), Just(1 << 20), 0u32..64]) {
        feed(&input, limit);
    }

    #[test]
    fn framed_garbage_never_panics(input in framed_garbage()) {
        feed(&input, 1 << 20);
    }

    #[test]
    fn mutated_messages_never_panic(input in mutated_message()) {
        feed(&input, 1 << 20);
    }
}
