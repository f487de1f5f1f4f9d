//! Kafka record headers as raw bytes: the lossless encoding the inbox stores in
//! `inbox_dead_letters.raw_headers`, and the escaped text form used wherever header bytes end up
//! in text (the `headers` display column, error messages, logs).
//!
//! Kafka header keys and values are arbitrary bytes: keys need not be UTF-8 and values may hold
//! 0x00, which PostgreSQL's `text` and `jsonb` refuse. The encoding keeps every header, in
//! order, duplicates included:
//!
//! ```text
//! raw_headers := 0x01 header*                      (0x01: format version 1)
//! header      := key_len:u32be key value_len:u32be value
//!                value_len = 0xFFFF_FFFF means "no value" (a null header) and no value bytes follow
//! ```
//!
//! ```
//! use outbox::raw_headers::{decode, encode};
//! let bytes = encode([(&b"ce_id"[..], Some(&b"42"[..])), (&[0xff][..], None)]);
//! assert_eq!(decode(&bytes).unwrap(), vec![(b"ce_id".to_vec(), Some(b"42".to_vec())), (vec![0xff], None)]);
//! ```

/// The version byte that starts every encoding.
pub const FORMAT: u8 = 1;

/// The value length that marks a header without a value.
pub const NO_VALUE: u32 = u32::MAX;

/// One decoded header: key bytes, value bytes (`None`: no value).
pub type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// Encodes `headers` in order (see the module docs). A part longer than 4 GiB − 2 bytes — more
/// than any Kafka record can hold — is cut to that length.
pub fn encode<'a>(headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> Vec<u8> {
    let mut out = vec![FORMAT];
    let part = |out: &mut Vec<u8>, bytes: &[u8]| {
        let len = u32::try_from(bytes.len()).unwrap_or(NO_VALUE - 1).min(NO_VALUE - 1);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes[..len as usize]);
    };
    for (key, value) in headers {
        part(&mut out, key);
        match value {
            Some(v) => part(&mut out, v),
            None => out.extend_from_slice(&NO_VALUE.to_be_bytes()),
        }
    }
    out
}

/// Decodes [`encode`]'s output; `None` when `bytes` are not in that format.
pub fn decode(bytes: &[u8]) -> Option<Vec<RawHeader>> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != FORMAT {
        return None;
    }
    fn take<'b>(rest: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    fn len(rest: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(rest, 4)?.try_into().ok()?))
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let key_len = len(&mut rest)?;
        if key_len == NO_VALUE {
            return None;
        }
        let key = take(&mut rest, key_len as usize)?.to_vec();
        let value = match len(&mut rest)? {
            NO_VALUE => None,
            n => Some(take(&mut rest, n as usize)?.to_vec()),
        };
        out.push((key, value));
    }
    Some(out)
}

/// Bytes as printable text: valid UTF-8 is kept except that `\` becomes `\\` and control
/// characters (0x00 included) become `\u{..}`; bytes that are not UTF-8 become `\xHH`. The
/// result never contains 0x00 or another control character, and different inputs give
/// different outputs.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c, true);
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Free text (an error message) made safe for a text column: control characters other than
/// newline and tab become `\u{..}`; everything else is kept as is.
pub fn sanitize_text(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\n' || c == '\t' {
            out.push(c);
        } else {
            push_char(&mut out, c, false);
        }
    }
    out
}

fn push_char(out: &mut String, c: char, escape_backslash: bool) {
    if c.is_control() {
        out.push_str(&format!("\\u{{{:x}}}", c as u32));
    } else if c == '\\' && escape_backslash {
        out.push_str("\\\\");
    } else {
        out.push(c);
    }
}

/// The display form of headers stored in the `headers` JSON column: escaped key → escaped
/// value (`null` for no value). A key that occurs twice keeps its last value here; the raw
/// encoding keeps both.
pub fn display_json<'a>(headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (key, value) in headers {
        let value = value.map_or(serde_json::Value::Null, |v| serde_json::Value::String(escape(v)));
        map.insert(escape(key), value);
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_every_byte_order_and_duplicate() {
        let headers: Vec<RawHeader> = vec![
            (b"ce_id".to_vec(), Some(b"x".to_vec())),
            (vec![0xff, 0xfe], Some(vec![0, 1, 2])),
            (Vec::new(), Some(Vec::new())),
            (b"ce_id".to_vec(), None),
            (b"big".to_vec(), Some(vec![7; 100_000])),
        ];
        let bytes = encode(headers.iter().map(|(k, v)| (k.as_slice(), v.as_deref())));
        assert_eq!(decode(&bytes), Some(headers));
        assert_eq!(decode(&[FORMAT]), Some(Vec::new()));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[2]), None);
        assert_eq!(decode(&[FORMAT, 0, 0, 0, 5, b'a']), None, "truncated");
    }

    #[test]
    fn escaped_text_has_no_control_characters() {
        assert_eq!(escape(b"order\0placed"), "order\\u{0}placed");
        assert_eq!(escape(&[0xff, 0xfe, b'k']), "\\xFF\\xFEk");
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert_eq!(escape("é\u{7f}".as_bytes()), "é\\u{7f}");
        assert_eq!(sanitize_text("line\nnext\0end\u{1b}"), "line\nnext\\u{0}end\\u{1b}");
        assert_eq!(sanitize_text("plain"), "plain");
        let json = display_json([(&b"k\0"[..], Some(&b"v\0"[..])), (&b"n"[..], None)]);
        assert_eq!(json.to_string(), r#"{"k\\u{0}":"v\\u{0}","n":null}"#);
    }
}
