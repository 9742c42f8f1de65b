//! Who crashed: the SMBIOS System Information and the Hyper-V KVP host items, read once at
//! boot and cached here; the panic path copies the cached group into the record (no heap,
//! no lock, no I/O: `Once::get` and a copy).

use capture::identity::{Identity, Kvp, KvpStatus, UuidText};
use capture::record::truncate_to;

use crate::sync::Once;

/// The KVP outcome at boot (set by the Hyper-V bring-up; unset without VMBus).
pub static KVP: Once<(KvpStatus, Kvp)> = Once::new();

/// The record's identity group from what boot found.
pub fn current() -> Identity {
    let mut id = Identity::empty();
    match crate::smbios::FOUND.get() {
        Some(Ok(s)) => {
            id.smbios_status = capture::identity::SmbiosStatus::Found;
            id.smbios = Some(s.clone());
        }
        Some(Err(e)) => id.smbios_status = e.status(),
        None => {}
    }
    if let Some((st, kvp)) = KVP.get() {
        id.kvp_status = *st;
        id.kvp = kvp.clone();
    }
    id
}

/// The record's KVP fields from the items the driver kept (each truncated at a char boundary
/// to the record's capacity).
pub fn kvp_fields(items: &vmbus::ic::kvp::HostItems) -> Kvp {
    Kvp {
        vm_name: truncate_to(items.vm_name.as_str()),
        vm_id: truncate_to(items.vm_id.as_str()),
        host_name: truncate_to(items.host_name.as_str()),
        host_fqdn: truncate_to(items.host_fqdn.as_str()),
    }
}

/// The one-line summary for the boot console.
pub fn summary(id: &Identity, out: &mut impl core::fmt::Write) -> core::fmt::Result {
    write!(out, "identity: smbios ")?;
    match &id.smbios {
        Some(s) => write!(
            out,
            "{} {} serial \"{}\" uuid {} (SMBIOS {}.{})",
            q(&s.manufacturer),
            q(&s.product),
            s.serial,
            UuidText(&s.uuid),
            s.version.0,
            s.version.1
        )?,
        None => write!(out, "({})", id.smbios_status.describe())?,
    }
    write!(out, "; kvp ")?;
    if id.kvp_status == KvpStatus::Received {
        write!(
            out,
            "vm \"{}\" id {} host \"{}\" ({})",
            id.kvp.vm_name, id.kvp.vm_id, id.kvp.host_name, id.kvp.host_fqdn
        )
    } else {
        write!(out, "({})", id.kvp_status.describe())
    }
}

/// Logs the one-line summary (boot console; after the Hyper-V bring-up).
pub fn log_summary() {
    let mut line = heapless::String::<512>::new();
    // A full line is cut short, not lost.
    let _ = summary(&current(), &mut line);
    log::info!("{line}");
    if let Some(Err(e)) = crate::smbios::FOUND.get() {
        log::info!("smbios: {e}");
    }
}

fn q(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_both_sources_or_says_why_not() {
        let mut id = Identity::empty();
        let mut s = String::new();
        summary(&id, &mut s).unwrap();
        assert_eq!(s, "identity: smbios (not read); kvp (not read)");
        id.smbios_status = capture::identity::SmbiosStatus::Found;
        id.smbios = Some(capture::identity::Smbios {
            version: (3, 1),
            uuid: [0x11; 16],
            manufacturer: truncate_to("QEMU"),
            product: truncate_to("Standard PC"),
            serial: truncate_to("canary-serial-7"),
        });
        id.kvp_status = KvpStatus::NotOffered;
        let mut s = String::new();
        summary(&id, &mut s).unwrap();
        assert_eq!(
            s,
            "identity: smbios QEMU Standard PC serial \"canary-serial-7\" uuid \
             11111111-1111-1111-1111-111111111111 (SMBIOS 3.1); kvp (no KVP channel)"
        );
        let mut items = vmbus::ic::kvp::HostItems::default();
        for c in "é".repeat(40).chars() {
            items.vm_name.push(c);
        }
        let k = kvp_fields(&items);
        assert_eq!(
            k.vm_name.len(),
            64,
            "32 two-byte chars fill the 64-byte field exactly"
        );
    }
}
