//! Runnable examples of the outbox and inbox crates; see `examples/`.
