//! Counting and checking: the run-wide counters and latency histograms every connection task
//! feeds, each connection's receive state, and the exact delivery check at the end.
//!
//! Owns the rules of "delivered exactly": which messages each connection must see (every acked
//! message of its stream after its join seq, except its own), and how duplicates, disorder, gaps
//! and wrong content are told apart. It must not do I/O or format output (that is `report`).
//!
//! The per-message path is `RecvState::on_message` plus one histogram record and one atomic add:
//! no allocation. Content is checked without storing messages: each connection keeps a wrapping
//! sum of a 64-bit mix of (seq, publisher, counter) over what it received, and the check compares
//! it with the same sum over the acks the publishers got.
//!
//! `hist`: latency histograms. `shared`: the run-wide counters. `delivery`: each connection's
//! receive state and the check.

mod delivery;
mod hist;
mod shared;

pub use delivery::{ConnOutcome, DeliveryReport, RecvState, verify};
pub use hist::{Hist, HistData, LatencySummary};
pub use shared::{Counts, Shared};
