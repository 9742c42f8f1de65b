//! Host personalities: where QEMU, OpenVMM and Hyper-V differ, the model follows the host's
//! own sources (cited per behaviour), so a guest that only agrees with itself fails here.

use vmbus::guid::Guid;
use vmbus::Version;

use crate::host::SimOffer;

/// Which host the model behaves like where real hosts differ (design.md, hvhost README).
/// Every behaviour is written from the host's own sources (cited per variant), not from the
/// guest's reading of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personality {
    /// Hyper-V: accepts the known versions up to `max_version`, listens on connection ids 1
    /// and 4, answers VERSION_RESPONSE with message connection id 4 from 5.0 (unverified on
    /// Windows; Linux uses whatever the host sends), offers connection id 0x2000 | relid (the
    /// layout OpenVMM's `ConnectionId` reproduces), crash registers with NOTIFY_MSG, the
    /// reference TSC page, and sends UNLOAD_RESPONSE to the connect CPU (`target_vcpu`) only
    /// (ref §2.4).
    HyperV { max_version: Version },
    /// QEMU's VMBus (hw/hyperv/vmbus.c `vmbus_initialized`, hvhost README "Limits"): accepts
    /// 0 < version ≤ 4.0, listens on connection id 1 only (5.x INITIATE_CONTACT on id 4 fails
    /// with HV_STATUS_INVALID_CONNECTION_ID), resets the bus on every INITIATE_CONTACT,
    /// answers VERSION_RESPONSE with 12 bytes, gives offers connection id 16 + relid, and
    /// answers only single-range page-aligned GPADLs (others get no reply). KVM provides the
    /// registers (the hvhost self-test's CPUID values, crash MSRs included).
    Qemu,
    /// OpenVMM (`vm/devices/vmbus/vmbus_server`): exact version match against its table up to
    /// 6.0 (`check_version_supported`), VERSION_RESPONSE carries the message connection id 1
    /// from 5.0 and the version itself below (`send_version_response_with_target`; VTL0
    /// `child_connection_id` = `MESSAGE_CONNECTION_ID`), 20 bytes from 6.0; offers sorted by
    /// interface id with connection id `relid | VMBUS_SINT << 12` and `is_dedicated = 1`;
    /// UNLOAD dropped when not connected (`Message::parse` needs a version); privileges
    /// 0x87f without PostMessage/SignalEvent or the reference TSC page, and no crash
    /// registers (issue 17's run).
    OpenVmm,
}

/// How the server accepts versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRule {
    /// Any version with `0 < v <= max` (QEMU `vmbus_initialized`).
    AtMost(Version),
    /// Only versions in the known table, up to `max` (OpenVMM `check_version_supported`,
    /// Hyper-V).
    Known(Version),
}

/// The VERSION_RESPONSE form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseForm {
    /// 12 bytes, no `msg_conn_id` (QEMU).
    Short,
    /// 16 bytes; `msg_conn_id` 4 from 5.0, 1 below (the model's Hyper-V, unverified).
    ConnectionId4,
    /// 16 bytes; 1 from 5.0 (VTL0 `child_connection_id`), the version itself below, 0 when
    /// refused; 20 bytes (VersionResponse2) at 6.0 (OpenVMM).
    OpenVmm,
}

/// The connection id scheme of offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferIds {
    /// 16 + relid (QEMU).
    Plus16,
    /// `relid | VMBUS_SINT << 12 | vtl << 16` = 0x2000 | relid (OpenVMM `ConnectionId::new`,
    /// the model's Hyper-V).
    SintLayout,
}

/// Every VMBus-server behaviour where the hosts differ, each selectable on its own
/// (`SimConfig::behaviour`); [`Personality::behaviour`] gives a host's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Also listen on message connection id 4 (id 1 always).
    pub listens_on_4: bool,
    pub versions: VersionRule,
    pub version_response: ResponseForm,
    pub offer_ids: OfferIds,
    /// Every INITIATE_CONTACT resets the bus (QEMU).
    pub reset_on_initiate_contact: bool,
    /// UNLOAD while not connected is dropped without a response (OpenVMM).
    pub drop_unload_when_disconnected: bool,
    /// REQUESTOFFERS is answered once per connection (OpenVMM `OffersAlreadySent`).
    pub offers_once: bool,
    /// Only single-range, page-aligned GPADLs get a GPADL_CREATED (QEMU).
    pub single_range_gpadls_only: bool,
}

impl Behaviour {
    /// Whether HvPostMessage to `conn_id` reaches the VMBus server.
    pub(crate) fn listens(&self, conn_id: u32) -> bool {
        conn_id == 1 || (self.listens_on_4 && conn_id == 4)
    }

    /// Whether INITIATE_CONTACT for `v` is accepted.
    pub(crate) fn accepts(&self, v: Version) -> bool {
        match self.versions {
            VersionRule::AtMost(max) => v.0 > 0 && v <= max,
            VersionRule::Known(max) => KNOWN_VERSIONS.contains(&v) && v <= max,
        }
    }

    /// The VERSION_RESPONSE for `v` (accepted or not).
    pub(crate) fn version_response(&self, v: Version, accepted: bool) -> Vec<u8> {
        let mut r = vec![15, 0, 0, 0, 0, 0, 0, 0, accepted as u8, 0, 0, 0];
        let id: u32 = match self.version_response {
            ResponseForm::Short => return r,
            ResponseForm::ConnectionId4 if v >= Version::WIN10_V5 => 4,
            ResponseForm::ConnectionId4 => 1,
            ResponseForm::OpenVmm if !accepted => 0,
            ResponseForm::OpenVmm if v >= Version::WIN10_V5 => 1,
            ResponseForm::OpenVmm => v.0,
        };
        r.extend_from_slice(&id.to_le_bytes());
        if self.version_response == ResponseForm::OpenVmm && accepted && v >= Version::COPPER {
            // VersionResponse2: supported_features (none).
            r.extend_from_slice(&0u32.to_le_bytes());
        }
        r
    }

    /// The connection id an offer carries for `relid`.
    pub fn offer_connection_id(&self, relid: u32) -> u32 {
        match self.offer_ids {
            OfferIds::Plus16 => 16 + relid,
            OfferIds::SintLayout => 0x2000 | relid,
        }
    }
}

impl Personality {
    /// This host's VMBus-server behaviours.
    pub fn behaviour(self) -> Behaviour {
        match self {
            Personality::HyperV { max_version } => Behaviour {
                listens_on_4: true,
                versions: VersionRule::Known(max_version),
                version_response: ResponseForm::ConnectionId4,
                offer_ids: OfferIds::SintLayout,
                reset_on_initiate_contact: false,
                drop_unload_when_disconnected: false,
                offers_once: false,
                single_range_gpadls_only: false,
            },
            Personality::Qemu => Behaviour {
                listens_on_4: false,
                versions: VersionRule::AtMost(Version::WIN10),
                version_response: ResponseForm::Short,
                offer_ids: OfferIds::Plus16,
                reset_on_initiate_contact: true,
                drop_unload_when_disconnected: false,
                offers_once: false,
                single_range_gpadls_only: true,
            },
            Personality::OpenVmm => Behaviour {
                listens_on_4: true,
                versions: VersionRule::Known(Version::COPPER),
                version_response: ResponseForm::OpenVmm,
                offer_ids: OfferIds::SintLayout,
                reset_on_initiate_contact: false,
                drop_unload_when_disconnected: true,
                offers_once: true,
                single_range_gpadls_only: false,
            },
        }
    }

    /// The connection id an offer carries for `relid`.
    pub fn offer_connection_id(self, relid: u32) -> u32 {
        self.behaviour().offer_connection_id(relid)
    }

    /// The devices this host offers by default, in its order.
    ///
    /// OpenVMM: shutdown, time sync, KVP, SCSI, mouse, synthvid, netvsc, keyboard (sorted by
    /// interface id in `handle_request_offers`; GUIDs from `hyperv_ic_protocol`,
    /// `storvsp_protocol`, `uidevices`), relids from 1, synthvid with `mmio_megabytes: 8`
    /// (`uidevices/src/video/mod.rs`). Hyper-V and the QEMU-like host: synthvid (relid 1),
    /// netvsc (2) and heartbeat (3), the test set (QEMU itself offers none of these; the
    /// model keeps them to run the devices under QEMU's VMBus rules).
    pub fn default_offers(self) -> Vec<SimOffer> {
        let offer = |if_type: Guid, relid: u32, dedicated: bool, mmio: u16| SimOffer {
            if_type,
            if_instance: Guid([relid as u8; 16]),
            relid,
            dedicated_interrupt: dedicated,
            mmio_megabytes: mmio,
        };
        match self {
            Personality::OpenVmm => OPENVMM_OFFERS
                .iter()
                .enumerate()
                .map(|(i, &(g, mmio))| offer(g, i as u32 + 1, true, mmio))
                .collect(),
            _ => vec![
                offer(vmbus::guid::SYNTHVID, 1, false, 8),
                offer(vmbus::guid::NET, 2, true, 0),
                offer(vmbus::guid::HEARTBEAT_IC, 3, false, 0),
            ],
        }
    }
}

/// OpenVMM's default device set in offer order, with `mmio_megabytes`.
const OPENVMM_OFFERS: [(Guid, u16); 8] = [
    (vmbus::guid::SHUTDOWN_IC, 0),
    // 9527e630-d0ae-497b-adce-e80ab0175caf, hyperv_ic_protocol/src/timesync.rs
    (
        Guid::from_fields(
            0x9527_e630,
            0xd0ae,
            0x497b,
            [0xad, 0xce, 0xe8, 0x0a, 0xb0, 0x17, 0x5c, 0xaf],
        ),
        0,
    ),
    // a9a0f4e7-5a45-4d96-b827-8a841e8c03e6, hyperv_ic_protocol/src/kvp.rs
    (
        Guid::from_fields(
            0xa9a0_f4e7,
            0x5a45,
            0x4d96,
            [0xb8, 0x27, 0x8a, 0x84, 0x1e, 0x8c, 0x03, 0xe6],
        ),
        0,
    ),
    // ba6163d9-04a1-4d29-b605-72e2ffb1dc7f, storvsp_protocol SCSI_INTERFACE_ID
    (
        Guid::from_fields(
            0xba61_63d9,
            0x04a1,
            0x4d29,
            [0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f],
        ),
        0,
    ),
    // cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a, uidevices/src/mouse/protocol.rs
    (
        Guid::from_fields(
            0xcfa8_b69e,
            0x5b4a,
            0x4cc0,
            [0xb9, 0x8b, 0x8b, 0xa1, 0xa1, 0xf3, 0xf9, 0x5a],
        ),
        0,
    ),
    (vmbus::guid::SYNTHVID, 8),
    (vmbus::guid::NET, 0),
    // f912ad6d-2b17-48ea-bd65-f927a61c7684, uidevices/src/keyboard/protocol.rs
    (
        Guid::from_fields(
            0xf912_ad6d,
            0x2b17,
            0x48ea,
            [0xbd, 0x65, 0xf9, 0x27, 0xa6, 0x1c, 0x76, 0x84],
        ),
        0,
    ),
];

/// VMBus versions OpenVMM and Hyper-V know (ref §4.1).
pub(crate) const KNOWN_VERSIONS: &[Version] = &[
    Version::WS2008,
    Version::WIN7,
    Version::WIN8,
    Version::WIN8_1,
    Version::WIN10,
    Version::WIN10_V4_1,
    Version::WIN10_V5,
    Version::WIN10_V5_1,
    Version::WIN10_V5_2,
    Version::WIN10_V5_3,
    Version::COPPER,
];
