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

use std::sync::Mutex;

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

struct Pool {
    buffers: Vec<BytesMut>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for at least `capacity` bytes: a kept one when
/// one is large enough, else a new one (rounded up when it is large).
pub(crate) fn take(capacity: usize) -> BytesMut {
    if capacity < MIN_BUFFER_BYTES {
        return BytesMut::with_capacity(capacity);
    }
    {
        let mut pool = pool();
        // The smallest that fits, so that large buffers stay for large bodies.
        let best = pool
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = pool.buffers.swap_remove(i);
            pool.bytes -= buf.capacity();
            return buf;
        }
    }
    BytesMut::with_capacity(capacity.div_ceil(ROUND_BYTES) * ROUND_BYTES)
}

/// Keeps `buf` for a later body, if it is large enough to be worth it and
/// the pool has room; otherwise frees it.
pub(crate) fn give_back(mut buf: BytesMut) {
    let capacity = buf.capacity();
    if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&capacity) {
        return;
    }
    buf.clear();
    let mut pool = pool();
    if pool.bytes + capacity > MAX_POOL_BYTES {
        return;
    }
    pool.bytes += capacity;
    pool.buffers.push(buf);
}

/// Event lists with room for fewer events than this are cheap to allocate
/// and not kept.
const MIN_EVENT_LIST: usize = 64;

/// Most bytes of event-list capacity kept at once.
pub(crate) const MAX_EVENT_LIST_POOL_BYTES: usize = 4 << 20;

struct EventLists {
    lists: Vec<Vec<Event>>,
    bytes: usize,
}

static EVENT_LISTS: Mutex<EventLists> = Mutex::new(EventLists {
    lists: Vec::new(),
    bytes: 0,
});

fn event_lists() -> std::sync::MutexGuard<'static, EventLists> {
    EVENT_LISTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn list_bytes(list: &Vec<Event>) -> usize {
    list.capacity() * std::mem::size_of::<Event>()
}

/// An empty list of events: the one given back last, if any (batches in a
/// row are of about the same size), else a new one without capacity.
pub(crate) fn take_events() -> Vec<Event> {
    let mut pool = event_lists();
    match pool.lists.pop() {
        Some(list) => {
            pool.bytes -= list_bytes(&list);
            list
        }
        None => Vec::new(),
    }
}

/// Keeps `list` (emptied) for a later batch, if it is large enough to be
/// worth it and the pool has room; otherwise frees it.
pub(crate) fn give_back_events(mut list: Vec<Event>) {
    if list.capacity() < MIN_EVENT_LIST {
        return;
    }
    list.clear();
    let bytes = list_bytes(&list);
    let mut pool = event_lists();
    if pool.bytes + bytes > MAX_EVENT_LIST_POOL_BYTES {
        return;
    }
    pool.bytes += bytes;
    pool.lists.push(list);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_list_given_back_is_handed_out_again_empty() {
        let mut list = Vec::with_capacity(400);
        list.push(Event {
            raw: bytes::Bytes::from_static(b"{}"),
            meta: Default::default(),
        });
        let ptr = list.as_ptr();
        give_back_events(list);
        // Other tests share the pool: look for this list among what a few
        // takes hand out.
        let taken: Vec<Vec<Event>> = (0..4).map(|_| take_events()).collect();
        let again = taken.iter().find(|l| l.as_ptr() == ptr).expect("reused");
        assert!(again.is_empty() && again.capacity() >= 400);
        // Small lists are not kept; the pool stays within its bound.
        give_back_events(Vec::with_capacity(MIN_EVENT_LIST - 1));
        for _ in 0..64 {
            give_back_events(Vec::with_capacity(8192));
        }
        let pool = event_lists();
        assert!(pool.bytes <= MAX_EVENT_LIST_POOL_BYTES);
        assert!(pool.lists.iter().all(|l| l.capacity() >= MIN_EVENT_LIST));
        assert_eq!(pool.bytes, pool.lists.iter().map(list_bytes).sum::<usize>());
    }

    #[test]
    fn a_buffer_given_back_is_handed_out_again_for_a_body_it_fits() {
        let mut buf = take(300 << 10);
        assert!(buf.capacity() >= 300 << 10);
        buf.extend_from_slice(b"old bytes");
        let ptr = buf.as_ptr();
        give_back(buf);
        // Other tests share the pool: look for this buffer among what a
        // few takes hand out.
        let taken: Vec<BytesMut> = (0..4).map(|_| take(290 << 10)).collect();
        let again = taken.iter().find(|b| b.as_ptr() == ptr).expect("reused");
        assert!(again.is_empty(), "handed out empty");
        // Small and huge buffers are not kept.
        give_back(BytesMut::with_capacity(1 << 10));
        give_back(BytesMut::with_capacity(MAX_BUFFER_BYTES + 1));
        assert!(pool().bytes <= MAX_POOL_BYTES);
        assert!(
            pool()
                .buffers
                .iter()
                .all(|b| b.capacity() >= MIN_BUFFER_BYTES)
        );
    }
}
