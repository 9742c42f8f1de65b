//! Hypercall status codes and results (ref §3.5; Linux `include/hyperv/hvgdk_mini.h`
//! `HV_STATUS_*`).

/// A raw hypercall status (bits 15:0 of the result). An open enum: unknown codes are kept.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct HvStatus(pub u16);

impl HvStatus {
    pub const SUCCESS: Self = Self(0);
    pub const INVALID_HYPERCALL_CODE: Self = Self(2);
    pub const INVALID_HYPERCALL_INPUT: Self = Self(3);
    pub const INVALID_ALIGNMENT: Self = Self(4);
    pub const INVALID_PARAMETER: Self = Self(5);
    pub const ACCESS_DENIED: Self = Self(6);
    pub const INSUFFICIENT_MEMORY: Self = Self(0xB);
    pub const INVALID_PORT_ID: Self = Self(0x11);
    pub const INVALID_CONNECTION_ID: Self = Self(0x12);
    pub const INSUFFICIENT_BUFFERS: Self = Self(0x13);

    /// The typed error for a non-success status, `Ok` for success.
    pub fn result(self) -> Result<(), HvError> {
        match self {
            Self::SUCCESS => Ok(()),
            Self::INVALID_HYPERCALL_CODE => Err(HvError::InvalidHypercallCode),
            Self::INVALID_HYPERCALL_INPUT => Err(HvError::InvalidHypercallInput),
            Self::INVALID_ALIGNMENT => Err(HvError::InvalidAlignment),
            Self::INVALID_PARAMETER => Err(HvError::InvalidParameter),
            Self::ACCESS_DENIED => Err(HvError::AccessDenied),
            Self::INSUFFICIENT_MEMORY => Err(HvError::InsufficientMemory),
            Self::INVALID_PORT_ID => Err(HvError::InvalidPortId),
            Self::INVALID_CONNECTION_ID => Err(HvError::InvalidConnectionId),
            Self::INSUFFICIENT_BUFFERS => Err(HvError::InsufficientBuffers),
            Self(other) => Err(HvError::Other(other)),
        }
    }
}

/// A hypercall result word: status in bits 15:0, reps completed in bits 43:32 (ref §3.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HvResult(pub u64);

impl HvResult {
    pub fn status(self) -> HvStatus {
        HvStatus(self.0 as u16)
    }
    pub fn reps_completed(self) -> u16 {
        ((self.0 >> 32) & 0xfff) as u16
    }
    pub fn result(self) -> Result<(), HvError> {
        self.status().result()
    }
}

/// Errors from hypervisor access: hypercall status codes mapped to variants, plus the guest
/// side's own failures.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum HvError {
    #[error("hypervisor: invalid hypercall code (status 2)")]
    InvalidHypercallCode,
    #[error("hypervisor: invalid hypercall input (status 3)")]
    InvalidHypercallInput,
    #[error("hypervisor: invalid alignment (status 4)")]
    InvalidAlignment,
    #[error("hypervisor: invalid parameter (status 5)")]
    InvalidParameter,
    #[error("hypervisor: access denied (status 6)")]
    AccessDenied,
    #[error("hypervisor: insufficient memory (status 0xB), transient")]
    InsufficientMemory,
    #[error("hypervisor: invalid port id (status 0x11)")]
    InvalidPortId,
    #[error("hypervisor: invalid connection id (status 0x12)")]
    InvalidConnectionId,
    #[error("hypervisor: insufficient buffers (status 0x13), transient")]
    InsufficientBuffers,
    #[error("hypervisor: status {0:#x}")]
    Other(u16),
    #[error("hypercalls are not enabled (no hypercall page / guest OS id)")]
    HypercallsDisabled,
    #[error("the register does not exist on this architecture")]
    NoSuchRegister,
    #[error("the kernel's page allocator is out of pages")]
    OutOfPages,
    #[error("VP index {0} is beyond the SynIC table (MAX_CPUS)")]
    VpIndexTooLarge(u32),
    #[error("SMCCC call not supported by the hypervisor (x0 = {0:#x})")]
    SmcccNotSupported(u64),
}

impl HvError {
    /// Linux `vmbus_post_msg` retries these (ref §4.5): insufficient memory/buffers, and an
    /// invalid connection id for anything but INITIATE_CONTACT.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::InsufficientMemory | Self::InsufficientBuffers | Self::InvalidConnectionId
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_typed_errors() {
        assert_eq!(HvStatus(0).result(), Ok(()));
        assert_eq!(HvStatus(0x12).result(), Err(HvError::InvalidConnectionId));
        assert_eq!(HvStatus(0x13).result(), Err(HvError::InsufficientBuffers));
        assert_eq!(HvStatus(0xB).result(), Err(HvError::InsufficientMemory));
        assert_eq!(HvStatus(0x77).result(), Err(HvError::Other(0x77)));
        let r = HvResult(0x0000_0003_0000_0005);
        assert_eq!(r.status(), HvStatus::INVALID_PARAMETER);
        assert_eq!(r.reps_completed(), 3);
    }
}
