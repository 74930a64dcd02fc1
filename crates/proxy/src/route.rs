//! Where a key lives: one server from each pool, main pool first.
//!
//! Each pool is a ketama [`Ring`] over its servers. A key is hashed once and looked up in every
//! ring; the resulting servers, in pool order, are the key's replicas. A server listed in two
//! pools is one [`Backend`] (one set of connections, one health state) and appears once in a
//! replica set.

use std::sync::Arc;

use keepcached_runtime::Workers;
use tokio::sync::watch;

use crate::backend::Backend;
use crate::config::{BackendConfig, PoolSpec, ResyncConfig, MAX_POOLS};
use crate::health::{ReadRank, State};
use crate::ring::{key_hash, Ring};

/// A pool as routed: its ring, and for each ring node the index of its backend.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    ring: Ring,
    pub servers: Vec<usize>,
}

/// The replicas of one key: backend indices, main pool first, without repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    ids: [u16; MAX_POOLS],
    len: u8,
}

impl Replicas {
    pub fn as_slice(&self) -> &[u16] {
        &self.ids[..self.len as usize]
    }
}

/// All pools and all backends of the proxy.
#[derive(Debug)]
pub struct Router {
    pub pools: Vec<Pool>,
    pub backends: Vec<Arc<Backend>>,
}

impl Router {
    /// Builds the rings and starts the backends' connection tasks.
    pub fn start(
        pools: &[PoolSpec],
        settings: &BackendConfig,
        resync: &ResyncConfig,
        missed_limit: usize,
        shutdown: &watch::Receiver<bool>,
        workers: &Workers,
    ) -> Router {
        let mut backends: Vec<Arc<Backend>> = Vec::new();
        let mut routed = Vec::with_capacity(pools.len());
        for pool in pools {
            let nodes: Vec<_> = pool.servers.iter().map(|s| s.ring_node()).collect();
            let servers = pool
                .servers
                .iter()
                .map(|spec| {
                    let addr = spec.address();
                    match backends.iter().position(|b| *b.addr == *addr) {
                        Some(i) => i,
                        None => {
                            backends.push(Arc::new(Backend::start(
                                &addr,
                                settings,
                                resync,
                                missed_limit,
                                shutdown.clone(),
                                workers,
                            )));
                            backends.len() - 1
                        }
                    }
                })
                .collect();
            routed.push(Pool {
                name: pool.name.clone(),
                ring: Ring::new(&nodes),
                servers,
            });
        }
        Router {
            pools: routed,
            backends,
        }
    }

    /// The replicas of `key`. The key is hashed only for a pool of more than one server: a
    /// pool of one, the usual case, has one answer whatever the key.
    pub fn replicas(&self, key: &[u8]) -> Replicas {
        let mut hash = None;
        let mut replicas = Replicas {
            ids: [0; MAX_POOLS],
            len: 0,
        };
        for pool in &self.pools {
            let node = match pool.servers.len() {
                1 => 0,
                _ => pool.ring.lookup(*hash.get_or_insert_with(|| key_hash(key))),
            };
            let id = pool.servers[node] as u16;
            if !replicas.as_slice().contains(&id) {
                replicas.ids[replicas.len as usize] = id;
                replicas.len += 1;
            }
        }
        replicas
    }

    /// The replicas of `key` that may be read for it, best first: those that hold its latest
    /// value in pool order, then warming ones (never stale, maybe a miss). Servers that are
    /// down, or that missed a write of the key and are not yet repaired, are left out.
    pub fn read_order(&self, key: &[u8]) -> Replicas {
        let all = self.replicas(key);
        if all
            .as_slice()
            .iter()
            .all(|&id| self.backend(id).state() == State::Up)
        {
            return all;
        }
        // Ranked once each, then taken best rank first: a few entries, on the stack (this runs
        // for every key while any of its replicas is not up).
        let mut ranks = [None; MAX_POOLS];
        for (rank, &id) in ranks.iter_mut().zip(all.as_slice()) {
            *rank = self.backend(id).health.read_rank(key);
        }
        let mut order = Replicas {
            ids: [0; MAX_POOLS],
            len: 0,
        };
        for wanted in [ReadRank::Current, ReadRank::Cold] {
            for (rank, &id) in ranks.iter().zip(all.as_slice()) {
                if *rank == Some(wanted) {
                    order.ids[order.len as usize] = id;
                    order.len += 1;
                }
            }
        }
        order
    }

    pub fn backend(&self, id: u16) -> &Arc<Backend> {
        &self.backends[id as usize]
    }
}
