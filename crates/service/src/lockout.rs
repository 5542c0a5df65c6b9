//! Lockout of client addresses that keep sending invalid API keys.
//!
//! Keys carry 256 bits of entropy, so guessing one is hopeless; what this
//! stops is the flood itself (every invalid key costs a database lookup)
//! and the replay of leaked or stale key lists. After `limit` invalid keys
//! from one address within `window`, that address's requests get 429 for
//! `window`, with a `Retry-After`, and never reach the database.
//!
//! **Who is refused during a lockout.** Not everything from the address:
//! many customers share one NAT or proxy address, and an attacker behind it
//! could otherwise lock them all out with a handful of junk keys. A request
//! whose key this process has seen authenticate before (from any address)
//! still goes through, so established customers keep working; an attacker
//! cannot get into that set without a valid key. Everything else from the
//! address — unknown keys, revoked keys, keys not seen since the last
//! restart — gets the 429 until the lockout ends. A success never resets
//! the address's failures: otherwise one valid key would let its holder
//! keep guessing at full speed.
//!
//! **Addresses.** The peer address of the TCP connection (a forwarded-for
//! header is never trusted). IPv6 clients are grouped by /64, because one
//! host usually owns a whole /64 and could rotate through it.
//!
//! **Memory.** Both tables are capped. When the address table is full,
//! addresses whose window and lockout are over are dropped; if that frees
//! too little, the addresses that failed longest ago go. Each sweep frees an
//! eighth of the table, so its cost is spread over many insertions and an
//! attacker rotating addresses cannot grow memory or make every request pay
//! for a full scan.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::keys::KeyHash;

/// Keys remembered as having authenticated (32-byte hashes, never keys).
pub const KNOWN_KEYS_CAP: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Invalid keys from one address within `window` that start a lockout;
    /// 0 turns the lockout off.
    pub limit: u32,
    /// How long failures are counted, and how long a lockout lasts.
    pub window: Duration,
    /// Most client addresses tracked at once.
    pub max_addresses: usize,
}

/// The per-address failure counts and the keys known to be good.
#[derive(Debug)]
pub struct BadKeyLockout {
    config: LockoutConfig,
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    addresses: HashMap<IpAddr, Failures>,
    known_keys: HashMap<[u8; 32], Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// When the current counting window began.
    since: Instant,
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

impl Failures {
    /// Whether the entry still means anything at `now`.
    fn is_live(&self, now: Instant, window: Duration) -> bool {
        match self.locked_until {
            Some(until) => now < until,
            None => now.saturating_duration_since(self.since) < window,
        }
    }
}

/// What one invalid key did to its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the address may go on for now.
    Counted,
    /// This failure started a lockout.
    LockedOut,
    /// Not tracked (lockout off, or no address).
    Ignored,
}

impl BadKeyLockout {
    pub fn new(config: LockoutConfig) -> Self {
        Self {
            config,
            tables: Mutex::new(Tables::default()),
        }
    }

    pub fn config(&self) -> LockoutConfig {
        self.config
    }

    fn enabled(&self) -> bool {
        self.config.limit > 0 && self.config.max_addresses > 0
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Before the key is looked up: `Err(retry_after)` when `address` is
    /// locked out and `key` (its hash; `None` for a header that is not a
    /// key at all) has not authenticated before.
    pub fn check(&self, address: IpAddr, key: Option<&KeyHash>) -> Result<(), Duration> {
        self.check_at(address, key, Instant::now())
    }

    pub fn check_at(
        &self,
        address: IpAddr,
        key: Option<&KeyHash>,
        now: Instant,
    ) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let tables = self.tables();
        let locked_until = tables
            .addresses
            .get(&client_prefix(address))
            .and_then(|failures| failures.locked_until)
            .filter(|until| now < *until);
        match locked_until {
            None => Ok(()),
            Some(_) if key.is_some_and(|k| tables.known_keys.contains_key(&k.0)) => Ok(()),
            Some(until) => Err(until - now),
        }
    }

    /// After an invalid key from `address`: counts it, starts a lockout at
    /// the limit (and logs it), and forgets `key` as a known key.
    pub fn record_failure(&self, address: IpAddr, key: Option<&KeyHash>) -> Failure {
        self.record_failure_at(address, key, Instant::now())
    }

    pub fn record_failure_at(
        &self,
        address: IpAddr,
        key: Option<&KeyHash>,
        now: Instant,
    ) -> Failure {
        if !self.enabled() {
            return Failure::Ignored;
        }
        let prefix = client_prefix(address);
        let LockoutConfig {
            limit,
            window,
            max_addresses,
        } = self.config;
        let (outcome, count) = {
            let mut tables = self.tables();
            if let Some(key) = key {
                // A revoked key stops counting as known at its first refusal.
                tables.known_keys.remove(&key.0);
            }
            if !tables.addresses.contains_key(&prefix) && tables.addresses.len() >= max_addresses {
                sweep_addresses(&mut tables.addresses, max_addresses, window, now);
            }
            let fresh = Failures {
                since: now,
                count: 0,
                last: now,
                locked_until: None,
            };
            let failures = tables.addresses.entry(prefix).or_insert(fresh);
            if !failures.is_live(now, window) {
                *failures = fresh;
            }
            failures.count = failures.count.saturating_add(1);
            failures.last = now;
            if failures.locked_until.is_none() && failures.count >= limit {
                failures.locked_until = Some(now + window);
                (Failure::LockedOut, failures.count)
            } else {
                (Failure::Counted, failures.count)
            }
        };
        if outcome == Failure::LockedOut {
            metrics::counter!("photolabel_auth_lockouts_total").increment(1);
            tracing::warn!(
                target: "photolabel::auth",
                address = %prefix,
                failures = count,
                lockout_s = window.as_secs(),
                "too many invalid API keys from one address: its requests with unrecognised \
                 keys get 429 for the lockout period (a scanner, or a client with a revoked key)"
            );
        }
        outcome
    }

    /// After a key authenticated: it passes lockouts from now on.
    pub fn record_success(&self, key: &KeyHash) {
        self.record_success_at(key, Instant::now());
    }

    pub fn record_success_at(&self, key: &KeyHash, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut tables = self.tables();
        if !tables.known_keys.contains_key(&key.0) && tables.known_keys.len() >= KNOWN_KEYS_CAP {
            evict_oldest(&mut tables.known_keys, KNOWN_KEYS_CAP, |seen| *seen);
        }
        tables.known_keys.insert(key.0, now);
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked_addresses(&self) -> usize {
        self.tables().addresses.len()
    }

    /// Keys remembered as good now.
    pub fn known_keys(&self) -> usize {
        self.tables().known_keys.len()
    }
}

/// Drops the entries that no longer mean anything; if fewer than an eighth
/// of `cap` went, drops the longest-idle unlocked ones too.
fn sweep_addresses(
    addresses: &mut HashMap<IpAddr, Failures>,
    cap: usize,
    window: Duration,
    now: Instant,
) {
    addresses.retain(|_, failures| failures.is_live(now, window));
    // Locked addresses go last: evicting one would hand it a fresh set of
    // guesses.
    evict_oldest(addresses, cap, |failures| {
        (failures.locked_until.is_some(), failures.last)
    });
}

/// Seven eighths of `cap`, leaving room for an eighth before the next sweep.
fn target_len(cap: usize) -> usize {
    cap - cap.div_ceil(8)
}

/// Removes the entries that `rank` puts first until the map is at seven
/// eighths of `cap`.
fn evict_oldest<K: Copy + Eq + std::hash::Hash, V, R: Ord + Copy>(
    map: &mut HashMap<K, V>,
    cap: usize,
    rank: impl Fn(&V) -> R,
) {
    let target = target_len(cap);
    if map.len() <= target {
        return;
    }
    let mut ranked: Vec<(R, K)> = map.iter().map(|(k, v)| (rank(v), *k)).collect();
    let excess = map.len() - target;
    ranked.select_nth_unstable_by_key(excess - 1, |(r, _)| *r);
    for (_, key) in &ranked[..excess] {
        map.remove(key);
    }
}

/// The unit an address is counted under: the IPv4 address, or the /64 of
/// an IPv6 address (IPv4-mapped IPv6 counts as IPv4).
pub fn client_prefix(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const WINDOW: Duration = Duration::from_secs(60);

    fn lockout(limit: u32, max_addresses: usize) -> BadKeyLockout {
        BadKeyLockout::new(LockoutConfig {
            limit,
            window: WINDOW,
            max_addresses,
        })
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn key(name: &str) -> KeyHash {
        KeyHash::of(name)
    }

    #[test]
    fn limit_failures_lock_the_address_for_the_window() {
        let l = lockout(3, 100);
        let t0 = Instant::now();
        let guess = key("pl_guess");
        assert_eq!(
            l.record_failure_at(ip(1), Some(&guess), t0),
            Failure::Counted
        );
        assert_eq!(
            l.record_failure_at(ip(1), Some(&guess), t0),
            Failure::Counted
        );
        assert_eq!(l.check_at(ip(1), Some(&guess), t0), Ok(()));
        assert_eq!(
            l.record_failure_at(ip(1), Some(&guess), t0),
            Failure::LockedOut
        );
        assert_eq!(l.check_at(ip(1), Some(&guess), t0), Err(WINDOW));
        assert_eq!(
            l.check_at(ip(1), None, t0 + Duration::from_secs(59)),
            Err(Duration::from_secs(1))
        );
        // Another address is not affected.
        assert_eq!(l.check_at(ip(2), Some(&guess), t0), Ok(()));
        // The lockout ends with the window; counting starts afresh.
        let t1 = t0 + WINDOW;
        assert_eq!(l.check_at(ip(1), Some(&guess), t1), Ok(()));
        assert_eq!(
            l.record_failure_at(ip(1), Some(&guess), t1),
            Failure::Counted
        );
        assert_eq!(l.check_at(ip(1), Some(&guess), t1), Ok(()));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_lock() {
        let l = lockout(3, 100);
        let t0 = Instant::now();
        for i in 0..10u32 {
            let t = t0 + WINDOW / 2 * i;
            assert_eq!(l.record_failure_at(ip(1), None, t), Failure::Counted, "{i}");
        }
    }

    #[test]
    fn known_keys_pass_a_lockout_and_successes_do_not_reset_it() {
        let l = lockout(2, 100);
        let t0 = Instant::now();
        let good = key("pl_good");
        l.record_success_at(&good, t0);
        l.record_failure_at(ip(1), None, t0);
        l.record_success_at(&good, t0);
        assert_eq!(l.record_failure_at(ip(1), None, t0), Failure::LockedOut);
        assert_eq!(l.check_at(ip(1), Some(&good), t0), Ok(()));
        assert_eq!(l.check_at(ip(1), Some(&key("pl_other")), t0), Err(WINDOW));
        assert_eq!(l.check_at(ip(1), None, t0), Err(WINDOW));
        // Refused once (revoked, say), a key is no longer known.
        l.record_failure_at(ip(1), Some(&good), t0);
        assert_eq!(l.check_at(ip(1), Some(&good), t0), Err(WINDOW));
    }

    #[test]
    fn zero_limit_turns_it_off() {
        let l = lockout(0, 100);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(l.record_failure_at(ip(1), None, t0), Failure::Ignored);
        }
        assert_eq!(l.check_at(ip(1), None, t0), Ok(()));
        assert_eq!(l.tracked_addresses(), 0);
    }

    #[test]
    fn rotating_addresses_cannot_grow_the_table() {
        let cap = 64;
        let l = lockout(2, cap);
        let t0 = Instant::now();
        // An early lockout, then a flood of single failures from new
        // addresses, each a little later.
        l.record_failure_at(ip(0), None, t0);
        l.record_failure_at(ip(0), None, t0);
        for n in 1..10_000u32 {
            let t = t0 + Duration::from_millis(u64::from(n));
            l.record_failure_at(ip(n), None, t);
            assert!(l.tracked_addresses() <= cap, "{n}");
        }
        let t = t0 + Duration::from_millis(10_000);
        // The early lockout holds, and the newest addresses are still
        // counted: a second failure locks.
        assert!(l.check_at(ip(0), None, t).is_err());
        assert_eq!(l.record_failure_at(ip(9_999), None, t), Failure::LockedOut);
        // Entries age out: after the window, a sweep drops them all.
        let later = t + WINDOW;
        for n in 0..(cap as u32) {
            l.record_failure_at(ip(20_000 + n), None, later);
        }
        assert!(l.tracked_addresses() <= cap);
        assert_eq!(l.check_at(ip(9_999), None, later), Ok(()));
    }

    #[test]
    fn known_keys_are_capped() {
        let l = lockout(2, 8);
        let t0 = Instant::now();
        for n in 0..(KNOWN_KEYS_CAP as u32 + 500) {
            l.record_success_at(
                &key(&format!("pl_{n}")),
                t0 + Duration::from_micros(u64::from(n)),
            );
        }
        assert!(l.known_keys() <= KNOWN_KEYS_CAP);
        // The most recent one is kept.
        l.record_failure_at(ip(1), None, t0);
        l.record_failure_at(ip(1), None, t0);
        let newest = key(&format!("pl_{}", KNOWN_KEYS_CAP as u32 + 499));
        assert_eq!(l.check_at(ip(1), Some(&newest), t0), Ok(()));
        assert!(l.check_at(ip(1), Some(&key("pl_0")), t0).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(client_prefix(a), client_prefix(b));
        assert_ne!(client_prefix(a), client_prefix(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert_eq!(
            client_prefix(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("v4")
        );
        let l = lockout(2, 100);
        let t0 = Instant::now();
        l.record_failure_at(a, None, t0);
        assert_eq!(l.record_failure_at(b, None, t0), Failure::LockedOut);
        assert!(l.check_at(a, None, t0).is_err());
        assert_eq!(l.check_at(c, None, t0), Ok(()));
    }
}
