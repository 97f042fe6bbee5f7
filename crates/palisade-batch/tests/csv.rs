//! The RFC 4180 reader: quoting, line ends, BOM, headers, and every bad record reported with
//! its line number while reading goes on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_batch::csv::{CsvError, CsvReader, Record, Row};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out at most `chunk` bytes per read, so that every parser state meets a buffer end.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// Every record (or its error) of `input`, read `chunk` bytes at a time.
async fn read_all(input: &str, chunk: usize) -> Vec<Result<(u64, Vec<String>), String>> {
    let mut reader = CsvReader::with_capacity(
        1024,
        Trickle {
            data: input.as_bytes(),
            chunk,
        },
    )
    .has_headers(false);
    let mut record = Record::new();
    let mut out = Vec::new();
    loop {
        match reader.read_record(&mut record).await {
            Ok(true) => out.push(Ok((
                record.line(),
                record.iter().map(str::to_owned).collect(),
            ))),
            Ok(false) => break,
            Err(e) => {
                let fatal = e.is_fatal();
                out.push(Err(e.to_string()));
                if fatal {
                    break;
                }
            }
        }
    }
    out
}

fn rec(line: u64, fields: &[&str]) -> Result<(u64, Vec<String>), String> {
    Ok((line, fields.iter().map(|f| (*f).to_owned()).collect()))
}

/// Checks the same input read whole and a few bytes at a time.
async fn check(input: &str, expected: &[Result<(u64, Vec<String>), String>]) {
    for chunk in [usize::MAX, 1, 2, 3, 7] {
        assert_eq!(read_all(input, chunk).await, expected, "chunk size {chunk}");
    }
}

#[tokio::test]
async fn quoted_fields_keep_their_commas() {
    check(
        "a,\"b,c\",d\n\"x,\",\",y\",\",\"\n",
        &[rec(1, &["a", "b,c", "d"]), rec(2, &["x,", ",y", ","])],
    )
    .await;
}

#[tokio::test]
async fn doubled_quotes_are_one_quote() {
    check(
        "\"he said \"\"hi\"\"\",\"\"\"\",\"\"\n",
        &[rec(1, &["he said \"hi\"", "\"", ""])],
    )
    .await;
}

#[tokio::test]
async fn crlf_lf_and_lone_cr_all_end_records() {
    check(
        "a,b\r\nc,d\ne,f\rg,h\r\n",
        &[
            rec(1, &["a", "b"]),
            rec(2, &["c", "d"]),
            rec(3, &["e", "f"]),
            rec(4, &["g", "h"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn embedded_line_breaks_stay_in_the_field_and_lines_are_counted() {
    check(
        "id,note\r\n1,\"two\r\nlines\"\r\n2,\"three\nmore\nlines\"\n3,last\n",
        &[
            rec(1, &["id", "note"]),
            rec(2, &["1", "two\r\nlines"]),
            rec(4, &["2", "three\nmore\nlines"]),
            rec(7, &["3", "last"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_byte_order_mark_is_skipped() {
    check(
        "\u{feff}name,age\n\"\u{feff}x\",1\n",
        &[rec(1, &["name", "age"]), rec(2, &["\u{feff}x", "1"])],
    )
    .await;
}

#[tokio::test]
async fn blank_lines_are_skipped_and_the_last_line_needs_no_break() {
    check(
        "a,b\n\n\r\n\nc,\nd,e",
        &[rec(1, &["a", "b"]), rec(5, &["c", ""]), rec(6, &["d", "e"])],
    )
    .await;
}

#[tokio::test]
async fn ragged_rows_are_reported_with_their_line_and_reading_goes_on() {
    check(
        "a,b,c\n1,2,3\n4,5\n\"6\n\",7,8,9\n10,11,12\n",
        &[
            rec(1, &["a", "b", "c"]),
            rec(2, &["1", "2", "3"]),
            Err("line 3: expected 3 fields, found 2".to_owned()),
            Err("line 4: expected 3 fields, found 4".to_owned()),
            rec(6, &["10", "11", "12"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn stray_quotes_are_reported_with_their_line_and_field() {
    check(
        "a,b\nx,y\"z\n\"q\"r,s\nok,fine\n",
        &[
            rec(1, &["a", "b"]),
            Err("line 2, field 2: a quote inside an unquoted field".to_owned()),
            Err("line 3, field 1: text after a closing quote".to_owned()),
            rec(4, &["ok", "fine"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unterminated_quote_ends_the_input_with_its_line() {
    check(
        "a,b\n1,\"open\n\nstill open",
        &[
            rec(1, &["a", "b"]),
            Err("line 2: a quoted field is not closed before the end of the input".to_owned()),
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_is_reported_with_its_line() {
    let input = b"a,b\n\xff\xfe,x\nc,d\n";
    let mut reader = CsvReader::new(&input[..]).has_headers(false);
    let mut record = Record::new();
    assert!(reader.read_record(&mut record).await.unwrap());
    let err = reader.read_record(&mut record).await.unwrap_err();
    assert!(matches!(err, CsvError::InvalidUtf8 { line: 2 }), "{err}");
    assert!(reader.read_record(&mut record).await.unwrap());
    assert_eq!(record.iter().collect::<Vec<_>>(), ["c", "d"]);
}

#[tokio::test]
async fn headers_name_the_columns_of_each_row() {
    let input = "id,name,city\n1,Ada,\"London, UK\"\n";
    let mut reader = CsvReader::new(input.as_bytes());
    let headers = reader.headers().await.unwrap().clone();
    assert_eq!(headers.position("city"), Some(2));
    let mut record = Record::new();
    assert!(reader.read_record(&mut record).await.unwrap());
    let row = Row::new(&headers, &record);
    assert_eq!(row.get("city"), Some("London, UK"));
    assert_eq!(row.get("zip"), None);
    assert_eq!(row.line(), 2);
    let pairs: Vec<_> = row.pairs().collect();
    assert_eq!(
        pairs,
        [("id", "1"), ("name", "Ada"), ("city", "London, UK")]
    );
    assert!(!reader.read_record(&mut record).await.unwrap());
    assert_eq!(reader.bytes_read(), input.len() as u64);
}

#[tokio::test]
async fn an_empty_input_has_no_header() {
    let mut reader = CsvReader::new(&b""[..]);
    assert!(matches!(
        reader.headers().await,
        Err(CsvError::MissingHeader)
    ));
    let mut reader = CsvReader::new(&b"\xEF\xBB\xBFa,b\r\n"[..]);
    assert!(!reader.read_record(&mut Record::new()).await.unwrap());
}

#[tokio::test]
async fn another_delimiter_can_be_used() {
    let mut reader = CsvReader::new(&b"a;b\n\"1;2\";3\n"[..]).delimiter(b';');
    let mut record = Record::new();
    assert!(reader.read_record(&mut record).await.unwrap());
    assert_eq!(record.iter().collect::<Vec<_>>(), ["1;2", "3"]);
}

/// Writes fields the way RFC 4180 says, quoting every field (so an empty one-field record
/// is not a blank line).
fn encode(records: &[Vec<String>], crlf: bool) -> String {
    let mut out = String::new();
    for record in records {
        let fields: Vec<String> = record
            .iter()
            .map(|f| format!("\"{}\"", f.replace('"', "\"\"")))
            .collect();
        out.push_str(&fields.join(","));
        out.push_str(if crlf { "\r\n" } else { "\n" });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_quoted_table_reads_back_whatever_the_chunking(
        width in 1usize..5,
        rows in prop::collection::vec(
            prop::collection::vec("[a-z,\"\r\n é]{0,6}", 4),
            1..12,
        ),
        crlf in any::<bool>(),
        chunk in 1usize..40,
    ) {
        let records: Vec<Vec<String>> =
            rows.into_iter().map(|mut r| { r.truncate(width); r }).collect();
        let input = encode(&records, crlf);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let read = runtime.block_on(read_all(&input, chunk));
        let fields: Vec<Vec<String>> = read
            .into_iter()
            .map(|r| r.map(|(_, f)| f))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(fields, records);
    }
}

/// Writes fields quoting only those that need it (or when `quote_all`), ending each record
/// with `ending`.
fn encode_minimal(records: &[Vec<String>], ending: &str) -> String {
    let mut out = String::new();
    for record in records {
        let fields: Vec<String> = record
            .iter()
            .map(|f| {
                if f.is_empty() || f.contains([',', '"', '\r', '\n']) {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.clone()
                }
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push_str(ending);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn unquoted_fields_and_any_line_end_read_back_whatever_the_chunking(
        width in 1usize..6,
        rows in prop::collection::vec(
            prop::collection::vec("[a-z,\"\r\n é]{0,8}|[a-z0-9]{1,12}", 5),
            1..12,
        ),
        ending in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        chunk in 1usize..300,
    ) {
        let records: Vec<Vec<String>> =
            rows.into_iter().map(|mut r| { r.truncate(width); r }).collect();
        let input = encode_minimal(&records, ending);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let read = runtime.block_on(read_all(&input, chunk));
        let fields: Vec<Vec<String>> = read
            .into_iter()
            .map(|r| r.map(|(_, f)| f))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(fields, records);
    }
}
