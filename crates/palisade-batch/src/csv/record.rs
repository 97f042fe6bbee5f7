//! [`Record`], [`Headers`] and [`Row`]: one parsed line, reused from line to line.

use std::fmt;
use std::sync::Arc;

/// One CSV record: its fields, unquoted and unescaped, and the line it starts on.
///
/// A reader fills the same `Record` again and again
/// ([`CsvReader::read_record`](crate::csv::CsvReader::read_record)), so reading allocates
/// only while records grow.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The fields, each followed by a one-byte ASCII separator (the delimiter) but the last.
    pub(crate) text: String,
    /// The end of each field in `text`; the next field starts one byte later.
    pub(crate) ends: Vec<usize>,
    pub(crate) line: u64,
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The line the record starts on, from 1.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the record has no field.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i` (from 0).
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        self.text.get(start..end)
    }

    /// The fields in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|i| self.get(i).unwrap_or_default())
    }

    pub(crate) fn capacity(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * size_of::<usize>()
    }

    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("line", &self.line)
            .field("fields", &self.iter().collect::<Vec<_>>())
            .finish()
    }
}

/// The header line: the column names, shared by every [`Row`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    names: Arc<[Box<str>]>,
}

impl Headers {
    pub(crate) fn from_record(record: &Record) -> Self {
        Self {
            names: record.iter().map(Box::from).collect(),
        }
    }

    /// The column names, in order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.names.iter().map(|n| &**n)
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no column.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The position of column `name` (the first, if two have the same name).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    /// The name of column `i`.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(|n| &**n)
    }
}

/// A record seen through its headers: fields by column name.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub(crate) headers: &'a Headers,
    pub(crate) record: &'a Record,
}

impl<'a> Row<'a> {
    /// A row made of `record` under `headers`.
    pub fn new(headers: &'a Headers, record: &'a Record) -> Self {
        Self { headers, record }
    }

    /// The field of column `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.record.get(self.headers.position(name)?)
    }

    /// Field `i` (from 0).
    pub fn field(&self, i: usize) -> Option<&'a str> {
        self.record.get(i)
    }

    /// `(column name, field)` pairs, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers.names().zip(self.record.iter())
    }

    /// The headers.
    pub fn headers(&self) -> &'a Headers {
        self.headers
    }

    /// The record.
    pub fn record(&self) -> &'a Record {
        self.record
    }

    /// The line the record starts on, from 1.
    pub fn line(&self) -> u64 {
        self.record.line
    }
}
