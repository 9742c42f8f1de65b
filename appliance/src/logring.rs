//! A fixed-size byte ring that keeps the newest log output; the crash record carries its tail.

/// A `fmt::Write` into a fixed-size string that cuts the text at the end of the buffer
/// instead of failing (the console's lines, the panic path's lines, the crash message).
pub struct Cut<'a, const N: usize>(pub &'a mut heapless::String<N>);

impl<const N: usize> core::fmt::Write for Cut<'_, N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

pub struct LogRing<const N: usize> {
    buf: [u8; N],
    /// Total bytes ever written; the ring holds the last min(written, N).
    written: usize,
}

impl<const N: usize> LogRing<N> {
    pub const fn new() -> Self {
        LogRing {
            buf: [0; N],
            written: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Only the last N bytes of a huge write can survive.
        let bytes = &bytes[bytes.len().saturating_sub(N)..];
        for &b in bytes {
            self.buf[self.written % N] = b;
            self.written = self.written.wrapping_add(1);
        }
    }

    pub fn len(&self) -> usize {
        self.written.min(N)
    }

    /// Copies the newest `M` bytes (or fewer) into `out`, dropping a partial UTF-8 character
    /// at the front; invalid bytes become '?'.
    pub fn tail_into<const M: usize>(&self, out: &mut heapless::String<M>) {
        out.clear();
        let n = self.len().min(M);
        let mut tmp = [0u8; M];
        for (i, t) in tmp[..n].iter_mut().enumerate() {
            *t = self.buf[(self.written - n + i) % N];
        }
        let skip = tmp[..n].iter().take_while(|&&b| (b & 0xC0) == 0x80).count();
        for chunk in tmp[skip..n].utf8_chunks() {
            if out.push_str(chunk.valid()).is_err() {
                return;
            }
            if !chunk.invalid().is_empty() && out.push('?').is_err() {
                return;
            }
        }
    }
}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let mut r = LogRing::<8>::new();
        r.push(b"hello ");
        r.push(b"world");
        let mut s = heapless::String::<16>::new();
        r.tail_into(&mut s);
        assert_eq!(s.as_str(), "lo world");
        let mut short = heapless::String::<3>::new();
        r.tail_into(&mut short);
        assert_eq!(short.as_str(), "rld");
    }

    #[test]
    fn tail_drops_partial_utf8_at_the_front() {
        let mut r = LogRing::<4>::new();
        r.push("xé!".as_bytes()); // 78 c3 a9 21
        let mut s = heapless::String::<2>::new();
        r.tail_into(&mut s); // a9 21 -> the continuation byte is skipped
        assert_eq!(s.as_str(), "!");
        let mut s = heapless::String::<3>::new();
        r.tail_into(&mut s);
        assert_eq!(s.as_str(), "é!");
    }

    #[test]
    fn huge_write_keeps_its_end() {
        let mut r = LogRing::<4>::new();
        r.push(b"0123456789");
        let mut s = heapless::String::<8>::new();
        r.tail_into(&mut s);
        assert_eq!(s.as_str(), "6789");
    }
}
