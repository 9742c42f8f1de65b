//! canary's crash record, frame format, datagram transport and panic-path orchestrator.
//! See `API.md` for the contract with the appliance and the collector.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
