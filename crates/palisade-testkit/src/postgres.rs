//! [`PostgresServer`]: a private PostgreSQL cluster for one test.

use std::env;
use std::fs::{self, File};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::process::Signal;
use sqlx::{Connection, Executor, PgConnection};

use crate::process::{Launch, Managed, Server, log_tail};
use crate::{Error, env_url, find_on_path, is_executable, or_skip};

/// The environment variable naming the PostgreSQL bin directory to use.
const PG_BIN_ENV: &str = "PALISADE_PG_BIN";

/// A PostgreSQL server for one test: a private cluster made by `initdb` and run by
/// `postgres`, or the external server named by `DATABASE_URL`.
///
/// The private cluster lives in a temporary directory, listens on an ephemeral port of
/// 127.0.0.1 and trusts every local connection as the `postgres` superuser. [`start`]
/// runs it with `fsync=off`: that loses data only when the machine crashes, not when the
/// server is killed, so [`kill`](Self::kill) followed by [`restart`](Self::restart) keeps
/// everything that was committed. [`start_durable`] runs it as production does (`fsync=on`,
/// `synchronous_commit=on`: every commit waits for its WAL flush), for benchmarks. `kill`, `pause` and `resume` signal the postmaster and all its
/// children (the backends and background processes, found through `/proc`: Linux only).
/// Dropping the handle kills them all, also when the test panics.
///
/// [`start`]: Self::start
/// [`start_durable`]: Self::start_durable
///
/// When the tests run as root, which PostgreSQL refuses, `initdb` and `postgres` run as the
/// `postgres` OS user, and the temp dir belongs to that user.
///
/// The PostgreSQL bin directory is `PALISADE_PG_BIN` if set, else the (symlink-resolved)
/// directory of `initdb` on `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
///
/// ```no_run
/// use palisade_testkit::PostgresServer;
///
/// # async fn test() -> Result<(), palisade_testkit::Error> {
/// let Some(mut pg) = PostgresServer::start_or_skip() else { return Ok(()) };
/// let url = pg.fresh_database().await?; // "postgres://postgres@127.0.0.1:PORT/palisade_..."
/// pg.kill()?; // SIGKILL to the postmaster and its backends
/// pg.restart()?; // same port, same data
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PostgresServer {
    server: Server<PostgresLaunch>,
}

impl PostgresServer {
    /// Creates a cluster with `initdb`, starts `postgres` on it and waits until it is ready,
    /// or returns a handle to the external server when `DATABASE_URL` is set.
    ///
    /// Blocks the calling thread for the start-up (`initdb` takes a second or two).
    ///
    /// # Errors
    ///
    /// [`Error::BinaryNotFound`] when `initdb` or `postgres` is not found;
    /// [`Error::NoPostgresUser`] when running as root without a `postgres` OS user;
    /// [`Error::Exited`] or [`Error::NotReady`] (with the log tail) when `initdb` fails or
    /// the server does not come up within 30 s; [`Error::Io`] when the temp dir or a
    /// process cannot be created.
    pub fn start() -> Result<Self, Error> {
        Self::launch(false)
    }

    /// Like [`start`](Self::start), but the private cluster runs with durable commits
    /// (`fsync=on`, `synchronous_commit=on`), so a commit costs what it costs in production.
    /// For benchmarks; tests want the faster [`start`](Self::start). An external
    /// `DATABASE_URL` server keeps its own settings.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub fn start_durable() -> Result<Self, Error> {
        Self::launch(true)
    }

    /// Starts the server for [`start`](Self::start) (`durable == false`) or
    /// [`start_durable`](Self::start_durable).
    fn launch(durable: bool) -> Result<Self, Error> {
        if let Some(url) = env_url("DATABASE_URL") {
            return Ok(Self {
                server: Server::external(url),
            });
        }
        let bin = bin_dir()?;
        let postgres = bin.join("postgres");
        if !is_executable(&postgres) {
            return Err(Error::BinaryNotFound {
                binary: "postgres",
                searched: bin.display().to_string(),
            });
        }
        let run_as = RunAs::for_postgres()?;

        let dir = crate::temp_dir("postgres")?;
        let launch = PostgresLaunch {
            postgres,
            data: dir.path().join("data"),
            sockets: dir.path().join("sockets"),
            run_as,
            durable,
        };
        fs::create_dir(&launch.sockets).map_err(Error::io(format!(
            "could not create {}",
            launch.sockets.display()
        )))?;
        if let Some(run_as) = run_as {
            run_as.own(dir.path())?;
            run_as.own(&launch.sockets)?;
        }
        launch.initdb(&bin.join("initdb"), dir.path())?;

        let managed = Managed::start(launch, dir)?;
        let url = format!("postgres://postgres@127.0.0.1:{}/postgres", managed.port());
        Ok(Self {
            server: Server::managed(url, managed),
        })
    }

    /// Like [`start`](Self::start), but returns `None` (and prints why) when PostgreSQL is
    /// not installed, so the calling test can return early as skipped.
    ///
    /// # Panics
    ///
    /// When PostgreSQL is missing and `PALISADE_REQUIRE_SERVICES=1`, and whenever an
    /// installed server fails to start: that is a test failure, not a skip.
    #[must_use]
    pub fn start_or_skip() -> Option<Self> {
        or_skip("PostgreSQL", Self::start())
    }

    /// The URL of the server's `postgres` database:
    /// `postgres://postgres@127.0.0.1:PORT/postgres`, or `DATABASE_URL`.
    #[must_use]
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Creates a new, uniquely named, empty database and returns its URL. Give each test
    /// its own.
    ///
    /// Works on an external server too (it needs the right to `CREATE DATABASE` there);
    /// databases made there are not dropped afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the server cannot be reached or refuses.
    pub async fn fresh_database(&self) -> Result<String, Error> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        let name = format!(
            "palisade_{}_{}_{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );

        let url = self.url();
        let mut conn = PgConnection::connect(url)
            .await
            .map_err(Error::database(format!("could not connect to {url}")))?;
        conn.execute(sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\"")))
            .await
            .map_err(Error::database(format!(
                "could not create database {name} on {url}"
            )))?;
        // The database exists; a failed goodbye is no reason to fail the test.
        let _ = conn.close().await;
        Ok(with_database(url, &name))
    }

    /// The pid of the postmaster the testkit started; `None` for an external server and
    /// while the server is killed or stopped.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// Kills the postmaster and its children (backends and background processes) with
    /// SIGKILL, and returns once they are all dead and the postmaster is reaped. Committed
    /// data survives.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; [`Error::NotRunning`] when it was already
    /// killed or stopped; [`Error::NotGone`] when a child outlives a 10 s deadline.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.server.managed_mut("kill")?.kill()
    }

    /// Shuts the server down cleanly ("fast" shutdown, SIGINT: open sessions are ended) and
    /// waits for it to exit (SIGKILL after 10 s).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn stop(&mut self) -> Result<(), Error> {
        self.server.managed_mut("stop")?.stop()
    }

    /// Freezes the postmaster and its children with SIGSTOP: connections stay open,
    /// queries get no answer and no new connection is served until [`resume`](Self::resume).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn pause(&mut self) -> Result<(), Error> {
        self.server.managed_mut("pause")?.pause()
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT to the postmaster and its
    /// children).
    ///
    /// # Errors
    ///
    /// As for [`kill`](Self::kill).
    pub fn resume(&mut self) -> Result<(), Error> {
        self.server.managed_mut("resume")?.resume()
    }

    /// Starts the server again on the same port and data directory and waits until it is
    /// ready; stops it first if it is running. After a [`kill`](Self::kill) PostgreSQL
    /// recovers from its write-ahead log, so committed data is kept.
    ///
    /// # Errors
    ///
    /// [`Error::External`] for an external server; start-up errors as for
    /// [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.server.managed_mut("restart")?.restart()
    }
}

/// How to run `postgres` on a cluster in a temp dir.
#[derive(Debug)]
pub(crate) struct PostgresLaunch {
    postgres: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    run_as: Option<RunAs>,
    /// `fsync=on` and `synchronous_commit=on` instead of `fsync=off`.
    durable: bool,
}

impl PostgresLaunch {
    /// Creates the cluster in `self.data`, logging to `dir/initdb.log`.
    fn initdb(&self, initdb: &Path, dir: &Path) -> Result<(), Error> {
        let log = dir.join("initdb.log");
        let output = File::create(&log)
            .and_then(|file| Ok((file.try_clone()?, file)))
            .map_err(Error::io(format!("could not create {}", log.display())))?;
        let mut command = self.as_user(initdb, dir);
        command
            .arg("-D")
            .arg(&self.data)
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(output.0)
            .stderr(output.1);
        let status = command
            .status()
            .map_err(Error::io(format!("could not run {}", initdb.display())))?;
        if status.success() {
            return Ok(());
        }
        Err(Error::Exited {
            program: "initdb",
            status,
            tail: log_tail(&log, 0),
            log,
        })
    }

    /// A command for `program`, run in `dir` as the user PostgreSQL runs as.
    fn as_user(&self, program: &Path, dir: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(dir);
        if let Some(RunAs { uid, gid }) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Launch for PostgresLaunch {
    const PROGRAM: &'static str = "postgres";
    const WITH_CHILDREN: bool = true;
    /// "Fast" shutdown: ends open sessions instead of waiting for them, as `pg_ctl stop`.
    const SHUTDOWN: Signal = Signal::INT;
    const READY_TIMEOUT: Duration = Duration::from_secs(30);

    fn command(&self, port: u16) -> Command {
        let dir = self
            .data
            .parent()
            .expect("the data dir is inside the temp dir");
        let mut command = self.as_user(&self.postgres, dir);
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&self.sockets)
            .args(["-c", "listen_addresses=127.0.0.1"]);
        if self.durable {
            command.args(["-c", "fsync=on", "-c", "synchronous_commit=on"]);
        } else {
            command.args(["-c", "fsync=off"]);
        }
        command
    }

    /// What `pg_ctl` checks: `postmaster.pid` names our postmaster (not the one that was
    /// killed before a restart) and its status line says `ready`.
    fn is_ready(&self, pid: u32, _port: u16) -> bool {
        let Ok(pidfile) = fs::read_to_string(self.data.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pidfile.lines().collect();
        lines.first() == Some(&pid.to_string().as_str())
            && lines.get(7).map(|status| status.trim()) == Some("ready")
    }
}

/// The OS user PostgreSQL runs as when the tests run as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    /// `None` when not root (run as ourselves); the `postgres` user when root.
    fn for_postgres() -> Result<Option<Self>, Error> {
        if !rustix::process::getuid().is_root() {
            return Ok(None);
        }
        let passwd =
            fs::read_to_string("/etc/passwd").map_err(Error::io("could not read /etc/passwd"))?;
        Self::from_passwd(&passwd, "postgres")
            .map(Some)
            .ok_or(Error::NoPostgresUser)
    }

    /// Looks `user` up in the text of an `/etc/passwd` file (`name:x:uid:gid:...`).
    fn from_passwd(passwd: &str, user: &str) -> Option<Self> {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next() != Some(user) {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(Self { uid, gid })
        })
    }

    fn own(self, path: &Path) -> Result<(), Error> {
        chown(path, Some(self.uid), Some(self.gid)).map_err(Error::io(format!(
            "could not give {} to uid {}",
            path.display(),
            self.uid
        )))
    }
}

/// Finds the PostgreSQL bin directory (the one holding `initdb`).
fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = env::var_os(PG_BIN_ENV).filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        if is_executable(&dir.join("initdb")) {
            return Ok(dir);
        }
        return Err(Error::BinaryNotFound {
            binary: "initdb",
            searched: format!("{PG_BIN_ENV}={}", dir.display()),
        });
    }
    if let Ok(initdb) = find_on_path("initdb") {
        // Distributions link `initdb` into PATH but keep `postgres` next to the real one.
        let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = initdb.parent() {
            return Ok(dir.to_owned());
        }
    }
    newest_versioned_bin_dir(Path::new("/usr/lib/postgresql")).ok_or_else(|| {
        Error::BinaryNotFound {
            binary: "initdb",
            searched: format!("${PG_BIN_ENV} (unset), PATH and /usr/lib/postgresql/*/bin"),
        }
    })
}

/// The `root/VERSION/bin` with the highest version that holds `initdb`.
fn newest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("initdb")).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// `url` with its database (the path) replaced by `database`; the query is kept.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url[authority_start..].find(['/', '?']) {
        Some(i) => {
            let (base, rest) = url.split_at(authority_start + i);
            (base, rest.find('?').map_or("", |q| &rest[q..]))
        }
        None => (url, ""),
    };
    format!("{base}/{database}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        let cases = [
            ("postgres://u@h:5/postgres", "postgres://u@h:5/db"),
            ("postgres://u:p@h:5", "postgres://u:p@h:5/db"),
            (
                "postgres://h/x?sslmode=disable",
                "postgres://h/db?sslmode=disable",
            ),
            (
                "postgres://h?sslmode=disable",
                "postgres://h/db?sslmode=disable",
            ),
            ("postgres:///x?host=/run/pg", "postgres:///db?host=/run/pg"),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "db"), expected, "{url}");
        }
    }

    #[test]
    fn passwd_lookup_finds_uid_and_gid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresx:x:7:7::/:/bin/sh\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            RunAs::from_passwd(passwd, "postgres"),
            Some(RunAs { uid: 101, gid: 104 })
        );
        assert_eq!(RunAs::from_passwd(passwd, "nobody"), None);
    }

    #[test]
    fn newest_bin_dir_compares_versions_as_numbers() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13", "notes"] {
            let bin = root.path().join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("initdb"), "").unwrap();
            let mut perms = fs::metadata(bin.join("initdb")).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            fs::set_permissions(bin.join("initdb"), perms).unwrap();
        }
        fs::create_dir_all(root.path().join("16")).unwrap(); // no bin/initdb
        assert_eq!(
            newest_versioned_bin_dir(root.path()),
            Some(root.path().join("15").join("bin"))
        );
    }
}
