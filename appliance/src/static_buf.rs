//! `static_buf!`: a buffer in a static of its own, handed out as `&'static mut` at most once.
//!
//! Device rings and smoltcp's socket storage need memory that lives forever and has one
//! owner. Each expansion declares its own static and an atomic "taken" flag: the first call
//! gets `Some(&'static mut)`, every later call of the same expansion (a second `Net::init`, a
//! second NIC) gets `None`, so two live `&mut` to one buffer cannot be made from safe code.

/// `static_buf!(TYPE, INIT)`: `Some(&'static mut TYPE)` the first time this expansion runs,
/// `None` after. `INIT` must be a constant expression.
#[cfg_attr(not(kernel), allow(unused_macros))]
macro_rules! static_buf {
    ($t:ty, $init:expr) => {{
        static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        static mut B: $t = $init;
        if TAKEN.swap(true, core::sync::atomic::Ordering::AcqRel) {
            None
        } else {
            // SAFETY: `B` is private to this expansion and only reached here; the swap above
            // lets exactly one caller (ever) past, so this is the only reference to it.
            Some(unsafe { &mut *core::ptr::addr_of_mut!(B) })
        }
    }};
}
// The kernel uses it in `net`; the host build only in the tests below.
#[cfg_attr(not(kernel), allow(unused_imports))]
pub(crate) use static_buf;

#[cfg(test)]
mod tests {
    fn take_a() -> Option<&'static mut [u8; 4]> {
        static_buf!([u8; 4], [7; 4])
    }
    fn take_b() -> Option<&'static mut [u8; 4]> {
        static_buf!([u8; 4], [9; 4])
    }

    #[test]
    fn an_expansion_hands_its_buffer_out_once_and_each_has_its_own() {
        let a = take_a().expect("first take");
        assert_eq!(*a, [7; 4]);
        a[0] = 1;
        assert!(
            take_a().is_none(),
            "a second &'static mut to the same buffer"
        );
        assert!(take_a().is_none());
        let b = take_b().expect("another expansion has its own buffer");
        assert_eq!(*b, [9; 4]);
        assert_eq!(a[0], 1);
    }

    #[test]
    fn racing_takers_get_it_once() {
        fn take_c() -> Option<&'static mut [u64; 2]> {
            static_buf!([u64; 2], [0; 2])
        }
        let got: usize = std::thread::scope(|s| {
            let hs: std::vec::Vec<_> = (0..8).map(|_| s.spawn(|| take_c().is_some())).collect();
            hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(got, 1);
    }
}
