//! The running image's id and load base, for the crash record (`Ext1::image_id*`,
//! `Ext1::load_base`): what a collector needs to find the debug file and to turn the record's
//! addresses into addresses of that file.
//!
//! - Direct-boot kernels (ELF): linked with `--build-id=sha1` (build.rs); the linker scripts
//!   keep `.note.gnu.build-id` in the read-only segment between `__build_id_start` and
//!   `__build_id_end`, and `__image_start` is the first byte of the lowest loadable segment.
//! - UEFI images (PE): the CodeView (RSDS) record of the image's own debug directory names
//!   its PDB by GUID and age; `__ImageBase` (defined by the PE linker) is where the firmware
//!   loaded the image.
//!
//! The parsers are portable and take a bounded reader, so their tests run on the host.

/// An id of at most 20 bytes and its kind (see `capture::record::ImageIdKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageId {
    pub bytes: [u8; 20],
    pub len: usize,
}

impl ImageId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// NT_GNU_BUILD_ID (ELF gABI / binutils `include/elf/common.h`: note type 3, owner "GNU").
const NT_GNU_BUILD_ID: u32 = 3;

fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The descriptor of the first GNU build-id note in `notes` (a run of ELF notes: namesz,
/// descsz, type, name padded to 4, descriptor padded to 4), truncated to 20 bytes.
#[cfg_attr(target_os = "uefi", allow(dead_code))]
pub fn gnu_build_id(notes: &[u8]) -> Option<ImageId> {
    let mut off = 0usize;
    while off + 12 <= notes.len() {
        let namesz = le32(notes, off)? as usize;
        let descsz = le32(notes, off + 4)? as usize;
        let ty = le32(notes, off + 8)?;
        let name_at = off + 12;
        let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
        let next = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
        let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" && !desc.is_empty() {
            let mut id = ImageId {
                bytes: [0; 20],
                len: desc.len().min(20),
            };
            id.bytes[..id.len].copy_from_slice(&desc[..id.len]);
            return Some(id);
        }
        off = next;
    }
    None
}

/// The CodeView id of a loaded PE image: GUID (16 bytes as stored) then age (u32 LE).
///
/// `read(rva, buf)` fills `buf` from the mapped image at `rva` and returns false if that is
/// outside it. Layout (Microsoft PE/COFF specification): e_lfanew at 0x3c; "PE\0\0"; the COFF
/// header (20 bytes, SizeOfOptionalHeader at +16); the PE32+ optional header (magic 0x20b,
/// SizeOfImage at +56, NumberOfRvaAndSizes at +108, data directories from +112, the debug
/// directory is entry 6); IMAGE_DEBUG_DIRECTORY entries of 28 bytes (Type at +12, SizeOfData
/// at +16, AddressOfRawData at +20); type 2 (CODEVIEW) data "RSDS", GUID, age, PDB path.
#[cfg_attr(not(target_os = "uefi"), allow(dead_code))]
pub fn pe_codeview_id(read: &mut dyn FnMut(u32, &mut [u8]) -> bool) -> Option<ImageId> {
    fn r32(read: &mut dyn FnMut(u32, &mut [u8]) -> bool, rva: u32) -> Option<u32> {
        let mut b = [0u8; 4];
        read(rva, &mut b).then_some(u32::from_le_bytes(b))
    }
    let pe = r32(read, 0x3c)?;
    if r32(read, pe)? != 0x0000_4550 {
        return None;
    }
    let opt = pe.checked_add(24)?;
    if r32(read, opt)? & 0xffff != 0x20b {
        return None;
    }
    let size_of_image = r32(read, opt + 56)?;
    if r32(read, opt + 108)? <= 6 {
        return None;
    }
    let dir_rva = r32(read, opt + 112 + 6 * 8)?;
    let dir_size = r32(read, opt + 112 + 6 * 8 + 4)?;
    let entries = (dir_size / 28).min(16);
    for k in 0..entries {
        let e = dir_rva.checked_add(k * 28)?;
        let ty = r32(read, e + 12)?;
        let size = r32(read, e + 16)?;
        let data = r32(read, e + 20)?;
        if ty != 2 || size < 24 || data == 0 || data.checked_add(24)? > size_of_image {
            continue;
        }
        let mut cv = [0u8; 24];
        if !read(data, &mut cv) || &cv[..4] != b"RSDS" {
            continue;
        }
        let mut id = ImageId {
            bytes: [0; 20],
            len: 20,
        };
        id.bytes.copy_from_slice(&cv[4..24]);
        return Some(id);
    }
    None
}

/// The RVA span `[lo, hi)` of a loaded PE image's executable sections (IMAGE_SCN_MEM_EXECUTE,
/// 0x2000_0000; section headers of 40 bytes after the optional header: VirtualSize at +8,
/// VirtualAddress at +12, Characteristics at +36; NumberOfSections at +6 of the COFF header).
#[cfg_attr(not(target_os = "uefi"), allow(dead_code))]
pub fn pe_text_range(read: &mut dyn FnMut(u32, &mut [u8]) -> bool) -> Option<(u32, u32)> {
    let mut b4 = [0u8; 4];
    let mut b2 = [0u8; 2];
    if !read(0x3c, &mut b4) {
        return None;
    }
    let coff = u32::from_le_bytes(b4).checked_add(4)?;
    if !read(coff + 2, &mut b2) {
        return None;
    }
    let sections = u32::from(u16::from_le_bytes(b2)).min(96);
    if !read(coff + 16, &mut b2) {
        return None;
    }
    let table = coff + 20 + u32::from(u16::from_le_bytes(b2));
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    for k in 0..sections {
        let mut h = [0u8; 40];
        if !read(table.checked_add(k * 40)?, &mut h) {
            return None;
        }
        let f = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        if f(36) & 0x2000_0000 != 0 {
            lo = lo.min(f(12));
            hi = hi.max(f(12).checked_add(f(8))?);
        }
    }
    (lo < hi).then_some((lo, hi))
}

/// The bytes to keep around `pc` inside `[lo, hi)`: up to `before` bytes before it, `cap` in
/// all, clipped to the range; `None` if `pc` is outside it.
pub fn dump_window(pc: u64, lo: u64, hi: u64, before: u64, cap: u64) -> Option<(u64, u64)> {
    if !(lo..hi).contains(&pc) {
        return None;
    }
    let start = pc.saturating_sub(before).max(lo);
    Some((start, start.saturating_add(cap).min(hi)))
}

/// The running image's id, its kind and its load base.
#[cfg(all(kernel, target_os = "none"))]
pub fn current() -> (Option<ImageId>, u64) {
    unsafe extern "C" {
        static __build_id_start: u8;
        static __build_id_end: u8;
        static __image_start: u8;
    }
    let start = core::ptr::addr_of!(__build_id_start);
    let end = core::ptr::addr_of!(__build_id_end) as usize;
    let len = end.saturating_sub(start as usize);
    // SAFETY: the linker script puts these symbols around the kept `.note.gnu.build-id`
    // section in the read-only loaded segment: `len` mapped bytes.
    let notes = unsafe { core::slice::from_raw_parts(start, len) };
    (
        gnu_build_id(notes),
        core::ptr::addr_of!(__image_start) as u64,
    )
}

/// The running image's id, its kind and its load base.
#[cfg(all(kernel, target_os = "uefi"))]
pub fn current() -> (Option<ImageId>, u64) {
    unsafe extern "C" {
        static __ImageBase: u8;
    }
    let base = core::ptr::addr_of!(__ImageBase) as u64;
    let read_at = |limit: u32, rva: u32, buf: &mut [u8]| -> bool {
        let Some(end) = rva.checked_add(buf.len() as u32) else {
            return false;
        };
        if end > limit {
            return false;
        }
        // SAFETY: our own image is mapped from `__ImageBase` for SizeOfImage bytes (the
        // first page, the headers, before SizeOfImage is known); `end` is within that.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (base + rva as u64) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    };
    // SizeOfImage (e_lfanew + 24 + 56) bounds every later read; the headers' page is read
    // to learn it.
    let mut limit: u32 = 0;
    let mut b = [0u8; 4];
    if read_at(4096, 0x3c, &mut b) {
        let pe = u32::from_le_bytes(b);
        if pe < 2048 && read_at(4096, pe + 24 + 56, &mut b) {
            limit = u32::from_le_bytes(b);
        }
    }
    let mut read = |rva: u32, buf: &mut [u8]| read_at(limit, rva, buf);
    (pe_codeview_id(&mut read), base)
}

/// The running image's code: `[lo, hi)` addresses.
#[cfg(all(kernel, target_os = "none"))]
fn text_range() -> Option<(u64, u64)> {
    unsafe extern "C" {
        static __image_start: u8;
        static __text_end: u8;
    }
    let lo = core::ptr::addr_of!(__image_start) as u64;
    let hi = core::ptr::addr_of!(__text_end) as u64;
    (lo < hi).then_some((lo, hi))
}

/// The running image's code: `[lo, hi)` addresses (its executable sections).
#[cfg(all(kernel, target_os = "uefi"))]
fn text_range() -> Option<(u64, u64)> {
    unsafe extern "C" {
        static __ImageBase: u8;
    }
    let base = core::ptr::addr_of!(__ImageBase) as u64;
    let mut read = |rva: u32, buf: &mut [u8]| {
        // The headers fit the first page (the section table of a 96-section image does).
        if rva as usize + buf.len() > 4096 {
            return false;
        }
        // SAFETY: the first page of our own image (its headers) is mapped; checked above.
        unsafe {
            core::ptr::copy_nonoverlapping(
                (base + rva as u64) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        true
    };
    pe_text_range(&mut read).map(|(lo, hi)| (base + lo as u64, base + hi as u64))
}

/// Code bytes around `pc` (only inside the image's code) and stack bytes from `sp` (only inside
/// the canary stack holding it) into the record's 1.1 group.
#[cfg(kernel)]
pub fn fill_dump(ext: &mut capture::record::Ext1, pc: u64, sp: u64) {
    use capture::record::{CODE_BEFORE, CODE_CAP, STACK_DUMP_CAP};
    ext.code.clear();
    ext.stack.clear();
    ext.code_at = 0;
    ext.stack_at = 0;
    let code = text_range()
        .and_then(|(lo, hi)| dump_window(pc, lo, hi, CODE_BEFORE as u64, CODE_CAP as u64));
    if let Some((a, b)) = code {
        ext.code_at = a;
        for p in a..b {
            // SAFETY: `[a, b)` lies inside the image's code, mapped and readable.
            let _ = ext
                .code
                .push(unsafe { core::ptr::read_volatile(p as *const u8) });
        }
    }
    let stacks = crate::arch::stacks();
    if let Some(r) = crate::stack::holding(&stacks, sp as usize) {
        let (a, b) = (sp, (sp + STACK_DUMP_CAP as u64).min(r.hi as u64));
        ext.stack_at = a;
        for p in a..b {
            // SAFETY: `[a, b)` lies inside a stack the canary owns (always mapped).
            let _ = ext
                .stack
                .push(unsafe { core::ptr::read_volatile(p as *const u8) });
        }
    }
}

/// Writes the running image's id, its kind and load base into the record's 1.1 group.
#[cfg(kernel)]
pub fn fill(ext: &mut capture::record::Ext1) {
    use capture::record::ImageIdKind;
    let (id, base) = current();
    ext.load_base = base;
    ext.image_id.clear();
    ext.image_id_kind = match id {
        Some(id) => {
            let _ = ext.image_id.extend_from_slice(id.as_bytes());
            if cfg!(target_os = "uefi") {
                ImageIdKind::PeCodeView
            } else {
                ImageIdKind::GnuBuildId
            }
        }
        None => ImageIdKind::None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(name);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn the_gnu_build_id_note_is_found_after_other_notes() {
        let id: Vec<u8> = (1..=20).collect();
        let mut notes = note(b"Xen\0", 18, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &id));
        assert_eq!(gnu_build_id(&notes).unwrap().as_bytes(), &id[..]);
    }

    #[test]
    fn truncated_or_foreign_notes_give_no_id() {
        let id = [7u8; 20];
        let n = note(b"GNU\0", NT_GNU_BUILD_ID, &id);
        for cut in [0, 11, 16, n.len() - 1] {
            assert_eq!(gnu_build_id(&n[..cut]), None, "cut at {cut}");
        }
        assert_eq!(gnu_build_id(&note(b"GNU\0", 1, &id)), None);
        assert_eq!(gnu_build_id(&note(b"XYZ\0", NT_GNU_BUILD_ID, &id)), None);
        // A huge namesz does not overflow.
        let mut bad = n.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(gnu_build_id(&bad), None);
    }

    /// A minimal mapped PE32+ image: headers, a debug directory with one CodeView entry.
    fn pe_image(guid: [u8; 16], age: u32) -> Vec<u8> {
        let mut img = vec![0u8; 0x3000];
        let pe = 0x80usize;
        img[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
        img[pe..pe + 4].copy_from_slice(b"PE\0\0");
        let opt = pe + 24;
        img[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        img[opt + 56..opt + 60].copy_from_slice(&0x3000u32.to_le_bytes());
        img[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let dd = opt + 112 + 6 * 8;
        img[dd..dd + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        img[dd + 4..dd + 8].copy_from_slice(&56u32.to_le_bytes());
        // Entry 0: type 13 (POGO), skipped; entry 1: CodeView at RVA 0x2000.
        img[0x1000 + 12..0x1000 + 16].copy_from_slice(&13u32.to_le_bytes());
        let e = 0x1000 + 28;
        img[e + 12..e + 16].copy_from_slice(&2u32.to_le_bytes());
        img[e + 16..e + 20].copy_from_slice(&40u32.to_le_bytes());
        img[e + 20..e + 24].copy_from_slice(&0x2000u32.to_le_bytes());
        img[0x2000..0x2004].copy_from_slice(b"RSDS");
        img[0x2004..0x2014].copy_from_slice(&guid);
        img[0x2014..0x2018].copy_from_slice(&age.to_le_bytes());
        img[0x2018..0x2020].copy_from_slice(b"a.pdb\0\0\0");
        img
    }

    fn reader(img: &[u8]) -> impl FnMut(u32, &mut [u8]) -> bool + '_ {
        move |rva, buf| {
            let s = rva as usize;
            match img.get(s..s + buf.len()) {
                Some(b) => {
                    buf.copy_from_slice(b);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn the_dump_window_stays_inside_the_range() {
        assert_eq!(
            dump_window(0x1100, 0x1000, 0x2000, 32, 64),
            Some((0x10e0, 0x1120))
        );
        // Near the start: fewer bytes before, still 64.
        assert_eq!(
            dump_window(0x1008, 0x1000, 0x2000, 32, 64),
            Some((0x1000, 0x1040))
        );
        // Near the end: clipped.
        assert_eq!(
            dump_window(0x1ff0, 0x1000, 0x2000, 32, 64),
            Some((0x1fd0, 0x2000))
        );
        // Outside (a wild pc, a null pc): nothing is read.
        assert_eq!(dump_window(0x2000, 0x1000, 0x2000, 32, 64), None);
        assert_eq!(dump_window(0, 0x1000, 0x2000, 32, 64), None);
    }

    #[test]
    fn the_executable_sections_of_a_pe_give_the_code_range() {
        let mut img = pe_image([1; 16], 1);
        let pe = 0x80usize;
        let coff = pe + 4;
        img[coff + 2..coff + 4].copy_from_slice(&3u16.to_le_bytes());
        img[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let table = coff + 20 + 240;
        for (k, (va, size, ch)) in [
            (0x1000u32, 0x800u32, 0x6000_0020u32),
            (0x2000, 0x400, 0x4000_0040),
            (0x1800, 0x100, 0x2000_0000),
        ]
        .into_iter()
        .enumerate()
        {
            let h = table + k * 40;
            img[h + 8..h + 12].copy_from_slice(&size.to_le_bytes());
            img[h + 12..h + 16].copy_from_slice(&va.to_le_bytes());
            img[h + 36..h + 40].copy_from_slice(&ch.to_le_bytes());
        }
        assert_eq!(pe_text_range(&mut reader(&img)), Some((0x1000, 0x1900)));
        assert_eq!(pe_text_range(&mut reader(&img[..0x100])), None);
    }

    #[test]
    fn the_codeview_guid_and_age_are_read_from_the_mapped_debug_directory() {
        let guid: [u8; 16] = core::array::from_fn(|i| i as u8 + 0x10);
        let img = pe_image(guid, 3);
        let id = pe_codeview_id(&mut reader(&img)).unwrap();
        assert_eq!(&id.as_bytes()[..16], &guid);
        assert_eq!(&id.as_bytes()[16..], &3u32.to_le_bytes());
    }

    #[test]
    fn a_pe_without_codeview_or_with_bad_rvas_gives_no_id() {
        let mut img = pe_image([1; 16], 1);
        img[0x2000] = b'X';
        assert_eq!(pe_codeview_id(&mut reader(&img)), None);
        let mut img = pe_image([1; 16], 1);
        // AddressOfRawData beyond SizeOfImage.
        let e = 0x1000 + 28;
        img[e + 20..e + 24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(pe_codeview_id(&mut reader(&img)), None);
        // Not PE32+.
        let mut img = pe_image([1; 16], 1);
        img[0x80 + 24] = 0x0b;
        img[0x80 + 25] = 0x01;
        assert_eq!(pe_codeview_id(&mut reader(&img)), None);
        // Truncated image.
        let img = pe_image([1; 16], 1);
        assert_eq!(pe_codeview_id(&mut reader(&img[..0x100])), None);
    }
}
