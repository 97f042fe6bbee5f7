//! The `palisade-jobs` admin command line (feature `cli`): queue stats, job listing, the
//! dead-letter table (list, show, replay, purge) and periodic schedules, against a SQLite file
//! or a PostgreSQL URL.
//!
//! The binary `src/bin/palisade-jobs.rs` only calls [`main`]; everything else is here so that
//! it can be tested. Not a stable API: it follows the command line, not SemVer.
//!
//! Exit codes: 0 success, 1 runtime error (the message on stderr), 2 usage error.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::job::{DeadJob, Enqueued, JobId, JobRecord, JobState};
use crate::jobs::Jobs;
use crate::periodic::PeriodicRecord;
use crate::store::{DeadQuery, JobQuery, QueueStats};

/// The environment variable read when `--database` is not given.
pub const DATABASE_ENV: &str = "PALISADE_JOBS_DATABASE";

/// How many characters of an error a one-line listing shows.
const ERROR_WIDTH: usize = 60;

/// How many dead jobs one page of `dead replay --all` reads.
const REPLAY_PAGE: u32 = 500;

const HELP: &str = "\
palisade-jobs: inspect and manage a palisade-jobs queue

Usage: palisade-jobs [--database <URL>] <command> [options]

Commands:
  stats                       jobs per queue and state, and how long the oldest runnable job has waited
  list                        jobs, one line each (id, type, state, attempts, scheduled, last error)
  show <id>                   one job, with its payload
  dead list                   dead-lettered jobs, one line each
  dead show <id>              one dead job, with its payload and error
  dead replay <id>...         move dead jobs back to their queue, attempts reset, to run at once
  dead replay --all --yes     replay every dead job (of --queue, when given)
  dead purge <id>... --yes    delete dead jobs
  dead purge --all --yes      delete every dead job (of --queue, when given)
  dead purge --older-than <duration> --yes
                              delete the jobs dead-lettered longer ago than <duration> (30m, 12h, 7d, 2w)
  periodic                    periodic schedules: name, expression, next run, last run
  help                        this text

Options:
  -d, --database <URL>        sqlite://<path>, a plain file path, or postgres://...
                              (default: $PALISADE_JOBS_DATABASE). A SQLite file must exist.
  -q, --queue <name>          only this queue (stats, list, dead list / replay --all / purge --all, --older-than)
  -s, --state <state>         only this state: pending, running, completed, cancelled (list)
      --after <id>            only ids above <id>, for paging (list, dead list)
  -n, --limit <n>             at most <n> rows (list, dead list; default 100)
      --json                  machine-readable output (stats, list, show, dead list, dead show, periodic)
  -y, --yes                   confirm a command that deletes or moves many jobs (purge, replay --all)
  -h, --help                  this text
  -V, --version               the version

Exit codes: 0 success, 1 runtime error, 2 usage error.
";

/// A command line that does not parse: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// No command was given.
    #[error("missing command")]
    MissingCommand,
    /// The command is not one of the known ones.
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    /// The option is unknown, or not one of the command's.
    #[error("unknown option `{option}` for `{command}`")]
    UnknownOption {
        /// The option as written.
        option: String,
        /// The command.
        command: String,
    },
    /// An option that takes a value came last.
    #[error("option `{0}` needs a value")]
    MissingValue(String),
    /// An option's or an argument's value is not valid.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidValue {
        /// What the value is for.
        what: &'static str,
        /// The value as written.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An argument the command does not take.
    #[error("unexpected argument `{0}`")]
    UnexpectedArgument(String),
    /// A required argument is missing.
    #[error("missing {0}")]
    MissingArgument(&'static str),
    /// Two options that exclude each other.
    #[error("{0}")]
    Conflict(&'static str),
    /// A command that deletes or moves many jobs was not confirmed.
    #[error("`{0}` changes the queue: add --yes to confirm")]
    NotConfirmed(&'static str),
    /// Neither `--database` nor the environment names a database.
    #[error("no database: pass --database <URL> or set {DATABASE_ENV}")]
    NoDatabase,
    /// An argument is not valid UTF-8.
    #[error("argument `{0}` is not valid UTF-8")]
    NotUtf8(String),
}

/// A command that parsed but failed: exit code 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The SQLite file does not exist (it is never created: a typo must not make an empty
    /// queue).
    #[error("database file `{}` does not exist (it is not created: check the path)", .0.display())]
    MissingFile(PathBuf),
    /// The SQLite path names something that is not a file.
    #[error("`{}` is not a file", .0.display())]
    NotAFile(PathBuf),
    /// The database URL needs a backend this binary was built without.
    #[error(
        "`{scheme}` databases need the `{feature}` feature; rebuild with `--features cli,{feature}`"
    )]
    FeatureMissing {
        /// The URL's scheme.
        scheme: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// No job has the id.
    #[error("no job {0}{hint}", hint = if *.1 { " (it is dead: see `dead show`)" } else { "" })]
    NoJob(JobId, bool),
    /// No dead job has the id.
    #[error("no dead job {0}")]
    NoDeadJob(JobId),
    /// Some of the named dead jobs could not be replayed or purged (the others were).
    #[error("{0}")]
    Partial(String),
    /// The job store failed.
    #[error(transparent)]
    Jobs(#[from] crate::Error),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Io(#[from] io::Error),
}

/// Where the jobs are.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Target {
    /// The target a `--database` value names: `postgres://` / `postgresql://` URLs are
    /// PostgreSQL; `sqlite://<path>`, `sqlite:<path>` and anything else is a SQLite file path.
    #[must_use]
    pub fn parse(database: &str) -> Self {
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            return Self::Postgres(database.to_owned());
        }
        let path = database
            .strip_prefix("sqlite://")
            .or_else(|| database.strip_prefix("sqlite:"))
            .unwrap_or(database);
        // `sqlite://jobs.db?mode=ro`: the options are sqlx's, the file is what matters here.
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        Self::Sqlite(PathBuf::from(path))
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invocation {
    /// Print the help.
    Help,
    /// Print the version.
    Version,
    /// Run `command` against `target`.
    Run {
        /// The database.
        target: Target,
        /// What to do.
        command: Command,
        /// Output as JSON.
        json: bool,
    },
}

/// A command with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `stats`.
    Stats {
        /// Only this queue.
        queue: Option<String>,
    },
    /// `list`.
    List(JobQuery),
    /// `show <id>`.
    Show(JobId),
    /// `dead list`.
    DeadList(DeadQuery),
    /// `dead show <id>`.
    DeadShow(JobId),
    /// `dead replay <id>...`.
    DeadReplay(Vec<JobId>),
    /// `dead replay --all`.
    DeadReplayAll {
        /// Only this queue.
        queue: Option<String>,
    },
    /// `dead purge <id>...`.
    DeadPurge(Vec<JobId>),
    /// `dead purge --all`.
    DeadPurgeAll {
        /// Only this queue.
        queue: Option<String>,
    },
    /// `dead purge --older-than <duration>`.
    DeadPurgeOlderThan {
        /// The age.
        age: Duration,
        /// Only this queue.
        queue: Option<String>,
    },
    /// `periodic`.
    Periodic,
}

/// The options seen on a command line, before they are checked against the command.
#[derive(Debug, Default)]
struct Options {
    database: Option<String>,
    queue: Option<String>,
    state: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    older_than: Option<String>,
    json: bool,
    yes: bool,
    all: bool,
    help: bool,
    version: bool,
    /// Every option given, by its canonical name, to refuse those a command does not take.
    given: Vec<(&'static str, String)>,
}

/// Parses the arguments (without the program name); `env_database` is
/// [`DATABASE_ENV`]'s value.
///
/// # Errors
///
/// A [`UsageError`] saying what is wrong.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_database: Option<OsString>,
) -> Result<Invocation, UsageError> {
    let mut options = Options::default();
    let mut words = Vec::new();
    let mut args = args.into_iter();
    let mut only_words = false;
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|arg| UsageError::NotUtf8(arg.to_string_lossy().into_owned()))?;
        if only_words || !arg.starts_with('-') || arg == "-" {
            words.push(arg);
            continue;
        }
        if arg == "--" {
            only_words = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let flag = |set: &mut bool, canonical: &'static str, given: &mut Vec<_>| {
            if inline.is_some() {
                return Err(UsageError::InvalidValue {
                    what: "flag",
                    value: arg.clone(),
                    reason: "this flag takes no value",
                });
            }
            *set = true;
            given.push((canonical, arg.clone()));
            Ok(())
        };
        match name {
            "-h" | "--help" => flag(&mut options.help, "help", &mut options.given)?,
            "-V" | "--version" => flag(&mut options.version, "version", &mut options.given)?,
            "--json" => flag(&mut options.json, "json", &mut options.given)?,
            "-y" | "--yes" => flag(&mut options.yes, "yes", &mut options.given)?,
            "--all" => flag(&mut options.all, "all", &mut options.given)?,
            _ => {
                let (slot, canonical) = match name {
                    "-d" | "--database" => (&mut options.database, "database"),
                    "-q" | "--queue" => (&mut options.queue, "queue"),
                    "-s" | "--state" => (&mut options.state, "state"),
                    "--after" => (&mut options.after, "after"),
                    "-n" | "--limit" => (&mut options.limit, "limit"),
                    "--older-than" => (&mut options.older_than, "older-than"),
                    _ => {
                        return Err(UsageError::UnknownOption {
                            option: arg.clone(),
                            command: "palisade-jobs".to_owned(),
                        });
                    }
                };
                let value = match inline {
                    Some(value) => value,
                    None => args
                        .next()
                        .ok_or_else(|| UsageError::MissingValue(name.to_owned()))?
                        .into_string()
                        .map_err(|value| {
                            UsageError::NotUtf8(value.to_string_lossy().into_owned())
                        })?,
                };
                *slot = Some(value);
                options.given.push((canonical, name.to_owned()));
            }
        }
    }

    if options.help || words.first().is_some_and(|word| word == "help") {
        return Ok(Invocation::Help);
    }
    if options.version {
        return Ok(Invocation::Version);
    }
    let (command, allowed) = command(&words, &options)?;
    for (canonical, written) in &options.given {
        if !["database", "json"].contains(canonical) && !allowed.contains(canonical) {
            return Err(UsageError::UnknownOption {
                option: written.clone(),
                command: words.iter().take(2).cloned().collect::<Vec<_>>().join(" "),
            });
        }
    }
    let database = match options.database {
        Some(database) => database,
        None => env_database
            .filter(|value| !value.is_empty())
            .ok_or(UsageError::NoDatabase)?
            .into_string()
            .map_err(|value| UsageError::NotUtf8(value.to_string_lossy().into_owned()))?,
    };
    if database.is_empty() {
        return Err(UsageError::NoDatabase);
    }
    Ok(Invocation::Run {
        target: Target::parse(&database),
        command,
        json: options.json,
    })
}

/// The command the words name, and the options it takes (besides `--database` and `--json`).
fn command(
    words: &[String],
    options: &Options,
) -> Result<(Command, &'static [&'static str]), UsageError> {
    let word = |index: usize| words.get(index).map(String::as_str);
    let no_more = |from: usize| match words.get(from) {
        Some(extra) => Err(UsageError::UnexpectedArgument(extra.clone())),
        None => Ok(()),
    };
    let queue = || options.queue.clone();
    match word(0) {
        None => Err(UsageError::MissingCommand),
        Some("stats") => {
            no_more(1)?;
            Ok((Command::Stats { queue: queue() }, &["queue"]))
        }
        Some("list") => {
            no_more(1)?;
            let mut query = JobQuery::new();
            query.queue = queue();
            query.state = options.state.as_deref().map(parse_state).transpose()?;
            query.after = options.after.as_deref().map(parse_id).transpose()?;
            query.limit = options.limit.as_deref().map(parse_limit).transpose()?;
            Ok((Command::List(query), &["queue", "state", "after", "limit"]))
        }
        Some("show") => {
            let id = parse_id(word(1).ok_or(UsageError::MissingArgument("job id"))?)?;
            no_more(2)?;
            Ok((Command::Show(id), &[]))
        }
        Some("periodic") => {
            no_more(1)?;
            Ok((Command::Periodic, &[]))
        }
        Some("dead") => dead_command(words, options),
        Some(other) => Err(UsageError::UnknownCommand(other.to_owned())),
    }
}

fn dead_command(
    words: &[String],
    options: &Options,
) -> Result<(Command, &'static [&'static str]), UsageError> {
    let ids = || {
        words[2..]
            .iter()
            .map(|word| parse_id(word))
            .collect::<Result<Vec<_>, _>>()
    };
    let confirm = |what: &'static str| {
        if options.yes {
            Ok(())
        } else {
            Err(UsageError::NotConfirmed(what))
        }
    };
    match words.get(1).map(String::as_str) {
        None => Err(UsageError::MissingArgument(
            "dead-letter command (list, show, replay, purge)",
        )),
        Some("list") => {
            if let Some(extra) = words.get(2) {
                return Err(UsageError::UnexpectedArgument(extra.clone()));
            }
            let mut query = DeadQuery::new();
            query.queue = options.queue.clone();
            query.after = options.after.as_deref().map(parse_id).transpose()?;
            query.limit = options.limit.as_deref().map(parse_limit).transpose()?;
            Ok((Command::DeadList(query), &["queue", "after", "limit"]))
        }
        Some("show") => {
            let id = parse_id(
                words
                    .get(2)
                    .ok_or(UsageError::MissingArgument("dead job id"))?,
            )?;
            if let Some(extra) = words.get(3) {
                return Err(UsageError::UnexpectedArgument(extra.clone()));
            }
            Ok((Command::DeadShow(id), &[]))
        }
        Some("replay") => {
            let ids = ids()?;
            match (options.all, ids.is_empty()) {
                (true, false) => Err(UsageError::Conflict("give dead job ids or --all, not both")),
                (true, true) => {
                    confirm("dead replay --all")?;
                    Ok((
                        Command::DeadReplayAll {
                            queue: options.queue.clone(),
                        },
                        &["all", "queue", "yes"],
                    ))
                }
                (false, true) => Err(UsageError::MissingArgument("dead job ids, or --all")),
                (false, false) => Ok((Command::DeadReplay(ids), &["yes"])),
            }
        }
        Some("purge") => {
            let ids = ids()?;
            let older_than = options.older_than.as_deref().map(parse_age).transpose()?;
            let command = match (options.all, older_than, ids.is_empty()) {
                (false, None, true) => {
                    return Err(UsageError::MissingArgument(
                        "dead job ids, --all or --older-than <duration>",
                    ));
                }
                (false, None, false) => (Command::DeadPurge(ids), &["yes"][..]),
                (true, None, true) => (
                    Command::DeadPurgeAll {
                        queue: options.queue.clone(),
                    },
                    &["all", "queue", "yes"][..],
                ),
                (false, Some(age), true) => (
                    Command::DeadPurgeOlderThan {
                        age,
                        queue: options.queue.clone(),
                    },
                    &["older-than", "queue", "yes"][..],
                ),
                _ => {
                    return Err(UsageError::Conflict(
                        "give one of: dead job ids, --all, --older-than <duration>",
                    ));
                }
            };
            confirm("dead purge")?;
            Ok(command)
        }
        Some(other) => Err(UsageError::UnknownCommand(format!("dead {other}"))),
    }
}

fn parse_id(text: &str) -> Result<JobId, UsageError> {
    // `#12`, as the ids are printed, is accepted too.
    let digits = text.strip_prefix('#').unwrap_or(text);
    digits
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(JobId::from_i64)
        .ok_or_else(|| UsageError::InvalidValue {
            what: "job id",
            value: text.to_owned(),
            reason: "expected a positive whole number",
        })
}

fn parse_limit(text: &str) -> Result<u32, UsageError> {
    text.parse::<u32>()
        .ok()
        .filter(|limit| *limit > 0)
        .ok_or_else(|| UsageError::InvalidValue {
            what: "limit",
            value: text.to_owned(),
            reason: "expected a whole number from 1",
        })
}

fn parse_state(text: &str) -> Result<JobState, UsageError> {
    match text {
        "pending" => Ok(JobState::Pending),
        "running" => Ok(JobState::Running),
        "completed" => Ok(JobState::Completed),
        "cancelled" => Ok(JobState::Cancelled),
        _ => Err(UsageError::InvalidValue {
            what: "state",
            value: text.to_owned(),
            reason: "expected pending, running, completed or cancelled (dead jobs: `dead list`)",
        }),
    }
}

/// `90s`, `30m`, `12h`, `7d`, `2w`, or several together (`1d12h`).
fn parse_age(text: &str) -> Result<Duration, UsageError> {
    let invalid = || UsageError::InvalidValue {
        what: "duration",
        value: text.to_owned(),
        reason: "expected a number with a unit s, m, h, d or w, such as 30m or 7d",
    };
    let mut rest = text;
    let mut seconds: u64 = 0;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        let unit = rest[digits..].chars().next().ok_or_else(invalid)?;
        let size: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        seconds = number
            .checked_mul(size)
            .and_then(|part| seconds.checked_add(part))
            .ok_or_else(invalid)?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    Ok(Duration::from_secs(seconds))
}

/// Runs the command line of this process and returns its exit code.
#[must_use]
pub fn main() -> ExitCode {
    let args = std::env::args_os().skip(1);
    let env_database = std::env::var_os(DATABASE_ENV);
    let code = run(
        args,
        env_database,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    );
    ExitCode::from(code)
}

/// Runs a command line: output on `out`, errors on `err`. Returns the exit code (0, 1 or 2).
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    env_database: Option<OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    // Nothing more can be reported if stderr itself fails: the exit code still says it.
    match parse(args, env_database) {
        Err(error) => {
            let _ = writeln!(
                err,
                "palisade-jobs: {error}\nRun `palisade-jobs --help` for usage."
            );
            2
        }
        Ok(Invocation::Help) => finish(out.write_all(HELP.as_bytes()).map_err(CliError::Io), err),
        Ok(Invocation::Version) => finish(
            writeln!(out, "palisade-jobs {}", env!("CARGO_PKG_VERSION")).map_err(CliError::Io),
            err,
        ),
        Ok(Invocation::Run {
            target,
            command,
            json,
        }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match runtime {
                Ok(runtime) => runtime.block_on(async {
                    let jobs = open(&target).await?;
                    execute(&jobs, &command, json, out).await
                }),
                Err(error) => Err(CliError::Io(error)),
            };
            finish(result, err)
        }
    }
}

fn finish(result: Result<(), CliError>, err: &mut dyn Write) -> u8 {
    match result {
        Ok(()) => 0,
        Err(error) => {
            let _ = writeln!(err, "palisade-jobs: {error}");
            1
        }
    }
}

/// Opens the queue at `target`, refusing to create a SQLite file.
///
/// # Errors
///
/// [`CliError::MissingFile`], [`CliError::NotAFile`], [`CliError::FeatureMissing`], or the
/// store's error.
pub async fn open(target: &Target) -> Result<Jobs, CliError> {
    match target {
        Target::Sqlite(path) => {
            let metadata = match std::fs::metadata(path) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(CliError::MissingFile(path.clone()));
                }
                Err(error) => return Err(CliError::Io(error)),
            };
            if !metadata.is_file() {
                return Err(CliError::NotAFile(path.clone()));
            }
            Ok(Jobs::sqlite(path).await?)
        }
        #[cfg(feature = "postgres")]
        Target::Postgres(url) => Ok(Jobs::postgres(url).await?),
        #[cfg(not(feature = "postgres"))]
        Target::Postgres(url) => Err(CliError::FeatureMissing {
            scheme: url.split("://").next().unwrap_or("postgres").to_owned(),
            feature: "postgres",
        }),
    }
}

/// Runs `command` on `jobs`, writing to `out`.
///
/// # Errors
///
/// A [`CliError`] when the store fails, a job is missing, or `out` cannot be written.
pub async fn execute(
    jobs: &Jobs,
    command: &Command,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let now = SystemTime::now();
    match command {
        Command::Stats { queue } => {
            let mut stats = jobs.stats().await?;
            if let Some(queue) = queue {
                stats.retain(|stats| &stats.queue == queue);
            }
            if json {
                print_json(
                    out,
                    &Value::Array(stats.iter().map(|s| stats_json(s, now)).collect()),
                )
            } else {
                print_stats(out, &stats, now)
            }
        }
        Command::List(query) => {
            let records = jobs.list(query).await?;
            if json {
                print_json(
                    out,
                    &Value::Array(records.iter().map(record_json).collect()),
                )
            } else {
                print_records(out, &records)
            }
        }
        Command::Show(id) => match jobs.job(*id).await? {
            Some(record) if json => print_json(out, &record_json(&record)),
            Some(record) => print_record(out, &record),
            None => Err(CliError::NoJob(*id, jobs.dead_job(*id).await?.is_some())),
        },
        Command::DeadList(query) => {
            let dead = jobs.dead_jobs(query).await?;
            if json {
                print_json(out, &Value::Array(dead.iter().map(dead_json).collect()))
            } else {
                print_dead_list(out, &dead)
            }
        }
        Command::DeadShow(id) => match jobs.dead_job(*id).await? {
            Some(dead) if json => print_json(out, &dead_json(&dead)),
            Some(dead) => print_dead(out, &dead),
            None => Err(CliError::NoDeadJob(*id)),
        },
        Command::DeadReplay(ids) => {
            let mut problems = Vec::new();
            for id in ids {
                match jobs.replay(*id).await? {
                    Some(Enqueued::Created(id)) => writeln!(out, "replayed {id}")?,
                    Some(Enqueued::Existing(live)) => problems.push(blocked(*id, live)),
                    None => problems.push(format!("no dead job {id}")),
                }
            }
            partial(problems)
        }
        Command::DeadReplayAll { queue } => {
            let (mut replayed, mut problems) = (0_u64, Vec::new());
            let mut after = None;
            loop {
                let mut query = DeadQuery::new().limit(REPLAY_PAGE);
                query.queue.clone_from(queue);
                query.after = after;
                let page = jobs.dead_jobs(&query).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for dead in &page {
                    match jobs.replay(dead.id).await? {
                        Some(Enqueued::Created(_)) => replayed += 1,
                        Some(Enqueued::Existing(live)) => problems.push(blocked(dead.id, live)),
                        // Replayed or purged by someone else meanwhile.
                        None => {}
                    }
                }
            }
            writeln!(out, "replayed {replayed} dead job{}", plural(replayed))?;
            partial(problems)
        }
        Command::DeadPurge(ids) => {
            let mut problems = Vec::new();
            for id in ids {
                if jobs.purge_dead(*id).await? {
                    writeln!(out, "purged {id}")?;
                } else {
                    problems.push(format!("no dead job {id}"));
                }
            }
            partial(problems)
        }
        Command::DeadPurgeAll { queue } => {
            let purged = jobs.purge_all_dead(queue.as_deref()).await?;
            writeln!(out, "purged {purged} dead job{}", plural(purged))?;
            Ok(())
        }
        Command::DeadPurgeOlderThan { age, queue } => {
            let before = now.checked_sub(*age).unwrap_or(UNIX_EPOCH);
            let purged = jobs.purge_dead_before(before, queue.as_deref()).await?;
            writeln!(
                out,
                "purged {purged} dead job{} dead-lettered before {}",
                plural(purged),
                timestamp(before)
            )?;
            Ok(())
        }
        Command::Periodic => {
            let periodic = jobs.periodic_jobs().await?;
            if json {
                print_json(
                    out,
                    &Value::Array(periodic.iter().map(periodic_json).collect()),
                )
            } else {
                print_periodic(out, &periodic, now)
            }
        }
    }
}

fn blocked(id: JobId, live: JobId) -> String {
    format!("dead job {id} not replayed: the live job {live} holds its unique key")
}

fn partial(problems: Vec<String>) -> Result<(), CliError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Partial(problems.join("; ")))
    }
}

const fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn print_json(out: &mut dyn Write, value: &Value) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Writes rows as left-aligned columns, two spaces apart.
fn print_table(out: &mut dyn Write, rows: &[Vec<String>]) -> Result<(), CliError> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[column]);
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn print_stats(out: &mut dyn Write, stats: &[QueueStats], now: SystemTime) -> Result<(), CliError> {
    if stats.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "QUEUE",
            "PENDING",
            "SCHEDULED",
            "RUNNING",
            "COMPLETED",
            "CANCELLED",
            "DEAD",
            "OLDEST PENDING",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for queue in stats {
        rows.push(vec![
            queue.queue.clone(),
            queue.available.to_string(),
            queue.scheduled.to_string(),
            queue.running.to_string(),
            queue.completed.to_string(),
            queue.cancelled.to_string(),
            queue.dead.to_string(),
            queue
                .oldest_available
                .map_or_else(|| "-".to_owned(), |at| age(now, at)),
        ]);
    }
    print_table(out, &rows)
}

fn stats_json(stats: &QueueStats, now: SystemTime) -> Value {
    json!({
        "queue": stats.queue,
        "pending": stats.available,
        "scheduled": stats.scheduled,
        "running": stats.running,
        "completed": stats.completed,
        "cancelled": stats.cancelled,
        "dead": stats.dead,
        "oldest_pending_since": stats.oldest_available.map(timestamp),
        "oldest_pending_age_seconds": stats
            .oldest_available
            .map(|at| now.duration_since(at).unwrap_or_default().as_secs_f64()),
    })
}

fn print_records(out: &mut dyn Write, records: &[JobRecord]) -> Result<(), CliError> {
    if records.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "ID",
            "QUEUE",
            "TYPE",
            "STATE",
            "ATTEMPTS",
            "SCHEDULED",
            "LAST ERROR",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for record in records {
        rows.push(vec![
            record.id.to_string(),
            record.queue.clone(),
            record.kind.clone(),
            record.state.to_string(),
            format!("{}/{}", record.attempts, record.max_attempts),
            timestamp(record.scheduled_at),
            record
                .last_error
                .as_deref()
                .map_or_else(String::new, one_line),
        ]);
    }
    print_table(out, &rows)
}

fn print_record(out: &mut dyn Write, record: &JobRecord) -> Result<(), CliError> {
    let optional = |time: Option<SystemTime>| time.map_or_else(|| "-".to_owned(), timestamp);
    let rows = [
        ("id", record.id.to_string()),
        ("queue", record.queue.clone()),
        ("type", record.kind.clone()),
        ("state", record.state.to_string()),
        ("priority", record.priority.to_string()),
        (
            "attempts",
            format!("{}/{}", record.attempts, record.max_attempts),
        ),
        ("created", timestamp(record.created_at)),
        ("scheduled", timestamp(record.scheduled_at)),
        ("started", optional(record.started_at)),
        ("finished", optional(record.finished_at)),
        (
            "unique key",
            record.unique_key.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("lease token", record.lease_token.to_string()),
        (
            "last error",
            record.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("payload", record.payload.clone()),
    ];
    print_fields(out, &rows)
}

fn record_json(record: &JobRecord) -> Value {
    json!({
        "id": record.id.get(),
        "queue": record.queue,
        "type": record.kind,
        "state": record.state.as_str(),
        "priority": record.priority,
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "created_at": timestamp(record.created_at),
        "scheduled_at": timestamp(record.scheduled_at),
        "started_at": record.started_at.map(timestamp),
        "finished_at": record.finished_at.map(timestamp),
        "unique_key": record.unique_key,
        "last_error": record.last_error,
        "lease_token": record.lease_token,
        "payload": payload_json(&record.payload),
    })
}

fn print_dead_list(out: &mut dyn Write, dead: &[DeadJob]) -> Result<(), CliError> {
    if dead.is_empty() {
        writeln!(out, "no dead jobs")?;
        return Ok(());
    }
    let mut rows = vec![
        ["ID", "QUEUE", "TYPE", "ATTEMPTS", "FAILED", "LAST ERROR"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for job in dead {
        rows.push(vec![
            job.id.to_string(),
            job.queue.clone(),
            job.kind.clone(),
            format!("{}/{}", job.attempts, job.max_attempts),
            timestamp(job.failed_at),
            one_line(&job.last_error),
        ]);
    }
    print_table(out, &rows)
}

fn print_dead(out: &mut dyn Write, dead: &DeadJob) -> Result<(), CliError> {
    let rows = [
        ("id", dead.id.to_string()),
        ("queue", dead.queue.clone()),
        ("type", dead.kind.clone()),
        ("priority", dead.priority.to_string()),
        (
            "attempts",
            format!("{}/{}", dead.attempts, dead.max_attempts),
        ),
        ("created", timestamp(dead.created_at)),
        ("failed", timestamp(dead.failed_at)),
        (
            "unique key",
            dead.unique_key.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("last error", dead.last_error.clone()),
        ("payload", dead.payload.clone()),
    ];
    print_fields(out, &rows)
}

fn dead_json(dead: &DeadJob) -> Value {
    json!({
        "id": dead.id.get(),
        "queue": dead.queue,
        "type": dead.kind,
        "priority": dead.priority,
        "attempts": dead.attempts,
        "max_attempts": dead.max_attempts,
        "created_at": timestamp(dead.created_at),
        "failed_at": timestamp(dead.failed_at),
        "unique_key": dead.unique_key,
        "last_error": dead.last_error,
        "payload": payload_json(&dead.payload),
    })
}

fn print_periodic(
    out: &mut dyn Write,
    periodic: &[PeriodicRecord],
    now: SystemTime,
) -> Result<(), CliError> {
    if periodic.is_empty() {
        writeln!(out, "no periodic jobs")?;
        return Ok(());
    }
    let mut rows = vec![
        ["NAME", "SCHEDULE", "NEXT RUN", "LAST RUN", "LAST JOB"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for job in periodic {
        let next = match job.next_run_at.duration_since(now) {
            Ok(wait) => format!("{} (in {})", timestamp(job.next_run_at), short(wait)),
            Err(_) => format!("{} (due)", timestamp(job.next_run_at)),
        };
        rows.push(vec![
            job.name.clone(),
            job.schedule.clone(),
            next,
            job.last_run_at.map_or_else(|| "-".to_owned(), timestamp),
            job.last_job
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
        ]);
    }
    print_table(out, &rows)
}

fn periodic_json(job: &PeriodicRecord) -> Value {
    json!({
        "name": job.name,
        "schedule": job.schedule,
        "next_run_at": timestamp(job.next_run_at),
        "last_run_at": job.last_run_at.map(timestamp),
        "last_job": job.last_job.map(JobId::get),
    })
}

fn print_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> Result<(), CliError> {
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    for (name, value) in fields {
        writeln!(out, "{:<width$} {value}", format!("{name}:"), width = width)?;
    }
    Ok(())
}

/// A payload as JSON when it parses (it always does when enqueued through the typed API),
/// else as the text stored.
fn payload_json(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_owned()))
}

/// An error on one line, cut to [`ERROR_WIDTH`] characters.
fn one_line(error: &str) -> String {
    let flat: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= ERROR_WIDTH {
        flat
    } else {
        let mut cut: String = flat.chars().take(ERROR_WIDTH - 1).collect();
        cut.push('…');
        cut
    }
}

/// RFC 3339 in UTC, to the second: `2026-01-31T09:30:00Z`.
fn timestamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    let (year, month, day) = crate::schedule::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// How long ago `at` was, shortly.
fn age(now: SystemTime, at: SystemTime) -> String {
    short(now.duration_since(at).unwrap_or_default())
}

/// `45s`, `12m30s`, `3h5m`, `2d4h`.
fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3_600..86_400 => format!("{}h{}m", seconds / 3_600, seconds % 3_600 / 60),
        _ => format!("{}d{}h", seconds / 86_400, seconds % 86_400 / 3_600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    fn parse_line(line: &str) -> Result<Invocation, UsageError> {
        parse(args(line), None)
    }

    fn command_of(line: &str) -> Command {
        match parse_line(line) {
            Ok(Invocation::Run { command, .. }) => command,
            other => panic!("`{line}` parsed as {other:?}"),
        }
    }

    #[test]
    fn database_urls_pick_the_backend() {
        assert_eq!(
            Target::parse("sqlite://var/jobs.db?mode=rwc"),
            Target::Sqlite("var/jobs.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:jobs.db"),
            Target::Sqlite("jobs.db".into())
        );
        assert_eq!(
            Target::parse("/tmp/x.db"),
            Target::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            Target::parse("postgresql://u@h/db"),
            Target::Postgres("postgresql://u@h/db".into())
        );
        assert_eq!(
            Target::parse("postgres://u@h/db"),
            Target::Postgres("postgres://u@h/db".into())
        );
    }

    #[test]
    fn the_environment_names_the_database_unless_an_option_does() {
        let stats = |database: &str| Invocation::Run {
            target: Target::Sqlite(database.into()),
            command: Command::Stats { queue: None },
            json: false,
        };
        assert_eq!(
            parse(args("stats"), Some("env.db".into())),
            Ok(stats("env.db"))
        );
        assert_eq!(
            parse(args("--database=opt.db stats"), Some("env.db".into())),
            Ok(stats("opt.db"))
        );
        assert_eq!(parse_line("stats"), Err(UsageError::NoDatabase));
        assert_eq!(
            parse(args("stats"), Some(OsString::new())),
            Err(UsageError::NoDatabase)
        );
    }

    #[test]
    fn commands_and_their_options() {
        let list = command_of("-d j.db list --queue mail -s pending --after 7 -n 20 --json");
        let mut query = JobQuery::new()
            .queue("mail")
            .state(JobState::Pending)
            .after(JobId::from_i64(7));
        query.limit = Some(20);
        assert_eq!(list, Command::List(query));
        assert_eq!(
            command_of("-d j.db show #12"),
            Command::Show(JobId::from_i64(12))
        );
        assert_eq!(
            command_of("-d j.db dead replay 3 4"),
            Command::DeadReplay(vec![JobId::from_i64(3), JobId::from_i64(4)])
        );
        assert_eq!(
            command_of("-d j.db dead replay --all --queue mail --yes"),
            Command::DeadReplayAll {
                queue: Some("mail".into())
            }
        );
        assert_eq!(
            command_of("-d j.db dead purge --older-than 1d12h -y"),
            Command::DeadPurgeOlderThan {
                age: Duration::from_secs(36 * 3_600),
                queue: None
            }
        );
        assert_eq!(parse_line("--help"), Ok(Invocation::Help));
        assert_eq!(parse_line("dead purge --all --help"), Ok(Invocation::Help));
        assert_eq!(parse_line("-V"), Ok(Invocation::Version));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let cases: &[(&str, UsageError)] = &[
            ("-d j.db", UsageError::MissingCommand),
            (
                "-d j.db frobnicate",
                UsageError::UnknownCommand("frobnicate".into()),
            ),
            (
                "-d j.db dead frob",
                UsageError::UnknownCommand("dead frob".into()),
            ),
            ("-d j.db show", UsageError::MissingArgument("job id")),
            (
                "-d j.db stats extra",
                UsageError::UnexpectedArgument("extra".into()),
            ),
            (
                "-d j.db list --limit",
                UsageError::MissingValue("--limit".into()),
            ),
            (
                "-d j.db dead purge 3",
                UsageError::NotConfirmed("dead purge"),
            ),
            (
                "-d j.db dead replay --all",
                UsageError::NotConfirmed("dead replay --all"),
            ),
            (
                "-d j.db dead purge 3 --all --yes",
                UsageError::Conflict("give one of: dead job ids, --all, --older-than <duration>"),
            ),
            (
                "-d j.db show 4 --queue mail",
                UsageError::UnknownOption {
                    option: "--queue".into(),
                    command: "show 4".into(),
                },
            ),
            (
                "-d j.db stats --bogus",
                UsageError::UnknownOption {
                    option: "--bogus".into(),
                    command: "palisade-jobs".into(),
                },
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(&parse_line(line).unwrap_err(), expected, "`{line}`");
        }
        for line in [
            "-d j.db show 0",
            "-d j.db show -3",
            "-d j.db list -n 0",
            "-d j.db list -s dead",
            "-d j.db dead purge --older-than 7 --yes",
            "-d j.db dead purge --older-than 3x --yes",
            "-d j.db dead purge --older-than 99999999999999999999w --yes",
            "-d j.db --json=yes stats",
        ] {
            assert!(
                matches!(
                    parse_line(line),
                    Err(UsageError::InvalidValue { .. }) | Err(UsageError::UnknownOption { .. })
                ),
                "`{line}` parsed as {:?}",
                parse_line(line)
            );
        }
    }

    #[test]
    fn times_and_ages_print_shortly() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_772_271_000)),
            "2026-02-28T09:30:00Z"
        );
        assert_eq!(short(Duration::from_secs(59)), "59s");
        assert_eq!(short(Duration::from_secs(750)), "12m30s");
        assert_eq!(short(Duration::from_secs(3 * 3_600 + 300)), "3h5m");
        assert_eq!(short(Duration::from_secs(2 * 86_400 + 4 * 3_600)), "2d4h");
        let long = "x".repeat(100);
        assert_eq!(one_line(&long).chars().count(), ERROR_WIDTH);
        assert_eq!(one_line("a\nb"), "a b");
    }
}
