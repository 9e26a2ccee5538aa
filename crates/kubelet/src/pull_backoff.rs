//! Image pull back-off, as upstream's `images/` puller: after a failed pull, a pod waits before
//! pulling the same image again (ImagePullBackOff), with the restart back-off's delays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::lock;
use super::pods::backoff;

/// A pod and the (normalized) image it pulls.
type Key = (String, String);

#[derive(Default)]
pub struct PullBackoff {
    /// Failed pulls per (pod UID, image): how many in a row, and when the last one ended.
    failures: Mutex<HashMap<Key, (u32, Instant)>>,
}

impl PullBackoff {
    /// Whether pod `uid` must wait before pulling `image` again.
    pub fn backing_off(&self, uid: &str, image: &str) -> bool {
        self.backing_off_at(uid, image, Instant::now())
    }

    /// Records how a pull of `image` for pod `uid` ended: a success forgets earlier failures.
    pub fn pulled(&self, uid: &str, image: &str, ok: bool) {
        self.pulled_at(uid, image, ok, Instant::now())
    }

    fn backing_off_at(&self, uid: &str, image: &str, now: Instant) -> bool {
        let key = (uid.to_string(), image.to_string());
        lock(&self.failures)
            .get(&key)
            .is_some_and(|(n, at)| now.saturating_duration_since(*at) < backoff(n + 1))
    }

    fn pulled_at(&self, uid: &str, image: &str, ok: bool, now: Instant) {
        let key = (uid.to_string(), image.to_string());
        let mut failures = lock(&self.failures);
        if ok {
            failures.remove(&key);
        } else {
            let n = failures.get(&key).map(|(n, _)| *n).unwrap_or(0);
            failures.insert(key, (n + 1, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn failed_pulls_back_off_longer_each_time_until_one_succeeds() {
        let b = PullBackoff::default();
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        assert!(!b.backing_off_at("u", "img", t0));
        b.pulled_at("u", "img", false, t0);
        // First failure: 10 s.
        assert!(b.backing_off_at("u", "img", secs(9)));
        assert!(!b.backing_off_at("u", "img", secs(10)));
        assert!(!b.backing_off_at("u", "other", secs(1)), "per image");
        assert!(!b.backing_off_at("v", "img", secs(1)), "per pod");
        // Second failure in a row: 20 s from its end.
        b.pulled_at("u", "img", false, secs(10));
        assert!(b.backing_off_at("u", "img", secs(29)));
        assert!(!b.backing_off_at("u", "img", secs(30)));
        b.pulled_at("u", "img", true, secs(30));
        b.pulled_at("u", "img", false, secs(40));
        assert!(
            !b.backing_off_at("u", "img", secs(50)),
            "a success starts over"
        );
    }
}
