//! The file of the restartable cache: a header, one record per item, an end record. Encoding
//! and decoding only; [`super`] does the file handling and talks to the cache.
//!
//! Every integer is little-endian; times are unix seconds, because the next process's relative
//! clock starts elsewhere.
//!
//! ```text
//! header (52 bytes)
//!   0  magic           8  "KCACHE\r\n" (the CR LF catches a file mangled as text)
//!   8  version         u32  FORMAT_VERSION
//!  12  reserved        u32  0
//!  16  saved at        u64  unix seconds
//!  24  memory limit    u64  bytes (-m of the server that saved)
//!  32  item size max   u64  bytes (-I of the server that saved; no value is longer)
//!  40  CAS bound       u64  every CAS the server that saved had handed out is below it
//!  48  crc32           u32  of bytes 0..48
//!
//! item record (28 + key + value + 4 bytes)
//!   0  kind            u8   'I'
//!   1  key length      u8   1..=250
//!   2  state           u8   bit 0 fetched, bit 1 stale, bit 2 key sent in base64
//!   3  reserved        u8   0
//!   4  client flags    u32
//!   8  value length    u32
//!  12  expires at      u64  unix seconds; 0 never expires
//!  20  last access     u64  unix seconds
//!  28  key, then value
//!   .  crc32           u32  of the record from its kind byte to the value's end
//!
//! end record (21 bytes)
//!   0  kind            u8   'E'
//!   1  items           u64  item records in the file
//!   9  bytes           u64  their keys' and values' bytes
//!  17  crc32           u32  of bytes 0..17
//! ```
//!
//! Why a checksum per record rather than per block or per file: a loader that finds any damage
//! drops everything it loaded (see [`super`]), so the granularity does not decide what is kept;
//! it decides what a damaged length can do. Each record's lengths are checked against fixed
//! bounds before anything is allocated, and its checksum before its item is used, so a flipped
//! bit anywhere is caught at the record it hit, and no item is ever built from bytes that were
//! not checked. CRC32 (crc32fast, SIMD) runs at many GB/s, far above the disk, and costs 4 bytes
//! per item. The end record makes a file cut exactly between two records fail too.

use std::io::{self, Read, Write};

/// The first bytes of every file.
pub const MAGIC: [u8; 8] = *b"KCACHE\r\n";

/// The layout this build writes and the only one it reads. Bump it for any change of layout;
/// an older keepcached then refuses the file instead of misreading it. Version 2 added the CAS
/// bound.
pub const FORMAT_VERSION: u32 = 2;

pub const HEADER_LEN: usize = 52;
/// The bytes of the header its checksum covers.
const HEADER_SUMMED: usize = HEADER_LEN - 4;
const ITEM_HEAD_LEN: usize = 28;
const END_LEN: usize = 17;

const KIND_ITEM: u8 = b'I';
const KIND_END: u8 = b'E';

const FETCHED: u8 = 1;
const STALE: u8 = 1 << 1;
const BINARY_KEY: u8 = 1 << 2;

/// memcached's longest key.
const KEY_MAX: usize = 250;
/// The largest `-I` the server accepts: no saved value can be longer, whatever the header says.
const VALUE_MAX: u64 = 1024 * 1024 * 1024;

/// What the header says about the file and the server that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub saved_at: u64,
    pub max_bytes: u64,
    pub item_size_max: u64,
    /// Every CAS handed out by the server that saved is below it, as the save began.
    pub cas_bound: u64,
}

/// One item as the file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u32,
    /// Unix seconds; 0 never expires.
    pub expires_at: u64,
    /// Unix seconds.
    pub last_access: u64,
    pub fetched: bool,
    pub stale: bool,
    pub binary_key: bool,
}

/// What the end record counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub items: u64,
    /// Keys' and values' bytes.
    pub bytes: u64,
}

/// Why a file cannot be loaded. Each message names the problem and where it is, for the one
/// log line the loader writes.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the file is empty")]
    Empty,
    #[error("not a keepcached cache file (its first bytes are not the magic number)")]
    BadMagic,
    #[error("format version {found}, but this keepcached reads only version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("the header's checksum does not match")]
    HeaderChecksum,
    #[error("truncated: the file ends inside its header")]
    TruncatedHeader,
    #[error(
        "truncated: the file ends inside the record at byte {offset}, or before the end record"
    )]
    Truncated { offset: u64 },
    #[error("the record at byte {offset} is damaged: its checksum does not match")]
    Checksum { offset: u64 },
    #[error("the record at byte {offset} is damaged: {why}")]
    BadRecord { offset: u64, why: &'static str },
    #[error("the end record counts {expected} items of {expected_bytes} bytes, the file has {found} of {found_bytes}")]
    Count {
        expected: u64,
        expected_bytes: u64,
        found: u64,
        found_bytes: u64,
    },
    #[error("unexpected data after the end record at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("read error: {0}")]
    Io(#[from] io::Error),
}

/// Writes a file: the header at once, then one record per [`Writer::item`], the end record in
/// [`Writer::finish`].
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    totals: Totals,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Writer<W>> {
        let mut buf = [0; HEADER_LEN];
        buf[..8].copy_from_slice(&MAGIC);
        buf[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf[16..24].copy_from_slice(&header.saved_at.to_le_bytes());
        buf[24..32].copy_from_slice(&header.max_bytes.to_le_bytes());
        buf[32..40].copy_from_slice(&header.item_size_max.to_le_bytes());
        buf[40..48].copy_from_slice(&header.cas_bound.to_le_bytes());
        let crc = crc32fast::hash(&buf[..HEADER_SUMMED]);
        buf[HEADER_SUMMED..].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&buf)?;
        Ok(Writer {
            out,
            totals: Totals::default(),
        })
    }

    /// Appends one item. Keys of 1 to 250 bytes only: the cache holds no others.
    pub fn item(&mut self, r: &Record<'_>) -> io::Result<()> {
        let key_len = u8::try_from(r.key.len())
            .ok()
            .filter(|&n| n > 0 && usize::from(n) <= KEY_MAX)
            .ok_or_else(|| io::Error::other("a key must have 1 to 250 bytes"))?;
        let value_len = u32::try_from(r.value.len())
            .ok()
            .filter(|&n| u64::from(n) <= VALUE_MAX)
            .ok_or_else(|| io::Error::other("a value must be at most 1 GiB"))?;
        let mut head = [0; ITEM_HEAD_LEN];
        head[0] = KIND_ITEM;
        head[1] = key_len;
        head[2] = (u8::from(r.fetched) * FETCHED)
            | (u8::from(r.stale) * STALE)
            | (u8::from(r.binary_key) * BINARY_KEY);
        head[4..8].copy_from_slice(&r.flags.to_le_bytes());
        head[8..12].copy_from_slice(&value_len.to_le_bytes());
        head[12..20].copy_from_slice(&r.expires_at.to_le_bytes());
        head[20..28].copy_from_slice(&r.last_access.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(r.key);
        crc.update(r.value);
        self.out.write_all(&head)?;
        self.out.write_all(r.key)?;
        self.out.write_all(r.value)?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.totals.items += 1;
        self.totals.bytes += (r.key.len() + r.value.len()) as u64;
        Ok(())
    }

    /// Writes the end record and gives back the output (not yet flushed) and what was written.
    pub fn finish(mut self) -> io::Result<(W, Totals)> {
        let mut end = [0; END_LEN + 4];
        end[0] = KIND_END;
        end[1..9].copy_from_slice(&self.totals.items.to_le_bytes());
        end[9..17].copy_from_slice(&self.totals.bytes.to_le_bytes());
        let crc = crc32fast::hash(&end[..END_LEN]);
        end[END_LEN..].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&end)?;
        Ok((self.out, self.totals))
    }
}

/// Reads a file record by record, checking each before it is handed out.
#[derive(Debug)]
pub struct Reader<R: Read> {
    input: R,
    header: Header,
    /// Where the next record starts, for messages.
    offset: u64,
    totals: Totals,
    /// The current record's key and value.
    buf: Vec<u8>,
}

/// Fills `buf` from `input`; false when the input ended first.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match input.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Reader<R>, FormatError> {
        let mut buf = [0; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got == 0 {
            return Err(FormatError::Empty);
        }
        // Magic and version before length and checksum: another program's file, or a later
        // layout whose header is longer, is named as such rather than as damage.
        if got < MAGIC.len() || buf[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        if got >= 12 && u32_at(&buf, 8) != FORMAT_VERSION {
            return Err(FormatError::Version {
                found: u32_at(&buf, 8),
            });
        }
        if got < HEADER_LEN {
            return Err(FormatError::TruncatedHeader);
        }
        if crc32fast::hash(&buf[..HEADER_SUMMED]) != u32_at(&buf, HEADER_SUMMED) {
            return Err(FormatError::HeaderChecksum);
        }
        Ok(Reader {
            input,
            header: Header {
                saved_at: u64_at(&buf, 16),
                max_bytes: u64_at(&buf, 24),
                item_size_max: u64_at(&buf, 32),
                cas_bound: u64_at(&buf, 40),
            },
            offset: HEADER_LEN as u64,
            totals: Totals::default(),
            buf: Vec::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next item, checked; `None` after a good end record that agrees with the items read
    /// and is the last thing in the file.
    pub fn next_item(&mut self) -> Result<Option<Record<'_>>, FormatError> {
        let offset = self.offset;
        let truncated = FormatError::Truncated { offset };
        let bad = |why| FormatError::BadRecord { offset, why };
        let mut head = [0; ITEM_HEAD_LEN];
        if !read_full(&mut self.input, &mut head[..1])? {
            return Err(truncated);
        }
        match head[0] {
            KIND_ITEM => {}
            KIND_END => return self.end(offset).map(|()| None),
            _ => return Err(bad("unknown record kind")),
        }
        if !read_full(&mut self.input, &mut head[1..])? {
            return Err(truncated);
        }
        let key_len = usize::from(head[1]);
        let value_len = u64::from(u32_at(&head, 8));
        if key_len == 0 || key_len > KEY_MAX {
            return Err(bad("key length out of range"));
        }
        if value_len > VALUE_MAX.min(self.header.item_size_max) {
            return Err(bad("value longer than the header's item size limit"));
        }
        let len = key_len as u64 + value_len;
        self.buf.clear();
        // `take` + `read_to_end` fills the buffer without zeroing it first.
        (&mut self.input).take(len).read_to_end(&mut self.buf)?;
        let mut crc = [0; 4];
        if self.buf.len() as u64 != len || !read_full(&mut self.input, &mut crc)? {
            return Err(truncated);
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head);
        hasher.update(&self.buf);
        if hasher.finalize() != u32::from_le_bytes(crc) {
            return Err(FormatError::Checksum { offset });
        }
        self.offset += (ITEM_HEAD_LEN + 4) as u64 + len;
        self.totals.items += 1;
        self.totals.bytes += len;
        let (key, value) = self.buf.split_at(key_len);
        Ok(Some(Record {
            key,
            value,
            flags: u32_at(&head, 4),
            expires_at: u64_at(&head, 12),
            last_access: u64_at(&head, 20),
            fetched: head[2] & FETCHED != 0,
            stale: head[2] & STALE != 0,
            binary_key: head[2] & BINARY_KEY != 0,
        }))
    }

    /// Checks the end record (its kind byte already read) and that nothing follows it.
    fn end(&mut self, offset: u64) -> Result<(), FormatError> {
        let mut end = [0; END_LEN + 4];
        end[0] = KIND_END;
        if !read_full(&mut self.input, &mut end[1..])? {
            return Err(FormatError::Truncated { offset });
        }
        if crc32fast::hash(&end[..END_LEN]) != u32_at(&end, END_LEN) {
            return Err(FormatError::Checksum { offset });
        }
        let (expected, expected_bytes) = (u64_at(&end, 1), u64_at(&end, 9));
        if (expected, expected_bytes) != (self.totals.items, self.totals.bytes) {
            return Err(FormatError::Count {
                expected,
                expected_bytes,
                found: self.totals.items,
                found_bytes: self.totals.bytes,
            });
        }
        if read_full(&mut self.input, &mut [0])? {
            return Err(FormatError::TrailingData {
                offset: offset + end.len() as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned record, for generated tests.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        key: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
        expires_at: u64,
        last_access: u64,
        state: (bool, bool, bool),
    }

    impl Owned {
        fn record(&self) -> Record<'_> {
            Record {
                key: &self.key,
                value: &self.value,
                flags: self.flags,
                expires_at: self.expires_at,
                last_access: self.last_access,
                fetched: self.state.0,
                stale: self.state.1,
                binary_key: self.state.2,
            }
        }

        fn of(r: &Record<'_>) -> Owned {
            Owned {
                key: r.key.to_vec(),
                value: r.value.to_vec(),
                flags: r.flags,
                expires_at: r.expires_at,
                last_access: r.last_access,
                state: (r.fetched, r.stale, r.binary_key),
            }
        }
    }

    const HEADER: Header = Header {
        saved_at: 1_700_000_000,
        max_bytes: 64 << 20,
        item_size_max: 1 << 20,
        cas_bound: 123_456,
    };

    fn encode(items: &[Owned]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &HEADER).unwrap();
        for item in items {
            w.item(&item.record()).unwrap();
        }
        let (out, totals) = w.finish().unwrap();
        assert_eq!(totals.items, items.len() as u64);
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Header, Vec<Owned>), FormatError> {
        let mut r = Reader::new(bytes)?;
        let header = *r.header();
        let mut items = Vec::new();
        while let Some(record) = r.next_item()? {
            items.push(Owned::of(&record));
        }
        Ok((header, items))
    }

    fn sample() -> Vec<Owned> {
        (0..20u8)
            .map(|i| Owned {
                key: format!("key:{i}").into_bytes(),
                value: vec![i; usize::from(i) * 7],
                flags: u32::from(i) * 1000,
                expires_at: if i % 2 == 0 { 0 } else { 1_800_000_000 },
                last_access: 1_700_000_000 - u64::from(i),
                state: (i % 3 == 0, i % 5 == 0, i % 7 == 0),
            })
            .collect()
    }

    fn owned() -> impl Strategy<Value = Owned> {
        (
            proptest::collection::vec(any::<u8>(), 1..=250),
            proptest::collection::vec(any::<u8>(), 0..2000),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(
                |(key, value, flags, expires_at, last_access, state)| Owned {
                    key,
                    value,
                    flags,
                    expires_at,
                    last_access,
                    state,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(items in proptest::collection::vec(owned(), 0..40)) {
            let (header, decoded) = decode(&encode(&items)).unwrap();
            prop_assert_eq!(header, HEADER);
            prop_assert_eq!(decoded, items);
        }

        #[test]
        fn a_changed_byte_is_always_caught(
            items in proptest::collection::vec(owned(), 1..10),
            at in any::<prop::sample::Index>(),
            xor in 1..=255u8,
        ) {
            let mut bytes = encode(&items);
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
            prop_assert!(decode(&bytes).is_err(), "byte {} changed and the file still read", at);
        }
    }

    #[test]
    fn every_cut_is_caught() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).expect_err("a cut file must not read");
            assert!(
                matches!(
                    err,
                    FormatError::Empty
                        | FormatError::BadMagic
                        | FormatError::TruncatedHeader
                        | FormatError::Truncated { .. }
                ),
                "cut at {len}: {err}"
            );
        }
        assert_eq!(decode(&bytes).unwrap().1, sample());
    }

    #[test]
    fn each_problem_has_its_own_message() {
        let good = encode(&sample());
        let error = |bytes: &[u8]| decode(bytes).unwrap_err().to_string();
        assert_eq!(error(b""), "the file is empty");
        assert!(error(b"VALUE k 0 1\r\n").contains("not a keepcached cache file"));
        let mut later = good.clone();
        later[8] = 3;
        assert_eq!(
            error(&later),
            "format version 3, but this keepcached reads only version 2"
        );
        let mut header = good.clone();
        header[20] ^= 1;
        assert!(error(&header).contains("header's checksum"));
        let mut record = good.clone();
        record[HEADER_LEN + ITEM_HEAD_LEN] ^= 1;
        assert_eq!(
            error(&record),
            "the record at byte 52 is damaged: its checksum does not match"
        );
        let mut kind = good.clone();
        kind[HEADER_LEN] = b'X';
        assert!(error(&kind).contains("unknown record kind"));
        let mut long = good.clone();
        long[HEADER_LEN + 8..HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(error(&long).contains("longer than the header's item size limit"));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(error(&trailing).contains("after the end record"));
        let end = good.len() - END_LEN - 4;
        assert_eq!(
            error(&good[..end]),
            format!("truncated: the file ends inside the record at byte {end}, or before the end record")
        );
        assert_eq!(
            error(&good[..20]),
            "truncated: the file ends inside its header"
        );
    }

    #[test]
    fn the_end_record_must_count_the_items() {
        let items = sample();
        let mut w = Writer::new(Vec::new(), &HEADER).unwrap();
        for item in &items {
            w.item(&item.record()).unwrap();
        }
        let (mut bytes, _) = w.finish().unwrap();
        // An end record written for one item fewer, with a valid checksum of its own.
        let end = bytes.len() - END_LEN - 4;
        let mut w = Writer::new(Vec::new(), &HEADER).unwrap();
        for item in &items[1..] {
            w.item(&item.record()).unwrap();
        }
        let (short, _) = w.finish().unwrap();
        bytes.truncate(end);
        bytes.extend_from_slice(&short[short.len() - END_LEN - 4..]);
        assert!(matches!(
            decode(&bytes).unwrap_err(),
            FormatError::Count {
                expected: 19,
                found: 20,
                ..
            }
        ));
    }

    #[test]
    fn keys_the_cache_cannot_hold_are_not_written() {
        let mut w = Writer::new(Vec::new(), &HEADER).unwrap();
        let mut r = sample()[0].clone();
        r.key = Vec::new();
        assert!(w.item(&r.record()).is_err());
        r.key = vec![b'k'; 251];
        assert!(w.item(&r.record()).is_err());
    }
}
