//! Compile-time checks of attribute values, and spelling suggestions for unknown keys.

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// Checks a Kafka topic name: 1 to 249 characters of `a-z A-Z 0-9 . _ -`, and not `.` or `..`.
///
/// Same rules as `outbox::validate_topic`, with messages that fit a compile error.
pub(crate) fn topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        let example = "topic = \"orders\"";
        return Err(format!(
            "`topic` must not be empty: give the Kafka topic the event is published to, e.g. \
             `{example}`"
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("invalid Kafka topic `{topic}`: the names `.` and `..` are reserved by Kafka"));
    }
    if let Some(c) = topic.chars().find(|&c| !is_topic_char(c)) {
        return Err(format!(
            "invalid Kafka topic `{topic}`: it contains {c:?}, which Kafka does not allow; \
             topic names use only a-z A-Z 0-9 . _ -"
        ));
    }
    // Every character is ASCII now, so bytes are characters.
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "invalid Kafka topic: it is {} characters long, Kafka allows at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    Ok(())
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Checks an event name (the CloudEvents `ce_type`): anything but blank.
pub(crate) fn name(name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "empty"
    } else if name.trim().is_empty() {
        "blank"
    } else {
        return Ok(());
    };
    Err(format!(
        "`name` must not be {problem}: it is the event type consumers dispatch on; leave `name` \
         out to use the struct's name"
    ))
}

/// The candidate closest to `unknown`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|&candidate| (edit_distance(unknown, candidate), candidate))
        .filter(|&(distance, candidate)| distance <= candidate.len().div_ceil(3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance in characters, where swapping two neighbours counts as one edit, as in typos
/// like `kye` (optimal string alignment distance).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i characters of a and the first j of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(topic("orders.v1_x-Y9").is_ok());
        assert!(topic(&"a".repeat(249)).is_ok());
        assert!(topic("").unwrap_err().contains("must not be empty"));
        assert!(topic(".").unwrap_err().contains("reserved"));
        assert!(topic("..").unwrap_err().contains("reserved"));
        assert!(topic("...").is_ok());
        assert!(topic("order events").unwrap_err().contains("contains ' '"));
        assert!(topic("orders/eu").unwrap_err().contains("contains '/'"));
        assert!(topic("commandé").unwrap_err().contains("contains 'é'"));
        assert!(topic(&"a".repeat(250)).unwrap_err().contains("250 characters"));
    }

    #[test]
    fn names() {
        assert!(name("order.placed").is_ok());
        assert!(name("").unwrap_err().contains("must not be empty"));
        assert!(name("  ").unwrap_err().contains("must not be blank"));
    }

    #[test]
    fn suggestions() {
        let keys = ["topic", "name", "version", "crate"];
        assert_eq!(suggest("topik", &keys), Some("topic"));
        assert_eq!(suggest("topics", &keys), Some("topic"));
        assert_eq!(suggest("verison", &keys), Some("version"));
        assert_eq!(suggest("nmae", &keys), Some("name"));
        assert_eq!(suggest("primary", &keys), None);
        assert_eq!(suggest("x", &keys), None);
        assert_eq!(suggest("kye", &["key"]), Some("key"));
        assert_eq!(suggest("primary", &["key"]), None);
        assert_eq!(edit_distance("nmae", "name"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
