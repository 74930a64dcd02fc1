//! Which item leaves when a shard needs room: S3-FIFO (Yang et al., SOSP 2023) over the log.
//!
//! New items enter a small FIFO queue that holds about a tenth of the shard's bytes. When the
//! small queue is over its share, its oldest item leaves: to the main queue if it was used while
//! it waited, otherwise out of the cache, its key's fingerprint kept in a ghost table. A key that
//! comes back while its fingerprint is still there skips the small queue. The main queue is a
//! CLOCK: its oldest item goes back to the head while its 2-bit use counter is above zero, one
//! count per pass. So one-hit items leave quickly and an item read recently outlives a burst of
//! writes, where LRU would let the burst push it out.
//!
//! Each queue is a run of log segments (`log`), oldest first: a new item is appended to the
//! queue's newest segment, and the oldest item is the one at the queue's cursor in its oldest
//! segment. "Moving to the head" copies the item to the end of the main queue and leaves its
//! old copy dead; the cursor passes dead items at no cost, and a segment is freed whole once
//! the cursor has passed its last item. So a queue costs no memory per item.
//!
//! The policy keeps the queues and the ghost; the shard walks the cursors, since removing or
//! moving an item also changes the index.

use std::collections::VecDeque;

use crate::log::{Loc, Log};

/// The small queue's share of the shard's limit, in tenths as in the paper.
pub(crate) const SMALL_SHARE_DIVISOR: u64 = 10;

const GHOST_MIN_SLOTS: usize = 64;

/// One FIFO queue of segments: the front is the oldest, the back is the one written to.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    segments: VecDeque<u32>,
    /// Where the oldest item not yet passed lies in the front segment.
    cursor: usize,
    /// Log bytes from the cursor to the end of the newest segment, dead items included.
    pub(crate) bytes: u64,
}

impl Queue {
    /// The segment new items go to, if the queue has one.
    pub(crate) fn head(&self) -> Option<u32> {
        self.segments.back().copied()
    }

    pub(crate) fn push_segment(&mut self, id: u32) {
        if self.segments.is_empty() {
            self.cursor = 0;
        }
        self.segments.push_back(id);
    }

    /// The oldest item, freeing the segments the cursor has finished with on the way.
    pub(crate) fn tail(&mut self, log: &mut Log) -> Option<Loc> {
        loop {
            let &front = self.segments.front()?;
            if let Some(at) = log.at(front, self.cursor) {
                return Some(at);
            }
            if self.segments.len() == 1 {
                return None;
            }
            self.segments.pop_front();
            log.free(front);
            self.cursor = 0;
        }
    }

    /// Moves the cursor past the item at the tail, whose log bytes leave the queue.
    pub(crate) fn pass(&mut self, len: usize) {
        self.cursor += len;
        self.bytes -= len as u64;
    }

    /// Whether `id` is the segment the cursor is in.
    pub(crate) fn is_front(&self, id: u32) -> bool {
        self.segments.front() == Some(&id)
    }

    /// Takes a segment out of the queue (its items moved or dead), with the bytes it still
    /// counted, and frees it.
    pub(crate) fn drop_segment(&mut self, log: &mut Log, id: u32) {
        let Some(pos) = self.segments.iter().position(|&s| s == id) else {
            return;
        };
        let from = if pos == 0 { self.cursor } else { 0 };
        self.bytes -= (log.written(id) - from) as u64;
        self.segments.remove(pos);
        if pos == 0 {
            self.cursor = 0;
        }
        log.free(id);
    }

    /// The segments, oldest first.
    #[cfg(test)]
    pub(crate) fn segments(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments.iter().copied()
    }

    /// The oldest segment opened at or after `generation`, with its generation.
    pub(crate) fn segment_from(&self, log: &Log, generation: u64) -> Option<(u32, u64)> {
        // Segments join a queue as they are opened, so their generations increase.
        let i = self
            .segments
            .partition_point(|&id| log.generation(id) < generation);
        let &id = self.segments.get(i)?;
        Some((id, log.generation(id)))
    }

    /// Where the cursor is in the front segment.
    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }
}

/// Remembers keys recently evicted from the small queue, by fingerprint.
#[derive(Debug)]
pub(crate) struct Ghost {
    slots: Vec<u16>,
}

impl Default for Ghost {
    fn default() -> Ghost {
        Ghost {
            slots: vec![0; GHOST_MIN_SLOTS],
        }
    }
}

impl Ghost {
    // The slot comes from the high half of the hash and the fingerprint from its low 16 bits, so
    // they are independent of each other and of the bits that chose the shard.
    fn slot(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.slots.len() - 1)
    }

    fn fingerprint(hash: u64) -> u16 {
        (hash as u16).max(1)
    }

    pub(crate) fn insert(&mut self, hash: u64) {
        let slot = self.slot(hash);
        self.slots[slot] = Self::fingerprint(hash);
    }

    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.slots[self.slot(hash)] == Self::fingerprint(hash)
    }

    /// Keeps at least one slot per item. Doubling copies every slot to both of its possible new
    /// places, so nothing remembered is lost.
    pub(crate) fn fit(&mut self, items: usize) {
        while self.slots.len() < items {
            self.slots.extend_from_within(..);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_growth_keeps_what_it_remembers() {
        let mut ghost = Ghost::default();
        let hashes: Vec<u64> = (0..40u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &h in &hashes {
            ghost.insert(h);
        }
        let before: Vec<bool> = hashes.iter().map(|&h| ghost.contains(h)).collect();
        ghost.fit(1000);
        assert!(ghost.slots.len() >= 1000);
        let after: Vec<bool> = hashes.iter().map(|&h| ghost.contains(h)).collect();
        assert_eq!(before, after);
    }
}
