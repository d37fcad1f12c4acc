//! A bbolt file, written and read without bbolt: the container etcd's backend and snapshots use.
//!
//! bbolt (go.etcd.io/bbolt) keeps a B+tree of buckets in fixed-size pages. What this module relies
//! on, and so guarantees to produce:
//!
//! - Every page starts with a 16-byte header: its id, flags (branch 0x01, leaf 0x02, meta 0x04,
//!   freelist 0x10), an element count and the number of *overflow* pages that follow it when its
//!   contents do not fit in one page. All integers are little-endian.
//! - Pages 0 and 1 are meta pages: magic `0xED0CDAED`, version 2, page size, flags, the root
//!   bucket (its root page and sequence), the freelist page, the high-water page id (pages in the
//!   file), the transaction id and an FNV-64a checksum of the meta bytes before it. bbolt uses the
//!   valid meta with the higher transaction id.
//! - A leaf element is 16 bytes (flags, offset of its key from the element, key length, value
//!   length); a branch element is 16 bytes (offset, key length, child page id) and its key is the
//!   first key of the child. Keys within a page, and across pages, are in byte order.
//! - A bucket is a leaf element with flag 0x01 whose value is the bucket header (root page id and
//!   sequence, 16 bytes). A root of 0 means an *inline* bucket: its single leaf page follows the
//!   header inside the value (bbolt writes small buckets that way; etcd's files have them).
//!
//! The [`Writer`] streams pages to a file in one pass: each bucket's keys arrive in order, leaves are
//! written as they fill and the branch levels above them once the bucket ends, then the root leaf
//! that lists the buckets, then the two meta pages at the front. It never writes inline buckets
//! (an empty bucket gets an empty leaf page), never frees a page, and writes no freelist page: the
//! meta says "freelist not synced" (etcd's own snapshots say the same), and bbolt rebuilds the
//! freelist from the reachable pages on open, which here are all of them.
//!
//! The [`Reader`] checks both metas (magic, version, checksum), takes the newer valid one, and walks
//! buckets page by page with positioned reads, so a file larger than memory can be read. Every page
//! id is checked against the high-water mark and the depth of the tree is bounded, so a damaged file
//! gives an error, not a hang or a panic. Trailing bytes after the last page (the SHA-256 an etcd
//! snapshot ends with) are ignored.
//!
//! Left out: writing into an existing file (there is no free-page reuse, no transaction), nested
//! buckets in the writer (etcd has none), and page sizes other than 4096 in the writer (the reader
//! takes the page size from the meta).

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The page size this writer uses (bbolt's default on Linux/amd64, what etcd's files have).
pub const PAGE_SIZE: usize = 4096;
/// bbolt's magic number in both meta pages.
const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
const VERSION: u32 = 2;
/// Page flags.
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
/// The leaf element flag of a bucket.
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// Page header bytes: id u64, flags u16, count u16, overflow u32.
const PAGE_HEADER: usize = 16;
/// A leaf or branch element's fixed part.
const ELEMENT: usize = 16;
/// The meta's bytes: magic, version, page size, flags (4 each), root bucket (16), freelist, pgid,
/// txid, checksum (8 each).
const META_LEN: usize = 64;
/// The bytes the meta checksum covers (everything before the checksum).
const META_CHECKSUMMED: usize = 56;
/// The freelist page id meaning "no freelist written" (bbolt's `pgidNoFreelist`).
const NO_FREELIST: u64 = u64::MAX;
/// Bucket header bytes: root page id and sequence.
const BUCKET_HEADER: usize = 16;
/// Most elements a page can count (the header's count is a u16).
const MAX_ELEMENTS: usize = u16::MAX as usize - 1;
/// Deepest tree the reader follows: far above any real file, low enough to stop a cycle.
const MAX_DEPTH: usize = 64;

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("bbolt: {what}"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// One page's worth of elements being gathered, and the pages written below the level above.
#[derive(Default)]
struct Level {
    /// Elements of the page being filled: (leaf flags, key, value) for a leaf, (0, key, child id as
    /// 8 bytes) for a branch.
    items: Vec<(u32, Vec<u8>, Vec<u8>)>,
    /// Bytes the page being filled needs so far (header, elements, keys and values).
    bytes: usize,
}

/// A bucket being written: its leaf level fills as keys arrive.
struct BucketBuilder {
    /// The bucket's name.
    name: Vec<u8>,
    /// The leaf being filled.
    leaf: Level,
    /// (first key, page id) of every leaf written so far: the level above, built when the bucket
    /// ends (one entry per page, small next to the data).
    written: Vec<(Vec<u8>, u64)>,
    /// The last key added, to refuse keys out of order (bbolt would not find them).
    last: Option<Vec<u8>>,
}

/// Writes a bbolt file in one pass (see the module docs). Buckets are added one at a time, each
/// with its keys in strictly increasing order; [`Writer::finish`] writes the root and the metas.
pub struct Writer {
    /// The file, buffered; pages are appended in id order.
    out: BufWriter<File>,
    /// The id the next page written gets (pages 0 and 1 are the metas).
    next_pgid: u64,
    /// (name, root page id) of every finished bucket.
    buckets: Vec<(Vec<u8>, u64)>,
    /// The bucket being written, if any.
    current: Option<BucketBuilder>,
}

impl Writer {
    /// Creates (truncates) `path` and reserves the two meta pages.
    pub fn create(path: &Path) -> Result<Writer> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(16 * PAGE_SIZE, file);
        // Placeholders: the metas are written last, once the root is known.
        out.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(Writer {
            out,
            next_pgid: 2,
            buckets: Vec::new(),
            current: None,
        })
    }

    /// Starts a top-level bucket named `name` (ending the previous one).
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<()> {
        self.end_bucket()?;
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(Error::Internal(format!(
                "bbolt writer: bucket {} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        self.current = Some(BucketBuilder {
            name: name.to_vec(),
            leaf: Level::default(),
            written: Vec::new(),
            last: None,
        });
        Ok(())
    }

    /// Adds `key` = `value` to the current bucket; keys must come in strictly increasing order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let out_of_order = match &self.current {
            None => return Err(Error::Internal("bbolt writer: put outside a bucket".into())),
            Some(b) => b.last.as_deref().is_some_and(|last| last >= key),
        };
        if out_of_order {
            return Err(Error::Internal(
                "bbolt writer: keys out of order in a bucket".into(),
            ));
        }
        let mut b = self
            .current
            .take()
            .ok_or_else(|| Error::Internal("bbolt writer: put outside a bucket".into()))?;
        b.last = Some(key.to_vec());
        let need = ELEMENT + key.len() + value.len();
        if Self::full(&b.leaf, need) {
            let first = b.leaf.items[0].1.clone();
            let id = self.write_page(LEAF_PAGE, &b.leaf)?;
            b.written.push((first, id));
            b.leaf = Level::default();
        }
        b.leaf.items.push((0, key.to_vec(), value.to_vec()));
        b.leaf.bytes += need;
        self.current = Some(b);
        Ok(())
    }

    /// Whether adding an element of `need` bytes would overfill the page of `level`. A page with
    /// nothing on it takes any element (it then spans overflow pages).
    fn full(level: &Level, need: usize) -> bool {
        !level.items.is_empty()
            && (PAGE_HEADER + level.bytes + need > PAGE_SIZE || level.items.len() >= MAX_ELEMENTS)
    }

    /// Ends the current bucket: writes its last leaf and the branch levels above; records its root.
    fn end_bucket(&mut self) -> Result<()> {
        let Some(mut b) = self.current.take() else {
            return Ok(());
        };
        let root = self.finish_tree(&mut b.leaf, std::mem::take(&mut b.written), LEAF_PAGE)?;
        self.buckets.push((b.name, root));
        Ok(())
    }

    /// Writes the last page of a level being filled, then branch pages over `written` until one
    /// page remains; returns that root page's id.
    fn finish_tree(
        &mut self,
        last: &mut Level,
        mut written: Vec<(Vec<u8>, u64)>,
        flags: u16,
    ) -> Result<u64> {
        if !last.items.is_empty() || written.is_empty() {
            let first = last.items.first().map(|i| i.1.clone()).unwrap_or_default();
            let id = self.write_page(flags, last)?;
            written.push((first, id));
        }
        while written.len() > 1 {
            let mut above = Vec::new();
            let mut page = Level::default();
            for (key, child) in written {
                let need = ELEMENT + key.len();
                if Self::full(&page, need) {
                    let first = page.items[0].1.clone();
                    above.push((first, self.write_page(BRANCH_PAGE, &page)?));
                    page = Level::default();
                }
                page.items.push((0, key, child.to_le_bytes().to_vec()));
                page.bytes += need;
            }
            let first = page.items[0].1.clone();
            above.push((first, self.write_page(BRANCH_PAGE, &page)?));
            written = above;
        }
        Ok(written[0].1)
    }

    /// Appends one page (with its overflow pages) holding `level`'s elements; returns its id.
    fn write_page(&mut self, flags: u16, level: &Level) -> Result<u64> {
        let id = self.next_pgid;
        let used = PAGE_HEADER + level.bytes;
        let pages = used.div_ceil(PAGE_SIZE).max(1);
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        buf[0..8].copy_from_slice(&id.to_le_bytes());
        buf[8..10].copy_from_slice(&flags.to_le_bytes());
        buf[10..12].copy_from_slice(&(level.items.len() as u16).to_le_bytes());
        buf[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        let mut data = PAGE_HEADER + level.items.len() * ELEMENT;
        for (i, (leaf_flags, key, value)) in level.items.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            // Offsets are from the element itself (bbolt's `pos`).
            let pos = (data - at) as u32;
            if flags == BRANCH_PAGE {
                buf[at..at + 4].copy_from_slice(&pos.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                buf[at + 8..at + 16].copy_from_slice(value);
                buf[data..data + key.len()].copy_from_slice(key);
                data += key.len();
            } else {
                buf[at..at + 4].copy_from_slice(&leaf_flags.to_le_bytes());
                buf[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
                buf[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
                buf[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
                buf[data..data + key.len()].copy_from_slice(key);
                data += key.len();
                buf[data..data + value.len()].copy_from_slice(value);
                data += value.len();
            }
        }
        self.out.write_all(&buf)?;
        self.next_pgid += pages as u64;
        Ok(id)
    }

    /// Ends the last bucket, writes the root bucket's pages and both metas, and syncs the file.
    /// Returns the file's size in bytes (high-water page id times the page size).
    pub fn finish(mut self) -> Result<u64> {
        self.end_bucket()?;
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Level::default();
        let mut written = Vec::new();
        for (name, bucket_root) in buckets {
            let mut header = Vec::with_capacity(BUCKET_HEADER);
            header.extend_from_slice(&bucket_root.to_le_bytes());
            header.extend_from_slice(&0u64.to_le_bytes());
            let need = ELEMENT + name.len() + header.len();
            if Self::full(&root, need) {
                let first = root.items[0].1.clone();
                written.push((first, self.write_page(LEAF_PAGE, &root)?));
                root = Level::default();
            }
            root.items.push((BUCKET_LEAF_FLAG, name, header));
            root.bytes += need;
        }
        let root_id = self.finish_tree(&mut root, written, LEAF_PAGE)?;
        let high_water = self.next_pgid;
        self.out.flush()?;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::Io(e.into_error()))?;
        for (pgid, txid) in [(0u64, 2u64), (1, 3)] {
            let page = meta_page(pgid, root_id, high_water, txid);
            file.seek(SeekFrom::Start(pgid * PAGE_SIZE as u64))?;
            file.write_all(&page)?;
        }
        file.sync_all()?;
        Ok(high_water * PAGE_SIZE as u64)
    }
}

/// A meta page: header, then the meta with its checksum.
fn meta_page(pgid: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page[0..8].copy_from_slice(&pgid.to_le_bytes());
    page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
    let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_LEN];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    // flags (12..16) stay 0.
    m[16..24].copy_from_slice(&root.to_le_bytes());
    // root bucket sequence (24..32) stays 0.
    m[32..40].copy_from_slice(&NO_FREELIST.to_le_bytes());
    m[40..48].copy_from_slice(&high_water.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv64a(&m[..META_CHECKSUMMED]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
    page
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A decoded meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The file's page size.
    pub page_size: u32,
    /// The root bucket's root page.
    pub root: u64,
    /// The freelist page, or `u64::MAX` when none was written.
    pub freelist: u64,
    /// Pages in use: the high-water mark.
    pub high_water: u64,
    /// The transaction that wrote this meta.
    pub txid: u64,
}

fn parse_meta(page: &[u8]) -> Result<Meta> {
    if page.len() < PAGE_HEADER + META_LEN {
        return Err(corrupt("file too short for a meta page"));
    }
    if u16_at(page, 8) & META_PAGE == 0 {
        return Err(corrupt("meta page has no meta flag"));
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + META_LEN];
    if u32_at(m, 0) != MAGIC {
        return Err(corrupt("invalid magic: not a bbolt file"));
    }
    if u32_at(m, 4) != VERSION {
        return Err(corrupt(format!("unsupported version {}", u32_at(m, 4))));
    }
    if fnv64a(&m[..META_CHECKSUMMED]) != u64_at(m, 56) {
        return Err(corrupt("meta checksum mismatch"));
    }
    let page_size = u32_at(m, 8);
    if !(512..=(1 << 20)).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(format!("invalid page size {page_size}")));
    }
    Ok(Meta {
        page_size,
        root: u64_at(m, 16),
        freelist: u64_at(m, 32),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// One element of a leaf page, as the visitor sees it.
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value; for a nested bucket, its header (and inline page).
    pub value: &'a [u8],
    /// Whether this element is a nested bucket.
    pub is_bucket: bool,
}

/// Reads a bbolt file (see the module docs).
pub struct Reader {
    /// The open file.
    file: File,
    /// The meta in use.
    meta: Meta,
    /// Pages read so far (for progress reports).
    pages_read: std::cell::Cell<u64>,
}

impl Reader {
    /// Opens `path` and validates its metas; uses the valid one with the higher transaction id.
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut first = vec![0u8; PAGE_HEADER + META_LEN];
        file.read_exact_at(&mut first, 0)
            .map_err(|_| corrupt("file too short for a meta page"))?;
        let meta0 = parse_meta(&first);
        // The second meta sits one page in: use the first meta's page size, else try the common ones.
        let sizes: Vec<u64> = match &meta0 {
            Ok(m) => vec![u64::from(m.page_size)],
            Err(_) => (12..=16).map(|s| 1u64 << s).collect(),
        };
        let mut meta1 = Err(corrupt("no second meta page"));
        for size in sizes {
            let mut second = vec![0u8; PAGE_HEADER + META_LEN];
            if file.read_exact_at(&mut second, size).is_ok() {
                meta1 = parse_meta(&second).and_then(|m| {
                    if u64::from(m.page_size) == size {
                        Ok(m)
                    } else {
                        Err(corrupt("meta page size disagrees with its position"))
                    }
                });
                if meta1.is_ok() {
                    break;
                }
            }
        }
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        let size = meta.high_water.saturating_mul(u64::from(meta.page_size));
        if size > len {
            return Err(corrupt(format!(
                "file has {len} bytes, its meta needs {size} (truncated?)"
            )));
        }
        Ok(Reader {
            file,
            meta,
            pages_read: std::cell::Cell::new(0),
        })
    }

    /// The meta in use.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The database's size as bbolt reports it (`tx.Size()`): high-water mark times page size.
    pub fn size(&self) -> u64 {
        self.meta.high_water * u64::from(self.meta.page_size)
    }

    /// Pages read so far.
    pub fn pages_read(&self) -> u64 {
        self.pages_read.get()
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.meta.high_water {
            return Err(corrupt(format!(
                "page {id} outside the file (high water {})",
                self.meta.high_water
            )));
        }
        let ps = self.meta.page_size as usize;
        let mut buf = vec![0u8; ps];
        self.file.read_exact_at(&mut buf, id * ps as u64)?;
        if u64_at(&buf, 0) != id {
            return Err(corrupt(format!("page {id} has id {}", u64_at(&buf, 0))));
        }
        let overflow = u64::from(u32_at(&buf, 12));
        if overflow > 0 {
            if id + overflow >= self.meta.high_water {
                return Err(corrupt(format!("page {id} overflows past the file")));
            }
            buf.resize(ps * (overflow as usize + 1), 0);
            self.file
                .read_exact_at(&mut buf[ps..], (id + 1) * ps as u64)?;
        }
        self.pages_read.set(self.pages_read.get() + 1 + overflow);
        Ok(buf)
    }

    /// Calls `f` for every element of the tree under page `id`, in key order.
    fn walk(
        &self,
        id: u64,
        depth: usize,
        f: &mut dyn FnMut(Entry<'_>) -> Result<()>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree too deep (a cycle?)"));
        }
        let page = self.page(id)?;
        match u16_at(&page, 8) {
            LEAF_PAGE => visit_leaf(&page, f),
            BRANCH_PAGE => {
                let count = usize::from(u16_at(&page, 10));
                if PAGE_HEADER + count * ELEMENT > page.len() {
                    return Err(corrupt(format!("branch page {id} count too large")));
                }
                for i in 0..count {
                    let child = u64_at(&page, PAGE_HEADER + i * ELEMENT + 8);
                    self.walk(child, depth + 1, f)?;
                }
                Ok(())
            }
            other => Err(corrupt(format!(
                "page {id} has flags {other:#x}, not a branch or leaf"
            ))),
        }
    }

    /// Calls `f` for every element of the bucket whose header (and inline page) is `value`.
    fn walk_bucket(&self, value: &[u8], f: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
        if value.len() < BUCKET_HEADER {
            return Err(corrupt("bucket header too short"));
        }
        match u64_at(value, 0) {
            0 => visit_leaf(&value[BUCKET_HEADER..], f),
            root => self.walk(root, 0, f),
        }
    }

    /// The value of the bucket element `name` in the bucket at `path` ([] = the root).
    fn bucket_header(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>> {
        let mut header: Option<Vec<u8>> = None;
        for name in path {
            let mut found = None;
            let mut find = |e: Entry<'_>| {
                if e.is_bucket && e.key == *name {
                    found = Some(e.value.to_vec());
                }
                Ok(())
            };
            match &header {
                None => self.walk(self.meta.root, 0, &mut find)?,
                Some(h) => self.walk_bucket(h, &mut find)?,
            }
            match found {
                Some(h) => header = Some(h),
                None => return Ok(None),
            }
        }
        Ok(header)
    }

    /// The names of the buckets under `path` ([] = the top-level buckets), in order.
    pub fn buckets(&self, path: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.for_each(path, |e| {
            if e.is_bucket {
                names.push(e.key.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` for every element of the bucket at `path` ([] = the root bucket, whose elements
    /// are the top-level buckets), in key order. Returns false when there is no such bucket.
    pub fn for_each(
        &self,
        path: &[&[u8]],
        mut f: impl FnMut(Entry<'_>) -> Result<()>,
    ) -> Result<bool> {
        if path.is_empty() {
            self.walk(self.meta.root, 0, &mut f)?;
            return Ok(true);
        }
        match self.bucket_header(path)? {
            None => Ok(false),
            Some(h) => {
                self.walk_bucket(&h, &mut f)?;
                Ok(true)
            }
        }
    }
}

/// Calls `f` for every element of the leaf page `page`.
fn visit_leaf(page: &[u8], f: &mut dyn FnMut(Entry<'_>) -> Result<()>) -> Result<()> {
    if page.len() < PAGE_HEADER {
        return Err(corrupt("leaf page too short"));
    }
    if u16_at(page, 8) != LEAF_PAGE {
        return Err(corrupt("inline bucket is not a leaf page"));
    }
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(corrupt("leaf page count too large"));
    }
    for i in 0..count {
        let at = PAGE_HEADER + i * ELEMENT;
        let flags = u32_at(page, at);
        let pos = u32_at(page, at + 4) as usize;
        let klen = u32_at(page, at + 8) as usize;
        let vlen = u32_at(page, at + 12) as usize;
        let start = at + pos;
        let end = start
            .checked_add(klen)
            .and_then(|e| e.checked_add(vlen))
            .filter(|e| *e <= page.len())
            .ok_or_else(|| corrupt("leaf element runs past its page"))?;
        f(Entry {
            key: &page[start..start + klen],
            value: &page[start + klen..end],
            is_bucket: flags & BUCKET_LEAF_FLAG != 0,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &Reader, bucket: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        let found = r
            .for_each(&[bucket], |e| {
                out.push((e.key.to_vec(), e.value.to_vec()));
                Ok(())
            })
            .unwrap();
        assert!(found);
        out
    }

    #[test]
    fn fnv64a_known_answers() {
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn round_trip_small_large_and_empty_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::create(&path).unwrap();
        // Many keys: several leaves and a branch level.
        w.begin_bucket(b"many").unwrap();
        let many: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), format!("value {i}").into_bytes()))
            .collect();
        for (k, v) in &many {
            w.put(k, v).unwrap();
        }
        // Values larger than a page: overflow pages.
        w.begin_bucket(b"big").unwrap();
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..5u8)
            .map(|i| (vec![i], vec![i; 10_000 + usize::from(i)]))
            .collect();
        for (k, v) in &big {
            w.put(k, v).unwrap();
        }
        w.begin_bucket(b"empty").unwrap();
        assert!(w.put(b"", b"").is_ok());
        assert!(w.put(b"", b"").is_err(), "a repeated key is refused");
        w.begin_bucket(b"alone").unwrap();
        let size = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);

        let r = Reader::open(&path).unwrap();
        assert_eq!(r.size(), size);
        assert_eq!(
            r.buckets(&[]).unwrap(),
            vec![
                b"alone".to_vec(),
                b"big".to_vec(),
                b"empty".to_vec(),
                b"many".to_vec()
            ]
        );
        assert_eq!(collect(&r, b"many"), many);
        assert_eq!(collect(&r, b"big"), big);
        assert_eq!(collect(&r, b"empty"), vec![(vec![], vec![])]);
        assert!(collect(&r, b"alone").is_empty());
        assert!(!r.for_each(&[b"missing"], |_| Ok(())).unwrap());
        assert!(r.pages_read() > 0);
    }

    #[test]
    fn damaged_metas_and_pages_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut w = Writer::create(&path).unwrap();
        w.begin_bucket(b"b").unwrap();
        w.put(b"k", b"v").unwrap();
        w.finish().unwrap();
        let good = std::fs::read(&path).unwrap();

        // One meta damaged: the other is used.
        let mut one = good.clone();
        one[PAGE_HEADER + 20] ^= 1;
        std::fs::write(&path, &one).unwrap();
        assert_eq!(collect(&Reader::open(&path).unwrap(), b"b").len(), 1);

        // Both damaged: refused.
        let mut both = one.clone();
        both[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
        std::fs::write(&path, &both).unwrap();
        assert!(Reader::open(&path).is_err());

        // Truncated: refused at open.
        std::fs::write(&path, &good[..good.len() - PAGE_SIZE]).unwrap();
        assert!(Reader::open(&path).is_err());

        // A page's flags damaged: an error when walked.
        let mut page = good.clone();
        page[2 * PAGE_SIZE + 8] = 0x40;
        std::fs::write(&path, &page).unwrap();
        let r = Reader::open(&path).unwrap();
        assert!(r.for_each(&[b"b"], |_| Ok(())).is_err());

        // Not a bbolt file at all.
        std::fs::write(&path, vec![0u8; 3 * PAGE_SIZE]).unwrap();
        assert!(Reader::open(&path).is_err());
    }
}
