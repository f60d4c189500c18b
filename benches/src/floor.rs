//! The heartbeat floor: what the runners load costs a server that does
//! nothing but speak the protocol.
//!
//! `valkyrie-bench runners --floor` runs its load a second time against
//! `valkyrie-bench heartbeat-floor`, a process of its own on a tokio
//! runtime built as the server's: one task per connection drives the
//! protocol's sans-IO [`Connection`] straight on the socket, accepts every
//! Hello, answers RegisterRunner and each Heartbeat that asks (and Pings,
//! as any connection does), and nothing else: no session, no lanes'
//! channels, no core, no store. What the control plane spends on
//! heartbeats beyond this, in the same run, is its own; the rest is the
//! runtime's and the kernel's cost of a frame per runner per interval.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use valkyrie::message::{Ack, Message, RunnerRegistered};
use valkyrie::{Connection, ConnectionConfig, ConnectionEvent, Flags};

#[derive(Args, Debug)]
pub struct FloorArgs {
    /// The Unix socket to listen on.
    #[arg(long)]
    listen: PathBuf,
    /// The heartbeat interval the connections announce (as the server's `--heartbeat-interval`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
}

/// The read buffer's room before each read: a heartbeat is a few dozen
/// bytes.
const READ_ROOM: usize = 1024;

pub fn main(args: FloorArgs) -> anyhow::Result<()> {
    // As the server's: a worker per CPU.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = UnixListener::bind(&args.listen)?;
        listen(
            listener,
            ConnectionConfig::default().heartbeat_interval(args.heartbeat),
        )
        .await
    })
}

async fn listen(listener: UnixListener, config: ConnectionConfig) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, config.clone()));
    }
}

async fn serve(mut stream: UnixStream, config: ConnectionConfig) {
    let mut conn = Connection::server(config, 1, Instant::now());
    let mut out = BytesMut::new();
    // One timer per connection, moved only when the connection's deadline
    // moves (as the server's driver does).
    let mut armed = conn.poll_timeout();
    let timer = tokio::time::sleep_until(deadline(armed));
    tokio::pin!(timer);
    loop {
        while let Some(event) = conn.poll_event() {
            let (correlation, reply): (u64, Message) = match event {
                ConnectionEvent::HelloReceived(_) => {
                    conn.accept("heartbeat-floor", Instant::now());
                    continue;
                }
                ConnectionEvent::Message {
                    correlation,
                    message: Message::RegisterRunner(_),
                    ..
                } => (
                    correlation,
                    RunnerRegistered {
                        runner_id: 1,
                        credential: String::new(),
                        stale: Vec::new(),
                    }
                    .into(),
                ),
                ConnectionEvent::Message {
                    correlation,
                    message: Message::Heartbeat(_),
                    ..
                } if correlation != 0 => (correlation, Ack {}.into()),
                ConnectionEvent::Closed(_) => return,
                _ => continue,
            };
            if conn.send(correlation, Flags::REPLY, &reply).is_err() {
                return;
            }
        }
        conn.poll_transmit(&mut out, usize::MAX);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if conn.is_drained() {
            return;
        }
        let next = conn.poll_timeout();
        if next != armed {
            armed = next;
            timer.as_mut().reset(deadline(armed));
        }
        let buffer = conn.recv_buffer(0);
        buffer.reserve(READ_ROOM);
        tokio::select! {
            read = stream.read_buf(buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => conn.handle_buffered(0, Instant::now()),
            },
            () = &mut timer => {
                conn.handle_timeout(Instant::now());
                armed = conn.poll_timeout();
                timer.as_mut().reset(deadline(armed));
            }
        }
    }
}

/// When the timer fires: the connection's deadline, or (without one) far
/// enough away never to.
fn deadline(at: Option<Instant>) -> tokio::time::Instant {
    match at {
        Some(at) => tokio::time::Instant::from_std(at),
        None => tokio::time::Instant::now() + Duration::from_secs(24 * 3600),
    }
}

#[cfg(test)]
mod tests {
    use valkyrie::message::{Heartbeat, RegisterRunner, Role};
    use valkyrie::transport::{connect, hello, ClientOptions};
    use valkyrie::Endpoint;

    use super::*;

    /// What the simulated runners need of it: the handshake, an answer to
    /// RegisterRunner, an Ack to a Heartbeat that asks.
    #[tokio::test]
    async fn the_floor_registers_a_runner_and_acks_its_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("floor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(listen(listener, ConnectionConfig::default()));
        let endpoint: Endpoint = format!("unix://{}", socket.display()).parse().unwrap();
        let session = connect(
            &endpoint,
            hello(Role::Agent, "any", "test"),
            &ClientOptions::default(),
        )
        .await
        .unwrap();
        let (sender, _incoming) = session.into_parts();
        let register = RegisterRunner {
            name: "r".into(),
            tags: Vec::new(),
            os: "linux".into(),
            arch: "x86_64".into(),
            slots: 1,
            version: "0".into(),
            running: Vec::new(),
        };
        let registered = sender.request(register).await.unwrap();
        assert!(
            matches!(registered, Message::RunnerRegistered(_)),
            "{registered:?}"
        );
        let ack = sender.request(Heartbeat { running: 0 }).await.unwrap();
        assert!(matches!(ack, Message::Ack(_)), "{ack:?}");
    }
}
