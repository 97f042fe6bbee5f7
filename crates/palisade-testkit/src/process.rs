//! Spawning, signalling and reaping the server processes; shared by every server.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use crate::Error;

/// How often the testkit looks again while it waits for a server.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a server may take to stop or exit after a signal.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ephemeral ports the first start tries before it gives up.
const PORT_ATTEMPTS: usize = 5;
/// How many log lines an error shows.
const TAIL_LINES: usize = 20;

/// A handle to a server: one the testkit started, or an external one known by its URL.
#[derive(Debug)]
pub(crate) struct Server<L: Launch> {
    url: String,
    managed: Option<Managed<L>>,
}

impl<L: Launch> Server<L> {
    pub(crate) fn external(url: String) -> Self {
        Self { url, managed: None }
    }

    pub(crate) fn managed(url: String, managed: Managed<L>) -> Self {
        Self {
            url,
            managed: Some(managed),
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.managed.as_ref().and_then(Managed::pid)
    }

    /// The server the testkit started, or [`Error::External`] naming `method`.
    pub(crate) fn managed_mut(&mut self, method: &'static str) -> Result<&mut Managed<L>, Error> {
        self.managed.as_mut().ok_or_else(|| Error::External {
            method,
            url: self.url.clone(),
        })
    }
}

/// One kind of server: how to start it and how to tell that it is ready.
pub(crate) trait Launch {
    /// The server program, for messages and the log file name.
    const PROGRAM: &'static str;
    /// Whether the server's child processes are signalled with it.
    ///
    /// PostgreSQL's are: the postmaster forks a process per connection and for each
    /// background task, and every one of them calls `setsid()`, so they share neither the
    /// postmaster's process group nor its session; only their parent pid ties them to it.
    /// Children are found through `/proc`, so this works on Linux only.
    const WITH_CHILDREN: bool;
    /// The signal that asks the server to shut down cleanly.
    const SHUTDOWN: Signal;
    /// How long the server may take to become ready.
    const READY_TIMEOUT: Duration;

    /// The command that runs the server in the foreground on `port`.
    fn command(&self, port: u16) -> Command;

    /// Whether the server process `pid` is up and answering on `port`.
    fn is_ready(&self, pid: u32, port: u16) -> bool;
}

/// A server the testkit started: its temp dir, its port and (while it runs) its process.
///
/// Dropping it kills the server (with its children where [`Launch::WITH_CHILDREN`]), reaps
/// it, and only then removes the temp dir.
#[derive(Debug)]
pub(crate) struct Managed<L: Launch> {
    launch: L,
    port: u16,
    /// `None` once the process was killed, stopped or exited (and was reaped).
    child: Option<Child>,
    /// Declared last, so it is removed after the process is gone.
    dir: TempDir,
}

impl<L: Launch> Managed<L> {
    /// Starts the server on a free ephemeral port, trying another port if the chosen one
    /// was taken between choosing and binding.
    pub(crate) fn start(launch: L, dir: TempDir) -> Result<Self, Error> {
        let mut managed = Self {
            launch,
            port: 0,
            child: None,
            dir,
        };
        let mut attempt = 1;
        loop {
            managed.port = free_port()?;
            match managed.spawn_ready() {
                Err(Error::Exited { ref tail, .. })
                    if attempt < PORT_ATTEMPTS && tail.contains("already in use") =>
                {
                    attempt += 1;
                }
                result => return result.map(|()| managed),
            }
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL and reaps it; see [`Self::kill_running`].
    pub(crate) fn kill(&mut self) -> Result<(), Error> {
        self.running_pid("kill")?;
        self.kill_running()
    }

    /// Asks the server to shut down cleanly and waits for it; kills it if it does not exit
    /// in time.
    pub(crate) fn stop(&mut self) -> Result<(), Error> {
        let pid = self.running_pid("stop")?;
        self.signal(pid, L::SHUTDOWN)?;
        // A paused server handles the shutdown signal only once it runs again.
        self.signal_all(pid, Signal::CONT)?;
        wait_until(EXIT_TIMEOUT, || self.has_exited().unwrap_or(true));
        if self.has_exited()? {
            return Ok(());
        }
        self.kill_running()
    }

    /// Sends SIGSTOP to the server (and its children where [`Launch::WITH_CHILDREN`]).
    pub(crate) fn pause(&mut self) -> Result<(), Error> {
        let pid = self.running_pid("pause")?;
        self.signal_all(pid, Signal::STOP)
    }

    /// Sends SIGCONT to the server (and its children where [`Launch::WITH_CHILDREN`]).
    pub(crate) fn resume(&mut self) -> Result<(), Error> {
        let pid = self.running_pid("resume")?;
        self.signal_all(pid, Signal::CONT)
    }

    /// Stops the server if it runs, then starts it again on the same port with the same
    /// data and waits until it is ready.
    pub(crate) fn restart(&mut self) -> Result<(), Error> {
        if !self.has_exited()? {
            self.stop()?;
        }
        self.spawn_ready()
    }

    /// The file the server's stdout and stderr go to.
    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", L::PROGRAM))
    }

    /// The pid of the running server, or [`Error::NotRunning`] naming `method`.
    fn running_pid(&mut self, method: &'static str) -> Result<u32, Error> {
        match self.pid() {
            Some(pid) if !self.has_exited()? => Ok(pid),
            _ => Err(Error::NotRunning {
                method,
                program: L::PROGRAM,
            }),
        }
    }

    /// Whether there is no server process (any more). A process found to have exited is
    /// reaped and forgotten, so its pid is never signalled again.
    fn has_exited(&mut self) -> Result<bool, Error> {
        self.exit_status()?;
        Ok(self.child.is_none())
    }

    /// The exit status of a server process that has just been found to have exited (and was
    /// reaped and forgotten); `None` while it runs or when there is no process.
    fn exit_status(&mut self) -> Result<Option<ExitStatus>, Error> {
        let Some(child) = &mut self.child else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .map_err(Error::io(format!("could not check on `{}`", L::PROGRAM)))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Kills the server process (if there is one) with SIGKILL and reaps it. Its children,
    /// where [`Launch::WITH_CHILDREN`], are killed first, and this returns once they are dead
    /// too.
    fn kill_running(&mut self) -> Result<(), Error> {
        // Not yet reaped, so the pid is still this process's, even if it has exited.
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let mut children_gone = true;
        if L::WITH_CHILDREN {
            let children = self.freeze(pid)?;
            for &child in &children {
                // One that has exited in the meantime is fine.
                let _ = send(child, Signal::KILL);
            }
            // The frozen parent cannot reap them, so each pid stays its process's while we
            // wait (a zombie is dead: it has released everything but its pid).
            children_gone = wait_until(EXIT_TIMEOUT, || !children.iter().any(|&c| is_live(c)));
        }
        self.signal(pid, Signal::KILL)?;
        if let Some(mut child) = self.child.take() {
            child
                .wait()
                .map_err(Error::io(format!("could not reap `{}`", L::PROGRAM)))?;
        }
        if !children_gone {
            return Err(Error::NotGone {
                program: L::PROGRAM,
                pid,
                timeout: EXIT_TIMEOUT,
            });
        }
        Ok(())
    }

    /// Sends `signal` to the running server `pid` and, where [`Launch::WITH_CHILDREN`], to
    /// its children.
    fn signal_all(&self, pid: u32, signal: Signal) -> Result<(), Error> {
        if L::WITH_CHILDREN {
            for child in self.freeze(pid)? {
                let _ = send(child, signal);
            }
        }
        self.signal(pid, signal)
    }

    /// Stops the server `pid` with SIGSTOP and returns its children. A stopped process forks
    /// no child and reaps none, so the list stays true until it runs again.
    fn freeze(&self, pid: u32) -> Result<Vec<u32>, Error> {
        self.signal(pid, Signal::STOP)?;
        wait_until(EXIT_TIMEOUT, || {
            matches!(proc_stat(pid), None | Some(('T' | 't' | 'Z' | 'X', _)))
        });
        Ok(children_of(pid))
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), Error> {
        send(pid, signal).map_err(Error::io(format!(
            "could not send {signal:?} to `{}` (pid {pid})",
            L::PROGRAM
        )))
    }

    /// Spawns the server with its output appended to the log, and waits until it is ready.
    fn spawn_ready(&mut self) -> Result<(), Error> {
        let log_path = self.log();
        let (log, offset) = open_log(&log_path)?;
        let stderr = log
            .try_clone()
            .map_err(Error::io(format!("could not open {}", log_path.display())))?;
        // The server stays in the test's process group, so a Ctrl-C of the test run (or a
        // test runner that ends the group) ends the server too.
        let mut command = self.launch.command(self.port);
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let child = command.spawn().map_err(Error::io(format!(
            "could not run {:?}",
            command.get_program()
        )))?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + L::READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status()? {
                return Err(Error::Exited {
                    program: L::PROGRAM,
                    status,
                    tail: log_tail(&log_path, offset),
                    log: log_path,
                });
            }
            if self.launch.is_ready(pid, self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill_running();
                return Err(Error::NotReady {
                    program: L::PROGRAM,
                    timeout: L::READY_TIMEOUT,
                    tail: log_tail(&log_path, offset),
                    log: log_path,
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl<L: Launch> Drop for Managed<L> {
    fn drop(&mut self) {
        let _ = self.kill_running();
    }
}

/// Sends `signal` to the process `pid`.
fn send(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("pid out of range"))?;
    Ok(kill_process(pid, signal)?)
}

/// Polls `done` until it is true (`true`) or `timeout` has passed (`false`).
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
    true
}

/// The state letter and parent pid of the process `pid`, from `/proc/PID/stat` (Linux).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...", where comm may contain spaces and parentheses.
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The pids of the children of `pid` (Linux; empty elsewhere).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&process| proc_stat(process).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether the process `pid` exists and is not a zombie (Linux).
fn is_live(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// An ephemeral port that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(Error::io("could not find a free port on 127.0.0.1"))
}

/// Opens `path` for appending and returns it with its current length.
fn open_log(path: &Path) -> Result<(File, u64), Error> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|file| {
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .map_err(Error::io(format!("could not open {}", path.display())))?;
    Ok(file)
}

/// The last lines written to the log at `path` after byte `offset`.
pub(crate) fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(error) = read {
        return format!("(could not read the log: {error})");
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_reads_only_what_came_after_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        fs::write(&path, "old\nnew 1\nnew 2\n").unwrap();
        assert_eq!(log_tail(&path, 4), "new 1\nnew 2");
        assert_eq!(log_tail(&path, 16), "(empty)");
    }

    #[test]
    fn children_are_found_through_proc() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id();
        assert!(is_live(me));
        assert!(children_of(me).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_live(child.id()));
    }
}
