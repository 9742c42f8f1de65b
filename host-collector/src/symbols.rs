//! The symbol store (`host-collector symbols`) and address resolution for `show`.
//!
//! Debug files are kept by the id a crash record carries (`Ext1::image_id`), in a directory
//! laid out like debuginfod's: `<dir>/<id>/debuginfo` (and `<dir>/<id>/executable` when the
//! image itself was given), with `<dir>/<id>/info.json` saying what was added and from where.
//!
//! - Direct-boot kernels (ELF): the id is the `.note.gnu.build-id` descriptor, lowercase hex;
//!   `debuginfo` is the ELF with its line tables and symbol table. Resolved with `addr2line`
//!   (DWARF) and the ELF symbol table (function start, for `+0xoff`).
//! - UEFI images (PE): rustc's UEFI targets emit CodeView, so the debug file is the PDB the
//!   image's CodeView (RSDS) record names; the id is that record's GUID and age in the
//!   symbol-server form (`GUID` as upper-case hex of its fields, then the age in hex).
//!   Resolved with `pdb-addr2line`.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol, ObjectSymbolTable};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use capture::record::ImageIdKind;

/// Errors of the symbol store and of resolution.
#[derive(Debug, Error)]
pub enum SymbolsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0} is not an ELF image, a PE image or a PDB: give the kernel ELF the build made \
         (scripts/qemu-run --print-symbols) or the .efi/.pdb"
    )]
    Unknown(PathBuf),
    #[error(
        "{0} has no build id (.note.gnu.build-id): it was linked without --build-id, so no \
         record can name it"
    )]
    NoBuildId(PathBuf),
    #[error("{0} has no CodeView record in its debug directory: no PDB to look for")]
    NoCodeView(PathBuf),
    #[error(
        "no PDB with GUID/age {id} beside {image} (looked for {looked}): give the .pdb the \
         build wrote beside the .efi"
    )]
    NoPdb {
        image: PathBuf,
        id: String,
        looked: String,
    },
    #[error("PDB {path}: {detail}")]
    Pdb { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

type Result<T, E = SymbolsError> = std::result::Result<T, E>;

/// The id of an image's debug file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DebugId {
    /// ELF GNU build id bytes.
    Gnu(Vec<u8>),
    /// PE CodeView: GUID as stored in the image (little-endian fields), and age.
    Pe { guid: [u8; 16], age: u32 },
}

impl DebugId {
    /// The id a record carries, if it has one this build knows.
    pub fn from_record(kind: ImageIdKind, bytes: &[u8]) -> Option<DebugId> {
        match kind {
            ImageIdKind::GnuBuildId if !bytes.is_empty() => Some(DebugId::Gnu(bytes.to_vec())),
            ImageIdKind::PeCodeView if bytes.len() == 20 => {
                let mut guid = [0u8; 16];
                guid.copy_from_slice(&bytes[..16]);
                let age = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
                Some(DebugId::Pe { guid, age })
            }
            _ => None,
        }
    }

    /// The directory name in the store: lowercase hex (GNU), or the symbol-server form
    /// `GUID` + age (PE): Data1 (u32), Data2, Data3 (u16) as numbers, Data4 as bytes, all
    /// upper-case hex, then the age in upper-case hex without leading zeros.
    pub fn dir_name(&self) -> String {
        match self {
            DebugId::Gnu(b) => hex(b),
            DebugId::Pe { guid: g, age } => {
                let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
                let d2 = u16::from_le_bytes([g[4], g[5]]);
                let d3 = u16::from_le_bytes([g[6], g[7]]);
                format!(
                    "{d1:08X}{d2:04X}{d3:04X}{}{age:X}",
                    hex(&g[8..]).to_uppercase()
                )
            }
        }
    }

    /// "gnu-build-id" or "pe-codeview".
    pub fn kind_name(&self) -> &'static str {
        match self {
            DebugId::Gnu(_) => "gnu-build-id",
            DebugId::Pe { .. } => "pe-codeview",
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What `identify` found in a file.
#[derive(Debug, Clone)]
pub struct Identified {
    pub id: DebugId,
    /// The file to keep as `debuginfo` (the ELF itself, or the PDB).
    pub debug_file: PathBuf,
    /// The image, when it is not the debug file (a `.efi` whose PDB was found beside it).
    pub executable: Option<PathBuf>,
}

/// `Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0`: the PDB (MSF 7.0) superblock magic.
const PDB_MAGIC: &[u8] = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\0\0\0";

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| SymbolsError::Read {
        path: path.into(),
        source,
    })
}

/// A PDB's GUID (as stored in images) and age.
fn pdb_id(path: &Path) -> Result<DebugId> {
    let f = fs::File::open(path).map_err(|source| SymbolsError::Read {
        path: path.into(),
        source,
    })?;
    let perr = |e: pdb_addr2line::pdb::Error| SymbolsError::Pdb {
        path: path.into(),
        detail: e.to_string(),
    };
    let mut pdb = pdb_addr2line::pdb::PDB::open(f).map_err(perr)?;
    let info = pdb.pdb_information().map_err(perr)?;
    // The age images carry is the DBI stream's (the PDB info stream's may be larger after
    // incremental links); lld writes the same value in both.
    let age = pdb
        .debug_information()
        .ok()
        .and_then(|d| d.age())
        .unwrap_or(info.age);
    Ok(DebugId::Pe {
        guid: info.guid.to_bytes_le(),
        age,
    })
}

/// Finds the id of `path` (an ELF, a PE image or a PDB) and the debug file to keep.
pub fn identify(path: &Path) -> Result<Identified> {
    let data = read(path)?;
    if data.starts_with(PDB_MAGIC) {
        return Ok(Identified {
            id: pdb_id(path)?,
            debug_file: path.into(),
            executable: None,
        });
    }
    let file = object::File::parse(&*data).map_err(|_| SymbolsError::Unknown(path.into()))?;
    match file.format() {
        object::BinaryFormat::Elf => {
            let id = file
                .build_id()
                .ok()
                .flatten()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| SymbolsError::NoBuildId(path.into()))?;
            Ok(Identified {
                id: DebugId::Gnu(id.to_vec()),
                debug_file: path.into(),
                executable: None,
            })
        }
        object::BinaryFormat::Pe => {
            let cv = file
                .pdb_info()
                .ok()
                .flatten()
                .ok_or_else(|| SymbolsError::NoCodeView(path.into()))?;
            let want = DebugId::Pe {
                guid: cv.guid(),
                age: cv.age(),
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut candidates = vec![path.with_extension("pdb")];
            let cv_path = String::from_utf8_lossy(cv.path()).into_owned();
            if let Some(name) = cv_path.rsplit(['/', '\\']).next().filter(|n| !n.is_empty()) {
                candidates.push(dir.join(name));
            }
            candidates.push(PathBuf::from(&cv_path));
            for c in &candidates {
                if c.is_file() && pdb_id(c).ok().as_ref() == Some(&want) {
                    return Ok(Identified {
                        id: want,
                        debug_file: c.clone(),
                        executable: Some(path.into()),
                    });
                }
            }
            Err(SymbolsError::NoPdb {
                image: path.into(),
                id: want.dir_name(),
                looked: candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        _ => Err(SymbolsError::Unknown(path.into())),
    }
}

/// One entry of the store (`symbols list`, and what `symbols add` reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub debuginfo: PathBuf,
    pub debuginfo_bytes: u64,
    /// Where it was added from.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub executable: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Info {
    kind: String,
    source: String,
}

/// The directory store.
pub struct SymbolStore {
    dir: PathBuf,
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp)
        .and_then(|_| fs::rename(&tmp, to))
        .map_err(|source| SymbolsError::Write {
            path: to.into(),
            source,
        })
}

impl SymbolStore {
    pub fn new(dir: impl Into<PathBuf>) -> SymbolStore {
        SymbolStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the debug file of `path` (replacing an entry with the same id).
    pub fn add(&self, path: &Path) -> Result<Entry> {
        let found = identify(path)?;
        let name = found.id.dir_name();
        let d = self.dir.join(&name);
        fs::create_dir_all(&d).map_err(|source| SymbolsError::Write {
            path: d.clone(),
            source,
        })?;
        copy_atomic(&found.debug_file, &d.join("debuginfo"))?;
        if let Some(exe) = &found.executable {
            copy_atomic(exe, &d.join("executable"))?;
        }
        let source = fs::canonicalize(path)
            .unwrap_or_else(|_| path.into())
            .display()
            .to_string();
        let info = Info {
            kind: found.id.kind_name().into(),
            source,
        };
        let info_path = d.join("info.json");
        fs::write(
            &info_path,
            serde_json::to_string_pretty(&info).unwrap_or_default(),
        )
        .map_err(|source| SymbolsError::Write {
            path: info_path,
            source,
        })?;
        self.entry(&name)?.ok_or_else(|| SymbolsError::Parse {
            path: d,
            detail: "entry vanished after it was written".into(),
        })
    }

    fn entry(&self, name: &str) -> Result<Option<Entry>> {
        let d = self.dir.join(name);
        let debuginfo = d.join("debuginfo");
        let Ok(meta) = fs::metadata(&debuginfo) else {
            return Ok(None);
        };
        let info: Option<Info> = fs::read(d.join("info.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let exe = d.join("executable");
        Ok(Some(Entry {
            id: name.into(),
            kind: info.as_ref().map(|i| i.kind.clone()).unwrap_or_default(),
            debuginfo,
            debuginfo_bytes: meta.len(),
            source: info.map(|i| i.source).unwrap_or_default(),
            executable: exe.is_file().then_some(exe),
        }))
    }

    /// Every entry, by id. A missing store directory is an empty store.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SymbolsError::Read {
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if let Some(en) = self.entry(name)? {
                    out.push(en);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The debug file for `id`, if the store has it.
    pub fn lookup(&self, id: &DebugId) -> Option<PathBuf> {
        let p = self.dir.join(id.dir_name()).join("debuginfo");
        p.is_file().then_some(p)
    }
}

/// One source-level frame at an address (inlined functions first, the real function last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// An address resolved against a debug file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The function holding the address (symbol table / PDB procedure), demangled.
    pub function: Option<String>,
    /// Address minus the function's start.
    pub offset: Option<u64>,
    /// Source file and line in that function (of the instruction, or of the call to the
    /// first function inlined there).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The inline chain, innermost first, the real function last (may be empty).
    pub frames: Vec<SourceFrame>,
}

impl Resolved {
    /// `function+0xoff (file:line)`, with what is known.
    pub fn describe(&self) -> String {
        let mut s = match (&self.function, self.offset) {
            (Some(f), Some(o)) => format!("{f}+{o:#x}"),
            (Some(f), None) => f.clone(),
            (None, _) => "??".into(),
        };
        if let Some(f) = &self.file {
            match self.line {
                Some(l) => s.push_str(&format!(" ({f}:{l})")),
                None => s.push_str(&format!(" ({f})")),
            }
        }
        s
    }
}

/// An address to resolve: `is_return` for return addresses (looked up one byte back, in the
/// call instruction, so the line is the call's).
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub addr: u64,
    pub is_return: bool,
}

fn demangle(s: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(s))
}

/// Resolves `probes` against the debug file `path` of an image loaded at `load_base`.
/// An address outside the image resolves to `None`.
pub fn resolve(
    path: &Path,
    id: &DebugId,
    load_base: u64,
    probes: &[Probe],
) -> Result<Vec<Option<Resolved>>> {
    match id {
        DebugId::Gnu(_) => resolve_elf(path, load_base, probes),
        DebugId::Pe { .. } => resolve_pdb(path, load_base, probes),
    }
}

fn resolve_elf(path: &Path, load_base: u64, probes: &[Probe]) -> Result<Vec<Option<Resolved>>> {
    let data = read(path)?;
    let perr = |detail: String| SymbolsError::Parse {
        path: path.into(),
        detail,
    };
    let file = object::File::parse(&*data).map_err(|e| perr(e.to_string()))?;
    // The record's load base is the run-time address of the lowest loadable segment.
    let low = file.segments().map(|s| s.address()).min().unwrap_or(0);
    let bias = if load_base == 0 {
        0i128
    } else {
        load_base as i128 - low as i128
    };
    let (lo, hi) = file
        .segments()
        .filter(|s| s.size() > 0)
        .fold((u64::MAX, 0u64), |(lo, hi), s| {
            (lo.min(s.address()), hi.max(s.address() + s.size()))
        });
    let mut syms: Vec<(u64, u64, String)> = file
        .symbol_table()
        .map(|t| {
            t.symbols()
                .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
                .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    syms.sort_by_key(|s| s.0);
    let ctx = addr2line::Loader::new(path).map_err(|e| perr(e.to_string()))?;
    let mut out = Vec::with_capacity(probes.len());
    for p in probes {
        let a = p.addr as i128 - bias;
        if a < lo as i128 || a >= hi as i128 {
            out.push(None);
            continue;
        }
        let a = a as u64;
        let probe = if p.is_return { a.saturating_sub(1) } else { a };
        let sym = match syms.partition_point(|s| s.0 <= probe) {
            0 => None,
            i => Some(&syms[i - 1]).filter(|s| s.1 == 0 || probe < s.0 + s.1),
        };
        let mut frames = Vec::new();
        if let Ok(mut it) = ctx.find_frames(probe) {
            while let Ok(Some(f)) = it.next() {
                frames.push(SourceFrame {
                    function: f
                        .function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(Cow::into_owned)),
                    file: f.location.as_ref().and_then(|l| l.file.map(String::from)),
                    line: f.location.as_ref().and_then(|l| l.line),
                });
            }
        }
        let (file_, line) = frames
            .last()
            .map(|f| (f.file.clone(), f.line))
            .unwrap_or((None, None));
        let function = sym
            .map(|s| demangle(&s.2))
            .or_else(|| frames.last().and_then(|f| f.function.clone()));
        if function.is_none() && file_.is_none() {
            out.push(None);
            continue;
        }
        out.push(Some(Resolved {
            function,
            offset: sym.map(|s| a - s.0),
            file: file_,
            line,
            frames,
        }));
    }
    Ok(out)
}

fn resolve_pdb(path: &Path, load_base: u64, probes: &[Probe]) -> Result<Vec<Option<Resolved>>> {
    let f = fs::File::open(path).map_err(|source| SymbolsError::Read {
        path: path.into(),
        source,
    })?;
    let perr = |e: pdb_addr2line::Error| SymbolsError::Pdb {
        path: path.into(),
        detail: e.to_string(),
    };
    let pdb = pdb_addr2line::pdb::PDB::open(f).map_err(|e| SymbolsError::Pdb {
        path: path.into(),
        detail: e.to_string(),
    })?;
    let data = pdb_addr2line::ContextPdbData::try_from_pdb(pdb).map_err(perr)?;
    let ctx = data.make_context().map_err(perr)?;
    let mut out = Vec::with_capacity(probes.len());
    for p in probes {
        let rva = p.addr.checked_sub(load_base).filter(|_| load_base != 0);
        let Some(rva) = rva.and_then(|r| u32::try_from(r).ok()) else {
            out.push(None);
            continue;
        };
        let probe = if p.is_return {
            rva.saturating_sub(1)
        } else {
            rva
        };
        let Ok(Some(ff)) = ctx.find_frames(probe) else {
            out.push(None);
            continue;
        };
        let frames: Vec<SourceFrame> = ff
            .frames
            .iter()
            .map(|f| SourceFrame {
                function: f.function.clone(),
                file: f.file.as_ref().map(|s| s.to_string()),
                line: f.line,
            })
            .collect();
        let (file_, line) = frames
            .last()
            .map(|f| (f.file.clone(), f.line))
            .unwrap_or((None, None));
        out.push(Some(Resolved {
            function: frames.last().and_then(|f| f.function.clone()),
            offset: Some(u64::from(rva - ff.start_rva)),
            file: file_,
            line,
            frames,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_ids_use_the_symbol_server_form_and_gnu_ids_lowercase_hex() {
        // GUID 3360e070-aefe-b8fc-4c4c-44205044422e as stored (fields little endian).
        let guid = [
            0x70, 0xe0, 0x60, 0x33, 0xfe, 0xae, 0xfc, 0xb8, 0x4c, 0x4c, 0x44, 0x20, 0x50, 0x44,
            0x42, 0x2e,
        ];
        let mut bytes = guid.to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        let id = DebugId::from_record(ImageIdKind::PeCodeView, &bytes).unwrap();
        assert_eq!(id.dir_name(), "3360E070AEFEB8FC4C4C44205044422E1");
        let g = DebugId::from_record(ImageIdKind::GnuBuildId, &[0xe3, 0xd7, 0x0f]).unwrap();
        assert_eq!(g.dir_name(), "e3d70f");
        assert_eq!(DebugId::from_record(ImageIdKind::None, &bytes), None);
        assert_eq!(
            DebugId::from_record(ImageIdKind::PeCodeView, &[1; 19]),
            None
        );
        assert_eq!(DebugId::from_record(ImageIdKind::GnuBuildId, &[]), None);
    }

    #[test]
    fn files_that_are_not_images_are_refused_with_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        fs::write(&p, "hello").unwrap();
        let e = SymbolStore::new(dir.path().join("store"))
            .add(&p)
            .unwrap_err();
        assert!(matches!(e, SymbolsError::Unknown(_)), "{e}");
        assert!(e.to_string().contains("--print-symbols"), "{e}");
        assert!(SymbolStore::new(dir.path().join("none"))
            .list()
            .unwrap()
            .is_empty());
    }

    #[inline(never)]
    fn a_function_to_find() -> u64 {
        std::hint::black_box(42)
    }

    /// The test binary is an ELF with a build id, a symbol table and line tables: added to
    /// the store, its own function resolves to name, offset and this file.
    #[test]
    fn an_elf_with_a_build_id_is_stored_by_id_and_resolves_to_function_and_line() {
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = SymbolStore::new(dir.path());
        let e = store.add(&exe).unwrap();
        assert_eq!(e.kind, "gnu-build-id");
        assert_eq!(e.debuginfo, dir.path().join(&e.id).join("debuginfo"));
        assert_eq!(store.list().unwrap(), vec![e.clone()]);
        let id = identify(&exe).unwrap().id;
        assert_eq!(id.dir_name(), e.id);
        let dbg = store.lookup(&id).unwrap();
        // The load base: where the lowest segment is at run time (PIE: relocated).
        let data = fs::read(&exe).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let low = file.segments().map(|s| s.address()).min().unwrap();
        let sym = file
            .symbols()
            .find(|s| {
                s.name()
                    .is_ok_and(|n| demangle(n).ends_with("tests::a_function_to_find"))
            })
            .expect("symbol of a_function_to_find");
        let f = a_function_to_find as *const () as u64;
        assert_eq!(a_function_to_find(), 42);
        let load_base = f - sym.address() + low;
        let got = resolve(
            &dbg,
            &id,
            load_base,
            &[
                Probe {
                    addr: f + 1,
                    is_return: false,
                },
                Probe {
                    addr: 8,
                    is_return: true,
                },
            ],
        )
        .unwrap();
        let r = got[0].as_ref().expect("resolved");
        assert!(
            r.function
                .as_deref()
                .unwrap()
                .ends_with("symbols::tests::a_function_to_find"),
            "{r:?}"
        );
        assert_eq!(r.offset, Some(1));
        assert!(r.file.as_deref().unwrap().ends_with("symbols.rs"), "{r:?}");
        assert!(
            r.describe().contains("a_function_to_find+0x1 ("),
            "{}",
            r.describe()
        );
        assert_eq!(got[1], None, "an address outside the image");
    }
}
