//! Who crashed (schema 1.2's identity group): the names `list` and the store index, and the
//! identity `show` prints.

use capture::identity::{Identity, KvpStatus, SmbiosStatus, UuidText};
use capture::record::CrashRecord;
use serde::{Deserialize, Serialize};

/// The VM's name as the host knows it: KVP `VirtualMachineName` (none when the record has
/// no KVP items).
pub fn vm_name(r: &CrashRecord) -> Option<String> {
    nonempty(r.ident.kvp.vm_name.as_str())
}

/// The physical host's name: KVP `PhysicalHostNameFullyQualified`, else `PhysicalHostName`.
pub fn host_name(r: &CrashRecord) -> Option<String> {
    nonempty(r.ident.kvp.host_fqdn.as_str()).or_else(|| nonempty(r.ident.kvp.host_name.as_str()))
}

fn nonempty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// The SMBIOS part of `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmbiosView {
    /// "found", or why not.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub product: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial: Option<String>,
}

/// The KVP part of `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvpView {
    /// "received", or why not.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vm_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vm_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub host_fqdn: Option<String>,
}

/// `show`'s identity section (`show --json`: the `identity` object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub smbios: SmbiosView,
    pub kvp: KvpView,
}

impl IdentityView {
    /// The view of a record's group.
    pub fn of(id: &Identity) -> IdentityView {
        let s = id.smbios.as_ref();
        IdentityView {
            smbios: SmbiosView {
                status: id.smbios_status.describe().into(),
                version: s.map(|s| format!("{}.{}", s.version.0, s.version.1)),
                uuid: s.map(|s| UuidText(&s.uuid).to_string()),
                manufacturer: s.and_then(|s| nonempty(&s.manufacturer)),
                product: s.and_then(|s| nonempty(&s.product)),
                serial: s.and_then(|s| nonempty(&s.serial)),
            },
            kvp: KvpView {
                status: id.kvp_status.describe().into(),
                vm_name: nonempty(&id.kvp.vm_name),
                vm_id: nonempty(&id.kvp.vm_id),
                host_name: nonempty(&id.kvp.host_name),
                host_fqdn: nonempty(&id.kvp.host_fqdn),
            },
        }
    }

    /// From a stored record's bytes and schema ("1.2"); `None` for a record older than 1.2
    /// or bytes that do not decode (its identity was never sent).
    pub fn of_raw(raw: &[u8], schema: &str) -> Option<IdentityView> {
        let mut it = schema.split('.').map(|p| p.parse::<u16>().ok());
        let (Some(Some(major)), Some(Some(minor))) = (it.next(), it.next()) else {
            return None;
        };
        if minor < 2 {
            return None;
        }
        let r = CrashRecord::decode(major, minor, raw).ok()?;
        Some(IdentityView::of(&r.ident))
    }

    /// The lines `show` prints: (label, text).
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        let s = &self.smbios;
        let smbios = if s.status == SmbiosStatus::Found.describe() {
            let mut t = format!(
                "{} {}",
                s.manufacturer.as_deref().unwrap_or("-"),
                s.product.as_deref().unwrap_or("-")
            );
            if let Some(x) = &s.serial {
                t += &format!(", serial {x}");
            }
            if let Some(u) = &s.uuid {
                t += &format!(", uuid {u}");
            }
            if let Some(v) = &s.version {
                t += &format!(" (SMBIOS {v})");
            }
            t
        } else {
            format!("({})", s.status)
        };
        let k = &self.kvp;
        let (vm, host) = if k.status == KvpStatus::Received.describe() {
            let mut vm = k.vm_name.clone().unwrap_or_else(|| "-".into());
            if let Some(id) = &k.vm_id {
                vm += &format!(" (id {id})");
            }
            let host = match (&k.host_fqdn, &k.host_name) {
                (Some(f), Some(n)) if f != n => format!("{f} ({n})"),
                (Some(f), _) => f.clone(),
                (None, Some(n)) => n.clone(),
                (None, None) => "-".into(),
            };
            (vm, host)
        } else {
            let why = format!("(KVP: {})", k.status);
            (why.clone(), why)
        };
        vec![("System", smbios), ("VM", vm), ("Host", host)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture::identity::{Kvp, Smbios};
    use capture::record::truncate_to;

    #[test]
    fn names_prefer_the_fqdn_and_skip_blanks() {
        let mut r = CrashRecord::empty();
        assert_eq!((vm_name(&r), host_name(&r)), (None, None));
        r.ident.kvp = Kvp {
            vm_name: truncate_to("web-01"),
            vm_id: truncate_to(""),
            host_name: truncate_to("HV07"),
            host_fqdn: truncate_to("  "),
        };
        assert_eq!(vm_name(&r).as_deref(), Some("web-01"));
        assert_eq!(host_name(&r).as_deref(), Some("HV07"));
        r.ident.kvp.host_fqdn = truncate_to("HV07.corp.example");
        assert_eq!(host_name(&r).as_deref(), Some("HV07.corp.example"));
    }

    #[test]
    fn lines_say_what_is_known_and_why_the_rest_is_not() {
        let mut id = Identity::empty();
        let v = IdentityView::of(&id);
        assert_eq!(
            v.lines(),
            vec![
                ("System", "(not read)".to_string()),
                ("VM", "(KVP: not read)".to_string()),
                ("Host", "(KVP: not read)".to_string()),
            ]
        );
        id.smbios_status = SmbiosStatus::Found;
        id.smbios = Some(Smbios {
            version: (2, 8),
            uuid: [0xab; 16],
            manufacturer: truncate_to("QEMU"),
            product: truncate_to("Standard PC"),
            serial: truncate_to(""),
        });
        id.kvp_status = KvpStatus::Received;
        id.kvp.vm_name = truncate_to("canary-07");
        id.kvp.host_name = truncate_to("HV-HOST-12");
        let l = IdentityView::of(&id).lines();
        assert_eq!(
            l[0].1,
            "QEMU Standard PC, uuid abababab-abab-abab-abab-abababababab (SMBIOS 2.8)"
        );
        assert_eq!(l[1].1, "canary-07");
        assert_eq!(l[2].1, "HV-HOST-12");
        assert_eq!(IdentityView::of_raw(&[], "1.1"), None);
        assert_eq!(IdentityView::of_raw(&[1, 2], "1.2"), None);
    }
}
