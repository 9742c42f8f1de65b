//! Version gating as data: a host message the negotiated VMBus version does not have is
//! refused by the connection (counted and reported as malformed), at every version boundary
//! of `msg::MESSAGE_TABLE` that a connection can reach, on both register ABIs.

mod common;

use common::{sim, ARCHES};
use vmbus::connection::Event;
use vmbus::hypercall::VMBUS_MESSAGE_TYPE;
use vmbus::msg::{Direction, MESSAGE_TABLE};
use vmbus::version::SUPPORTED;
use vmbus::{ConnectOptions, Connection, SynicMode};
use vmbus_sim::{Guest, Personality};

#[test]
fn a_host_message_newer_than_the_negotiated_version_is_refused() {
    let mut boundaries = 0;
    for arch in ARCHES {
        for &v in SUPPORTED {
            let s = sim(arch, Personality::HyperV { max_version: v });
            let g = Guest::boot(&s, SynicMode::Polling);
            let hv = g.hv(0);
            let mut c =
                Connection::connect(hv, &g.clock, &s.mem, &g.synic, &ConnectOptions::default())
                    .unwrap();
            assert_eq!(c.version(), v);
            for row in MESSAGE_TABLE
                .iter()
                .filter(|r| r.direction == Direction::HostToGuest)
            {
                let mut m = vec![0u8; row.min_size];
                m[..4].copy_from_slice(&row.ty.0.to_le_bytes());
                let before = c.malformed_messages();
                s.inject(0, VMBUS_MESSAGE_TYPE, m.len() as u8, &m);
                let ev = c.poll(hv, &g.clock);
                let refused = c.malformed_messages() == before + 1;
                if row.since > v {
                    boundaries += 1;
                    assert!(
                        refused && matches!(ev, Some(Event::Malformed(_))),
                        "{arch:?} at {v}: {} (since {}) accepted: {ev:?}",
                        row.name,
                        row.since
                    );
                } else {
                    assert!(
                        !refused,
                        "{arch:?} at {v}: {} (since {}) refused: {ev:?}",
                        row.name, row.since
                    );
                }
            }
        }
    }
    assert!(boundaries > 0);
}
