//! Reading CSV and running a pipeline allocate nothing per row: the count of allocations
//! does not grow with the input.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use palisade_batch::csv::{CsvReader, Record};
use palisade_batch::pipeline::{Format, Pipeline};
use palisade_testkit::alloc::{CountingAllocator, allocations};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn table(rows: u64) -> Vec<u8> {
    let mut out = String::from("id,name,city,note\r\n");
    for i in 0..rows {
        out.push_str(&format!(
            "{i},User {i},\"London, UK\",\"said \"\"hi\"\", twice\"\r\n"
        ));
    }
    out.into_bytes()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Allocations made by `run` on this thread.
fn counted(run: impl FnOnce()) -> usize {
    let before = allocations();
    run();
    allocations() - before
}

#[test]
fn reading_records_allocates_nothing_per_record() {
    let rt = runtime();
    let small = table(1_000);
    let large = table(100_000);
    let read = |input: &[u8]| {
        rt.block_on(async {
            let mut reader = CsvReader::new(input);
            let mut record = Record::new();
            let mut rows = 0;
            while reader.read_record(&mut record).await.unwrap() {
                rows += 1;
            }
            rows
        })
    };
    read(&small);
    let few = counted(|| assert_eq!(read(&small), 1_000));
    let many = counted(|| assert_eq!(read(&large), 100_000));
    assert_eq!(
        few, many,
        "1 000 records: {few} allocations; 100 000: {many}"
    );
}

#[test]
fn a_pipeline_allocates_nothing_per_row() {
    let rt = runtime();
    // Both runs are long enough to fill every chunk between the stages and the channel's
    // blocks (bounded pools, made on first use): what is left would be per row.
    let small = table(50_000);
    let large = table(250_000);
    for format in [Format::JsonLines, Format::Csv] {
        let run = |input: &[u8]| {
            rt.block_on(async {
                let summary = Pipeline::keep_all()
                    .format(format)
                    .run(input, tokio::io::sink())
                    .await
                    .unwrap();
                summary.rows_out
            })
        };
        run(&small);
        let few = counted(|| assert_eq!(run(&small), 50_000));
        let many = counted(|| assert_eq!(run(&large), 250_000));
        assert_eq!(
            few, many,
            "{format:?}: 50 000 rows: {few} allocations; 250 000: {many}"
        );
    }
}
