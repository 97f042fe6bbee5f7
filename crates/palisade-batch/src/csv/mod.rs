//! An async CSV reader that follows RFC 4180.
//!
//! [`CsvReader`] parses quoted fields with embedded delimiters, escaped quotes (`""`) and
//! line breaks, CRLF / LF / CR line ends and a byte-order mark, reading through one fixed
//! buffer into a reused [`Record`]. [`Headers`] name the columns and a [`Row`] reads a
//! record by column name. Every bad record comes back as a [`CsvError`] with its line
//! number; reading continues with the next record.

mod error;
mod reader;
mod record;

pub use self::error::CsvError;
pub use self::reader::CsvReader;
pub use self::record::{Headers, Record, Row};
