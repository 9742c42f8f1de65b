//! The appliance's drill policy: off without a key unless insecure; with a key, only an
//! authenticated answer to the canary's own, current, unused challenge is acted on.

use std::vec::Vec;

use crate::auth::Key;
use crate::drill::*;
use crate::wire::{self, Challenge, ChallengeRepr, DrillRepr, Repr, WireError};

const BOOT: [u8; 16] = [0xb0; 16];

fn drill(nonce: u64, challenge: Option<Challenge>, key: Option<&Key>) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let r = Repr::Drill(DrillRepr {
        nonce,
        delay_ms: 7,
        challenge,
    });
    let n = wire::emit(&r, key, &mut buf).unwrap();
    buf[..n].to_vec()
}

/// Sends a request and returns the challenge the guard answers with.
fn challenge_of(g: &mut DrillGuard<'_>, key: &Key, nonce: u64, now: u64) -> Challenge {
    match g.handle(&drill(nonce, None, Some(key)), now) {
        Verdict::Challenge(ChallengeRepr {
            nonce: n,
            challenge,
        }) => {
            assert_eq!(n, nonce, "the challenge echoes the request's nonce");
            assert_eq!(challenge.boot_id, BOOT);
            challenge
        }
        v => panic!("expected a challenge, got {v:?}"),
    }
}

#[test]
fn without_a_key_drills_are_off_unless_insecure() {
    let d = drill(1, None, None);
    let mut off = DrillGuard::new(BOOT, None, DrillPolicy::Keyed);
    assert_eq!(off.handle(&d, 0), Verdict::Refused(Refusal::Disabled));
    let mut never = DrillGuard::new(BOOT, None, DrillPolicy::Off);
    assert_eq!(never.handle(&d, 0), Verdict::Refused(Refusal::Disabled));
    let mut insecure = DrillGuard::new(BOOT, None, DrillPolicy::Insecure);
    assert_eq!(
        insecure.handle(&d, 0),
        Verdict::Drill {
            nonce: 1,
            delay_ms: 7
        }
    );
    assert_eq!((off.refused(), insecure.refused()), (1, 0));
    // drill=off holds with a key too.
    let key = Key::new([3; 32]);
    let mut off = DrillGuard::new(BOOT, Some(&key), DrillPolicy::Off);
    assert_eq!(
        off.handle(&drill(1, None, Some(&key)), 0),
        Verdict::Refused(Refusal::Disabled)
    );
}

#[test]
fn with_a_key_an_unauthenticated_drill_is_refused_whatever_the_policy() {
    let key = Key::new([3; 32]);
    for policy in [DrillPolicy::Keyed, DrillPolicy::Insecure] {
        let mut g = DrillGuard::new(BOOT, Some(&key), policy);
        assert_eq!(
            g.handle(&drill(1, None, None), 0),
            Verdict::Refused(Refusal::Frame(WireError::AuthRequired))
        );
        let c = Challenge {
            boot_id: BOOT,
            counter: 1,
        };
        assert_eq!(
            g.handle(&drill(1, Some(c), Some(&Key::new([4; 32]))), 0),
            Verdict::Refused(Refusal::Frame(WireError::BadAuth))
        );
        // Neither got a challenge issued: the first real request gets counter 1.
        assert_eq!(challenge_of(&mut g, &key, 2, 0).counter, 1);
    }
}

#[test]
fn a_keyed_drill_runs_once_on_the_answer_to_the_current_challenge_and_a_replay_is_refused() {
    let key = Key::new([3; 32]);
    let mut g = DrillGuard::new(BOOT, Some(&key), DrillPolicy::Keyed);
    // A drill without a challenge (what older collectors send) does not panic the canary.
    let c = challenge_of(&mut g, &key, 0x77, 1_000);
    let answer = drill(0x77, Some(c), Some(&key));
    assert_eq!(
        g.handle(&answer, 1_500),
        Verdict::Drill {
            nonce: 0x77,
            delay_ms: 7
        }
    );
    // The same datagram again (a replay) is refused, now and later.
    assert_eq!(
        g.handle(&answer, 1_600),
        Verdict::Refused(Refusal::StaleChallenge)
    );
    // The next request gets a strictly greater counter; the old answer stays refused.
    let c2 = challenge_of(&mut g, &key, 0x78, 2_000);
    assert!(c2.counter > c.counter);
    assert_eq!(
        g.handle(&answer, 2_001),
        Verdict::Refused(Refusal::StaleChallenge)
    );
}

#[test]
fn challenges_are_bound_to_the_boot_expire_and_are_superseded() {
    let key = Key::new([3; 32]);
    let mut g = DrillGuard::new(BOOT, Some(&key), DrillPolicy::Keyed);
    let c = challenge_of(&mut g, &key, 1, 0);
    // An answer recorded in another boot (same counter, other boot id) is refused.
    let other_boot = Challenge {
        boot_id: [0xb1; 16],
        ..c
    };
    assert_eq!(
        g.handle(&drill(1, Some(other_boot), Some(&key)), 1),
        Verdict::Refused(Refusal::OtherBoot)
    );
    // Past its lifetime the challenge is refused.
    assert_eq!(
        g.handle(&drill(1, Some(c), Some(&key)), CHALLENGE_TTL_MS),
        Verdict::Refused(Refusal::StaleChallenge)
    );
    // A newer request supersedes an unanswered challenge.
    let c1 = challenge_of(&mut g, &key, 2, 10_000);
    let c2 = challenge_of(&mut g, &key, 3, 10_001);
    assert_eq!(
        g.handle(&drill(2, Some(c1), Some(&key)), 10_002),
        Verdict::Refused(Refusal::StaleChallenge)
    );
    assert!(matches!(
        g.handle(&drill(3, Some(c2), Some(&key)), 10_003),
        Verdict::Drill { nonce: 3, .. }
    ));
    // Not a drill at all.
    let mut buf = [0u8; 128];
    let n = wire::emit(
        &Repr::Challenge(ChallengeRepr {
            nonce: 1,
            challenge: c2,
        }),
        Some(&key),
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        g.handle(&buf[..n], 10_004),
        Verdict::Refused(Refusal::NotADrill)
    );
}
