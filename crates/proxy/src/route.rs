//! Where a key lives: one server from each pool, main pool first.
//!
//! Each pool is a ketama [`Ring`] over its servers. A key is hashed once and looked up in every
//! ring; the resulting servers, in pool order, are the key's replicas. A server listed in two
//! pools is one [`Backend`] (one set of connections, one health state) and appears once in a
//! replica set.

use std::sync::Arc;

use keepcached_runtime::Workers;

use crate::backend::Backend;
use crate::config::{BackendConfig, PoolSpec, ResyncConfig, ServerSpec, MAX_POOLS};
use crate::health::{ReadRank, State};
use crate::ring::{key_hash, Ring};

/// A pool as routed: its ring, and for each ring node the index of its backend.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    ring: Ring,
    pub servers: Vec<usize>,
    /// The servers as configured: a reload that gives a pool the same list leaves it as it is.
    specs: Vec<ServerSpec>,
}

impl Pool {
    /// The backend owning ring position `hash`.
    fn owner(&self, hash: u32) -> usize {
        self.servers[self.ring.lookup(hash)]
    }
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
///
/// A backend is named by its index in `backends` everywhere (replica sets, supervisors), so
/// the list only grows: a reload appends the servers it adds and leaves a retired entry
/// ([`Backend::retired`]) where a server it removes was. An index taken from one router means
/// the same server, or its retired entry, in every later one.
#[derive(Debug, Clone)]
pub struct Router {
    pub pools: Vec<Pool>,
    pub backends: Vec<Arc<Backend>>,
}

/// What a reload changes in the routing (see [`Router::reconfigure`]).
#[derive(Debug)]
pub struct Reconfigured {
    pub router: Router,
    /// Servers new to the proxy: they start flushed and cold, and are warmed before they are
    /// read.
    pub added: Vec<usize>,
    /// Servers no pool names any more.
    pub removed: Vec<usize>,
    /// Servers kept that take over keys they did not hold under the old rings: they may hold
    /// old values of those keys from an earlier configuration, so they are flushed and warmed.
    pub gaining: Vec<usize>,
}

/// What a server's backend settings are when a reload starts it.
pub struct Start<'a> {
    pub settings: &'a BackendConfig,
    pub resync: &'a ResyncConfig,
    pub missed_limit: usize,
    pub workers: &'a Workers,
}

impl Start<'_> {
    fn backend(&self, addr: &str) -> Arc<Backend> {
        Arc::new(Backend::start(
            addr,
            self.settings,
            self.resync,
            self.missed_limit,
            self.workers,
        ))
    }
}

/// Routes `specs` over `backends`: a server already there (and not retired) is the same
/// backend; another is appended, started by `start`.
fn route(specs: &[PoolSpec], backends: &mut Vec<Arc<Backend>>, start: &Start<'_>) -> Vec<Pool> {
    let mut routed = Vec::with_capacity(specs.len());
    for pool in specs {
        let nodes: Vec<_> = pool.servers.iter().map(|s| s.ring_node()).collect();
        let servers = pool
            .servers
            .iter()
            .map(|spec| {
                let addr = spec.address();
                match backends
                    .iter()
                    .position(|b| *b.addr == *addr && !b.is_retired())
                {
                    Some(i) => i,
                    None => {
                        backends.push(start.backend(&addr));
                        backends.len() - 1
                    }
                }
            })
            .collect();
        routed.push(Pool {
            name: pool.name.clone(),
            ring: Ring::new(&nodes),
            servers,
            specs: pool.servers.clone(),
        });
    }
    routed
}

impl Router {
    /// Builds the rings and starts the backends' connection tasks.
    pub fn start(pools: &[PoolSpec], start: &Start<'_>) -> Router {
        let mut backends = Vec::new();
        let pools = route(pools, &mut backends, start);
        Router { pools, backends }
    }

    /// The servers in service (not removed by a reload).
    pub fn live(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().filter(|b| !b.is_retired())
    }

    /// The routing of `specs`, reached from this one without a stale read or a lost write, or
    /// why it cannot be.
    ///
    /// Only what keeps every key readable from a server that holds it is done: at least one
    /// pool must stay exactly as it is, with every server up, so each key keeps a replica
    /// holding its latest value while the servers that are new to it (added, or taking over
    /// another's keys) are flushed and warmed from it. Pools may be added and removed, and
    /// servers added to or removed from the other pools. With one pool, or no pool that stays
    /// up, the change waits for a restart.
    pub fn reconfigure(
        &self,
        specs: &[PoolSpec],
        start: &Start<'_>,
    ) -> Result<Reconfigured, String> {
        let unchanged = |spec: &PoolSpec| {
            self.pools
                .iter()
                .find(|p| p.name == spec.name && p.specs == spec.servers)
        };
        let anchor = specs
            .iter()
            .filter_map(unchanged)
            .find(|pool| pool.servers.iter().all(|&id| self.backends[id].is_up()));
        if anchor.is_none() {
            return Err(if specs.iter().any(|s| unchanged(s).is_some()) {
                "no pool that stays as it is has every server up: the keys that move would have \
                 no replica holding them; reload again once they are up"
                    .to_string()
            } else {
                "no pool stays as it is: the keys that move would have no replica holding them \
                 while the new servers are warmed"
                    .to_string()
            });
        }
        let new_servers = specs
            .iter()
            .flat_map(|p| &p.servers)
            .filter(|s| !self.live().any(|b| *b.addr == s.address()))
            .count();
        if self.backends.len() + new_servers > usize::from(u16::MAX) {
            return Err("too many servers added over the proxy's life".to_string());
        }
        let mut backends = self.backends.clone();
        let before = backends.len();
        let pools = route(specs, &mut backends, start);
        let used = |id: usize| pools.iter().any(|p| p.servers.contains(&id));
        let removed: Vec<usize> = (0..before)
            .filter(|&id| !self.backends[id].is_retired() && !used(id))
            .collect();
        for &id in &removed {
            backends[id] = Arc::new(backends[id].retired());
        }
        let mut gaining = Vec::new();
        for pool in &pools {
            let old = self.pools.iter().find(|p| p.name == pool.name);
            for &id in &pool.servers {
                if id < before && !gaining.contains(&id) && gains(old, pool, id) {
                    gaining.push(id);
                }
            }
        }
        let added = (before..backends.len()).collect();
        Ok(Reconfigured {
            router: Router { pools, backends },
            added,
            removed,
            gaining,
        })
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

/// Whether backend `id` of pool `new` owns a ring position that it did not own in the pool's
/// old version (a pool it was not in: every position it owns). Ownership changes only at a
/// ring's boundaries, so those of both rings are the positions to compare.
fn gains(old: Option<&Pool>, new: &Pool, id: usize) -> bool {
    let Some(old) = old else {
        return true;
    };
    if old.specs == new.specs {
        return false;
    }
    old.ring
        .boundaries()
        .chain(new.ring.boundaries())
        .any(|hash| new.owner(hash) == id && old.owner(hash) != id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, servers: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            servers: servers
                .iter()
                .map(|s| ServerSpec::parse(s).expect("server"))
                .collect(),
        }
    }

    /// Every live backend marked up (no supervisor runs here; nothing listens on these ports,
    /// and a connect nobody asked for counts no failure).
    fn all_up(router: &Router) {
        for backend in router.live() {
            backend.health.set_state(State::Up, "test");
        }
    }

    fn ids(router: &Router, addrs: &[&str]) -> Vec<usize> {
        addrs
            .iter()
            .map(|a| {
                router
                    .backends
                    .iter()
                    .position(|b| &*b.addr == *a && !b.is_retired())
                    .expect("a backend")
            })
            .collect()
    }

    /// Runs `test` with one worker thread and the default backend and resync settings.
    fn with_start(test: impl FnOnce(&Start<'_>)) {
        let workers = Workers::start(1, "route-test").expect("workers");
        let (settings, resync) = (BackendConfig::default(), ResyncConfig::default());
        test(&Start {
            settings: &settings,
            resync: &resync,
            missed_limit: 10,
            workers: &workers,
        });
    }

    #[test]
    fn a_reload_moves_keys_only_while_a_pool_that_stays_holds_them() {
        with_start(|start| {
            let (a, b, c) = ("127.0.0.1:9", "127.0.0.1:10", "127.0.0.1:11");
            let two = [pool("main", &[a]), pool("backup", &[b])];
            let router = Router::start(&two, start);
            all_up(&router);

            // Added to main: only the new server is new to keys; `a` only gives keys away.
            let grown = [pool("main", &[a, c]), pool("backup", &[b])];
            let next = router.reconfigure(&grown, start).expect("applied");
            assert_eq!(
                (next.added.clone(), next.removed.clone()),
                (vec![2], vec![])
            );
            assert!(next.gaining.is_empty(), "{:?}", next.gaining);
            let router = next.router;
            all_up(&router);
            assert_eq!(router.pools[0].servers, vec![0, 2]);

            // Removed again: `a` takes its keys back and may hold old values of them.
            let next = router.reconfigure(&two, start).expect("applied");
            assert_eq!(next.removed, vec![2]);
            assert_eq!(next.gaining, ids(&router, &[a]));
            assert!(next.added.is_empty());
            let router = next.router;
            assert!(router.backends[2].is_retired());
            assert_eq!(router.live().count(), 2);
            // Added once more, it is a new backend: its old entry stays retired.
            let next = router.reconfigure(&grown, start).expect("applied");
            assert_eq!(next.added, vec![3]);
            let router = next.router;

            // One pool, or no unchanged pool with every server up: refused.
            let single = Router::start(&[pool("main", &[a])], start);
            all_up(&single);
            assert!(single.reconfigure(&[pool("main", &[a, c])], start).is_err());
            router.backends[0].health.set_state(State::Down, "test");
            let backup_grows = [pool("main", &[a, c]), pool("backup", &[b, c])];
            assert!(router.reconfigure(&backup_grows, start).is_err());
        });
    }

    #[test]
    fn with_weights_a_kept_server_can_take_over_keys_when_one_is_added() {
        with_start(|start| {
            let (a, b, c, x) = (
                "127.0.0.1:9:3",
                "127.0.0.1:10",
                "127.0.0.1:11",
                "127.0.0.1:12",
            );
            let router = Router::start(&[pool("main", &[a, b]), pool("backup", &[x])], start);
            all_up(&router);
            // ketama gives each server points in proportion to its share of the pool's weight
            // times the number of servers: `b` (weight 1 of 4, then 1 of 5) gets more points.
            let next = router
                .reconfigure(&[pool("main", &[a, b, c]), pool("backup", &[x])], start)
                .expect("applied");
            assert!(next.gaining.contains(&1), "{:?}", next.gaining);
        });
    }
}
