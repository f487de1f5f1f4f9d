//! Code shared by the runnable examples (and run by the test suite): the quickstart's whole flow.
#![allow(missing_docs)]

pub mod quickstart;
