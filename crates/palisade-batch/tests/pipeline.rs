//! `Pipeline`: transforms, the error sink and limit, both formats, gzip, backpressure and
//! flat memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_batch::csv::{CsvReader, Record, Row};
use palisade_batch::pipeline::{
    Emit, FailureReason, Fields, Format, Pipeline, PipelineError, PipelineEvent, RowFailure,
};
use palisade_core::event::listener_fn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const HEADER: &str = "id,name,city,note\n";

/// Row `i` of the generated table: quoted fields with commas and escaped quotes.
fn row(i: u64) -> String {
    format!("{i},User {i},\"London, UK\",\"said \"\"hi\"\", twice\"\n")
}

/// A CSV input of `rows` rows made as it is read, so the test holds none of it.
struct Generated {
    next: u64,
    rows: u64,
    pending: Vec<u8>,
    at: usize,
}

impl Generated {
    fn new(rows: u64) -> Self {
        Self {
            next: 0,
            rows,
            pending: HEADER.as_bytes().to_vec(),
            at: 0,
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while buf.remaining() > 0 {
            if this.at == this.pending.len() {
                if this.next == this.rows {
                    break;
                }
                this.pending.clear();
                this.pending.extend_from_slice(row(this.next).as_bytes());
                this.at = 0;
                this.next += 1;
            }
            let n = buf.remaining().min(this.pending.len() - this.at);
            buf.put_slice(&this.pending[this.at..this.at + n]);
            this.at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// A writer that counts bytes and checks each line is a JSON object of the generated row.
#[derive(Default)]
struct Counting {
    bytes: u64,
    lines: u64,
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.bytes += buf.len() as u64;
        self.lines += memchr_count(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn memchr_count(buf: &[u8]) -> u64 {
    buf.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Keeps adults, fails rows whose age is not a number.
fn adults(row: Row<'_>, out: &mut Fields) -> Result<Emit, String> {
    let age = row.get("age").unwrap_or_default();
    let years: u32 = age
        .parse()
        .map_err(|_| format!("age {age:?} is not a number"))?;
    if years < 18 {
        return Ok(Emit::Skip);
    }
    out.push("name", row.get("name").unwrap_or_default());
    out.push_raw("age", age);
    Ok(Emit::Row)
}

const PEOPLE: &str = "name,age\n\
    Ada,36\n\
    Bob,x\n\
    Cy,17\n\
    \"Dee, \"\"D\"\"\",40\n\
    Eve,50,extra\n\
    Fay,\"2\"1\n\
    Gus,99\n";

#[tokio::test]
async fn every_column_is_kept_as_json_with_escapes() {
    let input = "a,b\n\"x \"\"q\"\"\",\"back\\slash\nnew\tline\"\n1,\u{1}é\n";
    let mut output = Vec::new();
    let summary = Pipeline::keep_all()
        .run(input.as_bytes(), &mut output)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(output).unwrap(),
        "{\"a\":\"x \\\"q\\\"\",\"b\":\"back\\\\slash\\nnew\\tline\"}\n\
         {\"a\":\"1\",\"b\":\"\\u0001é\"}\n"
    );
    assert_eq!((summary.rows_in, summary.rows_out), (2, 2));
    assert_eq!(summary.bytes_in, input.len() as u64);
}

#[tokio::test]
async fn rows_are_mapped_filtered_or_failed_and_failures_keep_their_lines() {
    let mut sunk = Vec::new();
    let mut output = Vec::new();
    let summary = Pipeline::new(adults)
        .on_error(|failure: &RowFailure| sunk.push(failure.to_string()))
        .run(PEOPLE.as_bytes(), &mut output)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(output).unwrap(),
        "{\"name\":\"Ada\",\"age\":36}\n\
         {\"name\":\"Dee, \\\"D\\\"\",\"age\":40}\n\
         {\"name\":\"Gus\",\"age\":99}\n"
    );
    assert_eq!(summary.rows_in, 7);
    assert_eq!(summary.rows_out, 3);
    assert_eq!(summary.filtered, 1);
    assert_eq!(summary.failed, 3);
    let lines: Vec<u64> = summary.failures.iter().map(|f| f.line).collect();
    assert_eq!(lines, [3, 6, 7]);
    assert!(matches!(
        summary.failures[0].reason,
        FailureReason::Transform(_)
    ));
    assert!(matches!(summary.failures[1].reason, FailureReason::Csv(_)));
    assert_eq!(
        sunk,
        [
            "line 3: age \"x\" is not a number",
            "line 6: expected 2 fields, found 3",
            "line 7, field 2: text after a closing quote",
        ]
    );
}

#[tokio::test]
async fn the_run_stops_past_the_error_limit() {
    let err = Pipeline::new(adults)
        .error_limit(2)
        .run(PEOPLE.as_bytes(), Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::TooManyErrors { limit: 2, line: 7 }),
        "{err}"
    );
    let summary = Pipeline::new(adults)
        .error_limit(3)
        .run(PEOPLE.as_bytes(), Vec::new())
        .await
        .unwrap();
    assert_eq!(summary.failed, 3);
}

#[tokio::test]
async fn csv_output_quotes_what_needs_it_and_reads_back() {
    let input = "id,text\n1,\"a, b\"\n2,\"say \"\"x\"\"\"\n3,\"two\nlines\"\n4,plain\n";
    let mut output = Vec::new();
    let summary = Pipeline::keep_all()
        .format(Format::Csv)
        .run(input.as_bytes(), &mut output)
        .await
        .unwrap();
    assert_eq!(summary.rows_out, 4);
    let text = String::from_utf8(output).unwrap();
    assert!(text.starts_with("id,text\r\n1,\"a, b\"\r\n"), "{text}");
    let mut reader = CsvReader::new(text.as_bytes());
    let mut record = Record::new();
    let mut texts = Vec::new();
    while reader.read_record(&mut record).await.unwrap() {
        texts.push(record.get(1).unwrap().to_owned());
    }
    assert_eq!(texts, ["a, b", "say \"x\"", "two\nlines", "plain"]);
}

#[tokio::test]
async fn memory_stays_flat_on_a_large_input() {
    // About 12 MB in, 17 MB out: far more than the pipeline may hold.
    let rows = 250_000;
    let mut output = Counting::default();
    let summary = Pipeline::keep_all()
        .run(Generated::new(rows), &mut output)
        .await
        .unwrap();
    assert_eq!(summary.rows_out, rows);
    assert_eq!(output.lines, rows);
    assert!(summary.bytes_in > 10_000_000);
    assert_eq!(summary.bytes_out, output.bytes);
    // 256 KiB read buffer + 6 chunks of 80 KiB + a record and a row: under 1 MiB.
    assert!(
        summary.peak_buffered < 1024 * 1024,
        "peak {} bytes",
        summary.peak_buffered
    );
}

#[tokio::test]
async fn peak_buffered_does_not_grow_with_the_input() {
    let mut peaks = Vec::new();
    for rows in [20_000, 100_000] {
        let summary = Pipeline::keep_all()
            .run(Generated::new(rows), Counting::default())
            .await
            .unwrap();
        peaks.push(summary.peak_buffered);
    }
    assert_eq!(peaks[0], peaks[1]);
}

/// Accepts `budget` bytes, then fails.
struct Failing {
    budget: usize,
}

impl AsyncWrite for Failing {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.budget == 0 {
            return Poll::Ready(Err(io::Error::other("disk full")));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_writer_stops_the_run_with_its_error() {
    let err = Pipeline::keep_all()
        .run(Generated::new(100_000), Failing { budget: 200_000 })
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::Write(_)), "{err}");
}

#[tokio::test]
async fn an_unreadable_input_is_a_read_error() {
    let err = Pipeline::keep_all()
        .run(&b""[..], Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::Read(_)), "{err}");
    let err = Pipeline::keep_all()
        .run(&b"a\n\"open"[..], Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::Read(_)), "{err}");
}

#[tokio::test]
async fn progress_is_reported_and_reaches_the_end() {
    let seen = std::sync::Mutex::new(Vec::new());
    let summary = Pipeline::keep_all()
        .chunk_size(4096)
        .listener(listener_fn(|event: &PipelineEvent| {
            seen.lock().unwrap().push(*event);
        }))
        .run(Generated::new(10_000), Counting::default())
        .await
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let (last, progress) = seen.split_last().unwrap();
    assert!(progress.len() > 10);
    let progress: Vec<_> = progress
        .iter()
        .map(|event| match event {
            PipelineEvent::Progress(p) => *p,
            other => panic!("not progress: {other:?}"),
        })
        .collect();
    assert!(progress.windows(2).all(|w| w[0].rows_in <= w[1].rows_in));
    let PipelineEvent::Finished(last) = last else {
        panic!("the last event is not the end: {last:?}");
    };
    assert_eq!(last.rows_in, summary.rows_in);
    assert_eq!(last.rows_out, summary.rows_out);
    assert_eq!(last.bytes_in, summary.bytes_in);
}

#[tokio::test]
async fn failed_rows_and_the_error_limit_are_events() {
    let seen = std::sync::Mutex::new(Vec::new());
    let err = Pipeline::keep_all()
        .error_limit(1)
        .listener(listener_fn(|event: &PipelineEvent| {
            seen.lock().unwrap().push(*event);
        }))
        .run(&b"a,b\n1,2\n3\n4,5\n6\n7,8\n"[..], Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::TooManyErrors { limit: 1, line: 5 }),
        "{err}"
    );
    assert_eq!(
        seen.into_inner().unwrap(),
        [
            PipelineEvent::RowFailed { line: 3 },
            PipelineEvent::RowFailed { line: 5 },
            PipelineEvent::TooManyErrors { limit: 1, line: 5 },
        ]
    );
}

/// Whether a tool this machine is expected to have is missing: skip with a reason, or fail
/// under `PALISADE_REQUIRE_SERVICES=1`.
#[cfg(feature = "gzip")]
fn missing(tool: &str, status: io::Result<std::process::ExitStatus>) -> bool {
    match status {
        Ok(_) => false,
        Err(e) => {
            assert!(
                std::env::var_os("PALISADE_REQUIRE_SERVICES").is_none_or(|v| v != "1"),
                "{tool} is required (PALISADE_REQUIRE_SERVICES=1) but cannot run: {e}"
            );
            eprintln!("skipped: {tool} cannot run here: {e}");
            true
        }
    }
}

#[cfg(feature = "gzip")]
#[tokio::test]
async fn gzip_output_is_complete_for_gzip_and_python() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("palisade-batch-gzip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("out.jsonl.gz");
    let csv = dir.join("out.csv.gz");
    let rows = 20_000;

    let file = tokio::fs::File::create(&jsonl).await.unwrap();
    let summary = Pipeline::keep_all()
        .gzip(6)
        .run(Generated::new(rows), file)
        .await
        .unwrap();
    assert_eq!(summary.rows_out, rows);
    assert_eq!(summary.bytes_out, std::fs::metadata(&jsonl).unwrap().len());
    let file = tokio::fs::File::create(&csv).await.unwrap();
    Pipeline::keep_all()
        .format(Format::Csv)
        .gzip(1)
        .run(Generated::new(rows), file)
        .await
        .unwrap();

    let status = Command::new("gzip")
        .arg("-t")
        .arg(&jsonl)
        .arg(&csv)
        .status();
    if !missing(
        "gzip",
        status
            .as_ref()
            .map(|s| *s)
            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
    ) {
        assert!(status.unwrap().success(), "gzip -t rejected the output");
    }

    let script = "import csv, gzip, json, sys\n\
        rows = list(csv.reader(gzip.open(sys.argv[1], 'rt', newline='')))\n\
        lines = [json.loads(l) for l in gzip.open(sys.argv[2], 'rt')]\n\
        print(len(rows), rows[0], rows[-1][2], rows[-1][3], len(lines), lines[-1]['note'])\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&csv)
        .arg(&jsonl)
        .output();
    let status = out
        .as_ref()
        .map(|o| o.status)
        .map_err(|e| io::Error::new(e.kind(), e.to_string()));
    if !missing("python3", status) {
        let out = out.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "{} ['id', 'name', 'city', 'note'] London, UK said \"hi\", twice {rows} said \"hi\", twice",
                rows + 1
            )
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
