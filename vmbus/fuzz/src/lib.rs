//! Fuzz harnesses for everything in `vmbus` that reads bytes written by the host: VMBus
//! channel messages (alone and through a live `Connection` against the host model) and ring
//! buffers (indices, descriptors, packet headers). Each harness must never panic.

use vmbus::ring::{parse_packet, Ring};
use vmbus::{ConnectOptions, Connection, SynicMode, Version};
use vmbus_sim::{Guest, Personality, Sim, SimArch, SimConfig, SimOffer};

/// Host→guest messages: the parser directly, then the same bytes split into SynIC messages
/// injected while the guest collects offers.
pub fn host_messages(data: &[u8]) {
    for v in [Version(0), Version::WIN8_1, Version::WIN10_V5_3] {
        let _ = vmbus::msg::parse_host(data, v);
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let arch = if sel & 1 == 0 {
        SimArch::X86_64
    } else {
        SimArch::Aarch64
    };
    let mut cfg = SimConfig::new(
        arch,
        Personality::HyperV {
            max_version: Version::WIN10_V5_3,
        },
    );
    cfg.cpus = 1;
    cfg.memory_pages = 64;
    cfg.offers = vec![SimOffer {
        if_type: vmbus::guid::SYNTHVID,
        if_instance: vmbus::Guid([7; 16]),
        relid: 1,
        dedicated_interrupt: false,
        mmio_megabytes: 8,
    }];
    let sim = Sim::new(cfg);
    let g = Guest::boot(&sim, SynicMode::Polling);
    let opts = ConnectOptions {
        reply_timeout: 200_000,
        ..ConnectOptions::default()
    };
    let Ok(mut c) = Connection::connect(g.hv(0), &g.clock, &sim.mem, &g.synic, &opts) else {
        panic!("connect failed without fuzz input");
    };
    // Chunks: [type selector, payload_size field, length, bytes...].
    let mut msgs = Vec::new();
    let mut r = rest;
    while r.len() >= 3 && msgs.len() < 32 {
        let (ty_sel, size, len) = (r[0], r[1], r[2] as usize);
        r = &r[3..];
        let n = len.min(r.len());
        let ty = match ty_sel % 8 {
            0 => vmbus::synic::HVMSG_TIMER_EXPIRED,
            1 => u32::from(ty_sel) << 8,
            _ => 1,
        };
        msgs.push((ty, size, r[..n].to_vec()));
        r = &r[n..];
    }
    sim.faults(|f| f.inject_before_all_offers = msgs);
    let _ = c.request_offers(g.hv(0), &g.clock);
    assert!(c.offers().len() <= vmbus::connection::MAX_OFFERS);
    for _ in 0..64 {
        if c.poll(g.hv(0), &g.clock).is_none() {
            break;
        }
    }
}

/// Integration-component messages (KVP, issue 13): the negotiate and SET parsers directly,
/// then the bytes split into in-band packets the KVP driver reads and answers through a
/// channel double. Chunks: [length, bytes...].
pub fn ic_message(data: &[u8]) {
    use vmbus::ic::kvp::{self, KvpDevice};
    use vmbus_sim::synthvid_link::{HostDevice, HostIo, HostPacket, Link, SimMemory};
    let mut m = data.to_vec();
    m.resize(data.len() + 64, 0);
    let _ = vmbus::ic::negotiate_in_place(&mut m, data.len(), &kvp::VERSIONS);
    let _ = kvp::parse_set(data);
    struct Null;
    impl HostDevice for Null {
        fn on_packet(&mut self, _: &mut HostIo<'_>, _: &HostPacket) {}
    }
    let link = Link::new(
        SimMemory::new(0x10_0000, 1 << 16),
        64 * 1024,
        Box::new(Null),
    );
    let mut dev = KvpDevice::new(link.guest());
    let mut r = data;
    let mut n = 0;
    while !r.is_empty() && n < 16 {
        let len = usize::from(r[0]) * 16;
        let len = len.min(r.len() - 1);
        let chunk = &r[1..1 + len];
        link.inject(|io| {
            let _ = io.send_inband(chunk);
        });
        r = &r[1 + len..];
        n += 1;
    }
    let mut buf = vec![0u8; kvp::MAX_PACKET + 64];
    let _ = dev.poll(&mut buf);
    assert!(dev.items().vm_name.as_str().len() <= kvp::ITEM_CAP);
    assert!(dev.stats().messages <= 16);
}

/// A host-written ring: arbitrary data area, indices, feature bits and pending size.
pub fn ring_read(data: &[u8]) {
    let _ = parse_packet(data);
    if data.len() < 16 {
        return;
    }
    let pages = 3;
    let mut backing = vec![0u64; (pages + 1) * 512];
    let base = backing.as_mut_ptr() as *mut u8;
    let base = base.wrapping_add(base.align_offset(4096));
    // SAFETY: `pages` pages inside `backing`, aligned above.
    let ring = unsafe { Ring::new(base, pages * 4096) }.expect("valid ring size");
    let size = ring.data_size() as usize;
    let body = &data[16..];
    if !body.is_empty() {
        for i in 0..size {
            // SAFETY: inside the data area of `backing`.
            unsafe { *base.add(4096 + i) = body[i % body.len()] };
        }
    }
    let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let (mut w, mut r) = (word(0), word(4));
    if data[8] & 1 == 0 {
        // Mostly-valid indices reach deeper code.
        w = (w % size as u32) & !7;
        r = (r % size as u32) & !7;
    }
    // SAFETY: control page fields at their offsets inside `backing`.
    unsafe {
        base.cast::<u32>().write(w);
        base.add(4).cast::<u32>().write(r);
        base.add(12).cast::<u32>().write(word(12));
        base.add(64).cast::<u32>().write(u32::from(data[9] & 1));
    }
    let mut buf = vec![0u8; 8192];
    for _ in 0..64 {
        match ring.read(&mut buf) {
            Ok(Some(o)) => {
                if let Ok(p) = parse_packet(&buf[..o.len]) {
                    let _ = p.kind.xfer_ranges().count();
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(backing);
}
