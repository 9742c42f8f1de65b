//! The appliance's side of drills, sans-IO: which Drill frames make the canary panic.
//!
//! - `drill=off`: never.
//! - No key: only with `drill=insecure` (anyone who can reach the drill port can then crash
//!   the canary); otherwise off.
//! - With a key (whatever `drill=` says, except `off`): a drill must be authenticated **and**
//!   answer the canary's current challenge. A keyed Drill without a challenge (or an older
//!   collector's 16-byte Drill) is a request: the canary answers the sender with a Challenge
//!   frame (tagged) holding its boot id and a fresh counter. The collector sends the drill
//!   again with that challenge; it is accepted once, within [`CHALLENGE_TTL_MS`], and only
//!   while no newer challenge was issued. Counters start at 1 and only grow within a boot;
//!   the boot id is random per boot. So a recorded drill cannot be replayed: not in the same
//!   boot (its counter was used or superseded), not in a later boot (other boot id).
//!
//! The canary has no wall clock, so the challenge is its own state, not a time: `now_ms` is
//! its uptime, used only for the challenge's lifetime.

use crate::auth::Key;
use crate::wire::{self, Challenge, ChallengeRepr, Repr, WireError};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL_MS: u64 = 10_000;

/// The `drill=` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrillPolicy {
    /// Never act on a drill.
    Off,
    /// Only authenticated drills that answer a challenge (needs a key; off without one).
    #[default]
    Keyed,
    /// Also unauthenticated drills when no key is set (with a key, as `Keyed`).
    Insecure,
}

/// Why a datagram on the drill port did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Drills are off (`drill=off`, or no key and not `drill=insecure`).
    Disabled,
    /// Not a valid frame, or not authenticated as the key requires.
    Frame(WireError),
    /// A valid frame of another kind.
    NotADrill,
    /// The challenge is for another boot of the canary.
    OtherBoot,
    /// The challenge is not the current one (used, superseded, expired, or never issued).
    StaleChallenge,
}

/// What the canary does with a datagram on its drill port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Panic as a drill after `delay_ms`.
    Drill {
        /// The collector's nonce (goes into the panic message).
        nonce: u64,
        /// Delay before panicking.
        delay_ms: u32,
    },
    /// Send this challenge (tagged with the key) back to the datagram's source.
    Challenge(ChallengeRepr),
    /// Do nothing (log it).
    Refused(Refusal),
}

/// The drill state of one boot.
#[derive(Debug)]
pub struct DrillGuard<'k> {
    boot_id: [u8; 16],
    key: Option<&'k Key>,
    policy: DrillPolicy,
    /// The last counter issued (0: none yet).
    issued: u64,
    /// The current challenge's counter and when it stops being valid.
    current: Option<(u64, u64)>,
    /// Datagrams refused so far.
    refused: u64,
}

impl<'k> DrillGuard<'k> {
    /// The guard for boot `boot_id` with the fleet key (if any) and the `drill=` policy.
    pub const fn new(boot_id: [u8; 16], key: Option<&'k Key>, policy: DrillPolicy) -> Self {
        DrillGuard {
            boot_id,
            key,
            policy,
            issued: 0,
            current: None,
            refused: 0,
        }
    }

    /// Whether any drill can be acted on under this key and policy.
    pub fn enabled(&self) -> bool {
        match self.policy {
            DrillPolicy::Off => false,
            DrillPolicy::Keyed => self.key.is_some(),
            DrillPolicy::Insecure => true,
        }
    }

    /// How many datagrams were refused so far (for rate-limited logging: a flood of bad
    /// frames must not turn into a flood of console lines).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Decides what a datagram on the drill port does at uptime `now_ms`.
    pub fn handle(&mut self, datagram: &[u8], now_ms: u64) -> Verdict {
        let v = self.decide(datagram, now_ms);
        if matches!(v, Verdict::Refused(_)) {
            self.refused = self.refused.saturating_add(1);
        }
        v
    }

    fn decide(&mut self, datagram: &[u8], now_ms: u64) -> Verdict {
        if !self.enabled() {
            return Verdict::Refused(Refusal::Disabled);
        }
        let d = match wire::parse(datagram, self.key) {
            Ok(Repr::Drill(d)) => d,
            Ok(_) => return Verdict::Refused(Refusal::NotADrill),
            Err(e) => return Verdict::Refused(Refusal::Frame(e)),
        };
        if self.key.is_none() {
            // drill=insecure without a key: nothing to check a challenge with.
            return Verdict::Drill {
                nonce: d.nonce,
                delay_ms: d.delay_ms,
            };
        }
        let Some(c) = d.challenge else {
            // A request: issue a new challenge (it supersedes any unanswered one).
            self.issued = self.issued.saturating_add(1);
            self.current = Some((self.issued, now_ms.saturating_add(CHALLENGE_TTL_MS)));
            return Verdict::Challenge(ChallengeRepr {
                nonce: d.nonce,
                challenge: Challenge {
                    boot_id: self.boot_id,
                    counter: self.issued,
                },
            });
        };
        if c.boot_id != self.boot_id {
            return Verdict::Refused(Refusal::OtherBoot);
        }
        match self.current {
            Some((counter, until)) if counter == c.counter && now_ms < until => {
                self.current = None;
                Verdict::Drill {
                    nonce: d.nonce,
                    delay_ms: d.delay_ms,
                }
            }
            _ => Verdict::Refused(Refusal::StaleChallenge),
        }
    }
}
