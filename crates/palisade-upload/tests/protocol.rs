//! Header values of the protocol: metadata, checksums, ids.

use palisade_upload::checksum::{Checksum, ChecksumAlgorithm, ChecksumError};
use palisade_upload::id::UploadId;
use palisade_upload::metadata::{Metadata, MetadataError};
use proptest::prelude::*;

#[test]
fn metadata_parses_keys_with_and_without_values() {
    let m: Metadata = "filename aGVsbG8=, flag ,empty".parse().unwrap();
    assert_eq!(m.get_str("filename"), Some("hello"));
    assert_eq!(m.get("flag"), Some(&b""[..]));
    assert_eq!(m.get("empty"), Some(&b""[..]));
    assert_eq!(m.get("missing"), None);
    assert!("".parse::<Metadata>().unwrap().is_empty());
}

#[test]
fn malformed_metadata_is_refused_with_a_reason() {
    let cases = [
        (
            "name !!notbase64",
            MetadataError::InvalidBase64("name".into()),
        ),
        ("a b c", MetadataError::InvalidBase64("a".into())),
        ("dup,dup", MetadataError::DuplicateKey("dup".into())),
        (",x", MetadataError::InvalidKey),
        ("k\u{e9}y aGk=", MetadataError::InvalidKey),
    ];
    for (value, expected) in cases {
        assert_eq!(
            value.parse::<Metadata>().unwrap_err(),
            expected,
            "{value:?}"
        );
    }
    let many = (0..65)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        many.parse::<Metadata>().unwrap_err(),
        MetadataError::TooManyPairs
    );
}

#[test]
fn checksums_parse_and_verify_for_each_algorithm() {
    let cases = [
        ("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=", ChecksumAlgorithm::Sha1),
        ("md5 XrY7u+Ae7tCTyyK7j1rNww==", ChecksumAlgorithm::Md5),
        (
            "sha256 uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=",
            ChecksumAlgorithm::Sha256,
        ),
    ];
    for (value, algorithm) in cases {
        let c: Checksum = value.parse().unwrap();
        assert_eq!(c.algorithm(), algorithm);
        assert_eq!(c.to_string(), value);
        let mut good = algorithm.hasher();
        good.update(b"hello world");
        assert!(c.matches(good), "{value}");
        let mut bad = algorithm.hasher();
        bad.update(b"hello worle");
        assert!(!c.matches(bad), "{value}");
    }
}

#[test]
fn unsupported_or_malformed_checksums_are_refused() {
    assert!(matches!(
        "crc32 AAAAAA==".parse::<Checksum>(),
        Err(ChecksumError::UnsupportedAlgorithm(_))
    ));
    for bad in ["sha1", "sha1 ***", "sha1 AAAA", ""] {
        assert!(
            matches!(bad.parse::<Checksum>(), Err(ChecksumError::Malformed(_))),
            "{bad}"
        );
    }
}

#[test]
fn ids_are_32_lowercase_hex_digits_and_nothing_else_parses() {
    let id = UploadId::generate();
    assert_eq!(id.as_str().len(), 32);
    assert_eq!(id.as_str().parse::<UploadId>().unwrap(), id);
    assert_ne!(UploadId::generate(), id);
    for bad in [
        "",
        "..",
        "../../etc/passwd",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcde/",
    ] {
        assert!(bad.parse::<UploadId>().is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn metadata_round_trips(pairs in proptest::collection::btree_map("[a-zA-Z0-9_.-]{1,16}", proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
        let mut m = Metadata::new();
        for (k, v) in &pairs {
            m.insert(k.clone(), v).unwrap();
        }
        let parsed: Metadata = m.to_string().parse().unwrap();
        prop_assert_eq!(parsed, m);
    }
}
