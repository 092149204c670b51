//! The password-hashing pool: at most a fixed number of Argon2 hashes at once, a bounded
//! wait queue served fairly (round-robin over the waiting addresses), and at most a few
//! attempts in flight per address. What does not fit is refused at once ([`Busy`]): nothing
//! waits without bound, and the memory Argon2 takes is bounded by the number of hashes that
//! may run together.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lock;

/// The pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    /// Most hashes running at once.
    pub concurrency: usize,
    /// Most attempts waiting for a hash slot.
    pub queue: usize,
    /// Most attempts in flight (running or waiting) from one address.
    pub per_address: usize,
}

/// Why the pool refused an attempt: it is full, or the address has too many in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy {
    /// When a retry has a fair chance (an estimate from the queue and recent hash times).
    pub retry_after: Duration,
}

/// A bounded, fair pool for password hashing; hashes run on `blocking`'s threads, never on
/// the async runtime's.
#[derive(Clone)]
pub(crate) struct HashPool {
    inner: Arc<Inner>,
}

struct Inner {
    limits: PoolLimits,
    state: Mutex<PoolState>,
    /// Hashes executing now, and the most ever seen at once (counted on the hashing
    /// threads, around the work itself).
    executing: AtomicUsize,
    most_executing: AtomicUsize,
    /// Jobs finished.
    completed: AtomicU64,
}

/// What a login server's password-hashing pool is doing, and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashingStats {
    /// Hashing slots taken now (a hash running, or about to).
    pub running: usize,
    /// Attempts waiting for a slot now.
    pub queued: usize,
    /// The most hashing jobs that ever ran at once, counted on the hashing threads.
    pub most_concurrent: usize,
    /// Hashing jobs finished (a job is one command's work: one or two hashes).
    pub completed: u64,
}

#[derive(Default)]
struct PoolState {
    /// Slots taken (a hash running, or granted and about to run).
    running: usize,
    /// Attempts waiting, over all addresses.
    queued: usize,
    /// Attempts in flight (running or waiting) per address.
    per_address: HashMap<IpAddr, usize>,
    /// The waiters of each address, oldest first.
    waiting: HashMap<IpAddr, VecDeque<Waiter>>,
    /// Addresses with waiters, in the order they are served (one attempt per turn).
    turns: VecDeque<IpAddr>,
    /// Ids for waiters.
    next_id: u64,
    /// Recent hash time (an exponential moving average), for the retry hint.
    hash_time: Option<Duration>,
}

struct Waiter {
    id: u64,
    grant: async_channel::Sender<()>,
}

impl PoolState {
    /// Hands free slots to waiters, one address at a time in turn.
    fn dispatch(&mut self, limits: &PoolLimits) {
        while self.running < limits.concurrency {
            let Some(addr) = self.turns.pop_front() else {
                return;
            };
            let Some(queue) = self.waiting.get_mut(&addr) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                self.waiting.remove(&addr);
                continue;
            };
            if queue.is_empty() {
                self.waiting.remove(&addr);
            } else {
                self.turns.push_back(addr);
            }
            self.queued -= 1;
            // The waiter's receiver lives until its guard has taken the lock, so the grant
            // always arrives; the slot is theirs from now on.
            let _ = waiter.grant.try_send(());
            self.running += 1;
        }
    }

    /// One attempt from `addr` is over (it held a slot or waited).
    fn leave(&mut self, addr: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&addr);
            }
        }
    }

    fn retry_after(&self, limits: &PoolLimits) -> Duration {
        let hash = self.hash_time.unwrap_or(Duration::from_millis(100));
        let rounds = (self.queued + self.running) / limits.concurrency.max(1) + 1;
        let wait = hash.saturating_mul(rounds as u32);
        Duration::from_secs(wait.as_secs_f64().ceil().clamp(1.0, 60.0) as u64)
    }
}

/// A taken slot; gives it back (and hands it on) when dropped.
struct Slot {
    inner: Arc<Inner>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.running -= 1;
        state.leave(self.addr);
        state.dispatch(&self.inner.limits);
    }
}

/// A place in the queue; leaves it if dropped before its slot was granted, and gives the
/// slot back if it was granted but not yet taken up.
struct Place {
    inner: Arc<Inner>,
    addr: IpAddr,
    id: u64,
    granted: async_channel::Receiver<()>,
    taken: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut state = lock(&self.inner.state);
        let queue = state.waiting.get_mut(&self.addr);
        let position = queue
            .as_ref()
            .and_then(|q| q.iter().position(|w| w.id == self.id));
        match (queue, position) {
            (Some(queue), Some(i)) => {
                queue.remove(i);
                if queue.is_empty() {
                    state.waiting.remove(&self.addr);
                    state.turns.retain(|a| *a != self.addr);
                }
                state.queued -= 1;
                state.leave(self.addr);
            }
            // Granted meanwhile: the slot is ours to give back.
            _ => {
                state.running -= 1;
                state.leave(self.addr);
                state.dispatch(&self.inner.limits);
            }
        }
    }
}

impl HashPool {
    /// A pool with these bounds (each at least 1).
    pub(super) fn new(limits: PoolLimits) -> Self {
        let limits = PoolLimits {
            concurrency: limits.concurrency.max(1),
            queue: limits.queue,
            per_address: limits.per_address.max(1),
        };
        Self {
            inner: Arc::new(Inner {
                limits,
                state: Mutex::new(PoolState::default()),
                executing: AtomicUsize::new(0),
                most_executing: AtomicUsize::new(0),
                completed: AtomicU64::new(0),
            }),
        }
    }

    /// What the pool is doing now, and has done.
    pub(super) fn stats(&self) -> HashingStats {
        let state = lock(&self.inner.state);
        HashingStats {
            running: state.running,
            queued: state.queued,
            most_concurrent: self.inner.most_executing.load(Ordering::SeqCst),
            completed: self.inner.completed.load(Ordering::SeqCst),
        }
    }

    /// Runs `work` (which hashes) for a client at `addr` on a blocking thread once a slot is
    /// free, or refuses at once if the queue is full or `addr` has too many attempts in
    /// flight. The slot is held until `work` returns, even if the caller stops waiting.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        addr: IpAddr,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let slot = self.admit(addr)?.take().await;
        let inner = self.inner.clone();
        let result = blocking::unblock(move || {
            let now = inner.executing.fetch_add(1, Ordering::SeqCst) + 1;
            inner.most_executing.fetch_max(now, Ordering::SeqCst);
            let started = Instant::now();
            let result = work();
            let took = started.elapsed();
            inner.executing.fetch_sub(1, Ordering::SeqCst);
            inner.completed.fetch_add(1, Ordering::SeqCst);
            {
                let mut state = lock(&inner.state);
                state.hash_time = Some(match state.hash_time {
                    Some(avg) => (avg * 7 + took) / 8,
                    None => took,
                });
            }
            drop(slot);
            result
        })
        .await;
        Ok(result)
    }

    /// Takes a slot for `addr` now, or a place in the queue, or refuses.
    fn admit(&self, addr: IpAddr) -> Result<Admitted, Busy> {
        let limits = &self.inner.limits;
        let mut state = lock(&self.inner.state);
        let mine = state.per_address.get(&addr).copied().unwrap_or(0);
        let full = state.running >= limits.concurrency && state.queued >= limits.queue;
        if mine >= limits.per_address || full {
            return Err(Busy {
                retry_after: state.retry_after(limits),
            });
        }
        *state.per_address.entry(addr).or_default() += 1;
        let slot = |inner: &Arc<Inner>| Slot {
            inner: inner.clone(),
            addr,
        };
        // Nobody waits (the queue is served before newcomers), and a slot is free.
        if state.running < limits.concurrency && state.queued == 0 {
            state.running += 1;
            return Ok(Admitted::Now(slot(&self.inner)));
        }
        let (grant, granted) = async_channel::bounded(1);
        let id = state.next_id;
        state.next_id += 1;
        state.queued += 1;
        let queue = state.waiting.entry(addr).or_default();
        let first = queue.is_empty();
        queue.push_back(Waiter { id, grant });
        if first {
            state.turns.push_back(addr);
        }
        state.dispatch(limits);
        Ok(Admitted::Later(Place {
            inner: self.inner.clone(),
            addr,
            id,
            granted,
            taken: false,
        }))
    }
}

/// A slot taken at once, or a place in the queue.
enum Admitted {
    Now(Slot),
    Later(Place),
}

impl Admitted {
    /// Waits for the slot.
    async fn take(self) -> Slot {
        match self {
            Admitted::Now(slot) => slot,
            Admitted::Later(mut place) => {
                // The sender is dropped only after a grant, or with the pool.
                let _ = place.granted.recv().await;
                place.taken = true;
                Slot {
                    inner: place.inner.clone(),
                    addr: place.addr,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn pool(concurrency: usize, queue: usize, per_address: usize) -> HashPool {
        HashPool::new(PoolLimits {
            concurrency,
            queue,
            per_address,
        })
    }

    /// Waits until the pool's counts are (running, queued).
    fn until(pool: &HashPool, running: usize, queued: usize) {
        for _ in 0..5000 {
            let stats = pool.stats();
            if (stats.running, stats.queued) == (running, queued) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("pool at {:?}, not ({running}, {queued})", pool.stats());
    }

    /// Runs a job for `from` on a thread of its own: it records `name` in `order` when it
    /// runs, then waits for `gate`. Its result comes back on the handle.
    fn job(
        pool: &HashPool,
        from: IpAddr,
        name: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
        gate: &async_channel::Receiver<()>,
    ) -> std::thread::JoinHandle<Result<(), Busy>> {
        let (pool, order, gate) = (pool.clone(), order.clone(), gate.clone());
        std::thread::spawn(move || {
            future::block_on(pool.run(from, move || {
                lock(&order).push(name);
                let _ = gate.recv_blocking();
            }))
        })
    }

    #[test]
    fn bounds_refuse_at_once_and_turns_are_fair() {
        let pool = pool(1, 4, 3);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = async_channel::unbounded();
        let a = addr(2);
        let mut jobs = vec![job(&pool, a, "a1", &order, &gate)];
        until(&pool, 1, 0);
        for (i, name) in ["a2", "a3"].into_iter().enumerate() {
            jobs.push(job(&pool, a, name, &order, &gate));
            until(&pool, 1, i + 1);
        }
        // A fourth from the same address: too many in progress, refused at once.
        let refused = future::block_on(pool.run(a, || ()));
        assert!(refused.unwrap_err().retry_after >= Duration::from_secs(1));
        // Another address waits behind them, but is served in the next turn.
        jobs.push(job(&pool, addr(3), "b1", &order, &gate));
        until(&pool, 1, 3);
        jobs.push(job(&pool, addr(4), "c1", &order, &gate));
        until(&pool, 1, 4);
        // The queue is full: a fifth address is refused at once.
        assert!(future::block_on(pool.run(addr(5), || ())).is_err());
        for _ in 0..5 {
            open.send_blocking(()).unwrap();
        }
        for job in jobs {
            job.join().unwrap().unwrap();
        }
        assert_eq!(*lock(&order), ["a1", "a2", "b1", "c1", "a3"]);
        let stats = pool.stats();
        assert_eq!((stats.running, stats.queued, stats.completed), (0, 0, 5));
        assert_eq!(stats.most_concurrent, 1);
        assert!(lock(&pool.inner.state).per_address.is_empty());
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_queue() {
        let pool = pool(1, 4, 4);
        let order = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = async_channel::unbounded();
        let first = job(&pool, addr(2), "first", &order, &gate);
        until(&pool, 1, 0);
        let mut waiting = Box::pin(pool.run(addr(3), || ()));
        assert!(future::block_on(future::poll_once(&mut waiting)).is_none());
        until(&pool, 1, 1);
        drop(waiting);
        until(&pool, 1, 0);
        open.send_blocking(()).unwrap();
        first.join().unwrap().unwrap();
        until(&pool, 0, 0);
        assert!(lock(&pool.inner.state).per_address.is_empty());
        // The pool still works.
        assert_eq!(future::block_on(pool.run(addr(3), || 7)), Ok(7));
    }

    #[test]
    fn many_at_once_never_exceed_the_bound() {
        let pool = pool(3, 1000, 1000);
        let threads: Vec<_> = (0..40)
            .map(|i| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    future::block_on(pool.run(addr(2 + (i % 4) as u8), || {
                        std::thread::sleep(Duration::from_millis(2))
                    }))
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.completed, 40);
        assert!((1..=3).contains(&stats.most_concurrent), "{stats:?}");
    }
}
