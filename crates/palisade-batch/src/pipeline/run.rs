//! [`Pipeline`]: the builder and the two stages of a run.

use std::fmt;
use std::num::NonZeroUsize;

use palisade_core::Listener;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::csv::{CsvReader, Record, Row};
use crate::pipeline::event::{PipelineEvent, PipelineProgress};
use crate::pipeline::fields::Fields;
use crate::pipeline::report::{FailureReason, KEPT_FAILURES, PipelineError, RowFailure, Summary};

/// What a [`Transform`] does with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Emit {
    /// Write the [`Fields`] the transform filled.
    Row,
    /// Filter the row out: nothing is written, and it counts as filtered.
    Skip,
}

/// The per-row step of a [`Pipeline`]: map a row into [`Fields`], filter it out, or fail it.
///
/// Implemented for every `FnMut(Row<'_>, &mut Fields) -> Result<Emit, E>` with a displayable
/// `E`, and by [`KeepAll`]. A failed row goes to the error sink with its line number; the
/// run goes on.
pub trait Transform {
    /// Why a row is refused.
    type Error: fmt::Display;

    /// Fills `out` (empty on entry) from `row`, and says whether to write it.
    ///
    /// # Errors
    ///
    /// A row that cannot be transformed; it is reported and skipped.
    fn transform(&mut self, row: Row<'_>, out: &mut Fields) -> Result<Emit, Self::Error>;

    /// Whether this is [`KeepAll`], whose rows the pipeline writes straight from the record.
    /// Sealed: only this crate can say yes.
    #[doc(hidden)]
    fn keeps_all(&self, _: private::Sealed) -> bool {
        false
    }
}

mod private {
    /// Makes [`Transform::keeps_all`](super::Transform::keeps_all) impossible to override
    /// outside the crate.
    #[derive(Debug, Clone, Copy)]
    pub struct Sealed;
}

impl<F, E> Transform for F
where
    F: FnMut(Row<'_>, &mut Fields) -> Result<Emit, E>,
    E: fmt::Display,
{
    type Error = E;

    fn transform(&mut self, row: Row<'_>, out: &mut Fields) -> Result<Emit, E> {
        self(row, out)
    }
}

/// The identity [`Transform`]: every column as a text field, under its header name.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl Transform for KeepAll {
    type Error = std::convert::Infallible;

    fn transform(&mut self, row: Row<'_>, out: &mut Fields) -> Result<Emit, Self::Error> {
        for (name, value) in row.pairs() {
            out.push(name, value);
        }
        Ok(Emit::Row)
    }

    fn keeps_all(&self, _: private::Sealed) -> bool {
        true
    }
}

/// Writes records as they are, under their headers, without going through [`Fields`]:
/// each column's JSON key (or the CSV header) is encoded once.
struct Direct {
    /// `{"name":` for the first column, `,"name":` for the others.
    json_keys: Vec<Vec<u8>>,
}

impl Direct {
    fn new(headers: &crate::csv::Headers) -> Self {
        let json_keys = headers
            .names()
            .enumerate()
            .map(|(i, name)| {
                let mut key = vec![if i == 0 { b'{' } else { b',' }];
                crate::pipeline::fields::write_json_string(&mut key, name.as_bytes());
                key.push(b':');
                key
            })
            .collect();
        Self { json_keys }
    }

    fn write_json(&self, record: &Record, out: &mut Vec<u8>) {
        for (key, value) in self.json_keys.iter().zip(record.iter()) {
            out.extend_from_slice(key);
            crate::pipeline::fields::write_json_string(out, value.as_bytes());
        }
        if record.is_empty() {
            out.push(b'{');
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Receives every failed row; see [`Pipeline::on_error`].
///
/// Implemented for `()` (failures are only counted and kept in the [`Summary`]) and for
/// every `FnMut(&RowFailure)`.
pub trait ErrorSink {
    /// Handles one failed row. Runs on the reading stage: keep it short.
    fn on_error(&mut self, failure: &RowFailure);
}

impl ErrorSink for () {
    fn on_error(&mut self, _failure: &RowFailure) {}
}

impl<F: FnMut(&RowFailure)> ErrorSink for F {
    fn on_error(&mut self, failure: &RowFailure) {
        self(failure);
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// One JSON object per line, fields in order: `{"name":"Ada","age":36}`.
    #[default]
    JsonLines,
    /// RFC 4180 CSV with CRLF line ends, under a header line of the first row's names
    /// (no header when no row is written).
    Csv,
}

/// Reads CSV, transforms each row, and writes JSON lines or CSV, optionally gzip.
///
/// Defaults: [`Format::JsonLines`], no compression, no error limit, output chunks of
/// 64 KiB, a channel of 4 chunks between the stages, a 256 KiB read buffer, no listener.
/// See the [module docs](crate::pipeline) for an example.
#[derive(Debug, Clone)]
#[must_use = "a Pipeline does nothing until `run` is awaited"]
pub struct Pipeline<T = KeepAll, S = (), L = ()> {
    transform: T,
    sink: S,
    listener: L,
    format: Format,
    #[cfg(feature = "gzip")]
    gzip: Option<u32>,
    error_limit: Option<u64>,
    chunk_size: usize,
    channel: NonZeroUsize,
    read_capacity: usize,
}

const DEFAULT_CHUNK: usize = 64 * 1024;
const DEFAULT_READ: usize = 256 * 1024;
const DEFAULT_CHANNEL: NonZeroUsize = NonZeroUsize::new(4).unwrap();

impl Pipeline {
    /// A pipeline that writes every column of every row ([`KeepAll`]).
    pub fn keep_all() -> Self {
        Pipeline::new(KeepAll)
    }
}

impl<T: Transform> Pipeline<T> {
    /// A pipeline that runs `transform` on every row.
    pub fn new(transform: T) -> Self {
        Pipeline {
            transform,
            sink: (),
            listener: (),
            format: Format::JsonLines,
            #[cfg(feature = "gzip")]
            gzip: None,
            error_limit: None,
            chunk_size: DEFAULT_CHUNK,
            channel: DEFAULT_CHANNEL,
            read_capacity: DEFAULT_READ,
        }
    }
}

impl<T, S, L> Pipeline<T, S, L> {
    /// The output format; default [`Format::JsonLines`].
    pub const fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Compresses the output with gzip at `level` (0 to 9; above 9 counts as 9), with
    /// flate2's zlib-rs backend. The gzip trailer is written when the input ends, and
    /// also when the run stops on an error (the output then holds the rows written so far).
    #[cfg(feature = "gzip")]
    pub const fn gzip(mut self, level: u32) -> Self {
        self.gzip = Some(if level > 9 { 9 } else { level });
        self
    }

    /// Stops the run with [`PipelineError::TooManyErrors`] once more than `limit` rows
    /// have failed. Default: no limit.
    pub const fn error_limit(mut self, limit: u64) -> Self {
        self.error_limit = Some(limit);
        self
    }

    /// The output is handed to the writer in chunks of about `bytes` (at least 1 KiB; a
    /// row larger than that makes its chunk grow). Default 64 KiB.
    pub const fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = if bytes < 1024 { 1024 } else { bytes };
        self
    }

    /// At most `chunks` full chunks wait between the stages. Default 4.
    pub const fn channel_capacity(mut self, chunks: NonZeroUsize) -> Self {
        self.channel = chunks;
        self
    }

    /// The input is read `bytes` at a time (at least 1 KiB). Default 256 KiB.
    pub const fn read_capacity(mut self, bytes: usize) -> Self {
        self.read_capacity = bytes;
        self
    }

    /// Sends every failed row, with its line number, to `sink`.
    pub fn on_error<S2: ErrorSink>(self, sink: S2) -> Pipeline<T, S2, L> {
        Pipeline {
            transform: self.transform,
            sink,
            listener: self.listener,
            format: self.format,
            #[cfg(feature = "gzip")]
            gzip: self.gzip,
            error_limit: self.error_limit,
            chunk_size: self.chunk_size,
            channel: self.channel,
            read_capacity: self.read_capacity,
        }
    }

    /// Sends the run's [`PipelineEvent`]s (progress with each chunk handed to the writer,
    /// failed rows, the error limit, the end) to `listener`, a core
    /// [`Listener`](palisade_core::Listener): a closure through
    /// [`listener_fn`](palisade_core::event::listener_fn), or a
    /// `MetricsListener` (core feature `metrics`).
    pub fn listener<L2>(self, listener: L2) -> Pipeline<T, S, L2> {
        Pipeline {
            transform: self.transform,
            sink: self.sink,
            listener,
            format: self.format,
            #[cfg(feature = "gzip")]
            gzip: self.gzip,
            error_limit: self.error_limit,
            chunk_size: self.chunk_size,
            channel: self.channel,
            read_capacity: self.read_capacity,
        }
    }
}

/// What the reading stage hands back.
struct Read {
    summary: Summary,
    chunk_bytes: usize,
}

impl<T, S, L> Pipeline<T, S, L>
where
    T: Transform,
    S: ErrorSink,
    L: Listener<PipelineEvent>,
{
    /// Runs the pipeline from `input` to `output` and reports what it did.
    ///
    /// The output is flushed at the end, not shut down.
    ///
    /// # Errors
    ///
    /// [`PipelineError::Read`] if the input cannot be read further,
    /// [`PipelineError::Write`] if the output cannot be written,
    /// [`PipelineError::TooManyErrors`] past the error limit. Bad rows alone are not
    /// errors: they are in the [`Summary`].
    pub async fn run<R, W>(self, input: R, output: W) -> Result<Summary, PipelineError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Pipeline {
            mut transform,
            mut sink,
            listener,
            format,
            #[cfg(feature = "gzip")]
            gzip,
            error_limit,
            chunk_size,
            channel,
            read_capacity,
        } = self;
        let (full_tx, mut full_rx) = mpsc::channel::<Vec<u8>>(channel.get());
        let most_chunks = channel.get() + 2;
        let (empty_tx, mut empty_rx) = mpsc::channel::<Vec<u8>>(most_chunks);
        let listener = &listener;

        let read = async move {
            let mut reader = CsvReader::with_capacity(read_capacity, input);
            let headers = reader.headers().await.map_err(PipelineError::Read)?.clone();
            let mut record = Record::new();
            let mut fields = Fields::new();
            let mut summary = Summary::default();
            let mut header_written = false;
            let direct = (format == Format::JsonLines && transform.keeps_all(private::Sealed))
                .then(|| Direct::new(&headers));
            let mut chunks = 1;
            let mut chunk = Vec::with_capacity(chunk_size + chunk_size / 4);
            let mut chunk_bytes = chunk.capacity();
            let report = |summary: &Summary, reader: &CsvReader<R>| PipelineProgress {
                rows_in: summary.rows_in,
                rows_out: summary.rows_out,
                filtered: summary.filtered,
                failed: summary.failed,
                bytes_in: reader.bytes_read(),
            };
            loop {
                let failure = match reader.read_record(&mut record).await {
                    Ok(false) => break,
                    Ok(true) => {
                        summary.rows_in += 1;
                        if let Some(direct) = &direct {
                            // Every column as it is: no copy through `Fields`.
                            direct.write_json(&record, &mut chunk);
                            summary.rows_out += 1;
                            None
                        } else {
                            fields.clear();
                            match transform.transform(Row::new(&headers, &record), &mut fields) {
                                Ok(Emit::Row) => {
                                    match format {
                                        Format::JsonLines => fields.write_json(&mut chunk),
                                        Format::Csv => {
                                            if !header_written {
                                                fields.write_csv_header(&mut chunk);
                                                header_written = true;
                                            }
                                            fields.write_csv(&mut chunk);
                                        }
                                    }
                                    summary.rows_out += 1;
                                    None
                                }
                                Ok(Emit::Skip) => {
                                    summary.filtered += 1;
                                    None
                                }
                                Err(error) => Some(RowFailure {
                                    line: record.line(),
                                    reason: FailureReason::Transform(error.to_string()),
                                }),
                            }
                        }
                    }
                    Err(error) if error.is_fatal() => return Err(PipelineError::Read(error)),
                    Err(error) => {
                        summary.rows_in += 1;
                        Some(RowFailure {
                            line: error.line().unwrap_or_default(),
                            reason: FailureReason::Csv(error),
                        })
                    }
                };
                if let Some(failure) = failure {
                    summary.failed += 1;
                    tracing::debug!(line = failure.line, %failure, "pipeline row failed");
                    sink.on_error(&failure);
                    let line = failure.line;
                    listener.on_event(&PipelineEvent::RowFailed { line });
                    if summary.failures.len() < KEPT_FAILURES {
                        summary.failures.push(failure);
                    }
                    if let Some(limit) = error_limit
                        && summary.failed > limit
                    {
                        tracing::warn!(limit, line, "pipeline stopped: too many failed rows");
                        listener.on_event(&PipelineEvent::TooManyErrors { limit, line });
                        return Err(PipelineError::TooManyErrors { limit, line });
                    }
                }
                if chunk.len() >= chunk_size {
                    let next = match empty_rx.try_recv() {
                        Ok(next) => next,
                        Err(_) if chunks < most_chunks => {
                            chunks += 1;
                            let next = Vec::with_capacity(chunk_size + chunk_size / 4);
                            chunk_bytes += next.capacity();
                            next
                        }
                        Err(_) => match empty_rx.recv().await {
                            Some(next) => next,
                            // The writer has stopped; its error is the run's.
                            None => break,
                        },
                    };
                    let full = std::mem::replace(&mut chunk, next);
                    if full_tx.send(full).await.is_err() {
                        break;
                    }
                    listener.on_event(&PipelineEvent::Progress(report(&summary, &reader)));
                }
            }
            if !chunk.is_empty() {
                // A closed channel means the writer failed; its error is the run's.
                let _ = full_tx.send(chunk).await;
            }
            drop(full_tx);
            summary.bytes_in = reader.bytes_read();
            summary.peak_buffered =
                reader.buffer_capacity() + record.capacity() + fields.capacity();
            Ok(Read {
                summary,
                chunk_bytes,
            })
        };

        let write = async move {
            let mut output = output;
            let mut writer = ChunkWriter::new(
                #[cfg(feature = "gzip")]
                gzip,
            );
            while let Some(mut chunk) = full_rx.recv().await {
                writer
                    .write(&mut output, &chunk)
                    .await
                    .map_err(PipelineError::Write)?;
                chunk.clear();
                // The reader may be gone; the chunk is then simply dropped.
                let _ = empty_tx.try_send(chunk);
            }
            writer
                .finish(&mut output)
                .await
                .map_err(PipelineError::Write)?;
            output.flush().await.map_err(PipelineError::Write)?;
            Ok::<_, PipelineError>(writer)
        };

        let (read, write) = tokio::join!(read, write);
        let writer = write?;
        let Read {
            mut summary,
            chunk_bytes,
        } = read?;
        summary.bytes_out = writer.bytes_out;
        summary.peak_buffered += chunk_bytes + writer.buffer_capacity();
        tracing::debug!(
            rows_in = summary.rows_in,
            rows_out = summary.rows_out,
            filtered = summary.filtered,
            failed = summary.failed,
            "pipeline finished"
        );
        listener.on_event(&PipelineEvent::Finished(PipelineProgress {
            rows_in: summary.rows_in,
            rows_out: summary.rows_out,
            filtered: summary.filtered,
            failed: summary.failed,
            bytes_in: summary.bytes_in,
        }));
        Ok(summary)
    }
}

/// The writing stage: plain, or through a gzip encoder.
struct ChunkWriter {
    #[cfg(feature = "gzip")]
    gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
    bytes_out: u64,
}

impl ChunkWriter {
    fn new(#[cfg(feature = "gzip")] gzip: Option<u32>) -> Self {
        Self {
            #[cfg(feature = "gzip")]
            gzip: gzip.map(|level| {
                flate2::write::GzEncoder::new(
                    Vec::with_capacity(DEFAULT_CHUNK),
                    flate2::Compression::new(level),
                )
            }),
            bytes_out: 0,
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        output: &mut W,
        chunk: &[u8],
    ) -> std::io::Result<()> {
        #[cfg(feature = "gzip")]
        if let Some(encoder) = &mut self.gzip {
            use std::io::Write;
            encoder.write_all(chunk)?;
            let compressed = encoder.get_mut();
            output.write_all(compressed).await?;
            self.bytes_out += compressed.len() as u64;
            compressed.clear();
            return Ok(());
        }
        output.write_all(chunk).await?;
        self.bytes_out += chunk.len() as u64;
        Ok(())
    }

    async fn finish<W: AsyncWrite + Unpin>(&mut self, output: &mut W) -> std::io::Result<()> {
        #[cfg(feature = "gzip")]
        if let Some(encoder) = &mut self.gzip {
            encoder.try_finish()?;
            let compressed = encoder.get_mut();
            output.write_all(compressed).await?;
            self.bytes_out += compressed.len() as u64;
            compressed.clear();
        }
        #[cfg(not(feature = "gzip"))]
        let _ = output;
        Ok(())
    }

    fn buffer_capacity(&self) -> usize {
        #[cfg(feature = "gzip")]
        if let Some(encoder) = &self.gzip {
            return encoder.get_ref().capacity();
        }
        0
    }
}
