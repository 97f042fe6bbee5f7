//! The NATS client protocol, as far as the bridge speaks it: parsing what a server sends,
//! writing what a client sends.
//!
//! The protocol is text lines ending in `\r\n`; a `MSG` line is followed by its payload
//! and another `\r\n`. The bridge does not ask for headers, so a server never sends `HMSG`.

use std::fmt::Write as _;

/// The longest control line accepted from a server (an `INFO` with a long list of cluster
/// URLs fits many times over).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Something a server sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerOp<'a> {
    /// A message on a subscription.
    Msg {
        subject: &'a str,
        sid: u64,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR 'message'`, with the quotes removed.
    Err(&'a str),
    /// `INFO {json}`: the JSON.
    Info(&'a [u8]),
}

/// The server sent something this client does not understand: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub(crate) struct ProtocolError(pub(crate) String);

/// Parses one operation from the front of `buf`: `Ok(None)` when it is not all there yet,
/// or the operation and how many bytes it took.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(ServerOp<'_>, usize)>, ProtocolError> {
    let Some(end) = find_crlf(buf) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtocolError(format!(
                "a control line longer than {MAX_CONTROL_LINE} bytes"
            )));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let after = end + 2;
    let (op, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => (&line[..at], trim(&line[at + 1..])),
        None => (line, &[][..]),
    };
    let op = if op.eq_ignore_ascii_case(b"MSG") {
        return parse_msg(buf, args, after);
    } else if op.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if op.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if op.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        let text = text(args)?;
        ServerOp::Err(text.trim_matches('\''))
    } else if op.eq_ignore_ascii_case(b"INFO") {
        ServerOp::Info(args)
    } else {
        return Err(ProtocolError(format!(
            "unknown operation `{}`",
            String::from_utf8_lossy(&line[..line.len().min(32)])
        )));
    };
    Ok(Some((op, after)))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
fn parse_msg<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    start: usize,
) -> Result<Option<(ServerOp<'a>, usize)>, ProtocolError> {
    let args = text(args)?;
    let fields: Vec<&str> = args.split_ascii_whitespace().collect();
    let bad = || ProtocolError(format!("malformed MSG line `{args}`"));
    let (subject, sid, len) = match fields[..] {
        [subject, sid, len] | [subject, sid, _, len] => (subject, sid, len),
        _ => return Err(bad()),
    };
    let sid = sid.parse().map_err(|_| bad())?;
    let len: usize = len.parse().map_err(|_| bad())?;
    let end = start.checked_add(len).ok_or_else(bad)?;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ProtocolError(format!(
            "the payload of a MSG on `{subject}` does not end with CRLF"
        )));
    }
    let op = ServerOp::Msg {
        subject,
        sid,
        payload: &buf[start..end],
    };
    Ok(Some((op, end + 2)))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == b"\r\n")
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

fn text(bytes: &[u8]) -> Result<&str, ProtocolError> {
    std::str::from_utf8(bytes).map_err(|_| ProtocolError("a control line is not UTF-8".into()))
}

/// Appends `PUB <subject> <#bytes>\r\n<payload>\r\n`.
pub(crate) fn write_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    let mut line = String::with_capacity(subject.len() + 16);
    let _ = write!(line, "PUB {subject} {}\r\n", payload.len());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB <subject> <sid>\r\n`.
pub(crate) fn write_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// Appends `UNSUB <sid>\r\n`.
pub(crate) fn write_unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

pub(crate) const PING: &[u8] = b"PING\r\n";
pub(crate) const PONG: &[u8] = b"PONG\r\n";

/// Whether `subject` is a valid subject to publish on: dot-separated tokens, none empty,
/// no whitespace, no wildcard (`*`, `>`).
pub(crate) fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && c != '*' && c != '>')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_control_line() {
        assert_eq!(parse(b"PING\r\n"), Ok(Some((ServerOp::Ping, 6))));
        assert_eq!(parse(b"pong\r\nPING"), Ok(Some((ServerOp::Pong, 6))));
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((ServerOp::Ok, 5))));
        assert_eq!(
            parse(b"-ERR 'Unknown Protocol Operation'\r\n"),
            Ok(Some((ServerOp::Err("Unknown Protocol Operation"), 35)))
        );
        assert_eq!(
            parse(b"INFO {\"max_payload\":1048576} \r\n"),
            Ok(Some((ServerOp::Info(b"{\"max_payload\":1048576}"), 31)))
        );
    }

    #[test]
    fn parses_a_message_with_and_without_reply_subject() {
        let buf = b"MSG a.b 7 5\r\nhello\r\nPING\r\n";
        let (op, used) = parse(buf).unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "a.b",
                sid: 7,
                payload: b"hello"
            }
        );
        assert_eq!(parse(&buf[used..]), Ok(Some((ServerOp::Ping, 6))));

        let buf = b"MSG a.b 7 _INBOX.x 2\r\nhi\r\n";
        let (op, used) = parse(buf).unwrap().unwrap();
        assert!(matches!(op, ServerOp::Msg { payload: b"hi", .. }));
        assert_eq!(used, buf.len());
    }

    #[test]
    fn waits_for_the_rest_of_a_split_operation() {
        let whole = b"MSG a 1 5\r\nhello\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
    }

    #[test]
    fn a_payload_may_hold_crlf() {
        let buf = b"MSG a 1 4\r\n\r\n\r\n\r\n";
        let (op, used) = parse(buf).unwrap().unwrap();
        assert!(matches!(
            op,
            ServerOp::Msg {
                payload: b"\r\n\r\n",
                ..
            }
        ));
        assert_eq!(used, buf.len());
    }

    #[test]
    fn rejects_what_it_cannot_understand() {
        assert!(parse(b"WHAT\r\n").is_err());
        assert!(parse(b"MSG a\r\n").is_err());
        assert!(parse(b"MSG a x 1\r\n").is_err());
        assert!(parse(b"MSG a 1 2\r\nhiXX").is_err());
        assert!(parse(&vec![b'x'; MAX_CONTROL_LINE + 1]).is_err());
    }

    #[test]
    fn writes_client_operations() {
        let mut out = Vec::new();
        write_pub(&mut out, "a.b", b"{}");
        write_sub(&mut out, "a.b", 3);
        write_unsub(&mut out, 3);
        assert_eq!(out, b"PUB a.b 2\r\n{}\r\nSUB a.b 3\r\nUNSUB 3\r\n");
    }

    #[test]
    fn validates_subjects() {
        for good in ["a", "palisade.events.order.placed", "a-b.c_d"] {
            assert!(is_valid_subject(good), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb"] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
    }
}
