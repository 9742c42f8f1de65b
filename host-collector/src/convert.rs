//! Conversion of capture's decoded records into the stored form.

/// Name of an arch code as carried in heartbeats (capture's `Arch` codes: 1 x86_64, 2 aarch64).
pub fn arch_code_name(code: u8) -> String {
    match code {
        1 => "x86_64".into(),
        2 => "aarch64".into(),
        o => format!("other({o})"),
    }
}
