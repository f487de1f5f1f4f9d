//! Reading a record's headers as raw bytes. rdkafka's `Headers::iter`/`get` turn each key into
//! `&str` with `CStr::to_str().unwrap()`, so a key that is not UTF-8 — legal on the wire —
//! panics the task that looks at it. This module asks librdkafka directly, through the
//! bindings rdkafka re-exports, and hands out the key and value bytes as they are.
//!
//! The only module of the inbox with `unsafe` (the workspace lint is `deny`, allowed here).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, Headers, Message, OwnedMessage};

/// One header: key bytes and value bytes (`None`: a header without a value).
pub(crate) type RawHeader<'a> = (&'a [u8], Option<&'a [u8]>);

/// The record's headers in order, duplicates included, borrowed from `msg`.
///
/// librdkafka hands header names out NUL-terminated, so a key is cut at its first 0x00 byte
/// (librdkafka keeps no other length for it).
pub(crate) fn read(msg: &OwnedMessage) -> Vec<RawHeader<'_>> {
    let Some(headers) = msg.headers() else {
        return Vec::new();
    };
    let view: &BorrowedHeaders = headers.as_borrowed();
    let ptr = view as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let count = view.count();
    let mut out = Vec::with_capacity(count);
    for idx in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `ptr` is the headers object owned by `msg` (rdkafka's `BorrowedHeaders` is a
        // zero-sized view whose address is that pointer), alive and unmodified for as long as
        // `msg` is borrowed; `idx` is below its count; the out-pointers are valid locals.
        let err = unsafe { rd::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and either a null value or `size`
        // bytes at `value`, all owned by the headers object, which lives as long as `msg`: the
        // returned slices borrow `msg`.
        let (key, value) = unsafe {
            let key = CStr::from_ptr(name).to_bytes();
            let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size));
            (key, value)
        };
        out.push((key, value));
    }
    out
}

/// What one buffered record costs: key, payload and header bytes.
pub(crate) fn size(msg: &OwnedMessage) -> usize {
    let headers: usize = read(msg).iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum();
    msg.key().map_or(0, <[u8]>::len) + msg.payload().map_or(0, <[u8]>::len) + headers
}

/// A fingerprint of the record's content (key, payload, headers; not its offset or time): the
/// identity of the record a stored position follows. 64-bit FNV-1a over a length-prefixed
/// encoding, stable across builds and platforms.
pub(crate) fn fingerprint(msg: &OwnedMessage) -> i64 {
    let mut h = Fnv::new();
    h.part(msg.key());
    h.part(msg.payload());
    for (k, v) in read(msg) {
        h.part(Some(k));
        h.part(v);
    }
    i64::from_ne_bytes(h.0.to_ne_bytes())
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn part(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => {
                self.bytes(&(b.len() as u64).to_be_bytes());
                self.bytes(b);
            }
            None => self.bytes(&u64::MAX.to_be_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    fn message(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        )
    }

    #[test]
    fn reads_keys_and_values_as_bytes() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "a", value: Some(&b"\0\xff"[..]) })
            .insert(Header { key: "b", value: None::<&[u8]> })
            .insert(Header { key: "a", value: Some(&b""[..]) });
        let msg = message(headers);
        assert_eq!(read(&msg), vec![(&b"a"[..], Some(&b"\0\xff"[..])), (&b"b"[..], None), (&b"a"[..], Some(&b""[..]))]);
        assert_eq!(size(&msg), 3 + 2 + 1 + 1 + 1);
        assert_eq!(fingerprint(&msg), fingerprint(&msg.clone()));
        assert_ne!(fingerprint(&msg), fingerprint(&message(OwnedHeaders::new())));
    }
}
