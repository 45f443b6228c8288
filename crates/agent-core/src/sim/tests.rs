//! The simulator itself: seeds replay exactly; a quiet cluster settles.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn a_seed_replays_exactly() {
    let o = SimOptions::default();
    let a = run(7, &o);
    let b = run(7, &o);
    assert_eq!(a.trace, b.trace);
    assert!(a.trace.len() > 20, "{:?}", a.trace);
}
