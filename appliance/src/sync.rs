//! A tiny spin lock with a real `try_lock` (compare-and-swap). The canary runs on one CPU with
//! interrupts off, so `lock` only spins if the panic path interrupted a holder, and the panic
//! path never calls `lock`: it uses `try_lock` or `force_get`.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

pub struct TryLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (or, for `force_get`, by the caller's
// promise that the holder can never run again).
unsafe impl<T: Send> Sync for TryLock<T> {}

pub struct Guard<'a, T> {
    lock: &'a TryLock<T>,
}

impl<T> TryLock<T> {
    pub const fn new(value: T) -> Self {
        TryLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Guard { lock: self })
    }

    /// Spins until free. Not for the panic path.
    pub fn lock(&self) -> Guard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            core::hint::spin_loop();
        }
    }

    /// Access without the lock, for the panic path after freeze when the lock is held by code
    /// that was interrupted and will never resume.
    ///
    /// # Safety
    /// The caller must guarantee that no other reference to the value is used while the
    /// returned one lives (one CPU, interrupts off, the holder never resumes).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn force_get(&self) -> &mut T {
        // SAFETY: forwarded to the caller.
        unsafe { &mut *self.value.get() }
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_lock_fails_while_held_and_succeeds_after_release() {
        let l = TryLock::new(5u32);
        let mut g = l.try_lock().expect("free lock");
        *g += 1;
        assert!(l.try_lock().is_none());
        drop(g);
        assert_eq!(*l.try_lock().expect("released"), 6);
    }
}

/// A value set once at boot and read everywhere after (including the panic path).
pub struct Once<T> {
    set: AtomicBool,
    value: UnsafeCell<core::mem::MaybeUninit<T>>,
}

// SAFETY: the value is written once before `set` is published (Release) and only read after
// `set` is observed (Acquire).
unsafe impl<T: Sync + Send> Sync for Once<T> {}

impl<T> Once<T> {
    pub const fn new() -> Self {
        Once {
            set: AtomicBool::new(false),
            value: UnsafeCell::new(core::mem::MaybeUninit::uninit()),
        }
    }

    /// Sets the value; a second call is ignored (returns false).
    pub fn set(&self, v: T) -> bool {
        if self.set.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: not yet published, one CPU at boot: nobody reads it yet.
        unsafe { (*self.value.get()).write(v) };
        self.set.store(true, Ordering::Release);
        true
    }

    pub fn get(&self) -> Option<&T> {
        if self.set.load(Ordering::Acquire) {
            // SAFETY: published after the write; never written again.
            Some(unsafe { (*self.value.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod once_tests {
    use super::*;

    #[test]
    fn once_keeps_the_first_value() {
        let o = Once::new();
        assert!(o.get().is_none());
        assert!(o.set(1u8));
        assert!(!o.set(2u8));
        assert_eq!(o.get(), Some(&1));
    }
}

impl<T> TryLock<T> {
    /// Releases the lock without a guard: for the panic path, when the holder was interrupted
    /// by the panic and will never run again.
    ///
    /// # Safety
    /// The holder must never use its guard again.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}
