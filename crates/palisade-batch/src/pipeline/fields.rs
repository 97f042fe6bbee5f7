//! [`Fields`]: the output row a transform fills, and how it is written.

use std::fmt;

/// The fields of one output row, by name, in order: what a
/// [`Transform`](crate::pipeline::Transform) writes and the pipeline serializes (a JSON
/// object per line, or a CSV record under a header made of the first row's names).
///
/// The pipeline hands the same `Fields` to every row, cleared, so filling it allocates only
/// while rows grow.
///
/// ```
/// use palisade_batch::pipeline::Fields;
///
/// let mut fields = Fields::new();
/// fields.push("name", "Ada \"the first\"");
/// fields.push_raw("age", "36");
/// assert_eq!(fields.iter().collect::<Vec<_>>(), [("name", "Ada \"the first\""), ("age", "36")]);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    text: String,
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    key_end: usize,
    value_end: usize,
    raw: bool,
}

impl Fields {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a text field: a JSON string, a CSV field quoted when it needs to be.
    pub fn push(&mut self, name: &str, value: &str) {
        self.push_span(name, value, false);
    }

    /// Adds a field written as it is: in JSON lines, `value` must be a JSON value (a number,
    /// `true`, `null`, an array...); in CSV it is written unquoted.
    pub fn push_raw(&mut self, name: &str, value: &str) {
        self.push_span(name, value, true);
    }

    fn push_span(&mut self, name: &str, value: &str, raw: bool) {
        self.text.push_str(name);
        let key_end = self.text.len();
        self.text.push_str(value);
        self.spans.push(Span {
            key_end,
            value_end: self.text.len(),
            raw,
        });
    }

    /// Removes every field.
    pub fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries().map(|(k, v, _)| (k, v))
    }

    fn entries(&self) -> impl ExactSizeIterator<Item = (&str, &str, bool)> + '_ {
        let mut start = 0;
        self.spans.iter().map(move |span| {
            let key = &self.text[start..span.key_end];
            let value = &self.text[span.key_end..span.value_end];
            start = span.value_end;
            (key, value, span.raw)
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.text.capacity() + self.spans.capacity() * size_of::<Span>()
    }

    /// Appends the row as one JSON object and a line feed.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, value, raw)) in self.entries().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(out, key.as_bytes());
            out.push(b':');
            if raw {
                out.extend_from_slice(value.as_bytes());
            } else {
                write_json_string(out, value.as_bytes());
            }
        }
        out.extend_from_slice(b"}\n");
    }

    /// Appends the names as a CSV header line.
    pub(crate) fn write_csv_header(&self, out: &mut Vec<u8>) {
        for (i, (key, _, _)) in self.entries().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_csv_field(out, key.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Appends the values as a CSV record.
    pub(crate) fn write_csv(&self, out: &mut Vec<u8>) {
        for (i, (_, value, raw)) in self.entries().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if raw {
                out.extend_from_slice(value.as_bytes());
            } else {
                write_csv_field(out, value.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Bytes a JSON string cannot hold as they are: controls, the quote and the backslash.
static JSON_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether `s` has a byte a JSON string must escape. No early exit, so that it compiles to
/// a few vector instructions per 16 bytes.
fn needs_escape(s: &[u8]) -> bool {
    s.iter().fold(false, |found, &b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends `s` as a JSON string, quotes included.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    if !needs_escape(s) {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &byte) in s.iter().enumerate() {
        if !JSON_ESCAPE[usize::from(byte)] {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        start = i + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xF)],
            ]),
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

fn write_csv_field(out: &mut Vec<u8>, s: &[u8]) {
    if memchr::memchr3(b',', b'"', b'\n', s).is_none() && memchr::memchr(b'\r', s).is_none() {
        out.extend_from_slice(s);
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for at in memchr::memchr_iter(b'"', s) {
        out.extend_from_slice(&s[start..=at]);
        out.push(b'"');
        start = at + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}
