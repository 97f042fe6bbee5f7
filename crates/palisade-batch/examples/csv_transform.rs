//! CSV to JSON lines (or CSV), optionally gzip, with a progress bar and a summary.
//!
//! ```text
//! cargo run --release -p palisade-batch --example csv_transform -- IN.csv OUT.jsonl.gz
//! ```
//!
//! The output format follows the name: `.csv` or `.csv.gz` writes CSV, anything else JSON
//! lines; a `.gz` ending compresses. Every column is kept with its surrounding spaces
//! trimmed, and rows whose fields are all empty are filtered out. With feature `progress`
//! (on with `--all-features`) a bar follows the bytes read.

use std::process::ExitCode;

use palisade_batch::csv::Row;
use palisade_batch::pipeline::{
    Emit, Fields, Format, Pipeline, PipelineEvent, PipelineProgress, RowFailure,
};
use palisade_core::event::listener_fn;

/// Trims every field; filters out rows that are all blank.
fn trim(row: Row<'_>, out: &mut Fields) -> Result<Emit, std::convert::Infallible> {
    let mut blank = true;
    for (name, value) in row.pairs() {
        let value = value.trim();
        blank &= value.is_empty();
        out.push(name, value);
    }
    Ok(if blank { Emit::Skip } else { Emit::Row })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: csv_transform IN.csv OUT.jsonl[.gz] | OUT.csv[.gz]");
        return ExitCode::from(2);
    };
    let gzip = output.ends_with(".gz");
    let format = if output.trim_end_matches(".gz").ends_with(".csv") {
        Format::Csv
    } else {
        Format::JsonLines
    };
    let opened = async {
        let reader = tokio::fs::File::open(input).await?;
        let size = reader.metadata().await?.len();
        let writer = tokio::fs::File::create(output).await?;
        Ok::<_, std::io::Error>((reader, size, writer))
    };
    let (reader, size, writer) = match opened.await {
        Ok(files) => files,
        Err(e) => {
            eprintln!("csv_transform: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bar = progress_bar(size);

    let mut shown = 0;
    let pipeline = Pipeline::new(trim)
        .format(format)
        .on_error(|failure: &RowFailure| {
            // The summary keeps the first failures; show a few as they happen.
            if shown < 5 {
                shown += 1;
                bar.println(format!("bad row: {failure}"));
            }
        })
        .listener(listener_fn(|event: &PipelineEvent| {
            if let PipelineEvent::Progress(p) = event {
                bar.update(p);
            }
        }));
    let pipeline = if gzip { pipeline.gzip(6) } else { pipeline };
    let started = std::time::Instant::now();
    let result = pipeline.run(reader, writer).await;
    bar.finish();
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("csv_transform: {e}");
            return ExitCode::FAILURE;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rows in {}, out {}, filtered {}, failed {}",
        summary.rows_in, summary.rows_out, summary.filtered, summary.failed
    );
    println!(
        "{:.1} MB in, {:.1} MB out in {secs:.2} s ({:.0} MB/s); at most {} KiB buffered",
        summary.bytes_in as f64 / 1e6,
        summary.bytes_out as f64 / 1e6,
        summary.bytes_in as f64 / 1e6 / secs.max(1e-9),
        summary.peak_buffered / 1024
    );
    if summary.failed > 0 {
        let lines: Vec<String> = summary
            .failures
            .iter()
            .take(20)
            .map(|f| f.line.to_string())
            .collect();
        let more = if summary.failed > 20 { ", ..." } else { "" };
        println!("failed lines: {}{more}", lines.join(", "));
        for failure in summary.failures.iter().take(20) {
            println!("  {failure}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(feature = "progress")]
struct Bar(indicatif::ProgressBar);

#[cfg(feature = "progress")]
fn progress_bar(size: u64) -> Bar {
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
    ) {
        bar.set_style(style);
    }
    Bar(bar)
}

#[cfg(feature = "progress")]
impl Bar {
    fn update(&self, p: &PipelineProgress) {
        self.0.set_position(p.bytes_in);
        self.0
            .set_message(format!("{} rows, {} failed", p.rows_in, p.failed));
    }

    fn println(&self, line: String) {
        self.0.println(line);
    }

    fn finish(&self) {
        self.0.finish();
    }
}

#[cfg(not(feature = "progress"))]
struct Bar;

#[cfg(not(feature = "progress"))]
fn progress_bar(_size: u64) -> Bar {
    Bar
}

#[cfg(not(feature = "progress"))]
impl Bar {
    fn update(&self, _p: &PipelineProgress) {}

    fn println(&self, line: String) {
        eprintln!("{line}");
    }

    fn finish(&self) {}
}
