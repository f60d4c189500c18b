//! What the integration tests of several crates share: the servers from
//! PyPI they start for real (a MongoDB wire-protocol server, an
//! S3-compatible one), each on a free port with its own directory, killed
//! when the test ends. `control-plane`'s store tests and the cross-crate
//! scenarios in `tests/` both use them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server gets to accept connections.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// The MongoDB wire-protocol server the MongoDB tests run against.
const NX: &str = "nx-27017";

/// `nx-27017 --db memory` (a MongoDB wire-protocol server on SQLite, from
/// PyPI: `python3 -m pip install nx-27017`) on a free port, for one test;
/// killed (SIGKILL) on drop. A missing `nx-27017` fails the test: the
/// MongoDB tests are not skipped.
///
/// No MongoDB server can be installed here; `nx-27017` speaks the same wire
/// protocol. Its data lives in memory, so it must outlive every
/// `valkyrie-server` restart of a test, which it does: only the
/// `valkyrie-server` is killed.
pub struct MongoServer {
    process: ServiceProcess,
}

impl MongoServer {
    /// Starts it and waits (up to [`START_DEADLINE`]) until it accepts
    /// connections.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// [`MongoServer::start`], listening on `host` (`0.0.0.0`: every
    /// interface, for servers in other network namespaces).
    pub fn start_on(host: &str) -> Self {
        let process = ServiceProcess::start(NX, nx_program(), |command, port, dir| {
            command
                .args(["--db", "memory", "--host", host, "--port"])
                .arg(port.to_string())
                // Its defaults are shared files in /tmp; tests run in parallel.
                .arg("--log-file")
                .arg(dir.join("nx.log"))
                .arg("--pid-file")
                .arg(dir.join("nx.pid"));
        });
        Self { process }
    }

    /// The URI of database `valkyrie` on it, for `--store`.
    pub fn uri(&self) -> String {
        self.uri_of("valkyrie")
    }

    /// The URI of `database` on it.
    pub fn uri_of(&self, database: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{database}", self.process.port)
    }

    /// [`MongoServer::uri`] through the address `host` of this machine.
    pub fn uri_at(&self, host: &str) -> String {
        format!("mongodb://{host}:{}/valkyrie", self.process.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Kills it now (SIGKILL) and waits for it to end.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// A server program from PyPI (nx-27017, moto_server) on a free local
/// port, with its own temporary directory; killed (SIGKILL) on drop,
/// printing the end of its output if the test failed.
pub struct ServiceProcess {
    name: &'static str,
    child: Child,
    /// The port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl ServiceProcess {
    /// Runs `program`, with the arguments `args` adds given the port and
    /// the temporary directory, and waits (up to [`START_DEADLINE`]) until
    /// it accepts connections on 127.0.0.1, on a socket of its own.
    ///
    /// The port is picked free, then released for the program to bind, so
    /// another process may take it in between (a test's server binding
    /// port 0). Connecting would then reach that process: readiness counts
    /// only once the listening socket is the program's, and a program that
    /// exits because its port was taken is started again on another.
    pub fn start(name: &'static str, program: &Path, mut args: impl FnMut(&mut Command, u16, &Path)) -> Self {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            match Self::start_once(name, program, &mut args) {
                Ok(process) => return process,
                Err(port) if attempt < ATTEMPTS => {
                    eprintln!("`{name}`: port {port} was taken by another process; trying another");
                }
                Err(port) => {
                    panic!("`{name}`: port {port} was taken by another process, {ATTEMPTS} times in a row")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One start; `Err(port)` when another process holds its port.
    fn start_once(
        name: &'static str,
        program: &Path,
        args: &mut impl FnMut(&mut Command, u16, &Path),
    ) -> Result<Self, u16> {
        let dir = tempfile::Builder::new()
            .prefix("vkt-svc")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let out = std::fs::File::create(dir.path().join("out")).expect("output file");
        let mut command = Command::new(program);
        args(&mut command, port, dir.path());
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("output file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `{}`: {err}", program.display()));
        let mut process = Self {
            name,
            child,
            port,
            dir,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let answers = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if answers && listens_on(process.child.id(), port) {
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait().expect("poll a service") {
                if answers {
                    return Err(port);
                }
                panic!(
                    "`{name}` on port {port} exited ({status}) before accepting connections:\n{}",
                    process.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{name}` did not accept connections on port {port} within {START_DEADLINE:?}:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it now (SIGKILL) and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_tail(&format!("{} on port {}", self.name, self.port), &self.output());
        }
    }
}

/// Prints the last 40 lines of `log` under a heading naming `what`: what a
/// failing test shows of a process it started.
pub fn print_tail(what: &str, log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    eprintln!(
        "---- last lines of {what} ----\n{}\n----",
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
}

/// `nx-27017` on `PATH`, or where pip put it.
fn nx_program() -> &'static Path {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        pip_script(
            NX,
            "the MongoDB tests need this MongoDB wire-protocol server; install it with \
             `python3 -m pip install nx-27017` (scripts/test does)",
        )
    })
}

/// The console script `name` on `PATH`, or where pip put it if that is not
/// on `PATH` (e.g. `pip install --user` and no `~/.local/bin` in `PATH`).
/// Panics saying `why` it is needed when it is nowhere.
pub fn pip_script(name: &str, why: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join(name));
    let script_dirs = Command::new("python3")
        .args([
            "-c",
            "import os, sysconfig\n\
             print(sysconfig.get_path('scripts'))\n\
             print(sysconfig.get_path('scripts', os.name + '_user'))",
        ])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let from_pip = script_dirs.lines().map(|dir| Path::new(dir).join(name));
    on_path
        .chain(from_pip)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed (not on PATH, nor in python3's script directories): {why}")
        })
}

/// Whether process `pid` holds the socket listening on TCP `port`: the
/// listener's inode (in `/proc/net/tcp` or `tcp6`) is among the process's
/// descriptors (Linux).
fn listens_on(pid: u32, port: u16) -> bool {
    let sockets: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    // State 0A: listening.
                    let listening = *fields.get(3)? == "0A";
                    let inode = fields.get(9)?;
                    (local_port == port && listening).then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(descriptors) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    descriptors
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| sockets.iter().any(|socket| target.as_os_str() == socket.as_str()))
}

/// A port nothing listens on (the OS's pick, released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_in_its_own_process_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // pid 1 (init) does not hold it, nor is anything listening on a
        // port after its listener is gone.
        assert!(!listens_on(1, port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }
}
