//! Diesel table definitions of the tables created by [`crate::migrate`].
#![allow(missing_docs)]

diesel::table! {
    /// Events waiting to be published (and, in retention mode, recently published ones).
    outbox_messages (seq) {
        seq -> BigInt,
        id -> Uuid,
        topic -> Text,
        key -> Nullable<Text>,
        event_type -> Text,
        event_version -> Integer,
        payload -> Binary,
        headers -> Jsonb,
        occurred_at -> Timestamptz,
        created_at -> Timestamptz,
        attempts -> Integer,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        sent_at -> Nullable<Timestamptz>,
        parked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    /// Relay leadership with a fencing epoch.
    outbox_relay_leases (name) {
        name -> Text,
        owner -> Nullable<Uuid>,
        epoch -> BigInt,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    /// Inbox dedup records: (consumer group, message id).
    inbox_messages (consumer_group, message_id) {
        consumer_group -> Text,
        message_id -> Uuid,
        topic -> Text,
        kafka_partition -> Integer,
        kafka_offset -> BigInt,
        handled_at -> Timestamptz,
    }
}

diesel::table! {
    /// Stored consumer positions.
    inbox_offsets (consumer_group, topic, kafka_partition) {
        consumer_group -> Text,
        topic -> Text,
        kafka_partition -> Integer,
        next_offset -> BigInt,
        updated_at -> Timestamptz,
        cluster_id -> Nullable<Text>,
        last_fingerprint -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// Messages the inbox could not or must not handle.
    inbox_dead_letters (id) {
        id -> BigInt,
        consumer_group -> Text,
        message_id -> Nullable<Uuid>,
        topic -> Text,
        kafka_partition -> Integer,
        kafka_offset -> BigInt,
        key -> Nullable<Binary>,
        payload -> Nullable<Binary>,
        headers -> Jsonb,
        reason -> Text,
        error -> Text,
        attempts -> Integer,
        created_at -> Timestamptz,
        raw_headers -> Nullable<Binary>,
        replay_requested_at -> Nullable<Timestamptz>,
    }
}
