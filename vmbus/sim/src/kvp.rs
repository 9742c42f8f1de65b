//! Host model of the KVP integration component: negotiates, then pushes its items one
//! transaction at a time (the host keeps one KVP transaction outstanding: Linux `hv_kvp.c`
//! "there can only be single outstanding transaction from the host"), and, like a Hyper-V host,
//! enumerates the guest's pool afterwards. It checks every answer the way the host it models
//! does and records what it disliked, so a guest that answers wrongly is seen.
//!
//! Personalities (`KvpHostConfig::for_personality`):
//! - **OpenVMM** (`vm/devices/hyperv_ic/src/{common,kvp}.rs`): framework 1.0, 3.0 and KVP 3.0,
//!   4.0, 5.0 listed ascending; transaction id 0; a 2580-byte KVP message; a response must
//!   have both TRANSACTION and RESPONSE flags, transaction id 0, and (negotiate) exactly one
//!   framework and one message version; it pushes nothing unless its user asks (`items`
//!   empty by default: the guest sees a silent host).
//! - **Hyper-V-like**: what Linux `hv_kvp.c` is written against: newest versions first
//!   (framework 3.0, 1.0; KVP 4.0, 3.0 — Windows' exact lists are not public: a model
//!   choice), the pool 3 items an Azure/Hyper-V guest's `.kvp_pool_3` shows (some sent as
//!   integers), transaction ids counting up, then ENUMERATE of pool 2 (the guest's intrinsic
//!   items) until the guest says "no more items" (`HV_S_CONT`).
//! - **QEMU**: QEMU has no KVP device; the model is the Hyper-V-like one, for tests that
//!   offer it anyway.

use std::sync::{Arc, Mutex};

use vmbus::ic::kvp::{self, SetValue};
use vmbus::ic::{self, IcMessage, IcVersion, Negotiated};
use vmbus::ring::PacketType;

use crate::synthvid_link::{HostDevice, HostIo, HostPacket};
use crate::Personality;

/// One item the host pushes.
#[derive(Debug, Clone)]
pub struct KvpItem {
    /// Pool (3 for the host-provided items).
    pub pool: kvp::Pool,
    /// Key.
    pub key: String,
    /// Value.
    pub value: KvpValue,
}

/// A value of a pushed item.
#[derive(Debug, Clone)]
pub enum KvpValue {
    /// `REG_SZ`.
    Str(String),
    /// `REG_U32`.
    U32(u32),
}

/// Host configuration (every field a switch of its own).
#[derive(Debug, Clone)]
pub struct KvpHostConfig {
    /// Framework versions in the negotiate request, in order.
    pub framework_versions: Vec<IcVersion>,
    /// KVP message versions in the negotiate request, in order.
    pub message_versions: Vec<IcVersion>,
    /// Items pushed after the negotiation, in order.
    pub items: Vec<KvpItem>,
    /// Pool to ENUMERATE after the pushes (`None`: no enumeration).
    pub enumerate_pool: Option<kvp::Pool>,
    /// Bytes of KVP message after the IC headers (OpenVMM: 2580).
    pub message_len: usize,
    /// Transaction ids count up from 1 (else always 0, as OpenVMM).
    pub counting_transaction_ids: bool,
    /// Ask for a VMBus completion on each request packet (no guest needs it; tests liberalness).
    pub completion_requested: bool,
    /// Ticks to wait after the channel opens before the negotiate request.
    pub start_delay_ticks: u32,
}

/// The four items the canary keeps plus the rest a Hyper-V guest's pool 3 shows.
pub fn hyperv_pool3(vm_name: &str, vm_id: &str, host: &str, fqdn: &str) -> Vec<KvpItem> {
    let s = |k: &str, v: &str| KvpItem {
        pool: kvp::Pool::AUTO_EXTERNAL,
        key: k.into(),
        value: KvpValue::Str(v.into()),
    };
    let n = |k: &str, v: u32| KvpItem {
        pool: kvp::Pool::AUTO_EXTERNAL,
        key: k.into(),
        value: KvpValue::U32(v),
    };
    vec![
        s("HostName", fqdn),
        n("HostingSystemEditionId", 8),
        n("HostingSystemOsMajor", 10),
        n("HostingSystemOsMinor", 0),
        s("PhysicalHostName", host),
        s("PhysicalHostNameFullyQualified", fqdn),
        s("VirtualMachineId", vm_id),
        s("VirtualMachineName", vm_name),
    ]
}

impl KvpHostConfig {
    /// The defaults of the host `p` models (module docs).
    pub fn for_personality(p: Personality) -> Self {
        match p {
            Personality::OpenVmm => KvpHostConfig {
                framework_versions: vec![IcVersion::new(1, 0), IcVersion::new(3, 0)],
                message_versions: vec![
                    IcVersion::new(3, 0),
                    IcVersion::new(4, 0),
                    IcVersion::new(5, 0),
                ],
                items: Vec::new(),
                enumerate_pool: None,
                message_len: kvp::MESSAGE_LEN,
                counting_transaction_ids: false,
                completion_requested: false,
                start_delay_ticks: 0,
            },
            _ => KvpHostConfig {
                framework_versions: vec![IcVersion::new(3, 0), IcVersion::new(1, 0)],
                message_versions: vec![IcVersion::new(4, 0), IcVersion::new(3, 0)],
                items: hyperv_pool3(
                    "canary-07",
                    "2F0A3E6D-6C1B-4B1E-9C5A-0D1E2F3A4B5C",
                    "HV-HOST-12",
                    "hv-host-12.lab.example.net",
                ),
                enumerate_pool: Some(kvp::Pool::AUTO),
                message_len: kvp::MESSAGE_LEN,
                counting_transaction_ids: true,
                completion_requested: false,
                start_delay_ticks: 1,
            },
        }
    }
}

/// One answer the host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvpAnswer {
    /// Operation asked (`None` for the negotiation).
    pub op: Option<kvp::Op>,
    /// Key of a SET.
    pub key: Option<String>,
    /// Status the guest returned.
    pub status: u32,
}

/// What the host has seen.
#[derive(Debug, Clone, Default)]
pub struct KvpHostState {
    /// The versions the guest chose (`None` before, or when it chose none).
    pub negotiated: Option<Negotiated>,
    /// The guest answered the negotiation with zero counts.
    pub negotiate_refused: bool,
    /// Every answer, in order.
    pub answers: Vec<KvpAnswer>,
    /// What the host disliked about the guest's answers (the host would fail the channel).
    pub violations: Vec<String>,
    /// Requests sent.
    pub requests: u32,
    /// The host has sent everything it meant to and has no transaction open.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start(u32),
    AwaitNegotiate,
    Push(usize),
    AwaitPush(usize),
    Enumerate(u32),
    AwaitEnumerate(u32),
    Idle,
}

/// The host model; clone the handle to inspect it.
#[derive(Clone)]
pub struct KvpHost {
    cfg: KvpHostConfig,
    state: Arc<Mutex<KvpHostState>>,
    step: Arc<Mutex<Step>>,
    next_tid: Arc<Mutex<u8>>,
}

impl KvpHost {
    /// A host with `cfg`.
    pub fn new(cfg: KvpHostConfig) -> Self {
        let delay = cfg.start_delay_ticks;
        KvpHost {
            cfg,
            state: Arc::new(Mutex::new(KvpHostState::default())),
            step: Arc::new(Mutex::new(Step::Start(delay))),
            next_tid: Arc::new(Mutex::new(0)),
        }
    }
    /// A snapshot of the state.
    pub fn state(&self) -> KvpHostState {
        self.state.lock().unwrap().clone()
    }

    fn tid(&self) -> u8 {
        if !self.cfg.counting_transaction_ids {
            return 0;
        }
        let mut t = self.next_tid.lock().unwrap();
        *t = t.wrapping_add(1);
        *t
    }

    fn send(&self, io: &mut HostIo<'_>, bytes: &[u8]) {
        let flags = if self.cfg.completion_requested { 1 } else { 0 };
        // A full ring loses the request, as a host that gives up on a stuck guest would.
        if io
            .send(PacketType::DATA_INBAND.0, flags, 0x4b56_5000, &[], bytes)
            .is_ok()
        {
            self.state.lock().unwrap().requests += 1;
        }
    }

    fn versions(&self) -> Negotiated {
        self.state.lock().unwrap().negotiated.unwrap_or(Negotiated {
            framework: IcVersion::new(3, 0),
            message: IcVersion::new(4, 0),
        })
    }

    /// Sends the request `step` stands for, returning the step that awaits its answer.
    fn kick(&self, io: &mut HostIo<'_>, step: Step) -> Step {
        let mut b = vec![0u8; 16 * 1024];
        match step {
            Step::Start(0) => {
                let n = ic::emit_negotiate_request(
                    &mut b,
                    self.tid(),
                    &self.cfg.framework_versions,
                    &self.cfg.message_versions,
                )
                .expect("negotiate request fits");
                self.send(io, &b[..n]);
                Step::AwaitNegotiate
            }
            Step::Start(k) => Step::Start(k - 1),
            Step::Push(i) if i < self.cfg.items.len() => {
                let it = &self.cfg.items[i];
                let v = match &it.value {
                    KvpValue::Str(s) => SetValue::Str(s),
                    KvpValue::U32(x) => SetValue::U32(*x),
                };
                let n = kvp::emit_set(
                    &mut b,
                    self.versions(),
                    self.tid(),
                    it.pool,
                    &it.key,
                    v,
                    self.cfg.message_len,
                )
                .expect("set fits");
                self.send(io, &b[..n]);
                Step::AwaitPush(i)
            }
            Step::Push(_) => match self.cfg.enumerate_pool {
                Some(_) => self.kick(io, Step::Enumerate(0)),
                None => self.finish(),
            },
            Step::Enumerate(i) => {
                let n = kvp::emit_op(
                    &mut b,
                    self.versions(),
                    self.tid(),
                    kvp::Op::ENUMERATE,
                    self.cfg.enumerate_pool.unwrap_or(kvp::Pool::AUTO),
                    i,
                    self.cfg.message_len,
                )
                .expect("enumerate fits");
                self.send(io, &b[..n]);
                Step::AwaitEnumerate(i)
            }
            s => s,
        }
    }

    fn finish(&self) -> Step {
        self.state.lock().unwrap().done = true;
        Step::Idle
    }

    fn violation(&self, what: String) {
        self.state.lock().unwrap().violations.push(what);
    }
}

impl HostDevice for KvpHost {
    fn on_packet(&mut self, io: &mut HostIo<'_>, pkt: &HostPacket) {
        if pkt.kind != PacketType::DATA_INBAND.0 {
            self.violation(format!("packet type {} (not in-band)", pkt.kind));
            return;
        }
        let Ok(m) = IcMessage::new_checked(&pkt.payload[..]) else {
            self.violation(format!("answer of {} bytes", pkt.payload.len()));
            return;
        };
        // OpenVMM IcPipe::read_response: both flags; transaction id as sent (0 there).
        if !kvp::is_response(m.flags()) {
            self.violation(format!("flags {:#x} lack TRANSACTION|RESPONSE", m.flags()));
        }
        if !self.cfg.counting_transaction_ids && m.transaction_id() != 0 {
            self.violation(format!("transaction id {}", m.transaction_id()));
        }
        if m.body().len() < usize::from(m.msg_size()) {
            self.violation(format!(
                "icmsgsize {} beyond the {} body bytes",
                m.msg_size(),
                m.body().len()
            ));
        }
        let step = *self.step.lock().unwrap();
        let next = match step {
            Step::AwaitNegotiate => {
                let b = m.body();
                if b.len() < 16 {
                    self.violation("negotiate answer too short".into());
                    self.finish()
                } else {
                    let fw_n = u16::from_le_bytes([b[0], b[1]]);
                    let msg_n = u16::from_le_bytes([b[2], b[3]]);
                    let rd = |at: usize| {
                        IcVersion::new(
                            u16::from_le_bytes([b[at], b[at + 1]]),
                            u16::from_le_bytes([b[at + 2], b[at + 3]]),
                        )
                    };
                    let (fw, mv) = (rd(8), rd(12));
                    let mut st = self.state.lock().unwrap();
                    st.answers.push(KvpAnswer {
                        op: None,
                        key: None,
                        status: m.status(),
                    });
                    if fw_n == 1 && msg_n == 1 {
                        if !self.cfg.framework_versions.contains(&fw)
                            || !self.cfg.message_versions.contains(&mv)
                        {
                            st.violations
                                .push(format!("guest chose {fw}/{mv}, which were not offered"));
                        }
                        st.negotiated = Some(Negotiated {
                            framework: fw,
                            message: mv,
                        });
                        drop(st);
                        self.kick(io, Step::Push(0))
                    } else {
                        // OpenVMM: "no supported versions"; the channel is dead.
                        st.negotiate_refused = true;
                        drop(st);
                        self.finish()
                    }
                }
            }
            Step::AwaitPush(i) => {
                let it = &self.cfg.items[i];
                self.state.lock().unwrap().answers.push(KvpAnswer {
                    op: Some(kvp::Op::SET),
                    key: Some(it.key.clone()),
                    status: m.status(),
                });
                if m.status() != ic::status::S_OK {
                    self.violation(format!("SET {} answered {:#x}", it.key, m.status()));
                }
                self.kick(io, Step::Push(i + 1))
            }
            Step::AwaitEnumerate(i) => {
                self.state.lock().unwrap().answers.push(KvpAnswer {
                    op: Some(kvp::Op::ENUMERATE),
                    key: None,
                    status: m.status(),
                });
                // Any status but S_OK ends the enumeration (Linux kvp_respond_to_host: "If
                // the error parameter is set, terminate the host's enumeration").
                if m.status() == ic::status::S_OK && i < 64 {
                    self.kick(io, Step::Enumerate(i + 1))
                } else {
                    self.finish()
                }
            }
            s => {
                self.violation(format!("unexpected answer in state {s:?}"));
                s
            }
        };
        *self.step.lock().unwrap() = next;
    }

    fn on_tick(&mut self, io: &mut HostIo<'_>) {
        let step = *self.step.lock().unwrap();
        if let Step::Start(_) = step {
            let next = self.kick(io, step);
            *self.step.lock().unwrap() = next;
        }
    }
}
