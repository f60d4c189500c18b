//! The system under test, in-process: a control plane (core + listener) and
//! the agents (the agent library, or simulated agents that answer at once),
//! each a library call on the "system" runtime, talking to each other and
//! to the client over real sockets of the chosen transport.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use valkyrie::transport::{dev_certificate, ClientOptions, ClientTls, ListenerOptions, ServerTls};
use valkyrie::{ConnectionConfig, Endpoint};
use valkyrie_control_plane::auth::Tokens;
use valkyrie_control_plane::core::spawn_with_store;
use valkyrie_control_plane::metrics::Metrics;
use valkyrie_control_plane::store::embedded::EmbeddedStore;
use valkyrie_control_plane::store::leader::LeaseConfig;
use valkyrie_control_plane::store::mongo::MongoStore;
use valkyrie_control_plane::store::{Durability, Store, StoreHandle};
use valkyrie_control_plane::{server, spawn_core, CoreConfig};
use valkyrie_runner_agent::job::JobDefaults;
use valkyrie_runner_agent::{Agent, AgentConfig};
use valkyrie_sdk::Client;

use crate::raw::QuicTls;
use crate::runners::{Simulated, API_TOKEN, RUNNER_TOKEN};
use crate::{AgentKind, Transport};

/// A running control plane and its agents.
pub struct System {
    /// Where clients connect.
    pub endpoint: Endpoint,
    /// Options clients connect with (TLS trust for QUIC).
    pub client_options: ClientOptions,
    /// TLS material for the raw QUIC baseline, from the same certificate.
    pub raw_tls: Option<QuicTls>,
    /// Stop signals for the agents.
    agent_stops: Vec<oneshot::Sender<()>>,
}

impl System {
    /// Starts the control plane and `agents` agents of `slots` slots on
    /// `system`, with sockets and work directories under `dir`, and waits
    /// until every agent has registered.
    pub async fn start(
        system: &Handle,
        transport: Transport,
        dir: PathBuf,
        agents: u32,
        slots: u32,
        kind: AgentKind,
        store: &str,
    ) -> anyhow::Result<Self> {
        let listen: Endpoint = match transport {
            Transport::Unix => format!("unix://{}", dir.join("valkyrie.sock").display()),
            Transport::Tcp => "tcp://127.0.0.1:0".into(),
            Transport::Quic => "quic://127.0.0.1:0".into(),
        }
        .parse()?;
        let (server_tls, client_tls, raw_tls) = if listen.needs_tls() {
            let dev = dev_certificate(&dir, &["localhost", "127.0.0.1"])?;
            (
                Some(ServerTls::from_pem_files(&dev.cert, &dev.key)?),
                Some(ClientTls::from_ca_file(&dev.cert)?),
                Some(QuicTls::from_dev_certificate(&dev.cert, &dev.key)?),
            )
        } else {
            (None, None, None)
        };
        let client_options = ClientOptions {
            tls: client_tls,
            ..ClientOptions::default()
        };

        let work_root = dir.join("work");
        std::fs::create_dir_all(&work_root)?;
        let agent_options = client_options.clone();
        let store_dir = dir.clone();
        let store = store.to_owned();
        let (endpoint, agent_stops) = system
            .spawn(async move {
                let tokens = Arc::new(Tokens::new(API_TOKEN.into(), RUNNER_TOKEN.into()));
                let base = ListenerOptions {
                    config: ConnectionConfig::default(),
                    tls: server_tls,
                    max_connections: 10_000,
                    server_id: "valkyrie-bench".into(),
                    authenticate: None,
                    redirect: None,
                };
                let options = server::listener_options(tokens.clone(), base);
                let core = match open_store(&store, &store_dir)? {
                    None => spawn_core(CoreConfig::default(), tokens, Default::default()),
                    Some(mut store) => {
                        let metrics: Arc<Metrics> = Default::default();
                        let loaded = store.load()?;
                        let handle = StoreHandle::spawn(store, metrics.clone());
                        spawn_with_store(CoreConfig::default(), tokens, metrics, handle, loaded)
                    }
                };
                let listener = server::bind_all(std::slice::from_ref(&listen), &options)
                    .await?
                    .pop()
                    .context("no listener bound")?;
                let endpoint = listener.local_endpoint().clone();
                tokio::spawn(server::serve(listener, core));

                let mut stops = Vec::new();
                for i in 0..agents {
                    let (stop_tx, stop_rx) = oneshot::channel::<()>();
                    stops.push(stop_tx);
                    if kind == AgentKind::Simulated {
                        let simulated = Simulated {
                            endpoint: endpoint.clone(),
                            name: format!("bench-agent-{i}"),
                            slots,
                            heartbeat: Duration::from_secs(2),
                            options: agent_options.clone(),
                        };
                        tokio::spawn(async move {
                            let served = async move {
                                let stop = async move {
                                    let _ = stop_rx.await;
                                };
                                simulated.register().await?.serve(stop).await
                            };
                            if let Err(err) = served.await {
                                eprintln!("simulated agent {i} stopped: {err:#}");
                            }
                        });
                        continue;
                    }
                    let work_dir = work_root.join(format!("agent-{i}"));
                    std::fs::create_dir_all(&work_dir)?;
                    let config = AgentConfig {
                        server: endpoint.clone(),
                        more_servers: Vec::new(),
                        token: RUNNER_TOKEN.into(),
                        name: format!("bench-agent-{i}"),
                        tags: Vec::new(),
                        slots,
                        work_dir,
                        defaults: JobDefaults {
                            shell: vec!["sh".into(), "-c".into()],
                            kill_grace: Duration::from_secs(10),
                            output_limit_bytes: 64 << 20,
                            ..JobDefaults::default()
                        },
                        heartbeat_interval: Duration::from_secs(2),
                        drain_timeout: Duration::from_secs(1),
                        client: agent_options.clone(),
                        supervisor: None,
                    };
                    tokio::spawn(async move {
                        if let Err(err) = Agent::new(config)
                            .run(async move {
                                let _ = stop_rx.await;
                            })
                            .await
                        {
                            eprintln!("agent {i} stopped: {err}");
                        }
                    });
                }
                anyhow::Ok((endpoint, stops))
            })
            .await??;

        let system = Self {
            endpoint,
            client_options,
            raw_tls,
            agent_stops,
        };
        system.wait_for_agents(agents).await?;
        Ok(system)
    }

    /// A new SDK client connection.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Client::connect(&self.endpoint, API_TOKEN, self.client_options.clone())
            .await
            .with_context(|| format!("cannot connect to {}", self.endpoint))
    }

    async fn wait_for_agents(&self, agents: u32) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let runners = client.runners().await?;
            if runners.len() as u32 >= agents {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {} of {agents} agents registered within 10 s", runners.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the agents to drain and stop.
    pub fn stop(self) {
        for stop in self.agent_stops {
            let _ = stop.send(());
        }
    }
}

/// A MongoDB store as `valkyrie-server` runs it: this process wins the
/// group's lease (the default 2 s, renewed every 500 ms), stamps the store
/// with its epoch, and every write is fenced by it.
fn leading_mongo(uri: &str) -> anyhow::Result<MongoStore> {
    let uri = uri.to_owned();
    // The driver's blocking calls stay off the async runtime.
    std::thread::spawn(move || {
        let mut mongo = MongoStore::connect(&uri, Durability::Fsync)?;
        let election = mongo.election(LeaseConfig {
            // One id for every run: a bench restarted on the same database
            // takes the lease over at once, as a restarted server does.
            server_id: "valkyrie-bench".into(),
            advertise: Vec::new(),
            advertise_http: None,
            ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(500),
        });
        let fence = election.acquire(|_| {})?;
        election.clone().keep(fence.clone(), |err| {
            eprintln!("valkyrie-bench: lost the MongoDB lease: {err}");
            std::process::exit(75);
        });
        election.claim(&fence)?;
        mongo.set_fence(fence);
        anyhow::Ok(mongo)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the MongoDB election thread panicked"))?
}

/// The store named on the command line; `None` keeps state in memory.
fn open_store(name: &str, dir: &std::path::Path) -> anyhow::Result<Option<Box<dyn Store>>> {
    Ok(match name {
        "memory" => None,
        "embedded" => Some(Box::new(EmbeddedStore::open(dir, Durability::Fsync)?)),
        "embedded-none" => Some(Box::new(EmbeddedStore::open(dir, Durability::None)?)),
        uri if uri.starts_with("mongodb://") => Some(Box::new(leading_mongo(uri)?)),
        other => bail!("unknown store `{other}`: use memory, embedded, embedded-none or a mongodb:// URI"),
    })
}
