//! The `palisade-jobs` admin binary, run as a process against a SQLite file prepared through
//! the library, and against a private PostgreSQL.
#![cfg(feature = "cli")]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use palisade_jobs::store::Outcome;
use palisade_jobs::{DeadQuery, Job, JobId, JobState, Jobs, NewJob};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

impl Job for Email {
    const TYPE: &'static str = "send_email";
}

/// Runs the binary with `args` (and no database in the environment unless `env` gives one).
async fn cli(args: &[&str], env: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_palisade-jobs"));
    command.args(args).env_remove("PALISADE_JOBS_DATABASE");
    if let Some(database) = env {
        command.env("PALISADE_JOBS_DATABASE", database);
    }
    command.output().await.expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Moves every job of `queue` into the dead-letter table with `error`, as a worker does after
/// a last failed attempt.
async fn kill_queue(jobs: &Jobs, queue: &str, error: &str) -> Vec<JobId> {
    let claimed = jobs
        .store()
        .claim(queue, 100, Duration::from_secs(60))
        .await
        .unwrap();
    let outcomes: Vec<_> = claimed
        .iter()
        .map(|claim| Outcome::Dead {
            lease: claim.lease(),
            error: error.to_owned(),
        })
        .collect();
    jobs.store().finish(&outcomes).await.unwrap();
    claimed.iter().map(|claim| claim.id).collect()
}

/// The queue the tests look at: `mail` has two runnable jobs and a delayed one, `billing`
/// has two dead jobs (one with a long error) and a completed one.
struct Prepared {
    mail: Vec<JobId>,
    dead: Vec<JobId>,
}

async fn prepare(jobs: &Jobs) -> Prepared {
    let email = |to: &str| Email { to: to.to_owned() };
    let mail = vec![
        jobs.insert(
            NewJob::new(&email("ada@example.com"))
                .unwrap()
                .queue("mail"),
        )
        .await
        .unwrap()
        .id(),
        jobs.insert(
            NewJob::new(&email("bob@example.com"))
                .unwrap()
                .queue("mail"),
        )
        .await
        .unwrap()
        .id(),
        jobs.insert(
            NewJob::new(&email("eve@example.com"))
                .unwrap()
                .queue("mail")
                .run_in(Duration::from_secs(3_600)),
        )
        .await
        .unwrap()
        .id(),
    ];
    let billing = |to: &str| {
        NewJob::new(&email(to))
            .unwrap()
            .queue("billing")
            .max_attempts(1)
    };
    jobs.enqueue_batch(&[billing("x@example.com"), billing("y@example.com")])
        .await
        .unwrap();
    let long_error = format!("smtp: connection refused {}", "again ".repeat(30));
    let dead = kill_queue(jobs, "billing", &long_error).await;
    assert_eq!(dead.len(), 2);
    // A completed job in `billing`.
    let done = jobs.insert(billing("z@example.com")).await.unwrap().id();
    let claimed = jobs
        .store()
        .claim("billing", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, done);
    jobs.store()
        .finish(&[Outcome::Completed(claimed[0].lease())])
        .await
        .unwrap();
    Prepared { mail, dead }
}

/// A SQLite file with the prepared jobs, and the queue open on it.
async fn sqlite() -> (tempfile::TempDir, String, Jobs, Prepared) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let jobs = Jobs::sqlite(&path).await.unwrap();
    let prepared = prepare(&jobs).await;
    (dir, path.to_str().unwrap().to_owned(), jobs, prepared)
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("not JSON ({error}):\n{}", stdout(output));
    })
}

/// The checks of `stats`, the same on both backends.
async fn check_stats(database: &str) {
    let output = cli(&["--database", database, "stats"], None).await;
    assert_exit(&output, 0);
    let text = stdout(&output);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "QUEUE",
            "PENDING",
            "SCHEDULED",
            "RUNNING",
            "COMPLETED",
            "CANCELLED",
            "DEAD",
            "OLDEST",
            "PENDING"
        ]
    );
    // Queues in name order; billing has no runnable job, so no age.
    assert_eq!(lines[1], ["billing", "0", "0", "0", "1", "0", "2", "-"]);
    assert_eq!(lines[2][..7], ["mail", "2", "1", "0", "0", "0", "0"]);
    assert!(lines[2][7].ends_with('s'), "an age: {text}");
    assert_eq!(lines.len(), 3);

    let output = cli(&["--database", database, "stats", "--json"], None).await;
    assert_exit(&output, 0);
    let stats = json(&output);
    let mail = &stats[1];
    assert_eq!(mail["queue"], "mail");
    assert_eq!(
        (&mail["pending"], &mail["scheduled"], &mail["dead"]),
        (&Value::from(2), &Value::from(1), &Value::from(0))
    );
    assert!(mail["oldest_pending_age_seconds"].as_f64().unwrap() >= 0.0);
    assert!(stats[0]["oldest_pending_since"].is_null());

    let output = cli(
        &[
            "--database",
            database,
            "stats",
            "--queue",
            "billing",
            "--json",
        ],
        None,
    )
    .await;
    assert_exit(&output, 0);
    let stats = json(&output);
    assert_eq!(stats.as_array().unwrap().len(), 1);
    assert_eq!(stats[0]["dead"], 2);
}

/// The checks of `dead replay`, the same on both backends.
async fn check_dead_replay(database: &str, jobs: &Jobs, dead: &[JobId]) {
    let id = dead[0].get().to_string();
    let output = cli(&["--database", database, "dead", "replay", &id], None).await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), format!("replayed {}\n", dead[0]));
    let replayed = jobs.job(dead[0]).await.unwrap().expect("back in its queue");
    assert_eq!(
        (replayed.state, replayed.attempts, replayed.queue.as_str()),
        (JobState::Pending, 0, "billing")
    );
    assert!(jobs.dead_job(dead[0]).await.unwrap().is_none());

    // Replaying it again: it is no longer dead.
    let output = cli(&["--database", database, "dead", "replay", &id], None).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains(&format!("no dead job {}", dead[0])));

    // --all needs --yes, then takes the rest.
    let output = cli(&["--database", database, "dead", "replay", "--all"], None).await;
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("--yes"));
    assert_eq!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().len(), 1);
    let output = cli(
        &[
            "-d", database, "dead", "replay", "--all", "--queue", "billing", "--yes",
        ],
        None,
    )
    .await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), "replayed 1 dead job\n");
    assert!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().is_empty());
    assert_eq!(
        jobs.job(dead[1]).await.unwrap().map(|job| job.state),
        Some(JobState::Pending)
    );
}

#[tokio::test]
async fn stats_count_jobs_per_queue_and_state_on_sqlite() {
    let (_dir, path, _jobs, _) = sqlite().await;
    check_stats(&path).await;
    check_stats(&format!("sqlite://{path}")).await;
}

#[tokio::test]
async fn dead_replay_moves_jobs_back_on_sqlite() {
    let (_dir, path, jobs, prepared) = sqlite().await;
    check_dead_replay(&path, &jobs, &prepared.dead).await;
}

#[tokio::test]
async fn list_and_show_print_jobs() {
    let (_dir, path, jobs, prepared) = sqlite().await;
    let output = cli(&["list", "--queue", "mail"], Some(&path)).await;
    assert_exit(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("ID"));
    for (line, id) in lines[1..].iter().zip(&prepared.mail) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[..5],
            [&id.to_string(), "mail", "send_email", "pending", "0/5"]
        );
    }

    // One line per job, the error cut short.
    let output = cli(&["list", "--state", "completed", "-n", "1"], Some(&path)).await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output).lines().count(), 2);
    assert!(stdout(&output).contains("completed"));

    let output = cli(
        &["list", "--queue", "mail", "--limit", "2", "--json"],
        Some(&path),
    )
    .await;
    assert_exit(&output, 0);
    let listed = json(&output);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["id"], prepared.mail[0].get());
    assert_eq!(listed[0]["payload"]["to"], "ada@example.com");
    assert_eq!(listed[1]["state"], "pending");

    let id = prepared.mail[2].get().to_string();
    let output = cli(&["show", &id], Some(&path)).await;
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(text.contains("state:"), "{text}");
    assert!(text.contains(r#"{"to":"eve@example.com"}"#), "{text}");

    let output = cli(&["show", "99999"], Some(&path)).await;
    assert_exit(&output, 1);
    assert_eq!(stderr(&output), "palisade-jobs: no job #99999\n");
    let dead = prepared.dead[0].get().to_string();
    let output = cli(&["show", &dead], Some(&path)).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("it is dead"));

    // Read-only commands changed nothing.
    assert_eq!(jobs.stats().await.unwrap().len(), 2);
}

#[tokio::test]
async fn dead_list_show_and_purge() {
    let (_dir, path, jobs, prepared) = sqlite().await;
    let output = cli(&["-d", &path, "dead", "list"], None).await;
    assert_exit(&output, 0);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[1].contains("smtp: connection refused again"));
    assert!(lines[1].ends_with('…'), "the error is cut: {}", lines[1]);
    assert!(lines[1].contains("1/1"));

    let dead = prepared.dead[1].get().to_string();
    let output = cli(&["-d", &path, "dead", "show", &dead, "--json"], None).await;
    assert_exit(&output, 0);
    let shown = json(&output);
    assert_eq!(shown["id"], prepared.dead[1].get());
    assert_eq!(shown["payload"]["to"], "y@example.com");
    assert!(shown["last_error"].as_str().unwrap().len() > 100);

    // Purging asks for --yes and, without it, deletes nothing.
    let output = cli(&["-d", &path, "dead", "purge", &dead], None).await;
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("add --yes to confirm"));
    assert_eq!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().len(), 2);

    let output = cli(&["-d", &path, "dead", "purge", &dead, "--yes"], None).await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), format!("purged {}\n", prepared.dead[1]));
    assert!(jobs.dead_job(prepared.dead[1]).await.unwrap().is_none());

    // Dead for less than a day: not purged by age; everything is older than 0s.
    let output = cli(
        &["-d", &path, "dead", "purge", "--older-than", "1d", "--yes"],
        None,
    )
    .await;
    assert_exit(&output, 0);
    assert!(stdout(&output).starts_with("purged 0 dead jobs dead-lettered before "));
    assert_eq!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().len(), 1);
    let output = cli(
        &["-d", &path, "dead", "purge", "--older-than=0s", "--yes"],
        None,
    )
    .await;
    assert_exit(&output, 0);
    assert!(stdout(&output).starts_with("purged 1 dead job dead-lettered before "));

    kill_queue(&jobs, "mail", "boom").await;
    let output = cli(
        &[
            "-d", &path, "dead", "purge", "--all", "--queue", "mail", "--yes",
        ],
        None,
    )
    .await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), "purged 2 dead jobs\n");
    let output = cli(&["-d", &path, "dead", "list", "--json"], None).await;
    assert_exit(&output, 0);
    assert_eq!(json(&output), Value::Array(Vec::new()));
}

#[tokio::test]
async fn periodic_lists_schedules() {
    let (_dir, path, jobs, _) = sqlite().await;
    let output = cli(&["-d", &path, "periodic"], None).await;
    assert_exit(&output, 0);
    assert_eq!(stdout(&output), "no periodic jobs\n");

    // 2030-01-01T02:00:00Z.
    let next = std::time::UNIX_EPOCH + Duration::from_secs(1_893_463_200);
    jobs.store()
        .periodic_next("nightly-report", "0 2 * * *", next)
        .await
        .unwrap();
    let output = cli(&["-d", &path, "periodic"], None).await;
    assert_exit(&output, 0);
    let text = stdout(&output);
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with("nightly-report  0 2 * * *  2030-01-01T02:00:00Z (in "),
        "{text}"
    );
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[fields.len() - 2..], ["-", "-"], "never ran: {text}");

    let output = cli(&["-d", &path, "periodic", "--json"], None).await;
    assert_exit(&output, 0);
    let periodic = json(&output);
    assert_eq!(periodic[0]["next_run_at"], "2030-01-01T02:00:00Z");
    assert!(periodic[0]["last_run_at"].is_null());
}

#[tokio::test]
async fn a_missing_database_file_is_an_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let missing_text = missing.to_str().unwrap();
    for database in [missing_text.to_owned(), format!("sqlite://{missing_text}")] {
        let output = cli(&["--database", &database, "stats"], None).await;
        assert_exit(&output, 1);
        assert!(
            stderr(&output).contains("does not exist"),
            "{}",
            stderr(&output)
        );
        assert!(!Path::new(&missing).exists(), "the file was created");
    }
    // A directory is not a database either.
    let output = cli(&["stats"], Some(dir.path().to_str().unwrap())).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("is not a file"));
}

#[tokio::test]
async fn usage_errors_exit_with_2_and_help_with_0() {
    let output = cli(&["stats"], None).await;
    assert_exit(&output, 2);
    assert!(stderr(&output).contains("PALISADE_JOBS_DATABASE"));

    for args in [
        &["-d", "x.db"][..],
        &["-d", "x.db", "restart"],
        &["-d", "x.db", "show", "abc"],
        &["-d", "x.db", "list", "--state", "dead"],
        &["-d", "x.db", "dead", "purge", "--all"],
        &["-d", "x.db", "stats", "--limit", "3"],
    ] {
        let output = cli(args, None).await;
        assert_exit(&output, 2);
        assert!(stderr(&output).contains("for usage"), "{}", stderr(&output));
        assert!(output.stdout.is_empty());
    }

    let output = cli(&["--help"], None).await;
    assert_exit(&output, 0);
    assert!(stdout(&output).starts_with("palisade-jobs: inspect and manage"));
    assert!(stdout(&output).contains("dead purge --older-than <duration> --yes"));
    let output = cli(&["help"], None).await;
    assert_exit(&output, 0);
    let output = cli(&["--version"], None).await;
    assert_exit(&output, 0);
    assert_eq!(
        stdout(&output),
        format!("palisade-jobs {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[cfg(not(feature = "postgres"))]
#[tokio::test]
async fn postgres_urls_name_the_missing_feature() {
    let output = cli(&["-d", "postgres://localhost/jobs", "stats"], None).await;
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("`postgres` feature"));
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use palisade_jobs::Enqueued;
    use palisade_testkit::PostgresServer;

    async fn database() -> Option<(PostgresServer, String, Jobs, Prepared)> {
        let server = tokio::task::spawn_blocking(PostgresServer::start_or_skip)
            .await
            .unwrap()?;
        let url = server.fresh_database().await.unwrap();
        let jobs = Jobs::postgres(&url).await.unwrap();
        let prepared = prepare(&jobs).await;
        Some((server, url, jobs, prepared))
    }

    #[tokio::test]
    async fn stats_count_jobs_per_queue_and_state_on_postgres() {
        let Some((_server, url, _jobs, _)) = database().await else {
            return;
        };
        check_stats(&url).await;
    }

    #[tokio::test]
    async fn dead_replay_moves_jobs_back_on_postgres() {
        let Some((_server, url, jobs, prepared)) = database().await else {
            return;
        };
        check_dead_replay(&url, &jobs, &prepared.dead).await;
        // And a unique key held by a live job blocks a replay, which says so.
        let keyed = jobs
            .insert(
                NewJob::new(&Email {
                    to: "k@example.com".into(),
                })
                .unwrap()
                .queue("keyed")
                .max_attempts(1)
                .unique_key("k"),
            )
            .await
            .unwrap()
            .id();
        kill_queue(&jobs, "keyed", "boom").await;
        let live = jobs
            .insert(
                NewJob::new(&Email {
                    to: "k@example.com".into(),
                })
                .unwrap()
                .unique_key("k"),
            )
            .await
            .unwrap();
        assert!(matches!(live, Enqueued::Created(_)));
        let id = keyed.get().to_string();
        let output = cli(&["-d", &url, "dead", "replay", &id], None).await;
        assert_exit(&output, 1);
        assert!(
            stderr(&output).contains("holds its unique key"),
            "{}",
            stderr(&output)
        );
        assert!(jobs.dead_job(keyed).await.unwrap().is_some());
    }
}
