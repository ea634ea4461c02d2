//! Token-bucket rate limiting of a device's I/O, enforced by the VMM where the guest cannot
//! lift it (docker's `--device-read-bps` and kin, which a container's cgroup enforces).
//!
//! The design follows Firecracker's rate limiter: each limited quantity (bytes and operations,
//! for reads and for writes apart) has a [`TokenBucket`] that refills continuously at its
//! rate and holds at most one second's worth. A device asks [`RateLimiter::consume`] before
//! it serves a request; when the request does not fit, the limiter arms a timerfd for the
//! moment it will, and the device stops taking requests from its queue until the timer
//! fires (the fd is one of its event-manager sources) and it calls
//! [`RateLimiter::on_timer`]. A request larger than a bucket is admitted once that bucket is
//! full, leaving it in debt, so it never waits forever and the average rate still holds.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};

/// Nanoseconds per second: a bucket's level is kept in token-nanoseconds, so that refilling
/// at `rate` tokens per second adds exactly `elapsed_ns * rate`.
const NANOS: i128 = 1_000_000_000;

/// Limits on one disk, per second; 0: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimits {
    pub read_bps: u64,
    pub write_bps: u64,
    pub read_iops: u64,
    pub write_iops: u64,
}

impl IoLimits {
    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// A bucket of tokens refilled at `rate` per second, holding at most `capacity`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    /// Tokens times [`NANOS`]; negative while repaying an over-size request.
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` tokens per second holding one second's worth; `None` for 0
    /// (unlimited).
    pub fn new(rate: u64, now: Instant) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate,
            capacity: rate,
            level: i128::from(rate) * NANOS,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        // Bounded by the capacity at once, so a long idle time cannot overflow anything.
        let full = i128::from(self.capacity) * NANOS;
        let added = i128::try_from(elapsed)
            .unwrap_or(i128::MAX)
            .saturating_mul(i128::from(self.rate));
        self.level = self.level.saturating_add(added).min(full);
    }

    /// How long until `tokens` may be taken; zero when they may be now. A request above the
    /// capacity may be taken when the bucket is full.
    pub fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.refill(now);
        let need = i128::from(tokens.min(self.capacity)) * NANOS;
        if self.level >= need {
            return Duration::ZERO;
        }
        // Round up, so that the timer never fires a nanosecond early.
        let rate = i128::from(self.rate);
        let nanos = (need - self.level + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `tokens` (the caller checked [`Self::wait_for`]).
    pub fn take(&mut self, tokens: u64) {
        self.level = self
            .level
            .saturating_sub(i128::from(tokens).saturating_mul(NANOS));
    }

    /// Whole tokens available now (negative while in debt).
    #[cfg(test)]
    pub fn available(&mut self, now: Instant) -> i128 {
        self.refill(now);
        self.level / NANOS
    }
}

/// Which way a request moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// The buckets of one device and the timer that wakes it when they have refilled.
#[derive(Debug)]
pub struct RateLimiter {
    read_bytes: Option<TokenBucket>,
    read_ops: Option<TokenBucket>,
    write_bytes: Option<TokenBucket>,
    write_ops: Option<TokenBucket>,
    timer: OwnedFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter for `limits` with full buckets.
    pub fn new(limits: IoLimits) -> io::Result<Self> {
        Self::new_at(limits, Instant::now())
    }

    /// [`Self::new`] with its buckets full at `now`.
    pub fn new_at(limits: IoLimits, now: Instant) -> io::Result<Self> {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Self {
            read_bytes: TokenBucket::new(limits.read_bps, now),
            read_ops: TokenBucket::new(limits.read_iops, now),
            write_bytes: TokenBucket::new(limits.write_bps, now),
            write_ops: TokenBucket::new(limits.write_iops, now),
            timer,
            blocked: false,
        })
    }

    /// Whether the device must wait for the timer before it serves anything.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd to watch for readability.
    pub fn timer_fd(&self) -> BorrowedFd<'_> {
        self.timer.as_fd()
    }

    /// Takes one operation of `bytes` from the buckets of `dir` and returns true, or, when it
    /// does not fit, takes nothing, arms the timer for when it will, and returns false.
    pub fn consume(&mut self, dir: Direction, bytes: u64) -> bool {
        self.consume_at(dir, bytes, Instant::now())
    }

    /// [`Self::consume`] at `now`.
    pub fn consume_at(&mut self, dir: Direction, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let (b, o) = match dir {
            Direction::Read => (&mut self.read_bytes, &mut self.read_ops),
            Direction::Write => (&mut self.write_bytes, &mut self.write_ops),
        };
        let wait_bytes = b
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(bytes, now));
        let wait_ops = o.as_mut().map_or(Duration::ZERO, |o| o.wait_for(1, now));
        let wait = wait_bytes.max(wait_ops);
        if wait.is_zero() {
            if let Some(b) = b {
                b.take(bytes);
            }
            if let Some(o) = o {
                o.take(1);
            }
            return true;
        }
        self.arm(wait);
        false
    }

    fn arm(&mut self, wait: Duration) {
        // A zero it_value would disarm the timer: at least a nanosecond.
        let wait = wait.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(wait.subsec_nanos()),
            },
        };
        match timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &spec) {
            Ok(_) => self.blocked = true,
            // Without a timer nothing would wake the device: let the request through.
            Err(e) => tracing::error!("rate limiter: cannot arm its timer: {e}"),
        }
    }

    /// Call when the timer fd is readable: the device may serve requests again.
    pub fn on_timer(&mut self) {
        let mut expirations = [0u8; 8];
        // Nothing to read (a spurious wake-up) is as good as an expiry: consume rearms.
        let _ = rustix::io::read(&self.timer, &mut expirations);
        self.blocked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0).unwrap();
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.take(1000);
        assert_eq!(b.available(t0), 0);
        // 1000 per second: 1 token a millisecond.
        assert_eq!(b.wait_for(10, t0), 10 * MS);
        assert_eq!(b.available(t0 + 10 * MS), 10);
        assert_eq!(b.wait_for(10, t0 + 10 * MS), Duration::ZERO);
        // Never more than the capacity, however long it idles.
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 1000);
        assert!(TokenBucket::new(0, t0).is_none(), "0 is unlimited");
    }

    #[test]
    fn an_over_size_request_waits_for_a_full_bucket_then_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0).unwrap();
        b.take(50);
        // 300 > capacity 100: it waits until the bucket is full (50 more tokens: 0.5 s).
        assert_eq!(b.wait_for(300, t0), 500 * MS);
        let t1 = t0 + 500 * MS;
        assert_eq!(b.wait_for(300, t1), Duration::ZERO);
        b.take(300);
        assert_eq!(b.available(t1), -200);
        // The debt is repaid before the next request: 2 s for the debt, 0.01 s for 1 token.
        assert_eq!(b.wait_for(1, t1), 2010 * MS);
    }

    #[test]
    fn rates_hold_over_many_requests() {
        // 1 MiB/s, 64 KiB requests: 3 MiB take 2 s after the first (full) second's worth.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, t0).unwrap();
        let mut now = t0;
        for _ in 0..48 {
            now += b.wait_for(64 << 10, now);
            b.take(64 << 10);
        }
        let took = now - t0;
        assert!(took >= Duration::from_secs(2), "{took:?}");
        assert!(took < Duration::from_millis(2010), "{took:?}");
    }

    #[test]
    fn reads_and_writes_have_their_own_buckets() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new_at(
            IoLimits {
                read_iops: 2,
                write_bps: 1000,
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        assert!(l.consume_at(Direction::Write, 1000, t0));
        assert!(
            l.consume_at(Direction::Read, 1 << 30, t0),
            "reads: no byte limit"
        );
        assert!(l.consume_at(Direction::Read, 1, t0));
        assert!(
            !l.consume_at(Direction::Read, 1, t0),
            "the third read op this second"
        );
        assert!(l.is_blocked());
        assert!(
            !l.consume_at(Direction::Write, 1, t0),
            "blocked until the timer fires"
        );
        l.on_timer();
        assert!(!l.is_blocked());
        // After half a second: one read op and 500 bytes of writes.
        let t1 = t0 + 500 * MS;
        assert!(l.consume_at(Direction::Read, 1, t1));
        assert!(l.consume_at(Direction::Write, 500, t1));
        l.on_timer();
        assert!(!l.consume_at(Direction::Write, 1, t1));
    }

    #[test]
    fn a_request_that_does_not_fit_takes_nothing() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new_at(
            IoLimits {
                read_bps: 100,
                read_iops: 10,
                ..Default::default()
            },
            t0,
        )
        .unwrap();
        assert!(l.consume_at(Direction::Read, 60, t0));
        // 60 more bytes do not fit; the op must not be taken either.
        assert!(!l.consume_at(Direction::Read, 60, t0));
        l.on_timer();
        let ops = l.read_ops.as_mut().unwrap().available(t0);
        assert_eq!(ops, 9);
    }

    #[test]
    fn the_timer_fires_when_the_bucket_has_refilled() {
        // 1000 ops per second, all taken: the next one fits in a millisecond.
        let mut l = RateLimiter::new(IoLimits {
            write_iops: 1000,
            ..Default::default()
        })
        .unwrap();
        // Take ops until one does not fit (1000, and as many more as refill meanwhile).
        let mut taken = 0;
        while l.consume(Direction::Write, 0) {
            taken += 1;
            assert!(taken < 100_000, "the bucket never ran dry");
        }
        assert!(taken >= 1000);
        let fd = l.timer_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
        assert_eq!(ready, 1, "the timer fired");
        l.on_timer();
        assert!(l.consume(Direction::Write, 0));
    }
}
