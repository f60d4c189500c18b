//! An in-process control plane with local agents on a Unix socket in a
//! temporary directory: what `vk demo` runs, and what tests use to get a
//! real cluster (real sockets, real child processes) without installing
//! anything. Dropping it stops the agents and removes the directory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use valkyrie::transport::{BindError, Listener, ListenerOptions};
use valkyrie::Endpoint;
use valkyrie_control_plane::auth::{random_token, Tokens};
use valkyrie_control_plane::core::spawn_with_store;
use valkyrie_control_plane::metrics::Metrics;
use valkyrie_control_plane::store::embedded::EmbeddedStore;
use valkyrie_control_plane::store::{Durability, Store, StoreError, StoreHandle};
use valkyrie_control_plane::{server, CoreConfig};
use valkyrie_runner_agent::job::JobDefaults;
use valkyrie_runner_agent::{Agent, AgentConfig};

use crate::{Client, ClientError, ClientOptions};

/// One local agent to start.
#[derive(Clone, Debug)]
pub struct LocalAgent {
    /// Runner name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Slots.
    pub slots: u32,
}

impl LocalAgent {
    /// An agent with `slots` slots and the given tags.
    pub fn new(name: &str, tags: &[&str], slots: u32) -> Self {
        Self {
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            slots,
        }
    }
}

/// Why a local cluster did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    /// The temporary directory could not be made.
    #[error("cannot create a temporary directory: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The client could not connect.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agents did not register in time.
    #[error("the local agents did not register within 10 s")]
    AgentsMissing,
}

/// A running local cluster.
pub struct LocalCluster {
    /// The control plane's endpoint.
    pub endpoint: Endpoint,
    /// The API token.
    pub api_token: String,
    stop: watch::Sender<bool>,
    agents: Vec<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts a control plane and `agents`, and waits until every agent has
    /// registered.
    pub async fn start(config: CoreConfig, agents: &[LocalAgent]) -> Result<Self, LocalClusterError> {
        let dir = tempfile::Builder::new().prefix("valkyrie-local-").tempdir()?;
        let endpoint = Endpoint::Unix(dir.path().join("valkyrie.sock"));
        let (api_token, runner_token) = (random_token(), random_token());
        let tokens = Arc::new(Tokens::new(api_token.clone(), runner_token.clone()));
        // The embedded store, in the temporary directory, as a server has.
        let metrics: Arc<Metrics> = Default::default();
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync)?;
        let loaded = store.load()?;
        let store = StoreHandle::spawn(Box::new(store), metrics.clone());
        let core = spawn_with_store(config.clone(), tokens.clone(), metrics, store, loaded);
        let watched = core.clone();
        tokio::spawn(async move {
            let err = watched.store_failure().await;
            tracing::error!(%err, "the local control plane stopped: its store failed");
        });
        let listener = Listener::bind(
            &endpoint,
            server::listener_options(tokens, ListenerOptions::default()),
        )
        .await?;
        tokio::spawn(server::serve(listener, core));

        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for agent in agents {
            let work_dir = dir.path().join(&agent.name);
            std::fs::create_dir_all(&work_dir)?;
            let agent_config = AgentConfig {
                server: endpoint.clone(),
                more_servers: Vec::new(),
                token: runner_token.clone(),
                name: agent.name.clone(),
                tags: agent.tags.clone(),
                slots: agent.slots,
                work_dir,
                defaults: JobDefaults {
                    kill_grace: config.kill_grace,
                    ..JobDefaults::default()
                },
                heartbeat_interval: Duration::from_millis(500),
                drain_timeout: Duration::from_secs(10),
                client: ClientOptions::default(),
                supervisor: None,
            };
            let mut stop = stop_rx.clone();
            handles.push(tokio::spawn(async move {
                let _ = Agent::new(agent_config)
                    .run(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        let cluster = Self {
            endpoint,
            api_token,
            stop,
            agents: handles,
            dir,
        };
        let client = cluster.client().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.runners().await?.len() < agents.len() {
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalClusterError::AgentsMissing);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(cluster)
    }

    /// A new client of the cluster.
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::connect(&self.endpoint, &self.api_token, ClientOptions::default()).await
    }

    /// The temporary directory holding the socket and the agents' work dirs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the agents (they drain) and waits for them, up to 15 s.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for agent in self.agents {
            let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
        }
    }
}
