//! Open wire codes: unknown values decode, print as hex and are refused by name.

use std::fmt;

use crate::error::DecodeError;

/// The kind of a frame: which message its payload holds.
///
/// An open newtype: any byte decodes, so an unknown kind can be reported
/// (and, per the spec's versioning rules, answered with a Close) instead of
/// panicking.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct FrameKind(pub u8);

macro_rules! kinds {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl FrameKind {
            $($(#[$doc])* pub const $name: FrameKind = FrameKind($value);)*

            /// The spec's name for a known kind.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// Opens a connection: version range, role, credentials, limits.
    HELLO = 0x01;
    /// The server's acceptance of a Hello.
    WELCOME = 0x02;
    /// Liveness probe.
    PING = 0x03;
    /// Answer to a Ping.
    PONG = 0x04;
    /// Orderly or error close, with a code and reason.
    CLOSE = 0x05;
    /// Generic success reply to a request that returns nothing.
    ACK = 0x06;
    /// A request failed; the connection stays open.
    REQUEST_FAILED = 0x07;
    /// A standby's answer to a Hello: the group's leader is elsewhere.
    REDIRECT = 0x08;
    /// An agent registers its runner.
    REGISTER_RUNNER = 0x10;
    /// The server's answer to RegisterRunner.
    RUNNER_REGISTERED = 0x11;
    /// Agent liveness and load report.
    HEARTBEAT = 0x12;
    /// Stop taking new jobs.
    DRAIN = 0x13;
    /// A client submits a job.
    SUBMIT_JOB = 0x20;
    /// The server accepted a submitted job.
    JOB_ACCEPTED = 0x21;
    /// A client asks to cancel a job.
    CANCEL_JOB = 0x22;
    /// A client subscribes to events.
    SUBSCRIBE = 0x23;
    /// One event for a subscriber.
    EVENT = 0x24;
    /// A client lists jobs.
    LIST_JOBS = 0x25;
    /// The list of jobs.
    JOB_LIST = 0x26;
    /// A client lists runners.
    LIST_RUNNERS = 0x27;
    /// The list of runners.
    RUNNER_LIST = 0x28;
    /// A client asks for one job.
    GET_JOB = 0x29;
    /// One job's details.
    JOB_INFO = 0x2A;
    /// A client removes a runner's record.
    REMOVE_RUNNER = 0x2B;
    /// The server hands a job attempt to an agent.
    ASSIGN = 0x30;
    /// The agent accepts or refuses an assignment (ends the lease).
    ASSIGN_ACK = 0x31;
    /// The attempt's first step started.
    JOB_STARTED = 0x32;
    /// A chunk of job output.
    LOG_CHUNK = 0x33;
    /// One step finished.
    STEP_RESULT = 0x34;
    /// The attempt finished.
    JOB_RESULT = 0x35;
    /// The server tells an agent to stop an attempt.
    CANCEL_ASSIGNMENT = 0x36;
    /// A client submits a pipeline file; the server starts a run of it.
    SUBMIT_PIPELINE = 0x40;
    /// The server created a run.
    RUN_ACCEPTED = 0x41;
    /// A client asks for one run.
    GET_RUN = 0x42;
    /// One run's details.
    RUN_DETAILS = 0x43;
    /// A client lists runs.
    LIST_RUNS = 0x44;
    /// The list of runs.
    RUN_LIST = 0x45;
    /// A client cancels a run.
    CANCEL_RUN = 0x46;
    /// A client plays a manual job of a run.
    PLAY_JOB = 0x47;
    /// A client reruns a finished run (all of it, or its failed jobs).
    RERUN_RUN = 0x48;
    /// A client asks for a page of the audit log.
    LIST_AUDIT = 0x50;
    /// A page of the audit log.
    AUDIT_LIST = 0x51;
    /// An agent uploads a piece of an artifact.
    ARTIFACT_CHUNK = 0x60;
    /// An agent finishes an upload: size and SHA-256 to verify.
    ARTIFACT_COMMIT = 0x61;
    /// An agent or client asks for a range of a stored artifact.
    ARTIFACT_FETCH = 0x62;
    /// A range of a stored artifact.
    ARTIFACT_DATA = 0x63;
    /// A client or agent lists a job's artifacts.
    LIST_ARTIFACTS = 0x64;
    /// A job's artifacts.
    ARTIFACT_LIST = 0x65;
    /// An agent asks which cache entry to restore.
    CACHE_LOOKUP = 0x66;
    /// The cache entry found (or none).
    CACHE_ENTRY = 0x67;
    /// A client lists the control planes of the server's group.
    LIST_SERVERS = 0x70;
    /// The control planes of a group.
    SERVER_LIST = 0x71;
    /// A client creates a project.
    PUT_PROJECT = 0x80;
    /// A client lists projects (or asks for one).
    LIST_PROJECTS = 0x81;
    /// Projects.
    PROJECT_LIST = 0x82;
    /// A client removes a project.
    REMOVE_PROJECT = 0x83;
    /// A client adds a schedule to a project.
    ADD_SCHEDULE = 0x84;
    /// A client lists schedules.
    LIST_SCHEDULES = 0x85;
    /// Schedules.
    SCHEDULE_LIST = 0x86;
    /// A client removes a schedule.
    REMOVE_SCHEDULE = 0x87;
}

impl fmt::Debug for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "FrameKind({:#04x})", self.0),
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Priority lane. Control beats dispatch beats bulk when a sender chooses
/// what to write next; on QUIC each lane is its own stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Lane {
    /// Handshake, heartbeats, cancels, requests and replies.
    Control = 0,
    /// Job assignment and its acknowledgement.
    Dispatch = 1,
    /// Logs and events: large and many, never in front of the others.
    Bulk = 2,
}

impl Lane {
    /// All lanes, highest priority first.
    pub const ALL: [Lane; 3] = [Lane::Control, Lane::Dispatch, Lane::Bulk];

    pub(crate) fn from_wire(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            0 => Ok(Lane::Control),
            1 => Ok(Lane::Dispatch),
            2 => Ok(Lane::Bulk),
            other => Err(DecodeError::UnknownLane(other)),
        }
    }

    /// Index of the lane in per-lane arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Frame flag bits. The low nibble holds optional bits a receiver may
/// ignore; the high nibble holds required bits a receiver must understand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// The frame answers the request that carried the same correlation id
    /// (optional: it is implied by the kind and helps tracing).
    pub const REPLY: Flags = Flags(0x01);
    /// Bits a receiver must understand; none is defined in version 1.
    pub const REQUIRED_MASK: u8 = 0xF0;

    pub(crate) fn from_wire(bits: u8) -> Result<Self, DecodeError> {
        // spec: a receiver MUST reject a frame with an unknown required flag.
        let unknown_required = bits & Self::REQUIRED_MASK;
        if unknown_required != 0 {
            return Err(DecodeError::UnknownRequiredFlags(unknown_required));
        }
        Ok(Flags(bits))
    }

    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Error code carried by Close and RequestFailed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// The spec's name for a known code.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// Orderly close, no error.
    NORMAL = 0x0000;
    /// The peer sent bytes that do not decode (malformed frame or payload).
    PROTOCOL_ERROR = 0x0001;
    /// No common protocol version.
    UNSUPPORTED_VERSION = 0x0002;
    /// Missing or wrong credentials.
    UNAUTHENTICATED = 0x0003;
    /// A frame declared a payload over the receiver's limit.
    FRAME_TOO_LARGE = 0x0004;
    /// No Hello (or Welcome) within the handshake timeout.
    HANDSHAKE_TIMEOUT = 0x0005;
    /// Nothing received within the idle timeout: the peer is presumed dead.
    IDLE_TIMEOUT = 0x0006;
    /// A valid message at the wrong time (e.g. anything but Hello before the handshake).
    UNEXPECTED_MESSAGE = 0x0007;
    /// The listener is at its connection limit.
    CONNECTION_LIMIT = 0x0008;
    /// The server is shutting down.
    SHUTTING_DOWN = 0x0009;
    /// A bug or resource failure on the sender's side.
    INTERNAL = 0x000A;
    /// The peer's role may not send this message.
    PERMISSION_DENIED = 0x000B;
    /// A request named something that does not exist.
    NOT_FOUND = 0x0100;
    /// A request was well-formed but its content is invalid.
    INVALID_REQUEST = 0x0101;
    /// A report from an attempt that is no longer current (fencing).
    STALE_ATTEMPT = 0x0102;
    /// A request is not possible in the current state (e.g. cancel a finished job).
    CONFLICT = 0x0103;
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "ErrorCode({:#06x})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
