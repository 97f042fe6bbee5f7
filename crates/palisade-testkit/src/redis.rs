//! [`RedisServer`]: a private `redis-server` for one test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::process::{Launch, Managed, Server};
use crate::{Error, env_url, find_on_path, or_skip};

/// A Redis server for one test: a private `redis-server`, or the external one named by
/// `REDIS_URL`.
///
/// The private server listens on an ephemeral port of 127.0.0.1, keeps its files in a
/// temporary directory and persists nothing (`--save "" --appendonly no`), so a
/// [`restart`](Self::restart) starts empty. Dropping the handle kills the server, also when
/// the test panics.
///
/// ```no_run
/// use palisade_testkit::RedisServer;
///
/// # fn main() -> Result<(), palisade_testkit::Error> {
/// let Some(mut redis) = RedisServer::start_or_skip() else { return Ok(()) };
/// let url = redis.url().to_owned(); // "redis://127.0.0.1:PORT"
/// redis.pause()?; // commands now hang
/// redis.resume()?;
/// redis.kill()?; // SIGKILL
/// redis.restart()?; // same port, empty
/// assert_eq!(redis.url(), url);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    server: Server<RedisLaunch>,
}

impl RedisServer {
    /// Starts a private `redis-server` from `PATH` and waits until it answers `PING`, or
    /// returns a handle to the external server when `REDIS_URL` is set.
    ///
    /// Blocks the calling thread for the start-up (well under a second on an idle machine).
    ///
    /// # Errors
    ///
    /// [`Error::BinaryNotFound`] when `redis-server` is not on `PATH`;
    /// [`Error::Exited`] or [`Error::NotReady`] (with the server's log tail) when it does not
    /// come up within 10 s; [`Error::Io`] when the temp dir or the process cannot be created.
    pub fn start() -> Result<Self, Error> {
        if let Some(url) = env_url("REDIS_URL") {
            return Ok(Self {
                server: Server::external(url),
            });
        }
        let binary = find_on_path("redis-server")?;
        let dir = crate::temp_dir("redis")?;
        let launch = RedisLaunch {
            binary,
            dir: dir.path().to_owned(),
        };
        let managed = Managed::start(launch, dir)?;
        let url = format!("redis://127.0.0.1:{}", managed.port());
        Ok(Self {
            server: Server::managed(url, managed),
        })
    }

    /// Like [`start`](Self::start), but returns `None` (and prints why) when `redis-server`
    /// is not installed, so the calling test can return early as skipped.
    ///
    /// # Panics
    ///
    /// When `redis-server` is missing and `PALISADE_REQUIRE_SERVICES=1`, and whenever an
    /// installed server fails to start: that is a test failure, not a skip.
    #[must_use]
    pub fn start_or_skip() -> Option<Self> {
        or_skip("redis-server", Self::start())
    }

    /// The URL to connect to: `redis://127.0.0.1:PORT`, or `REDIS_URL`.
    #[must_use]
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// The pid of the `redis-server` process the testkit started; `None` for an external
    /// server and while the server is killed or stopped.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills the server with SIGKILL and reaps it. Its data is gone.
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

    /// Freezes the server with SIGSTOP: connections stay open, commands get no answer
    /// until [`resume`](Self::resume).
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

    /// Starts the server again on the same port and waits until it answers `PING`; stops it
    /// first if it is running. It starts empty: nothing is persisted.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; start-up errors as for
    /// [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.managed_mut("restart")?.restart()
    }
}

/// How to run `redis-server` in a temp dir.
#[derive(Debug)]
pub(crate) struct RedisLaunch {
    binary: PathBuf,
    dir: PathBuf,
}

impl Launch for RedisLaunch {
    const PROGRAM: &'static str = "redis-server";
    const WITH_CHILDREN: bool = false;
    const SHUTDOWN: Signal = Signal::TERM;
    const READY_TIMEOUT: Duration = Duration::from_secs(10);

    fn command(&self, port: u16) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
        command
    }

    /// `PING` answers `+PONG`, and `INFO server` names our pid: the port could have been
    /// taken by another test's server in the moment between choosing and binding it.
    fn is_ready(&self, pid: u32, port: u16) -> bool {
        let ask = || -> std::io::Result<String> {
            let timeout = Duration::from_secs(1);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.write_all(b"PING\r\nINFO server\r\n")?;
            let mut answer = String::new();
            let mut buf = [0; 4096];
            while process_id(&answer).is_none() {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            Ok(answer)
        };
        ask().is_ok_and(|answer| {
            answer.starts_with("+PONG\r\n") && process_id(&answer) == Some(pid.to_string().as_str())
        })
    }
}

/// The value of the complete `process_id:` line of an `INFO` reply.
fn process_id(info: &str) -> Option<&str> {
    let (_, rest) = info.split_once("\r\nprocess_id:")?;
    let (value, _) = rest.split_once("\r\n")?;
    Some(value)
}
