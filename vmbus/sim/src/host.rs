//! The host model: per-VP synthetic registers and SynIC, hypercalls, and the VMBus server.
//!
//! The VMBus server reads guest messages at the byte offsets of the Linux headers (not through
//! the guest crate's structs), so it checks the guest's encoding independently.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmbus::guid::Guid;
use vmbus::regs::{CrashCtl, PageReg, StimerConfig, SynReg};
use vmbus::ring::Ring;
use vmbus::synic::{HVMSG_TIMER_EXPIRED, MESSAGE_SIZE, MSG_FLAG_PENDING, VMBUS_MESSAGE_SINT};
use vmbus::{HvStatus, Version, PAGE_SIZE};

use crate::memory::GuestMemory;
pub use crate::personality::{Behaviour, Personality};

/// The register ABI the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimArch {
    X86_64,
    Aarch64,
}

/// A device the host offers.
#[derive(Clone, Debug)]
pub struct SimOffer {
    pub if_type: Guid,
    pub if_instance: Guid,
    pub relid: u32,
    pub dedicated_interrupt: bool,
    pub mmio_megabytes: u16,
}

/// Fault injection.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The next N HvPostMessage calls fail with this status (e.g. INSUFFICIENT_BUFFERS).
    pub post_failures: u32,
    pub post_failure_status: u16,
    /// UNLOAD_RESPONSE is sent this many 100 ns ticks after UNLOAD.
    pub unload_delay: u64,
    /// UNLOAD_RESPONSE is never sent.
    pub drop_unload_response: bool,
    /// Send UNLOAD_RESPONSE to this VP instead of the connect CPU.
    pub unload_reply_vp: Option<u32>,
    /// Answer OPENCHANNEL for this relid with RESCIND_CHANNELOFFER instead of a result.
    pub rescind_on_open: Option<u32>,
    /// Raw (message type, payload size field, bytes) SynIC messages delivered before
    /// ALLOFFERS_DELIVERED.
    pub inject_before_all_offers: Vec<(u32, u8, Vec<u8>)>,
    /// Every EOM on SINT2 brings this (message type, payload size field, bytes) again: an
    /// endless flood.
    pub flood_on_eom: Option<(u32, u8, Vec<u8>)>,
    /// The next N HvSignalEvent calls fail with HV_STATUS_INVALID_CONNECTION_ID.
    pub signal_failures: u32,
    /// VERSION_RESPONSE carries this message connection id instead of the personality's.
    pub version_response_conn_id: Option<u32>,
    /// The TSC page is published with sequence 0 (invalid: fall back to TIME_REF_COUNT).
    pub invalid_tsc_page: bool,
}

/// A crash notification the host received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashNotice {
    pub p: [u64; 5],
    pub ctl: u64,
    pub message: Option<Vec<u8>>,
}

/// Configuration.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub arch: SimArch,
    pub personality: Personality,
    /// The VMBus-server behaviours (from `personality`; each may be changed on its own).
    pub behaviour: Behaviour,
    pub cpus: u32,
    pub memory_pages: usize,
    pub offers: Vec<SimOffer>,
    /// CPUID 0x40000003 EAX | EBX << 32 (arm64: register 0x200 low 64 bits).
    pub privileges: u64,
    /// CPUID 0x40000003 EDX.
    pub features: u32,
    /// CRASH_CTL capabilities as read by the guest.
    pub crash_caps: u64,
    /// Whether the crash registers exist at all (reads and writes fail otherwise).
    pub crash_registers: bool,
    /// Fake-clock ticks (100 ns) added by every `Clock::now` call.
    pub clock_step: u64,
    /// arm64: the HVC conduit implements SMCCC 1.2 (PSCI_FEATURES / SMCCC_VERSION).
    pub smccc: bool,
}

impl SimConfig {
    /// `new` plus the offers the personality's host makes ([`Personality::default_offers`]).
    pub fn with_default_offers(arch: SimArch, personality: Personality) -> Self {
        Self {
            offers: personality.default_offers(),
            ..Self::new(arch, personality)
        }
    }

    /// The personality's identity (privileges, features, crash registers), no offers.
    pub fn new(arch: SimArch, personality: Personality) -> Self {
        let openvmm = personality == Personality::OpenVmm;
        Self {
            arch,
            personality,
            behaviour: personality.behaviour(),
            cpus: 2,
            memory_pages: 1024,
            offers: Vec::new(),
            privileges: if openvmm {
                // issue 17: OpenVMM's EAX 0x87f (no reference TSC page), EBX 0 (no
                // PostMessage/SignalEvent bits, yet both hypercalls work).
                0x87f
            } else {
                // hvhost self-test: EAX 0x27f; EBX bits 4,5 (post messages, signal events).
                0x27f | (0x30 << 32)
            },
            // hvhost self-test: EDX 0x408 (crash MSRs + bit 3); OpenVMM: no crash MSRs.
            features: if openvmm { 0x008 } else { 0x408 },
            crash_caps: if openvmm {
                0
            } else {
                CrashCtl::new()
                    .with_notify(true)
                    .with_notify_msg(true)
                    .into_bits()
            },
            crash_registers: !openvmm,
            clock_step: 1_000,
            smccc: true,
        }
    }
}

/// The 4-byte hypercall page stub KVM writes on AMD: VMMCALL; RET (hvhost README).
pub const HYPERCALL_STUB: [u8; 4] = [0x0f, 0x01, 0xd9, 0xc3];
/// Sim TSC ticks per 100 ns of reference time.
pub const TSC_PER_TICK: u64 = 16;

#[derive(Default)]
pub(crate) struct Vp {
    pub simp: u64,
    pub siefp: u64,
    pub scontrol: u64,
    pub sint: [u64; 16],
    pub stimer_config: [u64; 4],
    pub stimer_count: [u64; 4],
    pub pending: [VecDeque<[u8; MESSAGE_SIZE]>; 16],
    pub eoms: u32,
    pub raw_writes: Vec<(u32, u64)>,
    pub direct_timer_fires: u32,
}

pub(crate) struct HostChannelState {
    pub gpadl: u32,
    pub to_guest: Ring,
    pub from_guest: Ring,
}

#[derive(Default)]
pub(crate) struct Bus {
    pub connected: bool,
    pub version: Option<Version>,
    pub target_vp: u32,
    pub gpadls: BTreeMap<u32, Vec<(u32, u32, Vec<u64>)>>,
    pub partial: Option<(u32, u32, usize, u16, Vec<u64>)>,
    pub channels: BTreeMap<u32, HostChannelState>,
    pub rescinded: Vec<u32>,
    /// REQUESTOFFERS answered on this connection.
    pub offers_sent: bool,
}

pub(crate) struct State {
    pub vps: Vec<Vp>,
    pub guest_os_id: u64,
    pub hypercall: u64,
    pub reference_tsc: u64,
    pub crash_p: [u64; 5],
    pub crash_notices: Vec<CrashNotice>,
    pub bus: Bus,
    pub faults: Faults,
    pub scheduled: Vec<(u64, u32, Vec<u8>)>,
    pub guest_messages: Vec<(u32, Vec<u8>)>,
    pub posts: Vec<(u32, u32)>,
    pub signals: BTreeMap<u32, u32>,
    pub relids_released: Vec<u32>,
    pub dropped_deliveries: u32,
    /// Chaos on VMBus control messages, and a message it holds back (reorder).
    pub chaos_msgs: Option<crate::chaos::Chaos>,
    pub held_msg: Option<(u32, Vec<u8>)>,
    /// Chaos on device ring packets, and the packet it holds back per relid.
    pub chaos_pkts: Option<crate::chaos::Chaos>,
    pub held_pkts: BTreeMap<u32, Vec<u8>>,
}

/// The whole model.
pub struct Sim {
    pub(crate) cfg: SimConfig,
    pub mem: GuestMemory,
    time: AtomicU64,
    pub(crate) state: Mutex<State>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .unwrap_or(0)
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .unwrap_or(0)
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let vps = (0..cfg.cpus).map(|_| Vp::default()).collect();
        Self {
            mem: GuestMemory::new(cfg.memory_pages),
            time: AtomicU64::new(1_000_000),
            state: Mutex::new(State {
                vps,
                guest_os_id: 0,
                hypercall: 0,
                reference_tsc: 0,
                crash_p: [0; 5],
                crash_notices: Vec::new(),
                bus: Bus::default(),
                faults: Faults::default(),
                scheduled: Vec::new(),
                guest_messages: Vec::new(),
                posts: Vec::new(),
                signals: BTreeMap::new(),
                relids_released: Vec::new(),
                dropped_deliveries: 0,
                chaos_msgs: None,
                held_msg: None,
                chaos_pkts: None,
                held_pkts: BTreeMap::new(),
            }),
            cfg,
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current fake time (100 ns).
    pub fn now(&self) -> u64 {
        self.time.load(Ordering::SeqCst)
    }

    /// Advance the fake clock and deliver anything due.
    pub fn advance(&self, ticks: u64) -> u64 {
        let t = self.time.fetch_add(ticks, Ordering::SeqCst) + ticks;
        self.pump();
        t
    }

    /// Deliver scheduled messages whose time has come.
    pub fn pump(&self) {
        let now = self.now();
        let mut st = self.lock();
        let due: Vec<_> = {
            let (due, later): (Vec<_>, Vec<_>) =
                st.scheduled.drain(..).partition(|(t, _, _)| *t <= now);
            st.scheduled = later;
            due
        };
        for (_, vp, bytes) in due {
            self.deliver(
                &mut st,
                vp,
                VMBUS_MESSAGE_SINT,
                1,
                bytes.len() as u8,
                &bytes,
            );
        }
        // A message chaos held back arrives at the next tick at the latest.
        if let Some((vp, b)) = st.held_msg.take() {
            self.deliver(&mut st, vp, VMBUS_MESSAGE_SINT, 1, b.len() as u8, &b);
        }
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.lock().faults)
    }

    // ---- SynIC delivery --------------------------------------------------------------

    fn slot_gpa(st: &State, vp: u32, sint: u8) -> Option<u64> {
        let simp = PageReg::from_bits(st.vps.get(vp as usize)?.simp);
        simp.enabled()
            .then(|| simp.gpa() + (sint as usize * MESSAGE_SIZE) as u64)
    }

    /// Put a message into `vp`'s slot, or queue it behind a busy slot and set `msg_pending`
    /// on the message that occupies it (TLFS; KVM `synic_deliver_msg`).
    pub(crate) fn deliver(
        &self,
        st: &mut State,
        vp: u32,
        sint: u8,
        msg_type: u32,
        size_field: u8,
        payload: &[u8],
    ) {
        let mut m = [0u8; MESSAGE_SIZE];
        m[0..4].copy_from_slice(&msg_type.to_le_bytes());
        m[4] = size_field;
        let n = payload.len().min(240);
        m[16..16 + n].copy_from_slice(&payload[..n]);
        let Some(vps) = st.vps.get_mut(vp as usize) else {
            st.dropped_deliveries += 1;
            return;
        };
        vps.pending[sint as usize].push_back(m);
        self.try_deliver(st, vp, sint);
    }

    fn try_deliver(&self, st: &mut State, vp: u32, sint: u8) {
        let Some(gpa) = Self::slot_gpa(st, vp, sint) else {
            return;
        };
        let Some(slot) = self.mem.ptr(gpa, MESSAGE_SIZE) else {
            return;
        };
        let q = &mut st.vps[vp as usize].pending[sint as usize];
        let Some(next) = q.front().copied() else {
            return;
        };
        // SAFETY: slot is inside guest memory (checked); accessed atomically like the guest.
        let ty = unsafe { vmbus::mem::atomic_u32(slot) };
        if ty.load(Ordering::Acquire) != 0 {
            // SAFETY: byte 5 is message_flags.
            unsafe { vmbus::mem::atomic_u8(slot.wrapping_add(5)) }
                .fetch_or(MSG_FLAG_PENDING, Ordering::AcqRel);
            return;
        }
        q.pop_front();
        let more = !q.is_empty();
        let mut body = next;
        if more {
            body[5] |= MSG_FLAG_PENDING;
        }
        // SAFETY: as above; the type is published last.
        unsafe { vmbus::mem::write_bytes(slot.wrapping_add(4), &body[4..]) };
        ty.store(
            u32::from_le_bytes(body[0..4].try_into().unwrap()),
            Ordering::Release,
        );
    }

    // ---- registers ----------------------------------------------------------------------

    /// A register as the guest would read it (`Err`: the register does not exist, #GP on x86).
    pub fn read_reg(&self, vp: u32, reg: SynReg) -> Result<u64, HvStatus> {
        self.pump();
        let now = self.now();
        let st = self.lock();
        let v = st.vps.get(vp as usize).ok_or(HvStatus::INVALID_PARAMETER)?;
        let arm = self.cfg.arch == SimArch::Aarch64;
        Ok(match reg {
            SynReg::GuestOsId => st.guest_os_id,
            SynReg::Hypercall if !arm => st.hypercall,
            SynReg::VpIndex => vp as u64,
            SynReg::TimeRefCount => now,
            SynReg::ReferenceTsc => st.reference_tsc,
            SynReg::Scontrol => v.scontrol,
            SynReg::Sversion => 1,
            SynReg::Siefp => v.siefp,
            SynReg::Simp => v.simp,
            SynReg::Eom => 0,
            SynReg::Sint(n) => v.sint[n as usize & 15],
            SynReg::StimerConfig(n) => v.stimer_config[n as usize & 3],
            SynReg::StimerCount(n) => v.stimer_count[n as usize & 3],
            SynReg::CrashP(n) if self.cfg.crash_registers => st.crash_p[(n as usize).min(4)],
            SynReg::CrashCtl if self.cfg.crash_registers => self.cfg.crash_caps,
            SynReg::HypervisorVersion if arm => 0x000A_0000_0000_3839,
            SynReg::PrivilegesAndFeatures if arm => {
                // Low 64 bits: privileges; bits 95:64 (returned in the high word): features.
                self.cfg.privileges
            }
            SynReg::FeaturesInfo if arm => 0x28,
            _ => return Err(HvStatus::INVALID_PARAMETER),
        })
    }

    /// The high 64 bits of a 128-bit register read (arm64 only uses it for 0x200).
    pub(crate) fn read_reg_high(&self, reg: SynReg) -> u64 {
        match reg {
            SynReg::PrivilegesAndFeatures => self.cfg.features as u64,
            _ => 0,
        }
    }

    /// A register write as the guest would do it (`Err`: the register does not exist).
    pub fn write_reg(&self, vp: u32, reg: SynReg, value: u64) -> Result<(), HvStatus> {
        self.pump();
        let now = self.now();
        let mut st = self.lock();
        if vp as usize >= st.vps.len() {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let arm = self.cfg.arch == SimArch::Aarch64;
        match reg {
            SynReg::GuestOsId => st.guest_os_id = value,
            SynReg::Hypercall if !arm => {
                let r = PageReg::from_bits(value);
                if r.enabled() && st.guest_os_id == 0 {
                    // KVM refuses the hypercall page before a guest OS id.
                    st.hypercall = r.with_enabled(false).into_bits();
                } else {
                    if r.enabled() && !self.mem.write(r.gpa(), &HYPERCALL_STUB) {
                        return Err(HvStatus::INVALID_PARAMETER);
                    }
                    st.hypercall = value;
                }
            }
            SynReg::ReferenceTsc => {
                st.reference_tsc = value;
                let r = PageReg::from_bits(value);
                if r.enabled() {
                    let seq: u32 = if st.faults.invalid_tsc_page { 0 } else { 1 };
                    let mut page = [0u8; 24];
                    page[0..4].copy_from_slice(&seq.to_le_bytes());
                    // time = ((tsc * scale) >> 64) + offset with tsc = time * 16.
                    page[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
                    self.mem.write(r.gpa(), &page);
                }
            }
            SynReg::Scontrol => st.vps[vp as usize].scontrol = value,
            SynReg::Siefp => st.vps[vp as usize].siefp = value,
            SynReg::Simp => {
                st.vps[vp as usize].simp = value;
                for s in 0..16 {
                    self.try_deliver(&mut st, vp, s);
                }
            }
            SynReg::Eom => {
                st.vps[vp as usize].eoms += 1;
                if let Some((t, size, bytes)) = st.faults.flood_on_eom.clone() {
                    self.deliver(&mut st, vp, VMBUS_MESSAGE_SINT, t, size, &bytes);
                }
                for s in 0..16 {
                    self.try_deliver(&mut st, vp, s);
                }
            }
            SynReg::Sint(n) if n < 16 => st.vps[vp as usize].sint[n as usize] = value,
            SynReg::StimerConfig(n) if n < 4 => {
                st.vps[vp as usize].stimer_config[n as usize] = value
            }
            SynReg::StimerCount(n) if n < 4 => {
                st.vps[vp as usize].stimer_count[n as usize] = value;
                let cfg = StimerConfig::from_bits(st.vps[vp as usize].stimer_config[n as usize]);
                if value != 0 && (cfg.enabled() || cfg.auto_enable()) {
                    if cfg.direct_mode() {
                        st.vps[vp as usize].direct_timer_fires += 1;
                    } else {
                        // Message mode: HVMSG_TIMER_EXPIRED on SINTx at expiry.
                        let sint = cfg.sintx();
                        let mut payload = [0u8; 24];
                        payload[0..4].copy_from_slice(&(n as u32).to_le_bytes());
                        payload[8..16].copy_from_slice(&value.to_le_bytes());
                        payload[16..24].copy_from_slice(&now.to_le_bytes());
                        self.deliver(&mut st, vp, sint, HVMSG_TIMER_EXPIRED, 24, &payload);
                    }
                }
            }
            SynReg::CrashP(n) if n < 5 && self.cfg.crash_registers => {
                st.crash_p[n as usize] = value
            }
            SynReg::CrashCtl if self.cfg.crash_registers => {
                let ctl = CrashCtl::from_bits(value);
                if ctl.notify() {
                    let p = st.crash_p;
                    let message = ctl.notify_msg().then(|| {
                        let mut b = vec![0u8; (p[4] as usize).min(PAGE_SIZE)];
                        self.mem.read(p[3], &mut b);
                        b
                    });
                    st.crash_notices.push(CrashNotice {
                        p,
                        ctl: value,
                        message,
                    });
                }
            }
            _ => return Err(HvStatus::INVALID_PARAMETER),
        }
        Ok(())
    }

    pub(crate) fn log_raw_write(&self, vp: u32, addr: u32, value: u64) {
        if let Some(v) = self.lock().vps.get_mut(vp as usize) {
            v.raw_writes.push((addr, value));
        }
    }

    // ---- hypercalls ---------------------------------------------------------------------

    pub(crate) fn hypercall(&self, vp: u32, control: u64, in1: u64, _in2: u64) -> u64 {
        self.pump();
        let code = control as u16;
        let fast = control & (1 << 16) != 0;
        let status = match (code, fast) {
            (vmbus::hypercall::code::POST_MESSAGE, false) => self.post_message(vp, in1),
            (vmbus::hypercall::code::SIGNAL_EVENT, true) => {
                let mut st = self.lock();
                if st.faults.signal_failures > 0 {
                    st.faults.signal_failures -= 1;
                    HvStatus::INVALID_CONNECTION_ID
                } else {
                    *st.signals.entry(in1 as u32).or_default() += 1;
                    HvStatus::SUCCESS
                }
            }
            _ => HvStatus::INVALID_HYPERCALL_CODE,
        };
        status.0 as u64
    }

    fn post_message(&self, vp: u32, gpa: u64) -> HvStatus {
        if !gpa.is_multiple_of(8) {
            return HvStatus::INVALID_ALIGNMENT;
        }
        let mut input = [0u8; 256];
        if !self.mem.read(gpa, &mut input) {
            return HvStatus::INVALID_PARAMETER;
        }
        let conn_id = u32_at(&input, 0);
        let msg_type = u32_at(&input, 8);
        let size = u32_at(&input, 12) as usize;
        if msg_type != 1 || size > 240 {
            return HvStatus::INVALID_PARAMETER;
        }
        let mut st = self.lock();
        st.posts.push((conn_id, u32_at(&input, 16)));
        if st.faults.post_failures > 0 {
            st.faults.post_failures -= 1;
            return HvStatus(st.faults.post_failure_status);
        }
        if !self.cfg.behaviour.listens(conn_id) {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        let payload = input[16..16 + size].to_vec();
        self.vmbus_message(&mut st, vp, conn_id, &payload);
        HvStatus::SUCCESS
    }

    // ---- VMBus server ---------------------------------------------------------------------

    fn reply(&self, st: &mut State, vp: u32, bytes: &[u8]) {
        if st.chaos_msgs.is_some() {
            self.chaos_reply(st, vp, bytes);
        } else {
            self.deliver(st, vp, VMBUS_MESSAGE_SINT, 1, bytes.len() as u8, bytes);
        }
    }

    fn reset_bus_state(st: &mut State) {
        st.bus.offers_sent = false;
        st.bus.channels.clear();
        st.bus.gpadls.clear();
        st.bus.partial = None;
        st.bus.connected = false;
    }

    fn vmbus_message(&self, st: &mut State, _vp: u32, conn_id: u32, m: &[u8]) {
        let ty = u32_at(m, 0);
        st.guest_messages.push((ty, m.to_vec()));
        match ty {
            14 if m.len() >= 40 => {
                let version = Version(u32_at(m, 8));
                let target = u32_at(m, 12);
                let p = self.cfg.behaviour;
                if p.reset_on_initiate_contact {
                    Self::reset_bus_state(st);
                }
                let accepted = p.accepts(version);
                let _ = conn_id;
                let mut r = p.version_response(version, accepted);
                if let Some(id) = st.faults.version_response_conn_id {
                    r.resize(16, 0);
                    r[12..16].copy_from_slice(&id.to_le_bytes());
                }
                if accepted {
                    st.bus.offers_sent = false;
                    st.bus.connected = true;
                    st.bus.version = Some(version);
                    st.bus.target_vp = target;
                }
                self.reply(st, target, &r);
            }
            // OpenVMM answers REQUESTOFFERS once per connection (`OffersAlreadySent`).
            3 if st.bus.connected && !(st.bus.offers_sent && self.cfg.behaviour.offers_once) => {
                st.bus.offers_sent = true;
                let target = st.bus.target_vp;
                for o in self.cfg.offers.clone() {
                    if st.bus.rescinded.contains(&o.relid) {
                        continue;
                    }
                    let mut b = vec![0u8; 196];
                    b[0] = 1;
                    b[8..24].copy_from_slice(&o.if_type.0);
                    b[24..40].copy_from_slice(&o.if_instance.0);
                    b[58..60].copy_from_slice(&o.mmio_megabytes.to_le_bytes());
                    b[184..188].copy_from_slice(&o.relid.to_le_bytes());
                    b[190] = o.dedicated_interrupt as u8;
                    b[192..196].copy_from_slice(
                        &self
                            .cfg
                            .behaviour
                            .offer_connection_id(o.relid)
                            .to_le_bytes(),
                    );
                    self.reply(st, target, &b);
                }
                for (t, size, bytes) in std::mem::take(&mut st.faults.inject_before_all_offers) {
                    self.deliver(st, target, VMBUS_MESSAGE_SINT, t, size, &bytes);
                }
                self.reply(st, target, &[4, 0, 0, 0, 0, 0, 0, 0]);
            }
            8 if st.bus.connected && m.len() >= 20 => {
                let relid = u32_at(m, 8);
                let gpadl = u32_at(m, 12);
                let words = u16::from_le_bytes([m[16], m[17]]) as usize / 8;
                let ranges = u16::from_le_bytes([m[18], m[19]]);
                let data: Vec<u64> = m[20..].chunks_exact(8).map(|c| u64_at(c, 0)).collect();
                st.bus.partial = Some((relid, gpadl, words, ranges, data));
                self.maybe_finish_gpadl(st);
            }
            9 if m.len() >= 16 => {
                let gpadl = u32_at(m, 12);
                if let Some(p) = st.bus.partial.as_mut().filter(|p| p.1 == gpadl) {
                    p.4.extend(m[16..].chunks_exact(8).map(|c| u64_at(c, 0)));
                }
                self.maybe_finish_gpadl(st);
            }
            5 if st.bus.connected && m.len() >= 148 => {
                let relid = u32_at(m, 8);
                let openid = u32_at(m, 12);
                let gpadl = u32_at(m, 16);
                let offset = u32_at(m, 24) as usize;
                let target = st.bus.target_vp;
                if st.faults.rescind_on_open == Some(relid) {
                    st.bus.rescinded.push(relid);
                    let mut b = vec![2, 0, 0, 0, 0, 0, 0, 0];
                    b.extend_from_slice(&relid.to_le_bytes());
                    self.reply(st, target, &b);
                    return;
                }
                let status = match self.map_channel(st, gpadl, offset) {
                    Some(ch) => {
                        st.bus.channels.insert(relid, ch);
                        0u32
                    }
                    None => 0xC000_0001,
                };
                let mut b = vec![6, 0, 0, 0, 0, 0, 0, 0];
                b.extend_from_slice(&relid.to_le_bytes());
                b.extend_from_slice(&openid.to_le_bytes());
                b.extend_from_slice(&status.to_le_bytes());
                self.reply(st, target, &b);
            }
            7 if m.len() >= 12 => {
                st.bus.channels.remove(&u32_at(m, 8));
            }
            11 if m.len() >= 16 => {
                let gpadl = u32_at(m, 12);
                if st.bus.gpadls.remove(&gpadl).is_some() {
                    let mut b = vec![12, 0, 0, 0, 0, 0, 0, 0];
                    b.extend_from_slice(&gpadl.to_le_bytes());
                    let target = st.bus.target_vp;
                    self.reply(st, target, &b);
                }
            }
            13 if m.len() >= 12 => st.relids_released.push(u32_at(m, 8)),
            16 => {
                if !st.bus.connected && self.cfg.behaviour.drop_unload_when_disconnected {
                    // OpenVMM drops UNLOAD when not connected.
                    return;
                }
                Self::reset_bus_state(st);
                if st.faults.drop_unload_response {
                    return;
                }
                let vp = st.faults.unload_reply_vp.unwrap_or(st.bus.target_vp);
                let at = self.now() + st.faults.unload_delay;
                st.scheduled.push((at, vp, vec![17, 0, 0, 0, 0, 0, 0, 0]));
                if st.faults.unload_delay == 0 {
                    let due: Vec<_> = std::mem::take(&mut st.scheduled);
                    for (_, vp, b) in due {
                        self.reply(st, vp, &b);
                    }
                }
            }
            _ => log::debug!("sim: ignoring guest message type {ty}"),
        }
    }

    fn maybe_finish_gpadl(&self, st: &mut State) {
        let Some((relid, gpadl, words, count, data)) = st.bus.partial.clone() else {
            return;
        };
        if data.len() < words {
            return;
        }
        st.bus.partial = None;
        let mut ranges = Vec::new();
        let mut i = 0;
        let mut ok = true;
        for _ in 0..count {
            let Some(&w) = data.get(i) else {
                ok = false;
                break;
            };
            let (bytes, off) = (w as u32, (w >> 32) as u32);
            let n = ((off as usize % PAGE_SIZE) + bytes as usize).div_ceil(PAGE_SIZE);
            let Some(pfns) = data.get(i + 1..i + 1 + n) else {
                ok = false;
                break;
            };
            ranges.push((bytes, off, pfns.to_vec()));
            i += 1 + n;
        }
        if self.cfg.behaviour.single_range_gpadls_only
            && !(ranges.len() == 1
                && ranges[0].1 == 0
                && (ranges[0].0 as usize).is_multiple_of(PAGE_SIZE))
        {
            // QEMU: only single-range page-aligned GPADLs get a reply.
            return;
        }
        let status: u32 = if ok { 0 } else { 0xC000_000D };
        if ok {
            st.bus.gpadls.insert(gpadl, ranges);
        }
        let mut b = vec![10, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&relid.to_le_bytes());
        b.extend_from_slice(&gpadl.to_le_bytes());
        b.extend_from_slice(&status.to_le_bytes());
        let target = st.bus.target_vp;
        self.reply(st, target, &b);
    }

    fn map_channel(&self, st: &State, gpadl: u32, offset_pages: usize) -> Option<HostChannelState> {
        let ranges = st.bus.gpadls.get(&gpadl)?;
        let (_, _, pfns) = ranges.first()?;
        if ranges.len() != 1 || pfns.windows(2).any(|w| w[1] != w[0] + 1) {
            return None;
        }
        let total = pfns.len();
        if offset_pages < 2 || total < offset_pages + 2 {
            return None;
        }
        let base = self.mem.ptr(pfns[0] << 12, total * PAGE_SIZE)?;
        // SAFETY: the ring pages are modelled guest memory (checked by `ptr`), alive as long
        // as the sim.
        let from_guest = unsafe { Ring::new(base, offset_pages * PAGE_SIZE).ok()? };
        // SAFETY: as above.
        let to_guest = unsafe {
            Ring::new(
                base.wrapping_add(offset_pages * PAGE_SIZE),
                (total - offset_pages) * PAGE_SIZE,
            )
            .ok()?
        };
        // The host sets feat_pending_send_sz on the host→guest ring (ref §5.1).
        to_guest.set_feature_bits(vmbus::ring::ctrl::FEAT_PENDING_SEND_SZ);
        Some(HostChannelState {
            gpadl,
            to_guest,
            from_guest,
        })
    }
}

impl Sim {
    /// The host forgets the connection (e.g. it restarted), without telling the guest.
    pub fn reset_bus(&self) {
        Self::reset_bus_state(&mut self.lock());
    }
}
