//! Records with arbitrary header bytes — keys that are not UTF-8 included, which rdkafka's
//! `OwnedHeaders::insert` (keys are `&str`) cannot build — and a reader that returns header
//! keys and values exactly as librdkafka delivers them.
//!
//! The one place in the suites with `unsafe`: two calls into librdkafka's header API, on
//! headers this module owns for the duration of the call.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::produce::{CloudEvent, TestProducer};

/// One header: key bytes and value bytes (`None`: a header without a value).
pub type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// One Kafka record with every part as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<RawHeader>,
}

impl RawRecord {
    /// The record `event` describes, on `partition`.
    pub fn from_event(event: &CloudEvent, partition: i32) -> Self {
        RawRecord {
            topic: event.topic.clone(),
            partition,
            key: event.key.clone(),
            payload: event.payload.clone(),
            headers: event.headers.iter().map(|(k, v)| (k.clone().into_bytes(), v.clone())).collect(),
        }
    }
}

/// `headers` as librdkafka headers, keys taken byte for byte. A key must not contain 0x00:
/// librdkafka hands header names to consumers as NUL-terminated strings.
pub fn owned_headers(headers: &[RawHeader]) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len().max(1));
    let ptr = owned.as_borrowed() as *const BorrowedHeaders as *mut rd::rd_kafka_headers_t;
    for (key, value) in headers {
        assert!(!key.contains(&0), "a header key with 0x00 cannot be produced through librdkafka");
        let (value_ptr, value_len) = match value {
            Some(v) => (v.as_ptr() as *const c_void, v.len() as isize),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `ptr` is the live headers object `owned` owns (rdkafka's BorrowedHeaders is a
        // zero-sized view of that pointer), nothing else refers to it yet, and librdkafka copies
        // the key and value bytes, whose pointers and lengths come from live slices.
        let err = unsafe {
            rd::rd_kafka_header_add(ptr, key.as_ptr() as *const c_char, key.len() as isize, value_ptr, value_len)
        };
        assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR, "rd_kafka_header_add");
    }
    owned
}

/// The headers of a received message exactly as librdkafka holds them.
pub fn read_headers(headers: &BorrowedHeaders) -> Vec<RawHeader> {
    let ptr = headers as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    let mut out = Vec::new();
    for idx in 0..headers.count() {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `ptr` is the live headers object behind `headers`, borrowed for this call;
        // `idx` is below its count; the out-pointers are valid locals.
        let err = unsafe { rd::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and `size` bytes at `value` (or a
        // null value), both owned by the headers object, which outlives this copy.
        let key = unsafe { CStr::from_ptr(name) }.to_bytes().to_vec();
        let value =
            (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) }.to_vec());
        out.push((key, value));
    }
    out
}

impl TestProducer {
    /// Produces `record` (headers byte for byte) and waits for the broker's ack; returns the offset.
    pub async fn send_raw(&self, record: &RawRecord) -> i64 {
        let mut r: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&record.topic).partition(record.partition).headers(owned_headers(&record.headers));
        if let Some(k) = &record.key {
            r = r.key(k.as_slice());
        }
        if let Some(p) = &record.payload {
            r = r.payload(p.as_slice());
        }
        let delivery =
            self.producer().send(r, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produce raw record");
        assert_eq!(delivery.partition, record.partition);
        delivery.offset
    }
}
