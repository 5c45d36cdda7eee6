//! Image layers written by us rather than by BuildKit, for the source-only fast path: a
//! deterministic tar archive (ustar headers, a PAX header for a name that ustar cannot hold) and its gzip, with the two digests an image needs: the layer's `diff_id` (the
//! SHA-256 of the tar) and its blob digest (the SHA-256 of the gzip).
//!
//! The gzip holds stored (uncompressed) deflate blocks and a CRC-32: no compression library
//! (flate2 and miniz_oxide would cost about 6.5 s of a cold compile, against the ≤ 40 s goal of
//! issue #15), and a layer of source files is small. Registries and engines read such a stream
//! like any other gzip. The same entries always give the same bytes: the caller fixes the order,
//! owners and times, and nothing here reads the clock or the disk.

use anyhow::{Result, bail};

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
