//! npm packages for tests that run a Node.js peer (a WebSocket server, a tus client).
//!
//! [`NodeModules::install_or_skip`] installs pinned packages with `npm` into a directory
//! named after them, once: later calls, later test binaries and later runs reuse it. The
//! install happens next to that directory and is moved into place in one step, so a run
//! that stops half way (or another test binary installing the same packages) never leaves a
//! broken install behind. [`NodeModules::node`] then builds the `node` command for a peer
//! script with the packages on `NODE_PATH`.
//!
//! A test is skipped with the reason printed when `node` or `npm` is not installed or the
//! install fails (no network, say), and fails instead under `PALISADE_REQUIRE_SERVICES=1`.
//!
//! # Example
//!
//! ```no_run
//! use palisade_testkit::npm::NodeModules;
//!
//! // In an integration test, `Path::new(env!("CARGO_TARGET_TMPDIR"))`: cargo's temp dir for
//! // them keeps the install between runs.
//! # let target_tmpdir = std::env::temp_dir();
//! let Some(modules) = NodeModules::install_or_skip(&target_tmpdir, &["ws@8.18.3"]) else {
//!     return; // skipped; the reason was printed
//! };
//! let child = modules.node("tests/peer/server.js").spawn().unwrap();
//! # drop(child);
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::{Error, find_on_path, services_required};

/// How many lines of npm's output an error shows.
const TAIL_LINES: usize = 20;

/// Installed npm packages: a directory holding `node_modules`, and the `node` to run them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeModules {
    dir: PathBuf,
    node: PathBuf,
}

impl NodeModules {
    /// Installs `packages` (npm specs, pinned to exact versions: `ws@8.18.3`,
    /// `@tus/server@2.4.5`) into a directory of `base` named after them, unless they are
    /// there already.
    ///
    /// # Errors
    ///
    /// [`Error::BinaryNotFound`] when `node` or `npm` is not on `PATH`; [`Error::Exited`]
    /// when `npm install` fails (its output is kept in a `.log` file next to the
    /// directory); [`Error::Io`] when npm cannot run or the install cannot be moved into
    /// place.
    pub fn install(base: &Path, packages: &[&str]) -> Result<Self, Error> {
        let node = find_on_path("node")?;
        let name = dir_name(packages);
        let dir = base.join(&name);
        if installed(&dir, packages) {
            return Ok(Self { dir, node });
        }
        let npm = find_on_path("npm")?;
        let staging = base.join(format!("{name}.staging-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(base)
            .map_err(Error::io(format!("could not create {}", base.display())))?;
        let output = Command::new(npm)
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--loglevel=error",
            ])
            .arg("--prefix")
            .arg(&staging)
            .args(packages)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io("could not run npm"))?;
        if !output.status.success() || !installed(&staging, packages) {
            let _ = fs::remove_dir_all(&staging);
            let log = base.join(format!("{name}.log"));
            let mut text = output.stdout;
            text.extend_from_slice(&output.stderr);
            let text = String::from_utf8_lossy(&text);
            // The log is for a person reading the failure; losing it loses only that.
            let _ = fs::write(&log, text.as_bytes());
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
            return Err(Error::Exited {
                program: "npm",
                status: output.status,
                log,
                tail,
            });
        }
        if let Err(error) = fs::rename(&staging, &dir) {
            // Another process moved its install into place first: use that one.
            let _ = fs::remove_dir_all(&staging);
            if !installed(&dir, packages) {
                return Err(Error::Io {
                    context: format!("could not move the npm install to {}", dir.display()),
                    source: error,
                });
            }
        }
        Ok(Self { dir, node })
    }

    /// [`install`](Self::install), or `None` with the reason printed: the calling test
    /// should return, skipped. Under `PALISADE_REQUIRE_SERVICES=1` it panics instead.
    ///
    /// The outcome is kept for the rest of the process, so the tests of one binary install
    /// (or fail to install) once, one after the other.
    ///
    /// # Panics
    ///
    /// When the packages cannot be installed and `PALISADE_REQUIRE_SERVICES=1`.
    #[must_use]
    pub fn install_or_skip(base: &Path, packages: &[&str]) -> Option<Self> {
        static INSTALLS: Mutex<Vec<(PathBuf, Result<NodeModules, String>)>> =
            Mutex::new(Vec::new());
        let key = base.join(dir_name(packages));
        let outcome = {
            let mut installs = INSTALLS.lock().unwrap_or_else(PoisonError::into_inner);
            let found = installs.iter().find(|(dir, _)| *dir == key);
            if let Some((_, outcome)) = found {
                outcome.clone()
            } else {
                let outcome = Self::install(base, packages).map_err(|e| describe(&e));
                installs.push((key, outcome.clone()));
                outcome
            }
        };
        let reason = match outcome {
            Ok(modules) => return Some(modules),
            Err(reason) => reason,
        };
        let packages = packages.join(" ");
        assert!(
            !services_required(),
            "could not install the npm packages {packages} \
             (PALISADE_REQUIRE_SERVICES=1: a missing Node.js peer fails the test): {reason}"
        );
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("test");
        eprintln!("skipping {test}: could not install the npm packages {packages}: {reason}");
        None
    }

    /// The directory holding `node_modules`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `node_modules` directory.
    #[must_use]
    pub fn node_modules(&self) -> PathBuf {
        self.dir.join("node_modules")
    }

    /// A command running `node script` with `NODE_PATH` set to
    /// [`node_modules`](Self::node_modules), so that `require` finds the packages. `import`
    /// does not read `NODE_PATH`: an ES module script gets a `require` that does from
    /// `createRequire(import.meta.url)`.
    #[must_use]
    pub fn node(&self, script: impl AsRef<Path>) -> Command {
        let mut command = Command::new(&self.node);
        command
            .arg(script.as_ref())
            .env("NODE_PATH", self.node_modules());
        command
    }
}

/// The install directory's name: `node-` and the packages, `/` in scoped names made `+`.
fn dir_name(packages: &[&str]) -> String {
    format!("node-{}", packages.join(",")).replace('/', "+")
}

/// Whether every package has its `package.json` under `dir/node_modules`.
fn installed(dir: &Path, packages: &[&str]) -> bool {
    packages.iter().all(|spec| {
        dir.join("node_modules")
            .join(package_name(spec))
            .join("package.json")
            .is_file()
    })
}

/// The name in an npm spec: `ws` in `ws@8.18.3`, `@tus/server` in `@tus/server@2.4.5`.
fn package_name(spec: &str) -> &str {
    match spec.rsplit_once('@') {
        Some((name, _)) if !name.is_empty() => name,
        _ => spec,
    }
}

/// The error and its causes, on one line.
fn describe(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_drop_the_version_and_keep_the_scope() {
        assert_eq!(package_name("ws@8.18.3"), "ws");
        assert_eq!(package_name("ws"), "ws");
        assert_eq!(package_name("@tus/server@2.4.5"), "@tus/server");
        assert_eq!(package_name("@tus/server"), "@tus/server");
    }

    #[test]
    fn directory_names_are_one_path_component() {
        assert_eq!(dir_name(&["ws@8.18.3"]), "node-ws@8.18.3");
        assert_eq!(
            dir_name(&["@tus/server@2.4.5", "@tus/file-store@2.1.1"]),
            "node-@tus+server@2.4.5,@tus+file-store@2.1.1"
        );
    }
}
