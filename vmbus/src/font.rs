//! canary's built-in bitmap font: printable ASCII (0x20-0x7E), 5x7 pixels per glyph.
//!
//! The glyphs are canary's own, drawn by hand in `font_5x7.txt` (one line per character:
//! hex code, then seven rows of five pixels, `#` = set) and turned into bit rows at compile
//! time. No font file from another project is used.

/// Glyph width in pixels.
pub const GLYPH_W: usize = 5;
/// Glyph height in pixels.
pub const GLYPH_H: usize = 7;
/// First character in the table.
pub const FIRST: u8 = 0x20;
/// Last character in the table.
pub const LAST: u8 = 0x7E;
const COUNT: usize = (LAST - FIRST + 1) as usize;

const SOURCE: &[u8] = include_bytes!("font_5x7.txt");

/// Each glyph is 7 rows; bit 4 of a row is the leftmost pixel.
pub static GLYPHS: [[u8; GLYPH_H]; COUNT] = parse(SOURCE);

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("font: bad hex digit"),
    }
}

const fn parse(src: &[u8]) -> [[u8; GLYPH_H]; COUNT] {
    let mut out = [[0u8; GLYPH_H]; COUNT];
    let mut seen = [false; COUNT];
    let mut i = 0;
    while i < src.len() {
        // A line: "hh" ' ' then 7 x (5 pixels + separator).
        let code = hex(src[i]) * 16 + hex(src[i + 1]);
        assert!(code >= FIRST && code <= LAST, "font: code out of range");
        let idx = (code - FIRST) as usize;
        assert!(!seen[idx], "font: duplicate code");
        seen[idx] = true;
        let mut p = i + 3;
        let mut row = 0;
        while row < GLYPH_H {
            let mut bits = 0u8;
            let mut col = 0;
            while col < GLYPH_W {
                bits <<= 1;
                match src[p + col] {
                    b'#' => bits |= 1,
                    b'.' => {}
                    _ => panic!("font: bad pixel"),
                }
                col += 1;
            }
            out[idx][row] = bits;
            p += GLYPH_W + 1;
            row += 1;
        }
        assert!(src[p - 1] == b'\n', "font: line too long");
        i = p;
    }
    let mut k = 0;
    while k < COUNT {
        assert!(seen[k], "font: missing glyph");
        k += 1;
    }
    out
}

/// The glyph for `c`; characters outside the table draw as `?`.
pub fn glyph(c: char) -> &'static [u8; GLYPH_H] {
    let b = if (FIRST as u32..=LAST as u32).contains(&(c as u32)) {
        c as u8
    } else {
        b'?'
    };
    &GLYPHS[(b - FIRST) as usize]
}

/// Whether pixel (`x`, `y`) of glyph `g` is set.
pub fn pixel(g: &[u8; GLYPH_H], x: usize, y: usize) -> bool {
    x < GLYPH_W && y < GLYPH_H && (g[y] >> (GLYPH_W - 1 - x)) & 1 != 0
}
