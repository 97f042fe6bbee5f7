//! `palisade-batch`: CSV -> JSON lines throughput beside a synchronous `csv` + `serde_json`
//! loop (the floor), gzip on and off (beside flate2 on the same zlib-rs backend), peak RSS,
//! and the per-item cost of `Batch` beside `futures`' `buffer_unordered`.
//!
//! The input is a generated CSV file of 10 columns with quoted fields holding commas and
//! escaped quotes, `DEFAULT_MB` (200) MB as the issue asks; `PALISADE_BATCH_BENCH_MB` makes
//! it smaller for a quick run. It is written once to the temporary directory and reused.
//!
//! ```text
//! PALISADE_BATCH_BENCH_MB=20 cargo bench -p palisade-benches --features batch --bench batch \
//!     -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Peak RSS (`VmHWM`, reset through `/proc/self/clear_refs` before each variant) is printed
//! before the timed groups, for one pass of each variant.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use palisade_batch::pipeline::Pipeline;
use palisade_batch::{Batch, Order};
use serde::ser::{Serialize, Serializer};
use tokio::io::AsyncWrite;

/// The input size the issue asks for, in MB.
const DEFAULT_MB: u64 = 200;
/// gzip level for both sides: flate2's default.
const GZIP_LEVEL: u32 = 6;
/// Items per `Batch` / `buffer_unordered` run, and the concurrency limit.
const ITEMS: u64 = 10_000;
const CONCURRENCY: usize = 16;

fn input_mb() -> u64 {
    std::env::var("PALISADE_BATCH_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MB)
}

/// Writes (once) and returns the generated input file and its size.
fn input_file() -> (PathBuf, u64) {
    let mb = input_mb();
    let path = std::env::temp_dir().join(format!("palisade-batch-bench-{mb}mb.csv"));
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.len() >= mb * 1_000_000
    {
        return (path, meta.len());
    }
    let mut out = BufWriter::new(File::create(&path).expect("create the bench input"));
    out.write_all(b"id,name,email,city,amount,date,status,note,score,active\n")
        .expect("write");
    let mut written = 0u64;
    let mut i = 0u64;
    while written < mb * 1_000_000 {
        let row = format!(
            "{i},User {i},user{i}@example.com,\"London, UK\",{}.{:02},2024-01-{:02},shipped,\"said \"\"hi\"\", then left, twice\",{},{}\n",
            i % 1000,
            i % 100,
            1 + i % 28,
            i % 97,
            i.is_multiple_of(2)
        );
        out.write_all(row.as_bytes()).expect("write");
        written += row.len() as u64;
        i += 1;
    }
    out.flush().expect("flush");
    let size = std::fs::metadata(&path).expect("stat").len();
    (path, size)
}

/// A writer that keeps nothing and counts bytes.
#[derive(Default)]
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncWrite for Count {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One row as a JSON object keyed by the header, serialized without building a map.
struct RowRef<'a>(&'a csv::StringRecord, &'a csv::StringRecord);

impl Serialize for RowRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().zip(self.1.iter()))
    }
}

/// The floor: a synchronous loop with the `csv` crate and `serde_json`. Returns the rows.
fn floor(path: &PathBuf, gzip: bool) -> u64 {
    let file = File::open(path).expect("open");
    let mut reader = csv::ReaderBuilder::new()
        .buffer_capacity(256 * 1024)
        .from_reader(file);
    let headers = reader.headers().expect("header").clone();
    let mut record = csv::StringRecord::new();
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(
            BufWriter::with_capacity(64 * 1024, Count::default()),
            flate2::Compression::new(GZIP_LEVEL),
        );
        let rows = write_rows(
            &mut reader,
            &headers,
            &mut record,
            &mut BufWriter::with_capacity(64 * 1024, &mut encoder),
        );
        black_box(encoder.finish().expect("gzip trailer"));
        rows
    } else {
        let mut out = BufWriter::with_capacity(64 * 1024, Count::default());
        let rows = write_rows(&mut reader, &headers, &mut record, &mut out);
        black_box(out.get_ref().0);
        rows
    }
}

/// The floor's loop, monomorphized for its writer (serde_json writes many small pieces).
fn write_rows<W: Write>(
    reader: &mut csv::Reader<File>,
    headers: &csv::StringRecord,
    record: &mut csv::StringRecord,
    out: &mut W,
) -> u64 {
    let mut rows = 0;
    while reader.read_record(record).expect("a good record") {
        serde_json::to_writer(&mut *out, &RowRef(headers, record)).expect("json");
        out.write_all(b"\n").expect("write");
        rows += 1;
    }
    out.flush().expect("flush");
    rows
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// The pipeline, reading the file through tokio. Returns the rows.
fn pipeline(rt: &tokio::runtime::Runtime, path: &PathBuf, gzip: bool) -> u64 {
    rt.block_on(async {
        let file = tokio::fs::File::open(path).await.expect("open");
        let pipeline = Pipeline::keep_all();
        let pipeline = if gzip {
            pipeline.gzip(GZIP_LEVEL)
        } else {
            pipeline
        };
        let summary = pipeline.run(file, Count::default()).await.expect("run");
        assert_eq!(summary.failed, 0);
        summary.rows_out
    })
}

/// Peak resident memory while `run` runs, in MB: `VmHWM` after resetting it.
fn peak_rss_mb(run: impl FnOnce() -> u64) -> (f64, f64) {
    let read_kb = |field: &str| -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    // Resets VmHWM to the current RSS (Linux 4.0 and later).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = read_kb("VmRSS:").unwrap_or(f64::NAN) / 1024.0;
    black_box(run());
    let peak = read_kb("VmHWM:").unwrap_or(f64::NAN) / 1024.0;
    (before, peak)
}

fn csv_to_jsonl(c: &mut Criterion) {
    let (path, size) = input_file();
    let rt = runtime();
    assert_eq!(floor(&path, false), pipeline(&rt, &path, false));
    for (name, gzip) in [("plain", false), ("gzip", true)] {
        let (before, peak) = peak_rss_mb(|| floor(&path, gzip));
        println!(
            "peak RSS, csv + serde_json ({name}): {peak:.1} MB (process before: {before:.1} MB)"
        );
        let (before, peak) = peak_rss_mb(|| pipeline(&rt, &path, gzip));
        println!(
            "peak RSS, palisade pipeline ({name}): {peak:.1} MB (process before: {before:.1} MB)"
        );
    }

    for (name, gzip) in [("csv_to_jsonl", false), ("csv_to_jsonl_gzip", true)] {
        let mut group = c.benchmark_group(format!("batch/{name}"));
        group.throughput(Throughput::Bytes(size));
        group.sample_size(10);
        group.bench_function("csv+serde_json (floor)", |b| {
            b.iter(|| black_box(floor(&path, gzip)));
        });
        group.bench_function("palisade pipeline", |b| {
            b.iter(|| black_box(pipeline(&rt, &path, gzip)));
        });
        group.finish();
    }
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let limit = NonZeroUsize::new(CONCURRENCY).expect("non-zero");
    let mut group = c.benchmark_group("batch/overhead");
    group.throughput(Throughput::Elements(ITEMS));
    group.bench_function("buffer_unordered", |b| {
        b.iter(|| {
            rt.block_on(async {
                let results: Vec<Result<u64, ()>> = futures_util::stream::iter(0..ITEMS)
                    .map(|n| async move { Ok::<_, ()>(black_box(n) + 1) })
                    .buffer_unordered(CONCURRENCY)
                    .collect()
                    .await;
                black_box(results.len())
            })
        });
    });
    group.bench_function("process_batch", |b| {
        b.iter(|| {
            rt.block_on(async {
                let report = Batch::new(limit)
                    .order(Order::Completion)
                    .run(0..ITEMS, async |n: &u64| Ok::<_, ()>(black_box(*n) + 1))
                    .await;
                black_box(report.succeeded.len())
            })
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(10));
    targets = csv_to_jsonl, overhead
}
criterion_main!(benches);
