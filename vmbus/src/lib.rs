//! Hyper-V guest interface and VMBus stack.
#![no_std]
