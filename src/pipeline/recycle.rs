//! Large request-body buffers, and the lists of events decoded from them,
//! given back by batches once every sink is done with them, and handed out
//! again for the next requests.
//!
//! The allocator maps a buffer of an API server's batch (0.4 to 2 MB) afresh
//! for each request and unmaps it when freed, so that every page of every
//! body was a page fault. The list of a batch's events (about 70 KB for 400)
//! fared the same way: freeing it let the allocator hand the top of its heap
//! back to the kernel, and the next request faulted it in again. Kept here,
//! the pages stay mapped. Each pool is bounded in bytes; what does not fit
//! goes back to the allocator.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;

use crate::decode::Event;

/// Buffers smaller than this come from the allocator's heap cheaply and are
/// not kept.
pub(crate) const MIN_BUFFER_BYTES: usize = 128 << 10;

/// Larger buffers are rare and not kept.
const MAX_BUFFER_BYTES: usize = 8 << 20;

/// Most bytes of buffer capacity kept at once.
const MAX_POOL_BYTES: usize = 32 << 20;

/// New buffers are made a multiple of this, so that a buffer fits the next
/// bodies of about the same size.
const ROUND_BYTES: usize = 64 << 10;

/// Event lists with room for fewer events than this are cheap to allocate
/// and not kept.
const MIN_EVENT_LIST: usize = 64;

/// Most bytes of event-list capacity kept at once.
const MAX_EVENT_LIST_POOL_BYTES: usize = 4 << 20;

/// Things of one kind kept for reuse, within a bound on the bytes of
/// capacity they hold.
struct Pool<T> {
    kept: Vec<T>,
    bytes: usize,
    max_bytes: usize,
    /// The bytes of capacity one of them holds.
    size: fn(&T) -> usize,
}

impl<T> Pool<T> {
    const fn new(max_bytes: usize, size: fn(&T) -> usize) -> Self {
        Self {
            kept: Vec::new(),
            bytes: 0,
            max_bytes,
            size,
        }
    }

    /// Takes out the one kept at `i`.
    fn remove(&mut self, i: usize) -> T {
        let item = self.kept.swap_remove(i);
        self.bytes -= (self.size)(&item);
        item
    }

    /// Keeps `item` if the bound leaves room for it; otherwise frees it.
    fn keep(&mut self, item: T) {
        let bytes = (self.size)(&item);
        if self.bytes + bytes <= self.max_bytes {
            self.bytes += bytes;
            self.kept.push(item);
        }
    }
}

fn lock<T>(pool: &Mutex<Pool<T>>) -> MutexGuard<'_, Pool<T>> {
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

type Buffers = Mutex<Pool<BytesMut>>;

static BUFFERS: Buffers = Mutex::new(Pool::new(MAX_POOL_BYTES, BytesMut::capacity));

fn list_bytes(list: &Vec<Event>) -> usize {
    list.capacity() * std::mem::size_of::<Event>()
}

type EventLists = Mutex<Pool<Vec<Event>>>;

static EVENT_LISTS: EventLists = Mutex::new(Pool::new(MAX_EVENT_LIST_POOL_BYTES, list_bytes));

/// An empty buffer with room for at least `capacity` bytes: a kept one when
/// one is large enough, else a new one (rounded up when it is large).
pub(crate) fn take(capacity: usize) -> BytesMut {
    take_buffer(&BUFFERS, capacity)
}

/// Keeps `buf` for a later body, if it is large enough to be worth it and
/// the pool has room; otherwise frees it.
pub(crate) fn give_back(buf: BytesMut) {
    give_back_buffer(&BUFFERS, buf);
}

/// An empty list of events: the one given back last, if any (batches in a
/// row are of about the same size), else a new one without capacity.
pub(crate) fn take_events() -> Vec<Event> {
    take_list(&EVENT_LISTS)
}

/// Keeps `list` (emptied) for a later batch, if it is large enough to be
/// worth it and the pool has room; otherwise frees it.
pub(crate) fn give_back_events(list: Vec<Event>) {
    give_back_list(&EVENT_LISTS, list);
}

fn take_buffer(pool: &Buffers, capacity: usize) -> BytesMut {
    if capacity < MIN_BUFFER_BYTES {
        return BytesMut::with_capacity(capacity);
    }
    {
        let mut pool = lock(pool);
        // The smallest that fits, so that large buffers stay for large bodies.
        let best = pool
            .kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.remove(i);
        }
    }
    BytesMut::with_capacity(capacity.div_ceil(ROUND_BYTES) * ROUND_BYTES)
}

fn give_back_buffer(pool: &Buffers, mut buf: BytesMut) {
    if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    lock(pool).keep(buf);
}

fn take_list(pool: &EventLists) -> Vec<Event> {
    let mut pool = lock(pool);
    match pool.kept.len().checked_sub(1) {
        Some(last) => pool.remove(last),
        None => Vec::new(),
    }
}

fn give_back_list(pool: &EventLists, mut list: Vec<Event>) {
    if list.capacity() < MIN_EVENT_LIST {
        return;
    }
    // The events (each a reference to its body) go before the lock is taken.
    list.clear();
    lock(pool).keep(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test has pools of its own: the process-wide ones are shared with
    // every other test that decodes or reads a body.

    #[test]
    fn an_event_list_given_back_is_handed_out_again_empty() {
        let pool = Mutex::new(Pool::new(MAX_EVENT_LIST_POOL_BYTES, list_bytes));
        let mut list = Vec::with_capacity(400);
        list.push(Event {
            raw: bytes::Bytes::from_static(b"{}"),
            meta: Default::default(),
        });
        let ptr = list.as_ptr();
        give_back_list(&pool, list);
        let again = take_list(&pool);
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert!(again.is_empty() && again.capacity() >= 400);
        assert_eq!(lock(&pool).bytes, 0);
        assert_eq!(
            take_list(&pool).capacity(),
            0,
            "a new list when none is kept"
        );
        // Small lists are not kept; the pool stays within its bound.
        give_back_list(&pool, Vec::with_capacity(MIN_EVENT_LIST - 1));
        assert!(lock(&pool).kept.is_empty());
        for _ in 0..64 {
            give_back_list(&pool, Vec::with_capacity(8192));
        }
        let pool = lock(&pool);
        let each = 8192 * std::mem::size_of::<Event>();
        assert_eq!(pool.kept.len(), MAX_EVENT_LIST_POOL_BYTES / each);
        assert_eq!(pool.bytes, pool.kept.len() * each);
    }

    #[test]
    fn a_buffer_given_back_is_handed_out_again_for_a_body_it_fits() {
        let pool = Mutex::new(Pool::new(MAX_POOL_BYTES, BytesMut::capacity));
        let mut buf = take_buffer(&pool, 300 << 10);
        assert!(buf.capacity() >= 300 << 10);
        buf.extend_from_slice(b"old bytes");
        let ptr = buf.as_ptr();
        give_back_buffer(&pool, buf);
        // A larger one kept too: the smallest that fits is handed out.
        give_back_buffer(&pool, BytesMut::with_capacity(2 << 20));
        let again = take_buffer(&pool, 290 << 10);
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert!(again.is_empty(), "handed out empty");
        assert!(take_buffer(&pool, 4 << 20).capacity() >= 4 << 20);
        // Small and huge buffers are not kept.
        give_back_buffer(&pool, BytesMut::with_capacity(1 << 10));
        give_back_buffer(&pool, BytesMut::with_capacity(MAX_BUFFER_BYTES + 1));
        let kept = lock(&pool);
        assert_eq!(kept.kept.len(), 1);
        assert!(kept.bytes <= MAX_POOL_BYTES);
    }
}
