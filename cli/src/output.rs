//! Human-readable tables and JSON for the operations commands.

use std::time::Duration;

use outbox::ops;

use crate::Failure;

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Runtime(format!("json: {e}")))?;
    println!("{text}");
    Ok(())
}

/// What `status` shows: the outbox's figures and the inbox's, one JSON object (the inbox's fields
/// beside the outbox's, as `dead_letters`; absent when the database has no inbox tables).
#[derive(serde::Serialize)]
pub(crate) struct Status {
    #[serde(flatten)]
    pub outbox: ops::Status,
    #[serde(flatten)]
    pub inbox: Option<inbox::ops::Status>,
}

pub(crate) fn print_status(status: &Status) {
    let s = &status.outbox;
    let oldest = s.oldest_pending_age.map(|d| format!(" (oldest {})", age(d))).unwrap_or_default();
    println!("outbox: {} pending{oldest}, {} parked, {} sent and kept", s.pending, s.parked, s.sent_kept);
    match &s.lease {
        None => println!("relay lease: none (no relay has run on this database)"),
        Some(l) => {
            let owner = l.owner.map(|o| o.to_string());
            match (&owner, l.expires_in) {
                (Some(owner), Some(left)) => {
                    println!(
                        "relay lease \"{}\": held by {owner}, epoch {}, expires in {}",
                        printable(&l.name),
                        l.epoch,
                        age(left)
                    )
                }
                (Some(owner), None) => println!(
                    "relay lease \"{}\": expired (last held by {owner}, epoch {}); no relay is publishing",
                    printable(&l.name),
                    l.epoch
                ),
                (None, _) => {
                    println!(
                        "relay lease \"{}\": released (epoch {}); no relay is publishing",
                        printable(&l.name),
                        l.epoch
                    )
                }
            }
        }
    }
    match &status.inbox {
        Some(inbox) => println!("inbox dead letters: {}", inbox.dead_letters),
        None => println!("inbox dead letters: none (no inbox tables in this database)"),
    }
    if !s.per_topic.is_empty() {
        println!();
        let rows = s.per_topic.iter().map(|t| {
            vec![
                t.topic.clone(),
                t.pending.to_string(),
                t.parked.to_string(),
                t.oldest_pending_age.map(age).unwrap_or_else(|| "-".into()),
            ]
        });
        table(&["TOPIC", "PENDING", "PARKED", "OLDEST PENDING"], rows);
    }
}

pub(crate) fn print_parked(parked: &[ops::ParkedMessage]) {
    if parked.is_empty() {
        println!("no parked messages");
        return;
    }
    let rows = parked.iter().map(|m| {
        vec![
            m.seq.to_string(),
            m.id.to_string(),
            m.topic.clone(),
            m.key.clone().unwrap_or_else(|| "-".into()),
            format!("{} v{}", m.event_type, m.event_version),
            m.attempts.to_string(),
            time(m.parked_at),
            m.last_error.clone().unwrap_or_default(),
        ]
    });
    table(&["SEQ", "ID", "TOPIC", "KEY", "TYPE", "ATTEMPTS", "PARKED AT", "LAST ERROR"], rows);
}

pub(crate) fn print_dead_letters(dead: &[inbox::ops::DeadLetter]) {
    if dead.is_empty() {
        println!("no dead letters");
        return;
    }
    let rows = dead.iter().map(|d| {
        vec![
            d.id.to_string(),
            d.consumer_group.clone(),
            format!("{}/{}@{}", d.topic, d.partition, d.offset),
            d.message_id.map(|id| id.to_string()).unwrap_or_else(|| "-".into()),
            d.reason.clone(),
            d.attempts.to_string(),
            time(d.created_at),
            d.replay_requested_at.map(time).unwrap_or_else(|| "-".into()),
            short(&d.headers.to_string(), 120),
            d.error.clone(),
        ]
    });
    table(
        &[
            "ID",
            "GROUP",
            "TOPIC/PARTITION@OFFSET",
            "MESSAGE ID",
            "REASON",
            "ATTEMPTS",
            "CREATED AT",
            "REPLAY REQUESTED",
            "HEADERS",
            "ERROR",
        ],
        rows,
    );
}

/// At most `max` characters of `text`, marked with `…` when cut (`--json` shows everything).
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Left-aligned columns; the last one (free text) is not padded.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.map(|row| row.iter().map(|cell| printable(cell)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `text` safe for a terminal: control characters (ESC sequences, carriage returns, ...) and the
/// bidirectional-override characters are shown as `\u{..}` instead of being interpreted.
/// Dead letters, parked keys and errors quote what producers and brokers sent.
pub(crate) fn printable(text: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A duration for people: 4.2s, 3m12s, 5h07m, 2d03h.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}
