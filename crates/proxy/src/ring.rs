//! The ketama consistent-hash ring, placement-compatible with twemproxy (nutcracker) configured
//! with `hash: md5` and `distribution: ketama`, so an operator can move a pool from nutcracker
//! to keepcached without every key changing server.
//!
//! Each server gets points on a 32-bit circle in proportion to its weight: 160 points for an
//! average server, made from 40 md5 digests of `"<name>-<i>"` (i = 0..39), 4 points per digest
//! (each 4-byte group of the digest read little-endian). A key's hash is the first 4 bytes of its
//! md5, little-endian; its server is the one owning the first point at or after the hash, wrapping
//! to the first point of the circle.
//!
//! The ring changes only when a configuration reload adds or removes servers (route.rs): a
//! server that is down keeps its points and its keys fail over to the next pool's replica
//! instead, so a flapping server does not move keys around (what twemproxy calls
//! `auto_eject_hosts: false`).

use md5::{Digest, Md5};

/// twemproxy's `KETAMA_POINTS_PER_SERVER`.
const POINTS_PER_SERVER: u32 = 160;
/// Each md5 digest yields 4 points.
const POINTS_PER_HASH: u32 = 4;

/// A server as the ring sees it: the name hashed for its points, and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// twemproxy's rule, kept for compatibility: the configured name if any, else `host` when
    /// the port is 11211 (libmemcached left the default port out), else `host:port`.
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    value: u32,
    /// Index into the node list the ring was built from.
    node: u32,
}

/// A built ring: points sorted by position.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<Point>,
}

impl Ring {
    /// Builds the ring; `nodes` must not be empty and every weight must be positive (the config
    /// checks both).
    pub fn new(nodes: &[Node]) -> Ring {
        let total_weight: u32 = nodes.iter().map(|n| n.weight).sum();
        let live = nodes.len() as f32;
        let mut points = Vec::with_capacity(nodes.len() * POINTS_PER_SERVER as usize);
        for (index, node) in nodes.iter().enumerate() {
            for hash_index in 0..points_for(node.weight, total_weight, live) / POINTS_PER_HASH {
                let digest = Md5::digest(format!("{}-{hash_index}", node.name).as_bytes());
                for group in digest.chunks_exact(4) {
                    points.push(Point {
                        value: u32::from_le_bytes([group[0], group[1], group[2], group[3]]),
                        node: index as u32,
                    });
                }
            }
        }
        points.sort_by_key(|p| p.value);
        Ring { points }
    }

    /// The index (in the node list) of the server owning `hash`.
    pub fn lookup(&self, hash: u32) -> usize {
        let at = self.points.partition_point(|p| p.value < hash);
        let point = self.points.get(at).unwrap_or(&self.points[0]);
        point.node as usize
    }

    /// The positions where an owner's range begins: between two consecutive ones, every hash
    /// has the same owner.
    pub fn boundaries(&self) -> impl Iterator<Item = u32> + '_ {
        self.points.iter().map(|p| p.value)
    }

    /// How many points the ring holds (for stats and tests).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The number of points of one server, computed in the same float precision as twemproxy so
/// weighted pools round the same way.
fn points_for(weight: u32, total_weight: u32, live: f32) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let share = pct * POINTS_PER_SERVER as f32 / POINTS_PER_HASH as f32 * live;
    // twemproxy adds a double epsilon to the float, then rounds back to float before floorf.
    let share = (f64::from(share) + 0.000_000_000_1) as f32;
    share.floor() as u32 * POINTS_PER_HASH
}

/// The ring position of a key: md5, first four bytes, little-endian (twemproxy's `hash_md5`).
pub fn key_hash(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<Node> {
        names
            .iter()
            .map(|n| Node {
                name: n.to_string(),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn equal_weights_give_160_points_each() {
        let ring = Ring::new(&nodes(&["a", "b", "c"]));
        assert_eq!(ring.len(), 480);
    }

    #[test]
    fn weights_share_points_in_proportion() {
        let mut list = nodes(&["a", "b"]);
        list[0].weight = 3;
        let ring = Ring::new(&list);
        let owned_by_a = ring.points.iter().filter(|p| p.node == 0).count();
        assert_eq!(owned_by_a, 240);
        assert_eq!(ring.len(), 320);
    }

    #[test]
    fn key_hash_is_little_endian_md5_prefix() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(key_hash(b""), 0xd98c_1dd4);
    }

    #[test]
    fn lookup_wraps_past_the_last_point() {
        let ring = Ring::new(&nodes(&["a", "b"]));
        let last = ring.points.last().unwrap();
        assert_eq!(ring.lookup(u32::MAX), ring.points[0].node as usize);
        assert_eq!(ring.lookup(last.value), last.node as usize);
        assert_eq!(ring.lookup(0), ring.points[0].node as usize);
    }

    #[test]
    fn adding_a_server_moves_about_its_share_of_keys() {
        let before = Ring::new(&nodes(&["a", "b", "c"]));
        let after = Ring::new(&nodes(&["a", "b", "c", "d"]));
        let keys = 10_000;
        let moved = (0..keys)
            .map(|i| key_hash(format!("key:{i}").as_bytes()))
            .filter(|h| before.lookup(*h) != after.lookup(*h))
            .count();
        // Ideally a quarter moves, all of them to the new server.
        assert!((1500..3500).contains(&moved), "moved {moved}");
    }
}
