//! `Upload-Metadata`: comma-separated pairs of a key and an optional base64 value.
//!
//! # Example
//!
//! ```
//! use palisade_upload::metadata::Metadata;
//!
//! let metadata: Metadata = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential".parse()?;
//! assert_eq!(metadata.get_str("filename"), Some("world_domination_plan.pdf"));
//! assert_eq!(metadata.get("is_confidential"), Some(&b""[..]));
//!
//! let mut built = Metadata::new();
//! built.insert("filename", "report.csv")?;
//! assert_eq!(built.to_string(), "filename cmVwb3J0LmNzdg==");
//! # Ok::<(), palisade_upload::metadata::MetadataError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The most pairs one `Upload-Metadata` header may carry.
pub const MAX_PAIRS: usize = 64;

/// Parsed, validated upload metadata: unique keys in header order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    /// Empty metadata.
    #[must_use]
    pub const fn new() -> Self {
        Self { pairs: Vec::new() }
    }

    /// Adds a pair, replacing an earlier value of the same key.
    ///
    /// # Errors
    ///
    /// [`MetadataError::InvalidKey`] when the key is empty or holds a space, a comma or a
    /// non-printable or non-ASCII character.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl AsRef<[u8]>,
    ) -> Result<&mut Self, MetadataError> {
        let key = key.into();
        if !valid_key(&key) {
            return Err(MetadataError::InvalidKey);
        }
        let value = value.as_ref().to_vec();
        match self.pairs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key, value)),
        }
        Ok(self)
    }

    /// The raw value of `key` (empty for a key sent without a value).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of `key` if it is UTF-8.
    #[must_use]
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Whether there are no pairs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

impl FromStr for Metadata {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut metadata = Self::new();
        if s.trim().is_empty() {
            return Ok(metadata);
        }
        for pair in s.split(',') {
            let pair = pair.trim();
            let (key, value) = match pair.split_once(' ') {
                Some((k, v)) => (k, Some(v.trim())),
                None => (pair, None),
            };
            if !valid_key(key) {
                return Err(MetadataError::InvalidKey);
            }
            if metadata.get(key).is_some() {
                return Err(MetadataError::DuplicateKey(key.to_owned()));
            }
            let value = match value {
                Some(v) if !v.is_empty() => STANDARD
                    .decode(v)
                    .map_err(|_| MetadataError::InvalidBase64(key.to_owned()))?,
                _ => Vec::new(),
            };
            metadata.pairs.push((key.to_owned(), value));
            if metadata.pairs.len() > MAX_PAIRS {
                return Err(MetadataError::TooManyPairs);
            }
        }
        Ok(metadata)
    }
}

impl fmt::Display for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(key)?;
            if !value.is_empty() {
                write!(f, " {}", STANDARD.encode(value))?;
            }
        }
        Ok(())
    }
}

/// Why an `Upload-Metadata` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A key is empty or holds a space, a comma, or a non-printable or non-ASCII character.
    #[error(
        "upload-metadata key must be 1 to 128 printable ASCII characters without spaces or commas"
    )]
    InvalidKey,
    /// A key appears twice.
    #[error("upload-metadata key {0:?} appears twice")]
    DuplicateKey(String),
    /// A value is not valid base64.
    #[error("upload-metadata value of {0:?} is not valid base64")]
    InvalidBase64(String),
    /// More than [`MAX_PAIRS`] pairs.
    #[error("upload-metadata has more than 64 pairs")]
    TooManyPairs,
}
