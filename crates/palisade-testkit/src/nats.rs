//! [`NatsServer`]: a private `nats-server` for one test.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::process::{Launch, Managed, Server};
use crate::{Error, env_url, find_on_path, or_skip};

/// A NATS server for one test: a private `nats-server`, or the external one named by
/// `NATS_URL`.
///
/// The private server listens on an ephemeral port of 127.0.0.1 (never the system server's
/// 4222), keeps its files in a temporary directory and runs without JetStream, so it keeps
/// nothing: a [`restart`](Self::restart) starts with no subscriptions. Dropping the handle
/// kills the server, also when the test panics.
///
/// ```no_run
/// use palisade_testkit::NatsServer;
///
/// # fn main() -> Result<(), palisade_testkit::Error> {
/// let Some(mut nats) = NatsServer::start_or_skip() else { return Ok(()) };
/// let url = nats.url().to_owned(); // "nats://127.0.0.1:PORT"
/// nats.pause()?; // the server stops answering
/// nats.resume()?;
/// nats.kill()?; // SIGKILL: every client is disconnected
/// nats.restart()?; // same port, no subscriptions
/// assert_eq!(nats.url(), url);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    server: Server<NatsLaunch>,
}

impl NatsServer {
    /// Starts a private `nats-server` from `PATH` and waits until it listens on its port, or
    /// returns a handle to the external server when `NATS_URL` is set.
    ///
    /// Blocks the calling thread for the start-up (well under a second on an idle machine).
    ///
    /// # Errors
    ///
    /// [`Error::BinaryNotFound`] when `nats-server` is not on `PATH`;
    /// [`Error::Exited`] or [`Error::NotReady`] (with the server's log tail) when it does not
    /// come up within 10 s; [`Error::Io`] when the temp dir or the process cannot be created.
    pub fn start() -> Result<Self, Error> {
        if let Some(url) = env_url("NATS_URL") {
            return Ok(Self {
                server: Server::external(url),
            });
        }
        let binary = find_on_path("nats-server")?;
        let dir = crate::temp_dir("nats")?;
        let launch = NatsLaunch {
            binary,
            dir: dir.path().to_owned(),
        };
        let managed = Managed::start(launch, dir)?;
        let url = format!("nats://127.0.0.1:{}", managed.port());
        Ok(Self {
            server: Server::managed(url, managed),
        })
    }

    /// Like [`start`](Self::start), but returns `None` (and prints why) when `nats-server`
    /// is not installed, so the calling test can return early as skipped.
    ///
    /// # Panics
    ///
    /// When `nats-server` is missing and `PALISADE_REQUIRE_SERVICES=1`, and whenever an
    /// installed server fails to start: that is a test failure, not a skip.
    #[must_use]
    pub fn start_or_skip() -> Option<Self> {
        or_skip("nats-server", Self::start())
    }

    /// The URL to connect to: `nats://127.0.0.1:PORT`, or `NATS_URL`.
    #[must_use]
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The pid of the `nats-server` process the testkit started; `None` for an external
    /// server and while the server is killed or stopped.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills the server with SIGKILL and reaps it: its clients see their connections drop.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; [`Error::NotRunning`] when it was already
    /// killed or stopped.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.server.managed_mut("kill")?.kill()
    }

    /// Shuts the server down cleanly (SIGTERM) and waits for it to exit (SIGKILL after 10 s).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn stop(&mut self) -> Result<(), Error> {
        self.server.managed_mut("stop")?.stop()
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing gets an answer until
    /// [`resume`](Self::resume).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn pause(&mut self) -> Result<(), Error> {
        self.server.managed_mut("pause")?.pause()
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn resume(&mut self) -> Result<(), Error> {
        self.server.managed_mut("resume")?.resume()
    }

    /// Starts the server again on the same port and waits until it listens; stops it first
    /// if it is running. It starts with no subscriptions: clients must subscribe again.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; start-up errors as for
    /// [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.managed_mut("restart")?.restart()
    }
}

/// How to run `nats-server` in a temp dir.
#[derive(Debug)]
pub(crate) struct NatsLaunch {
    binary: PathBuf,
    dir: PathBuf,
}

impl Launch for NatsLaunch {
    const PROGRAM: &'static str = "nats-server";
    const WITH_CHILDREN: bool = false;
    const SHUTDOWN: Signal = Signal::TERM;
    const READY_TIMEOUT: Duration = Duration::from_secs(10);

    fn command(&self, port: u16) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["--addr", "127.0.0.1", "--port", &port.to_string()])
            // `nats-server_<pid>.ports` names the ports the process really listens on.
            .arg("--ports_file_dir")
            .arg(&self.dir);
        command
    }

    /// The ports file of the started pid names our port, and the port greets a client with
    /// `INFO`: the port could have been taken by another test's server in the moment between
    /// choosing and binding it.
    fn is_ready(&self, pid: u32, port: u16) -> bool {
        let ports = self.dir.join(format!("nats-server_{pid}.ports"));
        let listens = fs::read_to_string(ports)
            .is_ok_and(|ports| ports.contains(&format!("127.0.0.1:{port}\"")));
        let greets = || -> std::io::Result<bool> {
            let timeout = Duration::from_secs(1);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let mut greeting = [0; 5];
            stream.read_exact(&mut greeting)?;
            Ok(&greeting == b"INFO ")
        };
        listens && greets().unwrap_or(false)
    }
}
