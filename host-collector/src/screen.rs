//! `import-screen`: a crash record from a screenshot of the panic screen, for when the network
//! is broken (Azure boot diagnostics and Hyper-V's VM connection keep screenshots).
//!
//! The panic screen draws the sealed record as a QR code (`capture::screen` payload: the
//! record as shipped, LZ4-compressed when shorter). This finds the code in a PNG with `rqrr`,
//! checks the payload (magic, version, CRC, the fleet key's tag when one is set, the record's
//! CRC), decodes the record as the server does (schema, body), and stores it through the
//! server's own store path (`Store::commit_batch`) under the same dedupe key the network
//! gives it, `(boot id, seq, CRC-32 of the record)`, with source `screen:FILE`: a record that
//! also arrived over the network is a duplicate, never stored twice.
use std::path::Path;

use capture::record::CrashRecord;
use capture::screen::{self, ScreenError};
use capture::Key;
use serde::Serialize;

use crate::store::{InsertOutcome, NewRecord, RecordKey, Store, StoreError};
use crate::util::{hex, now_us};

/// Why a screenshot gave no record.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a PNG this reader decodes.
    #[error("{path} is not a PNG image this reader decodes: {reason}")]
    Png {
        /// The file.
        path: String,
        /// The decoder's words.
        reason: String,
    },
    /// No canary QR code in the image.
    #[error(
        "no canary QR code found in {path} ({codes} QR codes seen): take the screenshot at full \
         size, with the whole code and its white border visible"
    )]
    NoCode {
        /// The file.
        path: String,
        /// QR codes found that decoded but held no canary payload, or did not decode.
        codes: usize,
    },
    /// The payload is damaged, or its authentication does not match the key.
    #[error("the QR code in {path} holds no valid canary record: {source}")]
    Payload {
        /// The file.
        path: String,
        /// Why.
        source: ScreenError,
    },
    /// The record inside does not decode (schema or body), as the server would reject it.
    #[error("the record in {path} is not accepted: {source}")]
    Record {
        /// The file.
        path: String,
        /// Why.
        source: capture::Error,
    },
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one screenshot gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// The file.
    pub file: String,
    /// The record's boot id (hex).
    pub boot_id: String,
    /// Its sequence number.
    pub seq: u32,
    /// Its CRC-32 (the dedupe key's), hex.
    pub record_crc: String,
    /// Record bytes.
    pub record_len: usize,
    /// Whether the code held it compressed.
    pub compressed: bool,
    /// "stored", or "duplicate" when the key was already stored (e.g. it also arrived over
    /// the network).
    pub outcome: String,
}

/// An image as 8-bit luma.
pub struct Grey {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major luma.
    pub px: Vec<u8>,
}

/// Decodes a PNG (any colour type and depth) to 8-bit luma.
pub fn png_to_grey(bytes: &[u8]) -> Result<Grey, String> {
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    d.set_transformations(png::Transformations::normalize_to_color8());
    let mut r = d.read_info().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).map_err(|e| e.to_string())?;
    let (w, h) = (info.width as usize, info.height as usize);
    let ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("indexed colour was not expanded".into()),
    };
    let stride = info.line_size;
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        let row = &buf[y * stride..][..w * ch];
        for p in row.chunks_exact(ch) {
            px.push(if ch >= 3 {
                // Luma (ITU-R BT.601).
                ((299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2])) / 1000)
                    as u8
            } else {
                p[0]
            });
        }
    }
    Ok(Grey {
        width: w,
        height: h,
        px,
    })
}

/// Every QR code in the image, decoded to bytes, and how many did not decode.
pub fn qr_codes(g: &Grey) -> (Vec<Vec<u8>>, usize) {
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(g.width, g.height, |x, y| {
        g.px[y * g.width + x]
    });
    let mut out = Vec::new();
    let mut bad = 0;
    for grid in img.detect_grids() {
        let mut bytes = Vec::new();
        match grid.decode_to(&mut bytes) {
            Ok(_) => out.push(bytes),
            Err(_) => bad += 1,
        }
    }
    (out, bad)
}

/// A record read from a screenshot, checked, ready to store.
pub struct FromScreen {
    /// The record as the server would store it.
    pub new: NewRecord,
    /// Whether the code held it compressed.
    pub compressed: bool,
}

/// Finds, checks and decodes the canary record in the PNG `bytes` (named `path`).
pub fn record_from_png(
    path: &str,
    bytes: &[u8],
    key: Option<&Key>,
) -> Result<FromScreen, ImportError> {
    let g = png_to_grey(bytes).map_err(|reason| ImportError::Png {
        path: path.into(),
        reason,
    })?;
    let (codes, bad) = qr_codes(&g);
    let seen = codes.len() + bad;
    let Some(payload) = codes.into_iter().find(|c| c.starts_with(&screen::MAGIC)) else {
        return Err(ImportError::NoCode {
            path: path.into(),
            codes: seen,
        });
    };
    let mut raw = vec![0u8; capture::chunk::MAX_RECORD_LEN];
    let (h, n) =
        screen::decode(&payload, key, &mut raw).map_err(|source| ImportError::Payload {
            path: path.into(),
            source,
        })?;
    raw.truncate(n);
    let (major, minor) = h.schema;
    // The server's checks: the schema major, then the body.
    let rec = CrashRecord::decode(major, minor, &raw).map_err(|source| ImportError::Record {
        path: path.into(),
        source,
    })?;
    let key = RecordKey {
        boot_id: rec.boot_id,
        seq: rec.seq,
        record_crc: h.record_crc,
    };
    let file = Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    let new = NewRecord {
        key,
        received_at_us: now_us(),
        schema_major: major,
        schema_minor: minor,
        uptime_us: rec.uptime_us,
        line_col: rec
            .location
            .as_ref()
            .map(|l| (l.line, l.column))
            .unwrap_or((0, 0)),
        text: crate::convert::row_text_from(&format!("screen:{file}"), &rec),
        raw,
    };
    Ok(FromScreen {
        new,
        compressed: h.compressed,
    })
}

/// Reads `path`, and stores its record in `store` (one transaction, as the server commits).
pub fn import(store: &mut Store, path: &Path, key: Option<&Key>) -> Result<Imported, ImportError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: name.clone(),
        source,
    })?;
    let fs = record_from_png(&name, &bytes, key)?;
    let outcomes = store.commit_batch(std::slice::from_ref(&fs.new), &[], &[], &[])?;
    let outcome = match outcomes.first() {
        Some(InsertOutcome::Duplicate) => "duplicate",
        _ => "stored",
    };
    Ok(Imported {
        file: name,
        boot_id: hex(&fs.new.key.boot_id),
        seq: fs.new.key.seq,
        record_crc: format!("{:08x}", fs.new.key.record_crc),
        record_len: fs.new.raw.len(),
        compressed: fs.compressed,
        outcome: outcome.into(),
    })
}
