//! The restartable cache, memcached's `-e FILE`: the items are saved to a file when the server
//! stops gracefully (and on SIGUSR2), and loaded back when it starts again.
//!
//! Items leave the cache through [`keepcached_cache::Cache::export`] and come back through
//! [`keepcached_cache::Cache::import`]; [`format`] lays them out in the file. Times go to the
//! file as unix seconds, since the next process's relative clock starts elsewhere: an item keeps
//! its remaining time to live across the restart, and one that expired meanwhile is dropped.
//! CAS values are not saved; the file records the bound below which the saving process handed
//! them out, and the loading process numbers from there, so that no old CAS matches an item.
//!
//! A save writes `FILE.tmp` in the same directory, syncs it and renames it over FILE, then syncs
//! the directory: FILE is always either the previous save or this one, never half of one, even
//! after a crash or a full disk. Saves are serialized, so a SIGUSR2 save and the shutdown save
//! never write the temporary file at once.
//!
//! A load reads the file once, checking every record before its item is imported. Any damage
//! (truncation, a changed byte, another program's file, another format version) drops what was
//! loaded and leaves the cache empty, with one warning naming the file and the problem: nothing
//! is served from a file that is not whole. When the items do not all fit (a smaller `-m`),
//! the most recently used are kept: the file is read again for the items used after the
//! cut-off second, and once more for those of that second while room is left.

pub mod format;

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keepcached_cache::{accounted_size, ImportResult, SavedItem, Time};

use crate::Server;
use format::{FormatError, Header, Reader, Record, Writer};

/// Large enough that reading and writing cost a system call per megabyte, not per item.
const IO_BUFFER: usize = 1024 * 1024;

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub items: u64,
    /// Keys' and values' bytes.
    pub bytes: u64,
    pub duration: Duration,
}

/// What a load did with the file's items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    pub items: u64,
    /// Keys' and values' bytes of the items loaded.
    pub bytes: u64,
    /// Items whose time to live ran out before the load.
    pub expired: u64,
    /// Items over this server's `-I`.
    pub too_large: u64,
    /// Items left out because the cache (`-m`) was full.
    pub no_room: u64,
}

/// The file given with `-e`.
#[derive(Debug)]
pub struct MemoryFile {
    path: PathBuf,
    /// Held for the whole of a save.
    saving: Mutex<()>,
}

/// One pass over the file: which items it imports, and what it counts.
#[derive(Debug, Default)]
struct Pass {
    loaded: Loaded,
    /// (last access, accounted size) of every live item that is not too large, when asked for.
    ages: Option<Vec<(u64, u64)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MemoryFile {
    pub fn new(path: PathBuf) -> MemoryFile {
        MemoryFile {
            path,
            saving: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file a save writes before renaming it over [`MemoryFile::path`].
    pub fn temp_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".tmp");
        PathBuf::from(name)
    }

    /// Writes every live item to the file, replacing the previous save only once this one is
    /// complete and on disk. Clients keep being served meanwhile. Logs the outcome.
    pub fn save(&self, server: &Server) -> io::Result<Saved> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let temp = self.temp_path();
        match self.write(server, &temp) {
            Ok((items, bytes)) => {
                let saved = Saved {
                    items,
                    bytes,
                    duration: started.elapsed(),
                };
                tracing::info!(
                    "saved {} items ({} bytes) to {} in {} ms",
                    saved.items,
                    saved.bytes,
                    self.path.display(),
                    saved.duration.as_millis()
                );
                Ok(saved)
            }
            Err(e) => {
                let _ = fs::remove_file(&temp);
                tracing::warn!(
                    "saving the cache to {} failed: {e}; the file is left as it was",
                    self.path.display()
                );
                Err(e)
            }
        }
    }

    fn write(&self, server: &Server, temp: &Path) -> io::Result<(u64, u64)> {
        let clock = &server.clock;
        let header = Header {
            saved_at: unix_now(),
            max_bytes: server.settings.max_bytes,
            item_size_max: server.settings.item_size_max as u64,
            cas_bound: server.cache.cas_bound(),
        };
        let file = File::create(temp)?;
        let mut writer = Writer::new(BufWriter::with_capacity(IO_BUFFER, file), &header)?;
        let unix = |rel: Time| u64::try_from(clock.to_unix(rel)).unwrap_or(0);
        server.cache.export(clock.now(), |item| {
            writer.item(&Record {
                key: item.key,
                value: item.value,
                flags: item.flags,
                expires_at: if item.exptime == 0 {
                    0
                } else {
                    unix(item.exptime)
                },
                last_access: unix(item.last_access),
                fetched: item.fetched,
                stale: item.stale,
                binary_key: item.binary_key,
            })
        })?;
        let (out, totals) = writer.finish()?;
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(temp, &self.path)?;
        // The rename is durable only once the directory is on disk too.
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
        Ok((totals.items, totals.bytes))
    }

    /// Loads the file's items into the server's (empty) cache, before it serves anyone. A
    /// missing file leaves the cache empty with a note; a damaged one leaves it empty with a
    /// warning. Never fails: a cache that starts cold beats one that does not start.
    pub fn load(&self, server: &Server) -> Loaded {
        let started = Instant::now();
        let path = self.path.display();
        match self.load_most_recent(server) {
            Ok(None) => {
                tracing::info!("{path} does not exist yet: starting with an empty cache");
                Loaded::default()
            }
            Ok(Some((loaded, header))) => {
                tracing::info!(
                    "loaded {} items ({} bytes) from {path} in {} ms; saved {} s ago; left out: \
                     {} expired, {} over -I, {} for want of room (-m {} MB, was {} MB)",
                    loaded.items,
                    loaded.bytes,
                    started.elapsed().as_millis(),
                    unix_now().saturating_sub(header.saved_at),
                    loaded.expired,
                    loaded.too_large,
                    loaded.no_room,
                    server.settings.max_bytes >> 20,
                    header.max_bytes >> 20,
                );
                loaded
            }
            Err(e) => {
                server.cache.clear();
                tracing::warn!("cannot load {path}: {e}; starting with an empty cache");
                Loaded::default()
            }
        }
    }

    /// Loads every item; when some did not fit, starts over with the most recently used.
    fn load_most_recent(&self, server: &Server) -> Result<Option<(Loaded, Header)>, FormatError> {
        let Some((first, header)) = self.pass(server, |_| true, true)? else {
            return Ok(None);
        };
        let live = first.loaded.items + first.loaded.no_room;
        let ages = first.ages.unwrap_or_default();
        let Some(cutoff) = cutoff(ages, server.settings.max_bytes) else {
            return Ok(Some((first.loaded, header)));
        };
        server.cache.clear();
        let newer = self.pass(server, |at| at > cutoff, false)?;
        let tied = self.pass(server, |at| at == cutoff, false)?;
        let (Some((newer, _)), Some((tied, _))) = (newer, tied) else {
            return Err(io::Error::from(io::ErrorKind::NotFound).into());
        };
        let items = newer.loaded.items + tied.loaded.items;
        Ok(Some((
            Loaded {
                items,
                bytes: newer.loaded.bytes + tied.loaded.bytes,
                no_room: live - items,
                ..first.loaded
            },
            header,
        )))
    }

    /// Reads the whole file, importing the live items whose last access `wanted` accepts.
    /// `None` when there is no file.
    fn pass(
        &self,
        server: &Server,
        wanted: impl Fn(u64) -> bool,
        collect_ages: bool,
    ) -> Result<Option<(Pass, Header)>, FormatError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut reader = Reader::new(BufReader::with_capacity(IO_BUFFER, file))?;
        let header = *reader.header();
        // Before the first import takes a CAS: none of the saving process's comes back.
        server.cache.raise_cas_bound(header.cas_bound);
        let clock = &server.clock;
        let now = clock.now();
        let started = clock.process_started();
        let now_unix = u64::try_from(clock.to_unix(now)).unwrap_or(0);
        let rel = |unix: u64| {
            let secs = i64::try_from(unix)
                .unwrap_or(i64::MAX)
                .saturating_sub(started);
            secs.clamp(0, i64::from(u32::MAX)) as Time
        };
        let mut pass = Pass {
            ages: collect_ages.then(Vec::new),
            ..Pass::default()
        };
        while let Some(r) = reader.next_item()? {
            if r.expires_at != 0 && r.expires_at <= now_unix {
                pass.loaded.expired += 1;
                continue;
            }
            if !wanted(r.last_access) {
                continue;
            }
            let item = SavedItem {
                key: r.key,
                value: r.value,
                flags: r.flags,
                exptime: if r.expires_at == 0 {
                    0
                } else {
                    rel(r.expires_at)
                },
                // An access before this process started is as old as this clock can say.
                last_access: rel(r.last_access).min(now),
                fetched: r.fetched,
                stale: r.stale,
                binary_key: r.binary_key,
            };
            let size = accounted_size(r.key.len(), r.value.len());
            match server.cache.import(&item, now) {
                ImportResult::Stored => {
                    pass.loaded.items += 1;
                    pass.loaded.bytes += (r.key.len() + r.value.len()) as u64;
                }
                ImportResult::TooLarge => {
                    pass.loaded.too_large += 1;
                    continue;
                }
                ImportResult::NoRoom => pass.loaded.no_room += 1,
            }
            if let Some(ages) = &mut pass.ages {
                ages.push((r.last_access, size));
            }
        }
        Ok(Some((pass, header)))
    }
}

/// The last-access second from which on the most recently used items fill `limit` bytes, or
/// `None` when they all fit.
fn cutoff(mut ages: Vec<(u64, u64)>, limit: u64) -> Option<u64> {
    if ages.iter().map(|&(_, size)| size).sum::<u64>() <= limit {
        return None;
    }
    ages.sort_unstable_by_key(|&(at, _)| std::cmp::Reverse(at));
    let mut total = 0;
    for (at, size) in ages {
        total += size;
        if total > limit {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use keepcached_cache::StoreMode;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keepcached-persist-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn server(megabytes: u64) -> std::sync::Arc<Server> {
        Server::new(Settings {
            max_bytes: megabytes << 20,
            threads: 1,
            ..Settings::default()
        })
    }

    fn value(i: usize) -> Vec<u8> {
        format!("{i:0>width$}", width = 100 + i % 300).into_bytes()
    }

    fn fill(server: &Server, n: usize) {
        let now = server.clock.now();
        for i in 0..n {
            let exptime = if i % 2 == 0 { 0 } else { now + 3600 };
            let key = format!("key:{i}");
            server.cache.store(
                StoreMode::Set,
                key.as_bytes(),
                i as u32,
                exptime,
                &value(i),
                now,
            );
        }
    }

    #[test]
    fn save_then_load_keeps_items_flags_and_expiry() {
        let dir = temp_dir("round-trip");
        let file = MemoryFile::new(dir.join("cache"));
        let a = server(8);
        fill(&a, 2000);
        let saved = file.save(&a).unwrap();
        assert_eq!(saved.items, 2000);
        assert!(!file.temp_path().exists());
        let b = server(8);
        let loaded = file.load(&b);
        assert_eq!(loaded.items, 2000);
        let now = b.clock.now();
        for i in 0..2000 {
            let key = format!("key:{i}");
            let (v, flags, exptime) = b
                .cache
                .get(key.as_bytes(), now, |item| {
                    (item.value.to_vec(), item.flags, item.exptime)
                })
                .hit()
                .unwrap();
            assert_eq!((v, flags), (value(i), i as u32));
            if i % 2 == 0 {
                assert_eq!(exptime, 0);
            } else {
                let left = exptime - now;
                assert!((3598..=3601).contains(&left), "{left} s left");
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_or_damaged_file_leaves_the_cache_empty() {
        let dir = temp_dir("damaged");
        let file = MemoryFile::new(dir.join("cache"));
        let b = server(8);
        assert_eq!(file.load(&b), Loaded::default());
        let a = server(8);
        fill(&a, 500);
        file.save(&a).unwrap();
        let good = fs::read(file.path()).unwrap();
        for cut in [good.len() - 1, good.len() / 2, 100, 10, 0] {
            fs::write(file.path(), &good[..cut]).unwrap();
            let b = server(8);
            assert_eq!(file.load(&b), Loaded::default(), "cut at {cut}");
            assert_eq!(b.cache.stats().curr_items, 0, "cut at {cut}");
        }
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        fs::write(file.path(), &flipped).unwrap();
        let b = server(8);
        assert_eq!(file.load(&b), Loaded::default());
        assert_eq!(b.cache.stats().curr_items, 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_smaller_cache_keeps_the_most_recently_used() {
        let dir = temp_dir("smaller");
        let file = MemoryFile::new(dir.join("cache"));
        let a = server(8);
        let now = a.clock.now();
        // Old items, then newer ones five seconds later, each half of a 2 MB cache or more.
        let big = vec![b'x'; 4000];
        for i in 0..300 {
            let key = format!("old:{i}");
            a.cache
                .store(StoreMode::Set, key.as_bytes(), 0, 0, &big, now);
        }
        a.clock.advance(5);
        for i in 0..300 {
            let key = format!("new:{i}");
            a.cache
                .store(StoreMode::Set, key.as_bytes(), 0, 0, &big, a.clock.now());
        }
        file.save(&a).unwrap();
        let b = server(2);
        let loaded = file.load(&b);
        let stats = b.cache.stats();
        assert_eq!(stats.curr_items, loaded.items);
        assert_eq!(loaded.items + loaded.no_room, 600);
        assert!(loaded.no_room > 0);
        let now = b.clock.now();
        let present = |prefix: &str| {
            (0..300)
                .filter(|i| {
                    let key = format!("{prefix}:{i}");
                    b.cache.get(key.as_bytes(), now, |_| ()).is_hit()
                })
                .count() as u64
        };
        let (old, new) = (present("old"), present("new"));
        assert_eq!(old + new, loaded.items);
        assert!(
            new > 250,
            "the newer items come first: {new} new, {old} old"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cutoff_is_the_second_where_the_limit_is_reached() {
        assert_eq!(cutoff(vec![(5, 10), (7, 10)], 20), None);
        assert_eq!(cutoff(vec![(5, 10), (7, 10), (9, 10)], 20), Some(5));
        assert_eq!(cutoff(vec![(9, 10), (9, 10), (9, 10)], 20), Some(9));
    }
}
