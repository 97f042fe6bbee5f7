//! The checksum extension: `Upload-Checksum: <algorithm> <base64 digest>`.
//!
//! # Example
//!
//! ```
//! use palisade_upload::checksum::{Checksum, ChecksumAlgorithm};
//!
//! let checksum: Checksum = "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=".parse()?;
//! assert_eq!(checksum.algorithm(), ChecksumAlgorithm::Sha1);
//!
//! let mut hasher = checksum.algorithm().hasher();
//! hasher.update(b"hello world");
//! assert!(checksum.matches(hasher));
//! # Ok::<(), palisade_upload::checksum::ChecksumError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::Digest as _;

/// A checksum algorithm of the tus checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChecksumAlgorithm {
    /// SHA-1 (`sha1`), the one every tus server must support.
    Sha1,
    /// SHA-256 (`sha256`), what this crate's client sends.
    Sha256,
    /// MD5 (`md5`).
    Md5,
}

impl ChecksumAlgorithm {
    /// The algorithm's name in `Upload-Checksum` and `Tus-Checksum-Algorithm`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Md5 => "md5",
        }
    }

    /// The algorithm named `name` (ASCII case-insensitive), if it is one of ours.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Sha1, Self::Sha256, Self::Md5]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    const fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Md5 => 16,
        }
    }

    /// A fresh incremental hasher for this algorithm.
    #[must_use]
    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            Self::Sha1 => HasherInner::Sha1(sha1::Sha1::new()),
            Self::Sha256 => HasherInner::Sha256(sha2::Sha256::new()),
            Self::Md5 => HasherInner::Md5(md5::Md5::new()),
        })
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An incremental hasher for one [`ChecksumAlgorithm`]; memory does not grow with the input.
#[derive(Clone)]
pub struct Hasher(HasherInner);

#[derive(Clone)]
enum HasherInner {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Md5(md5::Md5),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Hasher").field(&self.algorithm()).finish()
    }
}

impl Hasher {
    /// The algorithm this hasher computes.
    #[must_use]
    pub const fn algorithm(&self) -> ChecksumAlgorithm {
        match self.0 {
            HasherInner::Sha1(_) => ChecksumAlgorithm::Sha1,
            HasherInner::Sha256(_) => ChecksumAlgorithm::Sha256,
            HasherInner::Md5(_) => ChecksumAlgorithm::Md5,
        }
    }

    /// Feeds `data` to the hasher.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherInner::Sha1(h) => h.update(data),
            HasherInner::Sha256(h) => h.update(data),
            HasherInner::Md5(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            HasherInner::Sha1(h) => h.finalize().to_vec(),
            HasherInner::Sha256(h) => h.finalize().to_vec(),
            HasherInner::Md5(h) => h.finalize().to_vec(),
        }
    }
}

/// A parsed `Upload-Checksum` value: an algorithm and the expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    algorithm: ChecksumAlgorithm,
    digest: Vec<u8>,
}

impl Checksum {
    /// A checksum of `algorithm` expecting `digest`.
    ///
    /// # Errors
    ///
    /// [`ChecksumError::Malformed`] when the digest has the wrong length for the algorithm.
    pub fn new(algorithm: ChecksumAlgorithm, digest: Vec<u8>) -> Result<Self, ChecksumError> {
        if digest.len() != algorithm.digest_len() {
            return Err(ChecksumError::Malformed("digest has the wrong length"));
        }
        Ok(Self { algorithm, digest })
    }

    /// The algorithm.
    #[must_use]
    pub const fn algorithm(&self) -> ChecksumAlgorithm {
        self.algorithm
    }

    /// The expected digest.
    #[must_use]
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Whether `hasher`'s digest equals the expected one (`false` for another algorithm).
    #[must_use]
    pub fn matches(&self, hasher: Hasher) -> bool {
        hasher.algorithm() == self.algorithm && hasher.finish() == self.digest
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, STANDARD.encode(&self.digest))
    }
}

impl FromStr for Checksum {
    type Err = ChecksumError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, digest) = s.trim().split_once(' ').ok_or(ChecksumError::Malformed(
            "expected `<algorithm> <base64 digest>`",
        ))?;
        let algorithm = ChecksumAlgorithm::from_name(name)
            .ok_or_else(|| ChecksumError::UnsupportedAlgorithm(name.chars().take(32).collect()))?;
        let digest = STANDARD
            .decode(digest.trim())
            .map_err(|_| ChecksumError::Malformed("digest is not valid base64"))?;
        Self::new(algorithm, digest)
    }
}

/// Why an `Upload-Checksum` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChecksumError {
    /// The value does not have the `<algorithm> <base64 digest>` shape.
    #[error("malformed upload-checksum: {0}")]
    Malformed(&'static str),
    /// The algorithm is not one of `sha1`, `sha256`, `md5`.
    #[error("unsupported checksum algorithm {0:?}; supported: sha1, sha256, md5")]
    UnsupportedAlgorithm(String),
}
