//! [`CsvReader`]: an incremental RFC 4180 parser over any `AsyncRead`.

use std::mem;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::csv::error::CsvError;
use crate::csv::record::{Headers, Record};

/// How much is read at a time.
const DEFAULT_CAPACITY: usize = 256 * 1024;
const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a record: blank lines are skipped here.
    RecordStart,
    /// After a delimiter, or at a record's first byte.
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: an escaped quote or the closing one.
    QuotedQuote,
}

/// Reads CSV records as RFC 4180 defines them, from any [`AsyncRead`].
///
/// Quoted fields may hold delimiters, `""` (an escaped quote) and line breaks; records end
/// with CRLF, LF or a lone CR; a UTF-8 byte-order mark at the start is skipped; blank lines
/// are skipped. By default the first record is the header ([`CsvReader::headers`]).
///
/// Problems are never skipped silently: a record whose field count differs from the
/// header's, a stray quote, or invalid UTF-8 is returned as a [`CsvError`] with the line the
/// record starts on, and the reader moves on to the next record.
///
/// Memory stays flat: one read buffer (256 KiB by default) and the caller's [`Record`].
///
/// ```
/// use palisade_batch::csv::{CsvReader, Record};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_batch::csv::CsvError> {
/// let input = "\u{feff}name,quote\r\nAda,\"said \"\"hi\"\", then\nleft\"\r\n".as_bytes();
/// let mut reader = CsvReader::new(input);
/// assert_eq!(reader.headers().await?.names().collect::<Vec<_>>(), ["name", "quote"]);
/// let mut record = Record::new();
/// assert!(reader.read_record(&mut record).await?);
/// assert_eq!(record.get(1), Some("said \"hi\", then\nleft"));
/// assert_eq!(record.line(), 2);
/// assert!(!reader.read_record(&mut record).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CsvReader<R> {
    reader: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    eof: bool,
    at_start: bool,
    state: State,
    skip_lf: bool,
    /// The current physical line, from 1.
    line: u64,
    delimiter: u8,
    special: [bool; 256],
    /// Every CR in the buffer is followed by an LF: delimiters, quotes and line ends can be
    /// found with memchr.
    no_lone_cr: bool,
    has_headers: bool,
    headers: Option<Headers>,
    /// The expected field count, once known.
    width: Option<usize>,
    /// Raw bytes of the record being parsed; becomes the record's text when valid.
    scratch: Vec<u8>,
    /// The first problem in the record being parsed: field (from 1) and what.
    problem: Option<(usize, &'static str)>,
    bytes_read: u64,
}

impl<R: AsyncRead + Unpin> CsvReader<R> {
    /// A reader whose first record is the header.
    pub fn new(reader: R) -> Self {
        Self::with_capacity(DEFAULT_CAPACITY, reader)
    }

    /// A reader with a read buffer of `capacity` bytes (at least 1 KiB).
    pub fn with_capacity(capacity: usize, reader: R) -> Self {
        let delimiter = b',';
        Self {
            reader,
            buf: vec![0; capacity.max(1024)].into_boxed_slice(),
            pos: 0,
            end: 0,
            eof: false,
            at_start: true,
            state: State::RecordStart,
            skip_lf: false,
            line: 1,
            delimiter,
            special: special_bytes(delimiter),
            no_lone_cr: true,
            has_headers: true,
            headers: None,
            width: None,
            scratch: Vec::new(),
            problem: None,
            bytes_read: 0,
        }
    }

    /// With `false`, the first record is data, and it sets the expected field count.
    #[must_use]
    pub fn has_headers(mut self, yes: bool) -> Self {
        self.has_headers = yes;
        self
    }

    /// Fields are separated by `delimiter` instead of a comma (`b'\t'`, `b';'`). The
    /// delimiter is an ASCII byte other than a quote or a line break; another value is
    /// ignored.
    #[must_use]
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        if delimiter.is_ascii() && !matches!(delimiter, b'"' | b'\n' | b'\r') {
            self.delimiter = delimiter;
            self.special = special_bytes(delimiter);
        }
        self
    }

    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.len() + self.scratch.capacity()
    }

    /// Bytes read from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The header, read from the input the first time.
    ///
    /// # Errors
    ///
    /// [`CsvError::MissingHeader`] for an empty input, or the header record's own error.
    pub async fn headers(&mut self) -> Result<&Headers, CsvError> {
        if self.headers.is_none() {
            let mut record = Record::new();
            if !self.parse_record(&mut record).await? {
                return Err(CsvError::MissingHeader);
            }
            self.width = Some(record.len());
            self.headers = Some(Headers::from_record(&record));
        }
        self.headers.as_ref().ok_or(CsvError::MissingHeader)
    }

    /// Reads the next record into `record`; `Ok(false)` at the end of the input.
    ///
    /// # Errors
    ///
    /// A [`CsvError`] for a bad record (the reader then stands at the next one) or for
    /// input that cannot be read further ([`CsvError::is_fatal`]).
    pub async fn read_record(&mut self, record: &mut Record) -> Result<bool, CsvError> {
        if self.has_headers && self.headers.is_none() {
            self.headers().await?;
        }
        if !self.parse_record(record).await? {
            return Ok(false);
        }
        let found = record.len();
        match self.width {
            None => self.width = Some(found),
            Some(expected) if expected != found => {
                return Err(CsvError::Ragged {
                    line: record.line,
                    expected,
                    found,
                });
            }
            Some(_) => {}
        }
        Ok(true)
    }

    async fn fill(&mut self) -> Result<(), CsvError> {
        if self.pos < self.end {
            return Ok(());
        }
        let mut n = self.reader.read(&mut self.buf).await?;
        if self.at_start {
            // Gather the first three bytes, however the input is split, to see a BOM.
            self.at_start = false;
            while n > 0 && n < BOM.len() {
                let more = self.reader.read(&mut self.buf[n..]).await?;
                if more == 0 {
                    break;
                }
                n += more;
            }
            if self.buf[..n].starts_with(BOM) {
                self.pos = BOM.len();
            } else {
                self.pos = 0;
            }
        } else {
            self.pos = 0;
        }
        self.end = n;
        self.no_lone_cr = no_lone_cr(&self.buf[self.pos..n]);
        self.bytes_read += n as u64;
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// Parses one record (no width check). `Ok(false)` at the end of the input.
    async fn parse_record(&mut self, record: &mut Record) -> Result<bool, CsvError> {
        record.clear();
        self.scratch.clear();
        self.problem = None;
        self.state = State::RecordStart;
        loop {
            self.fill().await?;
            if self.eof {
                return self.finish_at_eof(record);
            }
            if self.parse_buffered(record) {
                return self.complete(record);
            }
        }
    }

    fn finish_at_eof(&mut self, record: &mut Record) -> Result<bool, CsvError> {
        match self.state {
            State::RecordStart => Ok(false),
            State::Quoted => {
                self.state = State::RecordStart;
                Err(CsvError::UnterminatedQuote { line: record.line })
            }
            State::FieldStart | State::Unquoted | State::QuotedQuote => {
                record.ends.push(self.scratch.len());
                self.state = State::RecordStart;
                self.complete(record)
            }
        }
    }

    /// Turns the scratch bytes into the record's text, or the record's error.
    fn complete(&mut self, record: &mut Record) -> Result<bool, CsvError> {
        let line = record.line;
        if let Some((field, problem)) = self.problem.take() {
            return Err(CsvError::Malformed {
                line,
                field,
                problem,
            });
        }
        let mut bytes = mem::take(&mut record.text).into_bytes();
        mem::swap(&mut bytes, &mut self.scratch);
        // Every field ends before an ASCII separator or at the end of the text, so a valid
        // text has valid fields.
        match String::from_utf8(bytes) {
            Ok(text) => {
                record.text = text;
                Ok(true)
            }
            Err(e) => {
                self.scratch = e.into_bytes();
                Err(CsvError::InvalidUtf8 { line })
            }
        }
    }

    fn flag(&mut self, record: &Record, problem: &'static str) {
        if self.problem.is_none() {
            self.problem = Some((record.ends.len() + 1, problem));
        }
    }

    /// Parses from the buffer until a record ends (`true`) or the buffer is used up.
    ///
    /// Bytes are copied into the scratch text in runs: a run goes on through delimiters
    /// (kept as separators) and is broken only by a quote that is not content, a line end
    /// or the end of the buffer, so an unquoted line is one copy.
    fn parse_buffered(&mut self, record: &mut Record) -> bool {
        let delimiter = self.delimiter;
        let end = self.end;
        let mut run = self.pos;
        let mut pos = self.pos;
        let ended = loop {
            if pos >= end {
                break false;
            }
            let buf = &self.buf[..end];
            match self.state {
                State::RecordStart => {
                    let byte = buf[pos];
                    if mem::take(&mut self.skip_lf) && byte == b'\n' {
                        pos += 1;
                        continue;
                    }
                    if byte == b'\n' || byte == b'\r' {
                        // A blank line.
                        self.skip_lf = byte == b'\r';
                        self.line += 1;
                        pos += 1;
                        continue;
                    }
                    record.line = self.line;
                    run = pos;
                    self.state = State::FieldStart;
                }
                State::FieldStart => {
                    if buf[pos] == b'"' {
                        self.scratch.extend_from_slice(&buf[run..pos]);
                        pos += 1;
                        run = pos;
                        self.state = State::Quoted;
                    } else {
                        self.state = State::Unquoted;
                    }
                }
                State::Unquoted => {
                    let Some(at) = self.find_special(pos) else {
                        pos = end;
                        continue;
                    };
                    let byte = buf[at];
                    if byte == delimiter {
                        record.ends.push(self.scratch.len() + at - run);
                        pos = at + 1;
                        self.state = State::FieldStart;
                    } else if byte == b'"' {
                        self.flag(record, "a quote inside an unquoted field");
                        pos = at + 1;
                    } else {
                        // A line end. Where no lone CR is buffered, a CR before the LF is
                        // the CRLF's.
                        let field_end = if byte == b'\n' && at > run && buf[at - 1] == b'\r' {
                            at - 1
                        } else {
                            at
                        };
                        self.scratch.extend_from_slice(&buf[run..field_end]);
                        pos = at + 1;
                        break self.end_record(record, byte);
                    }
                }
                State::Quoted => match memchr::memchr2(b'"', b'\n', &buf[pos..]) {
                    Some(at) if buf[pos + at] == b'"' => {
                        let at = pos + at;
                        self.scratch.extend_from_slice(&buf[run..at]);
                        pos = at + 1;
                        run = pos;
                        self.state = State::QuotedQuote;
                    }
                    Some(at) => {
                        self.line += 1;
                        pos += at + 1;
                    }
                    None => pos = end,
                },
                State::QuotedQuote => {
                    // `run` is `pos`: the closing quote candidate was not copied.
                    let byte = buf[pos];
                    if byte == b'"' {
                        // An escaped quote: this one is content.
                        pos += 1;
                        self.state = State::Quoted;
                    } else if byte == delimiter {
                        record.ends.push(self.scratch.len());
                        pos += 1;
                        self.state = State::FieldStart;
                    } else if byte == b'\n' || byte == b'\r' {
                        pos += 1;
                        run = pos;
                        break self.end_record(record, byte);
                    } else {
                        self.flag(record, "text after a closing quote");
                        self.state = State::Unquoted;
                    }
                }
            }
        };
        if !ended && self.state != State::RecordStart {
            self.scratch.extend_from_slice(&self.buf[run..end]);
        }
        self.pos = pos;
        ended
    }

    /// The next delimiter, quote or line end at or after `from`, if buffered. Where the
    /// buffer holds no lone CR, memchr finds delimiters, quotes and LFs (a CR before an LF
    /// is the caller's to drop); else every byte is looked at.
    fn find_special(&self, from: usize) -> Option<usize> {
        let buf = &self.buf[from..self.end];
        let at = if self.no_lone_cr {
            memchr::memchr3(self.delimiter, b'"', b'\n', buf)
        } else {
            buf.iter().position(|&b| self.special[usize::from(b)])
        };
        at.map(|at| from + at)
    }

    fn end_record(&mut self, record: &mut Record, terminator: u8) -> bool {
        record.ends.push(self.scratch.len());
        self.skip_lf = terminator == b'\r';
        self.line += 1;
        self.state = State::RecordStart;
        true
    }
}

/// Whether every CR of `buf` is followed by an LF in `buf`.
fn no_lone_cr(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', buf).all(|at| buf.get(at + 1) == Some(&b'\n'))
}

fn special_bytes(delimiter: u8) -> [bool; 256] {
    let mut special = [false; 256];
    for byte in [delimiter, b'"', b'\n', b'\r'] {
        special[usize::from(byte)] = true;
    }
    special
}
