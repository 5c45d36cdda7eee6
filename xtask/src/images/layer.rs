//! Image layers written by us rather than by BuildKit, for the source-only fast path: a
//! deterministic tar archive (ustar headers, a PAX header for a name that ustar cannot hold)
//! and its gzip, with the two digests an image needs: the layer's `diff_id` (the SHA-256 of the
//! tar) and its blob digest (the SHA-256 of the gzip). And the other way: [`list_tar`] reads the
//! headers of an archive someone else wrote (BuildKit's layer that the fast path replaces, for
//! the directory metadata it recorded), in ustar, PAX and GNU long-name forms.
//!
//! The gzip holds stored (uncompressed) deflate blocks and a CRC-32: no compression library
//! (flate2 and miniz_oxide would cost about 6.5 s of a cold compile, against the ≤ 40 s goal of
//! issue #15), and a layer of source files is small. Registries and engines read such a stream
//! like any other gzip. The same entries always give the same bytes: the caller fixes the order,
//! owners and times, and nothing here reads the clock or the disk.

use std::fmt;

use anyhow::{Context, Result, bail};

use crate::adapters::registry::sha256_digest;

/// What one tar entry is. No symlinks: the fast path leaves sources with links to BuildKit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarKind {
    Directory,
    File(Vec<u8>),
}

/// One entry of a layer: a path relative to the image's root, without a leading `/` (a
/// directory's without the trailing `/` too, which the writer adds), and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    pub path: String,
    /// Permission bits with setuid, setgid and sticky (at most 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
    pub kind: TarKind,
}

/// A layer ready to upload: the gzip blob and its two digests (`sha256:<hex>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

impl Layer {
    /// The layer of `entries`, in the order given.
    pub fn of(entries: &[TarEntry]) -> Result<Layer> {
        let archive = tar(entries)?;
        let blob = gzip_stored(&archive);
        Ok(Layer { digest: sha256_digest(&blob), diff_id: sha256_digest(&archive), blob })
    }
}

const BLOCK: usize = 512;

/// The tar archive of `entries`: each entry's header (after a PAX header when its path is
/// longer than ustar's 100 bytes or not ASCII), its content padded to 512 bytes, and
/// the two zero blocks that end an archive.
pub fn tar(entries: &[TarEntry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in entries {
        if entry.path.is_empty() || entry.path.starts_with('/') || entry.path.ends_with('/') {
            bail!("a layer entry's path must be relative, without a trailing slash: {:?}", entry.path);
        }
        if entry.mode > 0o7777 {
            bail!("{}: mode {:o} has bits beyond 7777", entry.path, entry.mode);
        }
        let name = match entry.kind {
            TarKind::Directory => format!("{}/", entry.path),
            _ => entry.path.clone(),
        };
        let (typeflag, size) = match &entry.kind {
            TarKind::Directory => (b'5', 0),
            TarKind::File(content) => (b'0', content.len() as u64),
        };
        if !fits_ustar(&name) {
            let body = pax_record("path", &name);
            let pax_name = format!("PaxHeaders/{}", truncate_ascii(&entry.path, 80));
            out.extend(header(&pax_name, 0o644, 0, 0, entry.mtime, b'x', body.len() as u64)?);
            push_padded(&mut out, &body);
        }
        out.extend(header(&truncate_ascii(&name, 100), entry.mode, entry.uid, entry.gid, entry.mtime, typeflag, size)?);
        if let TarKind::File(content) = &entry.kind {
            push_padded(&mut out, content);
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn fits_ustar(text: &str) -> bool {
    text.len() <= 100 && text.is_ascii()
}

/// The longest ASCII prefix of `text` of at most `max` bytes: the ustar field's stand-in when a
/// PAX record carries the real value.
fn truncate_ascii(text: &str, max: usize) -> String {
    text.chars().take_while(char::is_ascii).take(max).collect()
}

/// One PAX record, `<length> <key>=<value>\n`, where the length counts the whole record,
/// its own digits included.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut length = rest + rest.to_string().len();
    if length.to_string().len() + rest != length {
        length += 1;
    }
    format!("{length} {key}={value}\n").into_bytes()
}

fn push_padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// A ustar header block, its numeric fields in octal as Go's `archive/tar` writes them.
fn header(name: &str, mode: u32, uid: u32, gid: u32, mtime: u64, typeflag: u8, size: u64) -> Result<[u8; BLOCK]> {
    let mut block = [0u8; BLOCK];
    block[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut block[100..108], u64::from(mode))?;
    octal(&mut block[108..116], u64::from(uid))?;
    octal(&mut block[116..124], u64::from(gid))?;
    octal(&mut block[124..136], size)?;
    octal(&mut block[136..148], mtime)?;
    block[156] = typeflag;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    // The checksum is the byte sum of the header with its own field read as spaces.
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    Ok(block)
}

/// Writes `value` as zero-padded octal digits and a NUL, filling `field`.
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        bail!("{value} does not fit a tar header field of {digits} octal digits");
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// A tar entry's permission bits (setuid, setgid and sticky included) and owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryMetadata {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for EntryMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mode {:04o}, owner {}:{}", self.mode, self.uid, self.gid)
    }
}

/// One entry of an archive as [`list_tar`] reads it: its path relative to the root, without
/// leading `./` or `/` and without a trailing `/`, whether it is a directory, and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedEntry {
    pub path: String,
    pub directory: bool,
    pub metadata: EntryMetadata,
}

/// The entries of the tar `archive`, in its order, from their headers: the name from a PAX
/// `path` record, else a GNU long name (`L`), else ustar's prefix and name; the owner from PAX
/// `uid` and `gid` records where present; numbers in octal or base-256, as Go's
/// `archive/tar` (BuildKit's writer) may write them. Every header's checksum is checked.
/// Contents are skipped, not read.
pub fn list_tar(archive: &[u8]) -> Result<Vec<ListedEntry>> {
    let mut entries = Vec::new();
    // What the extended headers before an entry say about it.
    let mut pax: Vec<(String, String)> = Vec::new();
    let mut long_name: Option<String> = None;
    let mut offset = 0;
    while offset + BLOCK <= archive.len() {
        let at = offset;
        let block = &archive[offset..offset + BLOCK];
        if block.iter().all(|&byte| byte == 0) {
            return Ok(entries);
        }
        let context = || format!("the tar header at byte {at}");
        check_checksum(block).with_context(context)?;
        let typeflag = block[156];
        let extension = matches!(typeflag, b'x' | b'g' | b'L' | b'K');
        let pax_size = pax.iter().rev().find(|(key, _)| key == "size").map(|(_, value)| value.as_str());
        let size = match pax_size {
            Some(size) if !extension => {
                size.parse::<u64>().with_context(|| format!("{}: PAX size {size:?}", context()))?
            }
            _ => number(&block[124..136]).with_context(context)?,
        };
        // Links, devices, directories and FIFOs have no data, whatever their size field says.
        let data = if matches!(typeflag, b'1'..=b'6') { 0 } else { usize::try_from(size).with_context(context)? };
        let body_start = offset + BLOCK;
        let Some(body) = body_start.checked_add(data).and_then(|end| archive.get(body_start..end)) else {
            bail!("{}: the archive ends inside its {data} bytes of data", context());
        };
        offset = body_start + data.next_multiple_of(BLOCK);
        match typeflag {
            b'x' => {
                pax.extend(pax_records(body).with_context(context)?);
                continue;
            }
            b'L' => {
                long_name = Some(String::from_utf8_lossy(until_nul(body)).into_owned());
                continue;
            }
            // Global PAX headers and GNU long link names say nothing this listing reads.
            b'g' | b'K' => continue,
            _ => {}
        }
        let record = |key: &str| pax.iter().rev().find(|(name, _)| name == key).map(|(_, value)| value.clone());
        let name = record("path").or(long_name.take()).unwrap_or_else(|| ustar_name(block));
        let id = |key: &str, field: &[u8]| -> Result<u32> {
            let value = match record(key) {
                Some(value) => value.parse::<u64>().with_context(|| format!("PAX {key} {value:?}"))?,
                None => number(field)?,
            };
            u32::try_from(value).with_context(|| format!("{key} {value} is too large"))
        };
        let metadata = EntryMetadata {
            mode: (number(&block[100..108]).with_context(context)? & 0o7777) as u32,
            uid: id("uid", &block[108..116]).with_context(context)?,
            gid: id("gid", &block[116..124]).with_context(context)?,
        };
        pax.clear();
        let directory = typeflag == b'5' || (matches!(typeflag, b'0' | 0) && name.ends_with('/'));
        let mut path = name.as_str();
        while let Some(rest) = path.strip_prefix("./").or_else(|| path.strip_prefix('/')) {
            path = rest;
        }
        entries.push(ListedEntry { path: path.trim_end_matches('/').to_string(), directory, metadata });
    }
    if offset == archive.len() {
        // Some writers end at the last entry, without the two zero blocks: readers accept that.
        return Ok(entries);
    }
    bail!("the tar archive ends inside a header (byte {offset} of {})", archive.len())
}

/// The bytes of `field` before its first NUL.
fn until_nul(field: &[u8]) -> &[u8] {
    field.iter().position(|&byte| byte == 0).map_or(field, |end| &field[..end])
}

/// A header's name: ustar's `prefix/name` when the POSIX magic says the prefix field is one
/// (GNU's magic uses those bytes for other things).
fn ustar_name(block: &[u8]) -> String {
    let name = String::from_utf8_lossy(until_nul(&block[..100]));
    let prefix = until_nul(&block[345..500]);
    if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
        format!("{}/{name}", String::from_utf8_lossy(prefix))
    } else {
        name.into_owned()
    }
}

/// A numeric header field: octal digits (padded with spaces or NULs), or base-256 when the
/// first byte's high bit is set.
fn number(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            bail!("a negative number in a tar header");
        }
        return field[1..].iter().try_fold(u64::from(field[0] & 0x3f), |value, &byte| {
            value.checked_mul(256).map(|value| value + u64::from(byte)).context("a tar header number beyond 64 bits")
        });
    }
    let text = std::str::from_utf8(field).context("a tar header number that is not text")?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).with_context(|| format!("{text:?} is not an octal tar header number"))
}

/// Whether the header's checksum field matches its bytes (summed with the field as spaces,
/// unsigned as POSIX says, or signed as some old writers did).
fn check_checksum(block: &[u8]) -> Result<()> {
    let stored = number(&block[148..156])?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (index, &byte) in block.iter().enumerate() {
        let byte = if (148..156).contains(&index) { b' ' } else { byte };
        unsigned += u64::from(byte);
        signed += i64::from(byte as i8);
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        bail!("its checksum is {stored:o}, but its bytes sum to {unsigned:o}: not a tar archive, or a damaged one");
    }
    Ok(())
}

/// The records of a PAX extended header: `<length> <key>=<value>\n`, the length counting the
/// whole record.
fn pax_records(body: &[u8]) -> Result<Vec<(String, String)>> {
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&byte| byte == b' ').context("a PAX record without a length")?;
        let length: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .context("a PAX record whose length is not a number")?;
        if length <= space + 1 || length > rest.len() || rest[length - 1] != b'\n' {
            bail!("a PAX record whose length {length} does not fit it");
        }
        let record = String::from_utf8_lossy(&rest[space + 1..length - 1]);
        let (key, value) = record.split_once('=').context("a PAX record without '='")?;
        records.push((key.to_string(), value.to_string()));
        rest = &rest[length..];
    }
    Ok(records)
}

/// `data` as a gzip stream of stored deflate blocks (RFC 1951 section 3.2.4, RFC 1952): no
/// file name, no time, so the same data always gives the same bytes.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_STORED: usize = 65_535;
    let mut out = Vec::with_capacity(data.len() + data.len() / MAX_STORED * 5 + 32);
    // Magic, deflate, no flags, no modification time, no extra flags, OS "unknown".
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        // The block header's bits: BFINAL on the last block, BTYPE 00 (stored); then the stream
        // is byte-aligned, and LEN and its complement follow, little-endian.
        out.push(u8::from(chunks.peek().is_none()));
        let length = chunk.len() as u16;
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&(!length).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The CRC-32 of gzip (IEEE 802.3, reflected polynomial 0xEDB88320).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut index = 0;
        while index < 256 {
            let mut value = index as u32;
            let mut bit = 0;
            while bit < 8 {
                value = if value & 1 == 1 { 0xedb8_8320 ^ (value >> 1) } else { value >> 1 };
                bit += 1;
            }
            table[index] = value;
            index += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &byte| TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, content: &str) -> TarEntry {
        TarEntry { path: path.into(), mode, uid: 0, gid: 0, mtime: 0, kind: TarKind::File(content.as_bytes().to_vec()) }
    }

    fn dir(path: &str) -> TarEntry {
        TarEntry { path: path.into(), mode: 0o755, uid: 0, gid: 0, mtime: 0, kind: TarKind::Directory }
    }

    /// One entry read back: name, typeflag, mode, uid, size, content.
    type ReadEntry = (String, u8, u32, u32, u64, Vec<u8>);

    /// Reads the archive back, applying PAX `path` records, checking every
    /// header's checksum on the way.
    fn read(archive: &[u8]) -> Vec<ReadEntry> {
        fn number(field: &[u8]) -> u64 {
            let text = std::str::from_utf8(field).unwrap().trim_end_matches('\0');
            u64::from_str_radix(text, 8).unwrap()
        }
        fn text(field: &[u8]) -> String {
            String::from_utf8(field.iter().copied().take_while(|&byte| byte != 0).collect()).unwrap()
        }
        assert_eq!(archive.len() % BLOCK, 0);
        let mut entries = Vec::new();
        let mut pax: Vec<(String, String)> = Vec::new();
        let mut offset = 0;
        loop {
            let block = &archive[offset..offset + BLOCK];
            if block.iter().all(|&byte| byte == 0) {
                assert!(archive[offset..].iter().all(|&byte| byte == 0), "only zero blocks after the end");
                assert_eq!(archive.len() - offset, 2 * BLOCK);
                return entries;
            }
            let mut blank = block.to_vec();
            blank[148..156].fill(b' ');
            let sum: u64 = blank.iter().map(|&byte| u64::from(byte)).sum();
            assert_eq!(number(&block[148..155]), sum, "checksum");
            assert_eq!(&block[257..265], b"ustar\x0000");
            let size = number(&block[124..136]);
            let body = &archive[offset + BLOCK..offset + BLOCK + size as usize];
            offset += BLOCK + (size as usize).next_multiple_of(BLOCK);
            if block[156] == b'x' {
                let mut rest = std::str::from_utf8(body).unwrap();
                while !rest.is_empty() {
                    let (length, _) = rest.split_once(' ').unwrap();
                    let length: usize = length.parse().unwrap();
                    let (key, value) = rest[..length].split_once(' ').unwrap().1.split_once('=').unwrap();
                    pax.push((key.into(), value.strip_suffix('\n').unwrap().into()));
                    rest = &rest[length..];
                }
                continue;
            }
            let mut name = text(&block[..100]);
            for (key, value) in pax.drain(..) {
                assert_eq!(key, "path", "the only PAX record written");
                name = value;
            }
            let mode = number(&block[100..108]) as u32;
            let uid = number(&block[108..116]) as u32;
            entries.push((name, block[156], mode, uid, size, body.to_vec()));
        }
    }

    #[test]
    fn an_archive_reads_back_with_modes_types_and_contents() {
        let entries = vec![
            dir("app/intric"),
            file("app/intric/main.py", 0o644, "print('hi')\n"),
            file("app/intric/run.sh", 0o755, "#!/bin/sh\n"),
            TarEntry { uid: 1000, gid: 1000, ..file("app/data.txt", 0o600, "") },
        ];
        let back = read(&tar(&entries).unwrap());
        assert_eq!(back.len(), 4);
        assert_eq!((back[0].0.as_str(), back[0].1, back[0].2), ("app/intric/", b'5', 0o755));
        assert_eq!((back[1].0.as_str(), back[1].1, back[1].2, back[1].4), ("app/intric/main.py", b'0', 0o644, 12));
        assert_eq!(back[1].5, b"print('hi')\n");
        assert_eq!(back[2].2, 0o755);
        assert_eq!((back[3].2, back[3].3, back[3].4), (0o600, 1000, 0));
    }

    #[test]
    fn names_over_100_bytes_or_not_ascii_go_in_pax_records() {
        let long = format!("app/{}/{}.py", "d".repeat(60), "f".repeat(70));
        let entries = vec![
            file(&long, 0o644, "x"),
            file("app/å.py", 0o644, "y"),
            file(&format!("app/{}", "e".repeat(96)), 0o644, "exactly 100 bytes: ustar holds it"),
            dir(&format!("app/{}", "g".repeat(96))),
        ];
        let archive = tar(&entries).unwrap();
        let back = read(&archive);
        assert_eq!(back[0].0, long);
        assert_eq!(back[1].0, "app/å.py");
        assert_eq!(back[2].0.len(), 100);
        assert_eq!(back[3].0, format!("app/{}/", "g".repeat(96)), "101 bytes with the slash");
        // PAX headers for the first, second and fourth entries only.
        let pax_headers = archive.chunks(BLOCK).filter(|block| block[156] == b'x' && &block[257..262] == b"ustar");
        assert_eq!(pax_headers.count(), 3);
    }

    #[test]
    fn pax_record_lengths_count_their_own_digits() {
        for value_length in [0, 1, 85, 86, 87, 95, 96, 97, 990, 995, 996] {
            let record = pax_record("path", &"v".repeat(value_length));
            let (length, _) = std::str::from_utf8(&record).unwrap().split_once(' ').unwrap();
            assert_eq!(length.parse::<usize>().unwrap(), record.len(), "value of {value_length} bytes");
        }
    }

    #[test]
    fn bad_entries_are_refused_naming_the_path() {
        for (entry, expected) in [
            (file("/app/x", 0o644, ""), "relative"),
            (file("app/", 0o644, ""), "relative"),
            (file("app/x", 0o10644, ""), "app/x: mode"),
        ] {
            let error = tar(&[entry]).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_same_entries_give_the_same_layer() {
        let entries = vec![dir("app"), file("app/a.py", 0o644, "a")];
        let first = Layer::of(&entries).unwrap();
        assert_eq!(first, Layer::of(&entries).unwrap());
        let changed = Layer::of(&[dir("app"), file("app/a.py", 0o755, "a")]).unwrap();
        assert_ne!(first.diff_id, changed.diff_id);
        assert!(first.digest.starts_with("sha256:") && first.digest.len() == 71);
    }

    fn metadata(mode: u32, uid: u32, gid: u32) -> EntryMetadata {
        EntryMetadata { mode, uid, gid }
    }

    #[test]
    fn the_listing_of_an_archive_we_wrote_is_its_entries() {
        let long = format!("app/{}/{}.py", "d".repeat(60), "f".repeat(70));
        let entries = vec![
            TarEntry { uid: 1000, gid: 1001, mode: 0o2750, ..dir("app/data") },
            file(&long, 0o644, "x"),
            file("app/å.py", 0o755, "y"),
            dir(&format!("app/{}", "g".repeat(96))),
        ];
        let listed = list_tar(&tar(&entries).unwrap()).unwrap();
        let listed: Vec<(&str, bool, EntryMetadata)> =
            listed.iter().map(|entry| (entry.path.as_str(), entry.directory, entry.metadata)).collect();
        assert_eq!(
            listed,
            [
                ("app/data", true, metadata(0o2750, 1000, 1001)),
                (long.as_str(), false, metadata(0o644, 0, 0)),
                ("app/å.py", false, metadata(0o755, 0, 0)),
                (format!("app/{}", "g".repeat(96)).as_str(), true, metadata(0o755, 0, 0)),
            ]
        );
    }

    /// `block` with its checksum computed again, after a test changed a field.
    fn resealed(mut block: [u8; BLOCK]) -> [u8; BLOCK] {
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        block
    }

    #[test]
    fn names_and_owners_are_read_in_every_form_go_and_gnu_write_them() {
        let mut archive = Vec::new();
        // ustar's prefix field holds the start of a long name.
        let mut split = header("b.py", 0o644, 0, 0, 0, b'0', 3).unwrap();
        split[345..348].copy_from_slice(b"app");
        archive.extend(resealed(split));
        push_padded(&mut archive, b"abc");
        // A PAX header's path, uid and gid replace the ustar fields of the next entry only.
        let records =
            [pax_record("path", "./app/pax name/"), pax_record("uid", "70000"), pax_record("gid", "7")].concat();
        archive.extend(header("PaxHeaders/x", 0o644, 0, 0, 0, b'x', records.len() as u64).unwrap());
        push_padded(&mut archive, &records);
        archive.extend(header("app/pax nam", 0o750, 1, 1, 0, b'5', 0).unwrap());
        // A GNU long name (`L`), and a base-256 uid.
        let gnu = format!("app/{}", "l".repeat(120));
        archive.extend(header("././@LongLink", 0o644, 0, 0, 0, b'L', gnu.len() as u64 + 1).unwrap());
        push_padded(&mut archive, format!("{gnu}\0").as_bytes());
        let mut big = header(&gnu[..100], 0o600, 0, 5, 0, b'0', 0).unwrap();
        big[108..116].copy_from_slice(&[0x80, 0, 0, 0, 0, 0x01, 0x00, 0x00]);
        archive.extend(resealed(big));
        // A global PAX header says nothing about the entries; a hard link's size has no data.
        archive.extend(header("pax_global_header", 0o644, 0, 0, 0, b'g', 0).unwrap());
        archive.extend(header("/app/link", 0o644, 0, 0, 0, b'1', 999).unwrap());
        archive.resize(archive.len() + 2 * BLOCK, 0);

        let listed = list_tar(&archive).unwrap();
        let listed: Vec<(&str, bool, EntryMetadata)> =
            listed.iter().map(|entry| (entry.path.as_str(), entry.directory, entry.metadata)).collect();
        assert_eq!(
            listed,
            [
                ("app/b.py", false, metadata(0o644, 0, 0)),
                ("app/pax name", true, metadata(0o750, 70000, 7)),
                (gnu.as_str(), false, metadata(0o600, 65536, 5)),
                ("app/link", false, metadata(0o644, 0, 0)),
            ]
        );
    }

    #[test]
    fn a_damaged_or_cut_archive_is_an_error_not_a_short_listing() {
        let archive = tar(&[file("app/a.py", 0o644, "print('a')\n"), file("app/b.py", 0o644, "")]).unwrap();
        let mut damaged = archive.clone();
        damaged[BLOCK * 2 + 5] ^= 1;
        let error = format!("{:#}", list_tar(&damaged).unwrap_err());
        assert!(error.starts_with("the tar header at byte 1024: its checksum is "), "{error}");
        let error = format!("{:#}", list_tar(&archive[..BLOCK + 5]).unwrap_err());
        assert!(error.ends_with("the archive ends inside its 11 bytes of data"), "{error}");
        let error = format!("{:#}", list_tar(&archive[..BLOCK - 1]).unwrap_err());
        assert!(error.contains("ends inside a header"), "{error}");
        // Without the end blocks, at an entry's end, it is complete.
        assert_eq!(list_tar(&archive[..BLOCK * 4]).unwrap().len(), 2);
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414f_a339);
    }

    /// Reads a gzip of stored blocks back, checking every length, the CRC and the size.
    fn gunzip_stored(gzip: &[u8]) -> Vec<u8> {
        assert_eq!(&gzip[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut data = Vec::new();
        let mut offset = 10;
        loop {
            let last = gzip[offset];
            let length = u16::from_le_bytes([gzip[offset + 1], gzip[offset + 2]]);
            let complement = u16::from_le_bytes([gzip[offset + 3], gzip[offset + 4]]);
            assert_eq!(length, !complement);
            data.extend_from_slice(&gzip[offset + 5..offset + 5 + usize::from(length)]);
            offset += 5 + usize::from(length);
            if last == 1 {
                break;
            }
            assert_eq!(last, 0);
        }
        let trailer = &gzip[offset..];
        assert_eq!(trailer.len(), 8);
        assert_eq!(u32::from_le_bytes(trailer[..4].try_into().unwrap()), crc32(&data));
        assert_eq!(u32::from_le_bytes(trailer[4..].try_into().unwrap()), data.len() as u32);
        data
    }

    #[test]
    fn gzip_of_stored_blocks_round_trips_at_block_boundaries() {
        for size in [0, 1, 65_535, 65_536, 3 * 65_535 + 7] {
            let data: Vec<u8> = (0..size).map(|index| (index % 251) as u8).collect();
            assert_eq!(gunzip_stored(&gzip_stored(&data)), data, "{size} bytes");
        }
    }
}
