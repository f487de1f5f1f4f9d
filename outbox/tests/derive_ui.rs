//! Compile-time behaviour of `#[derive(Event)]`: what it accepts and how it reports mistakes.
//!
//! After changing a message, regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p outbox --test derive_ui` and review the `.stderr` diff.

#[test]
fn derive_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
