//! Server-generated upload ids.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// An upload id: 128 random bits as 32 lowercase hex digits.
///
/// Ids are made by the server only. Parsing accepts nothing but 32 lowercase hex digits, so
/// an id is always a safe file name: no client value reaches a file path.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId([u8; 32]);

impl UploadId {
    /// A fresh random id.
    ///
    /// The bits come from std's `RandomState`, whose SipHash keys are seeded from the
    /// operating system's random source, mixed with a process-wide counter and the time.
    #[must_use]
    pub fn generate() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut words = [0_u64; 2];
        for (i, word) in words.iter_mut().enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(n);
            h.write_u128(nanos);
            h.write_usize(i);
            *word = h.finish();
        }
        let mut out = [0_u8; 32];
        let digits = b"0123456789abcdef";
        for (i, byte) in words[0]
            .to_be_bytes()
            .into_iter()
            .chain(words[1].to_be_bytes())
            .enumerate()
        {
            out[2 * i] = digits[usize::from(byte >> 4)];
            out[2 * i + 1] = digits[usize::from(byte & 0xf)];
        }
        Self(out)
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.as_str())
    }
}

/// A string that is not an upload id (32 lowercase hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an upload id")]
pub struct InvalidUploadId;

impl FromStr for UploadId {
    type Err = InvalidUploadId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 32] = s.as_bytes().try_into().map_err(|_| InvalidUploadId)?;
        if bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(bytes))
        } else {
            Err(InvalidUploadId)
        }
    }
}
