//! Unit tests of grants.

use super::*;

#[test]
fn validity_needs_both_clocks() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let g = Grant::new(now, wall, LeaseDuration::seconds(15).unwrap());
    assert_eq!(g.deadline, Some(now + Duration::from_secs(15)));
    assert!(g.is_valid(now, wall, Duration::from_secs(2)));
    assert!(!g.is_valid(now + Duration::from_secs(14), wall, Duration::from_secs(2)));
    // The machine slept: the monotonic clock did not move, the wall clock did.
    assert!(!g.is_valid(
        now + Duration::from_secs(1),
        wall + Duration::from_secs(60),
        Duration::ZERO
    ));
    let infinite = Grant::new(now, wall, LeaseDuration::Infinite);
    assert!(infinite.is_valid(
        now + Duration::from_secs(3600),
        wall + Duration::from_secs(3600),
        Duration::ZERO
    ));
}
