//! The panic screen's QR code: the sealed record's screen payload (`capture::screen`) drawn
//! into VRAM with the `no_std`, no-heap `qrcodegen-no-heap` encoder, black modules on a white
//! quiet zone, bottom-right, 4 pixels per module (fewer only on a screen too small for that),
//! and the text beside it wrapped to the columns the code leaves free.
//!
//! Sizes: a version-40 code is 177 modules; with the 4-module quiet zone on each side that is
//! 185 modules, 740 pixels at 4 px: it fits 1024x768. No heap: the encoder's two buffers are
//! the caller's ([`QrBuffers`], a static in the kernel), one pixel row is on the stack
//! (at most 185 * 4 * 4 = 2,960 bytes).
pub use crate::seal::{QrBuffers, QR_BUF_LEN};
use qrcodegen_no_heap::{QrCode, QrCodeEcc, Version};
use vmbus::device::{ChannelError, DmaMemory};
use vmbus::synthvid::console::CELL_W;
use vmbus::synthvid::Mode;

/// Quiet zone, in modules (ISO/IEC 18004 asks for 4).
pub const QUIET: usize = 4;
/// Preferred pixels per module.
pub const MODULE_PX: usize = 4;
const MAX_ROW_PX: usize = (177 + 2 * QUIET) * MODULE_PX;

/// Where the code was drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrPlace {
    /// QR version (1..=40).
    pub version: u8,
    /// Left edge of the quiet zone, in pixels.
    pub x: usize,
    /// Top edge of the quiet zone, in pixels.
    pub y: usize,
    /// Pixels per module.
    pub module_px: usize,
    /// Side of the whole square (quiet zone included), in pixels.
    pub side: usize,
}

/// Why no code was drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QrDrawError {
    /// The payload is more than a version-40 code holds.
    #[error("the payload does not fit a QR code")]
    TooLong,
    /// Writing VRAM failed.
    #[error("writing VRAM failed: {0}")]
    Vram(ChannelError),
}

/// Encodes `payload` (byte mode, ECC L, the smallest version that holds it, the standard's
/// mask choice) into `bufs`. Pure computation.
pub fn encode<'b>(payload: &[u8], bufs: &'b mut QrBuffers) -> Result<QrCode<'b>, QrDrawError> {
    if payload.len() > QR_BUF_LEN {
        return Err(QrDrawError::TooLong);
    }
    bufs.tmp[..payload.len()].copy_from_slice(payload);
    QrCode::encode_binary(
        &mut bufs.tmp,
        payload.len(),
        &mut bufs.out,
        QrCodeEcc::Low,
        Version::MIN,
        Version::MAX,
        None,
        false,
    )
    .map_err(|_| QrDrawError::TooLong)
}

/// Where a code of `modules` modules goes on `mode`: bottom-right, at [`MODULE_PX`] pixels
/// per module, or the most that fits down to 2.
pub fn place(mode: Mode, modules: usize, version: u8) -> Option<QrPlace> {
    let (w, h) = (mode.width as usize, mode.height as usize);
    let span = modules + 2 * QUIET;
    let px = (2..=MODULE_PX)
        .rev()
        .find(|px| span * px <= w && span * px <= h)?;
    let side = span * px;
    Some(QrPlace {
        version,
        x: w - side,
        y: h - side,
        module_px: px,
        side,
    })
}

/// Draws `qr` at `p` into VRAM (32 bpp, black on white).
pub fn draw<M: DmaMemory + ?Sized>(
    vram: &M,
    mode: Mode,
    qr: &QrCode<'_>,
    p: &QrPlace,
) -> Result<(), QrDrawError> {
    const WHITE: [u8; 4] = 0x00FF_FFFFu32.to_le_bytes();
    const BLACK: [u8; 4] = 0u32.to_le_bytes();
    let modules = qr.size() as usize;
    let span = modules + 2 * QUIET;
    let mut row = [0u8; MAX_ROW_PX * 4];
    let row = &mut row[..p.side * 4];
    for my in 0..span {
        for mx in 0..span {
            let on = (QUIET..QUIET + modules).contains(&mx)
                && (QUIET..QUIET + modules).contains(&my)
                && qr.get_module((mx - QUIET) as i32, (my - QUIET) as i32);
            let c = if on { BLACK } else { WHITE };
            for k in 0..p.module_px {
                let at = (mx * p.module_px + k) * 4;
                row[at..at + 4].copy_from_slice(&c);
            }
        }
        for k in 0..p.module_px {
            let y = p.y + my * p.module_px + k;
            let off = y * mode.pitch as usize + p.x * 4;
            vram.write(off, row).map_err(QrDrawError::Vram)?;
        }
    }
    Ok(())
}

/// Text columns left of a code placed at `p` (one blank column before it).
pub fn text_cols(p: Option<&QrPlace>, mode: Mode) -> usize {
    let right = p.map_or(mode.width as usize, |p| p.x);
    (right / CELL_W).saturating_sub(2)
}

/// Copies `text` into `out`, breaking lines longer than `cols` characters at the last space
/// that fits (mid-word only for a word longer than a line); what does not fit `out` is cut.
pub fn wrap<const N: usize>(text: &str, cols: usize, out: &mut heapless::String<N>) {
    let cols = cols.max(8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 && out.push('\n').is_err() {
            return;
        }
        let mut rest = line;
        while rest.chars().count() > cols {
            // Byte index of the char at `cols` (the first that does not fit).
            let end = rest.char_indices().nth(cols).map_or(rest.len(), |(i, _)| i);
            let cut = rest[..end].rfind(' ').filter(|&i| i > 0).unwrap_or(end);
            if out.push_str(&rest[..cut]).is_err() || out.push('\n').is_err() {
                return;
            }
            rest = rest[cut..].trim_start_matches(' ');
        }
        if out.push_str(rest).is_err() {
            return;
        }
    }
}
