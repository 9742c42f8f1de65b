//! A text console drawn into VRAM with the built-in font, and the panic screen.
//!
//! No heap: pixels are written one glyph row at a time from a small stack buffer. 32 bpp
//! (`SYNTHVID_DEPTH_WIN8`), pixel bytes B, G, R, X (little-endian `0x00RRGGBB`).

use super::Mode;
use crate::device::{ChannelError, DmaMemory};
use crate::font::{self, GLYPH_H, GLYPH_W};

/// Pixels per font pixel.
pub const SCALE: usize = 2;
/// Cell width: glyph plus one font pixel of spacing, scaled.
pub const CELL_W: usize = (GLYPH_W + 1) * SCALE;
/// Cell height: glyph plus one font pixel of spacing, scaled.
pub const CELL_H: usize = (GLYPH_H + 1) * SCALE;

/// Panic screen background (dark red), `0x00RRGGBB`.
pub const PANIC_BG: u32 = 0x0080_0000;
/// Panic screen foreground (white).
pub const PANIC_FG: u32 = 0x00FF_FFFF;

/// A text console over a 32-bpp framebuffer.
pub struct Console<'m, M: DmaMemory + ?Sized> {
    vram: &'m M,
    mode: Mode,
    col: usize,
    row: usize,
    fg: u32,
    bg: u32,
}

impl<'m, M: DmaMemory + ?Sized> Console<'m, M> {
    /// A console at the top-left, white on black.
    pub fn new(vram: &'m M, mode: Mode) -> Self {
        Console {
            vram,
            mode,
            col: 0,
            row: 0,
            fg: 0x00FF_FFFF,
            bg: 0,
        }
    }
    /// Text columns.
    pub fn cols(&self) -> usize {
        self.mode.width as usize / CELL_W
    }
    /// Text rows.
    pub fn rows(&self) -> usize {
        self.mode.height as usize / CELL_H
    }
    /// Sets the colours (`0x00RRGGBB`).
    pub fn set_colors(&mut self, fg: u32, bg: u32) {
        self.fg = fg;
        self.bg = bg;
    }
    /// Moves the cursor.
    pub fn set_cursor(&mut self, col: usize, row: usize) {
        self.col = col;
        self.row = row;
    }
    /// Cursor position (column, row).
    pub fn cursor(&self) -> (usize, usize) {
        (self.col, self.row)
    }

    /// Fills the whole screen with the background colour.
    pub fn clear(&mut self) -> Result<(), ChannelError> {
        let px = self.bg.to_le_bytes();
        let mut chunk = [0u8; 256];
        for p in chunk.chunks_exact_mut(4) {
            p.copy_from_slice(&px);
        }
        let line = self.mode.width as usize * 4;
        for y in 0..self.mode.height as usize {
            let base = y * self.mode.pitch as usize;
            let mut off = 0;
            while off < line {
                let n = (line - off).min(chunk.len());
                self.vram.write(base + off, &chunk[..n])?;
                off += n;
            }
        }
        self.col = 0;
        self.row = 0;
        Ok(())
    }

    /// Draws one character cell at (`col`, `row`).
    pub fn draw_char(&self, col: usize, row: usize, c: char) -> Result<(), ChannelError> {
        let g = font::glyph(c);
        let mut line = [0u8; CELL_W * 4];
        for y in 0..CELL_H {
            let gy = y / SCALE;
            for x in 0..CELL_W {
                let on = font::pixel(g, x / SCALE, gy);
                let c = if on { self.fg } else { self.bg };
                line[x * 4..x * 4 + 4].copy_from_slice(&c.to_le_bytes());
            }
            let off = (row * CELL_H + y) * self.mode.pitch as usize + col * CELL_W * 4;
            self.vram.write(off, &line)?;
        }
        Ok(())
    }

    fn newline(&mut self) {
        self.col = 0;
        // No scrolling (it would need to read VRAM back): wrap to the top.
        self.row = (self.row + 1) % self.rows().max(1);
    }

    /// Writes text at the cursor, wrapping at the right edge; `\n` starts a new line.
    pub fn write_str(&mut self, s: &str) -> Result<(), ChannelError> {
        for c in s.chars() {
            if c == '\n' {
                self.newline();
                continue;
            }
            if self.col >= self.cols() {
                self.newline();
            }
            self.draw_char(self.col, self.row, c)?;
            self.col += 1;
        }
        Ok(())
    }
}

impl<M: DmaMemory + ?Sized> core::fmt::Write for Console<'_, M> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        Console::write_str(self, s).map_err(|_| core::fmt::Error)
    }
}

/// Draws the panic screen: a red background, a title line, then `message` (which may hold
/// newlines) from the third text row. Returns the console so the caller can add more lines.
pub fn draw_panic_screen<'m, M: DmaMemory + ?Sized>(
    vram: &'m M,
    mode: Mode,
    message: &str,
) -> Result<Console<'m, M>, ChannelError> {
    let mut con = Console::new(vram, mode);
    con.set_colors(PANIC_FG, PANIC_BG);
    con.clear()?;
    con.set_cursor(1, 1);
    con.write_str("canary: PANIC")?;
    con.set_cursor(1, 3);
    for (i, line) in message.split('\n').enumerate() {
        con.set_cursor(1, 3 + i);
        con.write_str(line)?;
    }
    Ok(con)
}
