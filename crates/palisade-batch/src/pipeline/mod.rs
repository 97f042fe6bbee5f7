//! Stream pipelines: CSV in, a per-row transform, JSON lines or CSV out, optionally gzip.
//!
//! A [`Pipeline`] reads CSV with [`CsvReader`](crate::csv::CsvReader), hands each row to a
//! [`Transform`] that maps it into [`Fields`], filters it out or fails it, and writes the
//! rows as JSON lines or CSV (gzip-compressed with feature `gzip`). Rows that fail, malformed
//! or refused by the transform, go to an error sink with their line numbers and the run goes
//! on, up to an optional error limit.
//! Progress, failed rows and the end of the run are [`PipelineEvent`]s for a core
//! [`Listener`](palisade_core::Listener) ([`Pipeline::listener`]).
//!
//! The two stages, parsing plus transform, and compression plus writing, are joined by a
//! bounded channel of output chunks that are handed back for reuse: a slow writer slows
//! the reading down, and memory stays flat whatever the input's size
//! ([`Summary::peak_buffered`]).
//!
//! ```
//! use palisade_batch::pipeline::{Emit, Fields, Format, Pipeline};
//! use palisade_batch::csv::Row;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_batch::pipeline::PipelineError> {
//! let input = "id,name,age\n1,Ada,36\n2,Bob,x\n3,Cy,17\n".as_bytes();
//! let mut output = Vec::new();
//! let summary = Pipeline::new(adults)
//!     .format(Format::JsonLines)
//!     .run(input, &mut output)
//!     .await?;
//!
//! fn adults(row: Row<'_>, out: &mut Fields) -> Result<Emit, String> {
//!     let age: u32 = row.get("age").unwrap_or_default().parse().map_err(|_| "age is not a number")?;
//!     if age < 18 {
//!         return Ok(Emit::Skip);
//!     }
//!     out.push("name", row.get("name").unwrap_or_default());
//!     out.push_raw("age", row.get("age").unwrap_or_default());
//!     Ok(Emit::Row)
//! }
//!
//! assert_eq!(String::from_utf8(output).unwrap(), "{\"name\":\"Ada\",\"age\":36}\n");
//! assert_eq!((summary.rows_in, summary.rows_out, summary.filtered, summary.failed), (3, 1, 1, 1));
//! assert_eq!(summary.failures[0].to_string(), "line 3: age is not a number");
//! # Ok(())
//! # }
//! ```

mod event;
mod fields;
mod report;
mod run;

pub use self::event::{PipelineEvent, PipelineProgress};
pub use self::fields::Fields;
pub use self::report::{FailureReason, KEPT_FAILURES, PipelineError, RowFailure, Summary};
pub use self::run::{Emit, ErrorSink, Format, KeepAll, Pipeline, Transform};
